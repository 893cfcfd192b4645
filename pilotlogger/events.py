"""The Event: what one lifecycle record holds, how it is checked, and how it is rendered.

An event is a plain ``dict`` (schema v1, documented in ``docs/events.md`` and
``docs/event.schema.json``).  Plain dicts keep the hot path cheap and make the
on-disk form, the wire form and the Python form the same thing.

This module imports nothing of ours and reads no environment: callers pass in
everything (pilot id, context, clock), so it is trivially testable.
"""

import os
import time

SCHEMA_VERSION = 1

#: Phases with a meaning in the pilot lifecycle; any other well-formed name is allowed too.
LIFECYCLE_PHASES = ("boot", "install", "power", "os", "match", "nomatch", "shutdown")
#: The phase of free log lines: the first to go when the spool is full.
LOG_PHASE = "log"

#: DIRAC's levels (PilotLoggerTools.isMessageFormatCorrect), lowest first.
STATUSES = ("debug", "info", "warning", "error")

#: Context keys an event may carry, in rendering order.
CONTEXT_KEYS = ("host", "site", "ce", "queue", "batch_system", "batch_job")

#: The flat record DIRAC's pilot-logging consumers read: six non-empty strings.
DIRAC_FIELDS = ("pilotUUID", "timestamp", "source", "phase", "status", "messageContent")
#: Longest ``messageContent`` DIRAC's PilotsLoggingDB stores (a ``String(255)`` column).
DIRAC_CONTENT_MAX = 255

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
MAX_NAME_LEN = 64
MAX_PILOT_LEN = 256
#: How deeply ``data`` may nest (objects and lists): ample for facts, far from the recursion limit.
MAX_DEPTH = 32
#: Highest seq: a 64-bit signed integer, what a consumer in any language (and a database column) holds.
MAX_SEQ = 2**63 - 1
#: Longest integer in data: what Python 3.11+ (and so a consumer on it) will parse by default.
MAX_INT_DIGITS = 4300


class EventError(ValueError):
    """An event (or a part of one) is malformed; the message says which field and why."""


def check_name(kind: str, value: str) -> str:
    """Validate a phase or source name: 1-64 chars of ``[A-Za-z0-9_.-]``, starting with a letter.

    Names end up in file names, STOMP headers and selectors, so they are kept to a
    character set that needs no escaping anywhere.
    """
    if not isinstance(value, str) or not value:
        raise EventError("%s must be a non-empty name" % kind)
    if len(value) > MAX_NAME_LEN:
        raise EventError("%s %r is longer than %d characters" % (kind, value[:20] + "...", MAX_NAME_LEN))
    if not value[0].isalpha() or not _NAME_CHARS.issuperset(value):
        raise EventError(
            "%s %r may only hold ASCII letters, digits, '_', '.', '-' and must start with a letter" % (kind, value)
        )
    return value


def check_status(value: str) -> str:
    if value not in STATUSES:
        raise EventError("status %r is not one of %s" % (value, ", ".join(STATUSES)))
    return value


def check_pilot(value: str) -> str:
    """A pilot id is any printable string without whitespace (UUID, DIRAC stamp, grid job URL)."""
    if not isinstance(value, str) or not value or len(value) > MAX_PILOT_LEN:
        raise EventError("pilot id must be a non-empty string of at most %d characters" % MAX_PILOT_LEN)
    if not value.isprintable() or value.split() != [value]:
        raise EventError("pilot id %r must be printable and hold no whitespace" % value)
    return value


_STAMP_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")
_HEX = frozenset("0123456789abcdef")


def dirac_accepts(pilot: str) -> bool:
    """Whether DIRAC's pilot-logging service takes this pilot id (``FileCacheLoggingPlugin``).

    DIRAC 9.1 accepts a pilot stamp ``^[0-9a-z]{32}$`` or a lowercase UUID
    ``8-4-4-4-12`` hex; anything else (a grid job URL, a VM id) is answered
    ``{"OK": false, "Message": "Pilot UUID is invalid"}``.
    """
    if len(pilot) == 32:
        return _STAMP_CHARS.issuperset(pilot)
    parts = pilot.split("-")
    return len(pilot) == 36 and [len(x) for x in parts] == [8, 4, 4, 4, 12] and _HEX.issuperset("".join(parts))


def clean_text(text: str) -> str:
    """``text`` as it can be stored in UTF-8: bytes that were not UTF-8 become U+FFFD.

    Such bytes reach us as surrogate escapes: from argv, the environment or a path that
    is not UTF-8, and from everything non-ASCII under Python 3.6 in a C/POSIX locale,
    which decodes argv as ASCII.  Their original bytes are recovered first, so UTF-8 that
    was merely mis-decoded comes back intact.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # lone surrogates that were never bytes (e.g. "\ud800" in JSON)
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def nesting(value) -> int:
    """How deeply lists and objects nest in ``value`` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, (list, tuple)):
            continue
        deepest = max(deepest, depth + 1)
        if depth + 1 <= MAX_DEPTH:  # deeper than the limit is all a caller needs to know
            stack.extend((child, depth + 1) for child in item)
    return deepest


def new_id() -> str:
    """A random (version 4) UUID string, made without importing :mod:`uuid` (slow to import)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


_HEX_OR_DASH = frozenset("0123456789abcdef-")


def check_id(value: str) -> str:
    """An event id is a lowercase random UUID: ``8-4-4-4-12`` hex digits, version 4."""
    if not (
        len(value) == 36
        and value[8] == value[13] == value[18] == value[23] == "-"
        and value.count("-") == 4
        and value[14] == "4"
        and _HEX_OR_DASH.issuperset(value)
    ):
        raise EventError("id %r is not a lowercase version-4 UUID" % (value,))
    return value


#: The first and the last second an event time can hold: years 0001 to 9999 (RFC 3339's four
#: digits; year 0000 exists in no calendar Python or a consumer's date library knows).
FIRST_SECOND = -62135596800  # 0001-01-01T00:00:00Z
LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z


def rfc3339(epoch: float) -> str:
    """UTC time as RFC 3339 with microseconds, e.g. ``2026-11-28T02:23:19.123456Z``.

    A clock outside years 0001-9999 (never seen on a real node) is written as the nearest
    bound rather than as a time no reader could parse: the event is kept, and seq, not
    time, says where it belongs.
    """
    seconds = int(epoch // 1)  # floor: right for a clock before 1970 too
    micros = int(round((epoch - seconds) * 1e6))
    if micros >= 1000000:
        seconds, micros = seconds + 1, micros - 1000000
    return format_micros(seconds * 1000000 + micros)


def format_micros(micros: int) -> str:
    """RFC 3339 text of a time in microseconds since the epoch (the inverse of :func:`parse_micros`)."""
    seconds, micros = divmod(micros, 1000000)
    if not FIRST_SECOND <= seconds <= LAST_SECOND:
        seconds, micros = (FIRST_SECOND, 0) if seconds < FIRST_SECOND else (LAST_SECOND, 999999)
    t = time.gmtime(seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (t[0], t[1], t[2], t[3], t[4], t[5], micros)


_DIGITS = frozenset("0123456789")
_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February's 29 checked against the year


def check_time(text: str) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ``, a real instant of years 0001-9999 in UTC: exactly what
    :func:`rfc3339` writes.  Cheap: replay checks every event.

    So every reader can turn it into a time and back unchanged: no year 0000 (no calendar
    has it), no 31 February, and no leap second ``:60`` — a node's clock (POSIX time)
    never shows one, and a reader could only fold it into the next second, showing a time
    that was not recorded.
    """
    t = text
    if not (
        isinstance(t, str)
        and len(t) == 27
        and t[4] == t[7] == "-"
        and t[10] == "T"
        and t[13] == t[16] == ":"
        and t[19] == "."
        and t[26] == "Z"
        and _DIGITS.issuperset(t[0:4] + t[5:7] + t[8:10] + t[11:13] + t[14:16] + t[17:19] + t[20:26])
        and t[0:4] != "0000"
        and "01" <= t[5:7] <= "12"
        and "01" <= t[8:10]
        and (t[8:10] <= "28" or int(t[8:10]) <= _month_days(int(t[0:4]), int(t[5:7])))
        and t[11:13] <= "23"
        and t[14:16] <= "59"
        and t[17:19] <= "59"
    ):
        raise EventError("time %r is not RFC 3339 UTC with microseconds (a real date of years 0001-9999)" % (text,))
    return text


def _month_days(year: int, month: int) -> int:
    if month == 2 and (year % 4 or (year % 100 == 0 and year % 400)):
        return 28
    return _MONTH_DAYS[month]


def parse_micros(text: str) -> int:
    """Microseconds since the epoch of an event time, exactly (any year 0001-9999); raises
    :class:`EventError` for a time :func:`check_time` refuses."""
    import calendar

    check_time(text)
    fields = (int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]), int(text[17:19]))
    return calendar.timegm(fields) * 1000000 + int(text[20:26])


def parse_rfc3339(text: str) -> float:
    """Inverse of :func:`rfc3339` (only the exact form this module writes)."""
    return parse_micros(text) / 1e6


def make_event(
    phase: str,
    message: str = "",
    status: str = "info",
    source: str = "pilot",
    data: "dict | None" = None,
    pilot: str = "",
    context: "dict | None" = None,
    seq: int = 1,
    epoch: "float | None" = None,
    event_id: "str | None" = None,
) -> dict:
    """Build and validate a schema-v1 event.

    ``seq`` and ``epoch`` are normally filled in by the spool, under its lock, so that
    (time, seq) order is the order events were accepted in.
    """
    event = {
        "v": SCHEMA_VERSION,
        "id": event_id or new_id(),
        "pilot": pilot,
        "seq": seq,
        "time": rfc3339(time.time() if epoch is None else epoch),
        "phase": phase,
        "status": status,
        "source": source,
        "message": message,
        "data": {} if data is None else data,
        "context": {k: v for k, v in (context or {}).items() if v},
    }
    validate(event)
    return event


_TYPES = {
    "v": int,
    "id": str,
    "pilot": str,
    "seq": int,
    "time": str,
    "phase": str,
    "status": str,
    "source": str,
    "message": str,
    "data": dict,
    "context": dict,
}
_FIELDS = frozenset(_TYPES)
_TYPE_ITEMS = tuple(_TYPES.items())


def validate(event: dict) -> dict:
    """Check an event against schema v1; raise :class:`EventError` naming the first bad field.

    Used on the way in (emit) and on the way out (replay reads files that may have been
    damaged or planted), so a bad file is quarantined instead of crashing a command.
    """
    if not isinstance(event, dict):
        raise EventError("an event must be a JSON object")
    if event.keys() != _FIELDS:  # one comparison in the common case; the details only on error
        missing = [key for key in _TYPES if key not in event]
        if missing:
            raise EventError("field %r is missing" % missing[0])
        raise EventError("unknown field(s): %s" % ", ".join(sorted(set(event) - _FIELDS)))
    for key, typ in _TYPE_ITEMS:
        kind = type(event[key])
        if kind is not typ and (kind is bool or not isinstance(event[key], typ)):  # bool is no int here
            raise EventError("field %r must be of type %s" % (key, typ.__name__))
    if event["v"] != SCHEMA_VERSION:
        raise EventError("schema version %r is not supported (this is v%d)" % (event["v"], SCHEMA_VERSION))
    check_id(event["id"])
    if not 1 <= event["seq"] <= MAX_SEQ:
        raise EventError("seq must be an integer from 1 to %d" % MAX_SEQ)
    check_pilot(event["pilot"])
    check_time(event["time"])
    check_name("phase", event["phase"])
    check_name("source", event["source"])
    check_status(event["status"])
    for key, value in event["context"].items():
        if key not in CONTEXT_KEYS or not isinstance(value, str):
            raise EventError("context.%s is not a known string field (%s)" % (key, ", ".join(CONTEXT_KEYS)))
    return event


def status_rank(status: str) -> int:
    """Order of a status for level filtering (debug < info < warning < error)."""
    return STATUSES.index(status)


# ---------------------------------------------------------------------------------------------
# Renderings.  ``native`` is the event itself; ``dirac`` is DIRAC's six-field record.


#: How much longer an event's stored line can be than a draft of it made with ``seq=1``: the
#: spool assigns the real seq (at most 20 digits) when it stores the event.
DRAFT_ROOM = 19


def check_size(size: int, limit: int) -> None:
    """The event-size rule, one home for the spool and the CLI: an event's stored line (its
    JSON, a newline, in UTF-8) is at most ``limit`` (``max_event_bytes``) bytes."""
    if size > limit:
        raise EventError(
            "event is %d bytes, larger than max_event_bytes=%d (shorten its message or data, or raise"
            " max_event_bytes)" % (size, limit)
        )


def to_json(obj) -> str:
    """The one JSON encoding of events on disk and on the wire: compact, UTF-8, keys in order.

    Byte for byte ``json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)``
    (a property test holds it to that), written without importing :mod:`json`, which imports
    :mod:`re` and would double the cost of a one-shot ``pilotlog emit``.  NaN and Infinity
    raise :class:`EventError`: they are not JSON, and a consumer's parser would refuse them.
    """
    try:
        from _json import encode_basestring as quote
    except ImportError:  # not CPython
        import json

        try:
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except ValueError as exc:
            raise EventError(str(exc)) from None
    parts: list = []
    _encode(obj, parts.append, quote)
    return "".join(parts)


def _encode(obj, out, quote) -> None:
    if isinstance(obj, str):
        out(quote(obj))
    elif obj is None:
        out("null")
    elif obj is True:
        out("true")
    elif obj is False:
        out("false")
    elif isinstance(obj, int):
        out(int.__repr__(obj))
    elif isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):  # json.dumps would write NaN: not JSON
            raise EventError("%r is not a JSON number (NaN and Infinity cannot be stored)" % obj)
        out(float.__repr__(obj))
    elif isinstance(obj, dict):
        out("{")
        for i, (key, value) in enumerate(obj.items()):
            if not isinstance(key, str):
                raise TypeError("JSON object keys must be strings, not %r" % (key,))
            out("," + quote(key) + ":" if i else quote(key) + ":")
            _encode(value, out, quote)
        out("}")
    elif isinstance(obj, (list, tuple)):
        out("[")
        for i, value in enumerate(obj):
            if i:
                out(",")
            _encode(value, out, quote)
        out("]")
    else:
        raise TypeError("%s is not JSON serializable" % type(obj).__name__)


_CONTROLS = None
#: Printable to Python, yet invisible: escaped too, so that no text hides in plain sight.  The
#: default-ignorable code points that are letters or marks — Hangul fillers, the combining
#: grapheme joiner, Khmer's two inherent vowels; variation selectors stay (emoji and CJK use them).
INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")


def escape_controls(text: str) -> str:
    """``text`` with nothing a terminal or a line-based file would act on or hide: every
    character that is not printable (``str.isprintable``: controls C0, DEL and C1, format
    characters such as the bidi overrides U+202E/U+202C, U+200B and U+FEFF, line and paragraph
    separators, spaces other than U+0020, lone surrogates, private use, unassigned) and the
    :data:`INVISIBLE` ones become JSON-style escapes (``\\n``, ``\\r``, ``\\t``,
    ``\\u001b``, ``\\ud83d\\ude00`` past U+FFFF), so one event stays one line and a
    message cannot move the cursor, recolour the screen, reorder or hide text, or forge a
    line.  Printable text is unchanged (and inside a JSON string the escapes keep their meaning).

    The same on every Python: a character a newer Unicode made printable is unassigned to an
    older Python, which escapes it; no character printable to 3.6 is non-printable to 3.13
    (tests/test_events.py checks every code point on both), so each escapes at least what
    the newest escapes.
    """
    global _CONTROLS
    if text.isprintable() and INVISIBLE.isdisjoint(text):
        return text
    if _CONTROLS is None:  # the common ones, translated in C
        codes = list(range(0x20)) + list(range(0x7F, 0xA0)) + [0x2028, 0x2029] + list(range(0xD800, 0xE000))
        _CONTROLS = {c: "\\u%04x" % c for c in codes}
        _CONTROLS.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})
    text = text.translate(_CONTROLS)
    if text.isprintable() and INVISIBLE.isdisjoint(text):
        return text
    return "".join(c if c.isprintable() and c not in INVISIBLE else _escape(ord(c)) for c in text)


def _escape(code: int) -> str:
    if code > 0xFFFF:  # as JSON writes it: a surrogate pair
        code -= 0x10000
        return "\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF))
    return "\\u%04x" % code


def readable_line(event: dict) -> str:
    """One human line: ``<time> <STATUS> [<source>] <phase>: <message> {data}``.

    It follows DIRAC's pilot ``Logger.messageTemplate`` (time, level, [name], text), so
    a file of these lines reads like a DIRAC pilot log.  Always one line: control
    characters in the message are escaped (:func:`escape_controls`).
    """
    text = event["message"] or event["phase"]
    line = "%s %s [%s] %s: %s" % (event["time"], event["status"].upper(), event["source"], event["phase"], text)
    if event["data"]:
        line += " " + to_json(event["data"])
    return escape_controls(line)


def to_dirac(event: dict) -> dict:
    """DIRAC's flat record (DIRACGrid/Pilot ``PilotLoggerTools``): six non-empty strings.

    DIRAC has no field for data, context, id or seq, so they move into
    ``messageContent`` after the message, readably: ``message | key=value ...``.
    The event id stays in there so a DIRAC consumer can still de-duplicate.
    DIRAC's ``PilotsLoggingDB`` keeps ``messageContent`` in a ``String(255)`` column
    (MySQL strict mode refuses longer), so past 255 characters only id and seq are
    kept after the message, and the message is cut with "…" (the native record has it all).
    """
    extras = ["id=%s" % event["id"], "seq=%d" % event["seq"]]
    extras += ["%s=%s" % (k, v) for k, v in event["context"].items()]
    if event["data"]:
        extras.append("data=" + to_json(event["data"]))
    head, tail = event["message"] or event["phase"], " | " + " ".join(extras)
    if len(head) + len(tail) > DIRAC_CONTENT_MAX:
        tail = " | " + " ".join(extras[:2])
        if len(head) + len(tail) > DIRAC_CONTENT_MAX:
            head = head[: DIRAC_CONTENT_MAX - len(tail) - 1] + "\u2026"
    content = head + tail
    return {
        "pilotUUID": event["pilot"],
        "timestamp": "%.6f" % parse_rfc3339(event["time"]),
        "source": event["source"],
        "phase": event["phase"],
        "status": event["status"],
        "messageContent": content,
    }


#: ``data`` key of a relayed record (``pilotlog relay``): the DIRAC form a Pilot posted,
#: ``{"method": …, "args": …}`` as strings, which the HTTPS sink posts again unchanged.
RELAYED = "dirac_form"
#: ``data`` key of a ``run --relay`` shutdown event: the payload of the Pilot's own ``finaliseLogs``
#: (``{"retCode": "0"}``), folded into ours so that DIRAC finalises the pilot's log once, last.
PILOT_FINALISE = "pilot_finalise"


def relayed_form(event: dict):
    """``(method, args)`` of a relayed record, or None for any other event."""
    form = event["data"].get(RELAYED)
    if isinstance(form, dict) and isinstance(form.get("method"), str) and isinstance(form.get("args"), str):
        return form["method"], form["args"]
    return None


FORMATS = ("native", "dirac")


def render(event: dict, fmt: str) -> str:
    """The wire text of an event in format ``fmt`` (``native`` or ``dirac``)."""
    if fmt == "dirac":
        return to_json(to_dirac(event))
    return to_json(event)
