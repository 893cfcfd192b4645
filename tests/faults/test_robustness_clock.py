"""Generative robustness, the clock-step class (issue 24): hypothesis draws a pilot's life whose
wall clock steps back and forward — by a second, an hour, years, to 1970 (an RTC reset), before
it, to year 2262 — between and inside its processes, on Python 3.6.15 and 3.13.0.  (2262 is as
far as any Python reads a clock: CPython keeps time in 64-bit nanoseconds and does not start
past it.)

One pilot, one spool, every action a real process of the bundle with its own clock stepped
(tests/clock.py: LD_PRELOAD; the machine's clock is never touched):

* ``emit``: a one-liner recorded at the drawn clock;
* ``run``: the wrapper records ``boot``, its child steps the clock of the running wrapper and
  emits, the wrapper records ``shutdown`` under the stepped clock;
* ``api``: a Python program with ``pilotlogger.emit()`` and the logging ``Handler``, its
  clock stepped between calls.

Then ``pilotlog replay`` (to stdout) and ``pilotlog timeline`` over what it sent.  The promise,
checked on every example: no record lost (every acknowledged event delivered, once); replay
in acceptance (seq) order; each time as the stepped clock read it; ``timeline`` lists the pilot's phases in that order and its
last phase is the last recorded; no traceback; no Python API call blocks 0.5 s (the spool
is on tmpfs: a clock step, not the disk, is what is measured).
"""

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ledger
from clock import SteppedClock
from helpers import build_bundle, clean_env, pyenv_python
from pilotlogger.events import FIRST_SECOND, LAST_SECOND, parse_micros

PYTHONS = ("3.6.15", "3.13.0")
EXAMPLES = ledger.trials(8, 80)  # per Python: ~1 minute in make test
PILOT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
PYTHON_LAST_SECOND = 2**63 // 10**9 - 86400  # 2262-04-10: a day short of what CPython's clock holds
SLOWEST_CALL = 0.5  # seconds a Python API call may take
TALLY = ledger.tally()

#: Clock offsets (seconds) a node sees: chronyd's small and large steps, an RTC reset to 1970, a
#: clock before 1970 and one at 2262 (the last three relative to now, resolved per action).
offsets = st.one_of(
    st.sampled_from([0, -1, 1, -60, 60, -3600, 3600, -86400, 7 * 86400, -365 * 86400, 10 * 365 * 86400]),
    st.integers(-400000000, 400000000),
    st.sampled_from(["1970", "before 1970", "2262"]),
)
PHASES = ("boot", "install", "power", "os", "match", "nomatch", "shutdown", "log", "custom.step")
action = st.one_of(
    st.tuples(st.just("emit"), offsets, st.sampled_from(PHASES)),
    st.tuples(st.just("run"), offsets, offsets),
    st.tuples(st.just("api"), st.lists(st.tuples(offsets, st.sampled_from(PHASES)), min_size=1, max_size=5)),
)

API = r"""
import json, logging, os, sys, time
sys.path.insert(0, sys.argv[1])
import pilotlogger
clock = os.environ["CLOCKSHIFT_FILE"]
log = logging.getLogger("api")
log.setLevel(logging.INFO)
handler = pilotlogger.Handler()
log.addHandler(handler)
longest, kept = 0.0, []
for offset, phase, message in json.loads(sys.argv[2]):
    with open(clock + ".tmp", "w") as f:
        f.write(repr(float(offset)))
    os.rename(clock + ".tmp", clock)  # this process's wall clock steps here
    started = time.monotonic()
    if phase == "log":
        log.info(message)
        kept.append(True)
    else:
        kept.append(pilotlogger.emit(phase, message) is not None)
    longest = max(longest, time.monotonic() - started)
handler.close()
print(json.dumps({"kept": kept, "longest": longest}))
"""


def resolve(offset) -> float:
    """A drawn offset in seconds from now (the special ones depend on now)."""
    now = time.time()
    return {"1970": 5.0 - now, "before 1970": -86400.0 - now, "2262": PYTHON_LAST_SECOND - now}.get(offset, offset)


def window(started: float, ended: float, offset: float) -> tuple:
    """The microseconds an event recorded between two real times under ``offset`` may carry (clamped
    as rfc3339 writes a clock outside the years 0001-9999)."""

    def clamp(seconds):
        return min(max(seconds, FIRST_SECOND), LAST_SECOND + 0.999999)

    return int((clamp(started + offset) - 0.001) * 1e6), int((clamp(ended + offset) + 0.001) * 1e6)


class Pilot:
    """One drawn pilot life: its spool on tmpfs, its clock, and what it was told was recorded."""

    def __init__(self, python: str, bundle: str, base: str, cache: str):
        self.python, self.bundle, self.base = python, bundle, base
        self.clock = SteppedClock(base)
        self.env = clean_env(
            PILOTLOG_SPOOL=os.path.join(base, "spool"),
            PILOTLOG_PILOT_UUID=PILOT,
            PILOTLOG_CACHE=cache,
            **self.clock.env(),
        )
        self.expected = []  # (phase, message or None, (lowest, highest) micros) in acceptance order
        self.broken, self.longest, self.slowest_call, self.n = "", 0.0, 0.0, 0

    def process(self, label: str, *args):
        """The pilot's Python with these arguments, under its clock; a traceback breaks the promise."""
        started = time.monotonic()
        p = subprocess.run(
            [self.python, "-I", "-S"] + list(args),
            env=self.env,
            cwd=self.base,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            timeout=120,
        )
        self.longest = max(self.longest, time.monotonic() - started)
        if "Traceback" in p.stderr or "internal error" in p.stderr:
            self.broken = self.broken or "%s: %s" % (label, p.stderr[-200:])
        return p

    def cli(self, *args):
        return self.process(args[0], self.bundle, *args)

    def message(self) -> str:
        self.n += 1
        return "record %d" % self.n

    def emit(self, offset, phase):
        offset, message = resolve(offset), self.message()
        self.clock.step_to(offset)
        started = time.time()
        p = self.cli("emit", phase, "-m", message)
        if p.returncode != 0:
            self.broken = self.broken or "emit exit %d: %s" % (p.returncode, p.stderr[-200:])
        else:
            self.expected.append((phase, message, window(started, time.time(), offset)))

    def run(self, before, after):
        before, after, message = resolve(before), resolve(after), self.message()
        self.clock.step_to(before)
        step = "echo %r > %s.tmp && mv %s.tmp %s" % (after, self.clock.file, self.clock.file, self.clock.file)
        child = '%s && "$0" -I -S "$1" emit match -m "%s"' % (step, message)
        started = time.time()
        p = self.cli("run", "--", "sh", "-c", child, self.python, self.bundle)
        ended = time.time()
        if p.returncode != 0:
            self.broken = self.broken or "run exit %d: %s" % (p.returncode, p.stderr[-200:])
        self.expected += [
            ("boot", None, window(started, ended, before)),
            ("match", message, window(started, ended, after)),
            ("shutdown", None, window(started, ended, after)),
        ]

    def api(self, calls):
        plan = [(resolve(offset), phase, self.message()) for offset, phase in calls]
        started = time.time()
        p = self.process("api", "-c", API, self.bundle, json.dumps(plan))
        ended = time.time()
        try:
            result = json.loads(p.stdout)
        except ValueError:
            self.broken = self.broken or "api: %s" % p.stderr[-200:]
            return
        self.slowest_call = max(self.slowest_call, result["longest"])
        for (offset, phase, message), kept in zip(plan, result["kept"]):
            if kept:
                self.expected.append((phase, message, window(started, ended, offset)))
            else:
                self.broken = self.broken or "api: %s not kept: %s" % (phase, p.stderr[-200:])

    def verdict(self) -> str:
        """What broke the promise, or ''."""
        self.clock.step_to(0)
        replayed = self.cli("replay")
        sent = [json.loads(line) for line in replayed.stdout.splitlines()]
        if self.broken:
            return self.broken
        if len(sent) != len(self.expected):
            return "%d records acknowledged, %d replayed: %s" % (len(self.expected), len(sent), replayed.stderr[-200:])
        seqs = [e["seq"] for e in sent]
        if seqs != sorted(set(seqs)):
            return "replay order is not seq order: %s" % seqs
        for event, (phase, message, (low, high)) in zip(sent, self.expected):
            if event["phase"] != phase or message not in (None, event["message"]):
                return "replayed %s %r where %s %r was recorded" % (event["phase"], event["message"], phase, message)
            if not low <= parse_micros(event["time"]) <= high:
                return "%s recorded at %s, outside the clock's reading" % (phase, event["time"])
        events_file = os.path.join(self.base, "replayed.jsonl")
        with open(events_file, "w") as f:
            f.write(replayed.stdout)
        report = self.cli("timeline", "--json", events_file)
        lifecycle = [phase for phase, _, _ in self.expected if phase != "log"]
        (pilot,) = json.loads(report.stdout)["pilots"]
        if [p["phase"] for p in pilot["phases"]] != lifecycle or pilot["last_phase"] != (lifecycle or ["log"])[-1]:
            return "timeline: %s, last %s; recorded %s" % (
                [p["phase"] for p in pilot["phases"]],
                pilot["last_phase"],
                lifecycle,
            )
        if self.slowest_call >= SLOWEST_CALL:
            return "a Python API call took %.2f s" % self.slowest_call
        return ""


def drawn_offsets(life):
    for kind, *drawn in life:
        if kind == "api":
            yield from (offset for offset, _ in drawn[0])
        else:
            yield from drawn[:1] if kind == "emit" else drawn


@pytest.fixture(scope="module", autouse=True)
def ledger_rows():
    yield
    TALLY.record("robustness", "hypothesis; Python %s; lost = examples that broke an invariant" % " and ".join(PYTHONS))


@pytest.mark.parametrize("version", PYTHONS)
@ledger.generated(EXAMPLES)
@given(life=st.lists(action, min_size=1, max_size=6))
def test_a_pilot_whose_clock_steps_loses_nothing_and_keeps_its_order(shm, version, life):
    base = tempfile.mkdtemp(prefix="life-", dir=shm)
    try:
        pilot = Pilot(pyenv_python(version), str(build_bundle()), base, os.path.join(shm, "cache-" + version))
        for kind, *drawn in life:
            getattr(pilot, kind)(*drawn)
        broken = pilot.verdict()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    faults = {"clock steps: every example"} | {"clock steps: %s" % kind for kind, *_ in life}
    if any(isinstance(offset, str) for offset in drawn_offsets(life)):
        faults.add("clock steps: to 1970, before it, to 2262")
    TALLY.count(faults, broken, pilot.longest)
    assert not broken, (version, life, broken)
