"""Figures of the scale suite, and the paper model they give for a grid's day (issue 16).

Tests call ``measure(key, value, unit, how)``; the session prints one table, and ``make scale``
(PILOTLOG_SCALE_REPORT=docs/scale.md) writes it, with the model, between the markers of that
file.  ``size(reduced, full)`` picks the burst size: ``make test`` runs the reduced one.

``make scale`` runs the suite three times in one session: each run adds its figures to
PILOTLOG_SCALE_RUNS (a JSON-lines file) and the table shows, per figure, the median of the
runs so far with their range; the model is computed from the medians.
"""

import collections
import json
import os
import platform
import statistics
import time

FULL = os.environ.get("PILOTLOG_SCALE") == "full"
BEGIN, END = "<!-- measured -->", "<!-- results -->"
MEASURED = collections.OrderedDict()  # key -> (value, unit, how) of this run
RUNS_FILE = os.environ.get("PILOTLOG_SCALE_RUNS")
RUNS: list = []  # each run's {key: value}, this one last (see record_run)

# The day the model is for: 100,000 concurrent pilots, each living a day, ~50 events each.
PILOTS = 100000
EVENTS_PER_PILOT = 50
DAY = 86400.0
BURST = 10  # a VO's start-up: ten times the average rate


def size(reduced: int, full: int) -> int:
    return full if FULL else reduced


def measure(key: str, value: float, unit: str, how: str) -> None:
    MEASURED[key] = (value, unit, how)


def record_run() -> None:
    """Add this run's figures to RUNS_FILE (when set) and load every run recorded there."""
    RUNS[:] = []
    if RUNS_FILE:
        with open(RUNS_FILE, "a") as f:
            f.write(json.dumps({k: v for k, (v, _, _) in MEASURED.items()}) + "\n")
        with open(RUNS_FILE) as f:
            RUNS.extend(json.loads(line) for line in f if line.strip())
    else:
        RUNS.append({k: v for k, (v, _, _) in MEASURED.items()})


def values(key: str) -> list:
    """This figure in every recorded run that measured it."""
    return [run[key] for run in RUNS if key in run] or ([MEASURED[key][0]] if key in MEASURED else [])


def value(key: str, default=None):
    """The median of the runs (this run's figure when it is the only one)."""
    found = values(key)
    return statistics.median(found) if found else default


def model() -> list:
    """(quantity, average, at a 10x start-up burst, what it rests on) rows."""
    rows = []
    events_s = PILOTS * EVENTS_PER_PILOT / DAY
    starts_s = PILOTS / DAY
    rows.append(("events/s into the brokers", events_s, events_s * BURST, "100,000 pilots x 50 events a day"))
    conns = value("stomp.connections_per_pilot")
    if conns is not None:
        rows.append(
            (
                "broker connections (TLS handshakes)/s",
                starts_s * conns,
                starts_s * conns * BURST,
                "%.1f connections per pilot lifecycle, measured" % conns,
            )
        )
    cpu_pilot = value("stomp.broker_cpu_ms_per_pilot")
    if cpu_pilot is not None:
        cores = starts_s * cpu_pilot / 1000.0
        rows.append(
            (
                "broker cores busy (cluster total)",
                cores,
                cores * BURST,
                "%.1f ms of broker CPU per pilot lifecycle (its TLS handshakes and messages), measured" % cpu_pilot,
            )
        )
    http = value("https.requests_per_pilot")
    if http is not None:
        rows.append(
            (
                "HTTPS requests/s (serve or DIRAC)",
                starts_s * http,
                starts_s * http * BURST,
                "%.1f requests per pilot lifecycle, measured" % http,
            )
        )
    size_b = value("event_bytes", 400)
    rows.append(
        (
            "queue disk per node if nothing consumes (GB/day)",
            events_s * DAY * size_b / 1e9,
            None,
            "~%d B per event; a quorum queue keeps every message on each of its 3 nodes" % size_b,
        )
    )
    return rows


def _number(v) -> str:
    if v is None:
        return "-"
    return ("%.3g" % v) if abs(v) < 100 else "{:,.0f}".format(v)


def markdown() -> str:
    runs = max(1, len(RUNS))
    lines = [
        "%s of %s: %s size, Python %s, %s, %d cores%s."
        % (
            "%d runs" % runs if runs > 1 else "Run",
            time.strftime("%Y-%m-%d"),
            "full" if FULL else "reduced (CI)",
            platform.python_version(),
            platform.platform(),
            os.cpu_count() or 0,
            "; each figure the median of the runs, with their range" if runs > 1 else "",
        ),
        "",
        "| figure | %s | unit | how it was measured |" % ("median [range]" if runs > 1 else "value"),
        "|---|---|---|---|",
    ]
    for key, (_, unit, how) in MEASURED.items():
        found = values(key)
        shown = _number(statistics.median(found))
        if len(found) > 1:
            shown += " [%s–%s]" % (_number(min(found)), _number(max(found)))
        lines.append("| %s | %s | %s | %s |" % (key, shown, unit, how.replace("|", "\\|")))
    lines += [
        "",
        "Paper model for %s concurrent pilots x %d events per pilot-day:" % ("{:,}".format(PILOTS), EVENTS_PER_PILOT),
        "",
        "| quantity | average | 10x start-up burst | from |",
        "|---|---|---|---|",
    ]
    for name, average, burst, why in model():
        lines.append("| %s | %s | %s | %s |" % (name, _number(average), _number(burst), why))
    return "\n".join(lines) + "\n"


def write_report(path: str) -> None:
    """Replace what stands between the two markers of ``path`` with this run's figures."""
    with open(path) as f:
        text = f.read()
    head, rest = text.split(BEGIN)
    tail = rest.split(END, 1)[1] if END in rest else ""
    with open(path, "w") as f:
        f.write(head + BEGIN + "\n\n" + markdown() + "\n" + END + tail)
