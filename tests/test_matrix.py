"""Version matrix: the bundle's smoke suite on every installed CPython, in three locales.

Interpreters come from ``pyenv versions`` and from ``python3`` on PATH.  A Python older
than 3.6 is reported (skipped with its version), not failed; the terminal summary lists
which versions passed.  Each runs the smoke suite with ``LANG=C.UTF-8``, and again as
under ``env -i`` with ``LANG``/``LC_ALL`` unset and set to ``C`` (a batch job's
environment, where Python 3.6 decodes argv and writes stdout as ASCII): events with
non-ASCII text must still be stored and shipped as UTF-8.
"""

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from brokers import free_port

RESULTS = {}  # label -> "passed" / "FAILED" / "older than 3.6", for the terminal summary

VERSION = "import sys; print('.'.join(map(str, sys.version_info[:3])))"


def _run(cmd):
    try:
        return subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def python_version(exe: str) -> tuple:
    """(major, minor, micro) of an interpreter, or () when it does not run."""
    text = _run([exe, "-c", VERSION])
    return tuple(int(x) for x in text.split(".")) if text else ()


def interpreters() -> list:
    """(label, executable) for every CPython found, de-duplicated by real path."""
    found = {}
    root = _run(["pyenv", "root"]) or os.path.expanduser("~/.pyenv")
    for name in _run(["pyenv", "versions", "--bare"]).split():
        exe = os.path.join(root, "versions", name, "bin", "python")
        if os.access(exe, os.X_OK):
            found.setdefault(os.path.realpath(exe), "pyenv " + name)
    path_python = shutil.which("python3")
    if path_python:
        real = _run([path_python, "-c", "import sys; print(sys.executable)"]) or path_python
        found.setdefault(os.path.realpath(real), "PATH python3")
    return sorted((label, exe) for exe, label in found.items())


#: The locales the smoke suite runs in: the environment's variables besides PATH and ours.
LOCALES = {"C.UTF-8": {"LANG": "C.UTF-8"}, "unset": {}, "C": {"LANG": "C", "LC_ALL": "C"}}


@pytest.mark.matrix
@pytest.mark.parametrize("locale", sorted(LOCALES))
@pytest.mark.parametrize("label,python", interpreters(), ids=lambda v: v if " " not in v else v.replace(" ", "-"))
def test_bundle_smoke(label, python, locale, bundle, pki):
    version = python_version(python)
    key = "%s (%s), locale %s" % (".".join(map(str, version)) or "?", label, locale)
    if version[:2] < (3, 6):
        RESULTS[key] = "older than 3.6, not supported"
        pytest.skip("Python %s is older than 3.6: reported, not supported" % key)
    RESULTS[key] = "FAILED"
    with tempfile.TemporaryDirectory() as cwd:
        env = {"PATH": "/usr/bin:/bin", "PILOTLOG_SPOOL": os.path.join(cwd, "spool"), "DIRAC_PILOT_STAMP": "a" * 32}
        env.update(LOCALES[locale])  # as under env -i: nothing else

        def pilotlog(*args, code=0):
            p = subprocess.run(
                [python, "-I", "-S", str(bundle)] + list(args),
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                encoding="utf-8",
                timeout=60,
            )
            assert p.returncode == code, "%s %s: %s" % (key, args, p.stdout + p.stderr)
            return p

        pilotlog("emit", "boot", "-m", "booted up on nœud-é")
        pilotlog("emit", "power", "-m", "power of 11 HS06", "-d", "hs06:=11")
        status = json.loads(pilotlog("status", "--json").stdout)
        assert status["depth"] == 2 and status["pilot"] == "a" * 32
        shown = json.loads(pilotlog("config", "--json").stdout)
        assert shown["spool"]["from"] == "env PILOTLOG_SPOOL"
        shipped = [json.loads(line) for line in pilotlog("replay").stdout.splitlines()]
        assert [(e["phase"], e["seq"], e["data"]) for e in shipped] == [("boot", 1, {}), ("power", 2, {"hs06": 11})]
        assert shipped[0]["message"] == "booted up on nœud-é"  # UTF-8 in and out, whatever the locale
        pilotlog("emit", "shutdown", "-m", "about to shutdown")
        (record,) = [json.loads(line) for line in pilotlog("replay", "--format", "dirac").stdout.splitlines()]
        assert record["phase"] == "shutdown" and record["pilotUUID"] == "a" * 32
        assert json.loads(pilotlog("status", "--json").stdout)["depth"] == 0
        # The wrapper returns the child's code exactly; power and the Python API work too.
        pilotlog("run", "--", "sh", "-c", "exit 4", code=4)
        pilotlog("power", "--fraction", "0.002")
        api = (
            "import sys; sys.path.insert(0, %r); import pilotlogger; assert pilotlogger.emit('boot', 'from python')"
            % str(bundle)
        )
        subprocess.run([python, "-I", "-S", "-c", api], cwd=cwd, env=env, check=True, timeout=60)
        replayed = pilotlog("replay").stdout
        phases = [json.loads(line)["phase"] for line in replayed.splitlines()]
        assert phases == ["boot", "shutdown", "power", "boot"], phases
        # Operator tools: a timeline of what was replayed, and doctor (certificate reading, TLS set-up).
        with open(os.path.join(cwd, "events.jsonl"), "w", encoding="utf-8") as f:
            f.write(replayed)
        timeline = json.loads(pilotlog("timeline", "--json", "--html", "page.html", "events.jsonl").stdout)
        assert timeline["summary"]["pilots"] == 1 and timeline["summary"]["events"] == 4
        assert "<svg" in open(os.path.join(cwd, "page.html"), encoding="utf-8").read()
        assert json.loads(pilotlog("doctor", "--json").stdout)["works"]  # the stdout sink
        env.update(
            PILOTLOG_SINK="stomp+ssl://localhost:%d/queue/q" % free_port(),
            PILOTLOG_CA_FILE=pki.path("ca.pem"),
            PILOTLOG_CERT=pki.path("client.pem"),
            PILOTLOG_KEY=pki.path("client.key"),
        )
        doctor = pilotlog("doctor", "--json", code=1)
        steps = {s["name"]: s for s in json.loads(doctor.stdout)["steps"]}
        assert not steps["tcp"]["ok"], doctor.stdout + doctor.stderr
        assert "/CN=pilot-client, key matches, expires in" in steps["credentials"]["detail"]
    RESULTS[key] = "passed"
