"""Regression tests for issue 13: the bundle, run as a user runs it, in environments nobody planned for.

One test (or a small group) per numbered case of the issue; the generative suite that looks
for this class of problem by itself is tests/test_robustness.py.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import clean_env, stderr_lines


def shell(pilotlog, redirect: str, *args, env=None, timeout=60) -> subprocess.CompletedProcess:
    """``python dist/pilotlog ARGS`` with a shell redirection applied (e.g. ``>&-`` closes stdout)."""
    full_env = dict(pilotlog.env)
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    script = '"$@" %s' % redirect
    return subprocess.run(["sh", "-c", script, "sh", pilotlog.python, "-I", "-S", str(pilotlog.bundle)]
                          + [str(a) for a in args], cwd=str(pilotlog.cwd), env=full_env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


# -- 1. closed standard descriptors -------------------------------------------------------


@pytest.mark.parametrize("redirect", [">&-", "<&-", "2>&-", "<&- >&- 2>&-"])
def test_closed_std_descriptors_harm_neither_run_nor_emit(pilotlog, redirect):
    run = shell(pilotlog, redirect, "run", "--", "sh", "-c", "exit 3")
    assert run.returncode == 3 and "Traceback" not in run.stderr, run.stderr
    emit = shell(pilotlog, redirect, "emit", "boot", "-m", "closed")
    assert emit.returncode == 0 and "Traceback" not in emit.stderr, emit.stderr
    assert [e["phase"] for e in pilotlog.events()] == ["boot", "shutdown", "boot"]


def test_replay_into_a_closed_stdout_keeps_every_event(pilotlog):
    for i in range(3):
        pilotlog("emit", "log", "-m", str(i))
    replay = shell(pilotlog, ">&-", "replay")
    assert replay.returncode == 0 and pilotlog.depth() == 3
    (line,) = stderr_lines(replay)
    assert "stdout is closed" in line and "3 event(s) kept" in line


# -- 2. a damaged bytecode cache -------------------------------------------------------------


def _cached(pilotlog, cache):
    (key,) = [d for d in os.listdir(str(cache)) if not d.startswith("tmp")]
    return cache / key / "pilotlogger"


@pytest.mark.parametrize("damage", ["delete cli.py", "truncate events.py", "garbage cli bytecode", "cache is a file"])
def test_a_damaged_cache_falls_back_to_the_zip_and_heals(pilotlog, tmp_path, damage):
    cache = tmp_path / "cache"
    env = {"PILOTLOG_CACHE": cache}
    assert pilotlog("emit", "boot", env=env).returncode == 0  # unpacks and compiles
    package = _cached(pilotlog, cache)
    if damage == "delete cli.py":
        (package / "cli.py").unlink()
    elif damage == "truncate events.py":
        (package / "events.py").write_text("def broken(:\n")
    elif damage == "garbage cli bytecode":
        (pyc,) = (package / "__pycache__").glob("cli.*.pyc")
        header = pyc.read_bytes()[:16]
        pyc.write_bytes(header + b"\xff" * 64)
    else:
        import shutil

        shutil.rmtree(str(cache))
        cache.write_text("not a directory")
    run = pilotlog("run", "--", "sh", "-c", "exit 5", env=env)
    assert run.returncode == 5 and run.stderr == "", run.stderr
    emit = pilotlog("emit", "install", env=env)
    assert emit.returncode == 0 and emit.stderr == ""
    assert [e["phase"] for e in pilotlog.events()] == ["boot", "boot", "shutdown", "install"]
    if damage != "cache is a file":  # healed: a complete copy again
        assert (_cached(pilotlog, cache) / "cli.py").is_file()
        assert "broken" not in (_cached(pilotlog, cache) / "events.py").read_text()


# -- 3. the working directory deleted under the pilot ---------------------------------------


def _in_deleted_cwd(pilotlog, *args, env=None):
    script = 'mkdir gone && cd gone && rmdir ../gone && exec "$@"'
    full_env = dict(pilotlog.env)
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    return subprocess.run(["sh", "-c", script, "sh", pilotlog.python, "-I", "-S", str(pilotlog.bundle)] + list(args),
                          cwd=str(pilotlog.cwd), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


def test_a_deleted_working_directory_with_an_absolute_spool(pilotlog):
    run = _in_deleted_cwd(pilotlog, "run", "--", "sh", "-c", "exit 6")
    assert run.returncode == 6 and "pilotlog" not in run.stderr, run.stderr  # the child's sh complains, not us
    emit = _in_deleted_cwd(pilotlog, "emit", "boot", "-m", "cwd gone")
    assert emit.returncode == 0 and emit.stderr == ""
    boot, shutdown, emitted = pilotlog.events()
    assert "No such file" in boot["data"]["cwd"] and shutdown["data"]["exit_code"] == 6
    assert emitted["message"] == "cwd gone"


def test_a_deleted_working_directory_with_a_relative_spool(pilotlog):
    env = {"PILOTLOG_SPOOL": "spool"}
    run = _in_deleted_cwd(pilotlog, "run", "--", "sh", "-c", "exit 6", env=env)
    assert run.returncode == 6, run.stderr
    emit = _in_deleted_cwd(pilotlog, "emit", "boot", env=env)
    (line,) = stderr_lines(emit)
    assert emit.returncode == 0 and "working directory no longer exists" in line and "absolute" in line


# -- 4. special files as config and credential files -----------------------------------------


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "directory", "huge"])
def test_config_files_must_be_small_regular_files(pilotlog, tmp_path, kind):
    path = {"/dev/zero": "/dev/zero", "fifo": str(tmp_path / "fifo"), "directory": str(tmp_path)}.get(kind)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        path = str(tmp_path / "huge.json")
        with open(path, "w") as f:
            f.write("{" + " " * (8 * 1024 * 1024) + "}")
    for variable in ("PILOTLOG_CONFIG", "PILOTLOG_PASSCODE_FILE"):
        env = {variable: path, "PILOTLOG_SINK": "stomp://127.0.0.1:9/queue/q"}
        run = pilotlog("run", "--", "sh", "-c", "exit 4", env=env, timeout=20)  # a hang fails by timeout
        assert run.returncode == 4 and "Traceback" not in run.stderr
        emit = pilotlog("emit", "boot", env=env, timeout=20)
        assert emit.returncode in (0, 2) and len(stderr_lines(emit)) <= 1, emit.stderr
    assert "is not a regular file" in run.stderr or "larger than" in run.stderr or kind == "huge"


# -- 5. an unreadable passcode file is a shipping problem ---------------------------------------


def test_an_unreadable_passcode_file_records_and_says_so_when_shipping(pilotlog):
    env = {"PILOTLOG_PASSCODE_FILE": "/nonexistent", "PILOTLOG_SINK": "stomp://127.0.0.1:9/queue/q"}
    emit = pilotlog("emit", "boot", env=env)
    assert emit.returncode == 0 and emit.stderr == "" and pilotlog.depth() == 1
    for command in (("status",), ("config",)):
        assert pilotlog(*command, env=env).returncode == 0
    assert "passcode_file (unreadable)" in pilotlog("config", env=env).stdout
    replay = pilotlog("replay", env=env)
    (line,) = stderr_lines(replay)
    assert replay.returncode == 0 and "/nonexistent cannot be read" in line and "1 event(s) kept" in line
    assert pilotlog("replay", "--strict", env=env).returncode == 3
    send = pilotlog("emit", "os", "--send", env=env)
    assert send.returncode == 0 and "not sent" in send.stderr and pilotlog.depth() == 2
