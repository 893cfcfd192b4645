"""pilotlogger from Python: ``emit()`` and a ``logging.Handler``.

Both follow the CLI's promises: the event is durable in the spool before the call
returns, and nothing here ever raises into the caller — a problem becomes one line on
stderr and the program goes on.  Configuration is the CLI's (``PILOTLOG_*`` environment,
config file), resolved once.
"""

import logging
import sys
import threading

from .events import EventError, check_name, make_event

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


def _say(message: str) -> None:
    try:
        sys.stderr.write("pilotlog: %s\n" % message)
    except (OSError, ValueError):
        pass


def _safe_name(text: str, default: str) -> str:
    """A logger name like ``DIRAC.Pilot/Install`` as a valid source name (or ``default``)."""
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in text)[:64]
    try:
        return check_name("source", cleaned)
    except EventError:
        return default


def _jsonable(value):
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


class Recorder:
    """The resolved configuration, its spool and pilot id: what emit() and Handler share."""

    def __init__(self, config=None):
        from . import config as config_module
        from .spool import open_spool

        self.config = config or config_module.load()
        self.spool = open_spool(self.config)
        self.pilot, _ = self.config.resolved_pilot()
        self.context = self.config.context()

    def record(self, phase, message, status, source, data):
        """Spool one event; return it, or None (said on stderr) when it could not be kept."""
        from .events import status_rank
        from .spool import SpoolError

        c = self.config
        if status_rank(status) < status_rank(c.level):
            return None
        limit = c.max_event_bytes // 2
        if len(message.encode("utf-8")) > limit:  # a log line must never be refused: cut it
            message = message.encode("utf-8")[:limit].decode("utf-8", "ignore") + " [truncated]"
        try:
            if self.pilot is None:
                self.pilot = self.spool.pilot_id()
            result = self.spool.put(
                lambda seq, epoch: make_event(phase, message, status, source or c.source, _jsonable(data),
                                              pilot=self.pilot, context=self.context, seq=seq, epoch=epoch)
            )
        except (SpoolError, EventError) as exc:
            _say("event not recorded: %s; the program goes on" % exc)
            return None
        if not result.stored:
            _say("spool %s is full: this %s event was dropped" % (self.spool.path, phase))
            return None
        return result.event

    def ship(self):
        """Ship what is spooled to the configured sink; return the ShipResult or None.

        With the default ``stdout`` sink nothing is shipped: JSON lines must not appear in
        the host program's output; the events wait in the spool for ``pilotlog replay``.
        """
        from .config import ConfigError
        from .ship import ship
        from .sinks import open_sink

        if self.config.sink == "stdout":
            return None
        try:
            sink = open_sink(self.config, sys.stdout)
        except ConfigError as exc:
            _say("not sent: %s" % exc)
            return None
        try:
            return ship(self.spool, sink, self.config.format, self.config.batch_events, self.config.batch_bytes)
        finally:
            sink.close()


def emit(phase: str, message: str = "", status: str = "info", source: str = None, config=None, **data):
    """Record one event in the spool, like ``pilotlog emit``; return it, or None if it was not kept.

    >>> pilotlogger.emit("power", "power of 11 HS06", hs06=11)
    """
    try:
        return Recorder(config).record(phase, message, status, source, data)
    except Exception as exc:  # bad config, bad phase...: said, never raised
        _say("event not recorded: %s" % exc)
        return None


class Handler(logging.Handler):
    """A ``logging.Handler`` turning records into events.

    level → status (DEBUG debug, INFO info, WARNING warning, ERROR/CRITICAL error); the
    logger name → source; ``extra={...}`` fields → data (``extra={"phase": "install"}``
    sets the phase, default ``log``); an exception's traceback → ``data.exception``.

    Every record is spooled before ``emit`` returns.  With ``ship_every`` (seconds) a
    background thread ships the spool periodically; ``flush()`` and ``close()`` ship too
    (bounded by the configured deadline).  Nothing raises into the caller.
    """

    def __init__(self, phase: str = "log", ship_every: float = None, config=None, level=logging.NOTSET):
        super().__init__(level)
        self.phase = phase
        self._recorder = None
        self._config = config
        self._ship_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if ship_every:
            self._thread = threading.Thread(target=self._ship_loop, args=(ship_every,), name="pilotlog-ship", daemon=True)
            self._thread.start()

    def _get_recorder(self):
        if self._recorder is None:
            self._recorder = Recorder(self._config)
        return self._recorder

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
            if record.exc_info:
                data["exception"] = logging.Formatter().formatException(record.exc_info)
            message = record.getMessage()
            phase = getattr(record, "phase", self.phase)
            self._get_recorder().record(phase, message, status_for(record.levelno), _safe_name(record.name, "pilot"), data)
        except Exception as exc:
            _say("log record not recorded: %s: %s" % (type(exc).__name__, exc))

    def handleError(self, record) -> None:  # one line, never logging's traceback
        _say("log record not recorded: %s" % (sys.exc_info()[1],))

    def _ship(self) -> None:
        with self._ship_lock:
            try:
                result = self._get_recorder().ship()
                if result is not None and result.error:
                    _say("%s; %d event(s) kept in spool %s" % (result.error, result.remaining, self._recorder.spool.path))
            except Exception as exc:
                _say("shipping failed: %s: %s" % (type(exc).__name__, exc))

    def _ship_loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self._ship()

    def flush(self) -> None:
        self._ship()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        self._ship()
        super().close()
