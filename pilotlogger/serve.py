"""``pilotlog serve``: a small HTTPS receiver for both HTTPS protocols, stdlib only.

It stores what it receives the way DIRAC's ``FileCacheLoggingPlugin`` does, so a site or
a test has a real endpoint and DIRAC's tooling can read the result:

    <dir>/<vo>/<pilot id>        the messages appended as they arrive, byte for byte as
                                 DIRAC writes them (a list of lines: each line + "\n"; a
                                 string, as the DIRAC pilot's RemoteLogger sends: as is)
    <dir>/<vo>/<pilot id>.log    the same file, renamed when the pilot finalises its log

Requests (POST, any path):
    application/x-www-form-urlencoded   DIRAC's form: method=sendMessage|finaliseLogs,
                                        args=JSON [payload, pilot id, vo]
    application/x-ndjson                JSON lines of events (gzip allowed); a shutdown
                                        event finalises; VO from the X-Pilotlog-VO header
Answers are DIRAC-style JSON (``{"OK": true, "Value": …}`` / ``{"OK": false, "Message": …}``)
with 200 on success and 4xx/5xx otherwise.

Acceptance mirrors DIRAC 9.1.22 (tests/test_dirac.py runs both on the same requests):
``args`` of exactly three strings, pilot ids a lowercase UUID or a stamp ``[0-9a-z]{32}``,
VO names ``[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*``, ``extraCredentials`` JSON (``"hosts"``); where
DIRAC fails with HTTP 500 serve answers 400.  The VO: DIRAC takes the client group's VO,
else the pilot's; serve has no registry, so it takes ``vo_for_cn[client CN]``, else the
pilot's, else ``default_vo`` -- a log is never dropped for want of a VO.
A second ``finaliseLogs`` after more lines came appends them to the ``.log`` (DIRAC renames
over it and loses the first part); one with nothing open is refused, as DIRAC does.

Defences: bodies over ``max_body`` (also after gunzip) → 413; bad ids and VO names → 400
(so no path can leave the directory); files are opened with ``O_NOFOLLOW``; optional
required client certificate and an allowed-CN list (403).
"""

import json
import os
import re
import threading

from .events import EventError, readable_line, validate

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
STAMP_RE = re.compile(r"^[0-9a-z]{32}$")
VO_RE = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")
DEFAULT_VO = "unknown"
DEFAULT_MAX_BODY = 8 * 1024 * 1024


class Reject(Exception):
    """Refuse a request: HTTP ``status`` with ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Store:
    """Per-pilot files under one directory; nothing outside it is ever opened."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.lock = threading.Lock()  # appends of one request stay together
        os.makedirs(self.root, 0o700, exist_ok=True)

    def _path(self, vo: str, pilot: str) -> str:
        if not (UUID_RE.match(pilot) or STAMP_RE.match(pilot)):
            raise Reject(400, "Pilot UUID is invalid: %r is neither a UUID nor a stamp of 32 [0-9a-z]" % pilot[:80])
        if not VO_RE.match(vo) or len(vo) > 64:
            raise Reject(400, "VO name %r is invalid" % vo[:80])
        return os.path.join(self.root, vo, pilot)

    def append(self, vo: str, pilot: str, data: bytes) -> None:
        path = self._path(vo, pilot)
        with self.lock:
            try:
                os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise Reject(500, "cannot store the log of %s (%s)" % (pilot, exc.strerror or exc)) from None

    def finalise(self, vo: str, pilot: str) -> None:
        path = self._path(vo, pilot)
        with self.lock:
            try:
                if os.path.islink(path):
                    raise Reject(500, "refusing to finalise %s: it is a symbolic link" % pilot)
                if os.path.lexists(path + ".log"):  # finalised before: add, never rename over it
                    self._append_file(path, path + ".log")
                else:
                    os.rename(path, path + ".log")
            except FileNotFoundError:
                raise Reject(400, "no open log for pilot %s to finalise" % pilot) from None
            except OSError as exc:
                raise Reject(500, "cannot finalise the log of %s (%s)" % (pilot, exc.strerror or exc)) from None

    @staticmethod
    def _append_file(source: str, target: str) -> None:
        """Append ``source`` to ``target`` (both without following links), then remove ``source``."""
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            out = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            try:
                for chunk in iter(lambda: os.read(fd, 1 << 20), b""):
                    os.write(out, chunk)
                os.fsync(out)
            finally:
                os.close(out)
        finally:
            os.close(fd)
        os.unlink(source)


def _json_list(text: str, what: str):
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise Reject(400, "%s is not valid JSON (%s)" % (what, exc)) from None
    return value


def message_bytes(content) -> bytes:
    """What FileCacheLoggingPlugin writes for a decoded message: each line of a list + "\n",
    a string as it is (line endings, U+2028, a missing final newline all kept)."""
    if isinstance(content, list) and all(isinstance(x, str) for x in content):
        text = "".join(line + "\n" for line in content)
    elif isinstance(content, str):
        text = content
    else:
        raise Reject(400, "message must be JSON of a string or a list of lines")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject(400, "message holds text that is not valid Unicode (a lone surrogate)") from None


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
        except ValueError:
            raise Reject(401, 'extraCredentials must be JSON, e.g. "hosts" with the quotes') from None
    method = form.get("method", [""])[0]
    args = _json_list(form.get("args", [""])[0], "args")
    if not isinstance(args, list) or len(args) != 3 or not all(isinstance(a, str) for a in args):
        raise Reject(400, 'args must be a JSON list of three strings [payload, pilot id, vo or ""]')
    payload, pilot, vo = args
    vo = client_vo or vo or default_vo
    if method == "sendMessage":
        store.append(vo, pilot, message_bytes(_json_list(payload, "message")))
        return "Message logged successfully for pilot: %s and %s" % (pilot, vo)
    if method == "finaliseLogs":
        info = _json_list(payload, "payload")
        if not isinstance(info, dict):
            raise Reject(400, 'finaliseLogs payload must be JSON of an object such as {"retCode": 0}')
        store.finalise(vo, pilot)
        return "finalised (retCode %s)" % info.get("retCode", 0)
    raise Reject(400, "unknown method %r (sendMessage, finaliseLogs)" % method[:40])


def handle_events(store: Store, body: bytes, vo: str) -> str:
    """JSON lines of native events: validated first, then stored per pilot, in order."""
    try:
        lines = body.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise Reject(400, "body is not UTF-8") from None
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(validate(json.loads(line)))
        except (ValueError, EventError) as exc:
            raise Reject(400, "line %d is not a valid event (%s)" % (number, exc)) from None
    for event in events:
        store._path(vo, event["pilot"])  # every pilot id checked before anything is written
    for event in events:
        store.append(vo, event["pilot"], message_bytes([readable_line(event)]))
        if event["phase"] == "shutdown":
            store.finalise(vo, event["pilot"])
    return "%d event(s) stored" % len(events)


def make_handler(store: Store, max_body: int, allowed_cns, default_vo: str = DEFAULT_VO, vo_for_cn=None):
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        server_version = "pilotlog-serve"
        protocol_version = "HTTP/1.1"  # keep-alive

        def log_message(self, fmt, *args):  # one short line per request on stderr
            import sys

            sys.stderr.write("pilotlog serve: %s %s\n" % (self.address_string(), fmt % args))

        def _answer(self, status: int, document: dict) -> None:
            data = json.dumps(document).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # events are POSTed; a GET (e.g. pilotlog doctor) learns that, and that we are up
            self._answer(405, {"OK": False, "Message": "POST pilot logs here"})

        def _client_cn(self):
            from .tls import common_name

            getpeercert = getattr(self.connection, "getpeercert", None)
            cert = getpeercert() if getpeercert else None
            return common_name((cert or {}).get("subject")) or None

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise Reject(411, "Content-Length is required")
            if int(length) > max_body:
                # Read (and drop) a moderately oversized body so the client gets to see the
                # 413 instead of a reset; beyond that, just close the connection.
                if int(length) <= 16 * max_body:
                    remaining = int(length)
                    while remaining:
                        remaining -= len(self.rfile.read(min(remaining, 65536)) or b"x" * remaining)
                self.close_connection = True
                raise Reject(413, "body of %s bytes is over the limit of %d" % (length, max_body))
            body = self.rfile.read(int(length))
            if self.headers.get("Content-Encoding", "identity") == "gzip":
                import zlib

                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                try:
                    body = inflater.decompress(body, max_body + 1)
                except zlib.error:
                    raise Reject(400, "body is not valid gzip") from None
                if len(body) > max_body:
                    raise Reject(413, "body is over the limit of %d once decompressed" % max_body)
            return body

        def do_POST(self):
            try:
                cn = self._client_cn() if (allowed_cns or vo_for_cn) else None
                if allowed_cns and cn not in allowed_cns:
                    raise Reject(403, "client certificate CN %r is not allowed" % cn)
                body = self._body()
                kind = self.headers.get("Content-Type", "").split(";")[0].strip()
                if kind == "application/x-www-form-urlencoded":
                    value = handle_form(store, body, (vo_for_cn or {}).get(cn), default_vo)
                elif kind in ("application/x-ndjson", "application/json"):
                    value = handle_events(store, body, self.headers.get("X-Pilotlog-VO") or default_vo)
                else:
                    raise Reject(415, "Content-Type %r is neither a form nor JSON lines" % kind)
                self._answer(200, {"OK": True, "Value": value})
            except Reject as exc:
                self._answer(exc.status, {"OK": False, "Message": str(exc)})

    return Handler


def serve(listen: str, directory: str, context=None, max_body: int = DEFAULT_MAX_BODY, allowed_cns=(), ready=None,
          default_vo: str = DEFAULT_VO, vo_for_cn=None):
    """Serve until interrupted.  ``context``: a server SSLContext (None only for --plain).

    ``default_vo``: where logs go when neither ``vo_for_cn`` (client CN → VO) nor the
    pilot names a VO.
    """
    from http.server import HTTPServer
    from socketserver import ThreadingMixIn

    class Server(ThreadingMixIn, HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

        def finish_request(self, request, client_address):
            # Runs in the request's own thread: a slow handshake never blocks accept().
            if context is not None:
                request.settimeout(10)  # nor can a client that never finishes it pin a thread
                request = context.wrap_socket(request, server_side=True)
            super().finish_request(request, client_address)

        def handle_error(self, request, client_address):  # failed handshakes: one line, no traceback
            import sys

            sys.stderr.write("pilotlog serve: %s: %s\n" % (client_address[0], sys.exc_info()[1]))

    host, _, port = listen.rpartition(":")
    handler = make_handler(Store(directory), max_body, set(allowed_cns), default_vo, dict(vo_for_cn or {}))
    server = Server((host or "127.0.0.1", int(port)), handler)
    if ready:
        ready(server.server_address)
    try:
        server.serve_forever()
    finally:
        server.server_close()
