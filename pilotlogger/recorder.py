"""Recording one event, the same way for every entry point.

``pilotlog emit``, ``probe``, ``power``, the wrapper, ``pilotlogger.emit()`` and the
logging handler all record through :class:`Recorder`: resolve the pilot id, store the
event durably, and report the full-spool policy (evictions, drops) in one stderr line and
in the spool's counters for ``pilotlog status``.  Nothing here raises into the caller.
Kept free of :mod:`logging` so the CLI's start-up does not pay for it.
"""

import sys

from .console import warn
from .events import LOG_PHASE, MAX_DEPTH, MAX_INT_DIGITS, EventError, clean_text, make_event
from .spool import SpoolError, SyncGroup, open_spool


def text_of(value, convert=repr) -> str:
    """``convert(value)`` as text, or a marker naming what failed: a value whose repr() (or str())
    raises costs that value, never the event it is part of."""
    try:
        return clean_text(convert(value))
    except Exception as exc:
        try:
            why = "%s: %s" % (type(exc).__name__, exc)
        except Exception:  # an exception whose own str() raises
            why = type(exc).__name__
        return "<unrepresentable %s: %s>" % (type(value).__name__, why)


def jsonable(value, depth: int = 0):
    """``value`` as JSON can hold it: text that is not UTF-8 gets U+FFFD (see clean_text), NaN and
    Infinity become the strings "nan", "inf", "-inf", nesting deeper than MAX_DEPTH and other
    objects their repr() — or a marker when that raises (see text_of).  A caller of the Python
    API loses no event over its data."""
    if isinstance(value, int) and value.bit_length() > MAX_INT_DIGITS * 3:  # 3 bits < 1 digit: a safe bound
        return "<an integer of %d bits>" % value.bit_length()  # a consumer on Python 3.11+ could not read it
    if value is None or isinstance(value, (int, bool)):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if depth >= MAX_DEPTH:
        return text_of(value)[:200]
    try:
        if isinstance(value, (list, tuple)):
            return [jsonable(v, depth + 1) for v in value]
        if isinstance(value, dict):
            return {text_of(k, str): jsonable(v, depth + 1) for k, v in value.items()}
    except Exception:  # a container whose iteration raises: its repr() says what it was
        return text_of(value)
    return text_of(value)


class Recorder:
    """A resolved configuration, its spool and pilot id: everything needed to record events.

    ``group_log_fsyncs``: for long-lived callers (the logging Handler, ``run --capture``)
    with the ``log_fsync`` setting ``grouped``: ``log`` events are written before
    :meth:`record` returns and fsynced in groups (:class:`~pilotlogger.spool.SyncGroup`);
    other phases are always fsynced before it returns.  Call :meth:`close` at the end.
    """

    def __init__(self, config=None, group_log_fsyncs=False):
        if config is None:
            from . import config as config_module

            config = config_module.load()
        self.config = config
        self.spool = open_spool(config)
        self.pilot, _ = config.resolved_pilot()
        self.context = config.context()
        self._warned = set()
        grouped = group_log_fsyncs and getattr(config, "log_fsync", "each") == "grouped"
        self._group = SyncGroup(self.spool, on_error=self._warn) if grouped else None
        self._group_every_phase = False

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
        message = clean_text(message)
        limit = c.max_event_bytes // 2
        if cut_long and len(message.encode("utf-8")) > limit:
            message = message.encode("utf-8")[:limit].decode("utf-8", "ignore") + " [truncated]"
        data = jsonable(data or {})
        try:
            if self.pilot is None:
                self.pilot = self.spool.pilot_id()
            grouped = self._group is not None and (phase == LOG_PHASE or self._group_every_phase)
            result = self.spool.put(
                lambda seq, epoch: make_event(
                    phase,
                    message,
                    status,
                    source or c.source,
                    data,
                    pilot=self.pilot,
                    context=self.context,
                    seq=seq,
                    epoch=epoch,
                ),
                sync=not grouped,
            )
            if grouped and result.stored:
                self._group.add(result.name)
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
            self._warn(
                "spool %s is full: evicted the %d oldest log event(s) to keep this %s event"
                % (self.spool.path, result.evicted, phase)
            )
            self._count_drops(result.evicted)
        return result.event

    def defer_fsyncs(self) -> None:
        """From now on every event, of any phase, is written before :meth:`record` returns and fsynced
        by the background group: for the wrapper once the batch system asked the job to end — a
        kill loses nothing written, and a disk slow to flush must not hold the job past its grace."""
        if self._group is None:
            self._group = SyncGroup(self.spool, on_error=self._warn)
        self._group_every_phase = True

    def sync(self) -> None:
        """Make every event recorded so far durable against power loss (grouped fsyncs)."""
        if self._group is not None:
            self._group.sync()

    def close(self) -> None:
        """Sync what is waiting and stop the background fsync thread, if any (later log
        events are then fsynced as they come)."""
        if self._group is not None:
            self._group.close()

    def _count_drops(self, n: int) -> None:
        try:
            self.spool.update_state(dropped_total=n)
        except SpoolError:
            pass

    def ship(self, defer=None):
        """Ship what is spooled to the configured sink; return the ShipResult or None (``defer``: see ship.ship).

        With the default ``stdout`` sink nothing is shipped: JSON lines must not appear in
        the host program's output (the wrapper's child, the handler's program); the events
        wait in the spool for ``pilotlog replay``.  This is the one place that rule lives.
        Nor is anything opened when nothing waits: a pilot shipping every few seconds would
        otherwise cost the broker a TLS handshake each time (docs/scale.md).
        """
        from .config import ConfigError
        from .ship import deliver

        if self.config.sink == "stdout" or not self.spool.holds_events():
            return None
        try:
            return deliver(self.config, self.spool, sys.stdout, defer=defer)[0]
        except ConfigError as exc:
            self._warn("not sent: %s" % exc)  # once: a wrapper ships every few seconds
            return None
