"""The spool on hostile file systems, made for real: a full tmpfs, a read-only mount, a spool
owned by someone else, corrupt and truncated files, a planted symlink.

Needs root (mount, chown, running as another user); with CI=true a run that cannot do
these fails instead of skipping.
"""

import json
import os
import pwd
import subprocess
import time

import pytest

import ledger
from helpers import stderr_lines, unavailable


@pytest.fixture
def small_fs(tmp_path):
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    if p.returncode != 0:
        unavailable("cannot mount a tmpfs (%s)" % p.stderr.strip())
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)])


def wrapped_exit_code(pilotlog, env) -> int:
    """What the pilot sees from ``pilotlog run`` around a payload that exits 7."""
    return pilotlog("run", "--", "sh", "-c", "exit 7", env=env).returncode


def test_full_filesystem_never_fails_emit_and_leaves_no_debris(pilotlog, small_fs):
    env = {"PILOTLOG_SPOOL": small_fs / "spool"}
    filler = "x" * 600
    watch, results = ledger.Stopwatch(), []
    for i in range(150):
        with watch:
            results.append(pilotlog("emit", "log", "-m", "line %d %s" % (i, filler), env=env))
    refused = [p for p in results if p.stderr]
    stored = [p for p in results if not p.stderr]
    exit_ok = all(p.returncode == 0 for p in results) and wrapped_exit_code(pilotlog, env) == 7
    kept = len(os.listdir(str(small_fs / "spool" / "events")))
    p = pilotlog("replay", env=env)  # everything that was acknowledged is intact and ships
    shipped = len(p.stdout.splitlines())
    ledger.record(
        "file system",
        "spool on a full 64 KiB tmpfs",
        len(results),
        len(stored) - shipped,
        exit_ok,
        watch.longest,
        stderr_lines(refused[0])[0] if refused else "",
        extra="%d stored, %d refused with one line each" % (len(stored), len(refused)),
    )
    assert exit_ok and refused, "the 64 KiB file system never filled up"
    for r in refused:
        (line,) = stderr_lines(r)
        assert line.startswith("pilotlog: event not recorded: cannot write event to spool")
        assert "No space left on device" in line and line.endswith("the pilot goes on")
    assert os.listdir(str(small_fs / "spool" / "tmp")) == []
    assert kept >= len(stored)  # plus the wrapper's events that fitted
    assert p.returncode == 0 and shipped == kept
    assert all(json.loads(line)["phase"] in ("log", "boot", "shutdown") for line in p.stdout.splitlines())


def test_read_only_spool(pilotlog, small_fs):
    env = {"PILOTLOG_SPOOL": small_fs / "spool"}
    for phase in ("boot", "os"):
        assert pilotlog("emit", phase, env=env).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    emit = pilotlog("emit", "log", env=env)
    replay = pilotlog("replay", env=env)
    depth = json.loads(pilotlog("status", "--json", env=env).stdout)["depth"]
    exit_ok = emit.returncode == 0 and replay.returncode == 0 and wrapped_exit_code(pilotlog, env) == 7
    ledger.record(
        "file system",
        "spool on a read-only mount",
        3,
        2 - depth,
        exit_ok,
        0.0,
        stderr_lines(replay)[0],
        extra="replay sends nothing it could not remove afterwards",
    )
    assert emit.returncode == 0 and "Read-only file system" in emit.stderr and "the pilot goes on" in emit.stderr
    assert replay.returncode == 0 and replay.stdout == ""  # nothing sent: it could not be acknowledged
    (line,) = stderr_lines(replay)
    assert "cannot be changed" in line and "2 event(s) kept in spool" in line and "Traceback" not in replay.stderr
    assert pilotlog("replay", "--strict", env=env).returncode == 3
    assert depth == 2 and exit_ok


@pytest.fixture
def nobody(bundle):
    """The 'nobody' account, a world-readable copy of the bundle and a system Python it can run."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        unavailable("running as another user needs root")
    try:
        account = pwd.getpwnam("nobody")
    except KeyError:
        unavailable("no 'nobody' account to run as")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if not python:
        unavailable("no system python3 for the 'nobody' account")
    shared = tempfile.mkdtemp(prefix="pilotlog-nobody-")
    os.chmod(shared, 0o755)
    shutil.copy(str(bundle), os.path.join(shared, "pilotlog"))
    os.chmod(os.path.join(shared, "pilotlog"), 0o644)

    def run(*args, owner_spool):
        demote = lambda: (os.setgid(account.pw_gid), os.setuid(account.pw_uid))  # noqa: E731
        return subprocess.run(
            [python, "-I", "-S", os.path.join(shared, "pilotlog")] + list(args),
            cwd=shared,
            env={
                "PATH": "/usr/bin:/bin",
                "PILOTLOG_SPOOL": owner_spool,
                "PILOTLOG_CACHE": os.path.join(shared, "cache"),
            },
            preexec_fn=demote,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            timeout=60,
        )

    yield account, shared, run
    shutil.rmtree(shared, ignore_errors=True)


def test_spool_owned_by_someone_else(pilotlog, nobody):
    """Neither side trusts a spool of another account: root does not write into nobody's, nobody
    does not use root's.  One line naming the owner; the pilot goes on."""
    account, shared, run_as_nobody = nobody
    assert pilotlog("emit", "boot").returncode == 0
    before = pilotlog.events()
    # 1. root, with a spool that belongs to nobody
    for d in ("", "events", "tmp", "quarantine"):
        os.chown(str(pilotlog.spool / d), account.pw_uid, account.pw_gid)
    emit, replay = pilotlog("emit", "os"), pilotlog("replay")
    code = wrapped_exit_code(pilotlog, {})
    state_written = (pilotlog.spool / "state.json").exists()
    # 2. nobody, with a spool that belongs to root (world-searchable, so only ownership stops it)
    root_spool = os.path.join(shared, "root-spool")
    assert pilotlog("emit", "boot", env={"PILOTLOG_SPOOL": root_spool}).returncode == 0
    for dirpath, _, _ in os.walk(root_spool):
        os.chmod(dirpath, 0o755)
    emit_nobody = run_as_nobody("emit", "os", owner_spool=root_spool)
    replay_nobody = run_as_nobody("replay", owner_spool=root_spool)
    after = pilotlog.events()
    runs = (emit, replay, emit_nobody, replay_nobody)
    exit_ok = all(p.returncode == 0 and len(stderr_lines(p)) == 1 for p in runs) and code == 7
    ledger.record(
        "file system",
        "spool owned by another user (both ways)",
        5,
        len(before) - len(after),
        exit_ok,
        0.0,
        stderr_lines(emit)[0],
        extra="nothing written into the foreign spool",
    )
    assert exit_ok, [p.stderr for p in runs]
    assert "belongs to uid %d, not to this user (uid 0)" % account.pw_uid in emit.stderr
    assert "belongs to uid 0, not to this user (uid %d)" % account.pw_uid in emit_nobody.stderr
    assert "1 event(s) kept in spool" in replay.stderr and "1 event(s) kept in spool" in replay_nobody.stderr
    assert replay.stdout == "" and replay_nobody.stdout == ""
    assert after == before and not state_written
    assert len(os.listdir(os.path.join(root_spool, "events"))) == 1


def test_corrupt_truncated_and_planted_files(pilotlog, tmp_path):
    """Broken files are quarantined with a reason, links are never followed, the rest ships."""
    for phase in ("boot", "os", "power"):
        assert pilotlog("emit", phase).returncode == 0
    good = pilotlog.events()
    events = pilotlog.spool / "events"
    names = sorted(os.listdir(str(events)))
    secret = tmp_path / "outside.txt"
    secret.write_text("private: must never be read or shipped")
    (events / names[1]).write_bytes((events / names[1]).read_bytes()[:40])  # truncated mid-write
    (events / names[1].replace("_os_", "_install_")).write_bytes(b"\x00\xff garbage")  # corrupt
    (events / "zz-foreign.json").write_text("{}")  # not a name pilotlog writes
    os.symlink(str(secret), str(events / names[2].replace("_power_", "_match_")))  # planted link
    started = time.monotonic()
    replay = pilotlog("replay")
    took = time.monotonic() - started
    shipped = [json.loads(line)["id"] for line in replay.stdout.splitlines()]
    quarantine = pilotlog.spool / "quarantine"
    reasons = " ".join(p.read_text() for p in quarantine.iterdir() if p.name.endswith(".reason"))
    lost = len({good[0]["id"], good[2]["id"]} - set(shipped))  # the two intact events
    ledger.record(
        "file system",
        "truncated, corrupt, foreign files and a planted symlink",
        4,
        lost,
        replay.returncode == 0,
        took,
        stderr_lines(replay)[0] if replay.stderr else "",
        extra="4 quarantined with reasons; the link's target never read",
    )
    assert replay.returncode == 0 and lost == 0 and len(shipped) == 2
    assert len([p for p in quarantine.iterdir() if p.name.endswith(".reason")]) == 4
    for needle in ("not a valid event", "not one pilotlog writes", "symbolic link"):
        assert needle in reasons
    assert "private" not in replay.stdout + replay.stderr and secret.read_text().startswith("private")
    assert "4 file(s) in the spool were not valid events" in replay.stderr
