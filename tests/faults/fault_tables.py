"""The fault tables that several fault tests walk: bad configurations and hostile brokers.

``test_credentials`` and ``test_hostile_peers`` hold the pilot's three ways of using
pilotlog to them; ``test_doctor_agrees`` holds ``pilotlog doctor``'s verdict to what
replay then does.  One table each, so a case added is tried by all of them.
"""

import collections
import json
import socket
import ssl
import threading
import time

from pilotlogger.stompcodec import DEFAULT_MAX_BODY_BYTES, FrameParser, ProtocolError, encode_frame

# name: (serve certificate — or (certificate, serve's extra arguments…) —, environment (a callable of pki, tmp_path), exit code of replay and of emit --send,
#        needle).  A broken configuration file is a usage error (2, nothing written); a credential
#        that cannot be loaded stops replay (2) but not the one-liner, which keeps the event (0).
CASES = {
    "unknown key in the config file": (
        "server",
        lambda pki, d: {"PILOTLOG_CONFIG": config_file(d, {"colour": "blue"})},
        (2, 2),
        "unknown key 'colour'",
    ),
    "wrong type in the config file": (
        "server",
        lambda pki, d: {"PILOTLOG_CONFIG": config_file(d, {"timeout": "soon"})},
        (2, 2),
        "key timeout: 'soon' is not a positive number",
    ),
    "config file that is not JSON": (
        "server",
        lambda pki, d: {"PILOTLOG_CONFIG": text_file(d, "pilot.json", "sink = stdout")},
        (2, 2),
        "pilot.json",
    ),
    "wrong type in the environment": ("server", lambda pki, d: {"PILOTLOG_WINDOW": "many"}, (2, 2), "PILOTLOG_WINDOW"),
    "unreadable client certificate": (
        "server",
        lambda pki, d: {"PILOTLOG_CERT": text_file(d, "cert.pem", "not a certificate")},
        (2, 0),
        "cannot use client certificate",
    ),
    "unreadable client key": (
        "server",
        lambda pki, d: {"PILOTLOG_KEY": text_file(d, "key.pem", "not a key")},
        (2, 0),
        "cannot use client certificate",
    ),
    "key that does not match the certificate": (
        "server",
        lambda pki, d: {"PILOTLOG_KEY": pki.path("server.key")},
        (2, 0),
        "cannot use client certificate",
    ),
    "missing proxy file": (
        "server",
        lambda pki, d: {"X509_USER_PROXY": str(d / "x509up_u1000"), "PILOTLOG_CERT": "", "PILOTLOG_KEY": ""},
        (2, 0),
        "client certificate {d}/x509up_u1000 does not exist",
    ),
    "missing CA file": (
        "server",
        lambda pki, d: {"PILOTLOG_CA_FILE": str(d / "ca.pem")},
        (2, 0),
        "CA file {d}/ca.pem does not exist",
    ),
    "missing CA directory": (
        "server",
        lambda pki, d: {"PILOTLOG_CA_DIR": str(d / "certificates"), "PILOTLOG_CA_FILE": ""},
        (2, 0),
        "CA directory {d}/certificates does not exist",
    ),
    "expired server certificate": (
        "expired-server",
        lambda pki, d: {},
        (0, 0),
        "server certificate not trusted (certificate has expired)",
    ),
    "expired client certificate": (
        "server",
        lambda pki, d: {
            "PILOTLOG_CERT": pki.path("expired-client.pem"),
            "PILOTLOG_KEY": pki.path("expired-client.key"),
        },
        (0, 0),
        "the server refused our client certificate (SSLV3_ALERT_CERTIFICATE_EXPIRED)",
    ),
    "server certificate from another CA": (
        "server",
        lambda pki, d: {"PILOTLOG_CA_FILE": pki.path("other-ca.pem")},
        (0, 0),
        "server certificate not trusted",
    ),
    "host-name mismatch": (
        "server",
        lambda pki, d: {"PILOTLOG_SINK": "{url by address}"},
        (0, 0),
        "server certificate does not match the host name",
    ),
    "no client certificate": (
        "server",
        lambda pki, d: {"PILOTLOG_CERT": "", "PILOTLOG_KEY": "", "X509_USER_PROXY": ""},
        (0, 0),
        "the server refused our client certificate",
    ),
    "client certificate the server does not allow": (
        ("server", "--allowed-cn", "another-pilot-factory"),
        lambda pki, d: {},
        (0, 0),
        "HTTP 403",
    ),
    "credentials in the HTTPS URL": (
        "server",
        lambda pki, d: {"PILOTLOG_SINK": "{url with credentials}"},
        (2, 0),
        "put credentials in cert/key settings",
    ),
}


def case_environment(case: str, pki, directory, url: str) -> dict:
    """The environment of ``CASES[case]``, its URL placeholders filled for a receiver at ``url``."""
    urls = {
        "{url by address}": url.replace("localhost", "127.0.0.1"),  # the certificate names localhost only
        "{url with credentials}": url.replace("https://", "https://pilot:s3cret@"),
    }
    return {k: urls.get(v, v) for k, v in CASES[case][1](pki, directory).items()}


def config_file(directory, settings) -> str:
    return text_file(directory, "pilotlog.json", json.dumps(dict({"sink": "stdout"}, **settings)))


def text_file(directory, name, text) -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


class ScriptedTLSServer:
    """A TLS server on loopback (the test PKI's server certificate) that hands each connection
    to ``_serve(raw socket)`` in a thread of its own; a context manager (started on entry)."""

    def __init__(self, pki, script, host="127.0.0.1", port=0):
        self.script = script
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.path("server.pem"), pki.path("server.key"))
        self.server = socket.socket()
        self.server.bind((host, port))
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
            except OSError:  # closed under us
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, raw):
        raise NotImplementedError

    def __enter__(self):
        self._threads[0].start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.server.close()


class ScriptedBroker(ScriptedTLSServer):
    """A TLS STOMP server playing ``script`` on every connection, keeping the books a test checks.

    ``script(frame)`` answers each frame the client sends: the bytes to send, None (nothing, the
    connection stays open), HANGUP, or a list of those, played in order.  A script with a ``connection()`` method is asked for a
    fresh player per connection (a stateful script); a player with an ``idle()`` method is asked
    what to send after each 0.2 s of quiet (heart-beats, receipts that come late).

    The books: ``connections`` (their number), ``accepted`` and ``hung_up`` (monotonic times, taken
    after the client connected and before the server closes, so a pause between them is the
    client's whatever the load), ``sends`` (event id -> SEND frames that carried it, on every
    connection) and ``confirmed``/``covered``: the event ids a RECEIPT of ours confirmed as the
    client asked — its own receipt, or (cumulative, ``receipt_every`` > 1) a later receipt asked for
    on the same connection after a frame that asked for none.  What we send is read back with the
    client's parser: after bytes it cannot parse, or an ERROR (the session is over), nothing counts.

    ``watch()``, when given, is called after each frame received and each quiet moment, books
    updated: a test checks there what must hold at every instant, not only at the end.
    """

    def __init__(self, pki, script, watch=None, **kw):
        super().__init__(pki, script, **kw)
        self.watch = watch or (lambda: None)
        self.lock = threading.Lock()
        self.connections, self.accepted, self.hung_up = 0, [], []
        self.sends = collections.Counter()
        self.confirmed, self.covered = set(), set()

    def _serve(self, raw):
        with self.lock:
            self.connections += 1
            self.accepted.append(time.monotonic())
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
            conn.settimeout(0.2)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        play = self.script.connection() if hasattr(self.script, "connection") else self.script
        books = _ConnectionBooks(self)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    self.watch()
                    idle = getattr(play, "idle", None)
                    if idle is None or self._answer(conn, books, idle()):
                        continue
                    return
                except (OSError, ssl.SSLError):
                    return
                if not data:
                    return
                books.parser.feed(data)
                frame = books.parser.next_frame()
                while frame is not None:
                    books.received(frame)
                    self.watch()
                    if not self._answer(conn, books, play(frame)):
                        return
                    frame = books.parser.next_frame()

    def _answer(self, conn, books, reply) -> bool:
        """Send ``reply``; False when the connection is over (HANGUP, or the client gone)."""
        if isinstance(reply, list):
            return all(self._answer(conn, books, part) for part in reply)
        if reply is HANGUP:
            with self.lock:
                self.hung_up.append(time.monotonic())
            return False
        if reply:
            books.sent(reply)
            try:
                conn.sendall(reply)
            except (OSError, ssl.SSLError):
                return False
        return True


class _ConnectionBooks:
    """What one connection of a ScriptedBroker received and confirmed (see its docstring)."""

    def __init__(self, broker):
        self.broker = broker
        self.parser = FrameParser(commands={"CONNECT", "STOMP", "SEND", "DISCONNECT"})
        self.ours = FrameParser()  # our own bytes, as the client reads them
        self.readable = True
        self.frames = []  # (event id, receipt asked or None) of each SEND, in order

    def received(self, frame):
        if frame.command == "SEND":
            event_id = frame.headers.get("event_id")
            self.frames.append((event_id, frame.headers.get("receipt")))
            with self.broker.lock:
                self.broker.sends[event_id] += 1

    def sent(self, data: bytes):
        if not self.readable:
            return
        self.ours.feed(data)
        try:
            frame = self.ours.next_frame()
            while frame is not None and self.readable:
                if frame.command == "RECEIPT":
                    self._confirm(frame.headers.get("receipt-id"))
                self.readable = frame.command != "ERROR"
                frame = self.ours.next_frame()
        except ProtocolError:
            self.readable = False

    def _confirm(self, receipt):
        asked = [i for i, (_, r) in enumerate(self.frames) if r == receipt]
        if not asked:
            return  # a receipt nobody asked for confirms nothing
        with self.broker.lock:
            self.broker.confirmed.add(self.frames[asked[0]][0])
            self.broker.covered.update(e for e, r in self.frames[: asked[0]] if r is None)


class TricklingHandshake(ScriptedTLSServer):
    """A TLS server that sends its side of the handshake a byte at a time, each well within any
    read timeout: only a bound on the whole handshake ends it (Python's own, since 3.5)."""

    def _serve(self, raw):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)
        raw.settimeout(0.05)
        with raw:
            while not self._stop.is_set():
                try:
                    tls.do_handshake()
                    return
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    return
                try:
                    for byte in outgoing.read():
                        if self._stop.is_set():
                            return
                        raw.sendall(bytes([byte]))
                        time.sleep(0.05)
                    data = raw.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                incoming.write(data)


HANGUP = object()
CONNECTS = ("CONNECT", "STOMP")
CONNECTED = encode_frame("CONNECTED", [("version", "1.2"), ("heart-beat", "0,0")])


def connected_then(on_send, connected=CONNECTED):
    """Answer CONNECT with ``connected`` and every SEND with ``on_send``; nothing else."""
    return lambda frame: connected if frame.command in CONNECTS else on_send if frame.command == "SEND" else None


def receipt(receipt_id: str) -> bytes:
    return encode_frame("RECEIPT", [("receipt-id", receipt_id)])


def error(message: str, body: bytes = b"") -> bytes:
    return encode_frame("ERROR", [("message", message)], body)


class HangUpWhenQuiet:
    """Reads the SENDs of each connection in silence, and hangs up at the first quiet moment after them."""

    def connection(self):
        return _HangingUp()


class _HangingUp:
    def __init__(self):
        self.sends = 0

    def __call__(self, frame):
        if frame.command in CONNECTS:
            return CONNECTED
        self.sends += frame.command == "SEND"
        return None

    def idle(self):
        return HANGUP if self.sends else None


class HeartBeating:
    """CONNECTED offering heart-beats, an EOL every 0.2 s of quiet, and never a RECEIPT: alive, useless."""

    def __call__(self, frame):
        if frame.command in CONNECTS:
            return encode_frame("CONNECTED", [("version", "1.2"), ("heart-beat", "200,0")])
        return None

    def idle(self):
        return b"\n"


class Trickle:
    """Every receipt asked for, in order, but at most one RECEIPT per ``every`` seconds: never silent for
    long (each wait for a receipt ends well within the timeout), never done."""

    def __init__(self, every: float):
        self.every = every

    def connection(self):
        return _Trickling(self.every)


class _Trickling:
    def __init__(self, every: float):
        self.every, self.held, self.last = every, collections.deque(), time.monotonic()

    def __call__(self, frame):
        if frame.command in CONNECTS:
            return CONNECTED
        if "receipt" in frame.headers:
            self.held.append(receipt(frame.headers["receipt"]))
        return self.idle()

    def idle(self):
        if self.held and time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            return self.held.popleft()
        return None


def unasked_receipts(frame):
    """A RECEIPT naming each SEND that asked for none (by its event id), and silence for those that asked."""
    if frame.command in CONNECTS:
        return CONNECTED
    if frame.command == "SEND" and "receipt" not in frame.headers:
        return receipt(frame.headers["event_id"])
    return None


#: Every hostile broker below must fail the delivery; doctor must then agree (test_doctor_agrees.py).
PEERS = {
    # name: (script or a special kind, what the operator's line must say[, environment of the pilot])
    "refuses connections": ("closed", "Connection refused"),
    "accepts TCP, never speaks": ("silent", "timed out"),
    "trickles its TLS handshake": ("trickling", "timed out"),
    "stalls after CONNECTED": (connected_then(None), "at the deadline (3 s)"),
    "answers garbage": (
        lambda frame: b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n\x00",
        "broke the protocol",
    ),
    "hangs up at every SEND": (connected_then(HANGUP), "closed the connection"),
    "sends an ERROR frame": (connected_then(error("disk alarm", b"no space")), "sent an ERROR: disk alarm"),
    "sends a frame over the size limit": (
        connected_then(b"MESSAGE\ndestination:/queue/x\n\n" + b"x" * (DEFAULT_MAX_BODY_BYTES + 1) + b"\x00"),
        "frame body exceeds",
    ),
    # issue 24: found by scripted hostile brokers
    "sends an ERROR in the read of its CONNECTED": (
        connected_then(None, connected=CONNECTED + error("vhost closing", b"maintenance")),
        "sent an ERROR: vhost closing (maintenance)",
    ),
    "sends garbage in the read of its CONNECTED": (
        connected_then(None, connected=CONNECTED + b"HTTP/1.1 400 Bad Request\r\n\r\n\x00"),
        "broke the protocol: unexpected frame command 'HTTP/1.1 400 Bad Request'",
    ),
    "offers heart-beats of 400 digits": (
        connected_then(
            error("queue full"),
            connected=encode_frame("CONNECTED", [("version", "1.2"), ("heart-beat", "9" * 400 + "," + "9" * 400)]),
        ),
        "sent an ERROR: queue full",
    ),
    "reads the SENDs, then hangs up": (HangUpWhenQuiet(), "closed the connection"),
    "heart-beats, never receipts": (HeartBeating(), "at the deadline (3 s)"),
    "receipts only the frames that asked for none": (
        unasked_receipts,
        "at the deadline (3 s)",
        {"PILOTLOG_RECEIPT_EVERY": 5},
    ),
}
