"""The fault suite's ledger: each fault test records its trials, the session prints one table.

Every row says what was done to pilotlog, how many times, and what the two promises
came to: events lost (must be 0), the pilot-visible exit code (must be what the pilot
expects), the longest trial (bounded) and the one stderr line the operator got.

The security tests (issue 15) keep a second table the same way: each attack on a
surface, how many trials, how many failed, and what had to hold (:func:`attack`).

``make faults`` sets PILOTLOG_FAULTS=full (the full trial counts) and
PILOTLOG_FAULTS_REPORT=docs/reliability.md (the tables are written there, each between
its markers); ``make test`` runs the reduced counts that fit CI and prints the same tables.
"""

import os
import platform
import re
import time

FULL = os.environ.get("PILOTLOG_FAULTS") == "full"
#: What a table's header says of its trial counts (make scale writes this table too).
COUNTS = "full" if FULL else "full-size scale" if os.environ.get("PILOTLOG_SCALE") == "full" else "reduced (CI)"
MARKER = "<!-- results -->"
SECURITY_MARKER = "<!-- security results -->"
ROWS = []
ATTACKS = {}  # (surface, attack) -> [trials, failed, what had to hold]


def trials(reduced: int, full: int) -> int:
    """The trial count for this run: ``full`` under ``make faults``, else ``reduced``."""
    return full if FULL else reduced


def generated(examples: int):
    """The hypothesis settings of a generative fault test: ``examples`` examples, no deadline per
    example (each runs real processes), fixed examples for CI and random ones under ``make faults``,
    no example database, no health check (the examples are slow by nature)."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=not FULL,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def record(
    area: str, fault: str, trials: int, lost: int, exit_ok: bool, seconds: float, line: str = "", extra: str = ""
) -> None:
    """One row.  Call it before asserting, so a failing trial shows in the table too."""
    ok = lost == 0 and exit_ok
    line = re.sub(r"/tmp/[^ ;,)]*/(spool|fs)\b", r"…/\1", line)  # the test's temporary paths are noise
    ROWS.append(
        (
            area,
            fault,
            trials,
            lost,
            "as expected" if exit_ok else "WRONG",
            "%.1f" % seconds,
            (line[:150] + "…") if len(line) > 150 else line,
            extra,
            "ok" if ok else "**FAILED**",
        )
    )


class tally(dict):
    """The rows of a generative test: fault -> [examples, broken, what broke first, longest (s)]."""

    def count(self, faults, broken: str, seconds: float) -> None:
        """One example, counted under each fault class it had; ``broken``: what it broke ('' if nothing)."""
        for fault in set(faults):
            row = self.setdefault(fault, [0, 0, "", 0.0])
            row[0] += 1
            row[3] = max(row[3], seconds)
            if broken:
                row[1] += 1
                row[2] = row[2] or broken[:140]

    def record(self, area: str, extra: str) -> None:
        """One ledger row per fault class (call at the end of the module)."""
        for fault, (trials, broken, what, longest) in sorted(self.items()):
            record(area, fault, trials, broken, broken == 0, longest, what, extra=extra)


def attack(surface: str, what: str, ok: bool, held: str = "", trials: int = 1) -> bool:
    """Count trial(s) of an attack on a surface; returns ``ok`` so a test can assert it.

    ``held``: what had to hold (the same for every trial of that attack)."""
    row = ATTACKS.setdefault((surface, what), [0, 0, held])
    row[0] += trials
    row[1] += 0 if ok else trials
    return ok


class Stopwatch:
    """Longest of several timed trials."""

    def __init__(self):
        self.longest = 0.0

    def __enter__(self):
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.longest = max(self.longest, time.monotonic() - self._started)


def markdown() -> str:
    header = (
        "area",
        "fault",
        "trials",
        "lost",
        "exit code",
        "longest (s)",
        "what the operator read",
        "notes",
        "outcome",
    )
    lines = [
        "Run of %s: %s counts, Python %s, %s."
        % (
            time.strftime("%Y-%m-%d"),
            COUNTS,
            platform.python_version(),
            platform.platform(),
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in ROWS:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |")
    return "\n".join(lines) + "\n"


def attacked() -> bool:
    """Whether security tests ran (the secrets scan alone, recorded by every session, does not count)."""
    return any(surface != "secrets" for surface, _ in ATTACKS)


def security_markdown() -> str:
    header = ("surface", "attack", "trials", "failed", "what had to hold", "outcome")
    lines = [
        "Run of %s: %s counts, Python %s." % (time.strftime("%Y-%m-%d"), COUNTS, platform.python_version()),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for (surface, what), (trials, failed, held) in ATTACKS.items():
        cells = (surface, what, trials, failed, held, "ok" if not failed else "**FAILED**")
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(path: str) -> None:
    """Replace each table this run made in ``path``: what follows its marker, up to its end
    marker (``<!-- /… -->``) or the end of the file."""
    with open(path) as f:
        text = f.read()
    for marker, rows, render in ((MARKER, ROWS, markdown), (SECURITY_MARKER, attacked(), security_markdown)):
        if not rows or marker not in text:
            continue
        end = "<!-- /" + marker[len("<!-- ") :]
        head, _, tail = text.partition(marker)
        _, found, rest = tail.partition(end)
        text = head + marker + "\n\n" + render() + ("\n" + end + rest if found else "")
    with open(path, "w") as f:
        f.write(text)
