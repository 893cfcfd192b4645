"""Sinks: where shipped events go.  Every sink has the same small surface.

``send(batch) -> confirmed ids`` takes a list of ``(event, body)`` pairs, where ``body``
is the event already rendered in the configured format, and returns the ids the
destination confirmed, in order.  A sink that fails part-way raises :class:`SinkError`
carrying the ids confirmed (and those refused for good) before the failure.
``close()`` releases connections.  ``name`` is the destination without credentials.

``ship.py`` sees only this surface; which sink a URL means is decided here, and the
modules for network sinks are imported only when such a sink is asked for.
"""


class SinkError(Exception):
    """Delivery failed; ``str(exc)`` is one line for the operator.

    ``confirmed``: ids that got through before the failure.  ``refused``: ``{id: reason}``
    of events the destination will never accept (they are quarantined, not retried).
    ``stop``: False when only some events were refused and the sink can take more.
    """

    def __init__(self, message: str, confirmed=(), refused=None, stop: bool = True):
        super().__init__(message)
        self.confirmed = list(confirmed)
        self.refused = dict(refused or {})
        self.stop = stop


class StdoutSink:
    """JSON lines on a text stream: the embedded default, needs no broker.

    A line counts as delivered once the stream was flushed without error.
    """

    name = "stdout"

    def __init__(self, stream):
        self.stream = stream

    def send(self, batch) -> list:
        try:
            self.stream.write("".join(body + "\n" for _, body in batch))
            self.stream.flush()
        except (OSError, ValueError) as exc:  # broken pipe, closed stream
            raise SinkError("cannot write to stdout (%s)" % exc) from None
        return [event["id"] for event, _ in batch]

    def close(self) -> None:
        pass


class FallbackSink:
    """The primary sink until it fails (not merely refuses events), then the fallback for the rest.

    Once the primary failed it is not tried again in this run: a dead broker would
    otherwise cost its whole deadline on every batch.
    """

    def __init__(self, primary, fallback):
        self.primary, self.fallback = primary, fallback
        self.fell_back = None  # why the primary was abandoned, for the summary line

    @property
    def name(self) -> str:
        return self.fallback.name if self.fell_back else self.primary.name

    def send(self, batch) -> list:
        head = []
        if self.fell_back is None:
            try:
                return self.primary.send(batch)
            except SinkError as exc:
                if not exc.stop:
                    raise
                self.fell_back = str(exc)
                self.primary.close()
                done = set(exc.confirmed) | set(exc.refused)
                batch = [(e, body) for e, body in batch if e["id"] not in done]
                head = exc.confirmed
        try:
            return head + self.fallback.send(batch)
        except SinkError as exc:
            raise SinkError("%s; fallback: %s" % (self.fell_back, exc), head + exc.confirmed, exc.refused, exc.stop) from None

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()


def describe(url: str) -> str:
    """A sink for messages: the URL without credentials."""
    from .config import mask_url

    return mask_url(url)


def _open_one(url: str, config, stdout):
    from .config import ConfigError
    from .tls import TLSConfigError

    if url == "stdout":
        return StdoutSink(stdout)
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
