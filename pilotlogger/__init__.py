"""pilotlogger: structured lifecycle logging for grid pilots, stdlib only.

Events are written durably to a local spool first, then shipped (replay) to a sink.
Importing this package is cheap: submodules are loaded only when used.
"""

__version__ = "0.1.0"
