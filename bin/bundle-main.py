"""Entry point of the dist/pilotlog bundle (copied to the zipapp's __main__.py by make bundle).

Python never caches bytecode for modules imported from a zip, so a zipapp recompiles
every module it imports on every start.  A pilot runs pilotlog many times, so on first
use the bundle unpacks itself into a private cache keyed by its own checksum and imports
from there, where the interpreter keeps compiled bytecode.  Nothing changes for the user:
if the cache cannot be used (read-only home, foreign owner, permissions too open) the
bundle simply runs from the zip, as before.  A damaged cache (a file deleted or cut short,
bytecode that does not load) is unpacked again, and the start that found it runs from the zip.

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


MANIFEST = "manifest"  # "<size> <name>" per unpacked file: what an intact cache holds


def _intact(target: str) -> bool:
    """The unpacked copy is ours and every file of the manifest is there with its size.

    A cache damaged by hand, by a full disk or by a cleaner deleting old files must not
    stop the pilot: it is detected here and unpacked again.
    """
    if not _private_dir(target):
        return False
    try:
        with open(os.path.join(target, MANIFEST)) as f:
            lines = f.read().splitlines()
        for line in lines:
            size, name = line.split(" ", 1)
            if os.stat(os.path.join(target, name)).st_size != int(size):
                return False
    except (OSError, ValueError):
        return False
    return bool(lines)


def _discard(target: str) -> None:
    """Move a damaged copy out of the way (rename is atomic), then remove it."""
    import shutil

    trash = "%s.damaged-%d" % (target, os.getpid())
    try:
        os.rename(target, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


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
    if _intact(target):
        return target
    if os.path.lexists(target):
        _discard(target)
    import tempfile
    import zipfile

    os.makedirs(base, 0o700, exist_ok=True)
    if not _private_dir(base):
        return None
    staging = tempfile.mkdtemp(dir=base)  # 0700
    with zipfile.ZipFile(archive) as z:
        members = [i for i in z.infolist() if i.filename.startswith("pilotlogger/") and not i.is_dir()]
        z.extractall(staging, [i.filename for i in members])
    with open(os.path.join(staging, MANIFEST), "w") as f:
        f.write("".join("%d %s\n" % (i.file_size, i.filename) for i in members))
    try:
        os.rename(staging, target)  # atomic: a concurrent first start either wins or finds it done
    except OSError:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target if _intact(target) else None


def _use_cache():
    """The cache directory now first on sys.path, or None (run from the zip)."""
    archive = sys.path[0]
    if not os.path.isfile(archive):
        return None  # not running from a zip
    try:
        target = _unpacked(archive)
    except Exception:  # never let a cache problem stop the pilot: run from the zip instead
        return None
    if target:
        sys.path.insert(0, target)
    return target


def _entry_point():
    """pilotlogger's main, from the cache when it imports cleanly, else from the zip."""
    target = _use_cache()
    if target:
        try:
            from pilotlogger.cli import main

            return main
        except Exception:  # a damaged source or bytecode file: forget the cache, use the zip
            sys.path.remove(target)
            for name in [n for n in sys.modules if n == "pilotlogger" or n.startswith("pilotlogger.")]:
                del sys.modules[name]
            try:
                _discard(target)  # the next start unpacks a fresh copy
            except Exception:
                pass
    from pilotlogger.cli import main

    return main


sys.exit(_entry_point()())
