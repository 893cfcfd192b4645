"""The event model: validation, ids, time, and the native and DIRAC renderings."""

import json
import subprocess

import jsonschema
import pytest

from helpers import ROOT
from pilotlogger import events
from pilotlogger.events import EventError, make_event

SCHEMA = json.loads((ROOT / "docs" / "event.schema.json").read_text())
PILOT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"

#: The lifecycle of the seed, as (phase, message): each must be expressible exactly.
SEED_LIFECYCLE = [
    ("boot", "booted up"),
    ("boot", "found DIRAC pilot ok"),
    ("install", "installed DIRAC via dirac-install"),
    ("power", "power of 11 HS06"),
    ("os", "SLC6/CC7"),
    ("match", "matched a job"),
    ("nomatch", "failed to match"),
    ("shutdown", "about to shutdown"),
]


def event(**kw):
    base = dict(phase="boot", message="booted up", pilot=PILOT, seq=1, epoch=1795832978.219549)
    base.update(kw)
    return make_event(**base)


@pytest.mark.parametrize("phase,message", SEED_LIFECYCLE)
def test_seed_lifecycle_is_expressible_and_valid(phase, message):
    e = event(phase=phase, message=message, data={"hs06": 11} if phase == "power" else {})
    jsonschema.validate(e, SCHEMA)
    assert (e["phase"], e["message"]) == (phase, message)
    dirac = events.to_dirac(e)
    assert dirac["messageContent"].startswith(message + " | ")
    assert dirac["phase"] == phase


def test_event_fields_and_schema():
    e = event(data={"k": [1, 2]}, context={"host": "wn1", "site": "LCG.CERN.cern", "ce": None})
    jsonschema.validate(e, SCHEMA)
    assert e["time"] == "2026-11-28T02:29:38.219549Z"
    assert e["context"] == {"host": "wn1", "site": "LCG.CERN.cern"}  # unknown values left out
    assert e["status"] == "info" and e["v"] == 1


def test_ids_are_unique_v4_uuids():
    ids = {events.new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for i in list(ids)[:50]:
        jsonschema.validate(event(event_id=i), SCHEMA)
        assert events.check_id(i) == i


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"phase": ""}, "phase"),
        ({"phase": "has space"}, "phase"),
        ({"phase": "9lives"}, "phase"),
        ({"phase": "x" * 65}, "longer"),
        ({"status": "fatal"}, "status"),
        ({"source": "a/b"}, "source"),
        ({"pilot": "has space"}, "pilot"),
        ({"pilot": ""}, "pilot"),
        ({"seq": 0}, "seq"),
        ({"event_id": "not-a-uuid"}, "id"),
        ({"context": {"planet": "mars"}}, "context"),
    ],
)
def test_bad_fields_are_rejected_with_the_field_named(change, needle):
    with pytest.raises(EventError) as err:
        event(**change)
    assert needle in str(err.value)


def test_validate_rejects_what_the_schema_rejects():
    good = event()
    for mutate in (
        lambda e: e.pop("message"),
        lambda e: e.update(extra=1),
        lambda e: e.update(seq=True),
        lambda e: e.update(data=[]),
        lambda e: e.update(time="2026-11-28 02:29:38Z"),
        lambda e: e.update(v=2),
    ):
        bad = dict(good)
        mutate(bad)
        with pytest.raises(EventError):
            events.validate(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


def test_rfc3339_round_trip_keeps_microseconds():
    for epoch in (0.0, 1.5, 1795832978.219549, 1795832978.9999996, 4102444799.000001):
        text = events.rfc3339(epoch)
        assert len(text) == 27 and text.endswith("Z")
        assert abs(events.parse_rfc3339(text) - epoch) < 1e-6


def test_dirac_rendering_is_six_nonempty_strings_as_pilotloggertools_checks():
    e = event(message="", data={"cores": 8}, context={"host": "wn1", "site": "S"}, status="warning")
    record = events.to_dirac(e)
    assert tuple(record) == events.DIRAC_FIELDS
    # DIRACGrid/Pilot PilotLoggerTools.isMessageFormatCorrect: all six keys, non-empty strings.
    assert all(isinstance(v, str) and v for v in record.values())
    assert record["status"] == "warning" and record["pilotUUID"] == PILOT
    assert float(record["timestamp"]) == pytest.approx(1795832978.219549, abs=1e-6)
    content = record["messageContent"]
    assert content.startswith("boot | ")  # empty message: the phase stands in
    for piece in ("id=" + e["id"], "seq=1", "host=wn1", "site=S", 'data={"cores":8}'):
        assert piece in content


def test_dirac_message_content_fits_pilotsloggingdb_column():
    context = {"host": "wn-%s.example.org" % ("x" * 60), "site": "LCG.Site.country", "ce": "ce.example.org"}
    for message, data in (("m" * 300, {}), ("short", {"blob": "y" * 400}), ("", {"k": 1}), ("é" * 254, {})):
        e = event(message=message, data=data, context=context)
        content = events.to_dirac(e)["messageContent"]
        assert len(content) <= events.DIRAC_CONTENT_MAX
        assert "id=" + e["id"] in content and "seq=1" in content  # de-duplication still possible
        assert content.startswith((message or "boot")[:100])


def test_render_formats():
    e = event(message="héllo")
    assert json.loads(events.render(e, "native")) == e
    assert "héllo" in events.render(e, "native")  # UTF-8, not \\u escapes
    assert set(json.loads(events.render(e, "dirac"))) == set(events.DIRAC_FIELDS)


def test_readable_line_follows_dirac_logger_template():
    e = event(message="matched a job", phase="match", data={"job": 7}, source="LaunchAgent")
    assert events.readable_line(e) == '2026-11-28T02:29:38.219549Z INFO [LaunchAgent] match: matched a job {"job":7}'


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_to_json_is_byte_identical_to_json_dumps(value):
    assert events.to_json(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def test_to_json_refuses_non_json_values():
    # Non-string keys too: json.dumps would silently turn 1 into "1"; events never carry them.
    for bad in ({1: "int key"}, {"set": {1}}, object()):
        with pytest.raises(TypeError):
            events.to_json(bad)


def test_to_json_refuses_nan_and_infinity():
    """json.dumps would write NaN/Infinity, which no JSON parser accepts (issue 13, case 10)."""
    for bad in (float("nan"), {"i": float("inf")}, [float("-inf")]):
        with pytest.raises(events.EventError, match="not a JSON number"):
            events.to_json(bad)


def test_clean_text_recovers_utf8_and_replaces_the_rest():
    assert events.clean_text("h\udcc3\udca9llo") == "héllo"  # UTF-8 decoded as ASCII by Python 3.6 in C locale
    assert events.clean_text("a\udcffb") == "a\ufffdb"  # a byte that is not UTF-8
    assert events.clean_text("x\ud800y\udcffz") == "x\ufffdy\ufffdz"  # lone surrogates, e.g. from JSON "\ud800"
    assert events.clean_text("plain é") == "plain é"


def test_nesting_is_measured_without_recursion():
    deep = []
    for _ in range(100000):
        deep = [deep]
    assert events.nesting(deep) == events.MAX_DEPTH + 1  # counted only as far as the limit needs
    assert events.nesting({"a": [1, {"b": 2}]}) == 3 and events.nesting(5) == 0


# -- event times: what validate takes is what every reader can parse (issue 24, defect 3) ---------------


@pytest.mark.parametrize(
    "text,real",
    [
        ("0000-01-01T00:00:00.000000Z", False),  # the case: year 0 exists in no calendar
        ("0001-01-01T00:00:00.000000Z", True),
        ("9999-12-31T23:59:59.999999Z", True),
        ("2016-12-31T23:59:60.000000Z", False),  # a real leap second: POSIX clocks never show one
        ("2026-11-28T05:00:60.000000Z", False),
        ("2026-02-31T00:00:00.000000Z", False),
        ("2026-02-29T00:00:00.000000Z", False),
        ("2024-02-29T00:00:00.000000Z", True),
        ("2000-02-29T00:00:00.000000Z", True),
        ("1900-02-29T00:00:00.000000Z", False),
        ("2026-04-31T00:00:00.000000Z", False),
        ("2026-12-31T23:59:59.999999Z", True),
        ("2026-11-28T24:00:00.000000Z", False),
        ("2026-00-28T05:00:00.000000Z", False),
        ("2026-11-00T05:00:00.000000Z", False),
        ("2026-11-28T05:00:00.000000+01:00", False),
        ("2026-11-28T05:00:00.000000z", False),
    ],
)
def test_an_event_time_is_a_real_instant_of_years_1_to_9999(text, real):
    if real:
        assert events.check_time(text) == text
        assert events.format_micros(events.parse_micros(text)) == text  # exact, whatever the year
        events.validate(dict(event(), time=text))
    else:
        with pytest.raises(EventError, match="years 0001-9999"):
            events.check_time(text)
        with pytest.raises(EventError):
            events.validate(dict(event(), time=text))


def test_a_clock_outside_the_years_an_event_time_holds_is_written_as_the_nearest_bound():
    """The event is kept (seq orders it); no reader is handed a time it cannot parse."""
    assert events.rfc3339(-1e12) == "0001-01-01T00:00:00.000000Z"
    assert events.rfc3339(1e12) == "9999-12-31T23:59:59.999999Z"
    assert events.rfc3339(-0.25) == "1969-12-31T23:59:59.750000Z"  # before 1970: floored, not truncated
    assert events.rfc3339(-62135596800.0) == "0001-01-01T00:00:00.000000Z"
    for epoch in (-1e12, -0.25, 0.0, 1e12):
        events.validate(event(epoch=epoch))


def test_seq_is_a_64_bit_integer():
    assert event(seq=events.MAX_SEQ)["seq"] == 2**63 - 1
    for seq in (2**63, 10**30):
        with pytest.raises(EventError, match="seq"):
            event(seq=seq)


# -- escaping for the terminal (issue 24, defect 6) ----------------------------------------------------


def test_bidi_and_invisible_format_characters_are_escaped():
    """The issue's four (each makes isprintable() False, none was in the escape table)."""
    text = "done \u202egnp.exe\u202c zero\u200bwidth \ufeffbom"
    assert events.escape_controls(text) == "done \\u202egnp.exe\\u202c zero\\u200bwidth \\ufeffbom"
    line = events.readable_line(event(message=text))
    assert line.endswith("boot: done \\u202egnp.exe\\u202c zero\\u200bwidth \\ufeffbom") and line.isprintable()
    assert events.escape_controls("hangul\u3164filler") == "hangul\\u3164filler"  # printable to Python, invisible
    assert events.escape_controls("tag \U000e0041") == "tag \\udb40\\udc41"  # past U+FFFF: as JSON writes it
    assert events.escape_controls("é ❤️ 中文 ok") == "é ❤️ 中文 ok"  # printable text (and variation selectors) kept


NON_PRINTABLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


@settings(max_examples=1000, deadline=None)
@given(st.text(st.characters(whitelist_categories=NON_PRINTABLE) | st.characters(), max_size=30))
def test_escape_controls_leaves_nothing_non_printable(text):
    import unicodedata

    escaped = events.escape_controls(text)
    assert escaped.isprintable() and events.INVISIBLE.isdisjoint(escaped)
    assert not any(unicodedata.category(c) in NON_PRINTABLE for c in escaped)
    if '"' not in text and "\\" not in text:  # the escapes keep their meaning in a JSON string
        assert json.loads('"%s"' % escaped) == text
    if text.isprintable() and events.INVISIBLE.isdisjoint(text):
        assert escaped == text


ESCAPED_BITMAP = """
import sys
sys.path.insert(0, sys.argv[1])
import unicodedata
from pilotlogger.events import escape_controls
escaped, unassigned, wrong = [], [], []
for code in range(0x110000):
    c = chr(code)
    e = escape_controls(c)
    escaped.append("1" if e != c else "0")
    unassigned.append("1" if unicodedata.category(c) == "Cn" else "0")
    if not e.isprintable() or (unicodedata.category(c) in %r and c != " " and e == c):
        wrong.append(code)
sys.stdout.write("%%s\\n%%s\\n%%s\\n%%r\\n" %% (unicodedata.unidata_version, "".join(escaped), "".join(unassigned), wrong))
""" % (NON_PRINTABLE + ("Zs",),)


def test_the_escape_rule_is_the_same_on_the_oldest_and_the_newest_python(bundle):
    """Every code point, through the bundle on 3.6.15 (Unicode 9) and 3.13.0 (Unicode 15.1): each
    escapes every character its Unicode calls Cc, Cf, Cs, Co, Cn, Zl, Zp or Zs (but U+0020), and
    the oldest escapes all the newest does; the only difference is characters Unicode 9 had not
    assigned yet, which 3.6 cannot know are printable."""
    from helpers import pyenv_python

    results = {}
    for version in ("3.6.15", "3.13.0"):
        out = subprocess.run(
            [pyenv_python(version), "-I", "-S", "-c", ESCAPED_BITMAP, str(bundle)],
            stdout=subprocess.PIPE,
            universal_newlines=True,
            check=True,
            timeout=300,
        ).stdout.splitlines()
        assert out[3] == "[]", (version, out[3][:300])  # nothing non-printable left, nothing missed
        results[version] = out
    old, new = results["3.6.15"], results["3.13.0"]
    assert (old[0], new[0]) == ("9.0.0", "15.1.0")
    only_old = [c for c in range(0x110000) if old[1][c] == "1" and new[1][c] == "0"]
    only_new = [c for c in range(0x110000) if new[1][c] == "1" and old[1][c] == "0"]
    assert only_new == []
    assert all(old[2][c] == "1" and new[2][c] == "0" for c in only_old)  # assigned after Unicode 9.0
    assert len(only_old) > 20000  # emoji and scripts of Unicode 10-15.1: escaped by 3.6, shown by 3.13
