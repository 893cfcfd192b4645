"""Write the pilot.json DIRAC's own PilotCStoJSONSynchronizer.getCSDict() makes from a CS file.

    python pilot_json.py CS_FILE OUT_FILE     (run by the DIRAC venv's python; tests only)

DIRAC's logger writes to stdout, hence a file.
"""

import json
import sys


def main(cfg, out):
    from DIRAC.ConfigurationSystem.private.ConfigurationClient import ConfigurationClient

    ConfigurationClient(fileToLoadList=[cfg])
    from DIRAC.WorkloadManagementSystem.Utilities.PilotCStoJSONSynchronizer import PilotCStoJSONSynchronizer

    result = PilotCStoJSONSynchronizer().getCSDict()
    if not result["OK"]:
        sys.exit("getCSDict failed: %s" % result["Message"])
    with open(out, "w") as f:
        json.dump(result["Value"], f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
