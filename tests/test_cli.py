"""The command line, run as users run it: the bundle, isolated (python -I -S), outside the repo."""

import json
import os
import stat
import subprocess
import sys
import zipfile

import pytest

from helpers import ROOT, clean_env, stderr_lines

STAMP = "0123456789abcdef0123456789abcdef"


def test_bundle_is_a_small_executable_zipapp(bundle):
    assert os.stat(str(bundle)).st_mode & stat.S_IXUSR
    assert bundle.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(str(bundle)) as z:
        listed = z.namelist()
    assert "__main__.py" in listed and "pilotlogger/cli.py" in listed
    assert not [n for n in listed if "test" in n or n.endswith(".pyc")]
    # ~130 KB with the sans-IO session, serve's defences, DIRAC's rules, the relay; ~155 KB with the
    # relay around DIRAC's pilot wrapper (one log, each line once, the Pilot's credential); ~162 KB with fork
    # and signal safety (concurrency.py, and the spool's, handler's, wrapper's parts); ~168 KB with the relay's
    # answers on a stalled node (late answers, the credential read beside the request): growth past this is a choice
    assert bundle.stat().st_size < 172 * 1024


def test_bundle_is_importable(bundle, tmp_path):
    code = "import sys; sys.path.insert(0, %r); import pilotlogger, pilotlogger.events as e; print(pilotlogger.__file__, e.new_id())"
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code % str(bundle)],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        universal_newlines=True,
        check=True,
    ).stdout
    assert out.startswith(str(bundle) + "/pilotlogger/__init__.py ")


def test_emit_replay_status_round_trip(pilotlog):
    p = pilotlog("emit", "boot", "-m", "booted up", env={"DIRAC_PILOT_STAMP": STAMP, "PILOTLOG_SITE": "LCG.X.fr"})
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    p = pilotlog(
        "emit",
        "power",
        "-m",
        "power of 11 HS06",
        "-d",
        "hs06:=11",
        "-d",
        "unit=HS06",
        "--status",
        "debug",
        "--source",
        "CheckWorkerNode",
        env={"DIRAC_PILOT_STAMP": STAMP},
    )
    assert p.returncode == 0
    spooled = pilotlog.events()
    assert [e["seq"] for e in spooled] == [1, 2]
    assert spooled[1]["data"] == {"hs06": 11, "unit": "HS06"} and spooled[1]["source"] == "CheckWorkerNode"
    assert spooled[0]["context"]["site"] == "LCG.X.fr" and spooled[0]["pilot"] == STAMP

    status = json.loads(pilotlog("status", "--json", env={"DIRAC_PILOT_STAMP": STAMP}).stdout)
    assert (status["depth"], status["quarantined"], status["pilot"]) == (2, 0, STAMP)
    assert status["pilot_origin"] == "env DIRAC_PILOT_STAMP"
    assert status["oldest"] == spooled[0]["time"] and status["newest"] == spooled[1]["time"]

    p = pilotlog("replay")
    assert p.returncode == 0
    assert [json.loads(line) for line in p.stdout.splitlines()] == spooled
    (summary,) = stderr_lines(p)
    assert summary.startswith("pilotlog: replayed 2 event(s) to stdout in ")
    assert summary.endswith("; 0 left in spool %s" % pilotlog.spool)
    status = json.loads(pilotlog("status", "--json").stdout)
    assert (status["depth"], status["delivered_total"], status["last_error"]) == (0, 2, None)
    assert pilotlog("replay").stdout == ""  # acknowledged events are gone


def test_replay_in_dirac_format(pilotlog):
    pilotlog("emit", "match", "-m", "matched a job", env={"PILOTLOG_PILOT_UUID": STAMP})
    p = pilotlog("replay", "--format", "dirac")
    (record,) = [json.loads(line) for line in p.stdout.splitlines()]
    assert set(record) == {"pilotUUID", "timestamp", "source", "phase", "status", "messageContent"}
    assert all(isinstance(v, str) and v for v in record.values())
    assert (record["pilotUUID"], record["phase"]) == (STAMP, "match")
    assert record["messageContent"].startswith("matched a job | id=")


def test_generated_pilot_id_is_reused_by_later_calls(pilotlog):
    for phase in ("boot", "os", "shutdown"):
        assert pilotlog("emit", phase).returncode == 0
    pilots = {e["pilot"] for e in pilotlog.events()}
    assert len(pilots) == 1
    assert pilots == {(pilotlog.spool / "pilot-uuid").read_text().strip()}


@pytest.mark.parametrize(
    "args,needle",
    [
        (["emit"], "required: phase"),
        (["emit", "boot", "--data", "{nope"], "--data is not valid JSON"),
        (["emit", "boot", "--data", "[1]"], "--data must be a JSON object"),
        (["emit", "boot", "-d", "novalue"], "must be KEY=VALUE or KEY:=JSON"),
        (["emit", "boot", "-d", "n:=nan-ish"], "is not valid JSON"),
        (["emit", "boot", "-m", "x" * 70000], "larger than max_event_bytes"),
        (["emit", "boot", "--status", "fatal"], "invalid choice"),
        (["emit", "has space"], "phase"),
        (["emit", "boot", "--max-events", "0"], "--max-events: '0' is not a positive integer"),
        (["emit", "boot", "--bogus"], "emit: unknown option(s) --bogus (see 'pilotlog emit --help')"),
        (["frobnicate"], "invalid choice"),
        ([], "a command is required"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_write_nothing(pilotlog, args, needle):
    p = pilotlog(*args)
    assert p.returncode == 2
    lines = stderr_lines(p)
    assert len(lines) == 1 and lines[0].startswith("pilotlog: ") and needle in lines[0], lines
    assert "Traceback" not in p.stderr
    assert pilotlog.events() == []


def test_bad_config_file_exits_2_naming_the_key(pilotlog, tmp_path):
    conf = tmp_path / "pilotlog.json"
    conf.write_text('{"sink": "stdout", "max_event": 5}')
    p = pilotlog("emit", "boot", env={"PILOTLOG_CONFIG": conf})
    assert p.returncode == 2 and "unknown key 'max_event'" in p.stderr and str(conf) in p.stderr


def test_status_below_level_is_not_recorded(pilotlog):
    assert pilotlog("emit", "log", "--status", "debug", env={"PILOTLOG_LEVEL": "info"}).returncode == 0
    assert pilotlog("emit", "log", "--status", "error", env={"PILOTLOG_LEVEL": "info"}).returncode == 0
    assert [e["status"] for e in pilotlog.events()] == ["error"]


def test_unwritable_spool_exits_0_with_one_warning(pilotlog, tmp_path):
    """As root, permissions do not bite: run the bundle as nobody against a root-only dir."""
    import shutil
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    python, preexec = sys.executable, None
    if os.getuid() == 0:
        # nobody needs an interpreter and a bundle it may read: Debian's python3 and a copy in /tmp.
        python = "/usr/bin/python3"
        public = tempfile.mkdtemp(dir="/tmp")
        os.chmod(public, 0o755)
        bundle = shutil.copy(str(pilotlog.bundle), public)
        preexec = lambda: (os.setgid(65534), os.setuid(65534))  # noqa: E731
    else:
        locked.chmod(0o500)
        bundle = str(pilotlog.bundle)
    p = subprocess.run(
        [python, "-I", "-S", bundle, "emit", "boot", "-m", "booted up"],
        cwd="/",
        env=clean_env(PILOTLOG_SPOOL=locked / "spool"),
        preexec_fn=preexec,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=60,
    )
    assert p.returncode == 0
    (line,) = stderr_lines(p)
    assert line.startswith("pilotlog: event not recorded: cannot") and "Permission denied" in line
    assert "the pilot goes on" in line
    assert not (locked / "spool").exists()


def test_spool_path_that_is_a_file_exits_0(pilotlog, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    p = pilotlog("emit", "boot", env={"PILOTLOG_SPOOL": blocker / "spool"})
    assert p.returncode == 0 and "event not recorded" in p.stderr


def test_full_spool_warns_once_per_emit_and_keeps_lifecycle(pilotlog):
    env = {"PILOTLOG_MAX_EVENTS": 3}
    for phase in ("boot", "log", "log"):
        assert pilotlog("emit", phase, env=env).stderr == ""
    p = pilotlog("emit", "install", env=env)
    assert p.returncode == 0 and "evicted the 1 oldest log event(s) to keep this install event" in p.stderr
    pilotlog("emit", "os", env=env)
    p = pilotlog("emit", "match", env=env)
    (line,) = stderr_lines(p)
    assert p.returncode == 0 and "is full" in line and "this match event was dropped" in line
    assert [e["phase"] for e in pilotlog.events()] == ["boot", "install", "os"]
    assert json.loads(pilotlog("status", "--json").stdout)["dropped_total"] == 3


def test_replay_quarantines_a_corrupt_file_and_ships_the_rest(pilotlog):
    pilotlog("emit", "boot")
    (pilotlog.spool / "events" / "junk.json").write_text("{")
    p = pilotlog("replay")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 1
    assert json.loads(pilotlog("status", "--json").stdout)["quarantined"] == 1
    assert (pilotlog.spool / "quarantine" / "junk.json.reason").read_text().strip()


def test_replay_without_spool_and_unknown_sink(pilotlog):
    p = pilotlog("replay")
    assert p.returncode == 0 and "nothing to replay" in p.stderr
    pilotlog("emit", "boot")
    p = pilotlog("replay", "--sink", "ftp://user:hunter2@h/x")
    assert p.returncode == 2 and "not supported" in p.stderr and "hunter2" not in p.stderr


def test_replay_strict_exit_code_when_sink_fails(pilotlog):
    pilotlog("emit", "boot")
    # stdout closed: the stdout sink cannot deliver, the event stays.
    p = subprocess.run(
        [sys.executable, "-I", "-S", str(pilotlog.bundle), "replay", "--strict"],
        cwd=str(pilotlog.cwd),
        env=pilotlog.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert p.returncode == 0  # /dev/null accepts: delivered
    pilotlog("emit", "boot")
    r, w = os.pipe()
    os.close(r)  # writing to a pipe nobody reads: EPIPE
    p = subprocess.run(
        [sys.executable, "-I", "-S", str(pilotlog.bundle), "replay", "--strict"],
        cwd=str(pilotlog.cwd),
        env=pilotlog.env,
        stdout=w,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=60,
    )
    os.close(w)
    assert p.returncode == 3
    assert "cannot write to stdout" in p.stderr and "1 event(s) kept in spool" in p.stderr
    status = json.loads(pilotlog("status", "--json").stdout)
    assert status["depth"] == 1 and "cannot write to stdout" in status["last_error"]


def test_config_shows_origins_and_masks_secrets(pilotlog):
    p = pilotlog("config", "--json", env={"PILOTLOG_SINK": "https://u:topsecret@h:8444/p", "PILOTLOG_SITE": "S"})
    shown = json.loads(p.stdout)
    assert shown["site"] == {"value": "S", "from": "env PILOTLOG_SITE"}
    assert shown["sink"]["value"] == "https://****@h:8444/p" and "topsecret" not in p.stdout
    assert "topsecret" not in pilotlog("config", env={"PILOTLOG_SINK": "https://u:topsecret@h/p"}).stdout


def test_version_and_help(pilotlog):
    from pilotlogger import __version__

    p = pilotlog("--version")
    assert p.returncode == 0 and p.stdout.strip() == "pilotlog " + __version__
    p = pilotlog("emit", "--help")
    assert p.returncode == 0 and "examples:" in p.stdout and "PILOTLOG_SPOOL" in p.stdout


def _help_sections(text: str):
    """(the settings' flags, the example lines) of one --help."""
    settings = text.split("settings it reads", 1)[1].split("examples:")[0] if "settings it reads" in text else ""
    flags = {line.split()[0] for line in settings.splitlines() if line.startswith("  --")}  # not help text
    return flags, [line.strip() for line in text.split("examples:\n", 1)[1].splitlines() if line.strip()]


def test_every_setting_belongs_to_the_commands_that_read_it():
    """A new setting must be placed in cli_help's groups, or no command's help would show it."""
    from pilotlogger.cli_help import EVERYTHING
    from pilotlogger.config import SETTINGS

    assert sorted(s.name for s in SETTINGS) == sorted(EVERYTHING)


def test_each_command_help_teaches_its_own_use(pilotlog):
    """Own examples, and only the settings the command reads (issue 18)."""
    from pilotlogger.cli import COMMANDS
    from pilotlogger.cli_help import SETTINGS_READ
    from pilotlogger.config import SETTINGS

    flag_of = {s.name: "--" + s.name.replace("_", "-") for s in SETTINGS if s.flag}
    seen_examples = set()
    for command in COMMANDS:
        p = pilotlog(command, "--help")
        assert p.returncode == 0, p.stderr
        flags, examples = _help_sections(p.stdout)
        assert flags == {flag_of[name] for name in SETTINGS_READ[command] if name in flag_of}, command
        assert len(examples) >= 2 and all(
            e.startswith("pilotlog %s" % command) or e.startswith("--") for e in examples
        ), (command, examples)
        assert not seen_examples & set(examples)  # no command repeats another's examples
        seen_examples |= set(examples)
    serve = pilotlog("serve", "--help").stdout
    assert "--spool" not in serve and "--window" not in serve and "--server-cert" in serve
    assert "(default: never)" in " ".join(pilotlog("tail", "--help").stdout.split())  # runs until told to stop
    assert "(default: 5)" in " ".join(pilotlog("timeline", "--help").stdout.split())


@pytest.mark.parametrize(
    "args,command",
    [
        (["serve", "--spool", "x"], "serve"),
        (["tail", "--max-events=7"], "tail"),
        (["status", "extra"], "status"),
    ],
)
def test_an_option_a_command_does_not_take_points_at_that_commands_help(pilotlog, args, command):
    p = pilotlog(*args)
    assert p.returncode == 2 and "(see 'pilotlog %s --help')" % command in p.stderr
    assert "=7" not in p.stderr and "extra" not in p.stderr  # values are never repeated


def test_module_launcher_and_bundle_behave_the_same(pilotlog, tmp_path):
    env = clean_env(PILOTLOG_SPOOL=tmp_path / "s2", PILOTLOG_PILOT_UUID=STAMP)
    runs = {
        "bundle": [sys.executable, "-I", "-S", str(pilotlog.bundle)],
        "module": [sys.executable, "-m", "pilotlogger"],
        "launcher": [sys.executable, str(ROOT / "bin" / "pilotlog")],
    }
    outputs = {}
    for how, cmd in runs.items():
        emitted = subprocess.run(cmd + ["emit", "os", "-m", how], env=env, cwd=str(ROOT), timeout=60)
        assert emitted.returncode == 0
        outputs[how] = subprocess.run(
            cmd + ["config", "--json"],
            env=env,
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            timeout=60,
            universal_newlines=True,
        ).stdout
    assert outputs["bundle"] == outputs["module"] == outputs["launcher"]
    assert (
        subprocess.run(runs["bundle"] + ["--version"], stdout=subprocess.PIPE).stdout
        == subprocess.run(runs["module"] + ["--version"], cwd=str(ROOT), stdout=subprocess.PIPE).stdout
    )


def test_make_run_demo_shows_the_whole_lifecycle(bundle, tmp_path):
    p = subprocess.run(
        ["bash", str(ROOT / "examples" / "demo-pilot.sh"), str(bundle)],
        cwd=str(tmp_path),
        env=clean_env(PILOTLOG_SPOOL=tmp_path / "demo"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    shipped = [json.loads(line) for line in p.stdout.splitlines()]
    assert [e["phase"] for e in shipped] == ["boot", "boot", "os", "power", "install", "match", "shutdown"]
    assert shipped[3]["message"] == "power of 11 HS06" and shipped[3]["data"] == {"hs06": 11}
    assert len({e["pilot"] for e in shipped}) == 1
    assert "boot → boot +" in p.stderr and "→ shutdown +" in p.stderr  # the timeline of what was shipped
    assert "pilots: 1, events: 7" in p.stderr


def test_passcode_is_never_a_command_line_value(pilotlog):
    p = pilotlog("replay", "--passcode", "hunter2")
    assert p.returncode == 2 and "unknown option(s) --passcode" in p.stderr and "hunter2" not in p.stderr
    assert "hunter2" not in pilotlog("config", env={"PILOTLOG_PASSCODE": "hunter2"}).stdout


def test_emit_send_to_an_unreachable_broker_keeps_the_event_and_exits_0(pilotlog):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PILOTLOG_SINK": "stomp+ssl://localhost:%d/queue/q" % port, "PILOTLOG_DEADLINE": "1"}
    p = pilotlog("emit", "boot", "--send", env=env)
    assert p.returncode == 0
    (line,) = stderr_lines(p)
    assert "cannot reach broker localhost:%d within 1 s" % port in line and "1 event(s) kept in spool" in line
    assert len(pilotlog.events()) == 1
    p = pilotlog("emit", "boot", "--send", env=dict(env, PILOTLOG_CERT="/no/such/cert.pem"))
    assert p.returncode == 0 and "not sent" in p.stderr and "/no/such/cert.pem does not exist" in p.stderr
    assert len(pilotlog.events()) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["emit", "boot"],
        ["emit", "power", "-m", "power of 11 HS06", "-d", "hs06:=11", "-d", "unit=HS06", "--status", "debug"],
        ["emit", "--source=InstallDIRAC", "install", "--message=done", "--send", "--max-events", "7"],
        ["emit", "log", "--data", '{"a": 1}', "-s", "warning", "--spool", "/x", "--site", "S"],
    ],
)
def test_lean_emit_parser_agrees_with_argparse(argv):
    from pilotlogger import cli

    quick = cli.parse_emit_quickly(argv)
    assert quick is not None
    assert vars(quick) == vars(cli._parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["emit"],
        ["emit", "--help"],
        ["emit", "a", "b"],
        ["emit", "boot", "-m"],
        ["emit", "boot", "-m", "-x"],
        ["emit", "boot", "--status", "fatal"],
        ["emit", "boot", "--bogus"],
        ["emit", "boot", "--send=1"],
        ["emit", "boot", "--passcode", "p"],
        ["replay"],
    ],
)
def test_lean_emit_parser_leaves_anything_unusual_to_argparse(argv):
    from pilotlogger import cli

    assert cli.parse_emit_quickly(argv) is None


def test_a_warm_emit_imports_only_what_it_needs(pilotlog):
    """A bootstrap runs `emit` at every step, and each module imported is paid each time: `re`
    (pulled in by the URL masking that an emit never does) was 4 ms of a 7 ms interpreter start
    on Python 3.13 (issue 25).  The heavy modules stay off the plain emit path."""
    assert pilotlog("emit", "boot").returncode == 0  # the first start unpacks the cache
    command = ["emit", "install", "-m", "x", "-d", "k=v"]
    p = subprocess.run(
        [pilotlog.python, "-I", "-S", "-X", "importtime", str(pilotlog.bundle)] + command,
        cwd=str(pilotlog.cwd),
        env=pilotlog.env,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=60,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert p.returncode == 0 and {"pilotlogger.cli", "pilotlogger.spool"} <= imported, p.stderr
    heavy = {"re", "argparse", "json", "logging", "ssl", "socket", "locale", "threading", "enum", "typing"}
    assert not imported & heavy


@pytest.mark.parametrize(
    "args,needle",
    [
        (["replay", "--deadline", "inf"], "is not a positive number of at most 86400"),
        (["replay", "--timeout", "1e308"], "is not a positive number of at most 86400"),
        (["run", "--ship-every", "nan", "--", "true"], "--ship-every must be from 0 to 86400"),
        (["replay", "--sink", "https://local host:1/?token=X"], "must look like https://host"),
        (["emit", "boot", "-d", 'k:={"pw":"SeCrEt"'], "(not shown) is not valid JSON"),
        (["tail", "--count", "0", "--sink", "stomp://localhost:1/queue/q"], "--count must be at least 1, not 0"),
        (
            ["tail", "--idle", "-5", "--sink", "stomp://localhost:1/queue/q"],
            "--idle must be a number of seconds over 0",
        ),
        (["timeline", "--seconds", "nan", "--sink", "stomp://localhost:1/queue/q"], "--seconds must be a number"),
        (
            ["tail", "--seconds", "1e12", "--sink", "stomp://localhost:1/queue/q"],
            "at most a year (31536000), not 1e+12 s",
        ),
        (["replay", "--sink", "https://localhost:0/logs"], "has a bad port (1 to 65535)"),
        (["replay", "--sink", "stomp+ssl://localhost:0/queue/q"], "has a bad port '0' (1 to 65535)"),
    ],
)
def test_values_a_newcomer_tried_are_clear_usage_errors(pilotlog, args, needle):
    """Found by a newcomer's try: non-finite or huge times (a hang, an overflow), a space in a host
    (retried as a network failure), a -d value echoed, stop options that mean nothing (tried as
    a broker connection first)."""
    assert pilotlog("emit", "boot").returncode == 0  # something to replay
    p = pilotlog(*args)
    (line,) = stderr_lines(p)
    assert p.returncode == 2 and needle in line and "SeCrEt" not in line


def test_an_empty_spool_flag_is_unset_and_a_closed_pipe_is_no_internal_error(pilotlog, tmp_path):
    p = pilotlog("emit", "boot", "--spool", "")
    assert p.returncode == 0 and not (tmp_path / "events").exists() and len(pilotlog.events()) == 1
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(pilotlog.bundle), "config"],
        cwd=str(tmp_path),
        env=pilotlog.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader went away before anything was written (`| head -0`)
    assert proc.wait(60) == 0 and b"internal error" not in proc.stderr.read()
