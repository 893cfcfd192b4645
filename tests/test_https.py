"""HTTPS fallback against a real `pilotlog serve` process: TLS, client certificates, both protocols.

Every error class is produced for real: the receiver refuses content (4xx), fails to store
(5xx), is restarted mid-replay, or a listener never answers.
"""

import json
import os
import time
import uuid
from urllib.parse import parse_qs

import pytest

from brokers import CLIENT_CN, free_port
from helpers import SERVE_PATH as PATH
from helpers import Serve, SilentListener, fill_spool, https_env, replay, stderr_lines
from pilotlogger.events import make_event, readable_line
from pilotlogger.https import dirac_form
from pilotlogger.tls import host_credentials


@pytest.fixture
def serve(bundle, pki, tmp_path):
    servers = []

    def start(*extra):
        s = Serve(bundle, pki, tmp_path / ("store%d" % len(servers)), *extra)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def pilotlog_env(pki):
    return dict(https_env(pki), PILOTLOG_DEADLINE="20", PILOTLOG_TIMEOUT="3")


def spool_events(pilotlog, pilot, n, shutdown=True, message="line"):
    """n events straight into the spool (fast), the last a shutdown with exit_code 3."""
    fill_spool(pilotlog.spool, n, pilot, message=message + " %d", shutdown=shutdown)


def stored_lines(path):
    with open(str(path)) as f:
        return f.read().splitlines()


# -- the dirac protocol, decoded as DIRAC decodes it --------------------------------------------


def test_dirac_form_decodes_exactly_as_diracs_handler_does():
    events = [
        make_event("boot", "booted up", pilot="p", seq=1, epoch=1795832978.5),
        make_event("match", "matched a job", pilot="p", seq=2, epoch=1795832979.0, data={"job": 7}),
    ]
    lines = [readable_line(e) for e in events]
    form = parse_qs(dirac_form("sendMessage", lines, "0123456789abcdef0123456789abcdef", "lhcb", True).decode())
    # TornadoPilotLoggingHandler: method, then args = json.loads(args) -> positional arguments.
    assert form["method"] == ["sendMessage"] and form["extraCredentials"] == ['"hosts"']  # JSON, as DIRAC decodes it
    message, pilot, vo = json.loads(form["args"][0])
    assert (pilot, vo) == ("0123456789abcdef0123456789abcdef", "lhcb")
    # FileCacheLoggingPlugin.sendMessage: json.loads(message) is a list, each element a line.
    assert json.loads(message) == lines
    assert lines[1] == '2026-11-28T02:29:39.000000Z INFO [pilot] match: matched a job {"job":7}'
    # Always three arguments: no VO configured sends "" (DIRAC then takes the client group's VO).
    assert json.loads(parse_qs(dirac_form("sendMessage", [], "x", None, False).decode())["args"][0])[1:] == ["x", ""]
    payload = json.loads(parse_qs(dirac_form("finaliseLogs", {"retCode": 3}, "x", "v", False).decode())["args"][0])[0]
    assert json.loads(payload).get("retCode", 0) == 3  # FileCacheLoggingPlugin.finaliseLogs


def test_host_certificate_directory(tmp_path):
    (tmp_path / "hostcert.pem").write_text("")
    assert host_credentials(str(tmp_path)) == (str(tmp_path / "hostcert.pem"), str(tmp_path / "hostkey.pem"))
    assert host_credentials(str(tmp_path / "hostcert.pem")) is None


# -- delivery ---------------------------------------------------------------------------------------


def test_dirac_protocol_arrives_complete_in_order_and_is_finalised(serve, pilotlog):
    server = serve()
    pilot = str(uuid.uuid4())
    spool_events(pilotlog, pilot, 30)
    expected = [readable_line(e) for e in pilotlog.events()]
    p, _ = replay(pilotlog, PILOTLOG_SINK=server.url, PILOTLOG_VO="lhcb", PILOTLOG_BATCH_EVENTS=7)
    assert p.returncode == 0, p.stderr
    assert "replayed 30 event(s) to %s" % server.url in p.stderr
    assert stored_lines(server.dir / "lhcb" / (pilot + ".log")) == expected  # finalised at shutdown
    assert not (server.dir / "lhcb" / pilot).exists()
    assert pilotlog.events() == []


def test_no_vo_goes_to_the_default_vo(serve, pilotlog):
    server = serve()
    pilot = "zz" + uuid.uuid4().hex[2:]  # a DIRAC stamp: 32 characters [0-9a-z]
    spool_events(pilotlog, pilot, 3, shutdown=False)
    p, _ = replay(pilotlog, PILOTLOG_SINK=server.url)
    assert p.returncode == 0, p.stderr
    assert len(stored_lines(server.dir / "unknown" / pilot)) == 3


def test_json_protocol_with_gzip_and_two_pilots(serve, pilotlog):
    server = serve()
    a, b = str(uuid.uuid4()), uuid.uuid4().hex
    spool_events(pilotlog, a, 600, shutdown=False, message="a")
    spool_events(pilotlog, b, 400, message="b")
    spooled = pilotlog.events()
    p, _ = replay(pilotlog, PILOTLOG_SINK=server.url, PILOTLOG_HTTP_PROTOCOL="json", PILOTLOG_VO="belle")
    assert p.returncode == 0, p.stderr
    assert stored_lines(server.dir / "belle" / a) == [readable_line(e) for e in spooled if e["pilot"] == a]
    assert stored_lines(server.dir / "belle" / (b + ".log")) == [readable_line(e) for e in spooled if e["pilot"] == b]


def test_fallback_from_an_unreachable_broker_to_https(serve, pilotlog):
    server = serve()
    pilot = str(uuid.uuid4())
    spool_events(pilotlog, pilot, 5, shutdown=False)
    dead = free_port()
    p, _ = replay(
        pilotlog,
        PILOTLOG_SINK="stomp+ssl://localhost:%d/queue/q" % dead,
        PILOTLOG_FALLBACK_SINK=server.url,
        PILOTLOG_DEADLINE=2,
    )
    assert p.returncode == 0, p.stderr
    lines = stderr_lines(p)
    assert "cannot reach broker localhost:%d" % dead in lines[0] and "used the fallback %s" % server.url in lines[0]
    assert lines[1].startswith("pilotlog: replayed 5 event(s) to %s" % server.url)
    assert len(stored_lines(server.dir / "unknown" / pilot)) == 5


# -- authentication ---------------------------------------------------------------------------


def test_client_certificate_is_required(serve, pilotlog):
    server = serve()
    spool_events(pilotlog, str(uuid.uuid4()), 4, shutdown=False)
    p, took = replay(pilotlog, PILOTLOG_SINK=server.url, PILOTLOG_CERT="", PILOTLOG_KEY="", PILOTLOG_DEADLINE=2)
    assert p.returncode == 0 and len(pilotlog.events()) == 4
    (line,) = stderr_lines(p)
    assert "4 event(s) kept in spool" in line and "Traceback" not in p.stderr


def test_allowed_cn_list_refuses_others_with_403_and_keeps_events(serve, pilotlog):
    server = serve("--allowed-cn", "somebody-else")
    spool_events(pilotlog, str(uuid.uuid4()), 4, shutdown=False)
    p, took = replay(pilotlog, PILOTLOG_SINK=server.url)
    (line,) = stderr_lines(p)
    assert "HTTP 403" in line and CLIENT_CN in line and "check the URL and credentials" in line
    assert len(pilotlog.events()) == 4 and took < 10  # a 403 is not retried: it is configuration
    assert serve("--allowed-cn", CLIENT_CN).post(b"method=x&args=%5B%5D", "application/x-www-form-urlencoded")[0] == 400


# -- every error class, produced for real ---------------------------------------------------------


def test_refused_content_is_quarantined_with_the_reason_and_the_rest_delivered(serve, pilotlog):
    server = serve()
    good = str(uuid.uuid4())
    spool_events(pilotlog, "https://ce.example.org:9000/not-a-dirac-id", 3, shutdown=False)
    spool_events(pilotlog, good, 3, shutdown=False)
    p, _ = replay(pilotlog, PILOTLOG_SINK=server.url)
    assert p.returncode == 0
    assert "3 event(s) refused by %s moved to" % server.url in p.stderr
    assert "replayed 3 event(s)" in p.stderr
    assert len(stored_lines(server.dir / "unknown" / good)) == 3
    assert pilotlog.events() == []
    reasons = [f for f in os.listdir(str(pilotlog.spool / "quarantine")) if f.endswith(".reason")]
    assert len(reasons) == 3
    text = (pilotlog.spool / "quarantine" / reasons[0]).read_text()
    assert "HTTP 400" in text and "Pilot UUID is invalid" in text


def test_too_large_batches_are_split_and_a_too_large_event_quarantined(serve, pilotlog):
    server = serve("--max-body", "6000")
    pilot = str(uuid.uuid4())
    spool_events(pilotlog, pilot, 60, shutdown=False)  # ~60 x 150 bytes: over 6000 as one request
    pilotlog("emit", "log", "-m", "x" * 9000, env={"PILOTLOG_PILOT_UUID": pilot})
    p, _ = replay(pilotlog, PILOTLOG_SINK=server.url)
    assert p.returncode == 0
    assert len(stored_lines(server.dir / "unknown" / pilot)) == 60
    assert "1 event(s) refused" in p.stderr and pilotlog.events() == []
    reason = [f for f in os.listdir(str(pilotlog.spool / "quarantine")) if f.endswith(".reason")]
    assert "HTTP 413" in (pilotlog.spool / "quarantine" / reason[0]).read_text()


def test_server_errors_are_retried_until_they_clear(serve, pilotlog):
    server = serve()
    pilot = str(uuid.uuid4())
    spool_events(pilotlog, pilot, 10, shutdown=False)
    os.makedirs(str(server.dir), exist_ok=True)
    blocker = server.dir / "lhcb"
    blocker.write_text("a file where the VO directory should be: the server answers 500")
    env = dict(pilotlog.env, PILOTLOG_SINK=server.url, PILOTLOG_VO="lhcb", PILOTLOG_DEADLINE="30")
    proc = pilotlog.start("replay", env=env)
    time.sleep(2)
    assert proc.poll() is None, "gave up on a 5xx instead of retrying"
    blocker.unlink()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "replayed 10 event(s)" in err, err
    assert len(stored_lines(server.dir / "lhcb" / pilot)) == 10


def test_server_errors_past_the_deadline_keep_the_events(serve, pilotlog):
    server = serve()
    spool_events(pilotlog, str(uuid.uuid4()), 4, shutdown=False)
    os.makedirs(str(server.dir), exist_ok=True)
    (server.dir / "lhcb").write_text("")
    p, took = replay(pilotlog, PILOTLOG_SINK=server.url, PILOTLOG_VO="lhcb", PILOTLOG_DEADLINE=2)
    (line,) = stderr_lines(p)
    assert p.returncode == 0 and "HTTP 500" in line and "4 event(s) kept" in line
    attempts = int(line.split("still failing after ")[1].split()[0])
    assert attempts >= 2 and "deadline 2 s" in line  # retried with backoff, then stopped in time
    assert took < 10


def test_server_restarted_in_the_middle_of_a_replay(serve, pilotlog):
    server = serve()
    pilot = str(uuid.uuid4())
    n = 3000
    spool_events(pilotlog, pilot, n, shutdown=False)
    expected = [readable_line(e) for e in pilotlog.events()]
    env = dict(pilotlog.env, PILOTLOG_SINK=server.url, PILOTLOG_BATCH_EVENTS="20", PILOTLOG_DEADLINE="60")
    proc = pilotlog.start("replay", env=env)
    end = time.monotonic() + 30
    while pilotlog.depth() > n - 300 and time.monotonic() < end:
        time.sleep(0.01)
    assert pilotlog.depth() > 0, "replay finished before the restart: make n larger"
    server.stop()
    time.sleep(1)
    server.start()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and pilotlog.events() == [], err
    stored = stored_lines(server.dir / "unknown" / pilot)
    assert set(stored) == set(expected)  # complete; a batch in flight at the kill may come twice
    first_seen = list(dict.fromkeys(stored))
    assert first_seen == expected  # and in order


def test_listener_that_never_answers(pilotlog):
    with SilentListener() as silent:
        spool_events(pilotlog, str(uuid.uuid4()), 2, shutdown=False)
        url = "https://localhost:%d%s" % (silent.port, PATH)
        p, took = replay(pilotlog, PILOTLOG_SINK=url, PILOTLOG_TIMEOUT=1, PILOTLOG_DEADLINE=3)
        (line,) = stderr_lines(p)
        assert p.returncode == 0 and "timed out" in line and "2 event(s) kept" in line
        assert took < 10 and silent.held


# -- the receiver's own defences -------------------------------------------------------------------


def test_serve_rejects_bad_input_and_never_writes_outside_its_directory(serve, tmp_path):
    server = serve("--max-body", "4096")
    form = "application/x-www-form-urlencoded"
    pilot = str(uuid.uuid4())

    def send(args, method="sendMessage"):
        return server.post(dirac_form(method, ["a line"], *args, host_credentials=False), form)

    assert send([pilot, "lhcb"])[0] == 200
    for bad in (["../../etc/passwd", "lhcb"], [pilot, "../escape"], [pilot, ".."], ["not-a-uuid", "lhcb"]):
        status, answer = send(bad)
        assert status == 400 and answer["OK"] is False, bad
    assert server.post(b"method=sendMessage&args=%7Bnot-json", form)[0] == 400
    assert server.post(b"x" * 5000, form)[0] == 413
    assert server.post(b"{}", "text/plain")[0] == 415
    assert server.post(b'{"v": 1}\n', "application/x-ndjson")[0] == 400
    # A symbolic link planted where a pilot's file would go is not followed.
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    victim = str(uuid.uuid4())
    os.symlink(str(outside), str(server.dir / "lhcb" / victim))
    assert send([victim, "lhcb"])[0] == 500
    assert outside.read_text() == "untouched"
    assert sorted(os.listdir(str(server.dir))) == ["lhcb"]
    with pytest.raises(OSError):  # ssl.SSLError or a reset: either way no answer
        server.post(b"method=x", form, cert=False)  # no client certificate: no TLS session at all
