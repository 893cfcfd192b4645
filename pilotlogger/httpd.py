"""The HTTP server both receivers share (``pilotlog serve`` and ``pilotlog relay``), stdlib only.

What ``http.server`` leaves out, in one place: a deadline per request (a watchdog, so a
client dribbling bytes cannot stretch it), a bound on connections, a lingering close, and
answers that are always DIRAC-style JSON (``{"OK": true, "Value": …}`` /
``{"OK": false, "Message": …}``) with a status line, even to garbage.

A receiver subclasses :func:`handler_base` with its ``do_POST``, which reads the body with
``_body()`` and answers through ``_respond(produce)`` (``produce`` returns the ``Value`` or
raises :class:`Reject`), and gives the class to :class:`Server`.  Defences every receiver gets:

* smuggling: after any refusal or parse error the answer says ``Connection: close`` and
  the connection is closed, so a body the server did not accept is never read as the next
  request; chunked bodies (411), several or malformed Content-Lengths (400) are refused;
  headers are read strictly (``Name: value`` lines; a folded or colon-less line is a 400);
* resources: bodies over ``max_body`` (also after gunzip) → 413; each request (TLS
  handshake, request line, headers and body) must be complete within ``request_timeout``
  seconds or its connection is shut; at most ``max_connections`` are served at once, up to
  as many more get a quick 503, beyond that a connection is closed at once; the listen
  backlog takes a burst of pilots;
* an unexpected failure is a 500 with a reason, never an empty reply;
* ``admit`` (optional): asked once per connection as it is accepted, it may refuse it with a
  reason (the relay: a peer that is not its own user); a refused connection has its own
  small lane (REFUSED_AT_ONCE, the short deadline, a 403) and never takes a place of the
  ``max_connections`` others.

``always_200``: a receiver whose client crashes on any other status (the DIRAC Pilot's
``urlopen`` raises on a non-2xx answer) answers every request it read with 200, the
refusal said in ``{"OK": false, "Message": …}`` only; the connection still closes after it.
Such a request, once read whole, is answered even when its work outlives the deadline (a
spool on a stalled disk): the watchdog then answers it ``{"OK": false}`` itself, instead of
shutting the connection (a reset, which crashes the Pilot), and the late work's own answer is
never written.

Who the client is, over TLS, is one rule for both receivers: :func:`client_cn`, the owner of
the certificate chain OpenSSL verified (a grid proxy's user certificate).

Cost (the relay answers the Pilot's every post; docs/performance.md): no thread is started
and no connection handed between threads per request (threads accept for themselves), the
request is read without the email package, the answer is one write, and a connection whose
request was read whole is closed at once instead of lingering.
"""

import json
import re
import socket
import threading
import time

from .events import escape_controls
from .redact import mask_url

LENGTH_RE = re.compile(r"[0-9]{1,15}\Z")
VERSION_RE = re.compile(r"HTTP/([0-9]{1,9})\.([0-9]{1,9})\Z")
TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # a header name (RFC 9110's token)
MAX_HEADERS = 100  # as http.client reads them
DEFAULT_MAX_BODY = 8 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 15.0  # seconds for one whole request, handshake to last body byte
ANSWERED = True  # a connection's late answer, once the watchdog sent it
MAX_DISTINCT_LINES = 100  # lines a receiver saying each line once says at most
DEFAULT_MAX_CONNECTIONS = 100
BACKLOG = 1024  # pending connections the kernel keeps (capped by net.core.somaxconn)
REFUSED_AT_ONCE = 4  # connections ``admit`` refused, answered at once (within 2 s); past that closed at once
PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)  # (an int: the flags are an enum, slow to combine)
IDLE_ACCEPTORS = 2  # connection threads kept waiting in accept for the next connection


class Headers:
    """A request's headers: names without case, every value of a name kept in order."""

    __slots__ = ("_values", "_count")

    def __init__(self) -> None:
        self._values: dict = {}
        self._count = 0

    def add(self, name: str, value: str) -> bool:
        """Add one header; False past MAX_HEADERS."""
        self._count += 1
        self._values.setdefault(name.lower(), []).append(value)
        return self._count <= MAX_HEADERS

    def get(self, name: str, default=None):
        values = self._values.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str):
        return self._values.get(name.lower())

    def __contains__(self, name) -> bool:
        return name.lower() in self._values


class Reject(Exception):
    """Refuse a request: HTTP ``status`` with ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def client_cn(conn, receiver: str = "serve") -> "str | None":
    """The CN ``--allowed-cn`` (and serve's ``--vo-for-cn``) match: the first CN of the client
    certificate's *owner*, from the chain OpenSSL verified; None without a client certificate.

    A grid proxy's owner is the end-entity certificate that signed it, through every level
    (``x509.owner``), never the proxy's own CNs, which its holder chose.  The chain comes from
    OpenSSL's verification (``tls.verified_chain``, Python >= 3.10), which checked each signature
    up to the CA and each proxy's subject against its issuer's, so no client can claim another
    owner.  Before 3.10 Python gives a server the peer's certificate alone: a proxy's owner cannot
    be known there, and the request is refused (403) saying so.
    """
    from .tls import verified_chain
    from .x509 import owner

    getpeercert = getattr(conn, "getpeercert", None)
    leaf = getpeercert(binary_form=True) if getpeercert else None
    if not leaf:
        return None
    chain = verified_chain(conn)
    if chain and chain[0] != leaf:  # never mix two handshakes' certificates
        chain = []
    try:
        return owner(chain or [leaf])["cn"] or None
    except ValueError as exc:
        if chain is None:
            import sys

            raise Reject(
                403,
                "%s on Python %d.%d cannot find a grid proxy's owner: it needs the chain OpenSSL verified,"
                " which Python gives a server from 3.10 on" % ((receiver,) + sys.version_info[:2]),
            ) from None
        raise Reject(403, "cannot tell whose client certificate this is: %s" % exc) from None


def warn_if_owners_unknown(receiver: str, options: str) -> None:
    """Say at start when this Python cannot find a proxy's owner (see :func:`client_cn`)."""
    from .tls import can_read_verified_chain

    if not can_read_verified_chain():
        import sys

        from .console import warn

        warn(
            "Python %d.%d cannot show a server the chain it verified, so a grid proxy's owner cannot be found:"
            " clients with proxies will be refused (403) by %s; run %s with Python 3.10 or later to accept them"
            % (sys.version_info[:2] + (options, receiver))
        )


def reachable(address: str) -> str:
    """An address a local client connects to: the address listened on, or loopback when that
    is every address (``0.0.0.0``, ``::``), of which loopback is one."""
    import ipaddress

    try:
        unspecified = ipaddress.ip_address(address.split("%", 1)[0]).is_unspecified
    except ValueError:  # a host name (localhost): connected to as it is
        return address
    if unspecified:
        return "::1" if ":" in address else "127.0.0.1"
    return address


def check_connectable(listen: str) -> None:
    """Raise OSError when a local client could not connect to what ``listen`` names: binding
    works on a loopback that is down (a container's network namespace), connecting does not,
    and a Pilot that cannot reach its relay exits 1.  Tried on a throwaway port of its own."""
    host = reachable(parse_listen(listen)[0])
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        probe.listen(1)
        socket.create_connection(probe.getsockname()[:2], timeout=2).close()


def parse_listen(listen: str):
    """``HOST:PORT`` (``[v6]:PORT``, or ``:PORT`` for loopback) → (host, port); ValueError names the problem."""
    host, colon, port = listen.rpartition(":")
    if not colon or not LENGTH_RE.match(port) or not 0 <= int(port) <= 65535:
        raise ValueError("--listen %r must be HOST:PORT with a port from 0 to 65535" % listen[:80])
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if any(c.isspace() or c in "[]/" for c in host):
        raise ValueError("--listen %r has a malformed host" % listen[:80])
    return host or "127.0.0.1", int(port)


def handler_base(name: str, max_body: int, request_timeout: float = DEFAULT_REQUEST_TIMEOUT, always_200=False):
    """The request handler class a receiver called ``name`` (``serve``, ``relay``) subclasses."""
    from http.server import BaseHTTPRequestHandler

    late_answer = _late_answer("pilotlog-" + name) if always_200 else b""

    class Handler(BaseHTTPRequestHandler):
        server_version = "pilotlog-" + name
        protocol_version = "HTTP/1.1"  # keep-alive, until anything goes wrong
        default_request_version = "HTTP/1.0"  # so every answer, even to garbage, has a status line
        timeout = request_timeout  # each read; the server's watchdog bounds the whole request
        refused = False  # a request of this connection was refused: it closes, maybe with bytes unread
        clean_end = False  # the connection ends with every byte the client sent read: no lingering

        def handle_one_request(self):
            """One request, read within the deadline the server's watchdog keeps; any refusal closes."""
            self.server.arm(self.connection)
            self.command, self.path, self.requestline = None, "", ""
            try:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline:  # the client closed between requests: nothing of it is unread
                    self.close_connection = self.clean_end = True
                    return
                if len(self.raw_requestline) > 65536:
                    self.send_error(414, "request line over 64 KiB")
                    return
                if not self.parse_request():  # it answered (through send_error) and closes
                    return
                refusal = self.server.refusal()
                if refusal:
                    self.log_message("%s", refusal)
                    try:
                        self._body()  # read (within the short deadline) so the answer is not lost to a reset
                    except Reject:
                        pass
                    self.send_error(403, refusal)
                    return
                if self.server.overloaded():
                    self.send_error(503, "too many connections (over %d): retry later" % self.server.max_connections)
                    return
                method = {"GET": self.do_GET, "POST": self.do_POST}.get(self.command)
                if method is None:
                    self.send_error(405, "method %r is not allowed: POST pilot logs here" % self.command[:20])
                    return
                method()
                self.wfile.flush()
                self.clean_end = self.close_connection and not self.refused  # the whole request read, answered
            except OSError as exc:  # timed out, reset, or shut by the watchdog: drop the connection
                self.log_message("connection dropped (%s)", exc.strerror or type(exc).__name__)
                self.close_connection = True

        def parse_request(self):
            """The request line and headers, read strictly: a request line of three words, headers
            ``Name: value`` (at most MAX_HEADERS lines of 64 KiB), anything else a 400 (431 for the
            sizes) with a reason.  http.server's own reading goes through the email package, which
            costs more than the relay's whole answer without the spool, and takes what a receiver
            should not: a folded line, or a line without a colon that silently ends the headers."""
            self.command, self.request_version, self.close_connection = None, self.default_request_version, True
            self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
            words = self.requestline.split()
            if not words:
                return False
            version = VERSION_RE.match(words[-1]) if len(words) == 3 else None
            if version is None:
                self.send_error(400, "Bad request syntax (%r): METHOD PATH HTTP/1.x" % self.requestline[:200])
                return False
            number = int(version.group(1)), int(version.group(2))
            if number >= (2, 0):
                self.send_error(505, "Invalid HTTP version (%s)" % words[2][5:45])
                return False
            self.command, self.path, self.request_version = words
            self.close_connection = number < (1, 1)
            self.headers = Headers()
            while True:
                line = self.rfile.readline(65537)
                if len(line) > 65536:
                    self.send_error(431, "Line too long: a header line over 64 KiB")
                    return False
                if line in (b"\r\n", b"\n", b""):
                    break
                name, colon, value = str(line, "iso-8859-1").partition(":")
                if not colon or not TOKEN_RE.match(name):
                    self.send_error(400, "malformed header line %r (folded, or not Name: value)" % line[:80])
                    return False
                if not self.headers.add(name, value.strip(" \t\r\n")):
                    self.send_error(431, "Too many headers (over %d)" % MAX_HEADERS)
                    return False
            connection = self.headers.get("Connection", "").lower()
            if connection == "close":
                self.close_connection = True
            elif connection == "keep-alive":
                self.close_connection = False
            if self.headers.get("Expect", "").lower() == "100-continue" and number >= (1, 1):
                return self.handle_expect_100()
            return True

        def send_error(self, code, message=None, explain=None):
            """Every error, http.server's own included, as DIRAC-style JSON; the connection then closes."""
            self._answer(code, {"OK": False, "Message": message or self.responses.get(code, ("error",))[0]})

        def _answer(self, status: int, document: dict) -> None:
            if not self.server.claim_answer():  # type: ignore[attr-defined]  # the watchdog answered: ours is late
                self.close_connection = True
                return
            data = json.dumps(document).encode("utf-8")
            if status != 200:
                self.close_connection = self.refused = True  # what follows is never read as a request
                if always_200:
                    status = 200
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "5")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            # end_headers() and a write of the body would be two sends: the client woken twice
            head: list = getattr(self, "_headers_buffer", [])
            if self.request_version != "HTTP/0.9":
                head.append(b"\r\n")
            self._headers_buffer: list = []
            self.wfile.write(b"".join(head) + (data if self.command != "HEAD" else b""))

        def log_request(self, code="-", size="-"):  # the path masked (a token in a query), nothing raw
            what = "%s %s" % (self.command, self.path) if self.command else self.requestline or "-"
            self.log_message('"%s" %s', mask_url(what)[:200], code)

        def log_message(self, fmt, *args):  # one short line per request on stderr (the relay: each line once)
            self.server.say("pilotlog %s: %s %s" % (name, self.address_string(), escape_controls(fmt % args)))

        def _respond(self, produce) -> None:
            """Answer with ``produce()``'s value, or the refusal it raised; a bug of ours is a 500
            with a reason (and serving goes on), never an empty reply."""
            try:
                try:
                    value = produce()
                except (Reject, OSError):
                    raise
                except Exception as exc:
                    self.log_message("internal error: %s: %s", type(exc).__name__, exc)
                    raise Reject(500, "internal error of the receiver (%s): see its log" % type(exc).__name__) from None
                self._answer(200, {"OK": True, "Value": value})
            except Reject as exc:
                self._answer(exc.status, {"OK": False, "Message": str(exc)})

        def do_GET(self):  # events are POSTed; a GET (e.g. pilotlog doctor) learns that, and that we are up
            self._answer(405, {"OK": False, "Message": "POST pilot logs here"})

        def _body(self) -> bytes:
            if "Transfer-Encoding" in self.headers:
                raise Reject(411, "Transfer-Encoding (chunked) is not accepted: send a Content-Length")
            lengths = self.headers.get_all("Content-Length") or []
            if not lengths:
                raise Reject(411, "Content-Length is required")
            if len(lengths) > 1 or not LENGTH_RE.match(lengths[0].strip()):
                raise Reject(400, "Content-Length must be given once, as a decimal number")
            length = int(lengths[0])
            if length > max_body:
                # Read (and drop) a moderately oversized body so the client gets to see the
                # 413 instead of a reset; beyond that, just close the connection.
                if length <= 16 * max_body:
                    remaining = length
                    while remaining:
                        remaining -= len(self.rfile.read(min(remaining, 65536)) or b"x" * remaining)
                raise Reject(413, "body of %d bytes is over the limit of %d" % (length, max_body))
            body = self.rfile.read(length)
            if len(body) < length:
                raise Reject(400, "body ended after %d of its %d bytes" % (len(body), length))
            encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding == "gzip":
                import zlib

                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                try:
                    body = inflater.decompress(body, max_body + 1)
                except zlib.error:
                    raise Reject(400, "body is not valid gzip") from None
                if len(body) > max_body:
                    raise Reject(413, "body is over the limit of %d once decompressed" % max_body)
                if not inflater.eof:
                    raise Reject(400, "gzip body is truncated")
            elif encoding != "identity":
                raise Reject(415, "Content-Encoding %r is not supported (gzip or none)" % encoding[:40])
            if always_200:
                self.server.answer_late_with(late_answer)  # type: ignore[attr-defined]  # Server.Listener
            return body

    return Handler


def _late_answer(server: str) -> bytes:
    """What the watchdog answers when the work on a request outlives its deadline (made once per
    receiver, not per request: the relay answers every post of the Pilot)."""
    message = "not answered in time (the receiver's disk or spool lock is slow): this request may not be kept"
    data = json.dumps({"OK": False, "Message": message}).encode("utf-8")
    head = "HTTP/1.1 200 OK\r\nServer: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
        server,
        len(data),
    )
    return head.encode("ascii") + b"Connection: close\r\n\r\n" + data


class Server:
    """What ``http.server`` leaves out: a deadline per request, a bound on connections, lingering close.

    One thread per connection, at most ``2 × max_connections`` of them: past
    ``max_connections`` a connection only gets a 503 (within 2 s), past twice that it is
    closed at once.  A watchdog thread shuts the socket of any request past its deadline,
    which ends whatever read or handshake is blocked on it.

    Each connection thread accepts its connection itself: a few threads wait in ``accept``
    (the kernel wakes one per connection), and one that takes a connection starts another
    only when no other is left waiting, so a connection is always accepted and judged at
    once.  A thread that served its connection waits in ``accept`` again (up to
    IDLE_ACCEPTORS of them; the others end).  So a request costs no thread start (≈ 90 µs)
    and no hand-over between threads, which is most of what a small request costs the
    relay's Pilot beyond the spool's own writes.
    """

    def __init__(
        self,
        listen: str,
        handler,
        context=None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        name: str = "serve",
        admit=None,
        each_line_once: bool = False,
    ):
        from http.server import HTTPServer

        host, port = parse_listen(listen)
        self.name, self.admit = name, admit
        self.said: "set | None" = set() if each_line_once else None  # lines said, when each is said once
        self.refusing = 0  # refused connections being answered
        self.context, self.request_timeout, self.max_connections = context, request_timeout, max_connections
        self.lock = threading.Lock()
        self.active = 0
        self.accepting = 0  # threads waiting in accept (or about to)
        # thread id -> [socket, deadline, overloaded, seconds allowed, refusal, late answer]; the late
        # answer: None, the bytes the watchdog sends when the deadline passes, or ANSWERED once sent
        self.connections: dict = {}
        self.ending = threading.Event()  # shutdown(): no more accepts
        self.ended = threading.Event()  # serve_forever returned
        self.serving = threading.Event()  # serve_forever's threads wait in accept
        self.stopping = threading.Event()
        owner = self

        class Listener(HTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            allow_reuse_address = True
            request_queue_size = BACKLOG
            max_connections = DEFAULT_MAX_CONNECTIONS

            def arm(self, conn):
                owner.arm(conn)

            def overloaded(self):
                return owner.overloaded()

            def refusal(self):
                return owner.refusal()

            def answer_late_with(self, answer):
                owner.answer_late_with(answer)

            def claim_answer(self):
                return owner.claim_answer()

            def say(self, line):
                owner.say(line)

        self.listener = Listener((host, port), handler)
        self.listener.max_connections = max_connections
        self.server_address = self.listener.server_address
        self.watchdog = threading.Thread(target=self._watch, name="pilotlog-%s-watchdog" % name, daemon=True)
        self.watchdog.start()

    # -- connections -------------------------------------------------------------------------

    def _accept_and_serve(self) -> None:
        """A connection thread (counted in ``accepting`` when started): accept, judge, serve;
        again while fewer than IDLE_ACCEPTORS others wait in accept."""
        while True:
            try:
                sock, client_address = self.listener.socket.accept()
            except OSError:
                if not self.ending.is_set():
                    time.sleep(0.05)  # out of descriptors, or an aborted connection: not a busy loop
                    continue
                sock = None
            with self.lock:
                self.accepting -= 1
                more = self.accepting == 0 and sock is not None and not self.ending.is_set()
                self.accepting += more
            if sock is None:
                return
            if more and not self._start_thread():  # none left to accept: one more, before serving
                with self.lock:
                    self.accepting -= 1
            if self.ending.is_set():
                sock.close()
            else:
                job = self._judge(sock, client_address)
                if job is not None:
                    self._connection(*job)
            with self.lock:
                if self.ending.is_set() or self.accepting >= IDLE_ACCEPTORS:
                    return
                self.accepting += 1

    def _start_thread(self) -> bool:
        try:
            threading.Thread(target=self._accept_and_serve, name="pilotlog-%s" % self.name, daemon=True).start()
            return True
        except RuntimeError:  # no thread to be had (process limits): the threads there accept in turn
            return False

    def _judge(self, sock, client_address):
        """The connection's lane: ``(sock, address, overloaded, refusal)`` to serve, or None (closed at once)."""
        refusal = self._admit(sock)
        with self.lock:
            if refusal is not None:  # its own lane, answered within the short deadline
                full, overloaded = self.refusing >= REFUSED_AT_ONCE, True
                self.refusing += not full
            else:
                full = self.active >= 2 * self.max_connections
                if not full:
                    self.active += 1
                    overloaded = self.active > self.max_connections
        if full:  # not even a 503: the client's retry comes back later
            sock.close()
            return None
        return sock, client_address, overloaded, refusal

    def _admit(self, sock) -> "str | None":
        if self.admit is None:
            return None
        try:
            return self.admit(sock)
        except Exception as exc:  # a check that fails refuses: a door is not opened by an error
            return "refused: cannot tell who connected (%s: %s)" % (type(exc).__name__, exc)

    def _count_out(self, refusal) -> None:
        with self.lock:
            if refusal is not None:
                self.refusing -= 1
            else:
                self.active -= 1

    def _connection(self, sock, client_address, overloaded: bool, refusal=None) -> None:
        seconds = min(2.0, self.request_timeout) if overloaded else self.request_timeout
        me, conn, clean = threading.get_ident(), sock, False
        with self.lock:
            self.connections[me] = [sock, time.monotonic() + seconds, overloaded, seconds, refusal, None]
        try:
            sock.settimeout(seconds)
            # An answer is one small write: Nagle would hold it back until the client acknowledged what
            # was sent before (a TLS handshake's tickets), which a client delays by 40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                conn = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                with self.lock:
                    self.connections[me][0] = conn  # the object that now owns the descriptor
                conn.do_handshake()
            handler = self.listener.RequestHandlerClass(conn, client_address, self.listener)
            clean = getattr(handler, "clean_end", False)
        except Exception:
            self._error(client_address)
        finally:
            _linger(conn, wait=not clean)
            with self.lock:
                del self.connections[me]
            self._count_out(refusal)

    def arm(self, conn) -> None:
        """A new request starts on this thread's connection: its deadline runs from now."""
        with self.lock:
            entry = self.connections.get(threading.get_ident())
            if entry:
                entry[0], entry[1], entry[5] = conn, time.monotonic() + entry[3], None

    def overloaded(self) -> bool:
        with self.lock:
            entry = self.connections.get(threading.get_ident())
            return bool(entry and entry[2])

    def refusal(self) -> "str | None":
        """Why ``admit`` refused this thread's connection (None: it did not)."""
        with self.lock:
            entry = self.connections.get(threading.get_ident())
            return entry[4] if entry else None

    def answer_late_with(self, answer: bytes) -> None:
        """This thread's request was read whole: past its deadline, the watchdog sends ``answer``
        (a whole HTTP response) before it shuts the connection."""
        with self.lock:
            entry = self.connections.get(threading.get_ident())
            if entry:
                entry[5] = answer

    def claim_answer(self) -> bool:
        """Whether this thread may still answer its request (False: the watchdog already did)."""
        with self.lock:
            entry = self.connections.get(threading.get_ident())
            if entry is None:
                return True
            if entry[5] is ANSWERED:
                return False
            entry[5] = None
            return True

    def _watch(self) -> None:
        while not self.stopping.wait(0.2):
            now = time.monotonic()
            late = []
            with self.lock:
                for entry in self.connections.values():
                    if entry[1] <= now:
                        answer = entry[5] if isinstance(entry[5], bytes) else None
                        if answer is not None:
                            entry[5] = ANSWERED
                        late.append((entry[0], answer))
            for sock, answer in late:
                if answer is not None:  # small: it fits the socket's buffer, the watchdog never waits on it
                    try:
                        sock.sendall(answer)
                    except (OSError, ValueError):
                        pass
                try:  # the descriptor itself, below any TLS layer: a blocked read returns at once
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def _error(self, client_address) -> None:  # failed handshakes and the like: one line, no traceback
        import sys

        self.say("pilotlog %s: %s: %s" % (self.name, client_address[0], escape_controls(str(sys.exc_info()[1]))))

    def say(self, line: str) -> None:
        """A line on stderr; with ``each_line_once`` (the relay, whose stderr is the pilot job's),
        each distinct line once and at most MAX_DISTINCT_LINES of them: a peer refused in a loop
        must not fill the job's stderr file."""
        import sys

        if self.said is not None:
            with self.lock:
                if line in self.said or len(self.said) > MAX_DISTINCT_LINES:
                    return
                self.said.add(line)
                if len(self.said) > MAX_DISTINCT_LINES:
                    line = "pilotlog %s: %d different messages said: no more are shown" % (
                        self.name,
                        MAX_DISTINCT_LINES,
                    )
        sys.stderr.write(line + "\n")
        sys.stderr.flush()  # before 3.9 a piped stderr is block-buffered: lines lost when serve is killed

    # -- running -----------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept and serve (in connection threads) until :meth:`shutdown`; ``serving`` is set once
        the first IDLE_ACCEPTORS threads wait in accept."""
        try:
            for _ in range(IDLE_ACCEPTORS):
                with self.lock:
                    self.accepting += 1
                if not self._start_thread():
                    with self.lock:
                        self.accepting -= 1
            if not self.accepting:
                raise RuntimeError("cannot start a thread to accept connections")
            self.serving.set()
            self.ending.wait()
        finally:
            self.ended.set()

    def shutdown(self) -> None:
        """Stop accepting (from another thread); returns once serve_forever has (if it ran)."""
        self.ending.set()
        self._wake_acceptors()
        if self.accepting or not self.ended.is_set():
            self.ended.wait(5)

    def _wake_acceptors(self) -> None:
        """End the waits in accept: Linux ends them when the listening socket is shut; elsewhere
        each waiting thread is handed a connection of our own, which it closes."""
        try:
            self.listener.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        host, port = reachable(str(self.server_address[0])), int(self.server_address[1])
        for _ in range(IDLE_ACCEPTORS + 1):
            if not self.accepting:
                return
            try:
                socket.create_connection((host, port), timeout=0.2).close()
            except OSError:
                time.sleep(0.01)

    def close(self) -> None:
        if not self.ending.is_set():
            self.ending.set()
            self._wake_acceptors()
        self.stopping.set()
        self.watchdog.join(5)
        self.listener.server_close()


def _linger(conn, wait: bool = True) -> None:
    """Close so the client reads our answer: stop sending, drain what it still sends (briefly), close.

    Closing a socket with unread data makes the kernel send a reset, which can destroy an
    answer the client has not read yet (a 413, a 411 after a refused body).  Without ``wait``
    (the client's whole request was read and answered) it closes at once, unless bytes wait
    unread after all.
    """
    try:
        if not wait:
            try:
                if not socket.socket.recv(conn, 1, PEEK_NOW):  # raw: below any TLS layer
                    return  # the client closed, and nothing is unread
            except BlockingIOError:  # nothing unread: a close sends no reset
                return
        socket.socket.shutdown(conn, socket.SHUT_WR)
        conn.settimeout(0.5)
        ends, drained = time.monotonic() + 1.0, 0
        while time.monotonic() < ends and drained < 1 << 20:
            data = socket.socket.recv(conn, 65536)  # raw bytes, below any TLS layer
            if not data:
                break
            drained += len(data)
    except OSError:
        pass
    finally:
        conn.close()
