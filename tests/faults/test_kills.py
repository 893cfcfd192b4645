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
from pilotlogger.events import make_event
from pilotlogger.spool import EventName, Spool, _Books

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
    ledger.record(
        "kill -9",
        "pilotlog emit, at random moments",
        trials,
        lost,
        final.returncode == 0,
        watch.longest,
        extra="%d emits had returned; %d broken files; %d duplicates" % (len(acknowledged), quarantined, duplicates),
    )
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
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(bundle), "replay"],
                env=env,
                cwd=str(tmp_path),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
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
    ledger.record(
        "kill -9",
        "pilotlog replay, at random moments",
        ran,
        lost,
        final.returncode == 0,
        watch.longest,
        extra="%d events; %d kills landed mid-replay; %d duplicates (in flight at a kill: at most"
        " the window, %d, per kill)" % (len(spooled), killed_midway, duplicates, WINDOW),
    )
    assert killed_midway >= trials // 5, "the kills did not land in the middle of replays"
    assert final.returncode == 0 and pilotlog.depth() == 0, final.stderr
    assert lost == 0
    assert duplicates <= ran * WINDOW, "more duplicates than frames could have been in flight"


@pytest.mark.parametrize("kill", [False, True], ids=["SIGTERM", "SIGKILL"])
def test_broker_stopped_in_the_middle_of_a_replay(broker, kill, pki, pilotlog, queue, consume):
    """The broker dies (or is stopped) and comes back while a replay runs: it reconnects, nothing lost."""
    consume(broker, queue).close()  # the queue exists before the replay, as a site's queue does...
    broker.write_down_queues()  # ...and the broker's record of it survives a crash (brokers.py: why)
    n = 3000
    spooled = {e["id"] for e in fill_spool(pilotlog.spool, n)}
    env = sink_env(pilotlog, broker, queue, pki, PILOTLOG_DEADLINE="90", PILOTLOG_WINDOW="20")
    started = time.monotonic()
    proc = pilotlog.start("replay", env=env)
    end = time.monotonic() + 30
    while pilotlog.depth() > n - 200 and time.monotonic() < end:  # under way: some, not all, acknowledged
        time.sleep(0.02)
    midway = pilotlog.depth()
    broker.stop(kill=kill)
    left_at_stop = spooled_ids(pilotlog)  # what left before is on the broker only if it kept its receipts
    broker.start()
    _, err = proc.communicate(timeout=180)
    took = time.monotonic() - started
    got = consume(broker, queue).wait_for_ids(spooled, timeout=60)
    lost = len(spooled - got)
    lost_of_receipted_before = len((spooled - left_at_stop) - got)
    ledger.record(
        "broker",
        "%s %s mid-replay, restarted" % (broker.name, "kill -9" if kill else "stopped"),
        1,
        lost,
        proc.returncode == 0,
        took,
        err.strip().splitlines()[-1] if err.strip() else "",
        extra="%d of %d events still spooled at the %s" % (midway, n, "kill" if kill else "stop"),
    )
    assert 0 < midway < n, "replay finished before the broker went down: make n larger"
    assert proc.returncode == 0 and pilotlog.events() == [], err
    # every event arrived; duplicates (in flight at the restart) are allowed
    assert lost == 0, "%d lost, %d of them receipted before the broker went down (%d were)\n%s" % (
        lost,
        lost_of_receipted_before,
        len(spooled - left_at_stop),
        broker.tail(3000),
    )


def test_kill_9_during_emit_at_the_bound_keeps_the_bookkeeping(bundle, tmp_path):
    """Emitters into a full spool (every put evicts), killed at random moments while a
    "replay" acks events behind the writers' backs: the counter never under-counts, the
    next put honours the bound, lifecycle events are never evicted, no seq is reused."""
    trials, bound = ledger.trials(20, 200), 200
    spool = Spool(str(tmp_path / "spool"), max_events=bound)
    filled = {e["id"] for e in fill_spool(spool.path, bound)}  # full from the start: every put evicts
    assert spool.put(lambda seq, epoch: make_event("log", "counted", pilot="p", seq=seq, epoch=epoch)).evicted == 1
    rng = random.Random(1129)
    seq_ids, delivered, acked, lost, emitted, watch = {}, set(), set(), 0, 0, ledger.Stopwatch()
    for trial in range(trials):
        with watch:
            proc = run_loops(["b%d" % trial], 10000, spool.path, str(bundle), PILOTLOG_MAX_EVENTS=str(bound))[0]
            time.sleep(rng.uniform(0.03, 0.2))
            listed = sorted(os.listdir(spool.events_dir))
            for name in rng.sample(listed, min(5, len(listed))) if trial % 2 else ():
                event = spool.load(name)  # None: evicted meanwhile
                if event is not None:
                    delivered.add(event["message"])
                    acked.add(event["id"])
                    spool.ack(name)  # a replay acknowledging while the emitter writes
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
        emitted += len(out.split())
        events = [spool.load(n) for n in sorted(os.listdir(spool.events_dir))]
        assert None not in events, "a killed writer left a broken event"
        books = _Books.read(os.path.join(spool.path, "seq"))
        size = sum(os.path.getsize(os.path.join(spool.events_dir, n)) for n in os.listdir(spool.events_dir))
        assert books.count >= len(events) and books.bytes >= size, "the counter fell under the truth"
        kept = {e["message"] for e in events}
        installs = {m for m in out.split() if int(m.rsplit("-", 1)[1]) % 2 == 0}  # lifecycle: never evicted
        lost += len(installs - kept - delivered)
        for e in events:
            assert seq_ids.setdefault(e["seq"], e["id"]) == e["id"], "seq %d handed out twice" % e["seq"]
        assert spool.put(lambda seq, epoch: make_event("log", "after kill", pilot="p", seq=seq, epoch=epoch)).stored
        assert len(os.listdir(spool.events_dir)) <= bound
        for name in os.listdir(spool.events_dir):
            if EventName(name).phase != "log":
                spool.ack(name)  # delivered: lifecycle events never pile up to the bound
    ledger.record(
        "kill -9",
        "pilotlog emit into a full spool (evicting), acks alongside",
        trials,
        lost,
        True,
        watch.longest,
        extra="%d emits returned, bound %d events; counter never under the truth" % (emitted, bound),
    )
    evicted = filled - {e["id"] for e in events} - acked
    assert emitted > trials and evicted, "the kills did not land on evicting emits"
    assert lost == 0, "acknowledged lifecycle events were evicted or lost"


GROUPED_LOOP = """
import logging, sys
sys.path.insert(0, sys.argv[1])
import pilotlogger
log = logging.getLogger("pilot")
log.addHandler(pilotlogger.Handler())
log.setLevel(logging.INFO)
for i in range(100000):
    log.info("g-%d", i)
    sys.stdout.write("g-%d\\n" % i)
    sys.stdout.flush()
"""


def test_kill_9_during_grouped_handler_emits(bundle, tmp_path):
    """log_fsync=grouped keeps the kill -9 promise: every record whose emit returned is in
    the spool, whole (only a power cut can take the last 0.1 s)."""
    trials = ledger.trials(10, 100)
    pilotlog = Pilotlog(bundle, tmp_path)
    spool = Spool(str(pilotlog.spool))
    rng = random.Random(11291)
    acknowledged, watch = set(), ledger.Stopwatch()
    env = dict(pilotlog.env, PILOTLOG_LOG_FSYNC="grouped", PILOTLOG_PILOT_UUID="p")
    for _ in range(trials):
        with watch:
            proc = subprocess.Popen(
                [sys.executable, "-c", GROUPED_LOOP, str(bundle)],
                env=env,
                cwd=str(tmp_path),
                stdout=subprocess.PIPE,
                universal_newlines=True,
            )
            time.sleep(rng.uniform(0.2, 0.6))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
        acknowledged |= set(out.split())
    events = [spool.load(n) for n in sorted(os.listdir(spool.events_dir))]
    lost = len(acknowledged - {e["message"] for e in events if e})
    ledger.record(
        "kill -9",
        "logging Handler, log_fsync=grouped",
        trials,
        lost,
        True,
        watch.longest,
        extra="%d records had returned" % len(acknowledged),
    )
    assert len(acknowledged) > trials
    assert None not in events, "a killed writer left a broken event"
    assert lost == 0
