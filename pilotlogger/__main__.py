"""``python -m pilotlogger`` — the same as ``bin/pilotlog`` and the ``dist/pilotlog`` bundle."""

import sys

from pilotlogger.cli import main

sys.exit(main())
