"""The sans-IO STOMP codec: rules of STOMP 1.2, arbitrary chunking, hostile input."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotlogger.stompcodec import (
    CLIENT_COMMANDS,
    FrameParser,
    ProtocolError,
    encode_frame,
    escape,
    unescape,
)

ALL = CLIENT_COMMANDS | {"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"}


def parse_all(data: bytes, chunks=None, **limits):
    parser = FrameParser(commands=ALL, **limits)
    frames = []
    pieces = [data] if chunks is None else chunks
    for piece in pieces:
        parser.feed(piece)
        while True:
            frame = parser.next_frame()
            if frame is None:
                break
            frames.append(frame)
    return frames, parser


def test_send_frame_bytes_exactly():
    data = encode_frame("SEND", [("destination", "/queue/a"), ("pilot_id", "https://ce:9000/x")], b'{"a":1}')
    assert data == b'SEND\ndestination:/queue/a\npilot_id:https\\c//ce\\c9000/x\ncontent-length:7\n\n{"a":1}\x00'


def test_connect_headers_are_not_escaped_but_refused_when_they_would_need_it():
    assert encode_frame("CONNECT", [("host", "/"), ("passcode", "a:b")]) == b"CONNECT\nhost:/\npasscode:a:b\n\n\x00"
    with pytest.raises(ValueError):
        encode_frame("CONNECT", [("login", "a\nb")])


def test_connected_values_are_taken_raw():
    (frame,), _ = parse_all(b"CONNECTED\nversion:1.2\nserver:RabbitMQ/3.10\\c\n\n\x00")
    assert frame.headers["server"] == "RabbitMQ/3.10\\c"


def test_escapes_decode_and_undefined_escapes_are_fatal():
    (frame,), _ = parse_all(b"MESSAGE\nk\\cey:a\\\\b\\nc\\rd\\ce\n\n\x00")
    assert frame.headers == {"k:ey": "a\\b\nc\rd:e"}
    with pytest.raises(ProtocolError, match="undefined escape"):
        parse_all(b"MESSAGE\nkey:a\\tb\n\n\x00")
    with pytest.raises(ProtocolError, match="undefined escape"):
        parse_all(b"MESSAGE\nkey:trailing\\\n\n\x00")


def test_repeated_headers_first_wins():
    (frame,), _ = parse_all(b"MESSAGE\nfoo:first\nfoo:second\n\n\x00")
    assert frame.headers["foo"] == "first"
    assert frame.header_list == [("foo", "first"), ("foo", "second")]


def test_content_length_allows_nul_in_body_and_first_content_length_wins():
    (frame,), _ = parse_all(b"MESSAGE\ncontent-length:3\ncontent-length:1\n\na\x00b\x00")
    assert frame.body == b"a\x00b"


def test_crlf_line_ends_and_heartbeats_between_frames():
    data = b"\n\r\n\nRECEIPT\r\nreceipt-id:1\r\n\r\n\x00\n\n\r\nRECEIPT\nreceipt-id:2\n\n\x00\r\n"
    frames, parser = parse_all(data)
    assert [f.headers["receipt-id"] for f in frames] == ["1", "2"]
    assert parser.buffered == 0


def test_one_byte_at_a_time_and_many_frames_in_one_read():
    one = encode_frame("RECEIPT", [("receipt-id", "x")])
    data = one * 50
    frames, _ = parse_all(data, chunks=[data[i : i + 1] for i in range(len(data))])
    assert len(frames) == 50
    frames, _ = parse_all(data)
    assert len(frames) == 50


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"HELLO\n\n\x00", "unexpected frame command"),
        (b"MESSAGE\nno-colon\n\n\x00", "malformed header"),
        (b"MESSAGE\ncontent-length:abc\n\n\x00", "not a number"),
        (b"MESSAGE\ncontent-length:2\n\nabc\x00", "not followed by NUL"),
        (b"MESSAGE\n\xff\xfe:1\n\n\x00", "not UTF-8"),
        (b"\rX", "CR not followed by LF"),
    ],
)
def test_malformed_input_is_a_clear_protocol_error(data, needle):
    with pytest.raises(ProtocolError, match=needle):
        parse_all(data)


def test_size_limits_hold_without_buffering_more():
    with pytest.raises(ProtocolError, match="headers exceed 100"):
        parse_all(b"MESSAGE\n" + b"a" * 200, max_header_bytes=100)
    with pytest.raises(ProtocolError, match="body exceeds 50"):
        parse_all(b"MESSAGE\n\n" + b"b" * 100, max_body_bytes=50)
    with pytest.raises(ProtocolError, match="body exceeds 50"):  # whole, NUL and all, in one read
        parse_all(b"MESSAGE\n\n" + b"b" * 51 + b"\x00", max_body_bytes=50)
    assert parse_all(b"MESSAGE\n\n" + b"b" * 50 + b"\x00", max_body_bytes=50)[0][0].body == b"b" * 50
    with pytest.raises(ProtocolError, match="of 1000000 bytes exceeds 50"):
        parse_all(b"MESSAGE\ncontent-length:1000000\n\n", max_body_bytes=50)
    with pytest.raises(ProtocolError, match="more than 3 headers"):
        parse_all(b"MESSAGE\na:1\nb:2\nc:3\nd:4\n\n\x00", max_headers=3)


def test_dribbled_headers_are_scanned_in_linear_time():
    """A peer sending headers one byte per read must not make us rescan the buffer (O(n^2))."""
    import time

    parser = FrameParser(max_header_bytes=1 << 22)
    line = b"h:" + b"v" * 60 + b"\n"
    parser.feed(b"MESSAGE\n")
    started = time.perf_counter()
    for _ in range(40000):  # 2.5 MB of headers, one line per feed
        parser.feed(line)
        assert parser.next_frame() is None
    # A quadratic scan would touch ~50 GB here; linear takes well under a second.
    assert time.perf_counter() - started < 20


# -- properties ------------------------------------------------------------------------------

header_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
names = header_text.filter(lambda n: n and n != "content-length")


@settings(max_examples=300, deadline=None)
@given(
    command=st.sampled_from(sorted(ALL - {"CONNECT", "CONNECTED"})),
    headers=st.lists(st.tuples(names, header_text), max_size=8),
    body=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
    heartbeats=st.sampled_from([b"", b"\n", b"\r\n", b"\n\r\n\n"]),
)
def test_round_trip_with_arbitrary_chunking(command, headers, body, cuts, heartbeats):
    frame_bytes = encode_frame(command, headers, body)
    data = heartbeats + frame_bytes + heartbeats + frame_bytes
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:])]
    frames, parser = parse_all(data, chunks=chunks)
    assert len(frames) == 2 and parser.buffered == 0
    for frame in frames:
        assert frame.command == command
        assert frame.body == body
        expected = list(headers) + ([("content-length", str(len(body)))] if body else [])
        assert frame.header_list == expected
        first = {}
        for k, v in expected:
            first.setdefault(k, v)
        assert frame.headers == first


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=50))
def test_escape_round_trip(text):
    assert unescape(escape(text)) == text
    assert "\n" not in escape(text) and ":" not in escape(text)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_garbage_never_hangs_or_grows_past_limits(data, step):
    parser = FrameParser(max_header_bytes=256, max_body_bytes=256)
    try:
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
            while parser.next_frame() is not None:
                pass
            assert parser.buffered <= 256 + 256 + 64 + 2
    except ProtocolError as exc:
        assert str(exc)


# -- issue 13, case 13: every malformed input is a ProtocolError, whatever the split ----------


@pytest.mark.parametrize("value", ["²", "١٢", "1" * 4300, "", "-1", " 1", "1e3"])
def test_content_length_that_is_not_ascii_digits_is_a_protocol_error(value):
    with pytest.raises(ProtocolError, match="content-length"):
        parse_all(("MESSAGE\ncontent-length:%s\n\nab\x00" % value).encode())


def test_header_limit_does_not_depend_on_how_the_bytes_were_split():
    head = b"MESSAGE\nh:" + b"v" * 10  # 20 bytes
    data = head + b"\n\nbody\x00"
    for cut in range(len(data) + 1):
        frames, _ = parse_all(data, chunks=[data[:cut], data[cut:]], max_header_bytes=20)
        assert [f.body for f in frames] == [b"body"], cut
    with pytest.raises(ProtocolError, match="exceed 19"):
        parse_all(data, chunks=[data[:21], data[21:]], max_header_bytes=19)


def test_encoder_computes_content_length_and_refuses_what_no_parser_accepts():
    assert encode_frame("SEND", [("content-length", "3")], b"abc") == b"SEND\ncontent-length:3\n\nabc\x00"
    with pytest.raises(ValueError, match="disagrees"):
        encode_frame("SEND", [("content-length", "99")], b"abc")
    with pytest.raises(ValueError, match="empty"):
        encode_frame("SEND", [("", "v")], b"")


lengths = st.one_of(
    st.sampled_from(["²", "١٢", "1" * 4400, "0" * 30, "-0", "9" * 13, "", " 7"]),
    st.integers(min_value=0, max_value=120).map(str),
)


@settings(max_examples=300, deadline=None)
@given(
    command=st.sampled_from(["MESSAGE", "RECEIPT", "ERROR", "CONNECTED", "NOPE"]),
    length=st.none() | lengths,
    lines=st.lists(
        st.tuples(
            st.sampled_from(["receipt-id", "", "h\\c", "x\\q", "é"]), st.text(max_size=12), st.sampled_from([":", ""])
        ),
        max_size=3,
    ),
    padding=st.integers(min_value=150, max_value=220),
    body=st.binary(max_size=120),
    eol=st.sampled_from([b"\n", b"\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
    near=st.lists(st.integers(min_value=-2, max_value=3), max_size=2),
    slack=st.integers(min_value=-2, max_value=2),
)
def test_hostile_frames_parse_or_fail_cleanly_and_the_same_way_for_every_split(
    command, length, lines, padding, body, eol, cuts, near, slack
):
    """Frames near the header limit, with hostile content-lengths and header lines: the codec
    yields frames or raises ProtocolError (nothing else), and the outcome never depends on
    how the bytes were split into reads."""
    head = [command, "p:" + "x" * (padding - len(command) - 3)] + [n + sep + v for n, v, sep in lines]
    if length is not None:
        head.insert(1, "content-length:" + length)
    head = "\n".join(head).encode("utf-8", "surrogatepass").replace(b"\n", eol)
    data = head + eol + eol + body + b"\x00"
    # Cuts anywhere, and around the end of the head, where a limit is easiest to get wrong.
    points = sorted({c % (len(data) + 1) for c in cuts} | {len(head) + k for k in near} | {0, len(data)})

    def outcome(chunks):
        try:
            frames, parser = parse_all(data, chunks=chunks, max_header_bytes=len(head) + slack, max_body_bytes=100)
            return [(f.command, f.header_list, f.body) for f in frames], parser.buffered
        except ProtocolError as exc:
            return "ProtocolError", str(exc).split(" ")[0]

    whole = outcome([data])
    assert outcome([data[a:b] for a, b in zip(points, points[1:])]) == whole


@settings(max_examples=300, deadline=None)
@given(
    destination=st.text(min_size=1, max_size=20),
    values=st.lists(st.text(max_size=20), min_size=4, max_size=4),
    receipt=st.none() | st.text(max_size=40),
    body=st.binary(max_size=50),
)
def test_send_frames_are_exactly_what_encode_frame_builds(destination, values, receipt, body):
    """The fast SEND encoder (replay's, one frame per event) never departs from the codec's rules."""
    from pilotlogger.stompcodec import SendFrames

    names = ("pilot_id", "event_id", "pha:se", "sta\\tus")
    frames = SendFrames(destination, (("content-type", "application/json"), ("persistent", "true")), names)
    headers = [("destination", destination), ("content-type", "application/json"), ("persistent", "true")]
    headers += ([("receipt", receipt)] if receipt is not None else []) + list(zip(names, values))
    headers.append(("content-length", str(len(body))))
    assert frames.encode(body, tuple(values), receipt) == encode_frame("SEND", headers, body)
