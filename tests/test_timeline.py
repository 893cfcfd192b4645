"""Timelines from events (no broker), the HTML page, and the certificate reader doctor uses."""

import calendar
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
        event("p1", "boot", 0, 1), event("p1", "log", 1, 2), event("p1", "install", 2, 3),
        event("p1", "match", 62, 4), event("p1", "shutdown", 3662, 5),
        event("p2", "boot", 10, 1), event("p2", "install", 15, 2, "error", "install failed: <disk> full"),
        event("p3", "boot", 20, 1), event("p3", "nomatch", 50, 2, "warning"),
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
        ("boot", None), ("install", 2.0), ("match", 60.0), ("shutdown", 3600.0)]
    assert p1.log_lines == 1
    assert timeline.summary() == {
        "pilots": 3, "events": 9, "duplicates_dropped": 3, "not_pilotlog_events": 1,
        "last_phase": {"shutdown": 1, "install": 1, "nomatch": 1},
        "booted_never_matched": ["p2", "p3"],
        "failures_by_message": {"install failed: <disk> full": 1},
    }
    text = timeline.text()
    assert "p1  2026-11-28T05:00:00.000000Z  boot → install +2.0 s → match +1.0 min → shutdown +1.0 h" in text
    assert "p2  2026-11-28T05:00:10.000000Z  boot → install! +5.0 s" in text
    assert "booted but never matched: 2 (p2, p3)" in text
    assert [p["pilot"] for p in timeline.as_dict()["pilots"]] == ["p1", "p2", "p3"]


def test_html_page_is_self_contained_and_escapes_what_pilots_wrote():
    timeline = Timeline()
    for e in sample() + [event("p4", "boot", 30, 1, message="<script>alert('x')</script>")]:
        timeline.add(e)
    page = render(timeline)
    parsed = Page(page)
    tags = [t for t, _ in parsed.tags]
    assert "script" not in tags and "<script>" not in page
    assert not any(a.get("src") or a.get("href") for _, a in parsed.tags)
    marks = [a for t, a in parsed.tags if t == "circle" and a["cy"] == "11"]  # the legend's sit at cy=6
    assert len(marks) == 9  # one per lifecycle phase (log lines are not phases)
    xs = sorted(float(a["cx"]) for a in marks)
    assert xs[0] == 0.0 and xs[-1] == 900.0  # the first boot and the last shutdown bound the common axis
    assert sum(a["fill"] == "#d62728" for a in marks) == 1  # the one error
    assert "install failed: <disk> full" in " ".join(parsed.text)


def test_certificate_reader_agrees_with_openssl(pki):
    for name in ("client.pem", "proxy.pem", "expired-client.pem"):
        info = first_certificate(pki.path(name))
        out = subprocess.run(["openssl", "x509", "-in", pki.path(name), "-noout", "-enddate", "-subject",
                              "-nameopt", "compat"], stdout=subprocess.PIPE, universal_newlines=True).stdout
        end = out.split("notAfter=")[1].splitlines()[0]
        assert info["not_after"] == calendar.timegm(time.strptime(end, "%b %d %H:%M:%S %Y GMT"))
        assert out.split("subject=")[1].strip() == info["subject"]
    assert first_certificate(pki.path("expired-client.pem"))["not_after"] <= time.time()
