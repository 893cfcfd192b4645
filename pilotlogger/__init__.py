"""pilotlogger: structured lifecycle logging for grid pilots, stdlib only.

Events are written durably to a local spool first, then shipped (replay) to a sink.

    import pilotlogger
    pilotlogger.emit("power", "power of 11 HS06", hs06=11)
    logging.getLogger("Pilot").addHandler(pilotlogger.Handler())

Importing this package is cheap: ``emit`` and ``Handler`` (which need :mod:`logging`) are
loaded on first use, so the CLI never pays for them.
"""

import sys
import types

from .version import __version__  # noqa: F401

if sys.version_info < (3, 7):
    # Forks cannot wait for the API's first import on Python 3.6 (see _import_api), so the C modules
    # it would load are loaded now, with the package: a child forked while a thread loads one (dlopen)
    # is aborted by the C loader at its own next load, and no Python code can mend that.
    import _json  # noqa: F401
    import fcntl  # noqa: F401
    import heapq  # noqa: F401


def _api():
    from .concurrency import fenced_from_forks

    return fenced_from_forks(_import_api)


#: While a thread imports the API: its pid and the modules there were before.  A child forked meanwhile
#: (Python 3.6: forks do not wait for it) finds it here, copied, with a pid not its own.
_IMPORTING: dict = {}


def _import_api():
    """The module of ``emit`` and ``Handler``.  In a child forked while a thread of its parent was
    importing it, that import never ends (no thread here runs it): the modules it had begun go,
    and are made again here."""
    import os

    if _IMPORTING and _IMPORTING["pid"] != os.getpid():
        locks = getattr(sys.modules.get("_frozen_importlib"), "_module_locks", {})  # CPython's, per module
        for name in (set(sys.modules) | set(locks)) - _IMPORTING["before"]:
            sys.modules.pop(name, None)
            locks.pop(name, None)  # held for ever by the thread that is not here
    _IMPORTING.update(pid=os.getpid(), before=set(sys.modules))
    try:
        from . import handler
    finally:
        _IMPORTING.clear()
    return handler


class _LazyModule(types.ModuleType):
    """Resolve ``pilotlogger.emit`` / ``pilotlogger.Handler`` on first access (module
    ``__getattr__`` is Python 3.7+; swapping the module's class works from 3.5).

    The import runs in a helper thread when asked from the main thread (a signal handler calling
    ``pilotlogger.emit()`` while that thread imports it would find the module half made; from
    another thread it waits for the import to end), and forks wait for it (a child forked in
    its middle would never see it end: see concurrency.fenced_from_forks)."""

    def __getattr__(self, name):
        if name in ("emit", "Handler"):
            import threading  # noqa: F401  # the API's logging imports it anyway; the helper thread needs it

            from .concurrency import beyond_signal_handlers

            api = beyond_signal_handlers(_api)()
            self.emit, self.Handler = api.emit, api.Handler  # found directly from now on
            return getattr(api, name)
        raise AttributeError("module %r has no attribute %r" % (self.__name__, name))


sys.modules[__name__].__class__ = _LazyModule
