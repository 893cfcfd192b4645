"""Replay-side measurements in a fresh process, printed as JSON (run by bench/run.py).

    python replay_probe.py CODE fill SPOOL N     # N events recorded the way pilots record them
    python replay_probe.py CODE cold SPOOL       # drop the spool files' pages from the page cache
    python replay_probe.py CODE floor SPOOL      # the file-per-event floor: open, read, unlink each
    python replay_probe.py CODE stomp N          # the TLS/STOMP share: N events from memory to the sink

CODE is the directory (or bundle) pilotlogger is imported from.  Configuration comes from
PILOTLOG_* in the environment, as for any user.  CPU figures are this process's user + system
time for the measured part only (not the interpreter's start).
"""

import json
import os
import resource
import sys
import time

MESSAGE = "benchmark line %06d " + "x" * 120  # the same events as bench/run.py's stomp.py variants


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fill(spool: str, n: int) -> dict:
    """Through the emit path (``Recorder.record``, as ``pilotlog emit`` and ``pilotlogger.emit()``):
    each event written to tmp/, fsynced, renamed into events/, the directory fsynced."""
    from pilotlogger.recorder import Recorder

    recorder = Recorder()
    assert recorder.spool.path == os.path.abspath(spool), (recorder.spool.path, spool)
    started = time.monotonic()
    for i in range(n):
        assert recorder.record("log", MESSAGE % i, "info", None, {"i": i}) is not None
    return {"n": n, "seconds": time.monotonic() - started}


def cold(spool: str) -> dict:
    """Drop the data pages of every event file (fsynced, so clean: the kernel lets them go) and
    of the directory: the replay then reads from the disk.  Directory entries and inodes stay
    cached; dropping those too takes root and every process's caches (run.py --drop-caches)."""
    events = os.path.join(spool, "events")
    names = os.listdir(events)
    for path in [os.path.join(events, name) for name in names] + [events]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return {"n": len(names)}


def floor(spool: str) -> dict:
    """What a spool of one file per event costs to empty, without a network or a line of ours:
    the names in order, then open, read, close and unlink each file."""
    events = os.path.join(spool, "events")
    before, started = cpu(), time.monotonic()
    names = sorted(os.listdir(events))
    prefix = events + os.sep
    for name in names:
        fd = os.open(prefix + name, os.O_RDONLY | os.O_NOFOLLOW)
        os.read(fd, 65537)
        os.close(fd)
        os.unlink(prefix + name)
    return {"n": len(names), "cpu": cpu() - before, "seconds": time.monotonic() - started}


def stomp(n: int) -> dict:
    """Our STOMP client and TLS alone: n events built in memory (as replay reads them) streamed
    through the configured sink, each settled by its receipt."""
    from pilotlogger import config as config_module
    from pilotlogger.events import make_event, render
    from pilotlogger.sinks import open_sink

    config = config_module.load()
    pilot, _ = config.resolved_pilot()
    events = []
    for i in range(n):
        event = make_event("log", MESSAGE % i, data={"i": i}, pilot=pilot, context=config.context(), seq=i + 1)
        events.append((event, render(event, "native")))
    before, started = cpu(), time.monotonic()
    sink = open_sink(config, sys.stdout)
    try:
        settled = sum(1 for _, refusal in sink.deliver(iter(events)) if refusal is None)
    finally:
        sink.close()
    return {"n": settled, "cpu": cpu() - before, "seconds": time.monotonic() - started}


def main() -> None:
    code, kind, *rest = sys.argv[1:]
    sys.path.insert(0, code)
    if kind == "fill":
        result = fill(rest[0], int(rest[1]))
    elif kind == "cold":
        result = cold(rest[0])
    elif kind == "floor":
        result = floor(rest[0])
    elif kind == "stomp":
        result = stomp(int(rest[0]))
    else:
        raise SystemExit("unknown measurement %r" % kind)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
