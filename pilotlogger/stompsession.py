"""A STOMP 1.2 client session as a state machine: bytes in, frames and events out.  Sans-IO.

In the style of h11's ``Connection``: the session never touches a socket or a clock.
Its methods return the bytes to write; :meth:`StompSession.receive_data` takes the
bytes that arrived and returns what they meant, as events, in order:

    Connected   the broker accepted us (its name, the negotiated heart-beats)
    Settled     event ids confirmed by a RECEIPT, oldest first
    Message     a MESSAGE frame (consumers)
    Receipt     a RECEIPT for a frame other than a SEND in the window (a SUBSCRIBE we asked about)
    Closed      the broker confirmed our DISCONNECT
    Failed      the session is over: an ERROR frame, a protocol violation, the peer hung up;
                ``error`` is the StompError to raise (after handling the events before it)

States: IDLE → (connect) → CONNECTING → (CONNECTED) → CONNECTED → (disconnect) →
DISCONNECTING → (RECEIPT) → CLOSED; any → FAILED.  Sending in the wrong state is a
bug of ours and raises RuntimeError.

The window: SEND frames awaiting their receipt, in sending order (``inflight``: event id
→ (frame, has_receipt, sends)).  It is refilled once half of it is free, so the broker always
has frames to work on while receipts come back.  A frame with its own receipt is
confirmed only by *that* RECEIPT; with ``every`` = K > 1 (opt-in) a receipt is asked
every K frames and on the last frame of each write, and the frames between are confirmed
by the next RECEIPT, which STOMP 1.2 makes a cumulative acknowledgment.  Only a RECEIPT
for a receipt we asked for settles anything: one naming a frame that asked for none, an
unknown id or a repeat is no confirmation (a broker's mistake must not remove events).
``inflight`` may outlive the session: after a lost connection it holds what the next
session must send again first (:meth:`StompSession.resend`), and counts how often each
frame went (``sends``): past MAX_SENDS the caller stops (:func:`worn_out`).

Time comes in as ``now`` (monotonic seconds): heart-beats due, a silent peer, receipts
overdue are all decided from it, so tests can drive hours in microseconds.
"""

import collections

from .stompcodec import FrameParser, ProtocolError, encode_frame

HEARTBEAT_MS = 10000  # what we offer and ask for: an EOL at least every 10 s when idle

IDLE, CONNECTING, CONNECTED, DISCONNECTING, CLOSED, FAILED = (
    "IDLE",
    "CONNECTING",
    "CONNECTED",
    "DISCONNECTING",
    "CLOSED",
    "FAILED",
)
BYE = "bye"  # the receipt asked for on DISCONNECT
#: The most times one SEND goes out (first send and re-sends after lost connections).  A broker
#: that drops every session before confirming must not be fed the same window forever, at the
#: rate connections can be made (issue 24: 8,579 connections in one replay).
MAX_SENDS = 5
#: A heart-beat interval is at most this many ASCII digits of milliseconds (11 days); a longer
#: one, like any other malformed header, means no heart-beats.
HEARTBEAT_DIGITS = 9
_ASCII_DIGITS = frozenset("0123456789")


class StompError(Exception):
    """Delivery over STOMP failed.

    ``retryable`` says whether another attempt (another address, a reconnection) can
    help: a refused or lost connection can, a wrong password or an untrusted
    certificate cannot.
    """

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class Connected:
    __slots__ = ("server", "send_every", "expect_every")

    def __init__(self, server, send_every, expect_every):
        self.server, self.send_every, self.expect_every = server, send_every, expect_every


class Settled:
    __slots__ = ("ids",)

    def __init__(self, ids):
        self.ids = ids


class Message:
    __slots__ = ("frame",)

    def __init__(self, frame):
        self.frame = frame


class Receipt:
    __slots__ = ("receipt_id",)

    def __init__(self, receipt_id):
        self.receipt_id = receipt_id


class Closed:
    __slots__ = ()


class Failed:
    __slots__ = ("error",)

    def __init__(self, error: StompError):
        self.error = error


def heartbeats(offered: str, ours_ms: int = HEARTBEAT_MS):
    """(send every, expect every) in seconds from the server's heart-beat header; 0 = none.

    The header is two numbers of ASCII digits; anything else (``a,b,c``, ``-1,5``, 400 digits
    that no float holds) means no heart-beats: a broker's header never makes us fail.
    """
    parts = [part.strip() for part in offered.split(",")]
    if len(parts) != 2 or not all(0 < len(p) <= HEARTBEAT_DIGITS and _ASCII_DIGITS.issuperset(p) for p in parts):
        return 0.0, 0.0
    sx, sy = int(parts[0]), int(parts[1])
    send = max(ours_ms, sy) / 1000.0 if sy else 0.0
    expect = max(ours_ms, sx) / 1000.0 if sx else 0.0
    return send, expect


def error_text(frame) -> str:
    """One line from an ERROR frame: its message header, plus the body's first line."""
    message = frame.headers.get("message", "").strip()
    detail = frame.body.decode("utf-8", "replace").strip().split("\n")[0][:200]
    if detail and detail not in message:
        message = "%s (%s)" % (message, detail) if message else detail
    return message or "ERROR frame without a message"


def late_delivery(frame, unsubscribed) -> bool:
    """Is this ERROR RabbitMQ's word that a message reached a subscription we already ended?

    A quorum queue delivers asynchronously: a message handed to a consumer just before its
    UNSUBSCRIBE (whose RECEIPT we have) can reach RabbitMQ's STOMP adapter after it; the adapter
    then sends ``ERROR message:Subscription not found`` ("There is no current subscription with
    tag 'T_<id>'") and, unlike after a real error, keeps the session.  Nothing of ours is
    concerned, and the message stays unacknowledged, so the broker gives it back.  Found by the
    200-pilot burst (docs/scale.md): it failed pilots' last drain.
    """
    if frame.headers.get("message") != "Subscription not found":
        return False
    body = frame.body.decode("utf-8", "replace")
    return any("'T_%s'" % sub_id in body for sub_id in unsubscribed)


def settle(inflight, receipt: str) -> list:
    """Remove and return the ids a RECEIPT for ``receipt`` confirms, oldest first.

    A RECEIPT confirms ``receipt`` itself and every frame before it that was sent without
    a receipt (cumulative, STOMP 1.2); frames before it that asked for their own receipt
    wait for it.  Receipts normally arrive in order, so this pops from the front in
    O(confirmed); only an out-of-order receipt costs a scan.
    """
    done = []
    while inflight:
        event_id, (_, has_receipt, _) = next(iter(inflight.items()))
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


def worn_out(inflight) -> int:
    """How many frames in ``inflight`` went out MAX_SENDS times already: none of them may go again."""
    return sum(1 for _, _, sends in inflight.values() if sends >= MAX_SENDS)


NOT_ASKED = (None, False, 0)  # what ``inflight`` holds for an id it does not hold


class StompSession:
    """One client session's state; ``where`` names the peer in messages."""

    def __init__(self, where: str = "broker", heartbeat_ms: "int | None" = None):
        self.where = where
        self.state = IDLE
        self.parser = FrameParser()
        self.heartbeat_ms = HEARTBEAT_MS if heartbeat_ms is None else heartbeat_ms
        self.server = ""
        self.send_every = self.expect_every = 0.0
        self.last_sent = self.last_received = self.progress = 0.0
        self.inflight: collections.OrderedDict = collections.OrderedDict()
        self.window, self.every, self._counted = 1, 1, 0
        self.unsubscribed: set = set()  # ids of the subscriptions we ended (see late_delivery)

    def _need(self, *states) -> None:
        if self.state not in states:
            raise RuntimeError("STOMP session is %s, not %s" % (self.state, " or ".join(states)))

    def _sent(self, data: bytes, now: float) -> bytes:
        self.last_sent = now
        return data

    # -- what we send ------------------------------------------------------------------------

    def connect(self, vhost: str, login, passcode, now: float) -> bytes:
        self._need(IDLE)
        headers = [
            ("accept-version", "1.2"),
            ("host", vhost),
            ("heart-beat", "%d,%d" % (self.heartbeat_ms, self.heartbeat_ms)),
        ]
        if login:
            headers.append(("login", login))
        if passcode:
            headers.append(("passcode", passcode))
        self.state, self.last_received = CONNECTING, now
        return self._sent(encode_frame("CONNECT", headers), now)

    def open_window(self, window: int, every: int = 1, inflight=None) -> None:
        """Size the window of unconfirmed SENDs; ``inflight`` carries one over from a lost session."""
        self.window, self.every = max(1, window), max(1, every)
        if inflight is not None:
            self.inflight = inflight

    def room(self) -> int:
        """How many SEND frames may go now: none until at most half the window is unconfirmed."""
        n = len(self.inflight)
        return self.window - n if n <= self.window // 2 else 0

    def resend(self, now: float) -> bytes:
        """The frames a previous session left unconfirmed, to go first (same receipts), each counted."""
        self._need(CONNECTED)
        inflight = self.inflight
        for event_id, (frame, has_receipt, sends) in inflight.items():
            inflight[event_id] = (frame, has_receipt, sends + 1)
        if inflight:
            self.progress = now
        return self._sent(b"".join(frame for frame, _, _ in inflight.values()), now)

    def send(self, chunk, build, now: float) -> bytes:
        """SEND frames for ``chunk`` [(event_id, payload)…], one write; ``build(payload, receipt)``
        makes a frame and ``receipt`` says whether it asks for its own RECEIPT."""
        self._need(CONNECTED)
        frames, inflight, every, last = [], self.inflight, self.every, len(chunk)
        for i, (event_id, payload) in enumerate(chunk, 1):
            self._counted += 1
            receipt = every == 1 or self._counted % every == 0 or i == last
            frame = build(payload, receipt)
            inflight[event_id] = (frame, receipt, 1)
            frames.append(frame)
        self.progress = now
        return self._sent(b"".join(frames), now)

    def subscribe(self, destination: str, prefetch: int, now: float, sub_id: str = "pilotlog", receipt=None) -> bytes:
        """SUBSCRIBE with ``client-individual`` acks: a message is ours to lose only once ACKed.

        ``prefetch`` bounds what the broker sends before our ACKs (RabbitMQ and ActiveMQ
        each read their own header; others ignore both).  With ``receipt`` the broker's
        RECEIPT (a :class:`Receipt` event) says the subscription exists.
        """
        self._need(CONNECTED)
        headers = [
            ("destination", destination),
            ("id", sub_id),
            ("ack", "client-individual"),
            ("prefetch-count", str(prefetch)),
            ("activemq.prefetchSize", str(prefetch)),
        ]
        return self._sent(encode_frame("SUBSCRIBE", headers + ([("receipt", receipt)] if receipt else [])), now)

    def unsubscribe(self, sub_id: str, receipt: str, now: float) -> bytes:
        """UNSUBSCRIBE; its RECEIPT (a :class:`Receipt` event) says no MESSAGE for it follows.

        (RabbitMQ may still have a delivery for it under way: see :func:`late_delivery`.)
        """
        self._need(CONNECTED)
        self.unsubscribed.add(sub_id)
        return self._sent(encode_frame("UNSUBSCRIBE", [("id", sub_id), ("receipt", receipt)]), now)

    def ack(self, frame, now: float) -> bytes:
        """Acknowledge one MESSAGE (STOMP 1.2: by the value of its ``ack`` header)."""
        self._need(CONNECTED)
        return self._sent(
            encode_frame("ACK", [("id", frame.headers.get("ack", frame.headers.get("message-id", "")))]), now
        )

    def disconnect(self, now: float) -> bytes:
        """DISCONNECT asking for a receipt: once it comes, the broker has everything we sent."""
        self._need(CONNECTED)
        self.state = DISCONNECTING
        return self._sent(encode_frame("DISCONNECT", [("receipt", BYE)]), now)

    # -- time ---------------------------------------------------------------------------------

    def timers(self, now: float, until: float):
        """What time asks for before waiting for bytes until ``until``: (a heart-beat EOL to send now,
        or b""; how long to wait).  Raises StompError when the broker has been silent for twice its
        heart-beat interval."""
        if self.expect_every and now - self.last_received > 2 * self.expect_every:
            self.state = FAILED
            raise StompError("%s silent for %.0f s (heart-beats missed)" % (self.where, now - self.last_received))
        if self.send_every:
            due = self.last_sent + self.send_every
            if now >= due:
                return self._sent(b"\n", now), 0.0
            until = min(until, due)
        return b"", until - now

    # -- what arrives -------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list:
        """The events ``data`` completes, in order (``b""``: the peer closed the connection)."""
        if self.state in (FAILED, CLOSED):
            return []
        self.last_received = now
        if not data:
            return [self._fail("%s closed the connection" % self.where)]
        parser, inflight = self.parser, self.inflight
        parser.feed(data)
        events: list = []
        try:
            while parser.buffered:  # (a RECEIPT per event: no parse of an empty buffer, no extra call)
                frame = parser.next_frame()
                if frame is None:
                    break
                receipt = frame.headers.get("receipt-id") if frame.command == "RECEIPT" else None
                if receipt is not None and inflight.get(receipt, NOT_ASKED)[1] and self.state != CONNECTING:
                    self.progress = now
                    events.append(Settled(settle(inflight, receipt)))
                    continue
                event = self._handle(frame, now)
                if event is not None:
                    events.append(event)
                    if event.__class__ is Failed:
                        return events
        except ProtocolError as exc:
            events.append(self._fail("%s broke the protocol: %s" % (self.where, exc), retryable=False))
        return events

    def _fail(self, message: str, retryable: bool = True) -> Failed:
        self.state = FAILED
        return Failed(StompError(message, retryable))

    def _handle(self, frame, now: float):
        command = frame.command
        if self.state == CONNECTING:
            if command == "ERROR":
                return self._fail("%s refused the connection: %s" % (self.where, error_text(frame)), retryable=False)
            if command != "CONNECTED":
                return self._fail("%s: expected CONNECTED, got %s" % (self.where, command), retryable=False)
            version = frame.headers.get("version", "1.0")
            if version != "1.2":
                return self._fail("%s does not speak STOMP 1.2 (version %r)" % (self.where, version), retryable=False)
            self.state, self.server = CONNECTED, frame.headers.get("server", "")
            self.send_every, self.expect_every = heartbeats(frame.headers.get("heart-beat", "0,0"), self.heartbeat_ms)
            return Connected(self.server, self.send_every, self.expect_every)
        if command == "RECEIPT":  # (one for a frame in flight was settled by receive_data)
            if frame.headers.get("receipt-id") == BYE and self.state == DISCONNECTING:
                self.state = CLOSED
                return Closed()
            # A SUBSCRIBE's, or one we did not ask for on a SEND (a repeat, an unknown id): settles nothing.
            return Receipt(frame.headers.get("receipt-id"))
        if command == "ERROR":
            if late_delivery(frame, self.unsubscribed):
                return None
            return self._fail("%s sent an ERROR: %s" % (self.where, error_text(frame)), retryable=False)
        if command == "MESSAGE" and self.state == CONNECTED:
            return Message(frame)
        return None  # a MESSAGE while leaving, a second CONNECTED: nothing to act on
