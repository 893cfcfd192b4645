"""Shipping: move events from the spool to a sink.  The one place delivery semantics live.

* In the order recorded (seq, whatever the clock did), streaming: the spool is walked a
  chunk at a time and never loaded whole;
  the sink pulls events as fast as the destination takes them (see sinks.py).
* An event leaves the spool only after the sink confirmed its id, and at once (so a
  crash re-sends little).  At-least-once: a crash between confirmation and removal
  re-sends it, with the same id.
* Events the destination refuses for good (malformed for it, too large) are moved to
  the spool's quarantine with the reason, never retried forever nor silently dropped.
* Any other sink failure stops the run; what was not confirmed stays spooled, and the
  error is recorded in the spool state for ``pilotlog status``.

The one shipping loop: :func:`deliver` opens the configured sink, ships, and closes it
(``replay``, ``emit --send`` and the background shipping all go through it);
:class:`Shipper` runs it in a background thread every few seconds and once more at the
end (the drain), for the wrapper and the logging handler.
"""

import threading
import time

from .concurrency import ProcessLock
from .console import warn
from .events import render
from .redact import mask_text
from .sink import SinkError
from .spool import SpoolError

PROGRESS_EVERY = 1000


class ShipResult:
    """Counts of one shipping run, and the error that stopped it (None when it finished).

    ``refused``: events the destination will never take (``refusal``: its words for the last
    one); ``broken``: files in the spool that were not valid events (damaged, foreign,
    links).  Both were moved to the quarantine.
    """

    __slots__ = ("delivered", "refused", "refusal", "broken", "remaining", "error", "seconds")

    def __init__(self):
        self.delivered, self.refused, self.broken, self.remaining, self.error, self.seconds = 0, 0, 0, 0, None, 0.0
        self.refusal = None


def ship(spool, sink, fmt: str, progress=None, defer=None) -> ShipResult:
    """Send everything in ``spool`` through ``sink``, one shipper at a time (see Spool.lock_replay);
    ``defer(event)`` true: that event is left for a later run (``run --relay``: relayrun.py)."""
    try:
        held = spool.lock_replay()
    except SpoolError as exc:  # another replay is at work: this one leaves the events to it
        result = ShipResult()
        result.error, result.remaining = str(exc), spool.stats()["depth"]
        return result
    try:
        return _ship_held(spool, sink, fmt, progress, defer)
    finally:
        spool.unlock_replay(held)


def _ship_held(spool, sink, fmt: str, progress=None, defer=None) -> ShipResult:
    """Send everything in ``spool`` through ``sink``; return what happened.

    ``progress(delivered)`` is called every PROGRESS_EVERY settled events when given (the
    CLI passes one only when stderr is a terminal).
    """
    result = ShipResult()
    started, quarantined_before = time.monotonic(), spool.quarantined_here
    names = {}  # event id -> spool file, for the events the sink has pulled and not settled

    def spooled():
        for name in spool.entries():
            loaded = spool.read(name)  # None: unreadable, already quarantined by the spool
            if loaded is not None and not (defer is not None and defer(loaded[0])):
                event, text = loaded
                names[event["id"]] = name
                yield event, (text if fmt == "native" else render(event, fmt))  # the file is the native form

    try:
        spool.check_writable()
    except SpoolError as exc:  # not ours, or read-only: send nothing, write nothing into it
        result.error = str(exc)
        result.remaining = spool.stats()["depth"]
        return result
    try:
        for event_id, refusal in sink.deliver(spooled()):
            if refusal is None:
                spool.ack(names.pop(event_id))
                result.delivered += 1
            else:
                spool.quarantine(names.pop(event_id), refusal)
                result.refused, result.refusal = result.refused + 1, refusal
            if progress and (result.delivered + result.refused) % PROGRESS_EVERY == 0:
                progress(result.delivered)
    except (SinkError, SpoolError) as exc:
        result.error = str(exc)
    except Exception as exc:  # a bug of ours: the run stops as for a failing sink, said and recorded the same way
        result.error = "internal error while shipping: %s: %s (please report this)" % (type(exc).__name__, exc)
    result.broken = spool.quarantined_here - quarantined_before - result.refused  # unreadable, foreign, links
    result.seconds = time.monotonic() - started
    result.remaining = spool.stats()["depth"]
    _record(spool, result)
    return result


def _record(spool, result: ShipResult) -> None:
    """Keep the outcome for `pilotlog status`; bookkeeping never fails a delivery."""
    now = time.time()
    changes = {"delivered_total": result.delivered, "last_attempt": now}
    if result.error:
        changes.update(last_error=mask_text(result.error), last_error_time=now)
    elif result.delivered:
        changes.update(last_delivery=now)
    if result.refusal:  # the destination's own words, for `pilotlog status`
        changes.update(last_refusal=mask_text(result.refusal), last_refusal_time=now)
    try:
        spool.update_state(**changes)
    except SpoolError:
        pass


def deliver(config, spool, stdout, progress=None, defer=None):
    """Open the configured sink, ship ``spool`` through it, close it: (ShipResult, the sink).

    The sink is returned for the caller's summary (its name, whether it fell back).
    Raises ConfigError when the sink URL or its TLS settings cannot be used.
    """
    from .sinks import open_sink

    sink = open_sink(config, stdout)
    try:
        return ship(spool, sink, config.format, progress=progress, defer=defer), sink
    finally:
        sink.close()


class Shipper:
    """Ship in the background every ``every`` seconds while a program runs, and drain at :meth:`stop`.

    ``ship_once()`` does one run (``Recorder.ship``, which owns the stdout rule) and says
    a failure in one stderr line; runs never overlap.  Nothing here raises.  In a forked
    child the background thread (the parent's) is gone: the child ships on flush and close only.
    """

    def __init__(self, recorder, every=None, defer=None):
        self._recorder = recorder  # a callable giving the Recorder: the handler makes its own on first use
        self._defer = defer  # the background runs leave these events to the drain (see ship())
        self._lock = ProcessLock(reentrant=True)  # not the parent's, held by its thread at a fork
        self._stop = threading.Event()
        self._thread = None
        self.last_failed = False  # the last run ended with an error (said on stderr)
        if every:
            self._thread = threading.Thread(target=self._loop, args=(every,), name="pilotlog-ship", daemon=True)
            self._thread.start()

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self.ship_once(self._defer)

    def ship_once(self, defer=None) -> None:
        with self._lock:
            try:
                recorder = self._recorder()
                result = recorder.ship(defer)
                self.last_failed = bool(result is not None and result.error)
                if self.last_failed:
                    warn("%s; %d event(s) kept in spool %s" % (result.error, result.remaining, recorder.spool.path))
            except Exception as exc:
                self.last_failed = True
                warn("shipping failed: %s: %s" % (type(exc).__name__, exc))

    def stop(self, drain: bool = True) -> None:
        """Stop the thread and ship what is left (unless ``drain`` is False: the caller must end
        now; the events stay spooled, and a run in progress is waited for 1 s at most).

        A run still in progress (a slow or silent sink) is the drain's first part: it is waited
        for up to ``deadline``, and when it fails the drain ends there — a second run to the
        sink that just failed would hold the pilot's slot for a second deadline."""
        self._stop.set()
        if self._thread is None:
            busy = False
        else:
            self._thread.join(timeout=1)
            busy = self._thread.is_alive()
        if not drain:
            return
        if busy:
            self._thread.join(timeout=self._deadline())
            if self._thread.is_alive():
                warn("a delivery in progress did not end within its deadline: what is left stays spooled")
                return
            if self.last_failed:
                return
        self.ship_once()

    def _deadline(self) -> float:
        try:
            return float(self._recorder().config.deadline)
        except Exception:  # no recorder to be had: the setting's default
            return 20.0
