"""HTTPS sink: DIRAC's pilot-logging form protocol, or batches of JSON lines.

``dirac`` protocol (DIRACGrid/Pilot ``pilotTools.sendMessage``, served by DIRAC's
``TornadoPilotLoggingHandler`` and ``FileCacheLoggingPlugin``; proven against DIRAC 9.1.22's
own code in tests/test_dirac.py): a urlencoded POST with ``method=sendMessage`` and
``args`` = JSON of ``[<JSON of the list of lines>, <pilot id>, <VO>]`` -- always three, the
VO ``""`` when none is configured (DIRAC then takes the VO of the client's group; its
handler fails with HTTP 500 on two).  The lines are the events' readable lines, which the
server appends to ``pilotlogs/<vo>/<pilot id>``.  A ``shutdown`` event is followed by
``method=finaliseLogs`` with ``{"retCode": …}`` (same three-field ``args``).  With a
host-certificate directory as credentials the form also says ``extraCredentials="hosts"``:
DIRAC JSON-decodes that field, and a bare ``hosts`` is answered 401.

``json`` protocol: one POST of JSON lines (``application/x-ndjson``, gzip above 1 KiB).

Outcomes, per request:
    2xx (and, for dirac, a body that is not ``{"OK": false}``)   delivered
    400 413 415 422, or dirac ``{"OK": false}`` (to sendMessage  refused content: those events
    or finaliseLogs: a refusal is never a delivery)             are quarantined (a 413 batch is
                                                                  split in halves first)
    408 429 5xx, timeouts, dropped connections                    retried, backoff + jitter,
                                                                  until ``deadline``
    any other status (401, 403, 404, 3xx…)                        a configuration problem: stop,
                                                                  everything stays spooled
One connection is kept alive for the whole replay.
"""

import json
import time

from .events import PILOT_FINALISE, escape_controls, readable_line, relayed_form
from .redact import hidden_parts, mask_parts, mask_url
from .sink import Backoff, SinkError, in_batches
from .version import __version__

REFUSED = frozenset((400, 413, 415, 422))
RETRY = frozenset((408, 425, 429))
GZIP_ABOVE = 1024
#: A whole POST — connection, TLS, request, answer read to its end — within this many times
#: ``timeout``: the socket's timeout bounds each read only, and a server trickling a byte a
#: second would hold the pilot for ever (found by a hostile tester).
POST_TIMEOUTS = 2
ANSWER_KEPT = 65536  # bytes of an answer read for its message; a longer one costs the connection
PROTOCOLS = ("dirac", "json")


class _Refused(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status


class _Retry(Exception):
    def __init__(self, text: str, status=None):
        super().__init__(text)
        self.status = status


class _Stopped(SinkError):
    """An answer that says the configuration is wrong (401, 403, 404, 3xx…): retrying cannot help."""

    def __init__(self, text: str, status: int):
        super().__init__(text)
        self.status = status


class ProbeFailed(Exception):
    """doctor's POST did not go through.  ``kind`` says what replay would do with events:
    ``refused`` (quarantined), ``retry`` (retried until its deadline) or ``stop`` (kept
    spooled: a configuration problem — URL, credentials, TLS); ``status`` is the HTTP status
    (None when there was no HTTP answer)."""

    def __init__(self, kind: str, text: str, status=None):
        super().__init__(text)
        self.kind, self.status = kind, status


def _retcode(event: dict) -> int:
    for key in ("exit_code", "retCode", "returncode"):
        value = event["data"].get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


class Request:
    """One POST: its body, content type, and the events it confirms when it succeeds.

    A finalising dirac run is two requests: ``sendMessage`` with ``then`` = the
    ``finaliseLogs`` request; both concern the run's events, which leave the spool only
    when ``finaliseLogs`` succeeds (the log is complete on the server).  If either is
    refused, the events are quarantined with DIRAC's reason and ``then`` is not sent.
    """

    __slots__ = ("events", "body", "content_type", "encoding", "then")

    def __init__(self, events, body: bytes, content_type: str, encoding=None, then=None):
        self.events, self.body, self.content_type, self.encoding = events, body, content_type, encoding
        self.then = then


def dirac_form(method: str, payload, pilot: str, vo, host_credentials: bool) -> bytes:
    """The urlencoded form DIRAC's pilot sends: ``method``, ``args`` (and ``extraCredentials``).

    ``args`` is the JSON of ``[JSON of payload, pilot, vo or ""]`` (diracform.encode_args):
    DIRAC's handler JSON-decodes ``args`` into its method's three arguments, and its plugin
    JSON-decodes the payload again (the list of lines for ``sendMessage``, ``{"retCode": n}``
    for ``finaliseLogs``).
    """
    from .diracform import encode_args

    return form_body(method, encode_args(payload, pilot, vo), host_credentials)


def form_body(method: str, args: str, host_credentials: bool) -> bytes:
    """The urlencoded body of one request: ``method``, ``args``, and with host credentials
    ``extraCredentials``, JSON as DIRAC decodes it: ``"hosts"`` with the quotes."""
    from urllib.parse import urlencode

    fields = [("method", method), ("args", args)]
    if host_credentials:
        fields.append(("extraCredentials", json.dumps("hosts")))
    return urlencode(fields).encode("ascii")


class HttpsSink:
    def __init__(self, config, target):
        from .tls import client_context_for, host_credentials

        self.tls = target.tls
        ((self.host, self.port),) = target.hosts
        self.path = target.destination
        borrowed = getattr(config, "borrowed_credential", None) if config.http_protocol == "dirac" else None
        if borrowed is not None:  # the DIRAC Pilot's own, taken by `run --relay` (pilotcred.py)
            self.context, self.hosts_credentials = (borrowed.context if self.tls else None), borrowed.hosts
        else:
            self.context = client_context_for(config) if self.tls else None
            self.hosts_credentials = bool(host_credentials(config.cert))
        self.config = config
        self.conn = None
        self.backoff = Backoff()
        self.hidden = hidden_parts(self.path)  # secrets of the URL a server may echo back

    # -- requests ----------------------------------------------------------------------------

    def _requests(self, batch):
        """Split a batch into POSTs: per pilot run for dirac (finalising at shutdown), one for json."""
        c = self.config
        if c.http_protocol == "json":
            body = "".join(text + "\n" for _, text in batch).encode("utf-8")
            encoding = None
            if len(body) > GZIP_ABOVE:
                import gzip

                body, encoding = gzip.compress(body, 6), "gzip"
            yield Request([e for e, _ in batch], body, "application/x-ndjson", encoding)
            return
        run = []
        for event, _ in batch:
            form = relayed_form(event)
            if form is not None:  # what a Pilot posted to `pilotlog relay`: posted again as it came
                if run:
                    yield self._form("sendMessage", [readable_line(e) for e in run], run[0]["pilot"], run)
                    run = []
                yield self._relayed(event, *form)
                continue
            if run and run[0]["pilot"] != event["pilot"]:
                yield self._form("sendMessage", [readable_line(e) for e in run], run[0]["pilot"], run)
                run = []
            run.append(event)
            if event["phase"] == "shutdown":
                payload = event["data"].get(PILOT_FINALISE)  # the Pilot's own, folded into ours by `run --relay`
                if not isinstance(payload, dict):
                    payload = {"retCode": _retcode(event)}
                finalise = self._form("finaliseLogs", payload, event["pilot"], run)
                yield self._form("sendMessage", [readable_line(e) for e in run], run[0]["pilot"], run, then=finalise)
                run = []
        if run:
            yield self._form("sendMessage", [readable_line(e) for e in run], run[0]["pilot"], run)

    def _form(self, method, payload, pilot, events, then=None):
        body = dirac_form(method, payload, pilot, self.config.vo, self.hosts_credentials)
        return Request(events, body, "application/x-www-form-urlencoded", then=then)

    def _relayed(self, event, method: str, args: str):
        """A relayed record's form: the Pilot's ``method`` and ``args`` unchanged, our credentials."""
        body = form_body(method, args, self.hosts_credentials)
        return Request([event], body, "application/x-www-form-urlencoded")

    # -- sending -----------------------------------------------------------------------------

    def deliver(self, events):
        c = self.config
        for batch in in_batches(events, c.batch_events, c.batch_bytes):
            yield from self._deliver_batch(batch)

    def _deliver_batch(self, batch):
        """POST one batch; yield each event as it is settled, retrying until the deadline."""
        texts = {event["id"]: text for event, text in batch}
        end = None
        self.backoff.reset()
        pending = list(self._requests(batch))
        while pending:
            request = pending.pop(0)
            tried = time.monotonic()
            try:
                self._post(request)
            except _Refused as exc:
                if exc.status == 413 and len(request.events) > 1:  # too big: try the halves
                    half = len(request.events) // 2
                    for part in (request.events[half:], request.events[:half]):
                        pending[:0] = list(self._requests([(e, texts[e["id"]]) for e in part]))
                else:
                    reason = self._refusal(exc)
                    yield from ((e["id"], reason) for e in request.events)
                continue
            except _Retry as exc:
                self._close()
                end = end or tried + self.config.deadline  # from the first attempt's start
                delay = self.backoff.next_delay()
                if time.monotonic() + delay >= end:
                    raise SinkError(
                        "%s (still failing after %d attempts; deadline %g s)"
                        % (exc, self.backoff.attempts, self.config.deadline)
                    ) from None
                time.sleep(delay)
                pending.insert(0, request)
                continue
            end = None
            self.backoff.reset()
            if request.then is not None:  # the lines are stored; delivered once the log is finalised
                pending.insert(0, request.then)
            else:
                yield from ((e["id"], None) for e in request.events)

    def probe(self, pilot: str, payload=None) -> str:
        """POST once what ``pilotlog doctor`` checks, through the code replay uses; the answer.

        With ``payload`` (an ``(event, text)``, the marked test event): that event, as replay
        would send it.  Without: a request that stores nothing yet meets the service's same
        checks — DIRAC's ``sendMessage`` of no lines for ``pilot`` (the same authorisation, VO
        and pilot-id rules; at most an empty log file appears), or an empty JSON-lines batch.
        Raises :class:`ProbeFailed`.
        """
        if payload is not None:
            requests = list(self._requests([payload]))
        elif self.config.http_protocol == "dirac":
            requests = [self._form("sendMessage", [], pilot, [])]
        else:
            requests = [Request([], b"", "application/x-ndjson")]
        try:
            answers = []
            for request in requests:
                try:
                    answers.append(self._post(request))
                except _Retry:  # replay retries on a fresh connection: so does the check, once
                    self._close()
                    answers.append(self._post(request))
            return " ".join(answers)
        except _Refused as exc:
            raise ProbeFailed("refused", self._refusal(exc), exc.status) from None
        except _Retry as exc:
            raise ProbeFailed("retry", str(exc), exc.status) from None
        except SinkError as exc:
            raise ProbeFailed("stop", str(exc), getattr(exc, "status", None)) from None

    def use_socket(self, sock) -> None:
        """Send over ``sock``, already connected (and verified, for TLS): doctor's per-address walk."""
        import http.client

        self._close()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.config.timeout)
        self.conn.sock = sock

    def _refusal(self, exc) -> str:
        """The reason kept with refused events (and said by doctor)."""
        return "%s refused it: %s" % (self.where, exc)

    @property
    def where(self) -> str:
        return mask_url("%s://%s:%d%s" % ("https" if self.tls else "http", self.host, self.port, self.path))

    def _connection(self):
        import http.client

        if self.conn is None:
            timeout = self.config.timeout
            if self.tls:
                self.conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
            else:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return self.conn

    def _post(self, request: Request) -> str:
        """POST one request; its answer (shortened) when it succeeded, else an exception saying how it failed."""
        import http.client
        import socket
        import ssl

        from .tls import describe_verify_error, is_verify_error

        headers = {"Content-Type": request.content_type, "User-Agent": "pilotlog/" + __version__}
        if request.encoding:
            headers["Content-Encoding"] = request.encoding
        if self.config.vo and self.config.http_protocol == "json":
            headers["X-Pilotlog-VO"] = self.config.vo
        limit = POST_TIMEOUTS * self.config.timeout
        conn = self._connection()
        watchdog = Watchdog(lambda: conn.sock, limit)
        try:
            conn.request("POST", self.path, body=request.body, headers=headers)
            response = conn.getresponse()
            status, text = response.status, response.read(ANSWER_KEPT).decode("utf-8", "replace")
            location = response.getheader("Location", "")
            if response.will_close or not response.isclosed():  # not read to its end: not reusable
                self._close()
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._close()
            if is_verify_error(exc):
                raise SinkError("%s: %s" % (self.where, describe_verify_error(exc))) from None
            raise _Retry("%s: %s" % (self.where, describe_verify_error(exc))) from None
        except (OSError, http.client.HTTPException) as exc:
            self._close()
            if watchdog.fired:
                raise _Retry("%s: no complete answer within %g s" % (self.where, limit)) from None
            if isinstance(exc, socket.timeout):
                raise _Retry("%s: timed out after %g s" % (self.where, self.config.timeout)) from None
            if isinstance(exc, http.client.BadStatusLine):
                raise _Retry("%s: not an HTTP answer (%s)" % (self.where, self._shown(str(exc))[:80])) from None
            raise _Retry("%s: %s" % (self.where, getattr(exc, "strerror", None) or exc or type(exc).__name__)) from None
        finally:
            watchdog.cancel()
        if watchdog.fired:  # cut just after the answer came: the connection is not reusable
            self._close()
        said = ("HTTP %d %s" % (status, self._shown(text))).rstrip()
        if 200 <= status < 300:
            if self.config.http_protocol == "dirac":
                try:
                    answer = json.loads(text)
                except ValueError:
                    answer = None
                if isinstance(answer, dict) and answer.get("OK") is False:
                    raise _Refused(status, self._shown(str(answer.get("Message", "OK: false"))))
            return said
        if status in REFUSED:
            raise _Refused(status, said)
        if status in RETRY or status >= 500:
            raise _Retry("%s: %s" % (self.where, said), status)
        self._close()
        if 300 <= status < 400:
            where_to = " to %s" % self._shown(mask_url(location)) if location else ""
            raise _Stopped(
                "%s: %s (moved%s: put the new address in the sink URL)" % (self.where, said, where_to), status
            )
        raise _Stopped("%s: %s (check the URL and credentials)" % (self.where, said), status)

    def _shown(self, text: str) -> str:
        """A peer's words as they may be printed: the URL's secrets masked (an error page may quote
        the request), control characters escaped, on one line, at most 200 characters."""
        return escape_controls(" ".join(mask_parts(text, self.hidden).split()))[:200]

    def _close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self._close()


class Watchdog:
    """Cuts a socket after ``seconds`` (``socket_of()`` gives it, or None while there is none yet):
    a whole exchange is bounded, not only each read — a peer trickling a byte a second is cut."""

    def __init__(self, socket_of, seconds: float):
        import threading

        self.socket_of, self.fired = socket_of, False
        self.timer = threading.Timer(seconds, self._cut)
        self.timer.daemon = True
        self.timer.start()

    def _cut(self) -> None:
        import socket

        self.fired = True
        sock = self.socket_of()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read or write returns at once
            except OSError:
                pass

    def cancel(self) -> None:
        self.timer.cancel()


def make(config, target, stdout) -> HttpsSink:
    return HttpsSink(config, target)
