"""STOMP 1.2 over TCP or TLS: the I/O around the sans-IO session, failover, and the STOMP sink.

Layers, bottom up:
    Transport        a connected (TLS) socket with a deadline on every call
    StompConnection  drives a :class:`stompsession.StompSession` (CONNECT/CONNECTED,
                     heart-beats, the window of SENDs and their receipts, ERROR) over a
                     transport: the session decides, this only reads, writes and waits
    connect()        DNS expansion + shuffled failover with backoff and jitter inside a deadline
    StompSink        the sink surface (deliver(events) yields settled ids) for ship.py

Deadlines: ``timeout`` bounds each step (TCP connect, TLS handshake, CONNECTED, the wait
for the next RECEIPT); ``deadline`` bounds the whole of a delivery — connecting, failover,
sending, receipts, reconnecting — every step's wait is cut at its end (:class:`Deadline`), and
the message then says that the deadline ended it.  Nothing here can hang, and a broker that
heart-beats, or confirms one frame now and then, cannot hold a replay past it.

Reconnecting: between two attempts, whatever failed (every address, or a session lost
mid-stream), the one :class:`sink.Backoff` of the delivery waits, with jitter; and an event
goes out at most ``stompsession.MAX_SENDS`` times, so a broker that drops every session
before confirming is neither hammered nor fed the same window forever.
"""

import collections
import itertools
import math
import random
import socket
import ssl
import time

from .sink import Backoff, SinkError
from .stompcodec import SendFrames
from .stompsession import (
    MAX_SENDS,
    Closed,
    Failed,
    Message,
    Receipt,
    Settled,
    StompError,
    StompSession,
    worn_out,
)
from .tls import server_hostname

# ---------------------------------------------------------------------------------------------
# Transport


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
                sock = context.wrap_socket(sock, server_hostname=server_hostname(host), do_handshake_on_connect=False)
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


class Deadline:
    """The end of a whole delivery: every wait of every step is cut there (``seconds`` for messages)."""

    __slots__ = ("seconds", "end")

    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def __str__(self) -> str:
        return "the deadline (%g s)" % self.seconds


NO_DEADLINE = Deadline(math.inf)  # for what only its steps' timeouts bound (doctor, tail)

# ---------------------------------------------------------------------------------------------
# Connection


class StompConnection:
    """A STOMP session on a transport.  Use :func:`connect` to get one (or :meth:`on_socket`)."""

    def __init__(self, transport: Transport, where: str, timeout: float, deadline: Deadline = NO_DEADLINE):
        self.transport = transport
        self.timeout = timeout
        self.deadline = deadline
        self.session = StompSession(where)

    @classmethod
    def on_socket(cls, sock, where: str, timeout: float) -> "StompConnection":
        """A connection over a socket someone else connected (doctor walks the steps itself)."""
        return cls(Transport(sock), where, timeout)

    @property
    def where(self) -> str:
        return self.session.where

    @property
    def server(self) -> str:
        return self.session.server

    @property
    def send_every(self) -> float:
        return self.session.send_every

    # -- low level --------------------------------------------------------------------------

    def _at_deadline(self) -> StompError:
        """The error that ends a delivery at its deadline: nothing more can be tried."""
        unconfirmed = len(self.session.inflight)
        return StompError(
            "%s: stopped at %s%s"
            % (self.where, self.deadline, ", %d frame(s) unconfirmed" % unconfirmed if unconfirmed else ""),
            retryable=False,
        )

    def _send(self, data: bytes) -> None:
        wait = min(self.timeout, self.deadline.left())
        if wait <= 0:
            raise self._at_deadline()
        try:
            self.transport.send_all(data, wait)
        except socket.timeout:
            if wait < self.timeout:
                raise self._at_deadline() from None
            raise StompError("%s: write timed out after %g s" % (self.where, self.timeout)) from None
        except OSError as exc:
            raise StompError("%s: connection lost while sending (%s)" % (self.where, exc)) from None

    def _receive(self, until: float, block: bool) -> list:
        """Session events from bytes available now, or (``block``) the first to arrive before ``until``.

        While waiting, sends the heart-beats the session says are due, and lets it give up
        on a server that stays silent.  ``until`` is cut at the deadline.
        """
        session = self.session
        until = min(until, self.deadline.end)
        while True:
            if not block and not self.transport.readable_now():
                return []
            now = time.monotonic()
            if now >= until:
                return []
            beat, wait = session.timers(now, until)
            if beat:
                self._send(beat)
                continue
            try:
                data = self.transport.recv(wait)
            except socket.timeout:
                continue
            except ssl.SSLError as exc:  # e.g. the broker rejected our certificate after the handshake (TLS 1.3)
                from .tls import describe_verify_error, is_verify_error

                said = describe_verify_error(exc) if is_verify_error(exc) else "TLS error (%s)" % (exc.reason or exc)
                raise StompError("%s: %s" % (self.where, said), retryable=False) from None
            except OSError as exc:
                raise StompError("%s: connection lost (%s)" % (self.where, exc)) from None
            events = session.receive_data(data, time.monotonic())
            if events:
                return events

    # -- STOMP -------------------------------------------------------------------------------

    def handshake(self, vhost: str, login=None, passcode=None) -> None:
        self._send(self.session.connect(vhost, login, passcode, time.monotonic()))
        events = self._receive(time.monotonic() + self.timeout, block=True)
        if not events:
            if self.deadline.left() <= 0:
                raise self._at_deadline()
            raise StompError("%s: no CONNECTED frame within %g s" % (self.where, self.timeout))
        # The session turns anything but CONNECTED, in CONNECTING, into Failed; and what came in the
        # same read after CONNECTED (an ERROR, garbage) may already have ended the session.
        for event in events:
            if event.__class__ is Failed:
                raise event.error

    def stream(self, source, build, window: int, every: int = 1, inflight=None):
        """Send SEND frames for ``source`` and yield event ids as the broker confirms them.

        ``source`` is an iterator of ``(event_id, payload)``; ``build(payload, receipt)``
        makes the frame.  ``inflight`` (event id -> (frame, has_receipt, sends)), when given, is
        the caller's: after a lost connection it still holds what must be re-sent, and
        this method sends it first on the next connection.  The window rules (size,
        refill, receipts every K frames) are the session's (see stompsession.py).  At the
        deadline it stops, whatever is left: a broker confirming a frame now and then cannot
        hold it longer.
        """
        session = self.session
        session.open_window(window, every, inflight)
        if session.inflight:
            self._send(session.resend(time.monotonic()))
        exhausted = False
        while True:
            if self.deadline.left() <= 0 and (session.inflight or not exhausted):
                raise self._at_deadline()
            room = session.room()
            if not exhausted and room:
                chunk = list(itertools.islice(source, room))
                exhausted = len(chunk) < room
                if chunk:
                    self._send(session.send(chunk, build, time.monotonic()))
                    room = session.room()
            if not session.inflight:
                return
            block = exhausted or not room
            for event in self._receive(session.progress + self.timeout, block):
                if event.__class__ is Settled:
                    yield from event.ids
                elif event.__class__ is Failed:
                    raise event.error
            if block and session.inflight and time.monotonic() >= session.progress + self.timeout:
                raise StompError(
                    "%s: no RECEIPT within %g s (%d frame(s) unconfirmed)"
                    % (self.where, self.timeout, len(session.inflight))
                )

    # -- consuming (pilotlog tail / timeline) ------------------------------------------------

    def subscribe(self, destination: str, prefetch: int = 100) -> None:
        self._send(self.session.subscribe(destination, prefetch, time.monotonic()))

    def messages(self, until: float):
        """MESSAGE frames arriving before ``until`` (an ERROR frame raises StompError)."""
        for event in self._receive(until, block=True):
            if event.__class__ is Message:
                yield event.frame
            elif event.__class__ is Failed:
                raise event.error

    def ack(self, frame) -> None:
        self._send(self.session.ack(frame, time.monotonic()))

    def check_queue(self, destination: str) -> None:
        """Make sure a RabbitMQ ``/amq/queue/NAME`` exists, consuming nothing from it.

        RabbitMQ confirms a SEND to a queue that does not exist, and drops the message; a
        SUBSCRIBE to one is answered by an ERROR.  So: subscribe (prefetch 1, client
        acknowledgments) and wait for its receipt, then unsubscribe and wait for that one.
        A message the broker hands the check meanwhile is never acknowledged: the broker gives
        it back to the queue's consumers when the subscription, or at the latest this
        connection, ends (a NACK cannot be used: after the UNSUBSCRIBE it is an ERROR).  One
        handed over just before the UNSUBSCRIBE may reach RabbitMQ's STOMP adapter after it: its
        harmless "Subscription not found" ERROR is told apart by the session (late_delivery).
        """
        session = self.session
        self._send(session.subscribe(destination, 1, time.monotonic(), sub_id=PROBE, receipt=PROBE))
        self._await_receipt(PROBE, destination)  # subscribed: the queue exists
        self._send(session.unsubscribe(PROBE, PROBE + "-done", time.monotonic()))
        self._await_receipt(PROBE + "-done", destination)  # no message of the probe can follow

    def _await_receipt(self, receipt: str, destination: str) -> None:
        """Wait for ``receipt`` while checking ``destination`` (a message for the check is left unacknowledged).

        Every event of a read is looked at: an ERROR in the same bytes as the receipt ends the check.
        """
        until = time.monotonic() + self.timeout
        while True:
            events = self._receive(until, block=True)
            if not events:
                if self.deadline.left() <= 0:
                    raise self._at_deadline()
                raise StompError("%s: no answer within %g s about %s" % (self.where, self.timeout, destination))
            for event in events:
                if event.__class__ is Failed:
                    if "subscription not found" in str(event.error).lower():  # the broker cancelled it first
                        raise StompError(
                            "%s: the broker dropped the check's subscription to %s (the queue moving "
                            "between nodes?)" % (self.where, destination)
                        )  # retryable: connect again
                    if "not_found" in str(event.error).lower():
                        raise StompError(
                            "%s: queue %s does not exist there, and RabbitMQ would confirm messages sent to it and "
                            "drop them: declare the queue (a quorum queue on a cluster), or send to /queue/%s, which "
                            "RabbitMQ declares" % (self.where, destination, destination[len("/amq/queue/") :]),
                            retryable=False,
                        )
                    raise event.error
            if any(event.__class__ is Receipt and event.receipt_id == receipt for event in events):
                return

    def abort(self) -> None:
        """Drop the connection without a word (after a failure: the session is over)."""
        self.transport.close()

    def close(self) -> None:
        """DISCONNECT with a receipt (so the broker has everything), bounded by a short wait."""
        try:
            if self.session.state == "CONNECTED":
                self._send(self.session.disconnect(time.monotonic()))
                until = min(time.monotonic() + min(self.timeout, 2.0), self.deadline.end)
                while time.monotonic() < until:  # MESSAGE frames may still arrive first: skip them
                    events = self._receive(until, block=True)
                    if any(e.__class__ in (Closed, Failed) for e in events):
                        break
        except StompError:
            pass
        finally:
            self.transport.close()


PROBE = "pilotlog-queue-check"  # subscription id and receipts of check_queue

#: Destinations a broker may confirm and then drop: nothing holds what is sent there unless a
#: subscriber or a binding happens to exist at that moment (docs/events.md, "Destinations").
DROPPING = (
    ("/topic/", "a topic with no subscriber"),
    ("/exchange/", "an exchange with no binding"),
    ("/temp-queue/", "a temporary queue"),
    ("/temp-topic/", "a temporary topic"),
    ("/reply-queue/", "a reply queue"),
)
#: Frame headers pilotlogger sets itself: destination_headers cannot replace them.
OWN_HEADERS = frozenset(
    (
        "destination",
        "receipt",
        "content-length",
        "content-type",
        "persistent",
        "transaction",
        "pilot_id",
        "event_id",
        "phase",
        "status",
    )
)


def dropping(destination: str):
    """Why ``destination`` can lose a confirmed message (a phrase), or None when a queue holds it."""
    return next((why for prefix, why in DROPPING if destination.startswith(prefix)), None)


def parse_headers(text) -> tuple:
    """``destination_headers`` (``name=value,name=value``) → ((name, value)…); ValueError says why not."""
    pairs = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.strip().partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(
                "destination_headers %r must be NAME=VALUE[,NAME=VALUE…], e.g. x-queue-type=quorum" % item.strip()[:60]
            )
        if not all(c.isalnum() or c in "-_." for c in name) or name.lower() in OWN_HEADERS:
            raise ValueError(
                "destination_headers: %r is not a header pilotlog can send (letters, digits, '-', '_', "
                "'.'; not one of its own: %s)" % (name[:40], ", ".join(sorted(OWN_HEADERS)))
            )
        if not value.isprintable():
            raise ValueError("destination_headers: the value of %s holds control characters" % name)
        pairs.append((name, value))
    return tuple(pairs)


def advice(error: str) -> str:
    """What to configure for a broker ERROR pilotlog can explain (appended to its one line), or ""."""
    import re

    found = re.search(r"inequivalent arg '([^']+)'.*current is (?:the value '([^']*)'|none)", error)
    if found:
        name, current = found.groups()
        if current is None:
            return "; the queue was declared without %s: remove it from destination_headers" % name
        return (
            "; the queue exists with %s=%s: add %s=%s to destination_headers (and durable=true for a quorum "
            "queue)" % (name, current, name, current)
        )
    return ""


# ---------------------------------------------------------------------------------------------
# Failover


def addresses(host: str, port: int) -> list:
    """Every distinct (family, sockaddr) of ``host``, DNS aliases expanded, in resolver order.

    Raises ``socket.gaierror`` when the name does not resolve.
    """
    found = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(server_hostname(host), port, type=socket.SOCK_STREAM):
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


def connect(hosts, context, vhost="/", login=None, passcode=None, timeout=5.0, deadline=20.0, rng=None, backoff=None):
    """A connected, CONNECTED session to one of ``hosts`` ([(host, port)…]).

    Addresses are tried in shuffled order; between rounds we back off (``backoff``, the
    caller's when it reconnects, so one schedule spans every attempt) while ``deadline``
    lasts: seconds from now, or the :class:`Deadline` of the whole delivery, which the
    connection keeps.  Errors that another try cannot fix (authentication, certificate)
    end the loop at once.
    """
    from .tls import describe_verify_error, is_verify_error

    rng = rng or random.Random()
    deadline = deadline if isinstance(deadline, Deadline) else Deadline(deadline)
    backoff, last = backoff or Backoff(rng), "no address to try"
    names = ",".join("%s:%d" % hp for hp in hosts)
    while True:
        addresses, errors = _resolve(hosts, rng)
        if errors:
            last = errors[-1]
        for host, port, family, sockaddr in addresses:
            remaining = deadline.left()
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
            conn = StompConnection(transport, where, timeout, deadline)
            try:
                conn.handshake(vhost, login, passcode)
                return conn
            except StompError as exc:
                transport.close()
                if not exc.retryable:
                    raise
                last = str(exc)
        remaining = deadline.left()
        if remaining <= 0:
            raise StompError("cannot reach broker %s within %g s (last: %s)" % (names, deadline.seconds, last))
        time.sleep(min(remaining, backoff.next_delay()))


# ---------------------------------------------------------------------------------------------
# The sink


class StompSink:
    """Ship events as SEND frames: one per event, each with its own receipt (by default).

    ``receipt_every`` > 1 (opt-in) asks for a receipt every K frames and on the last of
    each write; a receipt then confirms the unreceipted frames before it (see stompsession).

    Every message is ``persistent`` JSON and carries headers consumers can filter on
    with selectors: ``pilot_id``, ``event_id``, ``phase``, ``status`` (JMS selector
    identifiers, hence underscores).  A connection lost mid-stream is re-established
    (failover again, after the backoff's pause) and only unconfirmed events are re-sent, each
    at most MAX_SENDS times in all.  ``deadline`` bounds the whole of :meth:`deliver`.
    """

    def __init__(self, config, target):
        from .tls import client_context_for

        self.hosts, self.destination = target.hosts, target.destination
        why = dropping(self.destination)
        if why and config.destination_check == "strict":
            raise ValueError(
                "destination %s can drop messages silently (%s), so a RECEIPT would not mean stored: send to "
                "/queue/NAME, or set destination_check=off if a durable subscription or a binding holds them"
                % (self.destination, why)
            )
        extra = parse_headers(config.destination_headers)
        self.frames = SendFrames(
            self.destination,
            (("content-type", "application/json;charset=utf-8"), ("persistent", "true")) + extra,
            ("pilot_id", "event_id", "phase", "status"),
        )
        self.context = client_context_for(config) if target.tls else None
        self.config = config
        self.conn = None

    def encode(self, payload, receipt: bool) -> bytes:
        """The SEND frame of one ``(event, body)``; ``receipt``: ask for its own RECEIPT."""
        event, body = payload
        return self.frames.encode(
            body.encode("utf-8"),
            (event["pilot"], event["id"], event["phase"], event["status"]),
            event["id"] if receipt else None,
        )

    def connect(self, deadline: Deadline, backoff: Backoff) -> StompConnection:
        """A CONNECTED session; on RabbitMQ an ``/amq/queue/`` destination is checked to exist first
        (ActiveMQ keeps whatever is sent to a queue: it creates it)."""
        c = self.config
        while True:
            conn = connect(self.hosts, self.context, c.vhost, c.user, c.passcode, c.timeout, deadline, backoff=backoff)
            if not (self.destination.startswith("/amq/queue/") and conn.server.startswith("RabbitMQ")):
                return conn
            try:
                conn.check_queue(self.destination)
                return conn
            except StompError as exc:
                conn.abort()
                if not exc.retryable or deadline.left() <= 0.5:
                    raise
                time.sleep(0.5)  # a cluster moving the queue: try again, within the deadline

    def deliver(self, events):
        source = ((event["id"], (event, body)) for event, body in events)
        inflight = collections.OrderedDict()  # survives reconnections: what must be re-sent
        deadline, backoff = Deadline(self.config.deadline), Backoff()
        lost = None  # why the last connection was lost
        while True:
            if self.conn is None:
                if lost is not None:
                    worn = worn_out(inflight)
                    if worn:
                        raise SinkError(
                            "%s; gave up: %d event(s) sent %d times without a RECEIPT" % (lost, worn, MAX_SENDS)
                        )
                    time.sleep(min(backoff.next_delay(), max(deadline.left(), 0)))
                    if deadline.left() <= 0:
                        raise SinkError("%s; gave up reconnecting at %s" % (lost, deadline))
                try:
                    self.conn = self.connect(deadline, backoff)
                except StompError as exc:  # failover spent the deadline, or another try cannot help
                    if lost is None:
                        raise SinkError(str(exc)) from None
                    if exc.retryable:
                        raise SinkError("%s; gave up reconnecting at %s" % (lost, deadline)) from None
                    raise SinkError("%s; reconnecting failed: %s" % (lost, exc)) from None
            settled = 0
            try:
                for event_id in self.conn.stream(
                    source, self.encode, self.config.window, self.config.receipt_every, inflight
                ):
                    settled += 1
                    yield event_id, None
                return
            except StompError as exc:
                self.conn.abort()
                self.conn = None
                if not exc.retryable:  # (after a lost session, the line says that too: why it reconnected)
                    said = str(exc) if lost is None else "%s; then %s" % (lost, exc)
                    raise SinkError(said + advice(str(exc))) from None
                lost = str(exc)
                if settled:  # that session confirmed something: the next pause starts short again
                    backoff.reset()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def make(config, target, stdout) -> StompSink:
    return StompSink(config, target)
