"""``pilotlog doctor``: walk the configured delivery path step by step and say where it breaks.

config → spool → client credentials → per sink: DNS (every address of every host) → TCP
per address → TLS (protocol, cipher, server certificate, host name, trust) → STOMP
CONNECT (server, heart-beats, login) → the destination as replay judges it → optionally a
test SEND with its receipt.  For an HTTPS sink, after TLS: a POST through the sink's own
code that stores nothing (DIRAC's ``sendMessage`` with no lines, or an empty JSON-lines
batch), so the service's authorisation, VO and pilot-id checks answer as they will for
replay → optionally the test event POSTed.  Every step is timed and bounded by
``timeout``.  A sink works when one of its addresses passes every step (that is what
failover needs); the path works when the sink — or its fallback — works.

Nothing here records events: the optional test event goes straight to the sink, marked
``phase=doctor``, ``status=debug`` and ``data.test=true`` so consumers can drop it; it is
sent as the pilot whose spool this is (so over HTTPS it lands in that pilot's log).
Doctor's answers come from the same code replay runs (the STOMP session and the HTTPS
sink), so its verdict is replay's; tests/faults/test_doctor_agrees.py holds it to that.
"""

import os
import socket
import time

from .redact import mask_text


class Failed(Exception):
    """A step failed: ``detail`` says what was seen, ``advice`` what to do about it.

    ``refused``: the sink took the request and refused its content — replay would quarantine
    the events there, and a fallback sink is never tried for them."""

    def __init__(self, detail: str, advice: str, refused: bool = False):
        super().__init__(detail)
        self.detail, self.advice, self.refused = detail, advice, refused


class Step:
    __slots__ = ("name", "target", "ok", "ms", "detail", "advice")

    def __init__(self, name, target, ok, ms, detail, advice=""):
        # What a step shows never holds a URL's secrets.
        self.name, self.target, self.ok, self.ms, self.detail, self.advice = (
            name,
            mask_text(target),
            ok,
            ms,
            mask_text(detail),
            advice,
        )

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


class Doctor:
    def __init__(self, config, config_error=None, send_test: bool = False):
        self.config, self.config_error, self.send_test = config, config_error, send_test
        self.steps: list = []
        self.context = None
        self._pilot: "str | None" = None
        self.refused = False  # a sink refused the content (see Failed)

    def check(self, name: str, target: str, fn, *args):
        """Run one step, ``fn(*args)``; record it; return fn's value (its detail is the second item) or None."""
        started = time.monotonic()
        try:
            value, detail = fn(*args)
            self.steps.append(Step(name, target, True, _ms(started), detail))
            return value if value is not None else True
        except Failed as exc:
            self.steps.append(Step(name, target, False, _ms(started), exc.detail, exc.advice))
            self.refused = self.refused or exc.refused
            return None

    # -- the walk ----------------------------------------------------------------------------

    def run(self) -> bool:
        """Diagnose; True when events can be delivered."""
        if not self.check("config", "", self._config):
            return False
        spool_ok = self.check("spool", self.config.spool, self._spool)
        if self.config.sink == "stdout":
            self.steps.append(
                Step(
                    "sink",
                    "stdout",
                    True,
                    0.0,
                    "events are printed to stdout, not sent: "
                    "no network path to check (set sink to a stomp+ssl:// or https:// URL)",
                )
            )
            return bool(spool_ok)
        self.check("credentials", self.config.cert or "(none)", self._credentials)
        works = self._sink(self.config.sink, "")
        refused = self.refused  # replay quarantines what the sink refuses: no fallback for that
        if self.config.fallback_sink:
            works = self._sink(self.config.fallback_sink, "fallback ") or works
        return bool(spool_ok) and works and not refused

    def _config(self):
        if self.config_error is not None:
            raise Failed(
                str(self.config_error), "fix the setting named above (pilotlog config shows every value and its origin)"
            )
        from .sinks import describe

        c = self.config
        detail = "sink %s (from %s)" % (describe(c.sink), c.origin["sink"])
        if c.fallback_sink:
            detail += ", fallback %s" % describe(c.fallback_sink)
        return None, detail

    def _spool(self):
        from .spool import SpoolError, open_spool

        spool = open_spool(self.config)
        try:
            spool.ensure()
            spool.check_writable()
            probe = os.path.join(spool.tmp_dir, ".doctor-%d" % os.getpid())
            with open(probe, "wb") as f:
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())
            os.unlink(probe)
        except SpoolError as exc:
            raise Failed(str(exc), "use a spool directory this user owns and can write (--spool)") from None
        except OSError as exc:
            raise Failed(
                "cannot write in %s (%s)" % (spool.tmp_dir, exc.strerror or exc),
                "free some space or point --spool at a writable file system",
            ) from None
        fs = os.statvfs(spool.path)
        free = fs.f_bavail * fs.f_frsize
        return None, "%s: ours and writable, %d event(s) waiting, %s free" % (
            spool.path,
            spool.stats()["depth"],
            _size(free),
        )

    def _credentials(self):
        from .tls import TLSConfigError, client_context_for, host_credentials

        c = self.config
        try:
            self.context = client_context_for(c)
        except TLSConfigError as exc:
            raise Failed(str(exc), "fix cert/key/ca_file/ca_dir (X509_USER_PROXY, X509_CERT_DIR)") from None
        trust = (
            c.ca_file
            or c.ca_dir
            or (
                "/etc/grid-security/certificates"
                if os.path.isdir("/etc/grid-security/certificates")
                else "the system's CAs"
            )
        )
        if not c.cert:
            return None, "no client certificate (login/passcode or anonymous); trusting %s" % trust
        from .x509 import first_certificate

        path = host_credentials(c.cert)[0] if host_credentials(c.cert) else c.cert
        try:
            info = first_certificate(path)
        except (OSError, ValueError) as exc:
            return None, "key matches the certificate; expiry unknown (%s)" % exc
        left = info["not_after"] - time.time()
        if left <= 0:
            raise Failed(
                "client certificate %s (%s) expired %s ago" % (path, info["subject"], _duration(-left)),
                "renew it (for a proxy: voms-proxy-init or dirac-proxy-init)",
            )
        return None, "%s, key matches, expires in %s; trusting %s" % (info["subject"], _duration(left), trust)

    def _sink(self, url: str, label: str) -> bool:
        from .sinks import describe, parse

        try:
            target = parse(url)
        except ValueError as exc:
            self.steps.append(Step(label + "sink", describe(url), False, 0.0, str(exc), "see README, Configuration"))
            return False
        if target.kind == "stdout":
            self.steps.append(Step(label + "sink", "stdout", True, 0.0, "events are printed to stdout, not sent"))
            return True
        use_tls, stomp = target.tls, target.kind == "stomp"
        working, connected = False, False
        for host, port in target.hosts:
            addresses = self.check(label + "dns", host, _resolve, host, port)
            for family, sockaddr in addresses or ():
                where = "%s:%d [%s]" % (host, port, sockaddr[0])
                sock = self.check(label + "tcp", where, _tcp, family, sockaddr, self.config.timeout)
                if not sock:
                    continue
                # STOMP fails over to every address; HTTPS (http.client) uses the first address
                # that takes the TCP connection, in resolver order, whatever happens next there.
                counts = stomp or not connected
                connected = True
                if use_tls:
                    if self.context is None:
                        sock.close()
                        continue  # the credentials step already said why
                    sock = self.check(label + "tls", where, _tls, sock, host, self.context, self.config)
                    if not sock:
                        continue
                if stomp:
                    working = self._stomp(sock, target, where, label) or working
                else:
                    works_here = self._https(sock, target, where, label)
                    working = working or (works_here and counts)
        return working

    def pilot(self) -> str:
        """The pilot id a test goes out as: the configured one, else the spool's own (the id the
        pilot's events carry, so a test line lands in its log), else a fresh one."""
        if self._pilot is None:
            from .events import new_id
            from .spool import SpoolError, open_spool

            pilot = self.config.resolved_pilot()[0]
            if pilot is None:
                try:
                    pilot = open_spool(self.config).pilot_id()
                except (SpoolError, OSError):
                    pilot = new_id()
            self._pilot = pilot
        return self._pilot

    def _stomp(self, sock, target, where: str, label: str) -> bool:
        from .stompclient import StompConnection, StompSink

        c = self.config
        conn = StompConnection.on_socket(sock, "broker " + where, c.timeout)
        if not self.check(label + "stomp", where, _connect, conn, c):
            conn.abort()
            return False
        ok = self.check(label + "destination", target.destination, _destination, conn, target, c) is not None
        if ok and self.send_test:
            payload = test_event(c, self.pilot())
            ok = bool(self.check(label + "send", where, _send_test, conn, StompSink(c, target), payload))
        conn.close()  # a DISCONNECT if the session is still up, else just the socket
        return ok

    def _https(self, sock, target, where: str, label: str) -> bool:
        """The service's answer to a POST that stores nothing; with --send-test, to the test event."""
        from .https import HttpsSink

        sink = HttpsSink(self.config, target)
        try:
            sink.use_socket(sock)
            ok = self.check(label + "https", where, _https, sink, self.pilot()) is not None
            if ok and self.send_test:
                payload = test_event(self.config, self.pilot())
                ok = self.check(label + "send", where, _https, sink, self.pilot(), payload) is not None
        finally:
            sink.close()
        return ok


# -- the steps themselves ----------------------------------------------------------------------


def _resolve(host: str, port: int):
    from .stompclient import addresses

    try:
        found = addresses(host, port)
    except socket.gaierror as exc:
        raise Failed(
            "cannot resolve %s (%s)" % (host, exc.strerror or exc),
            "check the host name in the sink URL and the node's DNS (/etc/resolv.conf)",
        ) from None
    return found, ", ".join(sockaddr[0] for _, sockaddr in found)


def _tcp(family, sockaddr, timeout: float):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(sockaddr)
    except socket.timeout:
        sock.close()
        raise Failed(
            "no answer within %g s" % timeout,
            "a firewall may drop the traffic: ask the site to allow outbound connections to port %d" % sockaddr[1],
        ) from None
    except OSError as exc:
        sock.close()
        raise Failed(
            exc.strerror or str(exc),
            "nothing accepts connections on port %d there: check the port and that the service is up" % sockaddr[1],
        ) from None
    return sock, "connected"


def _tls(sock, host: str, context, config):
    import ssl

    from .tls import common_name, describe_verify_error, server_hostname

    try:  # the socket's timeout bounds the whole handshake (Python >= 3.5), a trickled one too
        tls = context.wrap_socket(sock, server_hostname=server_hostname(host))
    except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
        sock.close()
        text = describe_verify_error(exc) if isinstance(exc, (ssl.SSLError, ssl.CertificateError)) else str(exc)
        if "host name" in text:
            advice = "use the host name the server's certificate carries in the sink URL"
        elif "refused our client certificate" in text:
            advice = "the server does not accept our certificate: renew the proxy or check cert/key"
        elif "not trusted" in text:
            advice = "ca_file/ca_dir (X509_CERT_DIR) must hold the CA that signed the server's certificate"
        else:
            advice = "check that the port speaks TLS (stomp+ssl:// or https://)"
        raise Failed(text, advice) from None
    peer = tls.getpeercert() or {}
    subject = common_name(peer.get("subject")) or "?"
    issuer = common_name(peer.get("issuer"))
    trust = config.ca_file or config.ca_dir or "the default CA store"
    if hasattr(tls, "get_verified_chain"):  # Python 3.13+: name the root that verified it
        from .x509 import parse_der

        try:
            trust = "%s from %s" % (parse_der(bytes(tls.get_verified_chain()[-1]))["subject"], trust)
        except (ssl.SSLError, ValueError, IndexError, TypeError):
            pass
    detail = "%s, %s; server CN=%s issued by CN=%s, expires %s; host name matches; verified with %s" % (
        tls.version(),
        tls.cipher()[0],
        subject,
        issuer or "?",
        peer.get("notAfter", "?"),
        trust,
    )
    return tls, detail


def _connect(conn, config):
    from .stompsession import StompError

    try:
        conn.handshake(config.vhost, config.user, config.passcode)
    except StompError as exc:
        text = str(exc)
        if "refused the connection" in text:
            advice = "check user/passcode and vhost, or that the broker maps our certificate's DN to a user"
        elif "no CONNECTED" in text or "protocol" in text:
            advice = "this port does not seem to speak STOMP: check the port in the sink URL"
        else:
            advice = "the broker closed or broke the session: see its log"
        raise Failed(text, advice) from None
    who = ("as %s" % config.user) if config.user else ("by certificate" if config.cert else "anonymously")
    beats = "heart-beats every %g s" % conn.send_every if conn.send_every else "no heart-beats"
    return None, "CONNECTED to %s, logged in %s, %s" % (conn.server or "an unnamed broker", who, beats)


def _destination(conn, target, config):
    """What replay would say about the destination: one that can drop what it confirms (refused
    unless destination_check=off), the queue properties, and on RabbitMQ that an /amq/queue/ exists."""
    from .stompclient import dropping, parse_headers
    from .stompsession import StompError

    destination = target.destination
    why = dropping(destination)
    if why and config.destination_check == "strict":
        raise Failed(
            "%s can drop messages silently (%s): a RECEIPT would not mean stored" % (destination, why),
            "send to /queue/NAME, or set destination_check=off if a durable subscription or a binding holds them",
        )
    try:
        headers = parse_headers(config.destination_headers)
    except ValueError as exc:
        raise Failed(str(exc), "fix destination_headers (pilotlog config shows its value)") from None
    if destination.startswith("/amq/queue/") and conn.server.startswith("RabbitMQ"):
        try:
            conn.check_queue(destination)
        except StompError as exc:
            raise Failed(str(exc), "declare the queue on the broker, or use /queue/NAME") from None
        detail = "the queue exists (checked without consuming)"
    elif why:
        detail = "%s: destination_check=off trusts every RECEIPT, even for what nothing holds" % why
    else:
        detail = "a queue: what the broker confirms, it keeps"
    if headers:
        detail += "; sent with %s" % ", ".join("%s=%s" % h for h in headers)
    return None, detail


def test_event(config, pilot: str):
    """The marked test event of ``--send-test`` and its text: ``(event, text)`` as the spool gives them."""
    from .events import make_event, render

    event = make_event(
        "doctor",
        "pilotlog doctor test event: safe to ignore",
        "debug",
        "pilotlog-doctor",
        {"test": True},
        pilot=pilot,
        context=config.context(),
        seq=1,
        epoch=time.time(),
    )
    return event, render(event, config.format)


def _send_test(conn, sink, payload):
    from .stompsession import StompError

    event = payload[0]
    try:
        confirmed = list(conn.stream(iter([(event["id"], payload)]), sink.encode, 1))
    except StompError as exc:
        from .stompclient import advice

        hint = advice(str(exc))
        raise Failed(
            str(exc),
            hint[2:]
            if hint
            else "the broker refused the message: check the destination and write permission for this user",
        ) from None
    if confirmed != [event["id"]]:
        raise Failed("no receipt for the test event", "see the broker's log")
    return None, "test event %s to %s receipted" % (event["id"], sink.destination)


def _https(sink, pilot: str, payload=None):
    """One POST through the HTTPS sink's own code, so its verdict is replay's (see HttpsSink.probe)."""
    from .https import ProbeFailed

    try:
        answer = sink.probe(pilot, payload)
    except ProbeFailed as exc:
        text = str(exc)
        if exc.status in (401, 403):
            advice = "the service must accept our certificate's DN (or host certificate): ask its admins"
        elif exc.status == 404:
            advice = "check the path in the sink URL"
        elif exc.status is not None and 300 <= exc.status < 400:
            advice = "the service has moved: use the address it names in the sink URL"
        elif "refused our client certificate" in text:
            advice = "the service requires a client certificate it accepts: set cert/key (X509_USER_PROXY)"
        elif exc.kind == "refused":
            raise Failed(
                text,
                "replay would quarantine such events (a fallback sink is not tried for them): check vo "
                "and the pilot id (DIRAC takes a UUID or a stamp)",
                refused=True,
            ) from None
        elif "not an HTTP answer" in text:
            advice = "this port does not speak HTTP: check the port and scheme in the sink URL"
        elif exc.kind == "retry":
            advice = "the service is failing or overloaded: replay retries until its deadline; see the service's log"
        else:
            advice = "check the URL and credentials"
        raise Failed(text, advice) from None
    if payload is None:
        what = "sendMessage of no lines" if sink.config.http_protocol == "dirac" else "an empty batch"
        return None, "the service accepts our POST (%s, as pilot %s): %s" % (what, pilot, answer)
    return None, "test event %s stored: %s" % (payload[0]["id"], answer)


# -- formatting ----------------------------------------------------------------------------


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return "%.1f %s" % (n, unit)
        n /= 1024.0
    return "%.1f PiB" % n


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return "%d days" % (seconds // 86400)
    if seconds >= 2 * 3600:
        return "%d h" % (seconds // 3600)
    return "%d min" % max(1, seconds // 60)


def report(steps, works: bool, stream) -> None:
    """The human report: one line per step, then the verdict and the first failure explained.

    Without a confirmed test event (``--send-test``) a broker that fails only at SEND (a
    disk alarm, a full queue) cannot be seen, and the verdict says so."""
    marks = ("✓", "✗") if _can_print(stream, "✓✗") else ("ok", "FAIL")
    for s in steps:
        stream.write(
            "%-4s %-16s %-34s %8.1f ms  %s\n" % (marks[0] if s.ok else marks[1], s.name, s.target, s.ms, s.detail)
        )
    first = next((s for s in steps if not s.ok), None)
    if first is not None:
        stream.write(
            "%s: %s %s: %s; %s\n"
            % (
                "warning (another road works)" if works else "first failure",
                first.name,
                first.target,
                first.detail,
                first.advice,
            )
        )
    if not works:
        verdict = "events cannot be delivered; they stay spooled"
    elif any(s.ok and (s.name.endswith("send") or s.target == "stdout") for s in steps):
        verdict = "events can be delivered"
    else:
        verdict = "events can be delivered as far as a check that stores nothing shows (--send-test sends a marked test event)"
    stream.write("result: %s\n" % verdict)


def _can_print(stream, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False
