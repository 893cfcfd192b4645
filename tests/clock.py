"""A wall clock a test steps back and forth for chosen processes only: never the machine's.

Other engineers and the brokers share this machine, so the system clock is never touched.
``SteppedClock.env()`` gives a process ``LD_PRELOAD`` of ``tests/clockshift.c`` (built once
per session with ``cc``, which ``make packages`` installs; no faketime package needed): its
``CLOCK_REALTIME``, ``gettimeofday()`` and ``time()`` read the real clock plus an offset kept
in a file, read again at every call — so ``step()`` moves the clock of processes that are
already running, as chronyd's ``makestep`` does on a fresh VM.  Monotonic clocks (every
deadline of pilotlog) are left alone, as a real step leaves them.
"""

import atexit
import os
import shutil
import subprocess
import tempfile

from helpers import ROOT, unavailable

_LIBRARY = []  # the built library, once per session


def clockshift_library() -> str:
    """Build tests/clockshift.c into a shared library (once) and return its path."""
    if not _LIBRARY:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if not compiler:
            unavailable("a C compiler (cc) is needed to step one process's clock (tests/clockshift.c)")
        directory = tempfile.mkdtemp(prefix="pilotlog-clockshift-")
        atexit.register(shutil.rmtree, directory, True)
        out = os.path.join(directory, "libclockshift.so")
        source = str(ROOT / "tests" / "clockshift.c")
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", out, source, "-ldl", "-lm"], check=True)
        _LIBRARY.append(out)
    return _LIBRARY[0]


class SteppedClock:
    """The wall clock of the processes run with :meth:`env`: real time + :attr:`offset` seconds."""

    def __init__(self, directory: str):
        self.file = os.path.join(str(directory), "clock-offset")
        self.library = clockshift_library()
        self.offset = 0.0
        self.step_to(0.0)

    def step_to(self, offset: float) -> None:
        """Set the offset (seconds, negative = behind real time); atomic for readers."""
        tmp = self.file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%r\n" % float(offset))
        os.rename(tmp, self.file)
        self.offset = float(offset)

    def env(self) -> dict:
        return {"LD_PRELOAD": self.library, "CLOCKSHIFT_FILE": self.file}
