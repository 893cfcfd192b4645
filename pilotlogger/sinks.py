"""Sinks: where shipped events go.  Every sink has the same small surface.

``send(batch) -> confirmed ids`` takes a list of ``(event, body)`` pairs, where ``body``
is the event already rendered in the configured format, and returns the ids the
destination confirmed, in order.  A sink that fails part-way raises :class:`SinkError`
carrying the ids confirmed before the failure.  ``close()`` releases connections.

``ship.py`` sees only this surface; which sink a URL means is decided here, and the
modules for network sinks are imported only when such a sink is asked for.
"""


class SinkError(Exception):
    """Delivery failed; ``str(exc)`` is one line for the operator, ``confirmed`` what got through."""

    def __init__(self, message: str, confirmed=()):
        super().__init__(message)
        self.confirmed = list(confirmed)


class StdoutSink:
    """JSON lines on a text stream: the embedded default, needs no broker.

    A line counts as delivered once the stream was flushed without error.
    """

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


def describe(url: str) -> str:
    """A sink for messages: the URL without credentials."""
    from .config import mask_url

    return mask_url(url)


def open_sink(config, stdout):
    """The sink named by ``config.sink``."""
    from .config import ConfigError

    url = config.sink
    if url == "stdout":
        return StdoutSink(stdout)
    if url.startswith(("stomp+ssl://", "stomp://")):
        from .stompclient import StompSink
        from .tls import TLSConfigError

        try:
            return StompSink(config)
        except (ValueError, TLSConfigError) as exc:
            raise ConfigError("sink %s: %s" % (describe(url), exc)) from None
    raise ConfigError(
        "sink %r is not supported (use stdout, stomp+ssl://host:port/queue/name or stomp://… for plain TCP)"
        % describe(url)
    )
