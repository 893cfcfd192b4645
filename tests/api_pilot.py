"""Test helper: a pilot using the Python API as pilots do — threads logging while the process
forks workers, and a signal handler that records — and reporting what each process saw.

usage: python api_pilot.py IMPORT_PATH SPEC_JSON

IMPORT_PATH is the bundle (dist/pilotlog) or the checkout.  SPEC is a JSON object:

* ``spool``, ``report`` (a directory: each process writes ``<pid>.json`` there);
* ``api``: ``handler`` (a logging.Handler on a logger) or ``emit`` (``pilotlogger.emit()``);
* ``phase``: of the records the threads and workers make (``log`` or a lifecycle phase);
* ``log_fsync``: the setting (``grouped`` or ``each``);
* ``threads``: threads logging in a loop in the parent until the workers are forked (and the
  main thread's records made), at most THREAD_RECORDS each;
* ``workers``, ``start`` (``fork``: os.fork; ``multiprocessing``: its ``fork`` start method,
  Linux's default), ``worker_records`` (records each worker logs), ``worker_exit``
  (``os._exit`` as multiprocessing does, or ``shutdown``: ``logging.shutdown()`` first, as
  ``atexit`` does on a normal exit);
* ``signals``: SIGUSR1s a helper thread sends to the process while the main thread logs
  ``main_records`` records; the handler records one event each (``shutdown`` phase);
  ``inject``: how many of them are sent from inside ``Spool.put`` with the spool lock held
  (the worst moment, made certain);
* ``fork_in_import`` (with ``emit``: the Handler imports the API before anything runs): the
  first worker is forked while a thread makes the API's first import (``pilotlogger.emit``),
  held open until the fork (at most 2 s: on Python 3.7+ the fork waits for the import, which
  is the fix);
* ``seed``: for the pauses between forks and signals.

A report: ``{"records": [messages of calls that returned (emit: with an event)], "calls": n,
"longest_call": s, "longest_lock_wait": s}``; ``longest_lock_wait`` is the longest time a
put (or a state update) of this process spent taking the spool lock (``Spool._lock``,
timed here).  The caller compares the records with the spool.
"""

import json
import logging
import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, sys.argv[1])
import pilotlogger  # noqa: E402
from pilotlogger import config as config_module  # noqa: E402
from pilotlogger import spool as spool_module  # noqa: E402

SPEC = json.loads(sys.argv[2])
STATS = {"records": [], "calls": 0, "longest_call": 0.0, "longest_lock_wait": 0.0}
STATS_LOCK = threading.Lock()
INJECT = [SPEC.get("inject", 0)]
PARENT = os.getpid()
HELD = [False]  # the API's import is held open (fork_in_import): calls wait for it on purpose
THREAD_RECORDS = 1000  # at most, per thread: the spool's default bound (10,000) is never reached


def _timed(method, key):
    def timed(*args, **kwargs):
        started = time.monotonic()
        try:
            return method(*args, **kwargs)
        finally:
            STATS[key] = max(STATS[key], time.monotonic() - started)

    return timed


spool_module.Spool._lock = _timed(spool_module.Spool._lock, "longest_lock_wait")
_books = spool_module.Spool._books


def _books_with_a_signal(self):
    """The spool lock is held here: send the signal now, the first ``inject`` times."""
    if INJECT[0] > 0 and os.getpid() == PARENT:
        INJECT[0] -= 1
        os.kill(PARENT, signal.SIGUSR1)
    return _books(self)


spool_module.Spool._books = _books_with_a_signal

environ = {"PILOTLOG_SPOOL": SPEC["spool"], "PILOTLOG_LOG_FSYNC": SPEC.get("log_fsync", "grouped")}
CONFIG = config_module.load({}, environ)
LOGGER = logging.getLogger("pilot")
LOGGER.setLevel(logging.DEBUG)
LOGGER.propagate = False
if SPEC.get("api", "handler") == "handler":
    LOGGER.addHandler(pilotlogger.Handler(config=CONFIG))


def record(message: str, phase: str) -> None:
    """One record through the API under test; counted as made once the call returned.  Its time
    counts in ``longest_call`` unless it began while the API's import was held open on purpose."""
    timed, started = not HELD[0], time.monotonic()
    if SPEC.get("api", "handler") == "handler":
        LOGGER.info(message, extra={"phase": phase})
        kept = True
    else:
        kept = pilotlogger.emit(phase, message, config=CONFIG) is not None
    elapsed = time.monotonic() - started
    with STATS_LOCK:
        STATS["calls"] += 1
        if timed:
            STATS["longest_call"] = max(STATS["longest_call"], elapsed)
        if kept:
            STATS["records"].append(message)


def report() -> None:
    with open(os.path.join(SPEC["report"], "%d.json" % os.getpid()), "w") as f:
        json.dump(STATS, f)


def worker(index: int) -> None:
    """A forked worker: its own counts, a few records, its report."""
    STATS.update(records=[], calls=0, longest_call=0.0, longest_lock_wait=0.0)
    HELD[0] = False
    for i in range(SPEC.get("worker_records", 1)):
        record("W%d-%d" % (index, i), SPEC.get("phase", "log"))
    report()
    if SPEC.get("worker_exit") == "shutdown":
        logging.shutdown()


class StalledImport:
    """A finder that holds the import of ``name`` open until ``forked`` (at most 2 s)."""

    def __init__(self, name, importing, forked):
        self.name, self.importing, self.forked = name, importing, forked

    def find_spec(self, name, path=None, target=None):
        if name == self.name and os.getpid() == PARENT:
            self.importing.set()
            self.forked.wait(2)
        return None  # the usual finders go on


def main() -> None:
    rng = random.Random(SPEC.get("seed", 0))
    handled, closing = [0], threading.Event()

    def on_signal(signum, frame):
        if not closing.is_set():  # one handled after the report would be in the spool only
            handled[0] += 1
            record("S-%d" % handled[0], "shutdown")

    signal.signal(signal.SIGUSR1, on_signal)
    stop = threading.Event()

    def log_in_a_loop(index):
        n = 0
        while not stop.is_set() and n < THREAD_RECORDS:
            record("T%d-%d" % (index, n), SPEC.get("phase", "log"))
            n += 1

    threads = [threading.Thread(target=log_in_a_loop, args=(i,)) for i in range(SPEC.get("threads", 0))]
    importing, forked = threading.Event(), threading.Event()
    fork_in_import = SPEC.get("fork_in_import") and SPEC.get("api", "handler") == "emit"
    if fork_in_import:
        sys.meta_path.insert(0, StalledImport("pilotlogger.recorder", importing, forked))
        HELD[0] = True

        def first():
            record("first", SPEC.get("phase", "log"))
            HELD[0] = False

        threads.append(threading.Thread(target=first))
    for t in threads:
        t.start()
    if fork_in_import:
        assert importing.wait(30)
    workers = []
    if SPEC.get("start", "fork") == "multiprocessing":
        import multiprocessing

        context = multiprocessing.get_context("fork")
    for index in range(SPEC.get("workers", 0)):
        time.sleep(rng.uniform(0, 0.02))
        if SPEC.get("start", "fork") == "multiprocessing":
            workers.append(context.Process(target=worker, args=(index,)))
            workers[-1].start()
        else:
            pid = os.fork()
            if pid == 0:
                try:
                    worker(index)
                except BaseException:  # said where the caller sees it (os._exit flushes nothing)
                    import traceback

                    os.write(2, traceback.format_exc().encode())
                finally:
                    os._exit(0)
            workers.append(pid)
        forked.set()

    def send_signals():
        for _ in range(SPEC.get("signals", 0)):
            time.sleep(rng.uniform(0, 0.01))
            os.kill(PARENT, signal.SIGUSR1)

    signaller = threading.Thread(target=send_signals)
    signaller.start()
    for i in range(SPEC.get("main_records", 0)):
        record("M-%d" % i, SPEC.get("phase", "log"))
    signaller.join()
    stop.set()  # the forks are made: the threads were logging through all of them
    for t in threads:
        t.join()
    for w in workers:
        if isinstance(w, int):
            os.waitpid(w, 0)
        else:
            w.join()
    closing.set()
    report()
    logging.shutdown()


if __name__ == "__main__":
    main()
