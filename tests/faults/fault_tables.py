"""The fault tables that several fault tests walk: bad configurations and hostile brokers.

``test_credentials`` and ``test_hostile_peers`` hold the pilot's three ways of using
pilotlog to them; ``test_doctor_agrees`` holds ``pilotlog doctor``'s verdict to what
replay then does.  One table each, so a case added is tried by all of them.
"""

import json
import socket
import ssl
import threading
import time

from pilotlogger.stompcodec import DEFAULT_MAX_BODY_BYTES, FrameParser, encode_frame

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
    """A TLS STOMP server whose answers come from ``script(command) -> bytes | None``.

    ``None`` means: say nothing (and keep the connection open); HANGUP: close the connection.
    """

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
CONNECTED = encode_frame("CONNECTED", [("version", "1.2"), ("heart-beat", "0,0")])


def connected_then(on_send):
    return lambda command: CONNECTED if command in ("CONNECT", "STOMP") else on_send if command == "SEND" else None


PEERS = {
    # name: (script or a special kind, what the operator's line must say)
    "refuses connections": ("closed", "Connection refused"),
    "accepts TCP, never speaks": ("silent", "timed out"),
    "trickles its TLS handshake": ("trickling", "timed out"),
    "stalls after CONNECTED": (connected_then(None), "no RECEIPT within 1 s"),
    "answers garbage": (lambda c: b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n\x00", "broke the protocol"),
    "hangs up at every SEND": (connected_then(HANGUP), "closed the connection; gave up reconnecting after 3 s"),
    "sends an ERROR frame": (
        connected_then(encode_frame("ERROR", [("message", "disk alarm")], b"no space")),
        "sent an ERROR: disk alarm",
    ),
    "sends a frame over the size limit": (
        connected_then(b"MESSAGE\ndestination:/queue/x\n\n" + b"x" * (DEFAULT_MAX_BODY_BYTES + 1) + b"\x00"),
        "frame body exceeds",
    ),
}
