"""Figures of the scale suite, and the paper model they give for a grid's day (issue 16).

Tests call ``measure(key, value, unit, how)``; the session prints one table, and ``make scale``
(PILOTLOG_SCALE_REPORT=docs/scale.md) writes it, with the model, between the markers of that
file.  ``size(reduced, full)`` picks the burst size: ``make test`` runs the reduced one.
"""

import collections
import os
import platform
import time

FULL = os.environ.get("PILOTLOG_SCALE") == "full"
BEGIN, END = "<!-- measured -->", "<!-- results -->"
MEASURED = collections.OrderedDict()

# The day the model is for: 100,000 concurrent pilots, each living a day, ~50 events each.
PILOTS = 100000
EVENTS_PER_PILOT = 50
DAY = 86400.0
BURST = 10  # a VO's start-up: ten times the average rate


def size(reduced: int, full: int) -> int:
    return full if FULL else reduced


def measure(key: str, value: float, unit: str, how: str) -> None:
    MEASURED[key] = (value, unit, how)


def value(key: str, default=None):
    return MEASURED[key][0] if key in MEASURED else default


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
    lines = [
        "Run of %s: %s size, Python %s, %s, %d cores."
        % (
            time.strftime("%Y-%m-%d"),
            "full" if FULL else "reduced (CI)",
            platform.python_version(),
            platform.platform(),
            os.cpu_count() or 0,
        ),
        "",
        "| figure | value | unit | how it was measured |",
        "|---|---|---|---|",
    ]
    for key, (v, unit, how) in MEASURED.items():
        lines.append("| %s | %s | %s | %s |" % (key, _number(v), unit, how.replace("|", "\\|")))
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
