"""The sink contract, and what every sink shares: its error, batching, the retry backoff.

A sink has one small surface, and ``ship.py`` sees nothing else:

``deliver(events)`` takes an iterator of ``(event, body)`` pairs, where ``body`` is the
event already rendered in the configured format, pulls from it at its own pace, and
yields ``(event_id, refusal)`` as the destination settles each event: ``refusal`` is
None once the destination confirmed it, or the reason it will never accept it (the
event is then quarantined, not retried).  Streaming lets a sink keep the pipe full —
STOMP sends the next frames while earlier receipts are still coming — and lets the
caller remove each event from the spool the moment it is confirmed.  A sink that cannot
go on raises :class:`SinkError`; events it pulled but did not settle stay spooled.
``close()`` releases connections.  ``name`` is the destination without credentials.

Concrete sinks import this module; it imports none of them (``sinks.py`` picks one).
"""

import collections
import itertools


class SinkError(Exception):
    """Delivery stopped; ``str(exc)`` is one line for the operator."""


def in_batches(events, max_events: int, max_bytes: int):
    """Group ``(event, body)`` pairs into lists bounded by count and by bytes of body.

    For sinks that send in requests (HTTPS) or writes (stdout): few, but never huge.
    """
    batch: list = []
    size = 0
    for event, body in events:
        if batch and size + len(body) > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append((event, body))
        size += len(body)
        if len(batch) >= max_events:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class Backoff:
    """The pause between two attempts: 0.2 s doubling to 5 s, each with ±50 % jitter.

    Jitter keeps thousands of pilots that lost the same broker from coming back in step.
    """

    FIRST, MOST = 0.2, 5.0

    def __init__(self, rng=None):
        if rng is None:
            import random  # only a sink that retries pays for it

            rng = random.Random()
        self.rng = rng
        self.attempts = 0

    def next_delay(self) -> float:
        """The pause before the next attempt (and count this one)."""
        delay = min(self.MOST, self.FIRST * 2**self.attempts) * self.rng.uniform(0.5, 1.5)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """An attempt succeeded: the next failure starts from the shortest pause again."""
        self.attempts = 0


class FallbackSink:
    """The primary sink until it fails (not merely refuses events), then the fallback for the rest.

    Events the primary pulled but never settled go to the fallback first, in order.
    Once the primary failed it is not tried again by this sink: a dead broker would
    otherwise cost its whole deadline on every shipping run.
    """

    def __init__(self, primary, fallback):
        self.primary, self.fallback = primary, fallback
        self.fell_back = None  # why the primary was abandoned, for the summary line

    @property
    def name(self) -> str:
        return self.fallback.name if self.fell_back else self.primary.name

    def deliver(self, events):
        events = iter(events)
        if self.fell_back is None:
            unsettled = collections.OrderedDict()

            def tracked():
                for event, body in events:
                    unsettled[event["id"]] = (event, body)
                    yield event, body

            try:
                for event_id, refusal in self.primary.deliver(tracked()):
                    del unsettled[event_id]
                    yield event_id, refusal
                return
            except SinkError as exc:
                self.fell_back = str(exc)
                self.primary.close()
                events = itertools.chain(list(unsettled.values()), events)
        try:
            yield from self.fallback.deliver(events)
        except SinkError as exc:
            raise SinkError("%s; fallback: %s" % (self.fell_back, exc)) from None

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()
