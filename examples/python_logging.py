"""pilotlogger from Python: emit() for lifecycle steps, a logging.Handler for everything else.

Run from a checkout:  PYTHONPATH=. python3 examples/python_logging.py
(or put dist/pilotlog on sys.path: the bundle is importable).
"""

import logging

import pilotlogger

pilotlogger.emit("boot", "booted up", source="PythonPilot")

log = logging.getLogger("PythonPilot")
log.setLevel(logging.INFO)
log.addHandler(pilotlogger.Handler())  # add ship_every=30 to ship from a background thread

log.info("installed DIRAC via dirac-install", extra={"phase": "install", "version": "v8r0"})
try:
    raise TimeoutError("matcher did not answer")
except TimeoutError:
    log.exception("failed to match", extra={"phase": "nomatch"})

pilotlogger.emit("shutdown", "about to shutdown", source="PythonPilot", exit_code=0)
logging.shutdown()  # flushes and closes the handler (ships, unless the sink is stdout)
