"""Timelines from events (no broker), the HTML page, and the certificate reader doctor uses."""

import calendar
import json
import subprocess
import time

from helpers import Page
from pilotlogger.events import make_event
from pilotlogger.timeline import Timeline
from pilotlogger.timeline_html import render
from pilotlogger.x509 import first_certificate

T0 = calendar.timegm((2026, 11, 28, 5, 0, 0))


def event(pilot, phase, at, seq, status="info", message=""):
    return make_event(phase, message or phase, status, pilot=pilot, seq=seq, epoch=T0 + at)


def sample():
    events = [
        event("p1", "boot", 0, 1),
        event("p1", "log", 1, 2),
        event("p1", "install", 2, 3),
        event("p1", "match", 62, 4),
        event("p1", "shutdown", 3662, 5),
        event("p2", "boot", 10, 1),
        event("p2", "install", 15, 2, "error", "install failed: <disk> full"),
        event("p3", "boot", 20, 1),
        event("p3", "nomatch", 50, 2, "warning"),
    ]
    return events


def test_lifecycles_are_ordered_timed_and_deduplicated():
    timeline = Timeline()
    events = sample()
    for e in reversed(events + events[:3]):  # any order, three duplicates
        timeline.add(e)
    timeline.add(None)  # a message that was not a pilotlog event
    p1 = timeline.pilots["p1"]
    assert [(e["phase"], gap) for e, gap, _ in p1.lifecycle()] == [
        ("boot", None),
        ("install", 2.0),
        ("match", 60.0),
        ("shutdown", 3600.0),
    ]
    assert p1.log_lines == 1
    assert timeline.summary() == {
        "pilots": 3,
        "events": 9,
        "duplicates_dropped": 3,
        "not_pilotlog_events": 1,
        "last_phase": {"shutdown": 1, "install": 1, "nomatch": 1},
        "booted_never_matched": ["p2", "p3"],
        "failures_by_message": {"install failed: <disk> full": 1},
    }
    text = "".join(timeline.lines())
    assert "p1  2026-11-28T05:00:00.000000Z  boot → install +2.0 s → match +1.0 min → shutdown +1.0 h" in text
    assert "p2  2026-11-28T05:00:10.000000Z  boot → install! +5.0 s" in text
    assert "booted but never matched: 2 (p2, p3)" in text
    document = json.loads("".join(timeline.json_chunks()))
    assert [p["pilot"] for p in document["pilots"]] == ["p1", "p2", "p3"]
    assert document["summary"] == timeline.summary()


def test_html_page_is_self_contained_and_escapes_what_pilots_wrote():
    timeline = Timeline()
    for e in sample() + [event("p4", "boot", 30, 1, message="<script>alert('x')</script>")]:
        timeline.add(e)
    page = render(timeline)
    parsed = Page(page)
    scripts = [a for t, a in parsed.tags if t == "script"]
    assert scripts == [{}] and "<script>alert" not in page  # our one inline script; the pilot's text is escaped
    assert not any(a.get("src") or a.get("href") for _, a in parsed.tags)  # nothing fetched
    marks = [a for t, a in parsed.tags if t == "circle" and a["cy"] == "11"]  # the legend's sit at cy=6
    assert len(marks) == 9  # one per lifecycle phase (log lines are not phases)
    xs = sorted(float(a["cx"]) for a in marks)
    assert xs[0] == 0.0 and xs[-1] == 900.0  # the first boot and the last shutdown bound the common axis
    assert sum(a["fill"] == "#d62728" for a in marks) == 1  # the one error
    assert "install failed: <disk> full" in " ".join(parsed.text)


def test_certificate_reader_agrees_with_openssl(pki):
    for name in ("client.pem", "proxy.pem", "expired-client.pem"):
        info = first_certificate(pki.path(name))
        out = subprocess.run(
            ["openssl", "x509", "-in", pki.path(name), "-noout", "-enddate", "-subject", "-nameopt", "compat"],
            stdout=subprocess.PIPE,
            universal_newlines=True,
        ).stdout
        end = out.split("notAfter=")[1].splitlines()[0]
        assert info["not_after"] == calendar.timegm(time.strptime(end, "%b %d %H:%M:%S %Y GMT"))
        assert out.split("subject=")[1].strip() == info["subject"]
    assert first_certificate(pki.path("expired-client.pem"))["not_after"] <= time.time()


def test_a_day_of_events_is_held_in_memory_bounded_by_pilots_not_events():
    """Issue 16: per-pilot summaries, never the events; the de-duplication window and the failure
    messages bounded too."""
    import tracemalloc

    from pilotlogger.timeline import MAX_FAILURE_MESSAGES, MAX_STEPS, OTHER_FAILURES

    timeline = Timeline(seen_limit=100)
    timeline.add(event("p", "boot", 0, 1))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20000):  # a chatty pilot: its log lines are counted, not kept
        timeline.add(make_event("log", "line %d" % i, pilot="p", seq=i + 2, epoch=T0 + 1 + i / 1000.0))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 100 * 1024, grown  # 20,000 events of ~400 bytes each would be 8 MB
    for i in range(200):  # a pilot running 200 payloads: the middle of its life is cut, not its ends
        timeline.add(event("p", "match", 100 + i, 30000 + i))
    timeline.add(event("p", "shutdown", 1000, 40000))
    p = timeline.pilots["p"]
    phases = [s["phase"] for s, _, _ in p.lifecycle()]
    assert len(phases) == MAX_STEPS and phases[0] == "boot" and phases[-1] == "shutdown"
    assert p.omitted == 202 - MAX_STEPS and p.log_lines == 20000
    assert "… %d more …" % p.omitted in "".join(timeline.lines())
    for i in range(MAX_FAILURE_MESSAGES + 50):  # distinct failure messages: the first thousand, then one line
        timeline.add(event("q%d" % i, "install", 5, 1, "error", "failed on node %d" % i))
    failures = timeline.summary()["failures_by_message"]
    assert len(failures) == MAX_FAILURE_MESSAGES + 1 and failures[OTHER_FAILURES] == 50
    assert timeline.summary()["events"] == 1 + 20000 + 201 + MAX_FAILURE_MESSAGES + 50


def test_deduplication_window_remembers_at_least_the_newest_half_of_its_limit():
    from pilotlogger.dedup import Seen

    seen = Seen(limit=10)
    assert all(seen.add("id%d" % i) for i in range(5))
    assert not seen.add("id0") and not seen.add("id4")  # duplicates within the window
    for i in range(5, 40):
        assert seen.add("id%d" % i)
        assert not seen.add("id%d" % i)
        assert all(not seen.add("id%d" % j) for j in range(max(0, i - 4), i + 1))  # the newest 5 are always known
    assert seen.add("id0")  # long gone: the window is bounded
    assert len(seen.current) + len(seen.previous) <= 10


def test_one_event_dated_year_0000_does_not_deny_the_report(pilotlog, tmp_path):
    """Issue 24, defect 3: check_time took year 0000, parse_rfc3339 raised, timeline exited 1 with no
    report (text and --html).  Now validate refuses it: counted as not a pilotlog event."""
    good = sample()
    bad = dict(good[0], id=good[0]["id"][:-1] + ("0" if good[0]["id"][-1] != "0" else "1"))
    bad["time"] = "0000-01-01T00:00:00.000000Z"
    events_file = tmp_path / "day.jsonl"
    events_file.write_text("".join(json.dumps(e) + "\n" for e in good + [bad]))
    for options in ([], ["--html", str(tmp_path / "day.html")]):
        p = pilotlog("timeline", str(events_file), *options)
        assert p.returncode == 0 and "internal error" not in p.stderr, p.stderr
        assert "pilots: 3, events: 9 (0 duplicate(s) dropped, 1 message(s) not pilotlog events)" in p.stdout
    page = (tmp_path / "day.html").read_text(encoding="utf-8")
    assert "1 message(s) not pilotlog events" in page and page.count('class="pilot-row"') == 3
