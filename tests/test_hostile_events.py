"""Untrusted events through the readers (issue 24, defects 3 and 6): one bad pilot never denies
the operator the day's report, nor reaches the terminal raw.

Hypothesis makes event lines whose every field a reader parses is hostile — times of year
0000, 0001 and 9999, leap seconds ``:60``, 31 February, offsets, hours 24; seqs of 0, 2^63
and 10^30; NaN, 5,000-digit numbers, nesting 100,000 deep, megabytes of data; lone
surrogates, bidi overrides and every non-printable category in messages, sites and pilot
ids; missing, extra and mistyped fields — among good events, and feeds them through
``validate``, ``tail`` and ``timeline`` (text, ``--json``, ``--html``): in process for many
examples, through the bundle on Python 3.6.15 and 3.13.0, and once through a real RabbitMQ.

The invariant: the report is made (exit 0, no internal error); each line is counted once,
as an event or as "not a pilotlog event"; a line whose time is not a real instant of years
0001-9999 or whose seq is out of 1..2^63-1 is never an event; a good event always is; text
output holds nothing non-printable; the JSON document parses; the page is UTF-8 HTML.
"""

import contextlib
import datetime
import io
import json
import subprocess
import unicodedata
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger
from helpers import Page, clean_env, pyenv_python
from pilotlogger import cli, consumer
from pilotlogger.events import (
    INVISIBLE,
    MAX_SEQ,
    EventError,
    format_micros,
    make_event,
    parse_micros,
    to_json,
    validate,
)

PILOT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
T0 = 1795842000.0  # 2026-11-28T05:00:00Z
#: Categories a terminal may act on or hide (stable across Unicode versions; Cn is not: see test_events).
RAW_NEVER = ("Cc", "Cf", "Cs", "Co", "Zl", "Zp", "Zs")

# -- hostile values, field by field ------------------------------------------------------------------


def _time_text(fields) -> str:
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % fields


time_fields = st.tuples(
    st.sampled_from([0, 1, 2, 1969, 1970, 1900, 2000, 2024, 2026, 2038, 9998, 9999]) | st.integers(0, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.integers(0, 999999),
)
hostile_times = st.one_of(
    time_fields.map(_time_text),
    st.sampled_from(
        [
            "0000-01-01T00:00:00.000000Z",  # the case
            "0001-01-01T00:00:00.000000Z",
            "9999-12-31T23:59:59.999999Z",
            "2016-12-31T23:59:60.000000Z",  # a real leap second
            "2026-02-31T00:00:00.000000Z",
            "2026-02-29T00:00:00.000000Z",
            "2024-02-29T23:59:59.999999Z",
            "1900-02-29T00:00:00.000000Z",
            "2026-11-28T24:00:00.000000Z",
            "2026-11-28T05:00:00.000000+01:00",
            "2026-11-28T05:00:00.000000z",
            "2026-11-28T05:00:00Z",
            "2026-11-28 05:00:00.000000Z",
            "+2026-11-28T05:00:00.00000Z",
            "10000-01-01T00:00:00.000000Z",
            "٢٠٢٦-11-28T05:00:00.000000Z",  # digits, but not ASCII ones
        ]
    ),
    st.text(max_size=30),
)
hostile_text = st.text(
    st.characters(whitelist_categories=RAW_NEVER + ("Cn", "Lo", "Mn", "So"))
    | st.sampled_from(["\u202e", "\u202c", "\u200b", "\ufeff", "\x1b", "\x9b", "\r", "\n", "\ud800", "\udcff"])
    | st.sampled_from(sorted(INVISIBLE)),
    max_size=40,
)
hostile_seqs = st.one_of(
    st.integers(-2, 3),
    st.integers(MAX_SEQ - 2, MAX_SEQ + 2),
    st.sampled_from([10**30, 2**64, True, False, 1.0, "1", None, float("nan")]),
)
#: field -> values that make it hostile (what a reader parses, and what it shows)
MUTATIONS = {
    "time": hostile_times,
    "seq": hostile_seqs,
    "message": hostile_text,
    "pilot": hostile_text | st.sampled_from(["", "p" * 257, "has space", "p\u202e1"]),
    "context": st.dictionaries(st.sampled_from(["site", "host", "planet"]), hostile_text | st.integers(), max_size=2),
    "phase": st.sampled_from(["", "9lives", "x" * 65, "bo ot", 7]) | hostile_text,
    "status": st.sampled_from(["fatal", "", "INFO", None]),
    "source": hostile_text,
    "id": st.sampled_from(["", "not-a-uuid", "3F2504E0-4F89-41D3-9A0C-0305E82C3301"]),
    "v": st.sampled_from([0, 2, "1", True]),
    "data": st.sampled_from([[], None, "x", {"k": [[[[[]]]]]}, {"big": "y" * 3000000}]),
}
#: raw lines no JSON encoder would write, but a file or a queue may hold
RAW_LINES = st.sampled_from(
    [
        '{"v":1,"data":' + "[" * 100000 + "]" * 100000 + "}",
        "[" * 100000,
        "NaN",
        '{"data": {"x": NaN}}',
        "1" * 5000,
        "{",
        "not json at all \x1b[31m",
        '"\\ud800"',
        "\ufeff{}",
    ]
)


@st.composite
def hostile_lines(draw):
    """(line, kind): kind is "good" (a valid event, untouched), "bad" (its time or seq is one no
    reader may take) or "other" (anything else: the reader decides)."""
    seq = draw(st.integers(1, 50))
    good = make_event(
        draw(st.sampled_from(["boot", "install", "match", "shutdown", "log"])),
        draw(st.sampled_from(["ok", "install failed: disk full"])),
        draw(st.sampled_from(["info", "error"])),
        pilot=draw(st.sampled_from([PILOT, "pilot-2"])),
        seq=seq,
        epoch=T0 + draw(st.integers(-7200, 7200)),
        context={"site": "LCG.CERN.cern"},
    )
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return to_json(good), "good"
    if choice == 1:
        return draw(RAW_LINES), "other"
    event = dict(good)
    if choice == 2:  # the time or the seq is the only thing wrong, if anything is
        field = draw(st.sampled_from(["time", "seq"]))
        event[field] = draw(MUTATIONS[field])
    else:
        for field in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3, unique=True)):
            event[field] = draw(MUTATIONS[field])
        if draw(st.booleans()) and len(event) > 1:
            event.pop(draw(st.sampled_from(sorted(event))))
        if draw(st.integers(0, 9)) == 0:
            event["extra"] = 1
    line = json.dumps(event, ensure_ascii=draw(st.booleans()))  # json, not to_json: it writes NaN
    return line, "bad" if not readable_time_and_seq(event) else "other"


def readable_time_and_seq(event: dict) -> bool:
    """The oracle, independent of pilotlogger: a time any reader can parse (a real instant of
    years 0001-9999, RFC 3339 UTC with microseconds; datetime's own rules) and a seq in 1..2^63-1."""
    t, seq = event.get("time"), event.get("seq")
    if not isinstance(t, str) or len(t) != 27 or not t.isascii() or not t.endswith("Z"):
        return "time" not in event  # missing: bad for another reason
    try:
        datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    if not (t[4] == t[7] == "-" and t[13] == t[16] == ":" and t[:4].isdigit() and t[20:26].isdigit()):
        return False  # strptime takes "2026-1-01"-like widths; the format does not
    return not isinstance(seq, int) or isinstance(seq, bool) or 1 <= seq <= 2**63 - 1


@settings(max_examples=500, deadline=None)
@given(time_fields)
def test_check_time_takes_exactly_what_datetime_takes(fields):
    """Python's datetime (years 1-9999, real dates, seconds 0-59) is the oracle; a time check_time
    takes reads back to the same text."""
    text = "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % fields
    try:
        expected = datetime.datetime(*fields)
    except ValueError:
        expected = None
    try:
        micros = parse_micros(text)
    except EventError:
        micros = None
    assert (micros is None) == (expected is None), text
    if expected is not None:
        epoch = datetime.datetime(1970, 1, 1)
        assert micros == (expected - epoch) // datetime.timedelta(microseconds=1)
        assert format_micros(micros) == text


# -- running the readers in process ------------------------------------------------------------------


@contextlib.contextmanager
def terminal():
    """stdout and stderr as the CLI guards them (UTF-8; a lone surrogate cannot be written)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out, err
    out.flush()
    err.flush()
    out.text, err.text = out.buffer.getvalue().decode("utf-8"), err.buffer.getvalue().decode("utf-8")


def raw_characters(text: str) -> list:
    """What no terminal may get raw: non-printable categories (but the line ends) and the invisible ones."""
    return sorted(
        {c for c in text if c != "\n" and (unicodedata.category(c) in RAW_NEVER and c != " " or c in INVISIBLE)}
    )


def counts(summary: dict) -> int:
    return summary["events"] + summary["duplicates_dropped"] + summary["not_pilotlog_events"]


def check_report(lines: list, text: str, document: dict, page: str) -> str:
    """What must hold for one set of lines, whatever they hold; '' when it does."""
    summary = document["summary"]
    kinds = [kind for _, kind in lines]
    if counts(summary) != len(lines):
        return "%d lines counted as %d" % (len(lines), counts(summary))
    if summary["not_pilotlog_events"] < kinds.count("bad"):
        return "a time or seq no reader can take was counted as an event: %r" % summary
    if summary["events"] + summary["duplicates_dropped"] < kinds.count("good"):
        return "a good event was not counted as one"
    if raw_characters(text):
        return "raw in the text report: %r" % raw_characters(text)
    if "pilots: %d, events: %d" % (summary["pilots"], summary["events"]) not in text:
        return "no summary in the text report"
    parsed = Page(page)
    if not any(t == "table" for t, _ in parsed.tags) or raw_characters(" ".join(parsed.text)):
        return "the page is not the report, or holds raw characters"
    return ""


def run_timeline(path: str, *options) -> tuple:
    with terminal() as (out, err):
        code = cli.main(["timeline", path] + list(options))
    return code, out.text, err.text


TRIALS = ledger.trials(150, 1500)
common = settings(max_examples=TRIALS, deadline=None, derandomize=not ledger.FULL, database=None)
TALLY = ledger.tally()
READER = {
    "in process": "timeline (in process)",
    "bundle": "timeline (bundle, 3.6.15 and 3.13.0)",
    "tail": "tail (in process)",
}


def count(kind: str, broken: str) -> None:
    TALLY.count(["hostile fields through " + READER[kind]], broken, 0.0)


@pytest.fixture(scope="module", autouse=True)
def ledger_rows():
    yield
    TALLY.record(
        "untrusted events", "hypothesis; every field a reader parses; lost = examples that broke the invariant"
    )


@common
@given(st.lists(hostile_lines(), min_size=1, max_size=8))
def test_timeline_reports_whatever_the_events_hold(tmp_path_factory, lines):
    path = str(tmp_path_factory.mktemp("lines") / "events.jsonl")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write("".join(line + "\n" for line, _ in lines))
    page = path + ".html"
    results = [run_timeline(path), run_timeline(path, "--json"), run_timeline(path, "--html", page)]
    broken = ""
    for code, _, err in results:
        if code != 0 or "internal error" in err or "Traceback" in err:
            broken = "exit %d: %s" % (code, err[-300:])
    if not broken:
        try:
            with open(page, encoding="utf-8") as f:
                broken = check_report(lines, results[0][1], json.loads(results[1][1]), f.read())
        except ValueError as exc:
            broken = "JSON document or page not readable: %s" % exc
    count("in process", broken)
    assert not broken, (lines, broken)


@common
@given(st.lists(hostile_lines(), min_size=1, max_size=8))
def test_tail_prints_one_safe_line_per_message(lines):
    """``tail`` as the broker hands it messages (the message bodies are the lines; one real
    broker run is below): one line each, a non-event marked ``?``, nothing raw."""

    def follow(config, handle, count=None, seconds=None, idle=None, duplicate=None):
        for line, _ in lines:
            handle(consumer.parse(line), line)
        return len(lines)

    with mock.patch.object(consumer, "follow", follow), terminal() as (out, err):
        code = cli.main(["tail"])
    shown = out.text.splitlines()
    foreign = [line for line, _ in lines if consumer.parse(line) is None]
    broken = ""
    if code != 0 or "internal error" in err.text:
        broken = "exit %d: %s" % (code, err.text[-300:])
    elif len(shown) != len(lines) or sum(s.startswith("? (not a pilotlog event)") for s in shown) != len(foreign):
        broken = "%d lines shown for %d messages (%d not events)" % (len(shown), len(lines), len(foreign))
    elif raw_characters(out.text):
        broken = "raw: %r" % raw_characters(out.text)
    elif any(kind == "bad" and consumer.parse(line) is not None for line, kind in lines):
        broken = "a time or seq no reader can take was shown as an event"
    count("tail", broken)
    assert not broken, (lines, broken)


@settings(max_examples=TRIALS, deadline=None, derandomize=not ledger.FULL, database=None)
@given(st.data())
def test_validate_refuses_with_an_event_error_and_nothing_else(data):
    line, kind = data.draw(hostile_lines())
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return
    try:
        validate(event)
        accepted = True
    except EventError:
        accepted = False
    assert not (accepted and kind == "bad"), line[:300]
    assert accepted or kind != "good", line[:300]


# -- the bundle, oldest and newest Python -------------------------------------------------------------

BUNDLE_TRIALS = ledger.trials(8, 60)


@pytest.mark.parametrize("version", ["3.6.15", "3.13.0"])
@ledger.generated(BUNDLE_TRIALS)
@given(lines=st.lists(hostile_lines(), min_size=1, max_size=12))
def test_the_bundle_reports_whatever_the_events_hold(bundle, tmp_path_factory, version, lines):
    python = pyenv_python(version)
    work = tmp_path_factory.mktemp("bundle")
    path = str(work / "events.jsonl")
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write("".join(line + "\n" for line, _ in lines))
    env = clean_env(PILOTLOG_CACHE=str(tmp_path_factory.getbasetemp() / ("cache-" + version)))  # warm after one
    runs = [
        subprocess.run(
            [python, "-I", "-S", str(bundle), "timeline", path] + options,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(work),
            timeout=120,
        )
        for options in ([], ["--json"], ["--html", path + ".html"])
    ]
    broken = ""
    for p in runs:
        if p.returncode != 0 or b"internal error" in p.stderr or b"Traceback" in p.stderr:
            broken = "exit %d: %r" % (p.returncode, p.stderr[-300:])
    if not broken:
        try:
            with open(path + ".html", encoding="utf-8") as f:
                page = f.read()
            text = runs[0].stdout.decode("utf-8")
            broken = check_report(lines, text, json.loads(runs[1].stdout.decode("utf-8")), page)
        except ValueError as exc:
            broken = "output not UTF-8, JSON or HTML: %s" % exc
    count("bundle", broken)
    assert not broken, (version, lines, broken)


# -- a real broker: what the operator ran ----------------------------------------------------

HELD = "exit 0, every message counted (bad ones as not pilotlog events), nothing raw"
BROKER_LINES = [
    make_event("boot", "booted", pilot=PILOT, seq=1, epoch=T0),
    make_event("shutdown", "done \u202egnp.exe\u202c \u200b\ufeff", pilot=PILOT, seq=2, epoch=T0 + 60),
]


def test_tail_and_timeline_from_rabbitmq_survive_every_kind_of_bad_event(rabbitmq, pilotlog, queue, pki):
    from broker_fixtures import publish
    from brokers import PASSWORD, USER

    good = [to_json(e) for e in BROKER_LINES]
    bad = [
        json.dumps(dict(BROKER_LINES[0], id=BROKER_LINES[0]["id"][:-2] + "%02d" % i, **change))
        for i, change in enumerate(
            [
                {"time": "0000-01-01T00:00:00.000000Z"},
                {"time": "2016-12-31T23:59:60.000000Z"},
                {"time": "2026-02-31T00:00:00.000000Z"},
                {"seq": 2**63},
                {"message": "\ud800 lone"},
            ]
        )
    ] + ['{"v":1,"data":' + "[" * 50000 + "]" * 50000 + "}", '{"data": NaN}']
    bodies = good + bad
    publish(rabbitmq, queue, bodies * 2)  # once for tail, once for timeline (each consumes the queue)
    env = {
        "PILOTLOG_SINK": rabbitmq.url(queue),
        "PILOTLOG_CA_FILE": pki.path("ca.pem"),
        "PILOTLOG_USER": USER,
        "PILOTLOG_PASSCODE": PASSWORD,
    }
    tail = pilotlog("tail", "--count", str(len(bodies)), "--seconds", "60", env=env)
    shown = tail.stdout.splitlines()
    ok = tail.returncode == 0 and len(shown) == len(bodies) and not raw_characters(tail.stdout)
    ok = (
        ok and sum(line.startswith("? (not a pilotlog event)") for line in shown) == len(bad) - 1
    )  # the lone surrogate is valid
    assert ledger.attack("CLI", "hostile times, seqs, nesting, NaN, bidi from RabbitMQ (tail)", ok, HELD), (
        tail.stdout + tail.stderr
    )
    assert "\\u202egnp.exe\\u202c \\u200b\\ufeff" in tail.stdout
    report = pilotlog("timeline", "--idle", "3", "--seconds", "60", env=env)
    ok = report.returncode == 0 and "not_pilotlog" not in report.stderr and not raw_characters(report.stdout)
    ok = (
        ok
        and "pilots: 1, events: 3 (0 duplicate(s) dropped, %d message(s) not pilotlog events)" % (len(bad) - 1)
        in report.stdout
    )
    assert ledger.attack("CLI", "hostile times, seqs, nesting, NaN, bidi from RabbitMQ (timeline)", ok, HELD), (
        report.stdout + report.stderr
    )
