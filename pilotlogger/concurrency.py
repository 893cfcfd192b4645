"""Locks that stay right where a pilot calls pilotlogger from: threads, forked workers, signal handlers.

* **Forks.**  A forked child has one thread but a copy of every lock: one that another thread
  of the parent held at the fork stays held for ever in the child, where that thread does not
  exist.  A :class:`ProcessLock` is made anew by each process on first use (keyed by pid, so
  Python 3.6, which has no ``os.register_at_fork``, gets the same).
* **Signal handlers.**  Python runs a handler in the main thread between two of its bytecodes,
  possibly while that thread holds a lock: a handler that records would then wait for its own
  thread.  :func:`beyond_signal_handlers` runs a method holding a lock in a helper thread when it
  is called from the main thread: a handler then runs while the main thread only waits, and its
  own call takes the lock after the first one released it — milliseconds, not a deadlock.

* **Imports.**  A child forked while another thread imports a module inherits it half made,
  and no thread of the child finishes it (Python 3.13: an AttributeError; 3.6: a hang on the
  module's import lock).  :func:`fenced_from_forks` runs an import that forks wait for
  (``os.register_at_fork``, Python 3.7+, as :mod:`logging` does for its lock).

Built on ``_thread`` (part of the interpreter): the one-shot ``pilotlog emit`` does not import
:mod:`threading` (about 1 ms of a start on Python 3.13).
"""

import _thread
import os
import sys


class ProcessLock:
    """A lock (``reentrant``: an RLock) of this process's threads, made anew in a forked child.

    ``acquire`` of a non-reentrant one by the thread holding it returns False at once rather
    than waiting for itself (a signal handler interrupting the holder)."""

    __slots__ = ("_locks", "_reentrant", "_owner")

    def __init__(self, reentrant: bool = False):
        self._reentrant = reentrant
        self._locks: dict = {}  # pid -> lock: a child never touches the copy of its parent's
        self._owner: "tuple | None" = None  # (pid, thread) holding a non-reentrant one

    def _lock(self):
        pid = os.getpid()
        lock = self._locks.get(pid)
        if lock is None:
            made = _thread.RLock() if self._reentrant else _thread.allocate_lock()
            lock = self._locks.setdefault(pid, made)  # atomic: two threads get the same one
        return lock

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = (os.getpid(), _thread.get_ident())
        if not self._reentrant and self._owner == me:
            return False
        if not self._lock().acquire(blocking, timeout):
            return False
        if not self._reentrant:
            self._owner = me
        return True

    def release(self) -> None:
        self._owner = None
        self._lock().release()

    def __enter__(self):
        if not self.acquire():
            raise RuntimeError("a lock would wait for its own thread (a signal handler interrupted its holder)")
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_FENCE = ProcessLock()  # held while a fenced import runs; a fork waits for it (a child makes its own)


if hasattr(os, "register_at_fork"):  # Python 3.7+
    os.register_at_fork(before=_FENCE.acquire, after_in_parent=_FENCE.release)


def fenced_from_forks(work):
    """``work()`` (an import), with a fork of another thread waiting until it ends (Python 3.7+)."""
    with _FENCE:
        return work()


class _Worker:
    """The thread of one process that runs what its main thread asks, one call after another.

    It lives as long as the process: a thread per call would end a thread per call, and on
    Python 3.6-3.10 a thread's first end loads libgcc_s (glibc's unwinder, for pthread_exit) —
    a child forked during that load is aborted by the C loader at its own next load.  The
    queue's lock is reentrant: a signal handler may queue its call while the main thread, which
    it interrupted, was queueing one.
    """

    def __init__(self, threading):
        self.calls: list = []
        self.ready = threading.Condition(threading.RLock())
        threading.Thread(target=self._run, name="pilotlog-write", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self.ready:
                while not self.calls:
                    self.ready.wait()
                call = self.calls.pop(0)
            call()

    def run(self, method, args, kwargs):
        """``method(*args, **kwargs)`` in the worker; its result, or its exception raised here."""
        outcome: list = []
        done = _thread.allocate_lock()
        done.acquire()

        def call():
            try:
                outcome.append((True, method(*args, **kwargs)))
            except BaseException as exc:  # handed to the caller as it is
                outcome.append((False, exc))
            finally:
                done.release()

        with self.ready:
            self.calls.append(call)
            self.ready.notify()
        try:
            done.acquire()  # a signal handler runs during this wait, in this thread
        except BaseException:  # it raised (KeyboardInterrupt, SystemExit): let the call end whole first
            done.acquire()
            raise
        finished, value = outcome[0]
        if finished:
            return value
        raise value


_WORKERS: dict = {}  # pid -> _Worker: a forked child starts its own


def _python_signal_handlers() -> bool:
    """Whether a Python function handles a signal here (other than Python's own KeyboardInterrupt
    one): only such a handler can run pilotlogger's code in the middle of the main thread's.
    Some 5 us: a look at each signal's handler, never cached (a handler may come at any time);
    none where :mod:`signal`, through which handlers are set, was never imported."""
    signal = sys.modules.get("signal")
    if signal is None:
        return False
    for signum in range(1, signal.NSIG):
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            return True
    return False


def beyond_signal_handlers(method):
    """Run ``method`` in this process's worker thread when it is called from the main thread, and
    wait for it.

    The caller sees no difference (the result, or the exception, is its own).  A signal
    handler running meanwhile (in the main thread, during the wait) can call it too: its call
    runs after the first.  When a handler raises while the caller waits (KeyboardInterrupt,
    SystemExit), the method is let finish first, so that an event is stored whole, then the
    exception goes on.

    Where no signal handler can record, ``method`` runs in place, as it costs a hand-off between
    threads (some 70 us here): in a process without a Python signal handler, and in one that
    has not imported :mod:`threading` (nor, then, the Python API: :mod:`logging` imports it) —
    the one-shot ``pilotlog emit`` starts no thread.
    """

    def call(*args, **kwargs):
        threading = sys.modules.get("threading")
        if (
            threading is None
            or threading.current_thread() is not threading.main_thread()
            or not _python_signal_handlers()
        ):
            return method(*args, **kwargs)
        pid = os.getpid()
        worker = _WORKERS.get(pid)
        if worker is None:
            try:
                worker = _WORKERS.setdefault(pid, _Worker(threading))
            except RuntimeError:  # no thread to be had (a process at its limit): do it here
                return method(*args, **kwargs)
        return worker.run(method, args, kwargs)

    call.__name__, call.__qualname__, call.__doc__ = method.__name__, method.__qualname__, method.__doc__
    return call
