"""One emit-side measurement in a fresh process, printed as JSON (run by bench/run.py).

    python emit_probe.py CODE emits DIR N DEPTH      # pilotlogger.emit() at depths 0 and DEPTH, full, and
                                                     # the disk's durability floor, in turns; fsyncs per event
    python emit_probe.py CODE handler SPOOL N MODE   # logging.Handler burst: latency and throughput

CODE is the directory (or bundle) pilotlogger is imported from, so that the same probe
measures the code before and after a change.  Configuration comes from PILOTLOG_* in the
environment, as for any user.
"""

import json
import os
import sys
import time

BODY = b'{"phase": "log", "message": "' + b"x" * 330 + b'"}\n'  # about a spooled event's size


def floor_loop(tmp: str, ready: str, first: int, n: int) -> None:
    """Only what durability costs, one file per event: write, fsync, rename, fsync the directory."""
    for i in range(first, first + n):
        name = "%06d.json" % i
        fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, BODY)
        os.fsync(fd)
        os.close(fd)
        os.rename(os.path.join(tmp, name), os.path.join(ready, name))
        dfd = os.open(ready, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)


def append_loop(fd: int, n: int) -> None:
    """For comparison: appending to one file, write + fdatasync."""
    for _ in range(n):
        os.write(fd, BODY)
        os.fdatasync(fd)


def counting_fsyncs() -> list:
    """Count fsync/fdatasync calls from now on (the count is the list's length)."""
    calls = []
    for fn in ("fsync", "fdatasync"):
        real = getattr(os, fn)
        setattr(os, fn, lambda fd, real=real: (calls.append(fd), real(fd))[1])
    return calls


def emits(work: str, n: int, depth: int, chunk: int = 20) -> dict:
    """Emits per second into an empty spool, one ``depth`` deep (bound raised) and one full
    (every emit evicts), and the floor loops, in turns of ``chunk``: every figure sees the
    same moments of this shared disk, so their ratios hold even when the disk does not."""
    import pilotlogger

    os.mkdir(os.path.join(work, "floor-tmp"))
    os.mkdir(os.path.join(work, "floor-ready"))
    append_fd = os.open(os.path.join(work, "floor-append"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    spools = {
        "empty": (os.path.join(work, "empty"), 10 * depth),
        "deep": (os.path.join(work, "deep"), 10 * depth),
        "full": (os.path.join(work, "full"), depth),
    }

    def use(name):
        os.environ["PILOTLOG_SPOOL"], os.environ["PILOTLOG_MAX_EVENTS"] = spools[name][0], str(spools[name][1])

    for name in spools:  # imports, and the counter of a spool filled behind pilotlog's back
        use(name)
        pilotlogger.emit("log", "warm-up")
    spent = dict.fromkeys(["floor", "append"] + list(spools), 0.0)
    fsyncs, done, clock = counting_fsyncs(), 0, time.perf_counter
    while done < n:
        t = clock()
        floor_loop(os.path.join(work, "floor-tmp"), os.path.join(work, "floor-ready"), done, chunk)
        spent["floor"] += clock() - t
        t = clock()
        append_loop(append_fd, chunk)
        spent["append"] += clock() - t
        for name in spools:
            use(name)
            before, t = len(fsyncs), clock()
            for i in range(chunk):
                pilotlogger.emit(
                    "log", "benchmark line %06d " % (done + i) + "x" * 120, i=done + i, step="InstallDIRAC"
                )
            spent[name] += clock() - t
            if name == "empty":
                spent["fsyncs"] = spent.get("fsyncs", 0) + len(fsyncs) - before
        done += chunk
    result = {k: done / v for k, v in spent.items() if k != "fsyncs"}
    result["fsyncs"] = spent["fsyncs"] / done
    return result


def handler(n: int) -> dict:
    import logging

    import pilotlogger

    log = logging.getLogger("bench")
    log.propagate = False
    log.setLevel(logging.INFO)
    h = pilotlogger.Handler()
    log.addHandler(h)
    log.info("warm-up")
    clock, latencies = time.perf_counter, []
    started = clock()
    for i in range(n):
        t = clock()
        log.info("pilot line %d: installing DIRAC %s", i, "x" * 80)
        latencies.append(clock() - t)
    burst = clock() - started
    h.close()  # grouped: the last group reaches the disk here
    durable = clock() - started
    latencies.sort()
    return {
        "p50": latencies[n // 2] * 1e3,
        "p99": latencies[n * 99 // 100] * 1e3,
        "rate": n / burst,
        "durable": n / durable,
    }


def main():
    code, kind = sys.argv[1], sys.argv[2]
    sys.path.insert(0, code)
    if kind == "emits":
        result = emits(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        result = handler(int(sys.argv[4]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
