"""The event model: validation, ids, time, and the native and DIRAC renderings."""

import json

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
