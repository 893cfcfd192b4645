"""``pilotlog serve``: a small HTTPS receiver for both HTTPS protocols, stdlib only.

It stores what it receives the way DIRAC's ``FileCacheLoggingPlugin`` does, so a site or
a test has a real endpoint and DIRAC's tooling can read the result:

    <dir>/<vo>/<pilot id>        lines appended as they arrive
    <dir>/<vo>/<pilot id>.log    the same file, renamed when the pilot finalises its log

Requests (POST, any path):
    application/x-www-form-urlencoded   DIRAC's form: method=sendMessage|finaliseLogs,
                                        args=JSON [payload, pilot id, vo]; the message
                                        stored byte for byte as DIRAC writes it (a list of
                                        lines: each line + "\n"; a string: as it is)
    application/x-ndjson                JSON lines of events (gzip allowed); a shutdown
                                        event finalises; VO from the X-Pilotlog-VO header;
                                        each event stored as one line, control characters
                                        escaped
Answers are DIRAC-style JSON (``{"OK": true, "Value": …}`` / ``{"OK": false, "Message": …}``)
with 200 on success, 4xx for a bad request and 5xx for a failure of the server's own.

Acceptance mirrors DIRAC 9.1.22 (tests/test_dirac.py runs both on the same requests):
``args`` of exactly three strings, pilot ids a lowercase UUID or a stamp ``[0-9a-z]{32}``,
VO names ``[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*``, ``extraCredentials`` JSON (``"hosts"``); where
DIRAC fails with HTTP 500 serve answers 400.  The VO: DIRAC takes the client group's VO,
else the pilot's; serve has no registry, so it takes ``vo_for_cn[client CN]``, else the
pilot's, else ``default_vo`` -- a log is never dropped for want of a VO.  One rule for both
protocols (:func:`choose_vo`): a client certified for a VO writes there whatever its form or
its ``X-Pilotlog-VO`` header asks.  The client CN is its certificate's owner's
(:func:`client_cn`): for a grid proxy, the user certificate that signed it.
A second ``finaliseLogs`` after more lines came appends them to the ``.log`` (DIRAC renames
over it and loses the first part); one with nothing open is refused, as DIRAC does.

Defences, since anyone who can reach the port can send anything:

* paths: pilot ids must be a UUID or a 32-hex DIRAC stamp and VO names ``[A-Za-z0-9_.-]``
  (400 otherwise); every path component is opened relative to the store's directory
  without following links (``openat`` with ``O_NOFOLLOW``/``O_DIRECTORY``), so a link
  planted in the store is refused (500), never written through;
* smuggling: after any refusal or parse error the answer says ``Connection: close`` and
  the connection is closed, so a body the server did not accept is never read as the next
  request; chunked bodies (411), several or malformed Content-Lengths (400) are refused;
* malformed input: anything the parsers reject, however deep or oddly encoded, is a 4xx
  with a reason; an unexpected failure is a 500 with a reason, never an empty reply;
* resources: bodies over ``max_body`` (also after gunzip) → 413; each request (TLS
  handshake, request line, headers and body) must be complete within ``request_timeout``
  seconds or its connection is shut (a watchdog, so a client dribbling bytes cannot stretch
  it); at most ``max_connections`` are served at once, up to as many more get a quick 503,
  beyond that a connection is closed at once; the listen backlog takes a burst of pilots;
* optional required client certificate and an allowed-CN list (403).
"""

import json
import os
import re
import socket
import stat
import threading
import time

from .events import EventError, escape_controls, readable_line, validate
from .redact import mask_url

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
STAMP_RE = re.compile(r"[0-9a-z]{32}\Z")
VO_RE = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\Z")
LENGTH_RE = re.compile(r"[0-9]{1,15}\Z")
DEFAULT_VO = "unknown"
DEFAULT_MAX_BODY = 8 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 15.0  # seconds for one whole request, handshake to last body byte
DEFAULT_MAX_CONNECTIONS = 100
BACKLOG = 1024  # pending connections the kernel keeps (capped by net.core.somaxconn)


class Reject(Exception):
    """Refuse a request: HTTP ``status`` with ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class StoreError(Exception):
    """The storage directory cannot be used; the message says which and why."""


def parse_listen(listen: str):
    """``HOST:PORT`` (``[v6]:PORT``, or ``:PORT`` for loopback) → (host, port); ValueError names the problem."""
    host, colon, port = listen.rpartition(":")
    if not colon or not LENGTH_RE.match(port) or not 0 <= int(port) <= 65535:
        raise ValueError("--listen %r must be HOST:PORT with a port from 0 to 65535" % listen[:80])
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if any(c.isspace() or c in "[]/" for c in host):
        raise ValueError("--listen %r has a malformed host" % listen[:80])
    return host or "127.0.0.1", int(port)


class Store:
    """Per-pilot files under one directory; nothing outside it is ever opened.

    The directory is opened once; every VO directory and pilot file is then opened
    relative to it with ``O_NOFOLLOW`` (and ``O_DIRECTORY``), so no symbolic link planted
    in the store — nor one swapped in while a request runs — is ever followed.
    """

    DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    FILE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.lock = threading.Lock()  # appends of one request stay together
        try:
            os.makedirs(self.root, 0o700, exist_ok=True)
            self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise StoreError("cannot use --dir %s (%s)" % (root, exc.strerror or exc)) from None
        probe = ".pilotlog-serve-probe-%d" % os.getpid()
        try:  # writable by us (root included: a read-only mount says so here, not at the first POST)
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=self.fd))
            os.unlink(probe, dir_fd=self.fd)
        except OSError as exc:
            os.close(self.fd)
            raise StoreError("cannot write into --dir %s (%s)" % (root, exc.strerror or exc)) from None

    def close(self) -> None:
        os.close(self.fd)

    @staticmethod
    def check(vo: str, pilot: str) -> None:
        if not (UUID_RE.match(pilot) or STAMP_RE.match(pilot)):
            raise Reject(400, "Pilot UUID is invalid: %r is neither a UUID nor a stamp of 32 [0-9a-z]" % pilot[:80])
        if not VO_RE.match(vo) or len(vo) > 64:
            raise Reject(400, "VO name %r is invalid" % vo[:80])

    def _vo_dir(self, vo: str) -> int:
        """The VO's directory, opened (and made) without following a link."""
        try:
            try:
                return os.open(vo, self.DIR_FLAGS, dir_fd=self.fd)
            except FileNotFoundError:
                try:
                    os.mkdir(vo, 0o700, dir_fd=self.fd)
                except FileExistsError:
                    pass
                return os.open(vo, self.DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            raise Reject(500, "refusing to store under %s/%s: %s" % (self.root, vo, _link_reason(exc))) from None

    def append(self, vo: str, pilot: str, data: bytes) -> None:
        """Append ``data`` (whole lines) to the pilot's open log."""
        self.check(vo, pilot)
        with self.lock:
            vo_fd = self._vo_dir(vo)
            try:
                fd = os.open(pilot, self.FILE_FLAGS, 0o600, dir_fd=vo_fd)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise Reject(500, "refusing to store into %s/%s: not a regular file" % (vo, pilot))
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            except OSError as exc:
                raise Reject(500, "cannot store the log of %s (%s)" % (pilot, _link_reason(exc))) from None
            finally:
                os.close(vo_fd)

    def finalise(self, vo: str, pilot: str) -> None:
        """Rename the pilot's log to ``<pilot>.log`` within its VO directory (a rename never follows links)."""
        self.check(vo, pilot)
        with self.lock:
            vo_fd = self._vo_dir(vo)
            try:
                if not stat.S_ISREG(os.stat(pilot, dir_fd=vo_fd, follow_symlinks=False).st_mode):
                    raise Reject(500, "refusing to finalise %s: it is a symbolic link or not a regular file" % pilot)
                try:
                    os.stat(pilot + ".log", dir_fd=vo_fd, follow_symlinks=False)
                except FileNotFoundError:
                    os.rename(pilot, pilot + ".log", src_dir_fd=vo_fd, dst_dir_fd=vo_fd)
                else:  # finalised before: add to it, never rename over it (DIRAC would lose the first part)
                    self._append_file(vo_fd, pilot, pilot + ".log")
            except FileNotFoundError:
                raise Reject(400, "no open log for pilot %s to finalise" % pilot) from None
            except OSError as exc:
                raise Reject(500, "cannot finalise the log of %s (%s)" % (pilot, exc.strerror or exc)) from None
            finally:
                os.close(vo_fd)

    def _append_file(self, vo_fd: int, source: str, target: str) -> None:
        """Append ``source`` to ``target`` in the VO directory (neither followed if a link), then remove it."""
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=vo_fd)
        try:
            out = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=vo_fd)
            try:
                if not stat.S_ISREG(os.fstat(out).st_mode):
                    raise Reject(500, "refusing to finalise into %s: not a regular file" % target)
                for chunk in iter(lambda: os.read(fd, 1 << 20), b""):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view) :]
                os.fsync(out)
            finally:
                os.close(out)
        finally:
            os.close(fd)
        os.unlink(source, dir_fd=vo_fd)


def _link_reason(exc: OSError) -> str:
    import errno

    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return "it is a symbolic link or not a directory, which is never followed"
    return exc.strerror or str(exc)


def message_bytes(content) -> bytes:
    """What FileCacheLoggingPlugin writes for a decoded message: each line of a list + "\n",
    a string as it is (line endings, U+2028, a missing final newline all kept).  A lone
    surrogate cannot be stored (400)."""
    if isinstance(content, list) and all(isinstance(x, str) for x in content):
        text = "".join(line + "\n" for line in content)
    elif isinstance(content, str):
        text = content
    else:
        raise Reject(400, "message must be JSON of a string or a list of lines")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Reject(400, "a line holds %r, which is not valid Unicode" % exc.object[exc.start : exc.end]) from None


def _json(text: str, what: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        reason = exc if isinstance(exc, ValueError) else "nested too deeply"
        raise Reject(400, "%s is not valid JSON (%s)" % (what, reason)) from None


def choose_vo(certified, asked, default_vo: str = DEFAULT_VO) -> str:
    """The VO a request is stored under, the one rule of both protocols (README, *pilotlog serve*).

    ``certified``: the VO the client's certificate is mapped to (``--vo-for-cn``; DIRAC: the VO of
    the credentials' group), which wins; ``asked``: what the request says (the form's third
    ``args``, the ``X-Pilotlog-VO`` header) when the certificate names none; else ``default_vo``.
    So a client certified for one VO can never write into another's store.
    """
    return certified or asked or default_vo


def client_cn(conn) -> "str | None":
    """The CN ``--allowed-cn`` and ``--vo-for-cn`` match: the first CN of the client certificate's
    *owner*, from the chain OpenSSL verified; None without a client certificate.

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
                "serve on Python %d.%d cannot find a grid proxy's owner: it needs the chain OpenSSL verified,"
                " which Python gives a server from 3.10 on" % sys.version_info[:2],
            ) from None
        raise Reject(403, "cannot tell whose client certificate this is: %s" % exc) from None


def handle_form(store: Store, body: bytes, client_vo=None, default_vo: str = DEFAULT_VO) -> str:
    """DIRAC's form protocol, decoded and accepted as TornadoPilotLoggingHandler + FileCacheLoggingPlugin do.

    ``client_vo``: the VO of the client's certificate (DIRAC: of its group), first choice.
    """
    from urllib.parse import parse_qs

    try:
        form = parse_qs(body.decode("ascii"), strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise Reject(400, "body is not a urlencoded form") from None
    if "extraCredentials" in form:  # DIRAC JSON-decodes it; a bare word is a 401 there
        try:
            json.loads(form["extraCredentials"][0])
        except (ValueError, RecursionError):
            raise Reject(401, 'extraCredentials must be JSON, e.g. "hosts" with the quotes') from None
    method = form.get("method", [""])[0]
    args = _json(form.get("args", [""])[0], "args")
    if not isinstance(args, list) or len(args) != 3 or not all(isinstance(a, str) for a in args):
        raise Reject(400, 'args must be a JSON list of three strings [payload, pilot id, vo or ""]')
    payload, pilot, vo = args
    vo = choose_vo(client_vo, vo, default_vo)
    store.check(vo, pilot)
    if method == "sendMessage":
        store.append(vo, pilot, message_bytes(_json(payload, "message")))
        return "Message logged successfully for pilot: %s and %s" % (pilot, vo)
    if method == "finaliseLogs":
        info = _json(payload, "payload")
        if not isinstance(info, dict):
            raise Reject(400, 'finaliseLogs payload must be JSON of an object such as {"retCode": 0}')
        store.finalise(vo, pilot)
        return "finalised (retCode %s)" % info.get("retCode", 0)
    raise Reject(400, "unknown method %r (sendMessage, finaliseLogs)" % method[:40])


def handle_events(store: Store, body: bytes, vo: str) -> str:
    """JSON lines of native events: all validated and rendered first, then stored per pilot, in order.

    Each event is stored as one line (:func:`readable_line` escapes control characters), so a
    message cannot forge a second line.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Reject(400, "body is not UTF-8") from None
    stored = []
    for number, line in enumerate(text.split("\n"), 1):  # JSON lines: "\n" only (U+2028 may sit in a string)
        if not line.strip():
            continue
        try:
            event = validate(_json(line, "line %d" % number))
            rendered = message_bytes([readable_line(event)])
        except (EventError, RecursionError) as exc:
            raise Reject(400, "line %d is not a valid event (%s)" % (number, exc or "nested too deeply")) from None
        store.check(vo, event["pilot"])  # every pilot id checked before anything is written
        stored.append((event, rendered))
    for event, rendered in stored:
        store.append(vo, event["pilot"], rendered)
        if event["phase"] == "shutdown":
            store.finalise(vo, event["pilot"])
    return "%d event(s) stored" % len(stored)


def make_handler(
    store: Store,
    max_body: int,
    allowed_cns,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    default_vo: str = DEFAULT_VO,
    vo_for_cn=None,
):
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        server_version = "pilotlog-serve"
        protocol_version = "HTTP/1.1"  # keep-alive, until anything goes wrong
        default_request_version = "HTTP/1.0"  # so every answer, even to garbage, has a status line
        timeout = request_timeout  # each read; the server's watchdog bounds the whole request

        def handle_one_request(self):
            """One request, read within the deadline the server's watchdog keeps; any refusal closes."""
            self.server.arm(self.connection)
            self.command, self.path, self.requestline = None, "", ""
            try:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if len(self.raw_requestline) > 65536:
                    self.send_error(414, "request line over 64 KiB")
                    return
                if not self.parse_request():  # it answered (through send_error) and closes
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
            except OSError as exc:  # timed out, reset, or shut by the watchdog: drop the connection
                self.log_message("connection dropped (%s)", exc.strerror or type(exc).__name__)
                self.close_connection = True

        def send_error(self, code, message=None, explain=None):
            """Every error, http.server's own included, as DIRAC-style JSON; the connection then closes."""
            self._answer(code, {"OK": False, "Message": message or self.responses.get(code, ("error",))[0]})

        def _answer(self, status: int, document: dict) -> None:
            data = json.dumps(document).encode("utf-8")
            if status != 200:
                self.close_connection = True  # what follows a refused request is never read as a request
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "5")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_request(self, code="-", size="-"):  # the path masked (a token in a query), nothing raw
            what = "%s %s" % (self.command, self.path) if self.command else self.requestline or "-"
            self.log_message('"%s" %s', mask_url(what)[:200], code)

        def log_message(self, fmt, *args):  # one short line per request on stderr
            import sys

            sys.stderr.write("pilotlog serve: %s %s\n" % (self.address_string(), escape_controls(fmt % args)))
            sys.stderr.flush()  # before 3.9 a piped stderr is block-buffered: lines lost when serve is killed

        def do_GET(self):  # events are POSTed; a GET (e.g. pilotlog doctor) learns that, and that we are up
            self._answer(405, {"OK": False, "Message": "POST pilot logs here"})

        def _client_cn(self):
            return client_cn(self.connection)

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
            return body

        def do_POST(self):
            try:
                try:
                    cn = self._client_cn() if (allowed_cns or vo_for_cn) else None
                    if allowed_cns and cn not in allowed_cns:
                        raise Reject(403, "client certificate CN %r is not allowed" % cn)
                    certified_vo = (vo_for_cn or {}).get(cn)
                    body = self._body()
                    kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
                    if kind == "application/x-www-form-urlencoded":
                        value = handle_form(store, body, certified_vo, default_vo)
                    elif kind in ("application/x-ndjson", "application/json"):
                        asked = self.headers.get("X-Pilotlog-VO")
                        value = handle_events(store, body, choose_vo(certified_vo, asked, default_vo))
                    else:
                        raise Reject(415, "Content-Type %r is neither a form nor JSON lines" % kind[:80])
                except (Reject, OSError):
                    raise
                except Exception as exc:  # a bug of ours: still an answer with a reason, and serving goes on
                    self.log_message("internal error: %s: %s", type(exc).__name__, exc)
                    raise Reject(500, "internal error of the receiver (%s): see its log" % type(exc).__name__) from None
                self._answer(200, {"OK": True, "Value": value})
            except Reject as exc:
                self._answer(exc.status, {"OK": False, "Message": str(exc)})

    return Handler


class Server:
    """What ``http.server`` leaves out: a deadline per request, a bound on connections, lingering close.

    One thread per connection, at most ``2 × max_connections`` of them: past
    ``max_connections`` a connection only gets a 503 (within 2 s), past twice that it is
    closed at once.  A watchdog thread shuts the socket of any request past its deadline,
    which ends whatever read or handshake is blocked on it.
    """

    def __init__(
        self,
        listen: str,
        directory: str,
        context=None,
        max_body: int = DEFAULT_MAX_BODY,
        allowed_cns=(),
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        default_vo: str = DEFAULT_VO,
        vo_for_cn=None,
    ):
        from http.server import HTTPServer

        host, port = parse_listen(listen)
        self.store = Store(directory)
        self.context, self.request_timeout, self.max_connections = context, request_timeout, max_connections
        self.lock = threading.Lock()
        self.active = 0
        self.connections: dict = {}  # connection thread id -> [socket, deadline, overloaded, seconds allowed]
        self.stopping = threading.Event()
        owner = self

        class Listener(HTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            allow_reuse_address = True
            request_queue_size = BACKLOG
            max_connections = DEFAULT_MAX_CONNECTIONS

            def process_request(self, request, client_address):
                owner.accepted(request, client_address)

            def arm(self, conn):
                owner.arm(conn)

            def overloaded(self):
                return owner.overloaded()

        handler = make_handler(
            self.store, max_body, set(allowed_cns), request_timeout, default_vo, dict(vo_for_cn or {})
        )
        try:
            self.listener = Listener((host, port), handler)
        except BaseException:
            self.store.close()
            raise
        self.listener.max_connections = max_connections
        self.server_address = self.listener.server_address
        self.watchdog = threading.Thread(target=self._watch, name="pilotlog-serve-watchdog", daemon=True)
        self.watchdog.start()

    # -- connections -------------------------------------------------------------------------

    def accepted(self, sock, client_address) -> None:
        with self.lock:
            full = self.active >= 2 * self.max_connections
            if not full:
                self.active += 1
                overloaded = self.active > self.max_connections
        if full:  # not even a 503: the client's retry comes back later
            sock.close()
            return
        try:
            threading.Thread(target=self._connection, args=(sock, client_address, overloaded), daemon=True).start()
        except RuntimeError:  # no thread to be had (process limits): as if full
            with self.lock:
                self.active -= 1
            sock.close()

    def _connection(self, sock, client_address, overloaded: bool) -> None:
        seconds = min(2.0, self.request_timeout) if overloaded else self.request_timeout
        me, conn = threading.get_ident(), sock
        with self.lock:
            self.connections[me] = [sock, time.monotonic() + seconds, overloaded, seconds]
        try:
            sock.settimeout(seconds)
            if self.context is not None:
                conn = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                with self.lock:
                    self.connections[me][0] = conn  # the object that now owns the descriptor
                conn.do_handshake()
            self.listener.RequestHandlerClass(conn, client_address, self.listener)
        except Exception:
            self._error(client_address)
        finally:
            _linger(conn)
            with self.lock:
                del self.connections[me]
                self.active -= 1

    def arm(self, conn) -> None:
        """A new request starts on this thread's connection: its deadline runs from now."""
        with self.lock:
            entry = self.connections.get(threading.get_ident())
            if entry:
                entry[0], entry[1] = conn, time.monotonic() + entry[3]

    def overloaded(self) -> bool:
        with self.lock:
            entry = self.connections.get(threading.get_ident())
            return bool(entry and entry[2])

    def _watch(self) -> None:
        while not self.stopping.wait(0.2):
            now = time.monotonic()
            with self.lock:
                late = [entry[0] for entry in self.connections.values() if entry[1] <= now]
            for sock in late:
                try:  # the descriptor itself, below any TLS layer: a blocked read returns at once
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def _error(client_address) -> None:  # failed handshakes and the like: one line, no traceback
        import sys

        sys.stderr.write("pilotlog serve: %s: %s\n" % (client_address[0], escape_controls(str(sys.exc_info()[1]))))
        sys.stderr.flush()

    # -- running -----------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self.listener.serve_forever()

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread)."""
        self.listener.shutdown()

    def close(self) -> None:
        self.stopping.set()
        self.watchdog.join(5)
        self.listener.server_close()
        self.store.close()


def _linger(conn) -> None:
    """Close so the client reads our answer: stop sending, drain what it still sends (briefly), close.

    Closing a socket with unread data makes the kernel send a reset, which can destroy an
    answer the client has not read yet (a 413, a 411 after a refused body).
    """
    try:
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


def serve(
    listen: str,
    directory: str,
    context=None,
    max_body: int = DEFAULT_MAX_BODY,
    allowed_cns=(),
    ready=None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    default_vo: str = DEFAULT_VO,
    vo_for_cn=None,
):
    """Serve until interrupted.  ``context``: a server SSLContext (None only for --plain).

    ``default_vo``: where logs go when neither ``vo_for_cn`` (client CN → VO) nor the pilot
    names a VO.  Raises ValueError for a bad ``listen``, StoreError for an unusable
    directory, OSError when the address cannot be bound.
    """
    server = Server(
        listen, directory, context, max_body, allowed_cns, request_timeout, max_connections, default_vo, vo_for_cn
    )
    from .tls import can_read_verified_chain

    if context is not None and (allowed_cns or vo_for_cn) and not can_read_verified_chain():
        import sys

        from .console import warn

        warn(
            "Python %d.%d cannot show a server the chain it verified, so a grid proxy's owner cannot be found:"
            " clients with proxies will be refused (403) by --allowed-cn/--vo-for-cn; run serve with Python"
            " 3.10 or later to accept them" % sys.version_info[:2]
        )
    if ready:
        ready(server.server_address)
    try:
        server.serve_forever()
    finally:
        server.close()
