"""Generative hostile brokers (issue 24): hypothesis writes the broker's script, the bundle replays to it.

Each example is a spool of 1 to 6 events, drawn settings (``window``, ``receipt_every``), and a
TLS broker on loopback (``fault_tables.ScriptedBroker``) playing a drawn script, one per
connection the replay makes:

* its answer to CONNECT: CONNECTED (a heart-beat header absent, sane, of 400 digits, ``a,b,c``,
  negative), with or without an ERROR, garbage, a MESSAGE or a RECEIPT nobody asked for in the
  same write; or an ERROR, garbage, a hang-up, silence;
* for each SEND it reads, one or two actions: the frame's own receipt, holding it back,
  releasing the held ones in reverse (out of order), repeating the last one, a RECEIPT naming a
  frame that asked for none or nothing ever sent, an ERROR, a MESSAGE, garbage, a hang-up,
  nothing;
* once its steps run out: every receipt asked for, nothing, or a hang-up at each SEND; and past
  the drawn connections, a good broker or one that hangs up at CONNECT.

Every example must hold (``replay --strict``, the bundle, on the oldest and the newest Python):

* no event leaves the spool without a RECEIPT it asked for: by default (``receipt_every=1``) its
  own; with ``receipt_every`` > 1, its own or a later one asked for on the same connection
  (the broker's books, fault_tables.py);
* no traceback, no internal error, exactly one line on stderr;
* the exit code and ``last_error`` tell the truth: 3 with events left and 0 without, the line's
  counts are the spool's, and ``state.json`` holds the line's error exactly when it gives one;
* no event goes out more than MAX_SENDS times;
* the run ends within its deadline, plus a fixed slack for start-up and close (no load shortens
  a deadline: the slack only has to cover what a loaded machine adds).

Counts: ``make test`` runs a modest number of examples per Python; ``PILOTLOG_FAULTS=full``
(``make faults``) ten times as many.  One row of docs/reliability.md per Python.
"""

import collections
import itertools
import json
import os
import re
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ledger
from fault_tables import CONNECTS, HANGUP, ScriptedBroker, error, receipt
from helpers import Pilotlog, fill_spool, pyenv_python, stderr_lines
from pilotlogger.stompcodec import encode_frame
from pilotlogger.stompsession import MAX_SENDS

PYTHONS = ("3.6.15", "3.13.0")
EXAMPLES = ledger.trials(15, 150)  # per Python: about a minute each in make test
TIMEOUT, DEADLINE = 1.0, 2.0
SLACK = 15.0  # start-up, DISCONNECT, exit: what a loaded machine may add to a replay's deadline

#: Python -> [examples, examples that broke an invariant, the first broken one, longest replay (s)]
TALLY = collections.defaultdict(lambda: [0, 0, "", 0.0])

HEARTBEATS = ("0,0", "200,0", "0,200", "9" * 400 + "," + "9" * 400, "a,b,c", "-1,5", None)
GARBAGE = b"GARBAGE\n\n\x00"
MESSAGE = encode_frame("MESSAGE", [("destination", "/queue/x"), ("message-id", "m1"), ("subscription", "s")], b"{}")
UNKNOWN = "no-such-receipt"


# -- the broker's script -----------------------------------------------------------------------

#: What a broker may do at a SEND and go on; and how a connection may end (at most once, at a drawn SEND).
GOING_ON = ["receipt"] * 4 + [
    "hold",
    "hold",
    "release",
    "release",
    "repeat",
    "unasked",
    "unasked",
    "unasked",
    "unknown",
]
GOING_ON += ["message", "nothing", "nothing"]
ENDINGS = [None, None, "error", "garbage", "hang up", "hang up"]
connections = st.fixed_dictionaries(
    {
        "answer": st.sampled_from(["connected"] * 6 + ["error", "garbage", "hang up", "silence"]),
        "heartbeat": st.sampled_from(HEARTBEATS),
        "with_connected": st.sampled_from([None] * 4 + ["error", "garbage", "message", "unasked"]),
        "steps": st.lists(st.lists(st.sampled_from(GOING_ON), min_size=1, max_size=2), max_size=8),
        "ending": st.sampled_from(ENDINGS),
        "ending_at": st.integers(0, 5),
        "then": st.sampled_from(["receipt", "receipt", "nothing", "hang up"]),
    }
)
worlds = st.fixed_dictionaries(
    {
        "events": st.integers(1, 6),
        "window": st.sampled_from([1, 2, 1000, 1000]),  # (a frame asks for no receipt only in a longer write)
        "receipt_every": st.sampled_from([1, 1, 2, 3]),
        "connections": st.lists(connections, min_size=1, max_size=4),
        "beyond": st.sampled_from(["good", "hang up"]),
    }
)


class Script:
    """The drawn script: the n-th connection plays the n-th plan, later ones ``beyond``."""

    GOOD = {
        "answer": "connected",
        "heartbeat": "0,0",
        "with_connected": None,
        "steps": [],
        "ending": None,
        "ending_at": 0,
        "then": "receipt",
    }
    REFUSING = dict(GOOD, answer="hang up")

    def __init__(self, world: dict):
        self.plans = list(world["connections"])
        self.beyond = self.GOOD if world["beyond"] == "good" else self.REFUSING
        self.opened = itertools.count()  # (connections follow one another; next() is atomic anyway)

    def connection(self):
        n = next(self.opened)
        return Player(self.plans[n] if n < len(self.plans) else self.beyond)


class Player:
    """One connection of the script.  An id a RECEIPT names "unasked" is one the client never asks
    for on this connection — a frame it sent without a receipt here, or one never sent at all — so
    that the broker's books (what it confirmed, as the client asked) are exact."""

    def __init__(self, plan: dict):
        self.plan, self.step = plan, 0
        self.held, self.last, self.unasked = [], None, []

    def __call__(self, frame):
        if frame.command in CONNECTS:
            return self.connected()
        if frame.command == "DISCONNECT":
            return receipt(frame.headers.get("receipt", ""))
        asked = frame.headers.get("receipt")
        if asked is None:
            self.unasked.append(frame.headers.get("event_id", UNKNOWN))
        plan, step = self.plan, self.step
        actions = plan["steps"][step] if step < len(plan["steps"]) else [plan["then"]]
        if step == plan["ending_at"] and plan["ending"]:
            actions = actions + [plan["ending"]]
        self.step += 1
        return [self.act(action, asked) for action in actions]

    def connected(self):
        plan = self.plan
        if plan["answer"] != "connected":
            return {"error": error("access refused"), "garbage": GARBAGE, "hang up": HANGUP, "silence": None}[
                plan["answer"]
            ]
        headers = [("version", "1.2")] + ([("heart-beat", plan["heartbeat"])] if plan["heartbeat"] else [])
        extra = {
            None: b"",
            "error": error("going away"),
            "garbage": GARBAGE,
            "message": MESSAGE,
            "unasked": receipt(UNKNOWN),
        }
        return encode_frame("CONNECTED", headers) + extra[plan["with_connected"]]

    def act(self, action: str, asked):
        if action == "receipt":
            return self.receipt(asked) if asked else None
        if action == "hold":
            self.held += [asked] if asked else []
            return None
        if action == "release":
            held, self.held = self.held, []
            return [self.receipt(r) for r in reversed(held)]
        if action == "repeat":
            return self.receipt(self.last) if self.last else None
        if action == "unasked":
            return receipt(self.unasked[-1] if self.unasked else UNKNOWN)
        if action == "unknown":
            return receipt(UNKNOWN)
        return {"error": error("bad luck"), "message": MESSAGE, "garbage": GARBAGE, "hang up": HANGUP}.get(action)

    def receipt(self, receipt_id: str) -> bytes:
        self.last = receipt_id
        return receipt(receipt_id)


# -- the invariants ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def ledger_rows():
    yield
    for version, (trials, broken, what, longest) in sorted(TALLY.items()):
        ledger.record(
            "hostile broker",
            "generated broker scripts (hypothesis), Python %s" % version,
            trials,
            broken,
            broken == 0,
            longest,
            what,
            extra="CONNECTED/RECEIPT (asked, unasked, repeated, out of order)/ERROR/MESSAGE/garbage/hang-up at "
            "random points; lost = examples that broke an invariant",
        )


class Watch:
    """At every instant the broker looks, what has left the spool was confirmed as the client asked:
    an event settled early, by a receipt it did not ask for, shows here even when a later receipt
    would cover it before the run ends."""

    def __init__(self, world: dict, ids: set, spool: Path):
        self.cumulative, self.ids, self.events = world["receipt_every"] > 1, ids, str(spool / "events")
        self.broker, self.unasked = None, set()

    def __call__(self):
        # The spool first, then the books: the books grow before a receipt is sent, so whatever has
        # left the spool by now was confirmed in them by now.
        left = self.ids - {name[-41:-5] for name in os.listdir(self.events)}
        with self.broker.lock:
            asked = self.broker.confirmed | (self.broker.covered if self.cumulative else set())
        self.unasked |= left - asked


def broken_promises(world: dict, watch: Watch, kept: set, replay, seconds: float, state: dict) -> list:
    """What the example broke (empty: nothing)."""
    broken, broker = [], watch.broker
    gone = watch.ids - kept
    watch()  # and once more at the end
    if watch.unasked:
        broken.append("%d event(s) left the spool without a receipt they asked for" % len(watch.unasked))
    if "Traceback" in replay.stderr or "internal error" in replay.stderr:
        broken.append("traceback or internal error: %s" % replay.stderr[-300:])
    lines = stderr_lines(replay)
    if len(lines) != 1:
        broken.append("%d lines on stderr: %s" % (len(lines), replay.stderr[-300:]))
    if replay.returncode != (3 if kept else 0):
        broken.append("exit %d with %d event(s) left" % (replay.returncode, len(kept)))
    line = lines[-1] if lines else ""
    failed = re.match(r"pilotlog: (.*); delivered (\d+), (\d+) event\(s\) kept in spool ", line)
    done = re.match(r"pilotlog: replayed (\d+) event\(s\) to .*; (\d+) left in spool ", line)
    if failed:
        said, counts = failed.group(1), (int(failed.group(2)), int(failed.group(3)))
        if state.get("last_error") != said:
            broken.append("last_error %r, the line said %r" % (state.get("last_error"), said))
    elif done:
        counts = (int(done.group(1)), int(done.group(2)))
        if state.get("last_error"):
            broken.append("last_error %r after a replay that said it was done" % state["last_error"])
    else:
        counts = None
        broken.append("not a summary line: %r" % line)
    if counts is not None and counts != (len(gone), len(kept)):
        broken.append("the line says %s delivered/kept, the spool %s" % (counts, (len(gone), len(kept))))
    if broker.sends and max(broker.sends.values()) > MAX_SENDS:
        broken.append("an event went out %d times" % max(broker.sends.values()))
    if seconds >= DEADLINE + SLACK:
        broken.append("ran %.1f s with a deadline of %g s" % (seconds, DEADLINE))
    return broken


@pytest.mark.parametrize("version", PYTHONS)
@ledger.generated(EXAMPLES)
@given(world=worlds)
def test_a_scripted_broker_never_makes_replay_lose_lie_or_overrun(bundle, pki, version, world):
    python = pyenv_python(version)
    with tempfile.TemporaryDirectory() as directory:
        pilotlog = Pilotlog(bundle, Path(directory), python=python)
        ids = {
            e["id"] for e in fill_spool(pilotlog.spool, world["events"], pilot="3f2504e0-4f89-41d3-9a0c-0305e82c3301")
        }
        watch = Watch(world, ids, pilotlog.spool)
        with ScriptedBroker(pki, Script(world), watch) as broker:
            watch.broker = broker
            env = {
                "PILOTLOG_SINK": "stomp+ssl://localhost:%d/queue/pilots" % broker.port,
                "PILOTLOG_CA_FILE": pki.path("ca.pem"),
                "PILOTLOG_TIMEOUT": TIMEOUT,
                "PILOTLOG_DEADLINE": DEADLINE,
                "PILOTLOG_WINDOW": world["window"],
                "PILOTLOG_RECEIPT_EVERY": world["receipt_every"],
            }
            started = time.monotonic()
            replay = pilotlog("replay", "--strict", env=env, timeout=DEADLINE + SLACK + 60)
            seconds = time.monotonic() - started
        kept = {e["id"] for e in pilotlog.events()}
        state_file = pilotlog.spool / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        broken = broken_promises(world, watch, kept, replay, seconds, state)
    row = TALLY[version]
    row[0] += 1
    row[3] = max(row[3], seconds)
    if broken:
        row[1] += 1
        row[2] = row[2] or "; ".join(broken)[:140]
    assert not broken, (world, broken, replay.stderr)
