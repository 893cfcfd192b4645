"""The STOMP session state machine, without sockets: bytes in, events out, the clock passed in.

Everything a broker can say — CONNECTED, RECEIPTs in any grouping, ERROR, heart-beats,
garbage, a hang-up — is scripted as bytes, split at arbitrary points, and fed to
``receive_data``; hypothesis drives the sequences.  What needs a socket (timeouts, TLS,
hang-ups on a real connection) is in test_stompclient.py and tests/faults.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotlogger.stompcodec import CLIENT_COMMANDS, FrameParser, encode_frame
from pilotlogger.stompsession import (
    CLOSED,
    CONNECTED,
    FAILED,
    MAX_SENDS,
    Closed,
    Connected,
    Failed,
    Message,
    Receipt,
    Settled,
    StompError,
    StompSession,
    heartbeats,
    worn_out,
)


def frames_of(data: bytes) -> list:
    parser = FrameParser(commands=CLIENT_COMMANDS)
    parser.feed(data)
    out = []
    frame = parser.next_frame()
    while frame is not None:
        out.append(frame)
        frame = parser.next_frame()
    return out


def connected(heartbeat="0,0", now=0.0, **kw) -> StompSession:
    session = StompSession("broker test", **kw)
    session.connect("/", "user", "secret", now)
    (event,) = session.receive_data(encode_frame("CONNECTED", [("version", "1.2"), ("heart-beat", heartbeat)]), now)
    assert event.__class__ is Connected and session.state == CONNECTED
    return session


def build(payload, receipt):
    headers = [("destination", "/queue/q"), ("event", "id-%d" % payload)]
    headers += [("receipt", "id-%d" % payload)] if receipt else []
    return encode_frame("SEND", headers, b"x")


def receipt(i) -> bytes:
    return encode_frame("RECEIPT", [("receipt-id", "id-%d" % i)])


def settled(events) -> list:
    return [i for e in events if e.__class__ is Settled for i in e.ids]


def send(session, ids, now=0.0) -> list:
    """Send SEND frames for ``ids``; the frames the session produced, parsed back."""
    return frames_of(session.send([("id-%d" % i, i) for i in ids], build, now))


# -- the handshake ------------------------------------------------------------------------------


def test_connect_frame_carries_version_host_heartbeat_and_login():
    session = StompSession()
    (frame,) = frames_of(session.connect("vh", "alice", "pw", 0.0))
    assert frame.command == "CONNECT"
    assert frame.headers == {
        "accept-version": "1.2",
        "host": "vh",
        "heart-beat": "10000,10000",
        "login": "alice",
        "passcode": "pw",
    }


def test_connected_negotiates_heartbeats_and_names_the_server():
    session = StompSession()
    session.connect("/", None, None, 0.0)
    (event,) = session.receive_data(
        encode_frame("CONNECTED", [("version", "1.2"), ("server", "RabbitMQ/3"), ("heart-beat", "5000,20000")]), 0.0
    )
    assert (event.server, event.send_every, event.expect_every) == ("RabbitMQ/3", 20.0, 10.0)


def test_heartbeat_negotiation_follows_the_spec():
    # client offers 10000,10000; server sx,sy → we send every max(cx, sy), expect every max(cy, sx)
    assert heartbeats("0,0") == (0.0, 0.0)
    assert heartbeats("5000,20000") == (20.0, 10.0)
    assert heartbeats("30000,0") == (0.0, 30.0)
    assert heartbeats("garbage") == (0.0, 0.0)


@pytest.mark.parametrize(
    "reply,needle",
    [
        (
            encode_frame("ERROR", [("message", "Bad CONNECT")], b"Access refused for user 'x'"),
            "refused the connection: Bad CONNECT (Access refused for user 'x')",
        ),
        (encode_frame("CONNECTED", [("version", "1.1")]), "does not speak STOMP 1.2 (version '1.1')"),
        (encode_frame("RECEIPT", [("receipt-id", "x")]), "expected CONNECTED, got RECEIPT"),
        (
            b"HTTP/1.1 400 Bad Request\r\n\r\n\x00",
            "broke the protocol: unexpected frame command 'HTTP/1.1 400 Bad Request'",
        ),
    ],
)
def test_a_refused_handshake_is_final(reply, needle):
    session = StompSession("broker test")
    session.connect("/", None, None, 0.0)
    (event,) = session.receive_data(reply, 0.0)
    assert event.__class__ is Failed and needle in str(event.error) and not event.error.retryable
    assert session.state == FAILED


def test_nothing_is_sent_before_connected_nor_connect_twice():
    session = StompSession()
    with pytest.raises(RuntimeError):
        session.send([("a", 1)], build, 0.0)
    session.connect("/", None, None, 0.0)
    with pytest.raises(RuntimeError):
        session.connect("/", None, None, 0.0)
    with pytest.raises(RuntimeError):
        session.subscribe("/queue/q", 10, 0.0)


# -- the window ---------------------------------------------------------------------------------


def test_window_is_refilled_only_when_half_of_it_is_free():
    session = connected()
    session.open_window(10)
    assert session.room() == 10
    send(session, range(10))
    assert session.room() == 0
    session.receive_data(b"".join(receipt(i) for i in range(4)), 0.0)
    assert session.room() == 0  # 6 > 10 // 2 still unconfirmed
    session.receive_data(receipt(4), 0.0)
    assert session.room() == 5


def test_a_receipt_confirms_only_its_own_frame():
    """STOMP receipts are cumulative for *reception*; we count an event only on its own receipt."""
    session = connected()
    session.open_window(10)
    send(session, range(5))
    assert settled(session.receive_data(receipt(4), 0.0)) == ["id-4"]
    assert list(session.inflight) == ["id-0", "id-1", "id-2", "id-3"]


def test_batch_receipts_confirm_the_frames_before_them_cumulatively():
    """receipt_every=K: a receipt every K frames (and on the last of a write) confirms the frames before it."""
    session = connected()
    session.open_window(10, every=4)
    asked = [f.headers.get("receipt") for f in send(session, range(10))]
    assert asked == [None, None, None, "id-3", None, None, None, "id-7", None, "id-9"]
    # id-7's receipt never comes: id-9's covers the unreceipted 4-6 and 8, and 9 itself.
    events = session.receive_data(receipt(3) + receipt(9), 0.0)
    assert settled(events) == ["id-%d" % i for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
    assert list(session.inflight) == ["id-7"]


def test_an_error_after_receipts_keeps_those_confirmed_and_ends_the_session():
    session = connected()
    session.open_window(10)
    send(session, range(5))
    data = receipt(0) + receipt(1) + encode_frame("ERROR", [("message", "quota exceeded")], b"disk alarm") + receipt(2)
    events = session.receive_data(data, 0.0)
    assert settled(events) == ["id-0", "id-1"]
    assert events[-1].__class__ is Failed and not events[-1].error.retryable
    assert "sent an ERROR: quota exceeded (disk alarm)" in str(events[-1].error)
    assert session.receive_data(receipt(3), 0.0) == []  # a failed session hears nothing more
    assert list(session.inflight) == ["id-2", "id-3", "id-4"]


def test_unconfirmed_frames_go_first_and_unchanged_on_the_next_session():
    first = connected()
    first.open_window(10)
    sent = first.send([("id-7", 7), ("id-8", 8)], build, 0.0)
    first.receive_data(b"", 0.0)
    assert first.state == FAILED
    second = connected()
    second.open_window(10, inflight=first.inflight)
    assert second.resend(1.0) == sent
    assert settled(second.receive_data(receipt(7) + receipt(8), 1.0)) == ["id-7", "id-8"]


def test_a_hang_up_is_retryable_and_garbage_is_not():
    session = connected()
    (event,) = session.receive_data(b"", 0.0)
    assert event.error.retryable and "closed the connection" in str(event.error)
    session = connected()
    (event,) = session.receive_data(b"NOT A FRAME\n\n\x00", 0.0)
    assert not event.error.retryable and "broke the protocol" in str(event.error)


def test_messages_and_the_disconnect_receipt():
    session = connected()
    message = encode_frame(
        "MESSAGE",
        [("destination", "/queue/q"), ("message-id", "m1"), ("ack", "a1"), ("subscription", "pilotlog")],
        b"{}",
    )
    (event,) = session.receive_data(message, 0.0)
    assert event.__class__ is Message and event.frame.body == b"{}"
    (ack,) = frames_of(session.ack(event.frame, 0.0))
    assert ack.command == "ACK" and ack.headers["id"] == "a1"
    (bye,) = frames_of(session.disconnect(0.0))
    events = session.receive_data(message + encode_frame("RECEIPT", [("receipt-id", bye.headers["receipt"])]), 0.0)
    assert [e.__class__ for e in events] == [Closed] and session.state == CLOSED


def test_a_subscription_asked_about_is_answered_by_its_receipt():
    """What the /amq/queue/ existence check needs (issue 19): SUBSCRIBE and UNSUBSCRIBE with receipts."""
    session = connected()
    (sub, unsub) = frames_of(
        session.subscribe("/amq/queue/q", 1, 0.0, sub_id="probe", receipt="p")
        + session.unsubscribe("probe", "p-done", 0.0)
    )
    assert (
        sub.command,
        sub.headers["destination"],
        sub.headers["id"],
        sub.headers["receipt"],
        sub.headers["prefetch-count"],
    ) == ("SUBSCRIBE", "/amq/queue/q", "probe", "p", "1")
    assert (unsub.command, unsub.headers["id"], unsub.headers["receipt"]) == ("UNSUBSCRIBE", "probe", "p-done")
    message = encode_frame("MESSAGE", [("subscription", "probe"), ("message-id", "m"), ("ack", "a7")], b"theirs")
    events = session.receive_data(
        encode_frame("RECEIPT", [("receipt-id", "p")]) + message + encode_frame("RECEIPT", [("receipt-id", "p-done")]),
        0.0,
    )
    assert [e.__class__ for e in events] == [Receipt, Message, Receipt]
    assert [events[0].receipt_id, events[2].receipt_id] == ["p", "p-done"]
    assert session.state == CONNECTED


def test_a_subscription_to_a_missing_queue_ends_the_session_with_the_brokers_words():
    session = connected()
    session.subscribe("/amq/queue/nope", 1, 0.0, sub_id="probe", receipt="p")
    error = encode_frame("ERROR", [("message", "not_found")], b"NOT_FOUND - no queue 'nope' in vhost '/'")
    (event,) = session.receive_data(error + encode_frame("RECEIPT", [("receipt-id", "p")]), 0.0)
    assert event.__class__ is Failed and "NOT_FOUND - no queue 'nope'" in str(event.error)
    assert not event.error.retryable and session.state == FAILED


def late(sub_id: str) -> bytes:
    """What RabbitMQ 3.10 sends when a delivery reaches a subscription that was already cancelled."""
    return encode_frame(
        "ERROR",
        [("message", "Subscription not found"), ("content-type", "text/plain")],
        b"There is no current subscription with tag 'T_%s'." % sub_id.encode(),
    )


def test_a_late_delivery_to_an_ended_subscription_does_not_end_the_session():
    """Seen on the cluster under a burst: the ERROR arrives among the SENDs' receipts; they still settle."""
    session = connected()
    session.subscribe("/amq/queue/q", 1, 0.0, sub_id="probe", receipt="p")
    session.unsubscribe("probe", "p-done", 0.0)
    session.receive_data(
        encode_frame("RECEIPT", [("receipt-id", "p")]) + encode_frame("RECEIPT", [("receipt-id", "p-done")]), 0.0
    )
    send(session, [1, 2])
    events = session.receive_data(receipt(1) + late("probe") + receipt(2), 0.0)
    assert settled(events) == ["id-1", "id-2"] and not [e for e in events if e.__class__ is Failed]
    assert session.state == CONNECTED


@pytest.mark.parametrize(
    "error",
    [
        late("probe"),  # a subscription still open: not a late delivery
        late("other"),  # one we never had
        encode_frame("ERROR", [("message", "Subscription not found")], b"Message with id 'a7' has no subscription"),
    ],
    ids=["open", "unknown", "ack"],
)
def test_other_subscription_errors_still_end_the_session(error):
    session = connected()
    session.subscribe("/amq/queue/q", 1, 0.0, sub_id="probe", receipt="p")
    (event,) = session.receive_data(error, 0.0)
    assert event.__class__ is Failed and "Subscription not found" in str(event.error) and session.state == FAILED


# -- the clock ----------------------------------------------------------------------------------


def test_heartbeats_are_due_from_the_clock_and_a_silent_broker_is_given_up():
    session = connected(heartbeat="1000,1000", now=100.0, heartbeat_ms=1000)  # both ways every second
    assert (session.send_every, session.expect_every) == (1.0, 1.0)
    assert session.timers(100.5, 200.0) == (b"", pytest.approx(0.5))  # the next beat is due in 0.5 s
    assert session.timers(101.0, 200.0) == (b"\n", 0.0)
    assert session.timers(101.5, 101.7) == (b"", pytest.approx(0.2))  # the caller's own limit comes first
    session.timers(102.0, 200.0)  # silent 2 s: not yet more than twice the interval
    session.receive_data(b"\n", 102.0)  # the broker's own heart-beat: no event, but it is alive
    session.timers(104.0, 200.0)
    with pytest.raises(StompError, match="silent for 3 s"):
        session.timers(105.0, 200.0)
    assert session.state == FAILED


# -- hypothesis: any grouping of the broker's bytes, any mix of receipts, beats and an ERROR -----


def feed_in_chunks(session, data: bytes, cuts, now=0.0) -> list:
    events, start = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if cut > start:
            events += session.receive_data(data[start:cut], now)
            start = cut
    return events


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 40),
    every=st.integers(1, 6),
    window=st.integers(1, 50),
    data=st.data(),
)
def test_receipts_settle_each_sent_event_once_in_order_whatever_the_chunking(n, every, window, data):
    session = connected()
    session.open_window(window, every)
    sent, asked = [], []
    for start in range(0, n, window):  # writes of at most a window each, as the I/O loop makes them
        for frame in send(session, range(start, min(n, start + window))):
            sent.append(frame.headers["event"])
            if "receipt" in frame.headers:
                asked.append(frame.headers["receipt"])
    # The broker receipts an in-order subset of what asked for one, with heart-beat EOLs between,
    # and maybe ends with an ERROR.
    chosen = data.draw(
        st.lists(st.sampled_from(asked), unique=True).map(lambda chosen: sorted(chosen, key=asked.index))
    )
    beats = data.draw(
        st.lists(st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"]), min_size=len(chosen), max_size=len(chosen))
    )
    error = data.draw(st.booleans())
    stream = b"".join(beat + encode_frame("RECEIPT", [("receipt-id", r)]) for beat, r in zip(beats, chosen))
    if error:
        stream += encode_frame("ERROR", [("message", "bye")])
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    events = feed_in_chunks(session, stream, cuts)

    # The model: a receipt settles itself and every unreceipted frame before it still in flight.
    has_receipt = set(asked)
    expected, pending = [], list(sent)
    for r in chosen:
        upto = pending.index(r)
        done = [e for e in pending[: upto + 1] if e == r or e not in has_receipt]
        expected += done
        pending = [e for e in pending if e not in done]
    got = settled(events)
    assert got == expected
    assert len(set(got)) == len(got)
    assert list(session.inflight) == pending
    failures = [e for e in events if e.__class__ is Failed]
    assert failures == ([events[-1]] if error else [])
    assert session.state == (FAILED if error else CONNECTED)


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.sampled_from(["receipt", "beat", "message"]), max_size=20), data=st.data())
def test_the_same_bytes_give_the_same_events_however_they_are_split(frames, data):
    session_a, session_b = connected(), connected()
    for s in (session_a, session_b):
        s.open_window(100)
        send(s, range(len(frames)))
    parts = []
    for i, kind in enumerate(frames):
        if kind == "receipt":
            parts.append(receipt(i))
        elif kind == "beat":
            parts.append(b"\r\n")
        else:
            parts.append(encode_frame("MESSAGE", [("message-id", str(i)), ("destination", "/q")], b"m\x00%d" % i))
    stream = b"".join(parts)
    whole = session_a.receive_data(stream, 0.0) if stream else []  # b"" would mean: hung up
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream) // 2 + 1))
    split = feed_in_chunks(session_b, stream, cuts)

    def describe(events):
        return [
            (e.__class__.__name__, getattr(e, "ids", None), getattr(getattr(e, "frame", None), "body", None))
            for e in events
        ]

    assert describe(whole) == describe(split)
    assert list(session_a.inflight) == list(session_b.inflight)


# -- what hostile brokers taught (issue 24) -------------------------------------------------------


@pytest.mark.parametrize(
    "after,needle",
    [
        (
            encode_frame("ERROR", [("message", "vhost closing")], b"maintenance"),
            "sent an ERROR: vhost closing (maintenance)",
        ),
        (b"GARBAGE\n\n\x00", "broke the protocol: unexpected frame command 'GARBAGE'"),
    ],
    ids=["error", "garbage"],
)
def test_an_error_in_the_same_bytes_as_connected_follows_it(after, needle):
    """Connected, then Failed with the broker's words: the client must look at every event of the
    read, not the first (issue 24, 8; the handshake's side is in test_stompclient.py)."""
    session = StompSession("broker test")
    session.connect("/", None, None, 0.0)
    events = session.receive_data(encode_frame("CONNECTED", [("version", "1.2")]) + after, 0.0)
    assert [e.__class__ for e in events] == [Connected, Failed] and session.state == FAILED
    assert needle in str(events[1].error) and not events[1].error.retryable


@pytest.mark.parametrize(
    "offered",
    ["9" * 400 + ",0", "0," + "9" * 400, "9" * 400 + "," + "9" * 400, "a,b,c", "1,2,3", "-1,-1", "1e3,5", "٣,٣", ","],
)
def test_a_malformed_heartbeat_header_means_no_heartbeats(offered):
    """400 digits made an OverflowError inside the handshake (issue 24, 9): malformed is none, as ``a,b,c``."""
    assert heartbeats(offered) == (0.0, 0.0)
    session = StompSession("broker test")
    session.connect("/", None, None, 0.0)
    (event,) = session.receive_data(encode_frame("CONNECTED", [("version", "1.2"), ("heart-beat", offered)]), 0.0)
    assert event.__class__ is Connected and (event.send_every, event.expect_every) == (0.0, 0.0)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30) | st.from_regex(r"\A[0-9 ]{0,30},[0-9 ]{0,30}\Z"))
def test_any_heartbeat_header_gives_finite_intervals(offered):
    send, expect = heartbeats(offered)
    assert 0.0 <= send < 1e10 and 0.0 <= expect < 1e10


def test_a_receipt_nobody_asked_for_settles_nothing():
    """With receipt_every > 1 a frame without its own receipt is confirmed only by a later receipt the
    client asked for, never by a RECEIPT naming it (issue 24, 11); unknown and repeated ids settle nothing."""
    session = connected()
    session.open_window(10, every=4)
    asked = [f.headers.get("receipt") for f in send(session, range(6))]
    assert asked == [None, None, None, "id-3", None, "id-5"]
    for never_asked in (receipt(1), receipt(4), receipt(9), encode_frame("RECEIPT", [("receipt-id", "")])):
        events = session.receive_data(never_asked, 0.0)
        assert settled(events) == [] and [e.__class__ for e in events] == [Receipt]
    assert list(session.inflight) == ["id-%d" % i for i in range(6)]
    assert settled(session.receive_data(receipt(3) + receipt(3), 0.0)) == ["id-0", "id-1", "id-2", "id-3"]
    assert settled(session.receive_data(receipt(5), 0.0)) == ["id-4", "id-5"]


def test_each_frame_counts_its_sends_and_wears_out_after_max_sends():
    """A broker that drops every session before confirming is not fed the same window forever (issue 24, 10)."""
    session = connected()
    session.open_window(10)
    send(session, range(3))
    inflight = session.inflight
    for sends in range(1, MAX_SENDS + 1):
        assert worn_out(inflight) == (3 if sends == MAX_SENDS else 0)
        if sends == MAX_SENDS:
            break
        session.receive_data(b"", 0.0)  # the broker hangs up
        session = connected()
        session.open_window(10, inflight=inflight)
        assert len(frames_of(session.resend(0.0))) == 3
    session.receive_data(receipt(0), 0.0)
    assert worn_out(inflight) == 2


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 30), every=st.sampled_from([1, 1, 2, 3, 5]), data=st.data())
def test_only_receipts_asked_for_settle_whatever_the_broker_sends(n, every, data):
    """Receipts out of order, repeated, for frames that asked for none, for ids never sent: an event
    is settled once, only by its own receipt or (receipt_every > 1) a later one asked for."""
    session = connected()
    session.open_window(n, every)
    frames = send(session, range(n))
    sent = [f.headers["event"] for f in frames]
    asked = [f.headers["receipt"] for f in frames if "receipt" in f.headers]
    ids = st.sampled_from(sent + ["id-%d" % (n + 1), "nobody", ""])
    chosen = data.draw(st.lists(ids, max_size=3 * n))
    stream = b"".join(encode_frame("RECEIPT", [("receipt-id", r)]) for r in chosen)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    got = settled(feed_in_chunks(session, stream, cuts)) if stream else []
    expected, pending = [], list(sent)
    for r in chosen:  # the model: only an asked-for receipt of a frame still pending settles anything
        if r in asked and r in pending:
            done = [e for e in pending[: pending.index(r) + 1] if e == r or e not in asked]
            expected += done
            pending = [e for e in pending if e not in done]
    assert got == expected and len(set(got)) == len(got)
    if every == 1:
        assert set(got) <= set(chosen)  # the promise kept by default: each event by its own RECEIPT
    assert list(session.inflight) == pending and session.state == CONNECTED
