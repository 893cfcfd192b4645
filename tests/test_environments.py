"""Regression tests for issue 13: the bundle, run as a user runs it, in environments nobody planned for.

One test (or a small group) per numbered case of the issue; the generative suite that looks
for this class of problem by itself is tests/test_robustness.py.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import pyenv_python, stderr_lines


def shell(pilotlog, redirect: str, *args, env=None, timeout=60) -> subprocess.CompletedProcess:
    """``python dist/pilotlog ARGS`` with a shell redirection applied (e.g. ``>&-`` closes stdout)."""
    full_env = dict(pilotlog.env)
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    script = '"$@" %s' % redirect
    return subprocess.run(
        ["sh", "-c", script, "sh", pilotlog.python, "-I", "-S", str(pilotlog.bundle)] + [str(a) for a in args],
        cwd=str(pilotlog.cwd),
        env=full_env,
        timeout=timeout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )


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
    return subprocess.run(
        ["sh", "-c", script, "sh", pilotlog.python, "-I", "-S", str(pilotlog.bundle)] + list(args),
        cwd=str(pilotlog.cwd),
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=60,
    )


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


def test_an_unreadable_passcode_file_records_and_says_so_when_shipping(pilotlog, tmp_path):
    missing = str(tmp_path / "nonexistent")
    env = {"PILOTLOG_PASSCODE_FILE": missing, "PILOTLOG_SINK": "stomp://127.0.0.1:9/queue/q"}
    emit = pilotlog("emit", "boot", env=env)
    assert emit.returncode == 0 and emit.stderr == "" and pilotlog.depth() == 1
    for command in (("status",), ("config",)):
        assert pilotlog(*command, env=env).returncode == 0
    assert "passcode_file (unreadable)" in pilotlog("config", env=env).stdout
    replay = pilotlog("replay", env=env)
    (line,) = stderr_lines(replay)
    assert replay.returncode == 0 and missing + " cannot be read" in line and "1 event(s) kept" in line
    assert pilotlog("replay", "--strict", env=env).returncode == 3
    send = pilotlog("emit", "os", "--send", env=env)
    assert send.returncode == 0 and "not sent" in send.stderr and pilotlog.depth() == 2


# -- 6 and 7. the C locale of Python 3.6, and bytes that are not UTF-8 ----------------------


def bare(python, bundle, cwd, *args, env=None):
    """``env -i``-like: no LANG, no LC_*, bytes in and out (what an EL7 batch job gives a pilot)."""
    full_env = {"PATH": "/usr/bin:/bin"}
    full_env.update(env or {})
    return subprocess.run(
        [python, "-I", "-S", str(bundle)] + list(args),
        cwd=str(cwd),
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=60,
    )


@pytest.mark.parametrize("locale", [None, "C", "POSIX"])
def test_python36_in_a_c_locale_stores_and_ships_utf8(bundle, tmp_path, locale):
    python = pyenv_python("3.6.15")
    spool = tmp_path / "spöol"  # a non-ASCII spool path too
    env = {"PILOTLOG_SPOOL": str(spool)}
    if locale:
        env["LC_ALL"] = locale
    emit = bare(python, bundle, tmp_path, "emit", "boot", "-m", "héllo wörld", "-d", "where=Zürich", env=env)
    assert emit.returncode == 0 and emit.stderr == b"", emit.stderr
    run = bare(
        python, bundle, tmp_path, "run", "--", "sh", "-c", 'printf %s "$1" > arg; exit 3', "sh", "naïve", env=env
    )
    assert run.returncode == 3 and (tmp_path / "arg").read_bytes() == "naïve".encode()  # the child got the bytes
    status = bare(python, bundle, tmp_path, "status", env=env)
    assert status.returncode == 0 and "spöol".encode() in status.stdout
    replay = bare(python, bundle, tmp_path, "replay", env=env)
    assert replay.returncode == 0, replay.stderr
    events = [json.loads(line.decode("utf-8")) for line in replay.stdout.splitlines()]
    assert events[0]["message"] == "héllo wörld" and events[0]["data"] == {"where": "Zürich"}
    assert events[1]["data"]["command"][-1] == "naïve" and "naïve" in events[1]["message"]
    (tmp_path / "events.jsonl").write_bytes(replay.stdout)
    timeline = bare(python, bundle, tmp_path, "timeline", "events.jsonl", env=env)
    assert timeline.returncode == 0 and timeline.stderr == b"" and b"pilots" in timeline.stdout, timeline.stderr


def test_bytes_that_are_not_utf8_are_recorded_with_replacement_characters(bundle, tmp_path):
    env = {"PILOTLOG_SPOOL": str(tmp_path / "spool"), "LANG": "C.UTF-8"}
    odd = tmp_path / b"dir-\xff".decode("utf-8", "surrogateescape")
    odd.mkdir()
    emit = bare(
        sys.executable,
        bundle,
        odd,
        b"emit",
        b"boot",
        b"-m",
        b"a\xffb",
        b"-d",
        b"k=\xfe",
        b"-d",
        b"\xfdkey=v",
        b"--data",
        b'{"j": "x\xffy"}',
        env=env,
    )
    assert emit.returncode == 0 and emit.stderr == b"", emit.stderr
    run = bare(sys.executable, bundle, odd, b"run", b"--", b"sh", b"-c", b"exit 9", b"arg\xff", env=env)
    assert run.returncode == 9 and run.stderr == b""
    spooled = [json.loads(p.read_bytes().decode("utf-8")) for p in sorted((tmp_path / "spool" / "events").iterdir())]
    emitted, boot, _ = spooled
    assert emitted["message"] == "a\ufffdb" and emitted["data"] == {"k": "\ufffd", "\ufffdkey": "v", "j": "x\ufffdy"}
    assert boot["data"]["command"][-1] == "arg\ufffd" and boot["data"]["cwd"].endswith("dir-\ufffd")


# -- 8. deeply nested JSON ------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["-d", "--data"])
def test_deeply_nested_data_is_a_usage_error_with_the_documented_limit(pilotlog, option):
    for depth, code in ((32, 0), (33, 2), (10000, 2)):
        nested = "[" * depth + "]" * depth
        value = ("k:=" + nested) if option == "-d" else '{"k": %s}' % nested[2:-2] if depth > 1 else "{}"
        p = pilotlog("emit", "boot", option, value)
        assert p.returncode == (code if option == "-d" else (0 if depth <= 33 else 2)), p.stderr
        if p.returncode == 2:
            (line,) = stderr_lines(p)
            assert "nests deeper than 32 levels" in line and "Traceback" not in p.stderr


# -- 10. NaN and Infinity -------------------------------------------------------------------------


def test_nan_and_infinity_are_refused_at_emit_and_never_shipped(pilotlog):
    for value in ("k:=NaN", "i:=Infinity", "m:=-Infinity", "l:=[1, NaN]"):
        p = pilotlog("emit", "boot", "-d", value)
        assert p.returncode == 2 and "is not a JSON number" in p.stderr
    p = pilotlog("emit", "boot", "--data", '{"k": NaN}')
    assert p.returncode == 2 and pilotlog.depth() == 0
    assert pilotlog("emit", "boot", "-d", "k:=1e999").returncode == 2  # overflows to Infinity
    # A file holding NaN (planted, or written by an older version) is quarantined, never shipped.
    assert pilotlog("emit", "boot", "-d", "k:=1.5").returncode == 0
    (path,) = (pilotlog.spool / "events").iterdir()
    path.write_text(path.read_text().replace("1.5", "NaN"))
    replay = pilotlog("replay")
    assert (
        replay.stdout == ""
        and "not a JSON number" in (pilotlog.spool / "quarantine" / (path.name + ".reason")).read_text()
    )


# -- 9. a spool whose parent directories do not exist yet ----------------------------------------


def test_missing_parent_directories_of_the_spool_are_made_private(pilotlog, tmp_path):
    spool = tmp_path / "logs" / "deeper" / "spool"
    env = {"PILOTLOG_SPOOL": spool}
    emit = pilotlog("emit", "boot", env=env)
    assert emit.returncode == 0 and emit.stderr == "" and len(os.listdir(str(spool / "events"))) == 1, emit.stderr
    for d in (tmp_path / "logs", tmp_path / "logs" / "deeper", spool):
        assert d.stat().st_mode & 0o777 == 0o700
    relative = pilotlog("emit", "boot", env={"PILOTLOG_SPOOL": "rel/spool"})
    assert relative.returncode == 0 and (tmp_path / "rel" / "spool" / "events").is_dir()


# -- 11. concurrent replays take turns ------------------------------------------------------------


def test_concurrent_replays_send_each_event_once(pilotlog):
    from helpers import fill_spool

    ids = {e["id"] for e in fill_spool(pilotlog.spool, 3000)}
    cmd = [pilotlog.python, "-I", "-S", str(pilotlog.bundle), "replay"]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=str(pilotlog.cwd),
            env=pilotlog.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    sent = [json.loads(line)["id"] for out, _ in outputs for line in out.splitlines()]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    assert len(sent) == len(set(sent)) == 3000 and set(sent) == ids, "%d sent, %d distinct" % (
        len(sent),
        len(set(sent)),
    )
    assert pilotlog.depth() == 0
    assert json.loads(pilotlog("status", "--json").stdout)["delivered_total"] == 3000


# -- 12. the stdout sink counts what was written and flushed ---------------------------------------


@pytest.mark.parametrize("redirect", ["| head -n 2 >/dev/null", ">/dev/full"])
def test_stdout_sink_counts_only_what_was_written_and_flushed(pilotlog, redirect):
    from helpers import fill_spool

    ids = {e["id"] for e in fill_spool(pilotlog.spool, 2000)}
    p = shell(pilotlog, redirect, "replay", env={"PILOTLOG_BATCH_EVENTS": 10})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    (line,) = stderr_lines(p)
    status = json.loads(pilotlog("status", "--json").stdout)
    kept = {e["id"] for e in pilotlog.events()}
    assert "cannot write to stdout" in line and "%d event(s) kept" % len(kept) in line
    assert status["delivered_total"] + len(kept) == 2000 and kept <= ids  # removed: only what was written
    if "full" in redirect:
        assert status["delivered_total"] == 0  # no write ever succeeded


# -- 14. status and replay on a spool they cannot read ---------------------------------------------


@pytest.fixture
def as_nobody(bundle):
    """Run the bundle as 'nobody' (a world-readable copy, the system Python): the only way a root test
    sees permission errors.  Yields (run, shared directory, nobody's uid)."""
    import pwd
    import shutil
    import tempfile

    from helpers import unavailable

    python, setpriv = shutil.which("python3", path="/usr/bin:/bin"), shutil.which("setpriv")
    if os.geteuid() != 0 or not python or not setpriv:
        unavailable("running as 'nobody' needs root, setpriv and a system python3")
    uid = pwd.getpwnam("nobody").pw_uid
    shared = tempfile.mkdtemp(prefix="pilotlog-13-")
    os.chmod(shared, 0o755)
    shutil.copy(str(bundle), os.path.join(shared, "pilotlog"))
    os.chmod(os.path.join(shared, "pilotlog"), 0o644)

    def run(*args, spool, timeout=60):
        return subprocess.run(
            [
                setpriv,
                "--reuid=%d" % uid,
                "--regid=%d" % uid,
                "--clear-groups",
                python,
                "-I",
                "-S",
                os.path.join(shared, "pilotlog"),
            ]
            + list(args),
            cwd=shared,
            timeout=timeout,
            env={
                "PATH": "/usr/bin:/bin",
                "PILOTLOG_SPOOL": spool,
                "LANG": "C.UTF-8",
                "PILOTLOG_CACHE": os.path.join(shared, "cache-%d" % uid),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
        )

    yield run, shared, uid
    shutil.rmtree(shared, ignore_errors=True)


def test_status_and_replay_name_a_spool_they_cannot_read(pilotlog, tmp_path, as_nobody):
    run, shared, uid = as_nobody
    cases = {}
    regular = tmp_path / "a-file"
    regular.write_text("not a spool")
    cases["a regular file"] = (lambda *a: pilotlog(*a, env={"PILOTLOG_SPOOL": regular}), "is not a directory")
    long_path = "/tmp/" + "/".join(["d" * 200] * 25)  # 5,000 characters
    cases["a 5,000-character path"] = (lambda *a: pilotlog(*a, env={"PILOTLOG_SPOOL": long_path}), "File name too long")
    home = os.path.join(shared, "home")  # nobody's own directory
    os.mkdir(home)
    os.chown(home, uid, uid)
    private = os.path.join(home, "mode000")
    assert run("emit", "boot", spool=private).stderr == ""
    os.chmod(private, 0)
    cases["mode 000"] = (lambda *a: run(*a, spool=private), "Permission denied")
    roots = os.path.join(shared, "root-spool")  # root's, world-searchable: only its owner stops nobody
    assert pilotlog("emit", "boot", env={"PILOTLOG_SPOOL": roots}).returncode == 0
    for dirpath, _, _ in os.walk(roots):
        os.chmod(dirpath, 0o755)
    cases["another user's"] = (lambda *a: run(*a, spool=roots), "belongs to uid 0")
    for name, (pl, reason) in cases.items():
        status = pl("status", "--json")
        assert status.returncode == 0 and "Traceback" not in status.stderr, (name, status.stderr)
        assert reason in json.loads(status.stdout)["problem"], name
        replay = pl("replay")
        (line,) = stderr_lines(replay)
        assert replay.returncode == 0 and reason in line and "no spool at" not in line, (name, line)
    os.chmod(private, 0o700)


def test_a_spool_path_that_links_to_my_own_directory_is_used(pilotlog, tmp_path):
    real = tmp_path / "real-spool"
    real.mkdir(mode=0o700)
    link = tmp_path / "spool-link"
    link.symlink_to(real)
    env = {"PILOTLOG_SPOOL": link}
    assert pilotlog("emit", "boot", env=env).stderr == "" and len(os.listdir(str(real / "events"))) == 1
    replay = pilotlog("replay", env=env)
    assert replay.returncode == 0 and len(replay.stdout.splitlines()) == 1 and "not a directory" not in replay.stderr
    assert json.loads(pilotlog("status", "--json", env=env).stdout)["problem"] is None


# -- 15. a message that starts with a dash ------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("-m", "-x"),
        ("--message", "--verbose"),
        ("--message=-x",),
        ("-m", "-"),
        ("-m", "-d", "-d", "k=v"),
        ("-s", "warning", "-m", "--"),
    ],
)
def test_a_message_starting_with_a_dash_is_data(pilotlog, args):
    p = pilotlog("emit", "boot", *args)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    (event,) = pilotlog.events()
    assert event["message"] == (
        args[1] if len(args) > 1 and args[0] in ("-m", "--message") else args[-1] if args[0] == "-s" else "-x"
    )
    if "k=v" in args:
        assert event["data"] == {"k": "v"}


# -- 16. misleading answers ------------------------------------------------------------------------------


def test_emit_send_with_the_stdout_sink_keeps_the_pilots_stdout_clean(pilotlog):
    pilotlog("emit", "boot")
    p = pilotlog("emit", "os", "--send")
    assert p.returncode == 0 and p.stdout == "" and pilotlog.depth() == 2
    (line,) = stderr_lines(p)
    assert "sink is stdout" in line and "pilotlog replay" in line


def test_power_refuses_a_fraction_too_small_to_time(pilotlog):
    p = pilotlog("power", "--fraction", "1e-9")
    assert p.returncode == 2 and "--fraction must be between 0.001 and 10" in p.stderr and pilotlog.depth() == 0
    p = pilotlog("power", "--fraction", "0.001")
    (event,) = pilotlog.events()
    assert p.returncode == 0 and 0.5 < event["data"]["db12"] < 500, event["data"]  # a plausible figure


def test_a_child_killed_by_a_signal_is_reported_as_such(pilotlog):
    p = pilotlog("run", "--", "sh", "-c", "kill -9 $$")
    assert p.returncode == 137
    shutdown = pilotlog.events()[-1]
    assert shutdown["message"].startswith("sh killed by SIGKILL after") and shutdown["data"]["signal"] == "SIGKILL"


def test_python_api_keeps_a_record_with_a_bad_phase_and_blames_nothing_on_the_cli(pilotlog):
    code = (
        "import logging, sys; sys.path.insert(0, %r); import pilotlogger; log = logging.getLogger('Pilot');"
        "log.addHandler(pilotlogger.Handler()); log.setLevel(logging.INFO);"
        "log.info('installing', extra={'phase': 'not a phase!'});"
        "pilotlogger.emit('boot', 'big', blob='x' * 100000)" % str(pilotlog.bundle)
    )
    p = subprocess.run(
        [pilotlog.python, "-I", "-S", "-c", code],
        cwd=str(pilotlog.cwd),
        env=pilotlog.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=60,
    )
    (event,) = pilotlog.events()
    assert event["phase"] == "log" and event["data"]["invalid_phase"] == "not a phase!"
    (line,) = stderr_lines(p)
    assert "larger than max_event_bytes" in line and "--message" not in line and "--data" not in line


@pytest.mark.parametrize(
    "env,named",
    [
        ({"PILOTLOG_SITE": "LCG." + "x" * 300}, "env PILOTLOG_SITE: site is longer than 256 characters"),
        ({"DIRAC_PILOT_STAMP": "two words"}, "env DIRAC_PILOT_STAMP: pilot id"),
        ({"PILOTLOG_SOURCE": "wrapper-é"}, "ASCII letters"),
    ],
)
def test_a_bad_setting_is_named_not_blamed_on_the_message(pilotlog, env, named):
    p = pilotlog("emit", "boot", "-m", "hello", env=env)
    (line,) = stderr_lines(p)
    assert p.returncode == 2 and named in line and "--message" not in line, line
    assert pilotlog("run", "--", "sh", "-c", "exit 8", env=env).returncode == 8  # the pilot still runs


# -- found by tests/faults/test_robustness.py ------------------------------------------------------


def test_stderr_on_a_full_device_does_not_change_the_childs_exit_code(pilotlog, tmp_path):
    (tmp_path / "a-file").write_text("")
    env = {"PILOTLOG_SPOOL": tmp_path / "a-file"}  # every record warns: stderr is written, and fails
    for redirect in ("2>/dev/full", ">/dev/full 2>/dev/full"):
        assert shell(pilotlog, redirect, "run", "--", "sh", "-c", "exit 0", env=env).returncode == 0
        assert shell(pilotlog, redirect, "emit", "boot", env=env).returncode == 0


def test_settings_from_the_environment_that_are_not_utf8_are_recorded_with_replacement_characters(bundle, tmp_path):
    env = {
        b"PILOTLOG_SPOOL": str(tmp_path / "spool").encode(),
        b"PILOTLOG_SITE": b"LCG.\x80",
        b"SLURM_JOB_ID": b"7\xff",
        b"PATH": b"/usr/bin:/bin",
    }
    for python in (pyenv_python("3.6.15"), sys.executable):
        p = subprocess.run(
            [python, "-I", "-S", str(bundle), "emit", "boot"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        assert p.returncode == 0 and p.stderr == b"", p.stderr
    for path in (tmp_path / "spool" / "events").iterdir():
        context = json.loads(path.read_bytes().decode("utf-8"))["context"]
        assert context["site"] == "LCG.\ufffd" and context["batch_job"] == "7\ufffd"


def test_integers_a_newer_python_could_not_read_back_are_refused(pilotlog):
    p = pilotlog("emit", "boot", "-d", "k:=" + "1" * 4301)  # Python 3.6 would store it; 3.11+ cannot parse it
    assert p.returncode == 2 and "longer than 4300" in p.stderr and pilotlog.depth() == 0
    assert pilotlog("emit", "boot", "-d", "k:=" + "1" * 4300).returncode == 0
