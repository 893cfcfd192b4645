"""pilotlogger: structured lifecycle logging for grid pilots, stdlib only.

Events are written durably to a local spool first, then shipped (replay) to a sink.

    import pilotlogger
    pilotlogger.emit("power", "power of 11 HS06", hs06=11)
    logging.getLogger("Pilot").addHandler(pilotlogger.Handler())

Importing this package is cheap: ``emit`` and ``Handler`` (which need :mod:`logging`) are
loaded on first use, so the CLI never pays for them.
"""

import sys
import types

from .version import __version__  # noqa: F401


def _api():
    from . import handler

    return handler


class _LazyModule(types.ModuleType):
    """Resolve ``pilotlogger.emit`` / ``pilotlogger.Handler`` on first access (module
    ``__getattr__`` is Python 3.7+; swapping the module's class works from 3.5).

    The import runs in a helper thread when asked from the main thread: a signal handler
    calling ``pilotlogger.emit()`` while that thread imports it would otherwise find the module
    half made (AttributeError); from another thread, it waits for the import to end."""

    def __getattr__(self, name):
        if name in ("emit", "Handler"):
            import threading  # noqa: F401  # the API's logging imports it anyway; the helper thread needs it

            from .concurrency import beyond_signal_handlers

            return getattr(beyond_signal_handlers(_api)(), name)
        raise AttributeError("module %r has no attribute %r" % (self.__name__, name))


sys.modules[__name__].__class__ = _LazyModule
