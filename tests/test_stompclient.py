"""The STOMP I/O loop on real sockets: the deadlines, heart-beats and hang-ups a broker cannot show on demand.

The protocol rules themselves (the window, receipts, ERROR, heart-beat bookkeeping) are
the session's, tested without sockets in test_stompsession.py; a scripted loopback peer
here stands in for the broker only for what needs a socket: receipts withheld past the
timeout, a hang-up mid-stream, heart-beat EOLs actually written while waiting.
Everything a real broker can do is tested in tests/interop/.
"""

import collections
import socket
import threading
import time

import pytest

from pilotlogger.sinks import parse
from pilotlogger.stompclient import NO_DEADLINE, Deadline, StompConnection, StompError, Transport
from pilotlogger.stompcodec import CLIENT_COMMANDS, FrameParser, encode_frame


class ScriptedPeer:
    """Accepts one connection, answers CONNECT, then plays ``on_send(n, frame) -> bytes``."""

    def __init__(self, on_send, heartbeat="0,0", after_connected=b""):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.on_send, self.heartbeat, self.after_connected = on_send, heartbeat, after_connected
        self.max_in_flight = 0
        self.frames = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self):
        return self.server.getsockname()[1]

    def _serve(self):
        conn, _ = self.server.accept()
        parser = FrameParser(commands=CLIENT_COMMANDS)
        sends = 0
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:  # the client gave up and reset the connection
                    return
                if not data:
                    return
                parser.feed(data)
                while True:
                    frame = parser.next_frame()
                    if frame is None:
                        break
                    self.frames.append(frame)
                    if frame.command == "CONNECT":
                        connected = encode_frame("CONNECTED", [("version", "1.2"), ("heart-beat", self.heartbeat)])
                        conn.sendall(connected + self.after_connected)  # one write: one read, most likely
                    elif frame.command == "SEND":
                        sends += 1
                        reply = self.on_send(sends, frame)
                        if reply is None:
                            return
                        conn.sendall(reply)

    def connect(self, timeout=2.0, deadline=NO_DEADLINE) -> StompConnection:
        sock = socket.create_connection(("127.0.0.1", self.port))
        conn = StompConnection(Transport(sock), "broker test", timeout, deadline)
        conn.handshake("/")
        return conn


def build(i, receipt):
    headers = [("destination", "/queue/q")] + ([("receipt", "id-%d" % i)] if receipt else [])
    return encode_frame("SEND", headers, b"x")


def stream(conn, n, window, every=1):
    """Drive conn.stream over n events; return (ids confirmed, the StompError that ended it or None)."""
    confirmed, inflight = [], collections.OrderedDict()
    try:
        for event_id in conn.stream((("id-%d" % i, i) for i in range(n)), build, window, every, inflight):
            confirmed.append(event_id)
    except StompError as exc:
        return confirmed, exc
    assert not inflight
    return confirmed, None


def receipt(frame):
    return encode_frame("RECEIPT", [("receipt-id", frame.headers["receipt"])])


def test_receipts_withheld_past_the_timeout_end_the_stream():
    """Only the 5th frame is ever receipted: it alone is confirmed, and the wait for the rest is bounded."""

    def on_send(n, frame):
        return receipt(frame) if n == 5 else b""  # only the 5th frame is ever receipted

    peer = ScriptedPeer(on_send)
    confirmed, error = stream(peer.connect(timeout=0.5), 5, 10)
    assert confirmed == ["id-4"]
    assert "no RECEIPT within 0.5 s (4 frame(s) unconfirmed)" in str(error)


def test_connection_closed_mid_stream_is_retryable():
    peer = ScriptedPeer(lambda n, f: receipt(f) if n < 2 else None)
    confirmed, error = stream(peer.connect(), 4, 4)
    assert error.retryable and confirmed == ["id-0"]


def test_heartbeats_are_sent_while_waiting_for_receipts(monkeypatch):
    import pilotlogger.stompsession as session

    monkeypatch.setattr(session, "HEARTBEAT_MS", 100)
    peer = ScriptedPeer(lambda n, f: b"", heartbeat="0,100")  # server wants a beat every 100 ms
    conn = peer.connect(timeout=0.6)
    assert conn.send_every == 0.1
    raw = []
    orig = conn.transport.send_all
    monkeypatch.setattr(conn.transport, "send_all", lambda data, t: (raw.append(data), orig(data, t)))
    _, error = stream(conn, 1, 1)
    assert "no RECEIPT" in str(error)
    assert raw.count(b"\n") >= 3  # ~0.6 s of waiting, one EOL per 100 ms


def test_sink_frames_equal_what_the_codec_builds():
    """The sink's fast SEND template must produce exactly the codec's frame."""
    from types import SimpleNamespace

    from pilotlogger.events import make_event
    from pilotlogger.stompclient import StompSink
    from pilotlogger.stompcodec import FrameParser, encode_frame

    config = SimpleNamespace(
        ca_file=None, ca_dir=None, cert=None, key=None, destination_headers=None, destination_check="strict"
    )
    sink = StompSink(config, parse("stomp://h:1/queue/a:b"))
    event = make_event("boot", "x", pilot="https://ce:9000/a\\b", seq=1, epoch=0.0)
    body = b'{"k":"v\x00"}'
    for receipt in (True, False):
        headers = (
            [("destination", "/queue/a:b"), ("content-type", "application/json;charset=utf-8"), ("persistent", "true")]
            + ([("receipt", event["id"])] if receipt else [])
            + [
                ("pilot_id", event["pilot"]),
                ("event_id", event["id"]),
                ("phase", "boot"),
                ("status", "info"),
                ("content-length", str(len(body))),
            ]
        )
        frame = sink.encode((event, body.decode("utf-8")), receipt)
        assert frame == encode_frame("SEND", headers, body)
        parser = FrameParser(commands={"SEND"})
        parser.feed(frame)
        frame = parser.next_frame()
        assert frame.headers["pilot_id"] == "https://ce:9000/a\\b" and frame.body == body


@pytest.mark.parametrize(
    "after,needle",
    [
        (encode_frame("ERROR", [("message", "vhost closing")]), "sent an ERROR: vhost closing"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n\x00", "broke the protocol"),
    ],
    ids=["error", "garbage"],
)
def test_what_follows_connected_in_the_same_read_ends_the_handshake(after, needle):
    """The handshake looked at the first event only: the session was FAILED behind a CONNECTED, and the
    first SEND was a RuntimeError, the broker's words lost (issue 24, 8)."""
    peer = ScriptedPeer(lambda n, f: b"", after_connected=after)
    with pytest.raises(StompError, match=needle) as raised:
        peer.connect()
    assert not raised.value.retryable


def test_the_deadline_cuts_the_wait_for_receipts_and_says_so():
    """A broker that heart-beats and never confirms: the timeout (30 s) would never end the wait; the
    deadline of the whole delivery does (issue 24, 12)."""
    peer = ScriptedPeer(lambda n, f: b"\n")  # an EOL for each SEND: alive, never a receipt
    conn = peer.connect(timeout=30, deadline=Deadline(0.5))
    started = time.monotonic()
    confirmed, error = stream(conn, 3, 10)
    assert confirmed == [] and time.monotonic() - started < 10
    assert "stopped at the deadline (0.5 s), 3 frame(s) unconfirmed" in str(error) and not error.retryable
