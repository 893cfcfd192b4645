"""A day of events for the people reading them (issue 16): ``timeline`` over a grid's day in
bounded memory at a measured rate, and several ``tail`` consumers sharing one queue.

Full size (make scale): 100,000 pilots x 50 events = 5 M JSON lines; ``make test`` runs 2,000
pilots.  The memory bound asserted is the one the README states.
"""

import json
import os
import subprocess
import sys
import time
import uuid

import ledger
import scale_report
from brokers import PASSWORD, USER
from helpers import Pilotlog, clean_env, fill_spool

PILOTS = scale_report.size(2000, 100000)
EVENTS_PER_PILOT = 50
PHASES = ("boot", "os", "power", "install", "match", "shutdown")
BASE_RSS_MB = 60  # the interpreter and modules (~20 MB), the de-duplication window (200,000 ids, ~25 MB)
KB_PER_PILOT = 2  # per-pilot summary: lifecycle steps and counts (README: "Reading a day of events")


def write_day(path, pilots: int) -> int:
    """``pilots`` x 50 valid events as JSON lines, quickly (a template, not make_event), every
    pilot's events spread over the day; one in twenty pilots fails at install.  Returns bytes."""
    template = (
        '{"v":1,"id":"%s","pilot":"%s","seq":%d,"time":"2026-11-28T%02d:%02d:%02d.%06dZ","phase":"%s",'
        '"status":"%s","source":"pilot","message":"%s","data":{},"context":{"site":"%s"}}\n'
    )
    sites = ("LCG.CERN.cern", "LCG.RAL.uk", "LCG.CNAF.it", "LCG.GRIDKA.de")
    written = 0
    with open(str(path), "w") as f:
        for p in range(pilots):
            pilot = "%08x-0000-4000-8000-%012x" % (p, p)
            start = (p * 7919) % 80000
            failed = p % 20 == 0
            lines = []
            for seq in range(1, EVENTS_PER_PILOT + 1):
                at = start + seq * 7
                if seq <= len(PHASES) and not (failed and seq > 4):
                    phase, status, message = PHASES[seq - 1], "info", PHASES[seq - 1] + " done"
                    if failed and seq == 4:
                        status, message = "error", "install failed: disk full"
                else:
                    phase, status, message = "log", "info", "log line %d" % seq
                h = os.urandom(16).hex()
                event_id = "%s-%s-4%s-a%s-%s" % (h[:8], h[8:12], h[13:16], h[17:20], h[20:32])
                lines.append(
                    template
                    % (
                        event_id,
                        pilot,
                        seq,
                        at // 3600,
                        at // 60 % 60,
                        at % 60,
                        seq,
                        phase,
                        status,
                        message,
                        sites[p % len(sites)],
                    )
                )
            text = "".join(lines)
            written += len(text)
            f.write(text)
    return written


def test_timeline_of_a_day_in_bounded_memory(bundle, tmp_path):
    day = tmp_path / "day.jsonl"
    size = write_day(day, PILOTS)
    started = time.monotonic()
    peak = tmp_path / "peak-kib"
    # Measured by GNU time, whose child it is: a child forked from this (large) test process would
    # inherit its resident size in ru_maxrss, which survives exec.
    with open(str(tmp_path / "timeline.json"), "wb") as out:
        proc = subprocess.run(
            [
                "/usr/bin/time",
                "-f",
                "%M",
                "-o",
                str(peak),
                sys.executable,
                "-I",
                "-S",
                str(bundle),
                "timeline",
                "--json",
                str(day),
            ],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=clean_env(),
            cwd=str(tmp_path),
            timeout=1800,
        )
    seconds = time.monotonic() - started
    rss_mb = int(peak.read_text().split()[-1]) / 1024.0  # KiB
    out = (tmp_path / "timeline.json").read_text()
    summary = json.loads(out)["summary"]
    events = PILOTS * EVENTS_PER_PILOT
    bound = BASE_RSS_MB + KB_PER_PILOT * PILOTS / 1024.0
    ledger.record(
        "day",
        "timeline of %d pilots x %d events (%.0f MB of JSON lines)" % (PILOTS, EVENTS_PER_PILOT, size / 1e6),
        1,
        events - summary["events"],
        proc.returncode == 0,
        seconds,
        extra="peak RSS %.0f MB (bound %.0f MB); %.0f events/s" % (rss_mb, bound, events / seconds),
    )
    assert proc.returncode == 0
    assert summary["pilots"] == PILOTS and summary["events"] == events
    assert summary["last_phase"] == {"shutdown": PILOTS - PILOTS // 20, "install": PILOTS // 20}
    assert summary["failures_by_message"] == {"install failed: disk full": PILOTS // 20}
    assert rss_mb < bound, "timeline held %.0f MB for %d pilots: more than the documented bound" % (rss_mb, PILOTS)
    scale_report.measure(
        "day.timeline_events_per_s",
        events / seconds,
        "1/s",
        "`pilotlog timeline --json` (bundle) over %d pilots x %d events" % (PILOTS, EVENTS_PER_PILOT),
    )
    scale_report.measure(
        "day.timeline_peak_rss_mb",
        rss_mb,
        "MB",
        "its peak RSS (bound %.0f MB = %d MB + %d KB per pilot)" % (bound, BASE_RSS_MB, KB_PER_PILOT),
    )


def test_competing_tail_consumers_share_one_queue(rabbitmq, pki, bundle, tmp_path):
    """Three `tail --json` on one queue: each event printed by exactly one of them, none lost."""
    n = scale_report.size(3000, 30000)
    queue = "/queue/pilotlog-share-" + uuid.uuid4().hex[:8]
    pilotlog = Pilotlog(bundle, tmp_path)
    ids = {e["id"] for e in fill_spool(pilotlog.spool, n)}
    env = dict(
        pilotlog.env,
        PILOTLOG_SINK=rabbitmq.url(queue),
        PILOTLOG_CA_FILE=pki.path("ca.pem"),
        PILOTLOG_USER=USER,
        PILOTLOG_PASSCODE=PASSWORD,
        PILOTLOG_DEADLINE="600",  # deadline bounds a whole replay: 30,000 events on a loaded machine take long
    )
    tails = [
        subprocess.Popen(
            [sys.executable, "-I", "-S", str(bundle), "tail", "--json", "--idle", "5"],
            env=env,
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
        )
        for _ in range(3)
    ]
    time.sleep(2)  # all three subscribed before the events arrive
    started = time.monotonic()
    replay = pilotlog("replay", env=env)
    outputs = [t.communicate(timeout=300) for t in tails]
    seconds = time.monotonic() - started
    printed = [[json.loads(line)["id"] for line in out.splitlines()] for out, _ in outputs]
    every = [i for p in printed for i in p]
    ledger.record(
        "day",
        "3 tail consumers competing on one queue",
        3,
        len(ids - set(every)),
        all(t.returncode == 0 for t in tails),
        seconds,
        extra="%d events; printed %s; %d printed twice"
        % (n, "/".join(str(len(p)) for p in printed), len(every) - len(set(every))),
    )
    assert replay.returncode == 0, replay.stderr
    assert all(t.returncode == 0 for t in tails), [err for _, err in outputs]
    assert set(every) == ids and len(every) == len(ids)  # each event printed once, by one of them
    assert all(len(p) > 0 for p in printed), "the queue was not shared"
    scale_report.measure(
        "day.tail_events_per_s",
        n / (seconds - 5),
        "1/s",
        "3 competing `tail --json` draining one queue while a replay fills it (the 5 s idle stop not counted)",
    )
