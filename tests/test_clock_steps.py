"""A wall clock stepped back and forward inside one pilot (issue 24, defect 5).

A fresh VM's chronyd steps the clock (``makestep``) after the pilot has started: events
then carry times out of order.  The promise: they are shipped, evicted, reported by
``status`` and ordered by ``timeline`` by seq — the order the spool accepted them in — with
each time shown as recorded (a step back is a negative gap, visible, not a reordered life).

In-process tests patch ``time.time`` (the spool and the Python API); the CLI and the bundle
get a real clock step of their own process only (tests/clock.py, LD_PRELOAD), never the
machine's.
"""

import io
import json
import os
import time

import pytest

from clock import SteppedClock
from helpers import clean_env
from pilotlogger import cli
from pilotlogger.consumer import parse
from pilotlogger.events import make_event
from pilotlogger.spool import EventName, Spool
from pilotlogger.timeline import Timeline

PILOT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
T0 = 1795842000.0  # 2026-11-28T05:00:00Z
#: (phase, clock offset in seconds when it is recorded): boot, then chronyd steps the clock back
#: an hour, later forward two hours, then back again.
LIFE = [
    ("boot", 0),
    ("install", -3600),
    ("power", -3590),
    ("log", 7200),
    ("match", 7210),
    ("log", -60),
    ("shutdown", -50),
]


class Clock:
    """``time.time`` for in-process tests: T0 plus an offset the test changes."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self):
        return T0 + self.offset


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(time, "time", fake)
    return fake


def put_life(spool, clock, life=LIFE):
    stored = []
    for phase, offset in life:
        clock.offset = offset
        stored.append(
            spool.put(lambda seq, epoch, phase=phase: make_event(phase, phase, pilot=PILOT, seq=seq, epoch=epoch))
        )
    return [r.event for r in stored]


def replay_in_process(env) -> list:
    """``pilotlog replay`` to stdout, in this process: the events in the order they were sent."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape")
    saved = os.environ.copy(), cli.sys.stdout
    os.environ.clear()
    os.environ.update(env)
    cli.sys.stdout = out
    try:
        assert cli.main(["replay"]) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved[0])
        cli.sys.stdout = saved[1]
    out.flush()
    return [json.loads(line) for line in out.buffer.getvalue().decode("utf-8").splitlines()]


def test_the_spool_ships_and_reports_in_seq_order_whatever_the_clock_did(tmp_path, clock):
    spool = Spool(str(tmp_path / "s"))
    events = put_life(spool, clock)
    assert [e["seq"] for e in events] == list(range(1, len(LIFE) + 1))
    assert [e["time"] for e in events] != sorted(e["time"] for e in events)  # the clock did step
    shipped = [spool.load(name) for name in spool.entries(chunk=2)]  # several scans, as a deep spool has
    assert [e["seq"] for e in shipped] == [e["seq"] for e in events]
    stats = spool.stats()  # the first and the last accepted, with the times they carry
    assert (stats["oldest"], stats["newest"]) == (events[0]["time"], events[-1]["time"])
    assert stats["newest"] < stats["oldest"]  # the step back shows


def test_replay_sends_in_seq_order_after_a_step_back(tmp_path, clock):
    """The issue's case: boot, then the clock stepped back: replay sent 2, 3, 4, then 1."""
    spool_dir = str(tmp_path / "s")
    events = put_life(Spool(spool_dir), clock, [("boot", 0), ("install", -3600), ("match", -3500), ("shutdown", -3400)])
    sent = replay_in_process(clean_env(PILOTLOG_SPOOL=spool_dir))
    assert [e["seq"] for e in sent] == [1, 2, 3, 4] and [e["id"] for e in sent] == [e["id"] for e in events]


def test_eviction_takes_the_first_accepted_log_event_not_the_earliest_time(tmp_path, clock):
    spool = Spool(str(tmp_path / "s"), max_events=4)
    first_log, _, later_log, _ = put_life(spool, clock, [("log", 0), ("boot", -10), ("log", -7200), ("os", -7190)])
    clock.offset = -7180
    result = spool.put(lambda seq, epoch: make_event("power", "p", pilot=PILOT, seq=seq, epoch=epoch))
    assert result.stored and result.evicted == 1
    left = {EventName(n).id for n in os.listdir(spool.events_dir)}
    assert (
        first_log["id"] not in left and later_log["id"] in left
    )  # the later-accepted log line, though older by time, stays


def test_timeline_orders_a_pilot_by_seq_and_shows_the_step():
    """The issue's report: a pilot that shut down, shown as last seen at boot, 60 min long."""
    life = [("boot", 0), ("install", -3600 + 5), ("match", -3600 + 30), ("shutdown", -3600 + 90)]
    timeline = Timeline()
    for seq, (phase, offset) in reversed(list(enumerate(life, 1))):  # arrival order does not matter
        timeline.add(make_event(phase, phase, pilot=PILOT, seq=seq, epoch=T0 + offset))
    pilot = timeline.pilots[PILOT]
    assert [s["phase"] for s, _, _ in pilot.lifecycle()] == ["boot", "install", "match", "shutdown"]
    assert pilot.last_phase() == "shutdown" and timeline.summary()["last_phase"] == {"shutdown": 1}
    assert [gap for _, gap, _ in pilot.lifecycle()] == [None, -3595.0, 25.0, 60.0]
    line = "".join(timeline.lines()).splitlines()[0]
    assert line.startswith(PILOT + "  2026-11-28T05:00:00.000000Z  boot → install -59.9 min → match +25.0 s")
    assert line.endswith("→ shutdown +1.0 min   [0 log line(s), -58.5 min]")
    phases = json.loads("".join(timeline.json_chunks()))["pilots"][0]["phases"]
    assert [(p["seq"], p["time"]) for p in phases] == [
        (1, "2026-11-28T05:00:00.000000Z"),  # each time as recorded
        (2, "2026-11-28T04:00:05.000000Z"),
        (3, "2026-11-28T04:00:30.000000Z"),
        (4, "2026-11-28T04:01:30.000000Z"),
    ]


def test_the_html_chart_spans_a_stepped_pilot_from_its_earliest_to_its_latest_time():
    from helpers import Page
    from pilotlogger.timeline_html import render

    timeline = Timeline()
    for seq, (phase, offset) in enumerate([("boot", 0), ("install", -3600), ("shutdown", -1800)], 1):
        timeline.add(make_event(phase, phase, pilot=PILOT, seq=seq, epoch=T0 + offset))
    page = Page(render(timeline))
    marks = [a for t, a in page.tags if t == "circle" and a["cy"] == "11"]
    assert [float(a["cx"]) for a in marks] == [900.0, 0.0, 450.0]  # boot latest, install earliest
    (span,) = [a for t, a in page.tags if t == "line"]
    assert (float(span["x1"]), float(span["x2"])) == (0.0, 900.0)
    titles = " ".join(page.text)
    assert "install (-3600.0 s)" in titles and "shutdown (+1800.0 s)" in titles


def test_the_python_api_records_in_seq_order_across_clock_steps(tmp_path, clock):
    """pilotlogger.emit() and the logging Handler, the clock stepped between calls."""
    import logging

    import pilotlogger

    spool_dir = str(tmp_path / "s")
    env = clean_env(PILOTLOG_SPOOL=spool_dir, PILOTLOG_PILOT_UUID=PILOT)
    saved = os.environ.copy()
    os.environ.update(env)
    log = logging.getLogger("clock-steps")
    log.setLevel(logging.INFO)
    handler = pilotlogger.Handler(ship_every=3600)
    log.addHandler(handler)
    try:
        for phase, offset in LIFE:
            clock.offset = offset
            if phase == "log":
                log.info("a line at %+d s", offset)
            else:
                assert pilotlogger.emit(phase, "%s at %+d s" % (phase, offset)) is not None
    finally:
        log.removeHandler(handler)
        handler.close()
        os.environ.clear()
        os.environ.update(saved)
    sent = replay_in_process(env)
    assert [e["phase"] for e in sent] == [phase for phase, _ in LIFE]
    assert [e["seq"] for e in sent] == sorted(e["seq"] for e in sent)
    assert [e["time"] for e in sent] == [
        make_event("boot", pilot=PILOT, epoch=T0 + offset)["time"] for _, offset in LIFE
    ]  # each as the clock read then
    timeline = Timeline()
    for event in sent:
        timeline.add(parse(json.dumps(event)))
    assert [s["phase"] for s, _, _ in timeline.pilots[PILOT].lifecycle()] == [
        "boot",
        "install",
        "power",
        "match",
        "shutdown",
    ]


def test_the_bundle_with_its_clock_stepped_back_and_forward(pilotlog, tmp_path):
    """The CLI as a pilot runs it, with a real clock step of its own processes: one-liners, then
    the wrapper whose child steps the clock back an hour mid-run (the wrapper's own shutdown
    event is recorded under the stepped clock), then forward."""
    clock = SteppedClock(tmp_path)
    env = dict(clock.env(), PILOTLOG_PILOT_UUID=PILOT)
    assert pilotlog("emit", "boot", "-m", "booted", env=env).returncode == 0
    clock.step_to(7200)
    assert pilotlog("emit", "install", env=env).returncode == 0
    child = "echo -3600 > %s.tmp && mv %s.tmp %s && %s -I -S %s emit match" % (
        clock.file,
        clock.file,
        clock.file,
        pilotlog.python,
        pilotlog.bundle,
    )
    p = pilotlog("run", "--", "sh", "-c", child, env=env)
    assert p.returncode == 0, p.stderr
    status = json.loads(pilotlog("status", "--json", env=env).stdout)
    replayed = pilotlog("replay", env=env)
    assert replayed.returncode == 0, replayed.stderr
    sent = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert [e["phase"] for e in sent] == ["boot", "install", "boot", "match", "shutdown"]
    assert [e["seq"] for e in sent] == [1, 2, 3, 4, 5]
    times = [e["time"] for e in sent]
    assert times[0] < times[1] < times[2] and times[4] < times[0] and times[3] < times[0]  # +2 h, then -1 h
    assert (status["oldest"], status["newest"]) == (times[0], times[4])
    events_file = tmp_path / "replayed.jsonl"
    events_file.write_text(replayed.stdout)
    report = pilotlog("timeline", str(events_file))
    assert report.returncode == 0, report.stderr
    (line,) = [x for x in report.stdout.splitlines() if x.startswith(PILOT)]
    assert "  boot → install +2.0 h → boot +" in line and " → match -3.0 h → shutdown +" in line, line
    assert "last phase: shutdown 1" in report.stdout  # not "boot", the earliest time
