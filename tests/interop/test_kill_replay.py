"""kill -9 of `replay` at random moments, against real RabbitMQ: no event lost, ever.

An event leaves the spool only after its own RECEIPT; so after any number of killed
replays and one final complete replay, the consumer must hold every spooled event id
(duplicates are allowed: events in flight at a kill are sent again).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

from brokers import PASSWORD, USER
from helpers import Pilotlog

TRIALS = int(os.environ.get("PILOTLOG_KILL_TRIALS", "25"))


def test_kill_9_during_replay_loses_nothing(rabbitmq, pki, queue, consume, bundle, tmp_path):
    pilotlog = Pilotlog(bundle, tmp_path)
    n = 4000
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from pilotlogger.spool import Spool\nfrom pilotlogger.events import make_event\n"
        "s = Spool(%r)\n"
        "for i in range(%d):\n"
        "    s.put(lambda seq, t: make_event('log', 'line %%d' %% i, pilot='p', seq=seq, epoch=t))\n"
    ) % (str(bundle), str(pilotlog.spool), n)
    subprocess.run([sys.executable, "-c", code], check=True)
    spooled = {e["id"] for e in pilotlog.events()}
    consumer = consume(rabbitmq, queue)
    env = dict(pilotlog.env, PILOTLOG_SINK=rabbitmq.url(queue), PILOTLOG_CA_FILE=pki.path("ca.pem"),
               PILOTLOG_USER=USER, PILOTLOG_PASSCODE=PASSWORD, PILOTLOG_BATCH_EVENTS="100")
    rng = random.Random(1128)
    killed_midway = 0
    for _ in range(TRIALS):
        before = pilotlog.depth()
        if before == 0:
            break
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(bundle), "replay"], env=env, cwd=str(tmp_path),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.35))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_midway += 0 < pilotlog.depth() < before
        # Every event that left the spool was acknowledged by the broker, so it must arrive.
        gone = spooled - {json.loads((pilotlog.spool / "events" / name).read_text())["id"]
                          for name in os.listdir(str(pilotlog.spool / "events"))}
        got = consumer.wait_for_ids(gone, timeout=30)
        assert gone <= got, "%d acknowledged event(s) never reached the broker" % len(gone - got)
    assert killed_midway >= 3, "the kills did not land in the middle of replays"
    final = pilotlog("replay", env=env)
    assert final.returncode == 0 and pilotlog.depth() == 0, final.stderr
    assert consumer.wait_for_ids(spooled, timeout=60) == spooled
