"""Shipping: move events from the spool to a sink.  The one place delivery semantics live.

* Oldest first, in batches, streaming: the spool is walked a chunk at a time and never
  loaded whole.
* An event leaves the spool only after the sink confirmed its id (at-least-once: a
  crash between confirmation and removal re-sends it, with the same id).
* Events the destination refuses for good (malformed for it, too large) are moved to
  the spool's quarantine with the reason, never retried forever nor silently dropped.
* Any other sink failure stops the run; what was not confirmed stays spooled, and the
  error is recorded in the spool state for ``pilotlog status``.
* Batches are bounded by count and by bytes, so requests stay few but never huge.
"""

import time

from .events import render
from .sinks import SinkError
from .spool import SpoolError

DEFAULT_BATCH_EVENTS = 1000
DEFAULT_BATCH_BYTES = 1024 * 1024


class ShipResult:
    """Counts of one shipping run, and the error that stopped it (None when it finished)."""

    __slots__ = ("delivered", "refused", "remaining", "error", "seconds")

    def __init__(self):
        self.delivered, self.refused, self.remaining, self.error, self.seconds = 0, 0, 0, None, 0.0


def _batches(spool, fmt: str, max_events: int, max_bytes: int):
    """Yield lists of ``(name, event, body)``; unreadable files are quarantined by the spool."""
    batch, size = [], 0
    for name in spool.entries():
        loaded = spool.read(name)
        if loaded is None:
            continue
        event, text = loaded
        body = text if fmt == "native" else render(event, fmt)  # the file already is the native form
        if batch and size + len(body) > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append((name, event, body))
        size += len(body)
        if len(batch) >= max_events:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def ship(
    spool, sink, fmt: str, batch_events: int = DEFAULT_BATCH_EVENTS, batch_bytes: int = DEFAULT_BATCH_BYTES,
    progress=None,
) -> ShipResult:
    """Send everything in ``spool`` through ``sink``; return what happened.

    ``progress(delivered)`` is called after each batch when given (the CLI passes one
    only when stderr is a terminal).
    """
    result = ShipResult()
    started = time.monotonic()
    try:
        spool.check_writable()
        for batch in _batches(spool, fmt, batch_events, batch_bytes):
            names = {event["id"]: name for name, event, _ in batch}
            refused = {}
            try:
                confirmed = sink.send([(event, body) for _, event, body in batch])
            except SinkError as exc:
                confirmed, refused = exc.confirmed, exc.refused
                if exc.stop:
                    result.error = str(exc)
            for event_id in confirmed:
                spool.ack(names.pop(event_id))
            for event_id, reason in refused.items():
                spool.quarantine(names.pop(event_id), reason)
            result.delivered += len(confirmed)
            result.refused += len(refused)
            if progress:
                progress(result.delivered)
            if result.error:
                break
    except SpoolError as exc:
        result.error = str(exc)
    result.seconds = time.monotonic() - started
    result.remaining = spool.stats()["depth"]
    _record(spool, result)
    return result


def _record(spool, result: ShipResult) -> None:
    """Keep the outcome for `pilotlog status`; bookkeeping never fails a delivery."""
    now = time.time()
    changes = {"delivered_total": result.delivered, "last_attempt": now}
    if result.error:
        changes.update(last_error=result.error, last_error_time=now)
    elif result.delivered:
        changes.update(last_delivery=now)
    try:
        spool.update_state(**changes)
    except SpoolError:
        pass
