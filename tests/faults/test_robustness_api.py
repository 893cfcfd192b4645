"""Generative robustness, the Python API in a pilot's processes (issue 24): hypothesis draws a
pilot program using ``pilotlogger.Handler`` or ``pilotlogger.emit()`` (tests/api_pilot.py), run on
Python 3.6.15 (no ``os.register_at_fork``) and 3.13.0:

* **forks**: threads logging in a loop while the main thread forks up to 8 workers, with
  ``os.fork`` or multiprocessing's ``fork`` start method (Linux's default), each worker
  logging and ending with ``os._exit`` (as multiprocessing does) or ``logging.shutdown()``
  first (as a normal exit does); the first fork made while a thread's first
  ``pilotlogger.emit`` imports the API (held open until the fork);
* **signal handlers that record**: up to 20 SIGUSR1s while the main thread logs, the handler
  recording a ``shutdown`` event; up to 3 of them sent from inside ``Spool.put``, the spool
  lock held (the moment defect 2 needed, made certain);
* ``log`` or lifecycle records, ``log_fsync`` grouped or each.

The promise, checked on every example (``helpers.ApiPilot.broken``): every record whose call
returned is in the spool, once; no call waited more than 0.5 s for the spool lock; every
process ends (a deadlock fails by the deadline) and reports; nothing is said on stderr.
How the 0.5 s stays load-independent: the wait is timed inside each process around
``Spool._lock`` only (not the call, which a busy CPU stretches), and the spools are on tmpfs,
so a holder's fsync costs nothing: a live holder keeps the lock for microseconds to
milliseconds, while an inherited or self-held lock keeps it for the whole 5 s lock_timeout.
"""

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ledger
from helpers import LOCK_WAIT_BOUND, ApiPilot, build_bundle, pyenv_python

PYTHONS = ("3.6.15", "3.13.0")
EXAMPLES = ledger.trials(30, 300)  # per Python: ~1 minute in make test
DEADLINE = 45  # seconds for one program, its workers included
TALLY = ledger.tally()
LONGEST_WAIT = [0.0]  # for the ledger: the longest wait for the spool lock in any example

program = st.fixed_dictionaries(
    {
        "api": st.sampled_from(["handler", "emit"]),
        "phase": st.sampled_from(["log", "install"]),
        "log_fsync": st.sampled_from(["grouped", "each"]),
        "threads": st.integers(min_value=0, max_value=3),
        "workers": st.integers(min_value=0, max_value=8),
        "start": st.sampled_from(["fork", "multiprocessing"]),
        "worker_records": st.integers(min_value=1, max_value=20),
        "worker_exit": st.sampled_from(["os._exit", "shutdown"]),
        "signals": st.integers(min_value=0, max_value=20),
        "inject": st.integers(min_value=0, max_value=3),
        "main_records": st.integers(min_value=0, max_value=40),
        "fork_in_import": st.booleans(),
        "seed": st.integers(min_value=0, max_value=2**32 - 1),
    }
)


def fault_classes(spec: dict) -> set:
    """The rows of docs/reliability.md an example counts in."""
    faults = {"python API: every example"}
    if spec["workers"] and spec["start"] == "fork":
        faults.add("forks: os.fork while %s" % ("threads log" if spec["threads"] else "only the workers log"))
    if spec["workers"] and spec["start"] == "multiprocessing":
        faults.add("forks: multiprocessing workers (fork start method)")
    if spec["workers"] and spec["fork_in_import"] and spec["api"] == "emit":
        faults.add("forks: during a thread's first import of the API")
    if spec["signals"] or spec["inject"]:
        faults.add("signal handlers that record")
    return faults


@pytest.fixture(scope="module", autouse=True)
def ledger_rows():
    yield
    TALLY.record(
        "robustness",
        "hypothesis; Python %s; longest (s): of one call; longest wait for the spool lock %.3f s (bound %g s);"
        " lost = examples that broke an invariant" % (" and ".join(PYTHONS), LONGEST_WAIT[0], LOCK_WAIT_BOUND),
    )


@pytest.mark.parametrize("version", PYTHONS)
@ledger.generated(EXAMPLES)
@given(spec=program)
def test_the_python_api_keeps_every_record_and_waits_for_no_lock_in_forks_and_signal_handlers(shm, version, spec):
    base = tempfile.mkdtemp(dir=shm)
    try:
        run = ApiPilot(pyenv_python(version), build_bundle(), spec, Path(base), timeout=DEADLINE)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    broken = run.broken()
    LONGEST_WAIT[0] = max(LONGEST_WAIT[0], run.longest_lock_wait)
    TALLY.count(fault_classes(spec), broken, run.longest_call)
    assert not broken, (version, spec, broken)
