"""Test helper: emit events in a loop through the real CLI code, reporting each one that returned.

usage: python emit_loop.py IMPORT_PATH TAG COUNT
IMPORT_PATH is the bundle (dist/pilotlog) or the checkout.  After each `emit` returns,
the line "TAG-i" is written and flushed to stdout: the caller knows exactly which
events were acknowledged when it kills this process.
"""

import sys

sys.path.insert(0, sys.argv[1])
from pilotlogger.cli import main  # noqa: E402

tag, count = sys.argv[2], int(sys.argv[3])
for i in range(count):
    code = main(["emit", "log" if i % 2 else "install", "-m", "%s-%d" % (tag, i), "-d", "i:=%d" % i])
    if code != 0:
        sys.exit("emit returned %d" % code)
    sys.stdout.write("%s-%d\n" % (tag, i))
    sys.stdout.flush()
