"""The ``stdout`` sink: JSON lines on a text stream, the embedded default that needs no broker."""

from .sink import SinkError, in_batches


class StdoutSink:
    """A line counts as delivered once the stream was flushed without error."""

    name = "stdout"

    def __init__(self, stream, batch_events: int, batch_bytes: int):
        self.stream = stream
        self.batch_events, self.batch_bytes = batch_events, batch_bytes

    def deliver(self, events):
        if self.stream is None:  # fd 1 was closed when we started: writing would "deliver" into nothing
            raise SinkError("stdout is closed, nothing written")
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


def make(config, target, stdout) -> StdoutSink:
    return StdoutSink(stdout, config.batch_events, config.batch_bytes)
