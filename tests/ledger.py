"""The fault suite's ledger: each fault test records its trials, the session prints one table.

Every row says what was done to pilotlog, how many times, and what the two promises
came to: events lost (must be 0), the pilot-visible exit code (must be what the pilot
expects), the longest trial (bounded) and the one stderr line the operator got.

``make faults`` sets PILOTLOG_FAULTS=full (the full trial counts) and
PILOTLOG_FAULTS_REPORT=docs/reliability.md (the table is written there); ``make test``
runs the reduced counts that fit CI and prints the same table.
"""

import os
import platform
import re
import time

FULL = os.environ.get("PILOTLOG_FAULTS") == "full"
MARKER = "<!-- results -->"
ROWS = []


def trials(reduced: int, full: int) -> int:
    """The trial count for this run: ``full`` under ``make faults``, else ``reduced``."""
    return full if FULL else reduced


def record(area: str, fault: str, trials: int, lost: int, exit_ok: bool, seconds: float, line: str = "",
           extra: str = "") -> None:
    """One row.  Call it before asserting, so a failing trial shows in the table too."""
    ok = lost == 0 and exit_ok
    line = re.sub(r"/tmp/[^ ;,)]*/(spool|fs)\b", r"…/\1", line)  # the test's temporary paths are noise
    ROWS.append((area, fault, trials, lost, "as expected" if exit_ok else "WRONG", "%.1f" % seconds,
                 (line[:150] + "…") if len(line) > 150 else line, extra, "ok" if ok else "**FAILED**"))


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
    header = ("area", "fault", "trials", "lost", "exit code", "longest (s)", "what the operator read", "notes",
              "outcome")
    lines = [
        "Run of %s: %s counts, Python %s, %s." % (
            time.strftime("%Y-%m-%d"), "full" if FULL else "reduced (CI)", platform.python_version(),
            platform.platform()),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in ROWS:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |")
    return "\n".join(lines) + "\n"


def write_report(path: str) -> None:
    """Replace what follows the results marker in ``path`` with this run's table."""
    with open(path) as f:
        head = f.read().split(MARKER)[0]
    with open(path, "w") as f:
        f.write(head + MARKER + "\n\n" + markdown())
