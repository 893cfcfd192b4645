"""pilotlogger from Python: ``emit()`` and a ``logging.Handler``.

Both follow the CLI's promises: the event is durable in the spool before the call
returns, and nothing here ever raises into the caller — a problem becomes one line on
stderr and the program goes on.  Configuration is the CLI's (``PILOTLOG_*`` environment,
config file), resolved once.
"""

import logging
import sys

from .concurrency import ProcessLock, beyond_signal_handlers
from .console import warn
from .events import EventError, check_name
from .recorder import Recorder, text_of
from .ship import Shipper
from .spool import ready_to_write

ready_to_write(states=True)  # now, with the API: forks wait for its import (see pilotlogger.__init__)


def status_for(levelno: int) -> str:
    """logging level → DIRAC status."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


#: Attributes every LogRecord has: anything else on a record came from ``extra=`` and goes to data.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "phase"}


def _safe_name(text: str, default: str) -> str:
    """A logger name like ``DIRAC.Pilot/Install`` as a valid source name (or ``default``)."""
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in text)[:64]
    try:
        return check_name("source", cleaned)
    except EventError:
        return default


def _valid_phase(phase) -> bool:
    try:
        check_name("phase", phase)
        return True
    except EventError:
        return False


def _message(record: logging.LogRecord, data: dict) -> str:
    """The record's message, %-formatted; when its arguments do not fit it (or its str() raises), the
    raw message, with the arguments and the error in ``data``: a typo in a rarely taken branch of
    the pilot must not cost the record."""
    try:
        return record.getMessage()
    except Exception as exc:
        data["message_args"] = record.args if isinstance(record.args, dict) else list(record.args or ())
        data["message_error"] = "not formatted: %s: %s" % (type(exc).__name__, text_of(exc, str))
        return text_of(record.msg, str)


def emit(phase: str, message: str = "", status: str = "info", source: "str | None" = None, config=None, **data):
    """Record one event in the spool, like ``pilotlog emit``; return it, or None if it was not kept.

    >>> pilotlogger.emit("power", "power of 11 HS06", hs06=11)
    """
    try:
        return Recorder(config).record(phase, message, status, source, data)
    except Exception as exc:  # bad config, bad phase...: said, never raised
        warn("event not recorded: %s" % exc)
        return None


class Handler(logging.Handler):
    """A ``logging.Handler`` turning records into events.

    level → status (DEBUG debug, INFO info, WARNING warning, ERROR/CRITICAL error); the
    logger name → source; ``extra={...}`` fields → data (``extra={"phase": "install"}``
    sets the phase, default ``log``); an exception's traceback → ``data.exception``.

    Every record is spooled before ``emit`` returns: written, so a kill -9 of the program
    loses nothing.  With ``log_fsync`` ``grouped`` (the default) ``log`` records reach the
    disk in groups within 0.1 s — a power cut can lose that last 0.1 s — instead of two
    fsyncs per record blocking the caller; other phases are fsynced before ``emit`` returns.
    With ``ship_every`` (seconds) a background thread ships the spool periodically;
    ``flush()`` and ``close()`` fsync what waits and ship too (bounded by the configured
    deadline).  Nothing raises into the caller; a record is kept whatever its data (a value
    whose repr() raises, %-arguments that do not fit the message: a marker in their place).
    Safe in threads, forked workers and signal handlers (see the README).
    """

    def __init__(self, phase: str = "log", ship_every: "float | None" = None, config=None, level=logging.NOTSET):
        super().__init__(level)
        self.phase = phase
        self._recorder: "Recorder | None" = None
        self._making = ProcessLock()
        self._config = config
        self._shipper = Shipper(self._get_recorder, ship_every)

    def createLock(self) -> None:
        """A lock each process makes anew: Python 3.6's logging leaves a forked child the parent's
        one, held for ever if another thread was logging at the fork (3.7+ remakes its own)."""
        self.lock = ProcessLock(reentrant=True)  # type: ignore[assignment]  # an RLock's interface

    def _get_recorder(self):
        if self._recorder is None:
            self._make_recorder()
        return self._recorder

    @beyond_signal_handlers
    def _make_recorder(self) -> None:
        """One Recorder, made on first use (off the main thread: a signal handler logging while it
        is made waits for it rather than making a second one)."""
        with self._making:
            if self._recorder is None:
                self._recorder = Recorder(self._config, group_log_fsyncs=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
            if record.exc_info:
                data["exception"] = logging.Formatter().formatException(record.exc_info)
            message = _message(record, data)
            phase = getattr(record, "phase", self.phase)
            if not _valid_phase(phase):  # a typo in extra= must not cost the record: keep it as a log line
                data["invalid_phase"] = text_of(phase, str)[:100]
                phase = self.phase if _valid_phase(self.phase) else "log"
            self._get_recorder().record(
                phase, message, status_for(record.levelno), _safe_name(record.name, "pilot"), data
            )
        except Exception as exc:
            warn("log record not recorded: %s: %s" % (type(exc).__name__, exc))

    def handleError(self, record) -> None:  # one line, never logging's traceback
        warn("log record not recorded: %s" % (sys.exc_info()[1],))

    def flush(self) -> None:
        if self._recorder is not None:
            self._recorder.sync()
        self._shipper.ship_once()

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()  # fsync the log records still waiting
        self._shipper.stop()
        super().close()
