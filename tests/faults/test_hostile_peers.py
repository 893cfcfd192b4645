"""Brokers that misbehave in ways a real broker cannot be made to: the deadlines and limits hold.

Each peer is a real TLS server on loopback (the test PKI's server certificate), scripted
to fail one way.  For each, the pilot's three ways of using pilotlog are tried:
``replay`` and ``emit --send`` must exit 0 with one clear stderr line and keep every
event spooled; ``run -- sh -c 'exit 7'`` must return 7.  All within a bounded time.
"""

import socket
import ssl
import threading

import pytest

import ledger
from brokers import free_port
from helpers import SilentListener, stderr_lines
from pilotlogger.stompcodec import DEFAULT_MAX_BODY_BYTES, FrameParser, encode_frame

TIMEOUT, DEADLINE = 1.0, 3.0
BOUND = 2 * DEADLINE + 6  # the worst case: failover deadline, then the wrapper's drain


class ScriptedBroker:
    """A TLS STOMP server whose answers come from ``script(command) -> bytes | None``.

    ``None`` means: say nothing (and keep the connection open); HANGUP: close the connection.
    """

    def __init__(self, pki, script):
        self.script = script
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.path("server.pem"), pki.path("server.key"))
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, raw):
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
            conn.settimeout(0.2)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        parser = FrameParser(commands={"CONNECT", "STOMP", "SEND", "DISCONNECT"})
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                except (OSError, ssl.SSLError):
                    return
                if not data:
                    return
                parser.feed(data)
                frame = parser.next_frame()
                while frame is not None:
                    reply = self.script(frame.command)
                    if reply is HANGUP:
                        return
                    if reply:
                        try:
                            conn.sendall(reply)
                        except (OSError, ssl.SSLError):
                            return
                    frame = parser.next_frame()

    def __enter__(self):
        self._threads[0].start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.server.close()


HANGUP = object()
CONNECTED = encode_frame("CONNECTED", [("version", "1.2"), ("heart-beat", "0,0")])


def connected_then(on_send):
    return lambda command: CONNECTED if command in ("CONNECT", "STOMP") else on_send if command == "SEND" else None


PEERS = {
    # name: (script or a special kind, what the operator's line must say)
    "refuses connections": ("closed", "Connection refused"),
    "accepts TCP, never speaks": ("silent", "timed out"),
    "stalls after CONNECTED": (connected_then(None), "no RECEIPT within 1 s"),
    "answers garbage": (lambda c: b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n\x00", "broke the protocol"),
    "hangs up at every SEND": (connected_then(HANGUP), "closed the connection; gave up reconnecting after 3 s"),
    "sends an ERROR frame": (connected_then(encode_frame("ERROR", [("message", "disk alarm")], b"no space")),
                             "sent an ERROR: disk alarm"),
    "sends a frame over the size limit": (
        connected_then(b"MESSAGE\ndestination:/queue/x\n\n" + b"x" * (DEFAULT_MAX_BODY_BYTES + 1) + b"\x00"),
        "frame body exceeds"),
}


@pytest.fixture(params=sorted(PEERS))
def peer(request, pki):
    kind, expected = PEERS[request.param]
    if kind == "closed":
        yield request.param, free_port(), expected
    elif kind == "silent":
        with SilentListener() as listener:
            yield request.param, listener.port, expected
    else:
        with ScriptedBroker(pki, kind) as broker:
            yield request.param, broker.port, expected


def test_a_hostile_broker_never_harms_the_pilot(pilotlog, pki, peer):
    name, port, expected = peer
    env = {"PILOTLOG_SINK": "stomp+ssl://localhost:%d/queue/pilots" % port, "PILOTLOG_CA_FILE": pki.path("ca.pem"),
           "PILOTLOG_TIMEOUT": TIMEOUT, "PILOTLOG_DEADLINE": DEADLINE}
    for i in range(5):
        assert pilotlog("emit", "log", "-m", "line %d" % i).returncode == 0
    spooled = {e["id"] for e in pilotlog.events()}
    watch, lines, exit_ok = ledger.Stopwatch(), [], True

    with watch:
        replay = pilotlog("replay", env=env)
    lines += stderr_lines(replay)
    exit_ok &= replay.returncode == 0 and len(stderr_lines(replay)) == 1
    with watch:
        send = pilotlog("emit", "install", "-m", "installing", "--send", env=env)
    exit_ok &= send.returncode == 0 and len(stderr_lines(send)) == 1
    with watch:
        wrapped = pilotlog("run", "--", "sh", "-c", "exit 7", env=env)
    exit_ok &= wrapped.returncode == 7

    kept = {e["id"] for e in pilotlog.events()}
    lost = len(spooled - kept)
    ledger.record("hostile broker", name, 3, lost, exit_ok and watch.longest < BOUND, watch.longest, lines[0] if lines else "")
    assert lost == 0 and len(kept) >= len(spooled) + 3  # install, and the wrapper's boot and shutdown
    assert replay.returncode == 0 and send.returncode == 0 and wrapped.returncode == 7
    (line,) = stderr_lines(replay)
    assert expected in line and "5 event(s) kept in spool" in line, line
    assert "Traceback" not in replay.stderr + send.stderr + wrapped.stderr
    assert watch.longest < BOUND
