"""Load: 8 processes emitting as fast as they can while replays ship to a real RabbitMQ.

Every emit that returned is delivered once the last replay drains the spool, the spool
never holds more than its bound, and nothing was evicted to stay under it.
"""

import json
import signal
import subprocess
import sys
import threading
import time

import ledger
from helpers import Pilotlog, broker_env, run_loops

WRITERS, BOUND = 8, 5000


def test_eight_emitters_while_replay_runs(rabbitmq, pki, queue, consume, bundle, tmp_path):
    seconds = ledger.trials(10, 60)
    pilotlog = Pilotlog(bundle, tmp_path)
    env = dict(pilotlog.env, PILOTLOG_SINK=rabbitmq.url(queue), PILOTLOG_MAX_EVENTS=str(BOUND), **broker_env(pki))
    consumer = consume(rabbitmq, queue)
    writers = run_loops(
        ["w%d" % i for i in range(WRITERS)], 10**7, str(pilotlog.spool), str(bundle), PILOTLOG_MAX_EVENTS=str(BOUND)
    )
    done, depths, replays = threading.Event(), [], []

    def replay_while_writing():
        while not done.is_set():
            replays.append(
                subprocess.run(
                    [sys.executable, "-I", "-S", str(bundle), "replay"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    universal_newlines=True,
                    timeout=120,
                )
            )

    shipper = threading.Thread(target=replay_while_writing)
    shipper.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        depths.append(pilotlog.depth())
        time.sleep(0.1)
    for w in writers:
        w.send_signal(signal.SIGKILL)
    acknowledged = set()
    for w in writers:
        acknowledged |= set(w.communicate(timeout=30)[0].split())
    done.set()
    shipper.join(180)
    final = pilotlog("replay", env=env)
    messages = consumer.wait_for(len(acknowledged), timeout=120)
    delivered = {json.loads(m.body)["message"] for m in messages}
    dropped = json.loads(pilotlog("status", "--json").stdout)["dropped_total"]
    lost = len(acknowledged - delivered)
    failed_replays = [r.stderr for r in replays if r.returncode != 0]
    ledger.record(
        "load",
        "%d emitters for %d s while replays run" % (WRITERS, seconds),
        len(acknowledged),
        lost,
        final.returncode == 0 and not failed_replays,
        seconds,
        extra="%d replays; deepest spool %d of bound %d; %d evicted; %d duplicates"
        % (len(replays), max(depths), BOUND, dropped, len(messages) - len(consumer.ids)),
    )
    assert len(acknowledged) > WRITERS * seconds, "the writers hardly wrote"
    assert not failed_replays and final.returncode == 0 and pilotlog.depth() == 0, final.stderr
    assert max(depths) <= BOUND and dropped == 0
    assert lost == 0, "acknowledged emits never delivered: %s" % sorted(acknowledged - delivered)[:5]
