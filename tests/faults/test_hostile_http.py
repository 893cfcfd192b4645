"""HTTPS services that misbehave in ways `pilotlog serve` and DIRAC cannot be made to.

Each is a real TLS server on loopback (the test PKI's server certificate) answering from a
script; found by a hostile tester.  The pilot must stay unharmed (bounded time, its exit
code), nothing secret or raw may be printed, and doctor must say what replay then does.
"""

import contextlib
import json
import socket
import ssl
import time

import pytest

from fault_tables import ScriptedTLSServer
from helpers import stderr_lines

TIMEOUT, DEADLINE = 1.0, 3.0
SECRET = "SeCrEtT0ken42"
PATH = "/WorkloadManagement/TornadoPilotLogging?auth=" + SECRET


class ScriptedHTTPS(ScriptedTLSServer):
    """A TLS server whose every connection is handed to ``script(conn, request_bytes)``."""

    def _serve(self, raw):
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
            conn.settimeout(5)
            while not self._stop.is_set():
                request = read_request(conn)
                if request is None or self.script(conn, request) is False:
                    break
            conn.close()
        except (OSError, ssl.SSLError):
            raw.close()

    def url(self, path=PATH):
        return "https://localhost:%d%s" % (self.port, path)


def read_request(conn):
    """One HTTP request (headers and a Content-Length body), or None when the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def answer(status="200 OK", body=b'{"OK": true, "Value": "stored"}', headers=()):
    lines = ["HTTP/1.1 " + status, "Content-Length: %d" % len(body), "Content-Type: application/json"] + list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def trickle(conn, request):
    for byte in answer():
        conn.sendall(bytes([byte]))
        time.sleep(0.5)  # every read gets a byte within the timeout: only a whole-answer bound helps
    return False


def echo_path_404(conn, request):
    line = request.split(b"\r\n")[0]
    conn.sendall(answer("404 Not Found", b"<html>no page for " + line + b"</html>"))
    return False


def control_characters_500(conn, request):
    conn.sendall(answer("500 Internal Server Error", b"\x1b[31mred\x00\r\nX-Forged: 1\x1b]0;title\x07"))
    return False


def silent_close_after_one(conn, request):
    conn.sendall(answer())  # keep-alive announced, then the connection is dropped without a word
    return False


def big_answer(conn, request):
    conn.sendall(answer(body=b'{"OK": true, "Value": "' + b"x" * 100000 + b'"}'))


def moved(conn, request):
    conn.sendall(answer("301 Moved Permanently", b"", ["Location: https://new.example.org/logs?token=" + SECRET]))
    return False


def not_http(conn, request):
    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
    return False


@pytest.fixture
def https_server(pki):
    with contextlib.ExitStack() as servers:
        yield lambda script, **kw: servers.enter_context(ScriptedHTTPS(pki, script, **kw))


def env_for(server, pki, path=PATH):
    return {
        "PILOTLOG_SINK": server.url(path),
        "PILOTLOG_CA_FILE": pki.path("ca.pem"),
        "PILOTLOG_TIMEOUT": TIMEOUT,
        "PILOTLOG_DEADLINE": DEADLINE,
        "PILOTLOG_PILOT_UUID": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
    }


def doctor(pilotlog, env, *extra):
    p = pilotlog("doctor", "--json", *extra, env=env)
    report = json.loads(p.stdout)
    return p.returncode, next((s for s in report["steps"] if not s["ok"]), None), p.stdout


def test_a_service_trickling_its_answer_is_cut_within_the_bounds(pilotlog, pki, https_server):
    """A byte every half second keeps each read under `timeout`: a whole POST is bounded (2 x timeout)."""
    env = env_for(https_server(trickle), pki)
    assert pilotlog("emit", "boot").returncode == 0
    for args, code in ((["replay", "--strict"], 3), (["doctor"], 1), (["run", "--", "sh", "-c", "exit 5"], 5)):
        started = time.monotonic()
        p = pilotlog(*args, env=env, timeout=120)
        took = time.monotonic() - started
        assert p.returncode == code and took < 2 * DEADLINE + 8, (args, p.returncode, took, p.stderr)
        assert "Traceback" not in p.stderr
    assert "no complete answer within 2 s" in pilotlog("replay", env=env).stderr


def test_an_error_page_echoing_the_url_never_prints_its_secret(pilotlog, pki, https_server):
    env = env_for(https_server(echo_path_404), pki)
    assert pilotlog("emit", "boot").returncode == 0
    replay = pilotlog("replay", env=env)
    code, first, text = doctor(pilotlog, env)
    status = pilotlog("status", env=env)
    state = (pilotlog.spool / "state.json").read_text()
    assert "HTTP 404" in replay.stderr and code == 1 and first["name"] == "https"
    for shown in (replay.stderr, text, status.stdout, state):
        assert SECRET not in shown and "****" in shown, shown


def test_a_peers_control_characters_never_reach_the_terminal(pilotlog, pki, https_server):
    env = env_for(https_server(control_characters_500), pki, "/logs")
    assert pilotlog("emit", "boot").returncode == 0
    replay = pilotlog("replay", env=env)
    code, first, text = doctor(pilotlog, env)
    assert len(stderr_lines(replay)) == 1 and "\\u001b[31mred" in replay.stderr, replay.stderr
    for shown in (replay.stderr, text, (pilotlog.spool / "state.json").read_text()):
        assert "\x1b" not in shown and "\x00" not in shown and "\x07" not in shown


@pytest.mark.parametrize("script", [silent_close_after_one, big_answer], ids=["silent close", "big answer"])
def test_doctor_retries_as_replay_does_and_both_deliver(pilotlog, pki, https_server, script):
    """A kept-alive connection dropped without a word, an answer over 64 KiB: replay copes (a fresh
    connection), so doctor --send-test must too."""
    env = env_for(https_server(script), pki, "/logs")
    code, first, text = doctor(pilotlog, env, "--send-test")
    assert code == 0 and first is None, text
    assert pilotlog("emit", "boot").returncode == 0 and pilotlog("emit", "os").returncode == 0
    assert pilotlog("replay", "--strict", env=env).returncode == 0


def test_a_redirect_says_where_to_and_masks_it(pilotlog, pki, https_server):
    env = env_for(https_server(moved), pki, "/logs")
    assert pilotlog("emit", "boot").returncode == 0
    (line,) = stderr_lines(pilotlog("replay", env=env))
    assert "HTTP 301 (moved to https://new.example.org/logs?token=****: put the new address in the sink URL)" in line
    assert SECRET not in line


def test_a_port_that_does_not_speak_http_is_said_so(pilotlog, pki, https_server):
    env = env_for(https_server(not_http), pki, "/logs")
    code, first, text = doctor(pilotlog, env)
    assert code == 1 and first["name"] == "https" and "not an HTTP answer" in first["detail"]
    assert "does not speak HTTP" in first["advice"]


def test_doctor_refused_by_the_primary_is_not_saved_by_a_fallback(pilotlog, pki, https_server, bundle, tmp_path):
    """Replay quarantines what the primary refuses and never tries the fallback for it: doctor says so."""
    from helpers import Serve, https_env

    refusing = https_server(
        lambda conn, request: conn.sendall(answer(body=b'{"OK": false, "Message": "VO name is invalid"}'))
    )
    fallback = Serve(bundle, pki, tmp_path / "store")
    try:
        env = dict(env_for(refusing, pki, "/logs"), PILOTLOG_FALLBACK_SINK=fallback.url, **https_env(pki))
        code, first, text = doctor(pilotlog, env, "--send-test")
        assert pilotlog("emit", "boot").returncode == 0
        replay = pilotlog("replay", "--strict", env=env)
    finally:
        fallback.stop()
    (reason,) = (pilotlog.spool / "quarantine").glob("*.reason")
    assert "1 event(s) refused" in replay.stderr and "VO name is invalid" in reason.read_text()
    assert code == 1 and first["name"] == "https" and "VO name is invalid" in first["detail"], text
    assert "fallback sink is not tried" in first["advice"]


def test_doctor_judges_https_by_the_first_address_that_connects(pki, https_server, tmp_path, monkeypatch):
    """http.client takes the first address (resolver order) that accepts TCP, whatever follows there:
    a broken first address is replay's failure even when a later one works, and doctor's too."""
    from pilotlogger import config as config_module
    from pilotlogger import doctor as doctor_module

    broken = https_server(not_http, host="127.0.0.1")
    working = https_server(lambda conn, request: conn.sendall(answer()), host="127.0.0.2", port=broken.port)
    monkeypatch.setattr(
        doctor_module,
        "_resolve",  # the DNS alias under test: no real resolver here has one
        lambda host, port: (
            [(socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET, ("127.0.0.2", port))],
            "2 addresses",
        ),
    )
    flags = {
        "spool": str(tmp_path / "spool"),
        "sink": broken.url("/logs"),
        "ca_file": pki.path("ca.pem"),
        "timeout": 1.0,
    }
    config = config_module.load(flags, environ={"HOME": str(tmp_path)}, cwd=str(tmp_path))
    check = doctor_module.Doctor(config)
    assert check.run() is False
    https_steps = [s for s in check.steps if s.name == "https"]
    assert [s.ok for s in https_steps] == [False, True] and "127.0.0.1" in https_steps[0].target
    assert working.port == broken.port
