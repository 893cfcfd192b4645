"""STOMP client rules that real brokers cannot be made to show on demand.

A scripted loopback peer stands in for the broker only to produce behaviour no real
broker offers at will (an ERROR after exactly N receipts, receipts withheld, a count of
frames in flight); everything a real broker can do is tested in tests/interop/.
"""

import collections
import re
import socket
import threading

import pytest

from pilotlogger.sinks import normalise_destination, parse
from pilotlogger.stompclient import StompConnection, StompError, Transport
from pilotlogger.stompcodec import FrameParser, encode_frame, CLIENT_COMMANDS
from pilotlogger.stompsession import heartbeats


def parse_url(url):
    target = parse(url)
    return target.tls, target.hosts, target.destination


@pytest.mark.parametrize(
    "url,expected",
    [
        ("stomp+ssl://mq.example.org/queue/pilots", (True, [("mq.example.org", 61614)], "/queue/pilots")),
        ("stomp://h:1234/topic/t", (False, [("h", 1234)], "/topic/t")),
        ("stomp+ssl://a,b,c:61999/queue/q", (True, [("a", 61999), ("b", 61999), ("c", 61999)], "/queue/q")),
        ("stomp+ssl://a:1,b:2/queue/q", (True, [("a", 1), ("b", 2)], "/queue/q")),
        ("stomp+ssl://[::1]:7/queue/q", (True, [("::1", 7)], "/queue/q")),
        ("stomp+ssl://mq:61614/mq.example.org::Queues::pilotLogging", (True, [("mq", 61614)], "/queue/pilotLogging")),
        ("stomp+ssl://mq:61614/mq::Topic::pilots", (True, [("mq", 61614)], "/topic/pilots")),
    ],
)
def test_parse_url(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url,needle",
    [
        ("ftp://h/queue/q", "is not supported"),
        ("stomp+ssl://u:p@h/queue/q", "credentials"),
        ("stomp+ssl://h:port/queue/q", "bad port"),
        ("stomp+ssl://h", "must look like /queue/name"),
        ("stomp+ssl://h/mq::Exchange::x", "DIRAC's host::Queue::name"),
    ],
)
def test_bad_urls(url, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_url(url)


def test_destinations_pass_through():
    for d in ("/queue/a", "/topic/b", "/exchange/ex/key", "/amq/queue/c"):
        assert normalise_destination(d) == d


def test_heartbeat_negotiation_follows_the_spec():
    # client offers 10000,10000; server sx,sy → we send every max(cx, sy), expect every max(cy, sx)
    assert heartbeats("0,0") == (0.0, 0.0)
    assert heartbeats("5000,20000") == (20.0, 10.0)
    assert heartbeats("30000,0") == (0.0, 30.0)
    assert heartbeats("garbage") == (0.0, 0.0)


class ScriptedPeer:
    """Accepts one connection, answers CONNECT, then plays ``on_send(n, frame) -> bytes``."""

    def __init__(self, on_send, heartbeat="0,0"):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.on_send, self.heartbeat = on_send, heartbeat
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
                        conn.sendall(encode_frame("CONNECTED", [("version", "1.2"), ("heart-beat", self.heartbeat)]))
                    elif frame.command == "SEND":
                        sends += 1
                        reply = self.on_send(sends, frame)
                        if reply is None:
                            return
                        conn.sendall(reply)

    def connect(self, timeout=2.0) -> StompConnection:
        sock = socket.create_connection(("127.0.0.1", self.port))
        conn = StompConnection(Transport(sock), "broker test", timeout)
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


def test_window_bounds_frames_in_flight():
    """With receipts held back until the window is full, the peer never sees more than W unreceipted."""
    window, outstanding = 5, []

    def on_send(n, frame):
        outstanding.append(frame)
        assert len(outstanding) <= window, "client exceeded its window"
        if len(outstanding) < window and n < 23:
            return b""
        replies = b"".join(receipt(f) for f in outstanding)
        del outstanding[:]
        return replies

    peer = ScriptedPeer(on_send)
    confirmed, error = stream(peer.connect(), 23, window)
    assert error is None and confirmed == ["id-%d" % i for i in range(23)]


def test_error_mid_stream_keeps_only_receipted_events_confirmed():
    def on_send(n, frame):
        if n <= 3:
            return receipt(frame)
        return encode_frame("ERROR", [("message", "quota exceeded")], b"disk alarm")

    peer = ScriptedPeer(on_send)
    confirmed, error = stream(peer.connect(), 10, 4)
    assert confirmed == ["id-0", "id-1", "id-2"]
    assert not error.retryable
    assert "sent an ERROR: quota exceeded (disk alarm)" in str(error)


def test_a_receipt_confirms_only_its_own_frame():
    """STOMP receipts are cumulative for *reception*; we count an event only on its own receipt."""
    def on_send(n, frame):
        return receipt(frame) if n == 5 else b""  # only the 5th frame is ever receipted

    peer = ScriptedPeer(on_send)
    confirmed, error = stream(peer.connect(timeout=0.5), 5, 10)
    assert confirmed == ["id-4"]
    assert "no RECEIPT within 0.5 s (4 frame(s) unconfirmed)" in str(error)


def test_batch_receipts_confirm_the_frames_before_them_cumulatively():
    """receipt_every=K: a receipt every K frames confirms the unreceipted frames before it."""
    def on_send(n, frame):
        return receipt(frame) if "receipt" in frame.headers and n != 8 else b""  # frame 8's receipt never comes

    peer = ScriptedPeer(on_send)
    confirmed, error = stream(peer.connect(timeout=0.5), 10, 10, every=4)
    # Receipts are asked on id-3, id-7 and id-9 (the last of the write).  id-3's covers 0-3; id-7's is
    # withheld, so id-7 stays unconfirmed; id-9's covers the unreceipted 4-6 and 8, and 9 itself.
    assert sorted(confirmed, key=lambda x: int(x[3:])) == ["id-%d" % i for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
    assert "1 frame(s) unconfirmed" in str(error)


def test_frames_left_in_flight_are_sent_again_first_on_the_next_connection():
    """What a lost connection left unconfirmed goes out before anything new, with its receipt."""
    seen = []

    def on_send(n, frame):
        seen.append(frame.headers["receipt"])
        return receipt(frame)

    inflight = collections.OrderedDict((("id-%d" % i, (build(i, True), True)) for i in (7, 8)))
    confirmed = list(ScriptedPeer(on_send).connect().stream(iter([("id-9", 9)]), build, 10, inflight=inflight))
    assert seen == confirmed == ["id-7", "id-8", "id-9"] and not inflight


def test_garbage_from_the_broker_is_a_protocol_error():
    peer = ScriptedPeer(lambda n, f: b"HTTP/1.1 400 Bad Request\r\n\r\n\x00")
    _, error = stream(peer.connect(), 1, 1)
    assert "broke the protocol: unexpected frame command 'HTTP/1.1 400 Bad Request'" in str(error)


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

    config = SimpleNamespace(ca_file=None, ca_dir=None, cert=None, key=None)
    sink = StompSink(config, parse("stomp://h:1/queue/a:b"))
    event = make_event("boot", "x", pilot="https://ce:9000/a\\b", seq=1, epoch=0.0)
    body = b'{"k":"v\x00"}'
    for receipt in (True, False):
        headers = [("destination", "/queue/a:b"), ("content-type", "application/json;charset=utf-8"),
                   ("persistent", "true")] + ([("receipt", event["id"])] if receipt else []) + [
                   ("pilot_id", event["pilot"]), ("event_id", event["id"]), ("phase", "boot"), ("status", "info"),
                   ("content-length", str(len(body)))]
        frame = sink.encode((event, body.decode("utf-8")), receipt)
        assert frame == encode_frame("SEND", headers, body)
        parser = FrameParser(commands={"SEND"})
        parser.feed(frame)
        frame = parser.next_frame()
        assert frame.headers["pilot_id"] == "https://ce:9000/a\\b" and frame.body == body
