"""The one way pilotlogger speaks to the operator: one line on stderr, which never raises."""

import sys

from .redact import mask_text


def warn(message: str) -> None:
    """One line on stderr, prefixed with the program name.  Never raises."""
    try:
        sys.stderr.write("pilotlog: %s\n" % mask_text(message))  # a URL's token never reaches a log
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError, RuntimeError):
        pass  # AttributeError: stderr was closed (None); RuntimeError: a signal handler's line while its thread wrote one
