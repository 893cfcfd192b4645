"""Operator tools against real brokers: `pilotlog doctor`, `tail` and `timeline` (issue 8).

Each failure doctor reports is produced for real (a wrong password on the broker, a CA
that did not sign it, a name the certificate does not carry, a closed port, a name that
does not resolve, an expired proxy); tail and timeline read what real brokers delivered.
"""

import json
import shutil
import subprocess
import sys
import time

import pytest
import stomp

from brokers import PASSWORD, USER, free_port
from helpers import Page, Pilotlog, Serve, broker_env, make_events


@pytest.fixture
def pilotlog_env(pki):
    return dict(broker_env(pki), PILOTLOG_TIMEOUT="3", PILOTLOG_DEADLINE="5")


def doctor(pilotlog, *args, **env):
    p = pilotlog("doctor", "--json", *args, env=env)
    report = json.loads(p.stdout)
    assert "Traceback" not in p.stderr
    return p.returncode, report


def first_failure(report):
    return next(s for s in report["steps"] if not s["ok"])


# -- doctor ------------------------------------------------------------------------------------


def test_doctor_walks_a_working_path_and_sends_a_marked_test_event(broker, pilotlog, queue, consume):
    consumer = consume(broker, queue)
    code, report = doctor(pilotlog, "--send-test", PILOTLOG_SINK=broker.url(queue))
    assert code == 0 and report["works"], report
    names = [s["name"] for s in report["steps"]]
    assert names == ["config", "spool", "credentials", "dns", "tcp", "tls", "stomp", "destination", "send"]
    details = {s["name"]: s["detail"] for s in report["steps"]}
    assert "a queue: what the broker confirms, it keeps" in details["destination"]
    assert "TLSv1." in details["tls"] and "CN=localhost" in details["tls"] and "host name matches" in details["tls"]
    assert "CONNECTED to %s" % {"RabbitMQ": "RabbitMQ", "ActiveMQ": "ActiveMQ"}[broker.name] in details["stomp"]
    assert "logged in as %s" % USER in details["stomp"]
    (message,) = consumer.wait_for(1)
    event = json.loads(message.body)
    assert event["phase"] == "doctor" and event["status"] == "debug" and event["data"] == {"test": True}
    assert event["id"] in details["send"]
    assert pilotlog.depth() == 0  # doctor records nothing in the spool
    human = pilotlog("doctor", env={"PILOTLOG_SINK": broker.url(queue)})
    assert human.returncode == 0 and "result: events can be delivered" in human.stdout
    assert PASSWORD not in human.stdout + json.dumps(report)


def test_doctor_with_certificate_login_and_a_wrong_password_on_both_brokers(broker, pilotlog, queue, pki):
    url = broker.cert_url(queue) if hasattr(broker, "cert_url") else broker.url(queue)
    certs = {
        "PILOTLOG_SINK": url,
        "PILOTLOG_USER": "",
        "PILOTLOG_PASSCODE": "",
        "PILOTLOG_CERT": pki.path("client.pem"),
        "PILOTLOG_KEY": pki.path("client.key"),
    }
    code, report = doctor(pilotlog, "--send-test", **certs)
    details = {s["name"]: s["detail"] for s in report["steps"]}
    assert code == 0, report
    assert "logged in by certificate" in details["stomp"] and "key matches, expires in" in details["credentials"]
    code, report = doctor(pilotlog, PILOTLOG_SINK=broker.url(queue), PILOTLOG_PASSCODE="not-the-password")
    failed = first_failure(report)
    assert code == 1 and failed["name"] == "stomp" and "refused the connection" in failed["detail"], failed
    assert "not-the-password" not in json.dumps(report)


@pytest.mark.parametrize(
    "fault,step,needle",
    [
        ("wrong password", "stomp", "refused the connection"),
        ("untrusted CA", "tls", "server certificate not trusted"),
        ("host-name mismatch", "tls", "does not match the host name"),
        ("closed port", "tcp", "Connection refused"),
        ("unresolvable host", "dns", "cannot resolve pilotlog-nowhere.invalid"),
        ("expired client certificate", "credentials", "expired"),
        ("bad configuration", "config", "PILOTLOG_TIMEOUT"),
    ],
)
def test_doctor_names_the_first_broken_step(rabbitmq, pilotlog, queue, pki, fault, step, needle):
    env = {"PILOTLOG_SINK": rabbitmq.url(queue)}
    if fault == "wrong password":
        env["PILOTLOG_PASSCODE"] = "not-the-password"
    elif fault == "untrusted CA":
        env["PILOTLOG_CA_FILE"] = pki.path("other-ca.pem")
    elif fault == "host-name mismatch":
        env["PILOTLOG_SINK"] = rabbitmq.url(queue, host="127.0.0.1")
    elif fault == "closed port":
        env["PILOTLOG_SINK"] = "stomp+ssl://localhost:%d%s" % (free_port(), queue)
    elif fault == "unresolvable host":
        env["PILOTLOG_SINK"] = "stomp+ssl://pilotlog-nowhere.invalid:61614" + queue
    elif fault == "expired client certificate":
        time.sleep(1.1)  # made valid for zero days
        env.update(PILOTLOG_CERT=pki.path("expired-client.pem"), PILOTLOG_KEY=pki.path("expired-client.key"))
    elif fault == "bad configuration":
        env["PILOTLOG_TIMEOUT"] = "soon"
    started = time.monotonic()
    code, report = doctor(pilotlog, **env)
    failed = first_failure(report)
    assert code == 1 and not report["works"]
    assert failed["name"] == step and needle in failed["detail"], failed
    assert failed["advice"]  # says what to do
    assert time.monotonic() - started < 15
    human = pilotlog("doctor", env=env)
    assert human.returncode == 1 and "first failure: %s" % step in human.stdout


def test_doctor_checks_the_https_fallback(bundle, rabbitmq, pilotlog, queue, pki, tmp_path):
    """A dead broker with a working HTTPS fallback: delivery works, and doctor says which road."""
    server = Serve(bundle, pki, tmp_path / "store")
    try:
        env = {
            "PILOTLOG_SINK": "stomp+ssl://localhost:%d%s" % (free_port(), queue),
            "PILOTLOG_FALLBACK_SINK": server.url,
            "PILOTLOG_CERT": pki.path("client.pem"),
            "PILOTLOG_KEY": pki.path("client.key"),
        }
        code, report = doctor(pilotlog, **env)
    finally:
        server.stop()
    assert code == 0 and report["works"]
    by_name = {s["name"]: s for s in report["steps"]}
    assert not by_name["tcp"]["ok"] and by_name["fallback tls"]["ok"] and by_name["fallback https"]["ok"]
    assert "the service accepts our POST (sendMessage of no lines" in by_name["fallback https"]["detail"]
    assert (
        "CN=pilotlog test client" in by_name["credentials"]["detail"]
        or "expires in" in by_name["credentials"]["detail"]
    )


# -- tail --------------------------------------------------------------------------------------


def publish(broker, queue, bodies):
    """Put raw bodies on the queue with stomp.py (duplicates and foreign messages included)."""
    conn = stomp.Connection12([("127.0.0.1", broker.plain)], vhost="/", heartbeats=(0, 0))
    conn.connect(USER, PASSWORD, wait=True)
    for body in bodies:
        conn.send(queue, body, headers={"persistent": "true"})
    conn.disconnect()


def spooled_events(pilotlog, n, pilot="3f2504e0-4f89-41d3-9a0c-0305e82c3301"):
    return make_events(n, pilot, context={"host": "wn01.example.org"})


def test_tail_prints_each_event_once_and_acknowledges_only_what_it_printed(broker, pilotlog, queue):
    events = spooled_events(pilotlog, 10)
    texts = [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in events]
    publish(broker, queue, texts[:4] + texts[4:7] + [texts[5]] + texts[7:] + [texts[6], '{"not": "ours"}'])
    env = {"PILOTLOG_SINK": broker.url(queue)}
    first = pilotlog("tail", "--json", "--count", "4", env=env)
    assert first.returncode == 0, first.stderr
    assert [json.loads(line)["id"] for line in first.stdout.splitlines()] == [e["id"] for e in events[:4]]
    # What the first tail did not acknowledge (prefetched, not printed) is delivered again.
    rest = pilotlog("tail", "--idle", "3", env=env)
    lines = rest.stdout.splitlines()
    assert rest.returncode == 0 and len(lines) == 7, rest.stdout  # 6 events + the foreign message
    for event, line in zip(events[4:], [line for line in lines if not line.startswith("?")]):
        assert line.startswith("%s %s INFO log: %s" % (event["time"], event["pilot"], event["message"]))
    assert lines[-1].startswith("? (not a pilotlog event)")
    # Within one tail, the duplicates of lines 5 and 6 were acknowledged, not printed again.
    assert [line.split(": ", 1)[1] for line in lines[:-1]] == ["line %d" % i for i in range(4, 10)]
    again = pilotlog("tail", "--idle", "2", env=env)
    assert again.returncode == 0 and again.stdout == ""  # everything was acknowledged


def test_tail_reconnects_when_the_broker_restarts(rabbitmq, pilotlog, queue):
    events = spooled_events(pilotlog, 6)
    texts = [json.dumps(e) for e in events]
    publish(rabbitmq, queue, texts[:3])
    env = dict(pilotlog.env, PILOTLOG_SINK=rabbitmq.url(queue), PILOTLOG_DEADLINE="90")
    tail = subprocess.Popen(
        [sys.executable, "-I", "-S", str(pilotlog.bundle), "tail", "--count", "6", "--seconds", "150"],
        cwd=str(pilotlog.cwd),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    lines = [tail.stdout.readline() for _ in range(3)]
    rabbitmq.restart()
    publish(rabbitmq, queue, texts[3:])
    rest, err = tail.communicate(timeout=120)
    printed = [line.split(": ", 1)[1].strip() for line in lines + rest.splitlines()]
    assert tail.returncode == 0, err
    assert printed == ["line %d" % i for i in range(6)]  # each once, though unacked ones may come again
    assert "reconnecting" in err and "reconnected to broker" in err


def test_tail_from_an_unreachable_broker_says_so(pilotlog, queue):
    p = pilotlog(
        "tail",
        "--seconds",
        "1",
        env={"PILOTLOG_SINK": "stomp+ssl://localhost:%d%s" % (free_port(), queue), "PILOTLOG_DEADLINE": "1"},
    )
    assert p.returncode == 1 and p.stderr.startswith("pilotlog: cannot read stomp+ssl://localhost:")
    assert len(p.stderr.splitlines()) == 1


# -- timeline ----------------------------------------------------------------------------------

OUTCOMES = (["match", "shutdown"],) * 6 + (["nomatch", "shutdown"],) * 4 + (["install!"],) * 2


def run_pilot(bundle, tmp_path, index, outcome, env):
    """One pilot: its own spool, its own lifecycle, shipped with one replay (as a wrapper would)."""
    pilot = "pilot-%02d" % index
    spool = tmp_path / pilot
    script = ["boot", "os", "power", "install"] + outcome
    cmds = []
    for phase in script:
        args = ["emit", phase.rstrip("!"), "-m", "%s of %s" % (phase, pilot)]
        if phase.endswith("!"):
            args = ["emit", "install", "-m", "install failed: disk full", "-s", "error"]
        cmds.append(args)
    code = " && ".join(" ".join([sys.executable, "-I", "-S", str(bundle)] + ["'%s'" % a for a in c]) for c in cmds)
    code += " && %s -I -S %s replay" % (sys.executable, bundle)
    return subprocess.Popen(
        ["sh", "-c", code],
        env=dict(env, PILOTLOG_SPOOL=str(spool), PILOTLOG_PILOT_UUID=pilot),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )


def test_timeline_of_a_burst_of_pilots(rabbitmq, pilotlog, queue, tmp_path, bundle):
    env = dict(pilotlog.env, PILOTLOG_SINK=rabbitmq.url(queue))
    burst = [run_pilot(bundle, tmp_path, i, outcome, env) for i, outcome in enumerate(OUTCOMES)]
    assert all(p.wait(120) == 0 for p in burst), [p.stderr.read() for p in burst]
    # At-least-once upstream: one more pilot's events arrive twice (its spool replayed, restored, replayed).
    twice = Pilotlog(bundle, tmp_path)
    twice.spool = tmp_path / "pilot-12"
    for phase in ("boot", "os", "power", "install", "match", "shutdown"):
        assert (
            twice("emit", phase, env=dict(PILOTLOG_SPOOL=twice.spool, PILOTLOG_PILOT_UUID="pilot-12")).returncode == 0
        )
    shutil.copytree(str(twice.spool), str(tmp_path / "copy"))
    assert twice("replay", env=dict(env, PILOTLOG_SPOOL=twice.spool)).returncode == 0
    shutil.rmtree(str(twice.spool))
    shutil.copytree(str(tmp_path / "copy"), str(twice.spool))
    assert twice("replay", env=dict(env, PILOTLOG_SPOOL=twice.spool)).returncode == 0
    emitted = sum(len(o) + 4 for o in OUTCOMES) + 6
    page = tmp_path / "timeline.html"
    p = pilotlog("timeline", "--json", "--idle", "4", "--html", str(page), env={"PILOTLOG_SINK": rabbitmq.url(queue)})
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    summary = result["summary"]
    assert summary["pilots"] == len(OUTCOMES) + 1 and summary["events"] == emitted
    assert summary["duplicates_dropped"] == 6
    assert summary["last_phase"] == {"shutdown": 11, "install": 2}
    assert summary["booted_never_matched"] == ["pilot-%02d" % i for i in range(6, 12)]
    assert summary["failures_by_message"] == {"install failed: disk full": 2}
    first = next(x for x in result["pilots"] if x["pilot"] == "pilot-00")
    assert [s["phase"] for s in first["phases"]] == ["boot", "os", "power", "install", "match", "shutdown"]
    assert first["phases"][0]["after_s"] is None and all(s["after_s"] >= 0 for s in first["phases"][1:])
    parsed = Page(page.read_text())
    text, tags = " ".join(parsed.text), [tag for tag, _ in parsed.tags]
    assert all("pilot-%02d" % i in text for i in range(len(OUTCOMES)))
    assert "install failed: disk full" in text and tags.count("svg") >= len(OUTCOMES)
    assert parsed.urls == [] and tags.count("script") == 1  # self-contained: one inline script, nothing fetched


def test_timeline_from_files_drops_duplicates_and_reads_stdin(pilotlog, tmp_path):
    events = spooled_events(pilotlog, 3)
    lines = [json.dumps(e) for e in events]
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join(lines + lines[:2] + ["not json"]) + "\n")
    p = pilotlog("timeline", "--json", str(f))
    summary = json.loads(p.stdout)["summary"]
    assert p.returncode == 0 and summary["events"] == 3 and summary["duplicates_dropped"] == 2
    assert summary["not_pilotlog_events"] == 1
    p = pilotlog("timeline", "-", input="\n".join(lines) + "\n")
    assert p.returncode == 0 and "pilots: 1, events: 3" in p.stdout
    p = pilotlog("timeline", str(tmp_path / "missing.jsonl"))
    assert p.returncode == 2 and "cannot read" in p.stderr
