"""Write the batch-job pilot wrapper DIRAC's SiteDirector submits, made by DIRAC's own code.

    python pilot_wrapper.py OUT_FILE JSON_KWARGS     (run by the DIRAC venv's python; tests only)

JSON_KWARGS are the keyword arguments of
``DIRAC.WorkloadManagementSystem.Utilities.PilotWrapper.pilotWrapperScript()`` as the
SiteDirector passes them (``pilotOptions``, ``location``, ``CVMFS_locations``,
``envVariables``, ``pilotExecDir``); the script it returns is written unchanged to OUT_FILE
(mode 0700, as the SiteDirector's ``_writePilotWrapperFile`` hands it to a CE).
``bundled_proxy`` (a PEM file) is bundled as the SiteDirector bundles the pilot's proxy: under
the name ``proxy``, bz2-compressed and base64-encoded, as ``getPilotFilesCompressedEncodedDict``
encodes it (that function wants an X509Chain to write the PEM itself).
"""

import base64
import bz2
import json
import os
import sys


def main(out, kwargs):
    from DIRAC.WorkloadManagementSystem.Utilities.PilotWrapper import pilotWrapperScript

    kwargs = json.loads(kwargs)
    proxy = kwargs.pop("bundled_proxy", None)
    if proxy:
        with open(proxy) as f:
            kwargs["pilotFilesCompressedEncodedDict"] = {"proxy": base64.b64encode(bz2.compress(f.read().encode()))}
    script = pilotWrapperScript(**kwargs)
    with open(out, "w") as f:
        f.write(script)
    os.chmod(out, 0o700)


if __name__ == "__main__":
    main(*sys.argv[1:])
