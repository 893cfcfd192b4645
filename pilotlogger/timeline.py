"""Pilot lifecycles from events: per pilot, the phases in order with the time between them,
and a summary for the people reading the events (``pilotlog timeline``).

Input is events in any order and with duplicates (at-least-once delivery); they are
de-duplicated by id and ordered by seq per pilot — the order its spool accepted them in,
whatever its clock did (a clock stepped back shows as a negative gap, not as a reordered
life; time breaks ties).  ``log`` events are counted but kept out of the lifecycle line:
they are the pilot's free text, not its phases.  What is not a valid event (``validate``:
a time no calendar has, a seq out of range, bad JSON…) was counted by the caller as not a
pilotlog event; the text kept from valid ones (message, site) is made encodable (a lone
surrogate becomes U+FFFD), so no page or JSON document fails to be written.

Memory is bounded for a grid's day (100,000 pilots x 50 events): no event is kept, only a
summary per pilot — its lifecycle steps (at most ``MAX_STEPS``, first and last always kept,
each message cut to ``MESSAGE_CHARS``), its log-line count, its site and first time — plus
a de-duplication window of the newest ``dedup.SEEN_LIMIT`` ids (duplicates arrive close
together: a replay re-sends at most its window) and at most ``MAX_FAILURE_MESSAGES``
distinct failure messages.  Output is written as it is produced (``lines``, ``json_chunks``).
"""

import bisect
import collections
import sys

from .dedup import SEEN_LIMIT, Seen
from .events import clean_text, escape_controls, format_micros, parse_micros, to_json

LIFECYCLE_SKIP = ("log",)
MAX_STEPS = 64  # lifecycle steps kept per pilot; a pilot running many payloads repeats match
MESSAGE_CHARS = 200  # of each step's message
MAX_FAILURE_MESSAGES = 1000  # distinct failure messages counted; the rest as one line
OTHER_FAILURES = "(other failure messages)"


class Step(tuple):
    """One lifecycle event, compact: ``(seq, micros, phase, status, message)``; sorts in seq order.
    Reads like an event (``step["phase"]``, ``step["time"]`` in RFC 3339 as recorded: the
    microseconds are exact for any year) for the renderers."""

    __slots__ = ()
    _FIELDS = {"seq": 0, "micros": 1, "phase": 2, "status": 3, "message": 4}

    def __getitem__(self, key):
        if key == "time":
            return format_micros(tuple.__getitem__(self, 1))
        return tuple.__getitem__(self, self._FIELDS[key] if isinstance(key, str) else key)


class Pilot:
    __slots__ = ("pilot", "steps", "log_lines", "first", "site", "omitted", "booted", "matched")

    def __init__(self, pilot: str):
        self.pilot, self.log_lines, self.site = pilot, 0, ""
        self.steps: list = []
        self.first: "str | None" = None
        self.omitted = 0  # lifecycle steps dropped from the middle past MAX_STEPS
        self.booted = self.matched = False

    def add(self, event: dict) -> None:
        intern = sys.intern
        if self.first is None or event["time"] < self.first:
            self.first = intern(event["time"])  # the same few strings in every step of a burst
        if not self.site:
            self.site = intern(clean_text(event["context"].get("site", "")))
        phase = event["phase"]
        if phase in LIFECYCLE_SKIP:
            self.log_lines += 1
            return
        self.booted = self.booted or phase == "boot"
        self.matched = self.matched or phase == "match"
        bisect.insort(
            self.steps,
            Step(
                (
                    event["seq"],
                    parse_micros(event["time"]),
                    intern(phase),
                    intern(event["status"]),
                    clean_text(event["message"][:MESSAGE_CHARS]),
                )
            ),
        )
        if len(self.steps) > MAX_STEPS:
            del self.steps[MAX_STEPS // 2]  # the middle goes: the start and the end of a life matter most
            self.omitted += 1

    def lifecycle(self) -> list:
        """``[(step, seconds since the previous phase, epoch)]`` for the phases, in seq order
        (a gap is negative where the clock was stepped back)."""
        steps, previous = [], None
        for step in self.steps:
            at = step["micros"]
            steps.append((step, None if previous is None else (at - previous) / 1e6, at / 1e6))
            previous = at
        return steps

    def last_phase(self) -> str:
        return self.steps[-1]["phase"] if self.steps else "log"


class Timeline:
    def __init__(self, seen_limit: int = SEEN_LIMIT):
        self.pilots: dict = {}
        self.seen = Seen(seen_limit)
        self.events = self.duplicates = self.foreign = 0
        self.failures: collections.Counter = collections.Counter()

    def add(self, event) -> None:
        """Take one event (None: a message that was not a pilotlog event, counted)."""
        if event is None:
            self.foreign += 1
            return
        if not self.seen.add(event["id"]):
            self.duplicates += 1
            return
        self.events += 1
        pilot = self.pilots.get(event["pilot"])
        if pilot is None:
            pilot = self.pilots[event["pilot"]] = Pilot(event["pilot"])
        pilot.add(event)
        if event["status"] == "error":
            message = clean_text((event["message"] or event["phase"])[:MESSAGE_CHARS])
            if message in self.failures or len(self.failures) < MAX_FAILURE_MESSAGES:
                self.failures[message] += 1
            else:
                self.failures[OTHER_FAILURES] += 1

    def ordered_pilots(self) -> list:
        return sorted(self.pilots.values(), key=lambda p: p.first)

    def summary(self) -> dict:
        """Counts an operator asks for first: where pilots stopped, who never matched, what failed."""
        last = collections.Counter(p.last_phase() for p in self.pilots.values())
        never = sorted(p.pilot for p in self.pilots.values() if p.booted and not p.matched)
        return {
            "pilots": len(self.pilots),
            "events": self.events,
            "duplicates_dropped": self.duplicates,
            "not_pilotlog_events": self.foreign,
            "last_phase": dict(last.most_common()),
            "booted_never_matched": never,
            "failures_by_message": dict(self.failures.most_common()),
        }

    def json_chunks(self):
        """The JSON document ``{"pilots": [...], "summary": {...}}``, one pilot at a time."""
        yield '{"pilots":['
        for i, p in enumerate(self.ordered_pilots()):
            yield ("," if i else "") + to_json(
                {
                    "pilot": p.pilot,
                    "site": p.site or None,
                    "last_phase": p.last_phase(),
                    "log_lines": p.log_lines,
                    "phases_omitted": p.omitted,
                    "phases": [
                        {
                            "phase": s["phase"],
                            "seq": s["seq"],
                            "time": s["time"],
                            "status": s["status"],
                            "message": s["message"],
                            "after_s": None if gap is None else round(gap, 3),
                        }
                        for s, gap, _ in p.lifecycle()
                    ],
                }
            )
        yield '],"summary":%s}\n' % to_json(self.summary())

    def lines(self):
        """The readable report, one line at a time: a line per pilot, then the summary."""
        for p in self.ordered_pilots():
            steps = p.lifecycle()
            parts = [
                s["phase"]
                + ("!" if s["status"] == "error" else "")
                + ("" if gap is None else " %s%s" % ("" if gap < 0 else "+", duration_text(gap)))
                for s, gap, _ in steps
            ]
            if p.omitted:
                parts.insert(len(parts) // 2, "… %d more …" % p.omitted)
            total = steps[-1][2] - steps[0][2] if len(steps) > 1 else 0.0
            first = steps[0][0]["time"] if steps else p.first
            yield (
                escape_controls(
                    "%s  %s  %s   [%d log line(s), %s]"
                    % (p.pilot, first, " → ".join(parts) or "(log lines only)", p.log_lines, duration_text(total))
                )
                + "\n"
            )
        s = self.summary()
        never = s["booted_never_matched"]
        yield "\n"
        yield "pilots: %d, events: %d (%d duplicate(s) dropped, %d message(s) not pilotlog events)\n" % (
            s["pilots"],
            s["events"],
            s["duplicates_dropped"],
            s["not_pilotlog_events"],
        )
        yield "last phase: %s\n" % escape_controls(", ".join("%s %d" % kv for kv in s["last_phase"].items()) or "-")
        yield "booted but never matched: %d%s\n" % (
            len(never),
            escape_controls(" (%s%s)" % (", ".join(never[:10]), ", …" if len(never) > 10 else "") if never else ""),
        )
        yield "failures by message:%s\n" % ("" if s["failures_by_message"] else " none")
        for message, n in s["failures_by_message"].items():
            yield "  %5d  %s\n" % (n, escape_controls(message))  # worker nodes' text, never raw


def duration_text(value: float) -> str:
    if value < 0:  # the clock was stepped back: shown, not hidden
        return "-" + duration_text(-value)
    if value >= 3600:
        return "%.1f h" % (value / 3600)
    if value >= 60:
        return "%.1f min" % (value / 60)
    return "%.1f s" % value
