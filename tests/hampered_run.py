"""Test helper: ``pilotlog ARGS…`` (the real CLI code, imported from IMPORT_PATH) in a process
hampered on purpose, for faults no real peer makes on demand.

usage: python hampered_run.py IMPORT_PATH [--stall-fsync FILE] [--signal-at-start] -- ARGS…

* ``--stall-fsync FILE``: every fsync waits while FILE exists — a disk whose flushes do not
  come back (a loaded node's writeback, stretched to as long as the test wants);
* ``--signal-at-start``: a SIGTERM arrives while the wrapper is starting its child (as
  subprocess.Popen is entered), the moment a batch system's signal can fall on.
"""

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, sys.argv[1])
options, args = sys.argv[2 : sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1 :]

if "--stall-fsync" in options:
    stall, real_fsync = options[options.index("--stall-fsync") + 1], os.fsync

    def stalled_fsync(fd):
        while os.path.exists(stall):
            time.sleep(0.01)
        return real_fsync(fd)

    os.fsync = stalled_fsync

if "--signal-at-start" in options:
    real_popen = subprocess.Popen

    class SignalledPopen(real_popen):  # type: ignore[misc,valid-type]
        def __init__(self, *a, **kw):
            os.kill(os.getpid(), signal.SIGTERM)
            super().__init__(*a, **kw)

    subprocess.Popen = SignalledPopen  # type: ignore[misc]

from pilotlogger.cli import main  # noqa: E402

sys.exit(main(args))
