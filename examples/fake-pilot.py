"""A stand-in for dirac-pilot.py in the examples: prints what a pilot prints, exits as asked.

FAKE_PILOT_MATCH=0 makes it fail to match; FAKE_PILOT_EXIT sets its exit code.
"""

import os
import sys
import time

print("JobAgent: requesting a job", flush=True)
time.sleep(0.2)
if os.environ.get("FAKE_PILOT_MATCH", "1") == "1":
    print("JobAgent: matched a job 4242", flush=True)
else:
    print("JobAgent: failed to match: no eligible job", file=sys.stderr, flush=True)
sys.exit(int(os.environ.get("FAKE_PILOT_EXIT", "0")))
