"""Write the batch-job pilot wrapper DIRAC's SiteDirector submits, made by DIRAC's own code.

    python pilot_wrapper.py OUT_FILE JSON_KWARGS     (run by the DIRAC venv's python; tests only)

JSON_KWARGS are the keyword arguments of
``DIRAC.WorkloadManagementSystem.Utilities.PilotWrapper.pilotWrapperScript()`` as the
SiteDirector passes them (``pilotOptions``, ``location``, ``CVMFS_locations``,
``envVariables``, ``pilotExecDir``); the script it returns is written unchanged to OUT_FILE
(mode 0700, as the SiteDirector's ``_writePilotWrapperFile`` hands it to a CE).
"""

import json
import os
import sys


def main(out, kwargs):
    from DIRAC.WorkloadManagementSystem.Utilities.PilotWrapper import pilotWrapperScript

    script = pilotWrapperScript(**json.loads(kwargs))
    with open(out, "w") as f:
        f.write(script)
    os.chmod(out, 0o700)


if __name__ == "__main__":
    main(*sys.argv[1:])
