"""STOMP 1.2 frames <-> bytes.  Sans-IO: no sockets, no clocks, no threads.

Operations
    encode_frame(command, headers, body) -> bytes     build one frame
    SendFrames(destination, fixed, names).encode(...)  SEND frames to one destination, fast
    FrameParser.feed(data)                              append bytes as they arrive
    FrameParser.next_frame() -> Frame | None            the next complete frame, if any

Rules implemented (STOMP 1.2)
    * A frame is ``COMMAND EOL (name:value EOL)* EOL body NUL``, EOL being LF or CR LF.
    * Header names and values are escaped (``\\\\``, ``\\n``, ``\\r``, ``\\c``) in every
      frame except CONNECT and CONNECTED; any other backslash sequence is a fatal error.
    * A repeated header keeps its first value.
    * With ``content-length`` the body is exactly that many bytes (it may hold NUL) and
      must be followed by NUL; without it the body ends at the first NUL.
    * Any number of EOLs may stand between frames (heart-beats); they are skipped.

Goals
    * Arbitrary chunking: a frame split over many ``feed`` calls, or many frames in one.
    * Worst case O(n) in the bytes received: every byte is scanned a bounded number of
      times, because each search resumes where the previous one stopped (a peer
      dribbling a header one byte per read cannot make us rescan the buffer).
    * Bounded memory: a server cannot make us buffer more than ``max_header_bytes`` of
      headers or ``max_body_bytes`` of body; exceeding either, or any malformed input,
      raises :class:`ProtocolError` with a message that says what was wrong.

Plan
    One ``bytearray`` buffer; consumed frames are deleted from its front (O(1) amortized
    in CPython).  ``_scan`` remembers how far the current search got.
"""

CLIENT_COMMANDS = frozenset(
    ("CONNECT", "STOMP", "SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK", "BEGIN", "COMMIT", "ABORT", "DISCONNECT")
)
SERVER_COMMANDS = frozenset(("CONNECTED", "MESSAGE", "RECEIPT", "ERROR"))
_UNESCAPED_COMMANDS = frozenset(("CONNECT", "CONNECTED"))

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_HEADERS = 128
#: A content-length is ASCII digits, at most this many (a body is bounded far below 10**12 bytes).
MAX_LENGTH_DIGITS = 12
_ASCII_DIGITS = frozenset("0123456789")

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", ":": "\\c"}
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r", "c": ":"}


class ProtocolError(Exception):
    """The peer broke STOMP 1.2 (or a size limit); the connection cannot be trusted any more."""


class Frame:
    """A parsed frame.  ``headers`` keeps the first value of each name; ``header_list`` all of them."""

    __slots__ = ("command", "headers", "header_list", "body")

    def __init__(self, command: str, header_list: list, body: bytes = b""):
        self.command = command
        self.header_list = header_list
        self.headers: dict = {}
        for name, value in header_list:
            self.headers.setdefault(name, value)
        self.body = body

    def __repr__(self):
        return "Frame(%r, %r, %d body bytes)" % (self.command, self.header_list, len(self.body))


def escape(text: str) -> str:
    if "\\" not in text and "\n" not in text and "\r" not in text and ":" not in text:
        return text
    return "".join(_ESCAPES.get(c, c) for c in text)


def unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in _UNESCAPES:
                raise ProtocolError("undefined escape sequence %r in header %r" % (text[i : i + 2], text))
            out.append(_UNESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def encode_frame(command: str, headers=(), body: bytes = b"") -> bytes:
    """One frame as bytes.  ``headers`` is a sequence of (name, value) pairs or a dict.

    ``content-length`` is computed here for any non-empty body (so bodies may hold NUL) or
    when the caller gives one (last of the headers, as SEND frames have it); a caller's that
    disagrees with the body is refused, as is an empty header name (a
    peer's parser, ours included, would refuse the frame).  In CONNECT, where escaping
    does not apply, a header that would need it is refused.
    """
    if command not in CLIENT_COMMANDS and command not in SERVER_COMMANDS:
        raise ValueError("unknown STOMP command %r" % command)
    pairs, asked = [], False
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        if not str(name):
            raise ValueError("a STOMP header name cannot be empty")
        if name == "content-length":
            if str(value) != str(len(body)):
                raise ValueError("content-length %r disagrees with the body of %d bytes" % (value, len(body)))
            asked = True  # computed below, where the codec puts it
            continue
        pairs.append((name, value))
    if body or asked:
        pairs.append(("content-length", str(len(body))))
    lines = [command]
    raw = command in _UNESCAPED_COMMANDS
    for name, value in pairs:
        name, value = str(name), str(value)
        if raw:
            if any(c in name + value for c in "\n\r") or ":" in name:
                raise ValueError("header %r cannot be sent unescaped in %s" % (name, command))
            lines.append(name + ":" + value)
        else:
            lines.append(escape(name) + ":" + escape(value))
    return ("\n".join(lines) + "\n\n").encode("utf-8") + body + b"\x00"


class SendFrames:
    """SEND frames to one destination, built from a header template escaped and laid out once.

    ``encode(body, values, receipt)`` gives exactly what ``encode_frame`` gives for the
    headers ``destination``, the ``fixed`` pairs, ``receipt`` (when not None), ``names``
    paired with ``values``, then ``content-length`` — at the cost of one string format,
    because replay builds one frame per event.
    """

    __slots__ = ("_prefix", "_tail")

    def __init__(self, destination: str, fixed=(), names=()):
        pairs = [("destination", destination)] + list(fixed)
        self._prefix = "SEND\n" + "".join("%s:%s\n" % (escape(n), escape(v)) for n, v in pairs)
        self._tail = "".join("%s:%%s\n" % escape(n).replace("%", "%%") for n in names) + "content-length:%d\n\n"

    def encode(self, body: bytes, values=(), receipt=None) -> bytes:
        """``values``: a tuple, one per name.  One scan of all the text decides whether any escaping is due."""
        text = "".join(values) if receipt is None else receipt + "".join(values)
        if "\\" in text or "\n" in text or "\r" in text or ":" in text:
            values = tuple(map(escape, values))
            receipt = None if receipt is None else escape(receipt)
        head = self._prefix if receipt is None else self._prefix + "receipt:" + receipt + "\n"
        return (head + self._tail % (values + (len(body),))).encode("utf-8") + body + b"\x00"


class FrameParser:
    """Incremental parser for frames arriving from a peer (normally the server)."""

    def __init__(
        self,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        commands=SERVER_COMMANDS,
    ):
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.max_headers = max_headers
        self.commands = commands
        self._buf = bytearray()
        self._scan = 0  # where the current search for a terminator resumes
        self._head = None  # (command, header_list, body_start, content_length) once headers are parsed

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self):
        """The next complete frame, or None when more bytes are needed."""
        buf = self._buf
        if self._head is None:
            # Skip heart-beat EOLs between frames.
            i = 0
            while i < len(buf) and buf[i] in b"\r\n":
                if buf[i] == 13 and (i + 1 >= len(buf) or buf[i + 1] != 10):
                    if i + 1 >= len(buf):
                        break  # a lone CR at the end: wait for its LF
                    raise ProtocolError("CR not followed by LF between frames")
                i += 2 if buf[i] == 13 else 1
            if i:
                del buf[:i]
                self._scan = 0
            end = buf.find(b"\n\n", self._scan)
            end_crlf = buf.find(b"\n\r\n", self._scan)
            if end_crlf != -1 and (end == -1 or end_crlf < end):
                end, sep = end_crlf, 3
            else:
                sep = 2
            if end == -1:
                # The head is at least len(buf) - 2 bytes (its terminator may have begun), so the
                # limit holds the same however the bytes were split into reads.
                if len(buf) - 2 > self.max_header_bytes:
                    raise ProtocolError("frame headers exceed %d bytes" % self.max_header_bytes)
                self._scan = max(0, len(buf) - 2)
                return None
            if end > self.max_header_bytes:
                raise ProtocolError("frame headers exceed %d bytes" % self.max_header_bytes)
            self._head = self._parse_head(bytes(buf[:end]), end + sep)
            self._scan = self._head[2]
        command, header_list, body_start, length = self._head
        if length is not None:
            if len(buf) < body_start + length + 1:
                return None
            if buf[body_start + length] != 0:
                raise ProtocolError("frame body is not followed by NUL after content-length %d bytes" % length)
            nul = body_start + length
        else:
            nul = buf.find(b"\x00", self._scan)
            if (len(buf) if nul == -1 else nul) - body_start > self.max_body_bytes:
                raise ProtocolError("frame body exceeds %d bytes" % self.max_body_bytes)
            if nul == -1:
                self._scan = len(buf)
                return None
        body = bytes(buf[body_start:nul])
        del buf[: nul + 1]
        self._head, self._scan = None, 0
        return Frame(command, header_list, body)

    def _parse_head(self, head: bytes, body_start: int):
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("frame headers are not UTF-8") from None
        lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
        command = lines[0]
        if command not in self.commands:
            raise ProtocolError("unexpected frame command %r" % command[:40])
        if len(lines) - 1 > self.max_headers:
            raise ProtocolError("frame has more than %d headers" % self.max_headers)
        raw = command in _UNESCAPED_COMMANDS
        header_list = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name:
                raise ProtocolError("malformed header line %r" % line[:80])
            header_list.append((name, value) if raw else (unescape(name), unescape(value)))
        length = None
        for name, value in header_list:
            if name == "content-length":
                if not value or len(value) > MAX_LENGTH_DIGITS or not _ASCII_DIGITS.issuperset(value):
                    raise ProtocolError(
                        "content-length %r is not a number of at most %d digits" % (value[:20], MAX_LENGTH_DIGITS)
                    )
                length = int(value)
                if length > self.max_body_bytes:
                    raise ProtocolError("frame body of %d bytes exceeds %d" % (length, self.max_body_bytes))
                break  # first occurrence wins
        return command, header_list, body_start, length
