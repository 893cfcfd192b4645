"""Security, the command line (issue 15, items 1 and 3): a secret given to pilotlog never comes back out.

Usage errors name unknown options but never echo a value; the passcode, given in every way
pilotlog takes one (environment, passcode file, config file, even mistyped), appears in no
output of any command and in no file the agent writes.
"""

import contextlib
import io
import json
import re
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger
from helpers import PASSCODE_SECRET as SECRET
from helpers import stderr_lines
from pilotlogger import cli

UNKNOWN = "an unknown option with a value (--passcode X, --passcode=X, -pX, a stray word), every command"
UNKNOWN_HELD = "usage error, exit 2, one line; option names shown, values never"


def held(attack: str, ok, what: str) -> bool:
    """One trial of an attack on the command line, for the security table (docs/reliability.md)."""
    return ledger.attack("CLI", attack, bool(ok), what)


COMMANDS = ("emit boot", "replay", "status", "probe", "run", "serve", "doctor", "tail", "timeline", "config")


def _usage(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "form",
    [
        ["--passcode", SECRET],
        ["--passcode=" + SECRET],
        ["-p" + SECRET],
        [SECRET],
        ["--token", SECRET, "--password", SECRET],
    ],
)
def test_usage_errors_never_echo_values(capsys, command, form):
    if form == [SECRET] and command in ("run", "timeline"):
        return  # their positional arguments are the child command / the files to read: shown when wrong
    argv = command.split() + form + (["--", "true"] if command == "run" else [])
    code, err = _usage(capsys, argv)
    assert held(UNKNOWN, code == 2 and SECRET not in err and len(err.splitlines()) == 1, UNKNOWN_HELD), err
    if form[0].startswith("--"):
        assert form[0].split("=")[0] in err  # the option is named, so the user knows what to fix


@settings(max_examples=ledger.trials(200, 2000), deadline=None)
@given(
    name=st.from_regex(r"\A--?[a-z][a-z0-9-]{0,15}\Z"),
    value=st.text(min_size=6).filter(lambda v: v.strip()),
    command=st.sampled_from(COMMANDS),
    glued=st.booleans(),
)
def test_no_unknown_option_value_is_ever_echoed(name, value, command, glued):
    known = {"--" + s.name.replace("_", "-") for s in cli.SETTINGS if s.flag} | {"-m", "-s", "-d", "--message", "-h"}
    if name in known or name[:2] in known or any(k.startswith(name) for k in known) or name.startswith("--h"):
        return  # a known option: its value may be quoted back (e.g. an invalid choice)
    if re.match(r"--?[A-Za-z]", value):
        return  # a value written as an option name cannot be told from one: it is shown as such
    if (
        value in "pilotlog: unknown option(s); 1 unexpected argument(s), not shown in case one is a secret (see "
        "'pilotlog emit run timeline --help')"
    ):
        return  # words of the message itself
    argv = command.split() + ([name + "=" + value] if glued else [name, value])
    if command == "run":
        argv += ["--", "true"]
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        code = cli.main(argv)
    err = stderr.getvalue()
    assert held(
        "generated unknown options and values (hypothesis), every command",
        code == 2 and value not in err.replace(name, ""),
        UNKNOWN_HELD,
    ), err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _every_way(tmp_path):
    """The passcode as each supported way gives it: (label, environment)."""
    sink = "stomp+ssl://localhost:%d/queue/q" % _closed_port()
    base = {"PILOTLOG_SINK": sink, "PILOTLOG_USER": "pilot", "PILOTLOG_DEADLINE": "1", "PILOTLOG_TIMEOUT": "1"}
    secret_file = tmp_path / "passcode"
    secret_file.write_text(SECRET + "\n")
    config_file = tmp_path / "pilotlog.json"
    config_file.write_text(json.dumps({"passcode": SECRET, "sink": sink}))
    mistyped = tmp_path / "mistyped.json"
    mistyped.write_text(json.dumps({"passcode": ["a list", SECRET]}))
    return [
        ("env", dict(base, PILOTLOG_PASSCODE=SECRET)),
        ("passcode file", dict(base, PILOTLOG_PASSCODE_FILE=str(secret_file))),
        ("config file", dict(base, PILOTLOG_CONFIG=str(config_file))),
        ("mistyped in a config file", dict(base, PILOTLOG_CONFIG=str(mistyped))),
    ]


def test_the_passcode_given_every_way_is_never_shown_nor_stored(pilotlog, tmp_path):
    for label, env in _every_way(tmp_path):
        outputs = []
        for args in (
            ["emit", "boot", "--send"],
            ["replay"],
            ["status"],
            ["status", "--json"],
            ["config"],
            ["config", "--json"],
            ["doctor"],
            ["doctor", "--json"],
            ["tail", "--count", "1"],
            ["run", "--", "true"],
        ):
            p = pilotlog(*args, env=env)
            outputs.append(p.stdout + p.stderr)
        written = [f for f in pilotlog.spool.rglob("*") if f.is_file() and SECRET in f.read_text(errors="replace")]
        assert held(
            "the passcode by env, passcode file, config file, mistyped; 10 commands",
            not [o for o in outputs if SECRET in o] and not written,
            "in no output and no file the agent wrote",
        ), (label, written)
    p = pilotlog("config", env=_every_way(tmp_path)[3][1])
    assert p.returncode == 2 and "passcode: '****' is not a string" in p.stderr


def test_an_unknown_option_is_a_usage_error_from_the_bundle(pilotlog):
    p = pilotlog("replay", "--passcode", SECRET)
    (line,) = stderr_lines(p)
    assert p.returncode == 2 and SECRET not in p.stdout + p.stderr
    assert line == (
        "pilotlog: replay: unknown option(s) --passcode; 1 unexpected argument(s), not shown in case one "
        "is a secret (see 'pilotlog replay --help')"
    )


# -- what worker nodes wrote never reaches the terminal raw (item 9) ---------------------------------

HOSTILE = "ok\r\x1b[2J\x1b]0;owned\x07\nFAKE LINE\x9b31m\u2028end"


def _hostile_events(pilot="3f2504e0-4f89-41d3-9a0c-0305e82c3301"):
    from pilotlogger.events import make_event

    return [
        make_event("boot", HOSTILE, pilot=pilot, seq=1, epoch=1795832978.0),
        make_event("install", "x", "error", pilot=pilot, seq=2, epoch=1795832979.0, data={"why": HOSTILE}),
        make_event("shutdown", HOSTILE, "error", pilot=pilot, seq=3, epoch=1795832980.0),
    ]


def _raw_controls(text: str) -> list:
    return sorted({c for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029"})


def test_timeline_escapes_control_characters(pilotlog, tmp_path):
    from pilotlogger.events import to_json

    events_file = tmp_path / "events.jsonl"
    events_file.write_text("".join(to_json(e) + "\n" for e in _hostile_events()) + HOSTILE + "\n", encoding="utf-8")
    p = pilotlog("timeline", str(events_file))
    assert held(
        "escape sequences, CR, LF, C1 and U+2028 in messages",
        p.returncode == 0 and _raw_controls(p.stdout) == [],
        "tail and timeline print them escaped, one event a line",
    ), p.stdout
    assert "ok\\r\\u001b[2J\\u001b]0;owned\\u0007\\nFAKE LINE\\u009b31m\\u2028end" in p.stdout
    assert not any(line.startswith("FAKE LINE") for line in p.stdout.splitlines())


def test_tail_escapes_control_characters(rabbitmq, pilotlog, queue, pki):
    from broker_fixtures import publish
    from brokers import PASSWORD, USER
    from pilotlogger.events import to_json

    publish(rabbitmq, queue, [to_json(e) for e in _hostile_events()] + ["not an event " + HOSTILE])
    env = {
        "PILOTLOG_SINK": rabbitmq.url(queue),
        "PILOTLOG_CA_FILE": pki.path("ca.pem"),
        "PILOTLOG_USER": USER,
        "PILOTLOG_PASSCODE": PASSWORD,
    }
    p = pilotlog("tail", "--count", "4", "--seconds", "30", env=env)
    lines = p.stdout.splitlines()
    assert held(
        "escape sequences, CR, LF, C1 and U+2028 in messages",
        p.returncode == 0 and len(lines) == 4 and _raw_controls(p.stdout) == [],
        "tail and timeline print them escaped, one event a line",
    ), p.stdout + p.stderr
    assert lines[0].endswith("INFO boot: ok\\r\\u001b[2J\\u001b]0;owned\\u0007\\nFAKE LINE\\u009b31m\\u2028end")
    assert lines[3].startswith("? (not a pilotlog event) ") and "\\u001b[2J" in lines[3]
