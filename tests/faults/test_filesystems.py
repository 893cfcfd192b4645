"""The spool on hostile file systems, made for real: a full tmpfs, a read-only mount.

Needs root (mount); with CI=true a run that cannot mount fails instead of skipping.
"""

import json
import os
import subprocess

import pytest

from helpers import stderr_lines, unavailable


@pytest.fixture
def small_fs(tmp_path):
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
                       stderr=subprocess.PIPE, universal_newlines=True)
    if p.returncode != 0:
        unavailable("cannot mount a tmpfs (%s)" % p.stderr.strip())
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)])


def test_full_filesystem_never_fails_emit_and_leaves_no_debris(pilotlog, small_fs):
    env = {"PILOTLOG_SPOOL": small_fs / "spool"}
    filler = "x" * 600
    results = [pilotlog("emit", "log", "-m", "line %d %s" % (i, filler), env=env) for i in range(150)]
    assert all(p.returncode == 0 for p in results)
    refused = [p for p in results if p.stderr]
    assert refused, "the 64 KiB file system never filled up"
    for p in refused:
        (line,) = stderr_lines(p)
        assert line.startswith("pilotlog: event not recorded: cannot write event to spool")
        assert "No space left on device" in line and line.endswith("the pilot goes on")
    assert os.listdir(str(small_fs / "spool" / "tmp")) == []
    kept = len(os.listdir(str(small_fs / "spool" / "events")))
    assert kept == len(results) - len(refused)
    p = pilotlog("replay", env=env)  # everything that was acknowledged is intact and ships
    assert p.returncode == 0 and len(p.stdout.splitlines()) == kept
    assert all(json.loads(line)["phase"] == "log" for line in p.stdout.splitlines())


def test_read_only_spool(pilotlog, small_fs):
    env = {"PILOTLOG_SPOOL": small_fs / "spool"}
    for phase in ("boot", "os"):
        assert pilotlog("emit", phase, env=env).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    p = pilotlog("emit", "log", env=env)
    assert p.returncode == 0 and "Read-only file system" in p.stderr and "the pilot goes on" in p.stderr
    p = pilotlog("replay", env=env)
    assert p.returncode == 0 and p.stdout == ""  # nothing sent: it could not be acknowledged
    (line,) = stderr_lines(p)
    assert "cannot be changed" in line and "2 event(s) kept in spool" in line and "Traceback" not in p.stderr
    assert pilotlog("replay", "--strict", env=env).returncode == 3
    assert json.loads(pilotlog("status", "--json", env=env).stdout)["depth"] == 2
