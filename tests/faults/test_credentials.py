"""Bad credentials and certificates, produced for real: each one clear line naming the file, no traceback."""

import time
import uuid

import pytest

from helpers import Pilotlog, stderr_lines
from test_https import Serve


@pytest.fixture
def pilotlog(bundle, tmp_path, pki):
    p = Pilotlog(bundle, tmp_path)
    p.env.update(PILOTLOG_CA_FILE=pki.path("ca.pem"), PILOTLOG_CERT=pki.path("client.pem"),
                 PILOTLOG_KEY=pki.path("client.key"), PILOTLOG_DEADLINE="2", PILOTLOG_TIMEOUT="2",
                 PILOTLOG_PILOT_UUID=str(uuid.uuid4()))
    assert p("emit", "boot").returncode == 0
    return p


@pytest.fixture
def server(bundle, pki, tmp_path):
    servers = []

    def start(cert="server"):
        servers.append(Serve(bundle, pki, tmp_path / "store", cert=cert))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def kept_line(p, pilotlog):
    assert p.returncode == 0 and "Traceback" not in p.stderr
    (line,) = stderr_lines(p)
    assert "1 event(s) kept in spool" in line and len(pilotlog.events()) == 1
    return line


def test_expired_server_certificate(pilotlog, server):
    s = server("expired-server")
    time.sleep(1.1)  # valid for zero days: expired now
    started = time.monotonic()
    line = kept_line(pilotlog("replay", env={"PILOTLOG_SINK": s.url}), pilotlog)
    assert "server certificate not trusted (certificate has expired)" in line
    assert time.monotonic() - started < 10  # not retried: it will not get better


def test_expired_client_certificate(pilotlog, server, pki):
    s = server()
    time.sleep(1.1)
    env = {"PILOTLOG_SINK": s.url, "PILOTLOG_CERT": pki.path("expired-client.pem"), "PILOTLOG_KEY": pki.path("expired-client.key")}
    line = kept_line(pilotlog("replay", env=env), pilotlog)
    assert "EXPIRED" in line.upper()


@pytest.mark.parametrize("setting,needle", [
    ("PILOTLOG_CERT", "client certificate {} does not exist"),
    ("X509_USER_PROXY", "client certificate {} does not exist"),
    ("PILOTLOG_CA_FILE", "CA file {} does not exist"),
    ("PILOTLOG_CA_DIR", "CA directory {} does not exist"),
])
def test_missing_files_are_named(pilotlog, server, setting, needle, tmp_path):
    s = server()
    missing = str(tmp_path / "missing.pem")
    env = {"PILOTLOG_SINK": s.url, setting: missing}
    if setting == "X509_USER_PROXY":
        env.update(PILOTLOG_CERT="", PILOTLOG_KEY="")
    if setting == "PILOTLOG_CA_DIR":
        env.update(PILOTLOG_CA_FILE="")
    p = pilotlog("replay", env=env)
    assert p.returncode == 2 and needle.format(missing) in p.stderr and "Traceback" not in p.stderr
    p = pilotlog("emit", "os", "--send", env=env)  # the pilot's one-liner: warned, kept, exit 0
    assert p.returncode == 0 and needle.format(missing) in p.stderr and len(pilotlog.events()) == 2


def test_key_that_does_not_match_the_certificate(pilotlog, server, pki):
    s = server()
    p = pilotlog("replay", env={"PILOTLOG_SINK": s.url, "PILOTLOG_KEY": pki.path("server.key")})
    assert p.returncode == 2 and "cannot use client certificate %s" % pki.path("client.pem") in p.stderr
    assert "BEGIN" not in p.stderr  # no key material in the message
