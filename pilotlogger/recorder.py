"""Recording one event, the same way for every entry point, and the one-line warning.

``pilotlog emit``, ``probe``, ``power``, the wrapper, ``pilotlogger.emit()`` and the
logging handler all record through :class:`Recorder`: resolve the pilot id, store the
event durably, and report the full-spool policy (evictions, drops) in one stderr line and
in the spool's counters for ``pilotlog status``.  Nothing here raises into the caller.
Kept free of :mod:`logging` so the CLI's start-up does not pay for it.
"""

import sys

from .events import EventError, make_event
from .redact import mask_text
from .spool import SpoolError, open_spool


def warn(message: str) -> None:
    """One line on stderr, prefixed with the program name.  Never raises."""
    try:
        sys.stderr.write("pilotlog: %s\n" % mask_text(message))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _jsonable(value):
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


class Recorder:
    """A resolved configuration, its spool and pilot id: everything needed to record events."""

    def __init__(self, config=None):
        if config is None:
            from . import config as config_module

            config = config_module.load()
        self.config = config
        self.spool = open_spool(config)
        self.pilot, _ = config.resolved_pilot()
        self.context = config.context()
        self._warned = set()

    def _warn(self, message: str) -> None:
        """Say each distinct problem once: a wrapper capturing output onto a full disk must not
        print a line per captured line."""
        if message not in self._warned:
            self._warned.add(message)
            warn(message)

    def record(self, phase, message, status="info", source=None, data=None, cut_long=True):
        """Spool one event; return it, or None (said on stderr) when it was filtered or not kept.

        ``cut_long``: a message over half of ``max_event_bytes`` is cut rather than refused
        (log lines); the CLI refuses oversized input as a usage error before calling this.
        """
        from .events import status_rank

        c = self.config
        if status_rank(status) < status_rank(c.level):
            return None  # below the configured level: filtered by design
        limit = c.max_event_bytes // 2
        if cut_long and len(message.encode("utf-8")) > limit:
            message = message.encode("utf-8")[:limit].decode("utf-8", "ignore") + " [truncated]"
        data = _jsonable(data or {})
        try:
            if self.pilot is None:
                self.pilot = self.spool.pilot_id()
            result = self.spool.put(
                lambda seq, epoch: make_event(phase, message, status, source or c.source, data,
                                              pilot=self.pilot, context=self.context, seq=seq, epoch=epoch)
            )
        except (SpoolError, EventError) as exc:
            self._warn("event not recorded: %s; the pilot goes on" % exc)
            return None
        if not result.stored:
            self._warn(
                "spool %s is full (max_events=%d, max_bytes=%d) and holds no log events to evict: "
                "this %s event was dropped; run 'pilotlog replay' or raise the bounds"
                % (self.spool.path, c.max_events, c.max_bytes, phase)
            )
            self._count_drops(1)
            return None
        if result.evicted:
            self._warn("spool %s is full: evicted the %d oldest log event(s) to keep this %s event"
                 % (self.spool.path, result.evicted, phase))
            self._count_drops(result.evicted)
        return result.event

    def _count_drops(self, n: int) -> None:
        try:
            self.spool.update_state(dropped_total=n)
        except SpoolError:
            pass

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
            warn("not sent: %s" % exc)
            return None
        try:
            return ship(self.spool, sink, self.config.format)
        finally:
            sink.close()
