"""Entry point of the dist/pilotlog bundle (copied to the zipapp's __main__.py by make bundle).

Python never caches bytecode for modules imported from a zip, so a zipapp recompiles
every module it imports on every start.  A pilot runs pilotlog many times, so on first
use the bundle unpacks itself into a private cache keyed by its own checksum and imports
from there, where the interpreter keeps compiled bytecode.  Nothing changes for the user:
if the cache cannot be used (read-only home, foreign owner, permissions too open) the
bundle simply runs from the zip, as before.

Cache: $PILOTLOG_CACHE, else $XDG_CACHE_HOME/pilotlog, else ~/.cache/pilotlog; one
directory per bundle content (<crc32>-<size>); directories 0700 and owned by the user.
"""

import os
import sys


def _private_dir(path: str) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def _unpacked(archive: str):
    """The directory holding this bundle's unpacked package, made on first use; or None."""
    import zlib

    with open(archive, "rb") as f:
        content = f.read()
    home = os.path.expanduser("~")
    base = os.environ.get("PILOTLOG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"), "pilotlog"
    )
    target = os.path.join(base, "%08x-%d" % (zlib.crc32(content), len(content)))
    if _private_dir(target) and os.path.isfile(os.path.join(target, "pilotlogger", "cli.py")):
        return target
    import tempfile
    import zipfile

    os.makedirs(base, 0o700, exist_ok=True)
    if not _private_dir(base):
        return None
    staging = tempfile.mkdtemp(dir=base)  # 0700
    with zipfile.ZipFile(archive) as z:
        z.extractall(staging, [n for n in z.namelist() if n.startswith("pilotlogger/")])
    try:
        os.rename(staging, target)  # atomic: a concurrent first start either wins or finds it done
    except OSError:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target if _private_dir(target) else None


def _use_cache() -> None:
    archive = sys.path[0]
    if not os.path.isfile(archive):
        return  # not running from a zip
    try:
        target = _unpacked(archive)
    except Exception:  # never let a cache problem stop the pilot: run from the zip instead
        return
    if target:
        sys.path.insert(0, target)


_use_cache()

from pilotlogger.cli import main  # noqa: E402

sys.exit(main())
