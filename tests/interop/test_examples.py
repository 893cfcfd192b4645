"""The examples run as documented, against a real broker: the consumer sees the whole lifecycle in order."""

import json
import os
import subprocess
import sys

import pytest

from brokers import PASSWORD, USER
from helpers import ROOT, clean_env


@pytest.mark.parametrize("match,exit_code", [("1", 0), ("0", 3)])
def test_bootstrap_example_delivers_the_lifecycle_in_order(
    rabbitmq, pki, queue, consume, bundle, tmp_path, match, exit_code
):
    env = clean_env(
        HOME=tmp_path,
        PILOTLOG_SPOOL=tmp_path / "spool",
        PILOTLOG_SINK=rabbitmq.url(queue),
        PILOTLOG_CA_FILE=pki.path("ca.pem"),
        PILOTLOG_USER=USER,
        PILOTLOG_PASSCODE=PASSWORD,
        PILOT_COMMAND="%s %s" % (sys.executable, ROOT / "examples" / "fake-pilot.py"),
        FAKE_PILOT_MATCH=match,
        FAKE_PILOT_EXIT=exit_code,
    )
    p = subprocess.run(
        ["bash", str(ROOT / "examples" / "pilot-bootstrap.sh"), str(bundle)],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=120,
    )
    assert p.returncode == exit_code, p.stderr  # the pilot's own exit code, through every layer
    events = [json.loads(m.body) for m in consume(rabbitmq, queue).wait_for(7)]
    phases = [e["phase"] for e in events]
    assert phases == ["boot", "os", "power", "install", "boot", "match" if match == "1" else "nomatch", "shutdown"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert len({e["pilot"] for e in events}) == 1
    assert events[-1]["data"]["exit_code"] == exit_code
    assert not os.listdir(str(tmp_path / "spool" / "events"))


def test_python_example_records_its_events(tmp_path):
    env = clean_env(PILOTLOG_SPOOL=tmp_path / "spool", PYTHONPATH=ROOT)
    p = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_logging.py")],
        cwd=str(tmp_path),
        env=env,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=60,
    )
    assert p.returncode == 0 and p.stderr == ""
    d = tmp_path / "spool" / "events"
    events = [json.loads((d / n).read_text()) for n in sorted(os.listdir(str(d)))]
    assert [(e["phase"], e["status"]) for e in events] == [
        ("boot", "info"),
        ("install", "info"),
        ("nomatch", "error"),
        ("shutdown", "info"),
    ]
    assert "TimeoutError: matcher did not answer" in events[2]["data"]["exception"]
