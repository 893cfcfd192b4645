"""Pilot lifecycles from events: per pilot, the phases in order with the time between them,
and a summary for the people reading the events (``pilotlog timeline``).

Input is events in any order and with duplicates (at-least-once delivery); they are
de-duplicated by id and ordered by (time, seq) per pilot.  ``log`` events are counted but
kept out of the lifecycle line: they are the pilot's free text, not its phases.
"""

import collections

from .events import escape_controls, parse_rfc3339

LIFECYCLE_SKIP = ("log",)


class Pilot:
    __slots__ = ("pilot", "events", "log_lines")

    def __init__(self, pilot: str):
        self.pilot, self.events, self.log_lines = pilot, [], 0

    def ordered(self) -> list:
        return sorted(self.events, key=lambda e: (e["time"], e["seq"]))

    def lifecycle(self) -> list:
        """``[(event, seconds since the previous phase, epoch)]`` for the phases, in order."""
        steps, previous = [], None
        for event in self.ordered():
            if event["phase"] in LIFECYCLE_SKIP:
                continue
            at = parse_rfc3339(event["time"])
            steps.append((event, None if previous is None else at - previous, at))
            previous = at
        return steps

    def phases(self) -> set:
        return {e["phase"] for e in self.events}

    def last_phase(self) -> str:
        steps = self.lifecycle()
        return steps[-1][0]["phase"] if steps else "log"


class Timeline:
    def __init__(self):
        self.pilots = collections.OrderedDict()
        self.ids = set()
        self.duplicates = self.foreign = 0

    def add(self, event) -> None:
        """Take one event (None: a message that was not a pilotlog event, counted)."""
        if event is None:
            self.foreign += 1
            return
        if event["id"] in self.ids:
            self.duplicates += 1
            return
        self.ids.add(event["id"])
        pilot = self.pilots.setdefault(event["pilot"], Pilot(event["pilot"]))
        pilot.events.append(event)
        if event["phase"] in LIFECYCLE_SKIP:
            pilot.log_lines += 1

    def ordered_pilots(self) -> list:
        return sorted(self.pilots.values(), key=lambda p: p.ordered()[0]["time"])

    def summary(self) -> dict:
        """Counts an operator asks for first: where pilots stopped, who never matched, what failed."""
        last = collections.Counter(p.last_phase() for p in self.pilots.values())
        never = sorted(p.pilot for p in self.pilots.values() if "boot" in p.phases() and "match" not in p.phases())
        failures = collections.Counter(
            e["message"] or e["phase"] for p in self.pilots.values() for e in p.events if e["status"] == "error"
        )
        return {
            "pilots": len(self.pilots),
            "events": len(self.ids),
            "duplicates_dropped": self.duplicates,
            "not_pilotlog_events": self.foreign,
            "last_phase": dict(last.most_common()),
            "booted_never_matched": never,
            "failures_by_message": dict(failures.most_common()),
        }

    def as_dict(self) -> dict:
        pilots = []
        for p in self.ordered_pilots():
            pilots.append({
                "pilot": p.pilot,
                "last_phase": p.last_phase(),
                "log_lines": p.log_lines,
                "phases": [{"phase": e["phase"], "time": e["time"], "status": e["status"], "message": e["message"],
                            "after_s": None if gap is None else round(gap, 3)} for e, gap, _ in p.lifecycle()],
            })
        return {"pilots": pilots, "summary": self.summary()}

    def text(self) -> str:
        lines = []
        for p in self.ordered_pilots():
            steps = p.lifecycle()
            parts = [e["phase"] + ("!" if e["status"] == "error" else "") + ("" if gap is None else " +%s" % _seconds(gap))
                     for e, gap, _ in steps]
            total = steps[-1][2] - steps[0][2] if len(steps) > 1 else 0.0
            first = steps[0][0]["time"] if steps else p.ordered()[0]["time"]
            lines.append("%s  %s  %s   [%d log line(s), %s]" % (
                p.pilot, first, " → ".join(parts) or "(log lines only)", p.log_lines, _seconds(total)))
        s = self.summary()
        lines += [
            "",
            "pilots: %d, events: %d (%d duplicate(s) dropped, %d message(s) not pilotlog events)" % (
                s["pilots"], s["events"], s["duplicates_dropped"], s["not_pilotlog_events"]),
            "last phase: " + (", ".join("%s %d" % kv for kv in s["last_phase"].items()) or "-"),
            "booted but never matched: %d%s" % (len(s["booted_never_matched"]),
                                                 (" (" + ", ".join(s["booted_never_matched"][:10])
                                                  + (", …" if len(s["booted_never_matched"]) > 10 else "") + ")")
                                                 if s["booted_never_matched"] else ""),
            "failures by message:" + ("" if s["failures_by_message"] else " none"),
        ]
        lines += ["  %5d  %s" % (n, message) for message, n in s["failures_by_message"].items()]
        return "\n".join(escape_controls(line) for line in lines) + "\n"  # worker nodes' text, never raw


def _seconds(value: float) -> str:
    if value >= 3600:
        return "%.1f h" % (value / 3600)
    if value >= 60:
        return "%.1f min" % (value / 60)
    return "%.1f s" % value
