"""Does a queue RabbitMQ created a moment ago survive a kill -9 of the node?  (docs/events.md)

Not a measure of pilotlogger: stomp.py alone against a private RabbitMQ, to back the advice
"declare the pilots' queue ahead".  Each run, on one STOMP connection: SENDs that declare
``--others`` queues, then ``--messages`` persistent SENDs to a new ``/queue/target-N``, each
with a receipt; once every receipt is in, the variant's pause, kill -9 of the node, a restart
on the same data, and the queue's message count (``rabbitmqctl list_queues``):

    now    no pause
    wait   --wait seconds (Mnesia's log buffer is written out within ~2 s)
    sync   ``rabbitmqctl eval 'mnesia:sync_log().'`` (what the broker trials do first)

Variants take turns, so every variant sees the same broker.  The window shows on a broker
that holds many queues (each run adds ``--others`` + 1); ``--fresh-every K`` starts a new
broker every K runs to see the fresh case.  Prints one line per run and the counts:
``missing`` (no queue), ``fewer`` (fewer messages than receipted), ``kept``.

    .venv/bin/python bench/rabbitmq_new_queue.py --runs 75      # ~20 min on 2 cores
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import stomp  # noqa: E402

from brokers import PASSWORD, PKI, USER, BrokerError, RabbitMQ  # noqa: E402


class Receipts(stomp.ConnectionListener):
    """Counts the RECEIPTs stomp.py hands over (stomp.py calls on_receipt)."""

    def __init__(self):
        self.count = 0
        self.cond = threading.Condition()

    def on_receipt(self, frame):
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> int:
        with self.cond:
            self.cond.wait_for(lambda: self.count >= n, timeout)
            return self.count


def one_run(broker, run: int, variant: str, args) -> str:
    conn = stomp.Connection12([("127.0.0.1", broker.plain)], vhost="/", heartbeats=(0, 0))
    receipts = Receipts()
    conn.set_listener("receipts", receipts)
    conn.connect(USER, PASSWORD, wait=True)
    for i in range(args.others):
        conn.send("/queue/other-%d-%d" % (run, i), "declares a queue", headers={"persistent": "true"})
    queue = "target-%d" % run
    for i in range(args.messages):
        conn.send("/queue/" + queue, '{"n": %d}' % i, headers={"persistent": "true", "receipt": "r%d" % i})
    receipted = receipts.wait_for(args.messages, 60)
    if variant == "wait":
        time.sleep(args.wait)
    elif variant == "sync":
        broker.write_down_queues()
    broker.stop(kill=True)
    broker.start()
    broker.ctl("await_startup")
    listed = dict(
        line.split("\t")[:2]
        for line in broker.ctl("list_queues", "-q", "name", "messages").splitlines()
        if "\t" in line
    )
    if queue not in listed:
        return "missing"
    return "fewer" if int(listed[queue]) < receipted else "kept"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=75, help="runs in all, the variants taking turns")
    parser.add_argument("--variants", default="now,wait,sync")
    parser.add_argument("--others", type=int, default=150, help="queues declared just before each run's own")
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--wait", type=float, default=2.0)
    parser.add_argument("--fresh-every", type=int, default=0, help="a new broker every K runs (0: one broker)")
    parser.add_argument("--load", type=int, default=0, help="busy processes beside the broker (a loaded host)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    base = tempfile.mkdtemp(prefix="pilotlog-newqueue-")
    pki = PKI(os.path.join(base, "pki"))
    counts = collections.defaultdict(collections.Counter)
    broker = None
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        for run in range(args.runs):
            if broker is None or (args.fresh_every and run % args.fresh_every == 0):
                if broker is not None:
                    broker.shutdown()
                broker = RabbitMQ(os.path.join(base, "rabbitmq-%d" % run), pki).start()
            variant = variants[run % len(variants)]
            try:
                outcome = one_run(broker, run, variant, args)
            except (BrokerError, stomp.exception.StompException, OSError) as exc:
                outcome = "not counted (%s)" % exc
            counts[variant][outcome] += 1
            print("run %3d  %-5s %s" % (run, variant, outcome), flush=True)
    finally:
        for hog in hogs:
            hog.kill()
        if broker is not None:
            broker.shutdown()
    for variant in variants:
        c = counts[variant]
        print("%-5s missing %d, fewer %d, kept %d" % (variant, c["missing"], c["fewer"], c["kept"]))


if __name__ == "__main__":
    main()
