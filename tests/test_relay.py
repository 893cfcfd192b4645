"""`pilotlog relay` and `pilotlog run --relay` (issue 23, parts 1, 2 and 7), as a worker node runs them.

The relay runs from the bundle; requests are made as the DIRAC Pilot makes them
(`pilotTools.sendMessage`: `urllib.request.urlopen(url, data)` with the form `method`,
`args = json.dumps((json.dumps(message), pilotUUID, wnVO))`), and what it forwards goes to
DIRAC 9.1.22's own TornadoPilotLoggingHandler (tests/test_dirac.py's service), whose store
must hold the same bytes as when the Pilot posts to it directly.  The security tests post
as another Unix user (`nobody`) and run the relay as one.
"""

import fcntl
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dirac_pilot import STANDIN, masked, new_stamp, stored_log
from helpers import AGENT_DIRS, Pilotlog, broker_env, https_env, pyenv_python, unavailable
from pilotlogger.relay import MAX_BODY
from test_dirac import DiracService, dirac_python, pilot_form, post, tree

FORM = "application/x-www-form-urlencoded"
NOBODY = 65534
MAX_ANSWER_S = 30.0  # generous: request_timeout (15 s) covers a whole request, the spool lock wait 5 s more


def stamp(i: int = 0) -> str:
    return "2026-12-04T10:%02d:%02d.%06dZ" % (i // 3600 % 60, i // 60 % 60, i % 1000000)


def buffer(command: str, lines, level: str = "INFO", start: int = 0) -> str:
    """A FixedSizeBuffer's text as the Pilot's RemoteLogger of ``command`` sends it: one string of lines."""
    return "".join("%s %s [%s] %s\n" % (stamp(start + i), level, command, line) for i, line in enumerate(lines))


def pilot_args(raw, pilot: str, vo: str = "") -> str:
    return json.dumps((json.dumps(raw), pilot, vo))


def pilot_post(url: str, method: str, raw, pilot: str, vo: str = ""):
    """One post exactly as the Pilot makes it; urlopen raises on any status but 2xx (and so would the Pilot)."""
    data = urlencode({"method": method, "args": pilot_args(raw, pilot, vo)}).encode("utf-8")
    with urllib.request.urlopen(url, data, timeout=120) as answer:  # the Pilot gives none; the test must end
        return answer.status, json.loads(answer.read().decode("utf-8"))


def raw_post(url: str, body: bytes, content_type=FORM, method="POST", headers=None):
    """A request no Pilot makes; (status, the JSON answer)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    conn.request(method, "/", body=body, headers=dict({"Content-Type": content_type}, **(headers or {})))
    answer = conn.getresponse()
    status, text = answer.status, answer.read()
    conn.close()
    return status, json.loads(text.decode("utf-8"))


def address(relay):
    parts = urlsplit(relay.url)
    return parts.hostname, parts.port


PLAIN_URL = r"http://127\.0\.0\.1:\d+/\Z"
TLS_URL = r"https://localhost:\d+/\Z"  # --listen localhost:0, the name the test PKI's server certificate holds


class RelayRun:
    """`pilotlog relay` from the bundle, in the background: its URL is the first line it prints."""

    def __init__(self, pilotlog, *args, env=None, expect=PLAIN_URL):
        self.proc = pilotlog.start("relay", *args, env=env, stdout=subprocess.PIPE)
        self.stderr: list = []
        self.reader = threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True)
        self.reader.start()
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        assert ready, "no URL printed within 60 s: %s" % "".join(self.stderr)
        self.url = self.proc.stdout.readline().strip()
        assert re.match(expect, self.url), (self.url, self.stderr)

    def stop(self) -> int:
        """SIGTERM, as a batch system ends it: what is left is forwarded, then it exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(120)
        self.reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def relays():
    started = []

    def start(pilotlog, *args, expect=PLAIN_URL, **env):
        relay = RelayRun(pilotlog, *args, env=env, expect=expect)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.kill()


@pytest.fixture(scope="module")
def dirac(pki, tmp_path_factory):
    service = DiracService(dirac_python(), pki, tmp_path_factory.mktemp("dirac"))
    yield service
    service.stop()


def status(pilotlog, **env) -> dict:
    p = pilotlog("status", "--json", env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def forms(pilotlog) -> list:
    """(method, args) of each relayed record in the spool, oldest first."""
    return [(e["data"]["dirac_form"]["method"], e["data"]["dirac_form"]["args"]) for e in pilotlog.events()]


PILOT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
PATH_OF_DIRAC = "/WorkloadManagement/TornadoPilotLogging"


# -- what the Pilot is answered ----------------------------------------------------------------


def test_relay_answers_the_pilot_as_diracs_own_handler_does(dirac, pilotlog, pki, relays):
    relay = relays(pilotlog)
    pilot = str(uuid.uuid4())
    same = [
        ("sendMessage", buffer("CheckWorkerNode", ["Uname = Linux", "DiskSpace (MB) = 1234"]), pilot),
        ("sendMessage", ["a list of lines", "as pilotlogger sends them"], pilot),
        ("finaliseLogs", {"retCode": "1"}, pilot),
        ("sendMessage", "x\n", "unknown"),  # the Pilot's default id, which DIRAC refuses
    ]
    for method, raw, who in same:
        theirs = post(dirac.port, pilot_form(method, raw, who, "dteam"), pki)
        ours = pilot_post(relay.url, method, raw, who, "dteam")
        assert theirs[0] == ours[0] == 200 and theirs[1]["OK"] is ours[1]["OK"], (method, theirs, ours)
        if ours[1]["OK"]:
            assert ours[1] == {k: v for k, v in theirs[1].items() if k in ("OK", "Value")}, (theirs, ours)
        else:
            assert theirs[1]["Message"] in ours[1]["Message"], (theirs, ours)
    # Where DIRAC fails with HTTP 500 (urlopen raises: the Pilot exits 1), the relay says why with a 200.
    two_args = [("method", "sendMessage"), ("args", json.dumps((json.dumps("x"), pilot)))]
    assert post(dirac.port, two_args, pki)[0] == 500
    status_, answer = raw_post(relay.url, urlencode(two_args).encode())
    assert status_ == 200 and answer["OK"] is False and "three strings" in answer["Message"]
    assert [m for m, _ in forms(pilotlog)] == ["sendMessage", "sendMessage", "finaliseLogs", "sendMessage"]
    assert pilotlog.events()[-1]["pilot"] == "unknown"  # refused as DIRAC would, yet kept (see the refusal tests)


def test_what_the_relay_answered_is_in_the_spool_even_after_kill_9(pilotlog, relays):
    """Durable before the answer: each relay is killed (SIGKILL) the moment its answer is read."""
    sent = []
    for i in range(4):
        relay = relays(pilotlog, PILOTLOG_LOG_FSYNC="grouped" if i % 2 else "each")
        text = buffer("InstallDIRAC", ["line %d of the pilot" % i])
        assert pilot_post(relay.url, "sendMessage", text, PILOT)[1]["OK"] is True
        relay.proc.kill()
        relay.proc.wait(30)
        sent.append(("sendMessage", pilot_args(text, PILOT)))
    assert forms(pilotlog) == sent


def test_a_readable_request_is_always_answered_200(pilotlog, relays):
    """Malformed, oversized, unknown: HTTP 200 with the reason in {"OK": false}; nothing stored."""
    relay = relays(pilotlog)
    good = urlencode({"method": "sendMessage", "args": pilot_args("x\n", PILOT)}).encode()
    cases = [
        (b"not a form at all", FORM, "not a urlencoded form"),
        (urlencode({"method": "sendMessage", "args": "[1, 2"}).encode(), FORM, "args is not valid JSON"),
        (urlencode({"method": "sendMessage", "args": pilot_args(5, PILOT)}).encode(), FORM, "string or a list"),
        (urlencode({"method": "sendMessage", "args": pilot_args(["a", 5], PILOT)}).encode(), FORM, "string or a list"),
        (urlencode({"method": "sendMessage", "args": pilot_args("\ud800", PILOT)}).encode(), FORM, "not valid Unicode"),
        (urlencode({"method": "finaliseLogs", "args": pilot_args([0], PILOT)}).encode(), FORM, "object"),
        (urlencode({"method": "getMetadata", "args": "[]"}).encode(), FORM, "reads logs from DIRAC's service"),
        (urlencode({"method": "getLogs", "args": "[]"}).encode(), FORM, "reads logs from DIRAC's service"),
        (urlencode({"method": "whoami", "args": "[]"}).encode(), FORM, "unknown method"),
        (good + b"&extraCredentials=hosts", FORM, "extraCredentials must be JSON"),  # DIRAC: HTTP 401
        (b"method=sendMessage&args=%ff", FORM, "not a urlencoded form"),  # not UTF-8: Tornado refuses it
        (good, "application/json", "not DIRAC's form"),
        (urlencode({"method": "sendMessage", "args": pilot_args("x", "a b")}).encode(), FORM, "; not kept"),
    ]
    for body, kind, reason in cases:
        code, answer = raw_post(relay.url, body, kind)
        assert code == 200 and answer["OK"] is False and reason in answer["Message"], (body[:60], answer)
    code, answer = raw_post(relay.url, b"", method="GET")
    assert code == 200 and answer["OK"] is False
    big = b"x" * (MAX_BODY + 1)  # over the relay's largest request: read to its end, then refused
    code, answer = raw_post(relay.url, big)
    assert code == 200 and answer["OK"] is False and "over the limit" in answer["Message"]
    with socket.create_connection(address(relay), timeout=60) as sock:  # chunked: 411 elsewhere
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert pilotlog.events() == []
    assert pilot_post(relay.url, "sendMessage", "still serving\n", PILOT)[1]["OK"] is True


def test_a_full_spool_is_answered_ok_false_and_keeps_what_it_acknowledged(pilotlog, relays):
    relay = relays(pilotlog, PILOTLOG_MAX_EVENTS="3")
    answers = [pilot_post(relay.url, "sendMessage", "line %d\n" % i, PILOT)[1] for i in range(6)]
    assert [a["OK"] for a in answers] == [True, True, True, False, False, False]
    assert "is full" in answers[3]["Message"]
    assert [json.loads(json.loads(args)[0]) for _, args in forms(pilotlog)] == ["line 0\n", "line 1\n", "line 2\n"]
    assert status(pilotlog)["dropped_total"] == 3
    relay.stop()
    said = [line for line in relay.stderr if "the Pilot's posts are not kept" in line]
    assert len(said) == 1 and "is full (max_events=3" in said[0], relay.stderr  # once, on the node's log


@pytest.fixture
def full_disk():
    """A 256 KiB tmpfs: a disk that really fills up."""
    where = tempfile.mkdtemp(prefix="pilotlog-tmpfs-")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", where], stderr=subprocess.PIPE
    )
    if mounted.returncode:
        os.rmdir(where)
        unavailable("cannot mount a tmpfs (%s)" % mounted.stderr.decode().strip())
    yield Path(where)
    subprocess.run(["umount", "-l", where])
    os.rmdir(where)


def test_a_full_disk_is_answered_ok_false_and_what_was_acknowledged_is_whole(pilotlog, relays, full_disk):
    spool = full_disk / "spool"
    relay = relays(pilotlog, PILOTLOG_SPOOL=str(spool))
    answers = []
    for i in range(40):  # about 20 KiB a post: the disk fills up long before
        text = buffer("InstallDIRAC", ["%d: %s" % (i, "y" * 200)] * 80)
        answers.append((text, pilot_post(relay.url, "sendMessage", text, PILOT)[1]))
    taken = [text for text, answer in answers if answer["OK"]]
    refused = [answer["Message"] for _, answer in answers if not answer["OK"]]
    assert taken and refused and all("No space left on device" in m for m in refused), refused[:2]
    stored = [
        json.loads(json.loads(e["data"]["dirac_form"]["args"])[0])
        for e in Pilotlog(pilotlog.bundle, full_disk).events()
    ]
    assert stored == taken


def test_answers_are_bounded_in_time_when_the_spool_stays_locked(pilotlog, relays):
    """Another process holds the spool's lock: the Pilot is answered {"OK": false} within the lock wait."""
    relay = relays(pilotlog)
    assert pilot_post(relay.url, "sendMessage", "first\n", PILOT)[1]["OK"] is True
    fd = os.open(str(pilotlog.spool / "lock"), os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)  # the spool's locks are POSIX record locks (fcntl), owned by this process
    try:
        started = time.monotonic()
        _, answer = pilot_post(relay.url, "sendMessage", "second\n", PILOT)
        waited = time.monotonic() - started
    finally:
        os.close(fd)
    assert answer["OK"] is False and "locked by another process" in answer["Message"] and waited < MAX_ANSWER_S
    assert pilot_post(relay.url, "sendMessage", "third\n", PILOT)[1]["OK"] is True


def test_a_client_dribbling_bytes_does_not_hold_the_pilot(pilotlog, relays):
    relay = relays(pilotlog)
    slow = socket.create_connection(address(relay), timeout=60)
    slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nmethod=")
    started = time.monotonic()
    assert pilot_post(relay.url, "sendMessage", "meanwhile\n", PILOT)[1]["OK"] is True
    assert time.monotonic() - started < MAX_ANSWER_S
    slow.settimeout(60)
    assert slow.recv(65536) == b""  # cut at the request deadline, never answered nor stored
    slow.close()
    assert len(pilotlog.events()) == 1


# -- forwarded to DIRAC ------------------------------------------------------------------------


def https_to(dirac, pki, **extra) -> dict:
    return dict(https_env(pki), PILOTLOG_SINK=dirac.url, PILOTLOG_TIMEOUT="5", PILOTLOG_DEADLINE="20", **extra)


MESSAGES = [
    buffer("Pilot", ["booting pilot", "an é, a 😀, a tab\t, a nul \x00"]),
    buffer("CheckWorkerNode", ["Uname = Linux", "DiskSpace (MB) = 1234"]) + "raw subprocess output, no newline",
    ["a list", "of lines", ""],
    "",  # a flush of an empty buffer
    buffer("InstallDIRAC", ["pip says: %s" % ("z" * 90)] * 1000),  # a full 1000-line buffer: over one event
    buffer("InstallDIRAC", ["a line of %d characters: %s" % (200000, "w" * 200000)]),  # one line over one event
    buffer("ConfigureSite", ["windows line\r", "u2028 \u2028 inside"], "ERROR"),
]


def test_relay_forwards_what_dirac_stores_byte_for_byte_as_from_the_pilot(dirac, pilotlog, pki, relays):
    env = https_to(dirac, pki)
    relay = relays(pilotlog, "--ship-every", "0", **env)  # no background shipping: the drain at the end
    direct, relayed = [str(uuid.uuid4()) for _ in range(2)], [str(uuid.uuid4()) for _ in range(2)]
    for message in MESSAGES:  # two pilots at once, interleaved, each the way one Pilot posts
        for d, r in zip(direct, relayed):
            assert post(dirac.port, pilot_form("sendMessage", message, d), pki)[1]["OK"] is True
            assert pilot_post(relay.url, "sendMessage", message, r)[1]["OK"] is True
    for i, (d, r) in enumerate(zip(direct, relayed)):
        assert post(dirac.port, pilot_form("finaliseLogs", {"retCode": str(i)}, d), pki)[1]["OK"] is True
        assert pilot_post(relay.url, "finaliseLogs", {"retCode": str(i)}, r)[1]["OK"] is True
    records = pilotlog.events()
    assert len(records) > 2 * (len(MESSAGES) + 1)  # the largest messages were stored in parts
    assert all(len(json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode()) < 64 * 1024 for e in records)
    assert relay.stop() == 0, relay.stderr
    for d, r in zip(direct, relayed):
        theirs, ours = (dirac.store / "dteam" / (p + ".log") for p in (d, r))
        assert ours.read_bytes() == theirs.read_bytes()
    assert pilotlog.events() == [] and status(pilotlog, **env)["delivered_total"] == len(records)


def test_records_small_enough_are_posted_with_the_pilots_own_bytes(dirac, pilotlog, pki, relays):
    """The same `args` bytes as the Pilot's post, whatever encoding it chose (here a list, non-ASCII kept)."""
    relay = relays(pilotlog)
    pilot = str(uuid.uuid4())
    args = json.dumps([json.dumps(["été", "second"], ensure_ascii=False), pilot, ""], ensure_ascii=False)
    body = urlencode([("method", "sendMessage"), ("args", args), ("method", "sendMessage")]).encode()
    assert raw_post(relay.url, body)[1]["OK"] is True
    assert forms(pilotlog) == [("sendMessage", args)]
    assert pilotlog("replay", env=https_to(dirac, pki)).returncode == 0
    assert (dirac.store / "dteam" / pilot).read_bytes() == "été\nsecond\n".encode()


def relay_tls(pki, *extra) -> tuple:
    """`pilotlog relay`'s TLS listener with the test PKI's server certificate (DNS:localhost),
    client certificates (grid proxies too) required from the test CA."""
    return ("--listen", "localhost:0", "--server-cert", pki.path("server.pem"), "--server-key", pki.path("server.key"),
            "--client-ca", pki.path("ca.pem"), "--require-client-cert") + extra  # fmt: skip


def run_standin(url: str, pilot: str, workdir: Path, pki, x509up: str) -> subprocess.CompletedProcess:
    """DIRAC's Pilot (its stand-in, tests/dirac/standin_pilot.py) logging remotely to ``url``, one post
    per line, with ``x509up`` as X509_USER_PROXY and the test CA's directory as X509_CERT_DIR."""
    workdir.mkdir(parents=True)
    (workdir / "pilot.json").write_text(json.dumps({"Defaults": {"Pilot": {"RemoteLoggerBufsize": 1}}}))
    env = dict(PATH=os.environ["PATH"], LANG="C.UTF-8", X509_CERT_DIR=pki.path("certificates"), X509_USER_PROXY=x509up)
    return subprocess.run(
        [sys.executable, str(STANDIN), "-z", "-g", url, "--pilotUUID", pilot, "--wnVO=dteam"],
        cwd=str(workdir), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=120,
    )  # fmt: skip


def test_the_pilot_posts_to_a_relay_over_https_as_to_dirac(dirac, pilotlog, pki, proxies, relays, tmp_path):
    """The Pilot given an https:// relay: it trusts the relay's CA through X509_CERT_DIR and posts with its
    real proxy (the relay takes its owner, --allowed-cn); DIRAC ends with what the Pilot posting to it
    directly leaves there."""
    from brokers import CLIENT_CN

    env = https_to(dirac, pki)
    relay = relays(pilotlog, "--ship-every", "0", *relay_tls(pki, "--allowed-cn", CLIENT_CN), expect=TLS_URL, **env)
    direct, relayed = new_stamp(), new_stamp()
    for url, pilot in ((dirac.url, direct), (relay.url, relayed)):
        p = run_standin(url, pilot, tmp_path / pilot, pki, proxies.x509up("first"))
        assert p.returncode == 0, p.stderr
    posted = len(pilotlog.events())
    assert posted > 10  # a post per line
    assert relay.stop() == 0, relay.stderr
    assert stored_log(dirac, direct).endswith("exit code:0)\n")  # finalised, the Pilot's last line in
    assert masked(stored_log(dirac, relayed), relayed) == masked(stored_log(dirac, direct), direct)
    assert pilotlog.events() == [] and status(pilotlog, **env)["delivered_total"] == posted


class RecordingDirac:
    """A stand-in for DIRAC's service that fails on cue (a fault the real one cannot make at will):
    it records each form it is sent, in order, and answers 503 while ``failing`` says so."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, HTTPServer

        owner = self
        self.received, self.failing, self.refusing = [], lambda method, text: False, lambda method, text: False

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                from urllib.parse import parse_qs

                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                method, args = form["method"][-1], json.loads(form["args"][-1])
                text = json.loads(args[0])
                failed = owner.failing(method, text)
                owner.received.append((method, args[1], text, failed))
                answer = (
                    {"OK": False, "Message": "no room for this one"} if owner.refusing(method, text) else {"OK": True}
                )
                body = json.dumps(answer).encode()
                self.send_response(503 if failed else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/WorkloadManagement/TornadoPilotLogging" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_per_pilot_order_and_finalise_only_after_every_earlier_message_was_confirmed(pilotlog, relays):
    relay = relays(pilotlog, "--ship-every", "0")
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    posts = [
        ("sendMessage", "a1\n", a),
        ("sendMessage", "b1\n", b),
        ("sendMessage", "a2 fails for a while\n", a),
        ("sendMessage", "b2\n", b),
        ("finaliseLogs", {"retCode": "0"}, a),
        ("finaliseLogs", {"retCode": "0"}, b),
    ]
    for method, raw, pilot in posts:
        assert pilot_post(relay.url, method, raw, pilot)[1]["OK"] is True
    relay.kill()
    service = RecordingDirac()
    try:
        env = {"PILOTLOG_SINK": service.url, "PILOTLOG_DEADLINE": "2", "PILOTLOG_TIMEOUT": "2"}
        service.failing = lambda method, text: "fails" in str(text)
        assert pilotlog("replay", env=env).returncode == 0  # a2 keeps failing: nothing after it is sent
        assert [t for _, _, t, failed in service.received if not failed] == ["a1\n", "b1\n"]
        assert len(pilotlog.events()) == 4 and "HTTP 503" in status(pilotlog, **env)["last_error"]
        failures = sum(r[3] for r in service.received) + 2  # two more, then DIRAC takes it
        service.failing = lambda method, text: "fails" in str(text) and sum(r[3] for r in service.received) < failures
        assert pilotlog("replay", env=dict(env, PILOTLOG_DEADLINE="60")).returncode == 0
        confirmed = [(m, p, t) for m, p, t, failed in service.received if not failed]
        assert confirmed == [(m, p, raw) for m, raw, p in posts]  # in the order received, each once
    finally:
        service.close()
    assert pilotlog.events() == []


def test_a_pilot_id_dirac_refuses_is_answered_so_kept_and_quarantined_with_diracs_words(dirac, pilotlog, pki, relays):
    """The Pilot's default id `unknown`: the relay answers DIRAC's refusal, as DIRAC would, yet keeps
    the lines; forwarded, DIRAC refuses them: quarantined with its words, never counted delivered."""
    env = https_to(dirac, pki)
    relay = relays(pilotlog, "--ship-every", "0", **env)
    _, answer = pilot_post(relay.url, "sendMessage", "kept though DIRAC refuses\n", "unknown")
    assert answer["OK"] is False and "Pilot UUID is invalid" in answer["Message"] and "kept" in answer["Message"]
    (kept,) = pilotlog.events()
    assert kept["pilot"] == "unknown" and "Pilot UUID is invalid" in status(pilotlog, **env)["last_refusal"]
    before = tree(dirac.store)
    assert relay.stop() == 0
    state = status(pilotlog, **env)
    assert state["delivered_total"] == 0 and state["quarantined"] == 1 and state["depth"] == 0
    assert re.match(r"https://localhost:\d+%s refused it: Pilot UUID is invalid" % PATH_OF_DIRAC, state["last_refusal"])
    assert tree(dirac.store) == before
    (reason,) = (pilotlog.spool / "quarantine").glob("*.reason")
    assert "Pilot UUID is invalid" in reason.read_text()


def test_a_vo_dirac_refuses_is_quarantined_with_diracs_words_and_said_by_status(dirac, pilotlog, pki, relays):
    """The VO is DIRAC's to choose (from the forwarding credentials): a host certificate and no
    wnVO are refused by DIRAC when forwarded, not by the relay."""
    env = https_to(dirac, pki, PILOTLOG_CERT=pki.path("hostcreds"), PILOTLOG_KEY="")
    relay = relays(pilotlog, "--ship-every", "0", **env)
    pilot = str(uuid.uuid4())
    for method, raw in (("sendMessage", "needs a VO\n"), ("finaliseLogs", {"retCode": "0"})):
        assert pilot_post(relay.url, method, raw, pilot)[1]["OK"] is True
    before = tree(dirac.store)
    assert relay.stop() == 0
    state = status(pilotlog, **env)
    assert state["delivered_total"] == 0 and state["quarantined"] == 2 and state["depth"] == 0
    assert "VO name is invalid" in state["last_refusal"], state
    assert tree(dirac.store) == before
    shown = pilotlog("status", env=env).stdout
    assert re.search(
        r"last_refusal: +https://localhost:\d+/WorkloadManagement/TornadoPilotLogging refused it: VO", shown
    )


def test_a_finalise_after_a_refused_message_is_still_sent(pilotlog, relays):
    """The decision (README): DIRAC's log is made final with everything it took; the refused part
    waits in the quarantine.  Held back, the log would stay open and never be uploaded."""
    relay = relays(pilotlog, "--ship-every", "0")
    for method, raw in (("sendMessage", "taken\n"), ("sendMessage", "refused\n"), ("finaliseLogs", {"retCode": "0"})):
        assert pilot_post(relay.url, method, raw, PILOT)[1]["OK"] is True
    relay.kill()
    service = RecordingDirac()
    service.refusing = lambda method, text: text == "refused\n"
    try:
        assert pilotlog("replay", env={"PILOTLOG_SINK": service.url}).returncode == 0
    finally:
        service.close()
    assert [(m, t) for m, _, t, _ in service.received] == [
        ("sendMessage", "taken\n"),
        ("sendMessage", "refused\n"),
        ("finaliseLogs", {"retCode": "0"}),
    ]
    state = status(pilotlog)
    assert (state["delivered_total"], state["quarantined"], state["depth"]) == (2, 1, 0)
    assert state["last_refusal"].endswith("refused it: no room for this one")


# -- hosted by the wrapper ----------------------------------------------------------------------

STAND_IN = r"""
import json, os, sys, time, urllib.parse, urllib.request
url = os.environ["PILOTLOG_RELAY_URL"]
print("env=%s argv=%s" % (url, sys.argv[1]), flush=True)
args = json.dumps((json.dumps("%s INFO [CheckWorkerNode] hello from %s\n" % ("2026-12-04T10:00:00.000000Z", sys.argv[2])), sys.argv[3], ""))
answer = urllib.request.urlopen(sys.argv[1], urllib.parse.urlencode({"method": "sendMessage", "args": args}).encode())
print(json.loads(answer.read())["OK"], flush=True)
if len(sys.argv) > 4:  # wait until the test says every pilot is up
    ends = time.time() + 120
    while not os.path.exists(sys.argv[4]) and time.time() < ends:
        time.sleep(0.05)
sys.exit(3)
"""


def test_run_relay_gives_the_child_its_url_in_the_environment_and_for_the_relay_argument(pilotlog, tmp_path):
    child = tmp_path / "stand_in.py"
    child.write_text(STAND_IN)
    p = pilotlog("run", "--relay", "--", sys.executable, child, "{relay}", "one", PILOT)
    assert p.returncode == 3, p.stderr
    printed = re.match(r"env=(http://127\.0\.0\.1:\d+/) argv=(\S+)\nTrue\n\Z", p.stdout)
    assert printed and printed.group(1) == printed.group(2), p.stdout
    boot, relayed, shutdown = pilotlog.events()
    assert boot["phase"] == "boot" and boot["data"]["relay"] == printed.group(1)
    assert boot["data"]["command"][2] == printed.group(1)  # what the child was given
    assert (
        relayed["pilot"] == PILOT and relayed["phase"] == "CheckWorkerNode" and "hello from one" in relayed["message"]
    )
    assert shutdown["phase"] == "shutdown" and shutdown["data"]["exit_code"] == 3


def test_a_sites_http_proxy_does_not_take_the_pilots_posts_away_from_the_relay(pilotlog, tmp_path):
    """urllib sends a request for 127.0.0.1 to $http_proxy unless $no_proxy names it: the wrapper
    adds loopback to the child's no_proxy (here the proxy is a port nothing listens on)."""
    child = tmp_path / "stand_in.py"
    child.write_text(STAND_IN)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        proxy = "http://127.0.0.1:%d" % unused.getsockname()[1]
    env = {"http_proxy": proxy, "HTTP_PROXY": proxy, "NO_PROXY": "example.org"}
    p = pilotlog("run", "--relay", "--", sys.executable, child, "{relay}", "proxied", PILOT, env=env)
    assert p.returncode == 3 and p.stdout.endswith("True\n"), p.stderr
    assert [e["phase"] for e in pilotlog.events()] == ["boot", "CheckWorkerNode", "shutdown"]


PROXY_CHECK = r"""
import json, os, sys, urllib.parse, urllib.request
host = urllib.parse.urlsplit(os.environ["PILOTLOG_RELAY_URL"]).hostname
bypass = urllib.request.proxy_bypass_environment
print(json.dumps({"relay": bool(bypass(host)), "site": bool(bypass("dirac.internal.example.org"))}))
"""


@pytest.mark.parametrize(
    "site",
    [
        {"no_proxy": "*"},
        {"NO_PROXY": "dirac.internal.example.org"},
        {"no_proxy": "dirac.internal.example.org", "NO_PROXY": "dirac.internal.example.org"},
        {"no_proxy": ".example.org, "},
    ],
    ids=["star", "uppercase-only", "both", "domain-with-trailing-comma"],
)
def test_the_sites_no_proxy_still_holds_for_the_pilot_beside_the_relays_loopback(pilotlog, tmp_path, site):
    """The site's proxy-bypass list keeps its meaning for the Pilot's own traffic (its downloads,
    a DIRAC in the site) while loopback is added for the relay: no_proxy=* stays "every host",
    a site that set only NO_PROXY is not hidden behind a new lowercase no_proxy."""
    child = tmp_path / "proxy_check.py"
    child.write_text(PROXY_CHECK)
    env = dict(site, http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    p = pilotlog("run", "--relay", "--", sys.executable, child, env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"relay": True, "site": True}


@pytest.mark.parametrize("sink", ["dirac", "broker"])
def test_with_no_loopback_for_the_relay_the_pilot_posts_to_dirac_itself(pilotlog, sink):
    """A node (or container) without a working loopback: the relay cannot listen. The child still
    runs, and a Pilot told `-g {relay}` gets DIRAC's own URL when DIRAC is the sink (it posts there
    itself, as without pilotlogger) instead of the text "{relay}", which its urlopen would refuse
    (exit 1). With another sink there is no URL to give: it is left, and said so."""
    if subprocess.run(["unshare", "-n", "true"], stderr=subprocess.DEVNULL).returncode != 0:
        unavailable("unshare -n (a network namespace with loopback down) needs root")
    dirac = "https://dirac.example.org:8444/WorkloadManagement/TornadoPilotLogging"
    env = (
        {"PILOTLOG_SINK": dirac, "PILOTLOG_HTTP_PROTOCOL": "dirac", "PILOTLOG_DEADLINE": "1"} if sink == "dirac" else {}
    )
    show = "import os, sys; print(sys.argv[1], os.environ.get('PILOTLOG_RELAY_URL'))"

    def without_loopback(*args):
        return subprocess.run(
            ["unshare", "-n", pilotlog.python, "-I", "-S", str(pilotlog.bundle)] + list(args),
            env=pilotlog._env(env),
            cwd=str(pilotlog.cwd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            timeout=120,
        )

    p = without_loopback("run", "--relay", "--", sys.executable, "-c", show, "{relay}")
    assert p.returncode == 0, p.stderr
    if sink == "dirac":
        assert p.stdout == "%s None\n" % dirac
        assert "cannot start the relay" in p.stderr and "posts there itself" in p.stderr
    else:
        assert p.stdout == "{relay} None\n"
        assert "{relay} is left as it is (the sink is not DIRAC's service)" in p.stderr
        alone = without_loopback("relay")  # pilotlog relay there: no URL printed that nobody could reach
        assert (alone.returncode, alone.stdout) == (1, "") and "cannot relay on" in alone.stderr, alone.stderr


def test_run_relay_and_capture_together_record_each_road_once(pilotlog, tmp_path):
    child = tmp_path / "stand_in.py"
    child.write_text(STAND_IN)
    p = pilotlog("run", "--relay", "--capture", "--", sys.executable, child, "{relay}", "two", PILOT)
    assert p.returncode == 3, p.stderr
    phases = [e["phase"] for e in pilotlog.events()]
    assert phases.count("CheckWorkerNode") == 1 and phases.count("log") == 2, phases  # the post; the two printed lines


def test_two_pilots_on_one_node_each_get_their_own_relay(bundle, tmp_path):
    child = tmp_path / "stand_in.py"
    child.write_text(STAND_IN)
    barrier = tmp_path / "all-up"
    runs, procs = [], []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        run = Pilotlog(bundle, tmp_path / name)
        runs.append(run)
        procs.append(
            run.start(
                "run",
                "--relay",
                "--",
                sys.executable,
                child,
                "{relay}",
                name,
                str(uuid.uuid4()),
                barrier,
                stdout=subprocess.PIPE,
            )
        )
    urls = []
    for proc in procs:  # both relays are up at once: each child answered before either may end
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready
        urls.append(proc.stdout.readline().split()[0].split("=")[1])
        assert proc.stdout.readline().strip() == "True"
    barrier.touch()
    assert [proc.wait(120) for proc in procs] == [3, 3]
    assert urls[0] != urls[1]
    for name, run in zip(("first", "second"), runs):
        (relayed,) = [e for e in run.events() if e["source"] == "relay"]
        assert "hello from %s" % name in relayed["message"]


# -- what operators see --------------------------------------------------------------------------


def relay_a_pilot(relay, pilot):
    """A pilot whose second command fails: its commands as phases, its retCode the end."""
    pilot_post(relay.url, "sendMessage", buffer("CheckWorkerNode", ["Uname = Linux"]), pilot)
    pilot_post(relay.url, "sendMessage", buffer("InstallDIRAC", ["pip install DIRAC"]), pilot)
    pilot_post(relay.url, "sendMessage", buffer("InstallDIRAC", ["Could not pip install [ERROR 2]"], "ERROR", 5), pilot)
    pilot_post(relay.url, "finaliseLogs", {"retCode": "2"}, pilot)


def test_timeline_shows_a_relayed_pilot_as_a_lifecycle(pilotlog, relays, tmp_path):
    relay = relays(pilotlog)
    relay_a_pilot(relay, PILOT)
    replayed = pilotlog("replay")  # the stdout sink: JSON lines
    (tmp_path / "day.jsonl").write_text(replayed.stdout)
    shown = pilotlog("timeline", tmp_path / "day.jsonl")
    line = shown.stdout.splitlines()[0]
    assert re.match(
        r"%s  \S+  CheckWorkerNode → InstallDIRAC \+\S+ s → InstallDIRAC! \+\S+ s → shutdown! " % PILOT, line
    ), line
    document = json.loads(pilotlog("timeline", "--json", tmp_path / "day.jsonl").stdout)
    (lifecycle,) = document["pilots"]
    assert lifecycle["phases"][2]["message"].endswith("[InstallDIRAC] Could not pip install [ERROR 2]")
    assert lifecycle["phases"][-1]["message"] == 'finaliseLogs: retCode "2"'
    assert document["summary"]["last_phase"] == {"shutdown": 1}


def test_tail_shows_relayed_pilots_from_the_broker(rabbitmq, pilotlog, pki, queue, relays):
    relay = relays(pilotlog)
    relay_a_pilot(relay, PILOT)
    env = dict(broker_env(pki), PILOTLOG_SINK=rabbitmq.url(queue))
    assert pilotlog("replay", env=env).returncode == 0 and pilotlog.events() == []
    tail = pilotlog("tail", "--count", "4", "--seconds", "60", env=env)
    lines = tail.stdout.splitlines()
    assert tail.returncode == 0 and len(lines) == 4, tail.stderr
    assert [line.split()[2:4] for line in lines] == [
        ["INFO", "CheckWorkerNode:"],
        ["INFO", "InstallDIRAC:"],
        ["ERROR", "InstallDIRAC:"],
        ["ERROR", "shutdown:"],
    ]
    assert all(line.split()[1] == PILOT for line in lines)


# -- only the pilot may post (part 7) ----------------------------------------------------------

POSTER = r"""
import json, sys, urllib.parse, urllib.request
args = json.dumps((json.dumps("from uid %d\n" % __import__("os").getuid()), sys.argv[2], ""))
with urllib.request.urlopen(sys.argv[1], urllib.parse.urlencode({"method": "sendMessage", "args": args}).encode(), timeout=60) as a:
    print(a.status, a.read().decode())
"""


def as_user(uid: int):
    def become():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return become


def post_as(uid: int, url: str):
    """(status, answer) of a Pilot-like post from a process of ``uid``."""
    p = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", POSTER, url, PILOT],
        preexec_fn=as_user(uid) if uid != os.getuid() else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    code, _, text = p.stdout.partition(" ")
    return int(code), json.loads(text)


@pytest.fixture
def root_only():
    if os.getuid() != 0:
        unavailable("the tests that post as another user need root (to become nobody)")


def test_a_post_from_another_user_is_refused_and_nothing_of_it_is_stored(pilotlog, relays, root_only):
    """... and however often it comes back, the relay's stderr (the pilot job's) says it once."""
    relay = relays(pilotlog)
    for _ in range(3):
        code, answer = post_as(NOBODY, relay.url)
        assert code == 200 and answer["OK"] is False
        assert "only from its own user (uid 0), not from uid %d" % NOBODY in answer["Message"]
    assert pilotlog.events() == []
    code, answer = post_as(0, relay.url)
    assert code == 200 and answer["OK"] is True
    assert [json.loads(json.loads(args)[0]) for _, args in forms(pilotlog)] == ["from uid 0\n"]
    assert relay.stop() == 0
    assert len([line for line in relay.stderr if "not from uid %d" % NOBODY in line]) == 1, relay.stderr


HOLDER = r"""
import socket, sys, time
held = []
for _ in range(int(sys.argv[3])):
    try:
        sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        held.append(sock)
    except OSError:
        pass
print("holding", flush=True)
time.sleep(float(sys.argv[4]))
"""


def test_another_user_holding_many_connections_cannot_keep_the_pilot_out(pilotlog, relays, root_only):
    """Refused connections have a small lane of their own: nobody's 60 half-sent requests take
    none of the places the Pilot's posts need (without it, they filled both bounds and the
    Pilot's connection was closed: urlopen raised)."""
    relay = relays(pilotlog)
    host, port = address(relay)
    holder = subprocess.Popen(
        ["/usr/bin/python3", "-I", "-c", HOLDER, host, str(port), "60", "20"],
        preexec_fn=as_user(NOBODY),
        stdout=subprocess.PIPE,
        universal_newlines=True,
    )
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 60)
        assert ready and holder.stdout.readline().strip() == "holding"
        for i in range(3):
            assert pilot_post(relay.url, "sendMessage", "still heard %d\n" % i, PILOT)[1]["OK"] is True
    finally:
        holder.kill()
        holder.wait(30)
    assert len(pilotlog.events()) == 3


@pytest.mark.parametrize(
    "family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"), (socket.AF_INET6, "::")]
)
def test_both_ways_of_asking_who_connected_agree(root_only, family, host):
    """netlink sock_diag (the fast way) and /proc/net/tcp{,6} (the fallback) name the same owner
    and socket inode, for a client of ours and one of nobody's, over IPv4, IPv6 and IPv4 to a dual-stack listener."""
    from pilotlogger import peeruid

    with socket.socket(family) as listener:
        if host == "::":
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind((host, 0))
        listener.listen(4)
        target = "127.0.0.1" if host == "::" else host
        for uid in (os.getuid(), NOBODY):
            holder = subprocess.Popen(
                ["/usr/bin/python3", "-I", "-c", HOLDER, target, str(listener.getsockname()[1]), "1", "30"],
                preexec_fn=as_user(uid) if uid != os.getuid() else None,
                stdout=subprocess.PIPE,
                universal_newlines=True,
            )
            try:
                listener.settimeout(60)
                conn, _ = listener.accept()
                with conn:
                    own, peer = conn.getsockname(), conn.getpeername()
                    ends = (peeruid._ipv6_bytes(peer[0]), peer[1], peeruid._ipv6_bytes(own[0]), own[1])
                    owner = peeruid._ask_netlink(*ends)
                    assert owner == peeruid._read_tables(*ends) == peeruid.peer_socket(conn)  # uid and inode
                    assert owner[0] == peeruid.peer_uid(conn) == uid and owner[1] > 0
                    assert peeruid._ask_netlink(ends[0], ends[1] ^ 1, ends[2], ends[3]) is None  # no such socket
            finally:
                holder.kill()
                holder.wait(30)


def test_a_relay_run_by_another_user_takes_that_user_only(bundle, root_only):
    """The rule both ways: a relay of `nobody` refuses root and takes nobody."""
    home = Path(tempfile.mkdtemp(prefix="pilotlog-nobody-"))
    try:
        os.chmod(str(home), 0o755)
        os.chown(str(home), NOBODY, NOBODY)
        AGENT_DIRS.add(str(home / "spool"))
        env = {
            "PATH": "/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PILOTLOG_SPOOL": str(home / "spool"),
            "PILOTLOG_CACHE": str(home / "cache"),
        }
        proc = subprocess.Popen(
            ["/usr/bin/python3", "-I", "-S", str(bundle), "relay"],
            cwd=str(home),
            env=env,
            preexec_fn=as_user(NOBODY),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            universal_newlines=True,
        )
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready
            url = proc.stdout.readline().strip()
            code, answer = post_as(0, url)
            assert code == 200 and answer["OK"] is False and "not from uid 0" in answer["Message"]
            code, answer = post_as(NOBODY, url)
            assert code == 200 and answer["OK"] is True, answer
        finally:
            proc.kill()
            proc.wait(30)
        (stored,) = Pilotlog(bundle, home).events()
        assert json.loads(json.loads(stored["data"]["dirac_form"]["args"])[0]) == "from uid %d\n" % NOBODY
    finally:
        shutil.rmtree(str(home), ignore_errors=True)


def test_a_flood_from_the_pilots_own_user_fills_the_spool_bounds_and_never_blocks(pilotlog, relays):
    bounds = {"PILOTLOG_MAX_EVENTS": "60", "PILOTLOG_MAX_BYTES": str(600 * 1024)}
    relay = relays(pilotlog, **bounds)
    answers, latencies, lock = [], [], threading.Lock()

    def flood(n):
        for i in range(40):
            text = buffer("LaunchAgent", ["flood %d.%d %s" % (n, i, "f" * (i % 4) * 5000)])
            started = time.monotonic()
            _, answer = pilot_post(relay.url, "sendMessage", text, PILOT)
            with lock:
                answers.append(answer["OK"])
                latencies.append(time.monotonic() - started)

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert len(answers) == 320 and max(latencies) < MAX_ANSWER_S  # every post answered, none held
    stored = pilotlog.events()
    size = sum(f.stat().st_size for f in (pilotlog.spool / "events").iterdir())
    assert answers.count(True) == len(stored) and 0 < len(stored) <= 60 and size <= 600 * 1024
    assert answers.count(False) == 320 - len(stored)
    assert (
        pilot_post(relay.url, "sendMessage", "after the flood\n", PILOT)[1]["OK"] is False
    )  # still full, still answering


# -- the Python versions the bundle runs on ------------------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (("--allowed-cn", "pilot-client"), "--allowed-cn needs --client-ca"),
        (("--server-cert", "server.pem"), "TLS needs both --server-cert and --server-key"),
        (("--client-ca", "ca.pem", "--require-client-cert"), "TLS needs both --server-cert and --server-key"),
        (("--server-cert", "no.pem", "--server-key", "no.key"), "server certificate no.pem does not exist"),
    ],
)
def test_bad_tls_options_of_the_relay_are_usage_errors(pilotlog, args, says):
    """Said before anything listens (exit 2, no URL printed), as serve's."""
    p = pilotlog("relay", *args, timeout=30)
    assert p.returncode == 2 and says in p.stderr and p.stdout == "", (p.returncode, p.stdout, p.stderr)


@pytest.mark.parametrize("version", ["3.6.15", "3.13.0"])
def test_relay_on_the_oldest_and_newest_python(bundle, tmp_path, version):
    run = Pilotlog(bundle, tmp_path, python=pyenv_python(version))
    relay = RelayRun(run)
    try:
        assert post_as(os.getuid(), relay.url)[1]["OK"] is True  # its own user's post taken (a peer in /proc)
        pilot = str(uuid.uuid4())
        big = buffer("InstallDIRAC", ["x" * 100] * 1000)  # stored in parts
        for method, raw in (("sendMessage", MESSAGES[0]), ("sendMessage", big), ("finaliseLogs", {"retCode": ""})):
            assert pilot_post(relay.url, method, raw, pilot)[1]["OK"] is True
    finally:
        assert relay.stop() == 0
    records = run.events()
    assert records[-1]["phase"] == "shutdown" and records[-1]["data"]["exit_code"] == 0
    text = "".join(
        json.loads(json.loads(e["data"]["dirac_form"]["args"])[0]) for e in records if e["phase"] == "InstallDIRAC"
    )
    assert text == big and len(records) > 4


# -- any request a Pilot could make, against DIRAC ------------------------------------------------

TEXT = st.lists(
    st.characters(blacklist_categories=("Cs",)) | st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\x85", "\x00"]),
    max_size=40,
).map("".join)


@pytest.fixture(scope="module")
def shared_relay(bundle, tmp_path_factory):
    run = Pilotlog(bundle, tmp_path_factory.mktemp("relay"))
    relay = RelayRun(run, "--ship-every", "0")
    yield run, relay
    relay.kill()


@settings(
    max_examples=int(os.environ.get("PILOTLOG_RELAY_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(
    payload=TEXT | st.lists(TEXT, max_size=4) | st.lists(st.integers() | TEXT, min_size=1, max_size=3),
    repeat=st.sampled_from([1, 1, 1, 3000]),
    vo=st.sampled_from(["", "dteam", "lhcb_prod"]),
    odd=st.sampled_from([[], [("foo", "bar")], [("args", "junk"), "again"]]),
)
def test_any_request_is_answered_200_and_reaches_dirac_as_the_pilots_would(
    dirac, pki, shared_relay, payload, repeat, vo, odd
):
    """200 always; where DIRAC takes the Pilot's own post, it stores the same bytes from the relay."""
    run, relay = shared_relay
    if isinstance(payload, str):
        payload = payload * repeat
    direct, relayed = str(uuid.uuid4()), str(uuid.uuid4())

    def fields(pilot):
        main = [("method", "sendMessage"), ("args", pilot_args(payload, pilot, vo))]
        extra = [f for f in odd if f != "again"]
        return extra + main if "again" in odd else main + extra  # a junk args first: the last one counts

    theirs = post(dirac.port, fields(direct), pki)
    code, ours = raw_post(relay.url, urlencode(fields(relayed)).encode())
    assert code == 200 and isinstance(ours.get("OK"), bool)
    accepted = theirs[0] == 200 and theirs[1]["OK"] is True
    event("DIRAC took it" if accepted else "DIRAC refused it")
    assert ours["OK"] is accepted, (theirs, ours)  # what DIRAC takes the relay takes, and nothing else
    if not accepted:
        return
    p = run("replay", env=https_to(dirac, pki))
    assert p.returncode == 0 and run.events() == [], p.stderr
    assert (dirac.store / "dteam" / relayed).read_bytes() == (dirac.store / "dteam" / direct).read_bytes()


# -- a message larger than one event -------------------------------------------------------------

#: The characters that cost most once JSON-encoded three times over: quotes, backslashes,
#: controls, non-ASCII and characters outside the BMP (up to 18 bytes each).
COSTLY = st.sampled_from(['"', "\\", "\x01", "\n", "\r", "é", "\u2028", "😀", "\U0010fffd", "x"])


@settings(max_examples=int(os.environ.get("PILOTLOG_RELAY_EXAMPLES", "200")), deadline=None)
@given(
    piece=st.lists(COSTLY | st.characters(blacklist_categories=("Cs",)), max_size=300).map("".join),
    repeat=st.sampled_from([1, 20, 300]),
)
def test_a_message_over_max_event_bytes_is_stored_in_parts_that_make_it_up_exactly(tmp_path_factory, piece, repeat):
    """In process, with a 2 KiB event bound: every part is stored (the spool refuses an event
    over the bound), the parts' texts put together are the message, and a part ends at a line
    end unless its line alone is over the bound."""
    from pilotlogger.config import load
    from pilotlogger.relay import Intake

    text = piece * repeat
    spool = tmp_path_factory.mktemp("spool")
    intake = Intake(load({"spool": str(spool), "max_event_bytes": "2048", "log_fsync": "each"}, environ={}))
    body = urlencode({"method": "sendMessage", "args": pilot_args(text, PILOT)}).encode()
    assert intake.take(body).startswith("Message logged successfully")
    run = Pilotlog(None, spool.parent)
    run.spool = spool
    parts = [json.loads(json.loads(e["data"]["dirac_form"]["args"])[0]) for e in run.events()]
    assert "".join(parts) == text
    event("one record" if len(parts) == 1 else "in parts")
    lines = text.split("\n")
    if len(parts) > 1 and all(len(line) < 20 for line in lines):  # every line fits: cut at line ends only
        assert all(part.endswith("\n") for part in parts[:-1])


@settings(max_examples=int(os.environ.get("PILOTLOG_RELAY_EXAMPLES", "200")), deadline=None)
@given(
    args=st.lists(COSTLY | st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=50).map("".join),
    pilot=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=256),
    line=st.lists(COSTLY, max_size=400).map("".join),
    phase=st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", fullmatch=True),
    status=st.sampled_from(["debug", "info", "warning", "error"]),
    method=st.sampled_from(["sendMessage", "finaliseLogs"]),
)
def test_a_post_short_enough_to_skip_its_sizing_always_fits_one_event(
    tmp_path_factory, args, pilot, line, phase, status, method
):
    """The relay skips building a post's record a second time only to size it when its ``args`` is
    short (``Intake._fits`` characters): whatever those characters, the pilot id, the phase, the
    status and the message, such a record fits ``max_event_bytes`` (4 KiB here)."""
    from pilotlogger.config import load
    from pilotlogger.events import RELAYED, EventError, check_pilot
    from pilotlogger.relay import Intake, _shortened

    try:
        check_pilot(pilot)
    except EventError:
        return
    intake = Intake(load({"spool": str(tmp_path_factory.mktemp("spool")), "max_event_bytes": "4096"}, environ={}))
    try:
        assert intake._fits > 100  # room for a Pilot's line or two
        args = (args * (intake._fits // len(args) + 1))[: intake._fits]
        record = (phase, status, _shortened(line), {RELAYED: {"method": method, "args": args}})
        assert intake._size(pilot, record) <= 4096
    finally:
        intake.close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(ret_code=JSON | st.sampled_from(["", "0", "3", "-1", "²", "١٢", " 7 ", "Killed"]))
def test_any_retcode_of_a_finalise_is_stored_with_an_exit_code(tmp_path_factory, ret_code):
    """The Pilot sends str(SystemExit): "" (0), a number, or sys.exit's text (1); anything else is kept too."""
    from pilotlogger.config import load
    from pilotlogger.relay import Intake

    spool = tmp_path_factory.mktemp("spool")
    intake = Intake(load({"spool": str(spool), "log_fsync": "each"}, environ={}))
    assert (
        intake.take(urlencode({"method": "finaliseLogs", "args": pilot_args({"retCode": ret_code}, PILOT)}).encode())
        is None
    )
    run = Pilotlog(None, spool.parent)
    run.spool = spool
    (shutdown,) = run.events()
    code = shutdown["data"]["exit_code"]
    expected = {"": 0, None: 0, "0": 0, "3": 3, "-1": -1, " 7 ": 7}
    if isinstance(ret_code, str) and ret_code in expected:
        assert code == expected[ret_code]
    assert isinstance(code, int) and (shutdown["status"] == "info") == (code == 0)


def outward_address() -> str:
    """An address of this host that is not loopback (a UDP "connect" sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.connect(("192.0.2.1", 9))
            address = udp.getsockname()[0]
    except OSError as exc:
        unavailable("this host has no route off loopback (%s)" % exc)
    if address.startswith("127."):
        unavailable("this host has no address but loopback")
    return address


def test_without_a_socket_table_the_weaker_rule_is_loopback_only(monkeypatch):
    """What other systems get (documented): no owner to ask, so loopback peers of any user are
    taken and others refused.  Here Linux's answer is hidden; both peers are this host's."""
    from pilotlogger import peeruid
    from pilotlogger.relay import Relay

    outward = outward_address()
    with socket.socket() as listener:
        listener.bind(("", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        assert peeruid.available()  # Linux: what is hidden next is really there
        monkeypatch.setattr(peeruid, "available", lambda: False)
        for address, refused in (("127.0.0.1", False), (outward, True)):
            with socket.create_connection((address, port), timeout=10):
                conn, _ = listener.accept()
                with conn:
                    refusal = Relay.refusal_of(conn)
                    assert (refusal is not None) == refused and (not refused or address in refusal), refusal


# -- answered whatever the node's file systems do ---------------------------------------------

SLOW_CA_PILOT = r"""
import json, os, sys, urllib.parse, urllib.request
args = json.dumps((json.dumps("2026-12-04T10:00:00.000000Z INFO [CheckWorkerNode] first line\n"), sys.argv[1], ""))
data = urllib.parse.urlencode({"method": "sendMessage", "args": args}).encode()
try:
    print("answered", json.loads(urllib.request.urlopen(os.environ["PILOTLOG_RELAY_URL"], data).read())["OK"], flush=True)
except Exception as exc:
    print("raised", repr(exc), flush=True)  # the Pilot would exit 1 here
    sys.exit(1)
sys.stdin.read()  # until the test has made the CA directory readable
"""


def test_the_pilots_post_is_answered_while_its_ca_directory_cannot_be_read(pilotlog, pki, tmp_path):
    """run --relay with no credential of its own borrows the Pilot's, and reads the Pilot's
    X509_CERT_DIR whole to forward with it. That directory may sit on a cold CVMFS cache or a
    stalled NFS: here one of its files is a FIFO nobody writes until the test says so. The
    Pilot's post is answered {"OK": true} while that read is still blocked (before, the read
    ran inside the request, the request's deadline cut the connection, the Pilot's urlopen
    raised and the pilot exited 1). Once the directory can be read, the run ends with the
    Pilot's own exit code and its line kept (the sink is down: kept for a replay)."""
    ca_dir = tmp_path / "certificates"
    ca_dir.mkdir()
    fifo = ca_dir / "0123abcd.0"
    os.mkfifo(str(fifo))
    child = tmp_path / "pilot.py"
    child.write_text(SLOW_CA_PILOT)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        sink = "https://127.0.0.1:%d/WorkloadManagement/TornadoPilotLogging" % unused.getsockname()[1]
    env = {"PILOTLOG_SINK": sink, "PILOTLOG_HTTP_PROTOCOL": "dirac", "PILOTLOG_DEADLINE": "3"}
    script = "X509_USER_PROXY=%s X509_CERT_DIR=%s exec %s %s %s" % (
        pki.path("proxy.pem"),
        ca_dir,
        sys.executable,
        child,
        PILOT,
    )
    run = pilotlog.start(
        "run", "--relay", "--", "sh", "-c", script, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        answer = run.stdout.readline()
        assert answer == "answered True\n", (answer, run.stderr.read() if run.poll() is not None else "")
        with open(open_fifo_for_writing(fifo), "wb") as feed:
            feed.write(Path(pki.path("ca.pem")).read_bytes())
        run.stdin.close()
        assert run.wait(120) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)
    stderr = run.stderr.read()
    assert "connection dropped" not in stderr, stderr
    relayed = [e for e in pilotlog.events() if e["phase"] == "CheckWorkerNode"]
    assert [e["message"] for e in relayed] == ["2026-12-04T10:00:00.000000Z INFO [CheckWorkerNode] first line"], stderr


def test_a_request_whose_storing_outlives_its_deadline_is_still_answered_200(pilotlog, monkeypatch):
    """A spool that stays locked past a request's deadline (as a disk that stalls would): the
    Pilot gets HTTP 200 with {"OK": false} at the deadline, never a cut connection (its urlopen
    would raise and the pilot exit 1), and the stalled work's own answer, when it comes, is not
    written after it. The request is stored all the same once the lock is free."""
    from pilotlogger import config as configuration
    from pilotlogger import httpd
    from pilotlogger.relay import Relay

    monkeypatch.setattr(httpd, "DEFAULT_REQUEST_TIMEOUT", 1.0)  # the deadline, short for the test
    relay = Relay(configuration.load(environ=dict(pilotlog.env)), "127.0.0.1:0").start()
    try:
        assert pilot_post(relay.url, "sendMessage", "first\n", PILOT)[1]["OK"] is True
        relay.intake.spool.lock_timeout = 600.0  # it waits for the lock far past the deadline
        holder = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(pilotlog.spool / "lock")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            universal_newlines=True,
        )
        try:
            assert holder.stdout.readline() == "held\n"
            body = urlencode({"method": "sendMessage", "args": pilot_args("second\n", PILOT)}).encode()
            with socket.create_connection(address(relay), timeout=120) as conn:
                conn.sendall(
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                    % (FORM.encode(), len(body), body)
                )
                received = b""
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    received += chunk
        finally:
            holder.stdin.close()
            holder.wait(30)
        head, _, document = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and received.count(b"HTTP/1.1") == 1, received
        answer = json.loads(document.decode("utf-8"))
        assert answer["OK"] is False and "not answered in time" in answer["Message"]
        ends = time.monotonic() + 60
        while len(pilotlog.events()) < 2 and time.monotonic() < ends:
            time.sleep(0.05)
        assert [e["message"] for e in pilotlog.events()] == ["first", "second"]
        assert pilot_post(relay.url, "sendMessage", "third\n", PILOT)[1]["OK"] is True
    finally:
        relay.stop()


def open_fifo_for_writing(fifo: Path, wait: float = 60.0) -> int:
    """The FIFO's writing end, once a reader has it open (ENXIO until then)."""
    ends = time.monotonic() + wait
    while True:
        try:
            return os.open(str(fifo), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            if time.monotonic() > ends:
                raise
            time.sleep(0.05)


LOCK_HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)  # the spool's locks are POSIX record locks: held by this other process
print("held", flush=True)
sys.stdin.read()
"""
