"""STOMP 1.2 client over TCP or TLS: connect with failover, pipelined SENDs with receipts.

Layers, bottom up:
    Transport        a connected (TLS) socket with a deadline on every call
    StompConnection  CONNECT/CONNECTED, heart-beats, a window of SEND frames each with a
                     receipt, ERROR frames, DISCONNECT — frames built and parsed by
                     :mod:`stompcodec`, which knows nothing of sockets
    connect()        DNS expansion + shuffled failover with backoff and jitter inside a deadline
    StompSink        the sink surface (deliver(events) yields settled ids) for ship.py

Deadlines: ``timeout`` bounds each step (TCP connect, TLS handshake, CONNECTED, the wait
for the next RECEIPT); ``deadline`` bounds the whole failover loop, and the reconnection
after a connection is lost mid-stream.  Nothing here can hang.
"""

import collections
import itertools
import random
import socket
import ssl
import time

from .redact import mask_url
from .stompcodec import FrameParser, ProtocolError, encode_frame, escape

DEFAULT_PORTS = {"stomp": 61613, "stomp+ssl": 61614}
HEARTBEAT_MS = 10000  # what we offer and ask for: an EOL at least every 10 s when idle


class StompError(Exception):
    """Delivery over STOMP failed.

    ``retryable`` says whether another attempt (another address, a reconnection) can
    help: a refused or lost connection can, a wrong password or an untrusted
    certificate cannot.
    """

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


# ---------------------------------------------------------------------------------------------
# URLs and destinations


def normalise_destination(path: str) -> str:
    """``/queue/x``, ``/topic/x`` (any ``/...`` form passes) or DIRAC's ``host::Queues::x``."""
    if "::" in path:
        parts = path.lstrip("/").split("::")
        if len(parts) == 3 and parts[2]:
            kind = parts[1].lower().rstrip("s")
            if kind in ("queue", "topic"):
                return "/%s/%s" % (kind, parts[2])
        raise ValueError("destination %r is not DIRAC's host::Queue::name or host::Topic::name" % path)
    if not path.startswith("/") or path.rstrip("/").count("/") < 2:
        raise ValueError("destination %r must look like /queue/name or /topic/name" % path)
    return path


def parse_url(url: str):
    """``stomp+ssl://h1[:p1][,h2[:p2]…][:port]/destination`` → (use_tls, [(host, port)…], destination).

    A host without its own port takes the port written last (or the scheme's default:
    61614 with TLS, 61613 plain).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError("STOMP URL %r must start with stomp+ssl:// (or stomp:// for plain TCP)" % mask_url(url))
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        raise ValueError("put credentials in user/passcode settings, not in the STOMP URL")
    hosts = []
    for item in netloc.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or host.count(":") and not host.endswith("]"):  # no port, or a bare IPv6 address
            host, port = item.strip(), ""
        host = host.strip("[]")
        if not host:
            raise ValueError("STOMP URL %r has an empty host" % mask_url(url))
        if port and not port.isdigit():
            raise ValueError("STOMP URL %r has a bad port %r" % (mask_url(url), port))
        hosts.append((host, int(port) if port else None))
    default = next((p for _, p in reversed(hosts) if p), DEFAULT_PORTS[scheme])
    destination = normalise_destination("/" + path if slash else "")
    return scheme == "stomp+ssl", [(h, p or default) for h, p in hosts], destination


# ---------------------------------------------------------------------------------------------
# Transport


def _wire_host(host: str):
    """An ASCII host name as bytes, so CPython skips the idna codec (≈3 ms to import)."""
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        return host


class Transport:
    """A connected socket where every operation has a deadline (``socket.timeout`` past it)."""

    def __init__(self, sock):
        self.sock = sock

    @classmethod
    def open(cls, host: str, sockaddr, family, context, timeout: float):
        """TCP connect, then (with a context) a TLS handshake verifying ``host``."""
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=_wire_host(host), do_handshake_on_connect=False)
                sock.settimeout(timeout)
                sock.do_handshake()
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def send_all(self, data: bytes, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes:
        """Up to 64 KiB; ``b""`` when the peer closed; ``socket.timeout`` past ``timeout``."""
        self.sock.settimeout(max(timeout, 0.001))
        return self.sock.recv(65536)

    def readable_now(self) -> bool:
        import select

        pending = getattr(self.sock, "pending", None)
        if pending is not None and pending():
            return True
        return bool(select.select([self.sock], [], [], 0)[0])

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Connection


def _heartbeats(offered: str):
    """(send every, expect every) in seconds from the server's heart-beat header; 0 = none."""
    try:
        sx, sy = (int(x) for x in offered.split(","))
    except ValueError:
        sx = sy = 0
    send = max(HEARTBEAT_MS, sy) / 1000.0 if sy else 0.0
    expect = max(HEARTBEAT_MS, sx) / 1000.0 if sx else 0.0
    return send, expect


def _error_text(frame) -> str:
    """One line from an ERROR frame: its message header, plus the body's first line."""
    message = frame.headers.get("message", "").strip()
    detail = frame.body.decode("utf-8", "replace").strip().split("\n")[0][:200]
    if detail and detail not in message:
        message = "%s (%s)" % (message, detail) if message else detail
    return message or "ERROR frame without a message"


def _settle(inflight, receipt: str) -> list:
    """Remove and return the ids a RECEIPT for ``receipt`` confirms, oldest first.

    ``inflight`` maps event id -> (frame, has_receipt), in sending order.  A RECEIPT
    confirms ``receipt`` itself and every frame before it that was sent without a
    receipt (cumulative, STOMP 1.2); frames before it that asked for their own receipt
    wait for it.  Receipts normally arrive in order, so this pops from the front in
    O(confirmed); only an out-of-order receipt costs a scan.
    """
    done = []
    while inflight:
        event_id, (_, has_receipt) = next(iter(inflight.items()))
        if event_id != receipt and has_receipt:
            break
        del inflight[event_id]
        done.append(event_id)
        if event_id == receipt:
            return done
    for event_id in list(inflight):  # out of order: skip frames still awaiting their own receipt
        if event_id == receipt or not inflight[event_id][1]:
            del inflight[event_id]
            done.append(event_id)
        if event_id == receipt:
            break
    return done


class StompConnection:
    """One STOMP session on a transport.  Use :func:`connect` to get one."""

    def __init__(self, transport: Transport, where: str, timeout: float):
        self.transport = transport
        self.where = where
        self.timeout = timeout
        self.parser = FrameParser()
        self.server = ""
        self.send_every = self.expect_every = 0.0
        self._last_sent = self._last_received = time.monotonic()

    # -- low level --------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        try:
            self.transport.send_all(data, self.timeout)
        except socket.timeout:
            raise StompError("%s: write timed out after %g s" % (self.where, self.timeout)) from None
        except OSError as exc:
            raise StompError("%s: connection lost while sending (%s)" % (self.where, exc)) from None
        self._last_sent = time.monotonic()

    def _receive(self, until: float, block: bool):
        """Frames available now, or (``block``) the first ones to arrive before ``until``.

        While waiting, sends heart-beat EOLs when they are due and gives up on a server
        that has been silent for twice its heart-beat interval.
        """
        frames = []
        while True:
            try:
                frame = self.parser.next_frame() if self.parser.buffered else None
            except ProtocolError as exc:
                raise StompError("%s broke the protocol: %s" % (self.where, exc), retryable=False) from None
            if frame is not None:
                frames.append(frame)
                continue
            if frames or (not block and not self.transport.readable_now()):
                return frames
            now = time.monotonic()
            if now >= until:
                return frames
            if self.expect_every and now - self._last_received > 2 * self.expect_every:
                raise StompError("%s silent for %.0f s (heart-beats missed)" % (self.where, now - self._last_received))
            wait = until - now
            if self.send_every:
                due = self._last_sent + self.send_every - now
                if due <= 0:
                    self._send(b"\n")
                    continue
                wait = min(wait, due)
            try:
                data = self.transport.recv(wait)
            except socket.timeout:
                continue
            except ssl.SSLError as exc:  # e.g. the broker rejected our certificate after the handshake
                raise StompError("%s: TLS error (%s)" % (self.where, exc.reason or exc), retryable=False) from None
            except OSError as exc:
                raise StompError("%s: connection lost (%s)" % (self.where, exc)) from None
            if not data:
                raise StompError("%s closed the connection" % self.where)
            self._last_received = time.monotonic()
            self.parser.feed(data)

    # -- STOMP -------------------------------------------------------------------------------

    def handshake(self, vhost: str, login=None, passcode=None) -> None:
        headers = [("accept-version", "1.2"), ("host", vhost), ("heart-beat", "%d,%d" % (HEARTBEAT_MS, HEARTBEAT_MS))]
        if login:
            headers.append(("login", login))
        if passcode:
            headers.append(("passcode", passcode))
        self._send(encode_frame("CONNECT", headers))
        frames = self._receive(time.monotonic() + self.timeout, block=True)
        if not frames:
            raise StompError("%s: no CONNECTED frame within %g s" % (self.where, self.timeout))
        frame = frames[0]
        if frame.command == "ERROR":
            raise StompError("%s refused the connection: %s" % (self.where, _error_text(frame)), retryable=False)
        if frame.command != "CONNECTED":
            raise StompError("%s: expected CONNECTED, got %s" % (self.where, frame.command), retryable=False)
        if frame.headers.get("version", "1.0") != "1.2":
            raise StompError("%s does not speak STOMP 1.2 (version %r)" % (self.where, frame.headers.get("version")), retryable=False)
        self.server = frame.headers.get("server", "")
        self.send_every, self.expect_every = _heartbeats(frame.headers.get("heart-beat", "0,0"))

    def stream(self, inflight, source, build, window: int, every: int = 1):
        """Send SEND frames for ``source`` and yield event ids as the broker confirms them.

        ``source`` is an iterator of ``(event_id, payload)``; ``build(payload, receipt)``
        makes the frame.  At most ``window`` frames are unconfirmed at a time, kept in
        ``inflight`` (event id -> (frame, has_receipt)), which the caller owns: after a
        lost connection it still holds what must be re-sent, and this method sends it
        first on the next connection.  The window is refilled whenever half of it is
        free, so the broker always has frames to work on while receipts come back.

        A frame with its own ``receipt`` is confirmed only by *that* RECEIPT.  With
        ``every`` = K > 1 (opt-in) a receipt is asked every K frames and on the last frame
        of each write; the frames between are confirmed by the next RECEIPT, which STOMP
        1.2 makes a cumulative acknowledgment that all previous frames were received.
        """
        if inflight:
            self._send(b"".join(frame for frame, _ in inflight.values()))
        progress, exhausted, counted = time.monotonic(), False, 0
        while True:
            if not exhausted and len(inflight) <= window // 2:
                want = window - len(inflight)
                chunk = list(itertools.islice(source, want))
                exhausted = len(chunk) < want
                frames = []
                for i, (event_id, payload) in enumerate(chunk, 1):
                    counted += 1
                    receipt = every <= 1 or counted % every == 0 or i == len(chunk)
                    frame = build(payload, receipt)
                    inflight[event_id] = (frame, receipt)
                    frames.append(frame)
                if frames:
                    self._send(b"".join(frames))
                    progress = time.monotonic()
            if not inflight:
                return
            block = exhausted or len(inflight) > window // 2
            for frame in self._receive(progress + self.timeout, block):
                if frame.command == "RECEIPT":
                    receipt_id = frame.headers.get("receipt-id")
                    if receipt_id in inflight:
                        yield from _settle(inflight, receipt_id)
                        progress = time.monotonic()
                elif frame.command == "ERROR":
                    raise StompError("%s sent an ERROR: %s" % (self.where, _error_text(frame)), retryable=False)
            if block and inflight and time.monotonic() >= progress + self.timeout:
                raise StompError(
                    "%s: no RECEIPT within %g s (%d frame(s) unconfirmed)" % (self.where, self.timeout, len(inflight))
                )

    # -- consuming (pilotlog tail / timeline) ------------------------------------------------

    def subscribe(self, destination: str, prefetch: int = 100) -> None:
        """SUBSCRIBE with ``client-individual`` acks: a message is ours to lose only once ACKed.

        ``prefetch`` bounds what the broker sends before our ACKs (RabbitMQ and ActiveMQ
        each read their own header; others ignore both).
        """
        self._send(encode_frame("SUBSCRIBE", [
            ("destination", destination), ("id", "pilotlog"), ("ack", "client-individual"),
            ("prefetch-count", str(prefetch)), ("activemq.prefetchSize", str(prefetch)),
        ]))

    def messages(self, until: float):
        """MESSAGE frames arriving before ``until`` (an ERROR frame raises StompError)."""
        for frame in self._receive(until, block=True):
            if frame.command == "MESSAGE":
                yield frame
            elif frame.command == "ERROR":
                raise StompError("%s sent an ERROR: %s" % (self.where, _error_text(frame)), retryable=False)

    def ack(self, frame) -> None:
        """Acknowledge one MESSAGE (STOMP 1.2: by the value of its ``ack`` header)."""
        self._send(encode_frame("ACK", [("id", frame.headers.get("ack", frame.headers.get("message-id", "")))]))

    def close(self) -> None:
        """DISCONNECT with a receipt (so the broker has everything), bounded by a short wait."""
        try:
            self._send(encode_frame("DISCONNECT", [("receipt", "bye")]))
            until = time.monotonic() + min(self.timeout, 2.0)
            while time.monotonic() < until:  # MESSAGE frames may still arrive first: skip them
                frames = self._receive(until, block=True)
                if any(f.command == "RECEIPT" and f.headers.get("receipt-id") == "bye" for f in frames):
                    break
        except StompError:
            pass
        finally:
            self.transport.close()


# ---------------------------------------------------------------------------------------------
# Failover


def addresses(host: str, port: int) -> list:
    """Every distinct (family, sockaddr) of ``host``, DNS aliases expanded, in resolver order.

    Raises ``socket.gaierror`` when the name does not resolve.
    """
    found = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(_wire_host(host), port, type=socket.SOCK_STREAM):
        if (family, sockaddr) not in found:
            found.append((family, sockaddr))
    return found


def _resolve(hosts, rng):
    """Every (host, port, family, sockaddr) for the hosts, DNS aliases expanded, shuffled."""
    found, errors = [], []
    for host, port in hosts:
        try:
            found += [(host, port, family, sockaddr) for family, sockaddr in addresses(host, port)]
        except socket.gaierror as exc:
            errors.append("%s: cannot resolve (%s)" % (host, exc.strerror or exc))
    rng.shuffle(found)
    return found, errors


def connect(hosts, context, vhost="/", login=None, passcode=None, timeout=5.0, deadline=20.0, rng=None):
    """A connected, CONNECTED session to one of ``hosts`` ([(host, port)…]).

    Addresses are tried in shuffled order; between rounds we back off (0.2 s doubling to
    5 s, ±50 % jitter) while ``deadline`` lasts.  Errors that another try cannot fix
    (authentication, certificate) end the loop at once.
    """
    from .tls import describe_verify_error, is_verify_error

    rng = rng or random.Random()
    end = time.monotonic() + deadline
    backoff, last = 0.2, "no address to try"
    names = ",".join("%s:%d" % hp for hp in hosts)
    while True:
        addresses, errors = _resolve(hosts, rng)
        if errors:
            last = errors[-1]
        for host, port, family, sockaddr in addresses:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            step = min(timeout, remaining)
            where = "broker %s:%d [%s]" % (host, port, sockaddr[0])
            try:
                transport = Transport.open(host, sockaddr, family, context, step)
            except (ssl.SSLError, ssl.CertificateError) as exc:  # CertificateError: host name, Python 3.6
                if is_verify_error(exc):
                    raise StompError("%s: %s" % (where, describe_verify_error(exc)), retryable=False) from None
                last = "%s: %s" % (where, describe_verify_error(exc))
                continue
            except socket.timeout:
                last = "%s: timed out after %.1f s" % (where, step)
                continue
            except OSError as exc:
                last = "%s: %s" % (where, exc.strerror or exc)
                continue
            conn = StompConnection(transport, where, timeout)
            try:
                conn.handshake(vhost, login, passcode)
                return conn
            except StompError as exc:
                transport.close()
                if not exc.retryable:
                    raise
                last = str(exc)
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise StompError("cannot reach broker %s within %g s (last: %s)" % (names, deadline, last))
        time.sleep(min(remaining, backoff * rng.uniform(0.5, 1.5)))
        backoff = min(backoff * 2, 5.0)


# ---------------------------------------------------------------------------------------------
# The sink


class StompSink:
    """Ship events as SEND frames: one per event, each with its own receipt (by default).

    ``receipt_every`` > 1 (opt-in) asks for a receipt every K frames and on the last of
    each write; a receipt then confirms the unreceipted frames before it (see stream).

    Every message is ``persistent`` JSON and carries headers consumers can filter on
    with selectors: ``pilot_id``, ``event_id``, ``phase``, ``status`` (JMS selector
    identifiers, hence underscores).  A connection lost mid-stream is re-established
    (failover again, within ``deadline``) and only unconfirmed events are re-sent.
    """

    def __init__(self, config, url: str):
        from .tls import client_context

        use_tls, self.hosts, self.destination = parse_url(url)
        self._prefix = "SEND\ndestination:%s\ncontent-type:application/json;charset=utf-8\npersistent:true\n" % escape(
            self.destination
        )
        self.context = client_context(config.ca_file, config.ca_dir, config.cert, config.key) if use_tls else None
        self.config = config
        self.conn = None

    def _frame(self, event: dict, body: bytes, receipt: bool) -> bytes:
        """A SEND frame, built from a pre-encoded header prefix (the codec's rules, cheaper).

        Only the pilot id can need STOMP escaping: event ids are UUIDs and phase and status
        are names of ``[A-Za-z0-9_.-]`` (see events.check_name).
        """
        head = self._prefix
        if receipt:
            head += "receipt:%s\n" % event["id"]
        head += "pilot_id:%s\nevent_id:%s\nphase:%s\nstatus:%s\ncontent-length:%d\n\n" % (
            escape(event["pilot"]), event["id"], event["phase"], event["status"], len(body),
        )
        return head.encode("utf-8") + body + b"\x00"

    def _connect(self, deadline: float) -> StompConnection:
        c = self.config
        return connect(self.hosts, self.context, c.vhost, c.user, c.passcode, c.timeout, deadline)

    def _build(self, payload, receipt: bool) -> bytes:
        event, body = payload
        return self._frame(event, body.encode("utf-8"), receipt)

    def deliver(self, events):
        from .sinks import SinkError

        source = ((event["id"], (event, body)) for event, body in events)
        inflight = collections.OrderedDict()  # survives reconnections: what must be re-sent
        lost, end = None, None  # why the last connection was lost; when reconnecting must stop
        while True:
            if self.conn is None:
                budget = self.config.deadline if end is None else end - time.monotonic()
                gave_up = "%s; gave up reconnecting after %g s" % (lost, self.config.deadline)
                if budget <= 0:
                    raise SinkError(gave_up)
                try:
                    self.conn = self._connect(budget)
                except StompError as exc:  # failover spent its deadline, or another try cannot help
                    if lost is None:
                        raise SinkError(str(exc)) from None
                    raise SinkError(gave_up if exc.retryable else "%s; reconnecting failed: %s" % (lost, exc)) from None
            try:
                for event_id in self.conn.stream(inflight, source, self._build, self.config.window,
                                                 self.config.receipt_every):
                    yield event_id, None
                return
            except StompError as exc:
                self.conn.transport.close()
                self.conn = None
                if not exc.retryable:
                    raise SinkError(str(exc)) from None
                lost = str(exc)
                if end is None:
                    end = time.monotonic() + self.config.deadline

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
