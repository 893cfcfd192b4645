"""The one way pilotlogger speaks to the operator: one line on stderr, which never raises."""

import sys


def warn(message: str) -> None:
    """One line on stderr, prefixed with the program name.  Never raises."""
    try:
        sys.stderr.write("pilotlog: %s\n" % message)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # AttributeError: stderr was closed (None)
        pass
