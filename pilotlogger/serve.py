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
(:func:`~pilotlogger.httpd.client_cn`): for a grid proxy, the user certificate that signed it.
A second ``finaliseLogs`` after more lines came appends them to the ``.log`` (DIRAC renames
over it and loses the first part); one with nothing open is refused, as DIRAC does.
Shared with ``pilotlog relay``: the HTTP server and its defences, the client's identity
(httpd.py), and the reading and acceptance of DIRAC's form (diracform.py); the store and the
VO choice are serve's.

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

import os
import stat
import threading

from . import httpd
from .diracform import FORM_TYPE, check_ids, decode_json, message_bytes, read_form
from .events import EventError, readable_line, validate
from .httpd import DEFAULT_MAX_BODY, DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT, Reject, client_cn

DEFAULT_VO = "unknown"
BACKLOG = httpd.BACKLOG


class StoreError(Exception):
    """The storage directory cannot be used; the message says which and why."""


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
        check_ids(pilot, vo)

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


def choose_vo(certified, asked, default_vo: str = DEFAULT_VO) -> str:
    """The VO a request is stored under, the one rule of both protocols (README, *pilotlog serve*).

    ``certified``: the VO the client's certificate is mapped to (``--vo-for-cn``; DIRAC: the VO of
    the credentials' group), which wins; ``asked``: what the request says (the form's third
    ``args``, the ``X-Pilotlog-VO`` header) when the certificate names none; else ``default_vo``.
    So a client certified for one VO can never write into another's store.
    """
    return certified or asked or default_vo


def handle_form(store: Store, body: bytes, client_vo=None, default_vo: str = DEFAULT_VO) -> str:
    """DIRAC's form protocol, decoded and accepted as TornadoPilotLoggingHandler + FileCacheLoggingPlugin do.

    ``client_vo``: the VO of the client's certificate (DIRAC: of its group), first choice.
    """
    form = read_form(body)
    vo = choose_vo(client_vo, form.vo, default_vo)
    store.check(vo, form.pilot)
    if form.method == "sendMessage":
        store.append(vo, form.pilot, message_bytes(form.content()))
        return "Message logged successfully for pilot: %s and %s" % (form.pilot, vo)
    info = form.content()
    store.finalise(vo, form.pilot)
    return "finalised (retCode %s)" % info.get("retCode", 0)


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
            event = validate(decode_json(line, "line %d" % number))
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
    class Handler(httpd.handler_base("serve", max_body, request_timeout)):  # type: ignore[misc]  # made at run time
        def _client_cn(self):
            return client_cn(self.connection, "serve")

        def do_POST(self):
            self._respond(self._post)

        def _post(self):
            cn = self._client_cn() if (allowed_cns or vo_for_cn) else None
            if allowed_cns and cn not in allowed_cns:
                raise Reject(403, "client certificate CN %r is not allowed" % cn)
            certified_vo = (vo_for_cn or {}).get(cn)
            body = self._body()
            kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if kind == FORM_TYPE:
                return handle_form(store, body, certified_vo, default_vo)
            if kind in ("application/x-ndjson", "application/json"):
                asked = self.headers.get("X-Pilotlog-VO")
                return handle_events(store, body, choose_vo(certified_vo, asked, default_vo))
            raise Reject(415, "Content-Type %r is neither a form nor JSON lines" % kind[:80])

    return Handler


class Server(httpd.Server):
    """``pilotlog serve``: the shared HTTP server (httpd.py) storing into a :class:`Store`."""

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
        httpd.parse_listen(listen)  # a bad address is said before the directory is touched
        self.store = Store(directory)
        handler = make_handler(
            self.store, max_body, set(allowed_cns), request_timeout, default_vo, dict(vo_for_cn or {})
        )
        try:
            super().__init__(listen, handler, context, request_timeout, max_connections, "serve")
        except BaseException:
            self.store.close()
            raise

    def close(self) -> None:
        super().close()
        self.store.close()


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
    if context is not None and (allowed_cns or vo_for_cn):
        httpd.warn_if_owners_unknown("serve", "--allowed-cn/--vo-for-cn")
    if ready:
        ready(server.server_address)
    try:
        server.serve_forever()
    finally:
        server.close()
