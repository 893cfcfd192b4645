"""Sinks: where shipped events go.  Every sink has the same small surface.

``deliver(events)`` takes an iterator of ``(event, body)`` pairs, where ``body`` is the
event already rendered in the configured format, pulls from it at its own pace, and
yields ``(event_id, refusal)`` as the destination settles each event: ``refusal`` is
None once the destination confirmed it, or the reason it will never accept it (the
event is then quarantined, not retried).  Streaming lets a sink keep the pipe full —
STOMP sends the next frames while earlier receipts are still coming — and lets the
caller remove each event from the spool the moment it is confirmed.  A sink that cannot
go on raises :class:`SinkError`; events it pulled but did not settle stay spooled.
``close()`` releases connections.  ``name`` is the destination without credentials.

``ship.py`` sees only this surface; which sink a URL means is decided here, and the
modules for network sinks are imported only when such a sink is asked for.
"""

import collections
import itertools


class SinkError(Exception):
    """Delivery stopped; ``str(exc)`` is one line for the operator."""


def in_batches(events, max_events: int, max_bytes: int):
    """Group ``(event, body)`` pairs into lists bounded by count and by bytes of body.

    For sinks that send in requests (HTTPS) or writes (stdout): few, but never huge.
    """
    batch, size = [], 0
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


class StdoutSink:
    """JSON lines on a text stream: the embedded default, needs no broker.

    A line counts as delivered once the stream was flushed without error.
    """

    name = "stdout"

    def __init__(self, stream, batch_events: int, batch_bytes: int):
        self.stream = stream
        self.batch_events, self.batch_bytes = batch_events, batch_bytes

    def deliver(self, events):
        for batch in in_batches(events, self.batch_events, self.batch_bytes):
            try:
                self.stream.write("".join(body + "\n" for _, body in batch))
                self.stream.flush()
            except (OSError, ValueError) as exc:  # broken pipe, closed stream
                raise SinkError("cannot write to stdout (%s)" % exc) from None
            for event, _ in batch:
                yield event["id"], None

    def close(self) -> None:
        pass


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


def describe(url: str) -> str:
    """A sink for messages: the URL without credentials."""
    from .redact import mask_url

    return mask_url(url)


def _open_one(url: str, config, stdout):
    from .config import ConfigError
    from .tls import TLSConfigError

    if url == "stdout":
        return StdoutSink(stdout, config.batch_events, config.batch_bytes)
    try:
        if url.startswith(("stomp+ssl://", "stomp://")):
            from .stompclient import StompSink

            sink = StompSink(config, url)
        elif url.startswith(("https://", "http://")):
            from .https import HttpsSink

            sink = HttpsSink(config, url)
        else:
            raise ConfigError(
                "sink %r is not supported (use stdout, stomp+ssl://host:port/queue/name or https://host/path;"
                " stomp:// and http:// for plain TCP)" % describe(url)
            )
    except (ValueError, TLSConfigError) as exc:
        raise ConfigError("sink %s: %s" % (describe(url), exc)) from None
    sink.name = describe(url)
    return sink


def open_sink(config, stdout):
    """The sink named by ``config.sink``, behind a fallback when ``config.fallback_sink`` is set."""
    primary = _open_one(config.sink, config, stdout)
    if not config.fallback_sink:
        return primary
    return FallbackSink(primary, _open_one(config.fallback_sink, config, stdout))
