"""kill -9 of pilotlog (during emit, during replay) and of the broker, on real processes.

The promise: an event whose ``emit`` returned, or that left the spool, reaches the broker
(after a final replay), whatever was killed and whenever.  Duplicates are allowed only
for events in flight at a kill (at-least-once with stable ids).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import ledger
from helpers import Pilotlog, broker_env, fill_spool, run_loops
from pilotlogger.config import BY_NAME
from pilotlogger.spool import Spool

WINDOW = BY_NAME["window"].default  # frames in flight: the most a kill can leave sent but not removed


def sink_env(pilotlog, broker, queue, pki, **extra):
    return dict(pilotlog.env, PILOTLOG_SINK=broker.url(queue), **broker_env(pki), **extra)


def spooled_ids(pilotlog) -> set:
    """Ids of the events now in the spool (files may vanish under a running replay: skipped)."""
    ids, d = set(), pilotlog.spool / "events"
    for name in os.listdir(str(d)) if d.is_dir() else ():
        try:
            ids.add(json.loads((d / name).read_text())["id"])
        except FileNotFoundError:
            pass
    return ids


def test_kill_9_during_emit(rabbitmq, pki, queue, consume, bundle, tmp_path):
    """Emitters killed at random moments; every emit that returned is delivered, whole, once."""
    trials = ledger.trials(60, 200)
    pilotlog = Pilotlog(bundle, tmp_path)
    spool = Spool(str(pilotlog.spool))
    rng = random.Random(20261128)
    acknowledged, watch = set(), ledger.Stopwatch()
    for trial in range(trials):
        with watch:
            proc = run_loops(["t%d" % trial], 10000, spool.path, str(bundle))[0]
            time.sleep(rng.uniform(0.03, 0.25))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
        acknowledged |= set(out.split())
    quarantined = spool.stats()["quarantined"]
    consumer = consume(rabbitmq, queue)
    final = pilotlog("replay", env=sink_env(pilotlog, rabbitmq, queue, pki))
    messages = consumer.wait_for(len(acknowledged), timeout=60)
    delivered = {json.loads(m.body)["message"] for m in messages}
    lost = len(acknowledged - delivered)
    duplicates = len(messages) - len(consumer.ids)
    ledger.record("kill -9", "pilotlog emit, at random moments", trials, lost, final.returncode == 0, watch.longest,
                  extra="%d emits had returned; %d broken files; %d duplicates" % (len(acknowledged), quarantined,
                                                                                    duplicates))
    assert len(acknowledged) > trials
    assert final.returncode == 0 and pilotlog.depth() == 0, final.stderr
    assert lost == 0, "acknowledged emits never delivered: %s" % sorted(acknowledged - delivered)[:5]
    assert quarantined == 0, "a killed writer left a broken event"
    assert duplicates == 0, "nothing was in flight, yet events arrived twice"


def test_kill_9_during_replay(rabbitmq, pki, queue, consume, bundle, tmp_path):
    """Replays killed at random moments: what left the spool had its receipt, so it arrived."""
    trials = ledger.trials(25, 200)
    pilotlog = Pilotlog(bundle, tmp_path)
    spooled = set()
    consumer = consume(rabbitmq, queue)
    env = sink_env(pilotlog, rabbitmq, queue, pki)
    rng = random.Random(1128)
    killed_midway, ran, watch = 0, 0, ledger.Stopwatch()
    for _ in range(trials):
        before = spooled_ids(pilotlog)
        if len(before) < 1500:  # keep the spool busy: every kill must find events to replay
            fresh = {e["id"] for e in fill_spool(pilotlog.spool, 3000)}
            spooled |= fresh
            before |= fresh
        ran += 1
        with watch:
            proc = subprocess.Popen([sys.executable, "-I", "-S", str(bundle), "replay"], env=env, cwd=str(tmp_path),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.1, 0.5))  # start-up and TLS take part of it, more on a loaded machine
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        gone = before - spooled_ids(pilotlog)
        killed_midway += 0 < len(gone) < len(before)
        # Every event that left the spool was acknowledged by the broker, so it must arrive.
        got = consumer.wait_for_ids(gone, timeout=30)
        assert gone <= got, "%d acknowledged event(s) never reached the broker" % len(gone - got)
    final = pilotlog("replay", env=env)
    got = consumer.wait_for_ids(spooled, timeout=120)
    lost = len(spooled - got)
    duplicates = len(consumer.messages) - len(consumer.ids)
    ledger.record("kill -9", "pilotlog replay, at random moments", ran, lost, final.returncode == 0, watch.longest,
                  extra="%d events; %d kills landed mid-replay; %d duplicates (in flight at a kill: at most"
                        " the window, %d, per kill)" % (len(spooled), killed_midway, duplicates, WINDOW))
    assert killed_midway >= trials // 5, "the kills did not land in the middle of replays"
    assert final.returncode == 0 and pilotlog.depth() == 0, final.stderr
    assert lost == 0
    assert duplicates <= ran * WINDOW, "more duplicates than frames could have been in flight"


@pytest.mark.parametrize("kill", [False, True], ids=["SIGTERM", "SIGKILL"])
def test_broker_stopped_in_the_middle_of_a_replay(broker, kill, pki, pilotlog, queue, consume):
    """The broker dies (or is stopped) and comes back while a replay runs: it reconnects, nothing lost."""
    n = 3000
    spooled = {e["id"] for e in fill_spool(pilotlog.spool, n)}
    env = sink_env(pilotlog, broker, queue, pki, PILOTLOG_DEADLINE="90", PILOTLOG_WINDOW="20")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(pilotlog.bundle), "replay"], cwd=str(pilotlog.cwd),
                            env=env, stderr=subprocess.PIPE, universal_newlines=True)
    end = time.monotonic() + 30
    while pilotlog.depth() > n - 200 and time.monotonic() < end:  # under way: some, not all, acknowledged
        time.sleep(0.02)
    midway = pilotlog.depth()
    broker.restart(kill=kill)
    _, err = proc.communicate(timeout=180)
    took = time.monotonic() - started
    got = consume(broker, queue).wait_for_ids(spooled, timeout=60)
    lost = len(spooled - got)
    ledger.record("broker", "%s %s mid-replay, restarted" % (broker.name, "kill -9" if kill else "stopped"), 1, lost,
                  proc.returncode == 0, took, err.strip().splitlines()[-1] if err.strip() else "",
                  extra="%d of %d events still spooled at the %s" % (midway, n, "kill" if kill else "stop"))
    assert 0 < midway < n, "replay finished before the broker went down: make n larger"
    assert proc.returncode == 0 and pilotlog.events() == [], err
    assert lost == 0  # every event arrived; duplicates (in flight at the restart) are allowed
