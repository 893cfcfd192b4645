"""Before/after of two bundles in one session: replay to RabbitMQ and emit, alternating runs.

    python bench/compare.py BEFORE_BUNDLE [--after dist/pilotlog] [--events 20000] [--rounds 3] [--runs 11]

For a change that must not cost speed (e.g. a refactoring): one RabbitMQ, the same spool
contents, the two bundles run in turn in each round (so machine noise hits both), every
replay verified by counting distinct event ids on the queue.  Prints one Markdown table:
medians over the rounds, with the range.  Figures as in bench/run.py: replay msg/s and
the replay process's CPU per event; `emit` warm wall time on the oldest and newest Python.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (bench/run.py: its brokers, spools, Counter and timers)


def replay(bundle, broker, pki, n, env_extra):
    """(msg/s, CPU µs/event) of one verified replay of n events with ``bundle``."""
    run.BUNDLE = bundle
    dest = "/queue/compare-%d-%s" % (os.getpid(), os.urandom(4).hex())
    counter = run.Counter(broker, dest)
    cpu, spool = [], tempfile.mkdtemp() + "/spool"
    run.pilots_spools([spool], n)  # as a pilot makes it: through the emit path, fsynced
    elapsed = run.pilotlog_replay(broker, pki, dest, spool, env_extra, cpu)
    shutil.rmtree(os.path.dirname(spool))
    arrived = counter.wait(n)
    assert arrived == n, "%s: %d of %d arrived" % (bundle, arrived, n)
    return n / elapsed, cpu[-1] / n * 1e6


def emit_ms(bundle, python, runs):
    d = tempfile.mkdtemp()
    env = {"PATH": os.environ["PATH"], "HOME": d, "PILOTLOG_SPOOL": os.path.join(d, "spool")}
    emit = [python, "-I", "-S", bundle, "emit", "boot", "-m", "booted up"]
    subprocess.run(emit, env=env, cwd=d)  # the first start unpacks into the cache: not measured
    ms = run.median_ms(emit, runs, env, d)
    shutil.rmtree(d)
    return ms


def cell(values, fmt):
    return "%s (%s–%s)" % (fmt % statistics.median(values), fmt % min(values), fmt % max(values))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before")
    ap.add_argument("--after", default=run.BUNDLE)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=11)
    args = ap.parse_args()
    bundles = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    work = tempfile.mkdtemp(prefix="pilotlog-compare-")
    pki = run.PKI(os.path.join(work, "pki"))
    broker = run.RabbitMQ(os.path.join(work, "rabbitmq"), pki).start()
    pythons = (("3.6", run.pyenv_python("3.6")), ("3.13", run.pyenv_python("3.13")))
    figures = {}  # (metric, label) -> [values]
    try:
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for label in order:
                bundle = bundles[label]
                for name, extra in (("strict", {}), ("receipt_every=100", {"PILOTLOG_RECEIPT_EVERY": "100"})):
                    rate, cpu = replay(bundle, broker, pki, args.events, extra)
                    figures.setdefault(("replay %s, msg/s" % name, label), []).append(rate)
                    figures.setdefault(("replay %s, CPU µs/event" % name, label), []).append(cpu)
                for version, python in pythons:
                    figures.setdefault(("emit warm, Python %s, ms" % version, label), []).append(
                        emit_ms(bundle, python, args.runs)
                    )
            print("round %d done" % (r + 1), flush=True)
    finally:
        broker.shutdown() if hasattr(broker, "shutdown") else broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    metrics = list(dict.fromkeys(m for m, _ in figures))
    fmt = {m: "%.0f" if m.endswith("msg/s") else "%.1f" for m in metrics}
    rows = [[m, cell(figures[m, "before"], fmt[m]), cell(figures[m, "after"], fmt[m])] for m in metrics]
    run.table(
        "Before/after, RabbitMQ (TLS, persistent, %d events), medians of %d rounds (range)"
        % (args.events, args.rounds),
        ["figure", "before", "after"],
        rows,
    )


if __name__ == "__main__":
    main()
