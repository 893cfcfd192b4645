"""Bad configuration and credentials, produced for real against a real TLS receiver.

Each case is tried the three ways a pilot uses pilotlog: ``replay`` (exit 0 when the
path fails, 2 when the configuration itself is wrong — a usage error), ``emit --send``
(a configuration error is a usage error too; a failing path keeps the event, exit 0),
and ``run -- sh -c 'exit 7'`` (always 7).  One line each, naming the key or file, no
traceback, no key material; every event already spooled stays spooled.
"""

import json
import time
import uuid

import pytest

import ledger
from helpers import Pilotlog, Serve, https_env, stderr_lines

# name: (serve certificate, environment (a callable of pki, tmp_path), exit code of replay and of emit --send,
#        needle).  A broken configuration file is a usage error (2, nothing written); a credential
#        that cannot be loaded stops replay (2) but not the one-liner, which keeps the event (0).
CASES = {
    "unknown key in the config file": (
        "server", lambda pki, d: {"PILOTLOG_CONFIG": config_file(d, {"colour": "blue"})}, (2, 2),
        "unknown key 'colour'"),
    "wrong type in the config file": (
        "server", lambda pki, d: {"PILOTLOG_CONFIG": config_file(d, {"timeout": "soon"})}, (2, 2),
        "key timeout: 'soon' is not a positive number"),
    "config file that is not JSON": (
        "server", lambda pki, d: {"PILOTLOG_CONFIG": text_file(d, "pilot.json", "sink = stdout")}, (2, 2),
        "pilot.json"),
    "wrong type in the environment": (
        "server", lambda pki, d: {"PILOTLOG_WINDOW": "many"}, (2, 2), "PILOTLOG_WINDOW"),
    "unreadable client certificate": (
        "server", lambda pki, d: {"PILOTLOG_CERT": text_file(d, "cert.pem", "not a certificate")}, (2, 0),
        "cannot use client certificate"),
    "unreadable client key": (
        "server", lambda pki, d: {"PILOTLOG_KEY": text_file(d, "key.pem", "not a key")}, (2, 0),
        "cannot use client certificate"),
    "key that does not match the certificate": (
        "server", lambda pki, d: {"PILOTLOG_KEY": pki.path("server.key")}, (2, 0), "cannot use client certificate"),
    "missing proxy file": (
        "server", lambda pki, d: {"X509_USER_PROXY": str(d / "x509up_u1000"), "PILOTLOG_CERT": "", "PILOTLOG_KEY": ""}, (2, 0),
        "client certificate {d}/x509up_u1000 does not exist"),
    "missing CA file": (
        "server", lambda pki, d: {"PILOTLOG_CA_FILE": str(d / "ca.pem")}, (2, 0), "CA file {d}/ca.pem does not exist"),
    "missing CA directory": (
        "server", lambda pki, d: {"PILOTLOG_CA_DIR": str(d / "certificates"), "PILOTLOG_CA_FILE": ""}, (2, 0),
        "CA directory {d}/certificates does not exist"),
    "expired server certificate": (
        "expired-server", lambda pki, d: {}, (0, 0), "server certificate not trusted (certificate has expired)"),
    "expired client certificate": (
        "server", lambda pki, d: {"PILOTLOG_CERT": pki.path("expired-client.pem"),
                                  "PILOTLOG_KEY": pki.path("expired-client.key")}, (0, 0),
        "the server refused our client certificate (SSLV3_ALERT_CERTIFICATE_EXPIRED)"),
    "server certificate from another CA": (
        "server", lambda pki, d: {"PILOTLOG_CA_FILE": pki.path("other-ca.pem")}, (0, 0), "server certificate not trusted"),
    "host-name mismatch": (
        "server", lambda pki, d: {"PILOTLOG_SINK": "{url by address}"}, (0, 0),
        "server certificate does not match the host name"),
}


def config_file(directory, settings) -> str:
    return text_file(directory, "pilotlog.json", json.dumps(dict({"sink": "stdout"}, **settings)))


def text_file(directory, name, text) -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def server(bundle, pki, tmp_path):
    servers = []

    def start(cert):
        servers.append(Serve(bundle, pki, tmp_path / "store", cert=cert))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_configuration(case, bundle, pki, server, tmp_path):
    cert, make_env, (replay_code, send_code), needle = CASES[case]
    s = server(cert)
    time.sleep(1.1 if "expired" in case else 0)  # valid for zero days: expired a second later
    pilotlog = Pilotlog(bundle, tmp_path)
    pilotlog.env.update(https_env(pki), PILOTLOG_DEADLINE="2", PILOTLOG_TIMEOUT="2",
                        PILOTLOG_PILOT_UUID=str(uuid.uuid4()), PILOTLOG_SINK=s.url)
    assert pilotlog("emit", "boot").returncode == 0
    spooled = {e["id"] for e in pilotlog.events()}
    by_address = s.url.replace("localhost", "127.0.0.1")  # the certificate names localhost only
    env = {k: v.replace("{url by address}", by_address) for k, v in make_env(pki, tmp_path).items()}
    needle = needle.format(d=tmp_path)
    watch = ledger.Stopwatch()
    with watch:
        replay = pilotlog("replay", env=env)
    with watch:
        send = pilotlog("emit", "os", "--send", env=env)
    with watch:
        wrapped = pilotlog("run", "--", "sh", "-c", "exit 7", env=env)
    config_error = send_code == 2
    runs = (replay, send, wrapped)
    lost = len(spooled - {e["id"] for e in pilotlog.events()})
    exit_ok = replay.returncode == replay_code and send.returncode == send_code and wrapped.returncode == 7
    ledger.record("bad config" if config_error else "credentials", case, 3, lost, exit_ok, watch.longest,
                  stderr_lines(replay)[0] if replay.stderr else "",
                  extra="replay %d, emit --send %d%s, run 7" % (replay_code, send_code,
                                                                " (event kept)" if send_code == 0 else ""))
    assert exit_ok, [(p.returncode, p.stderr) for p in runs]
    assert lost == 0
    for p in runs:
        assert "Traceback" not in p.stderr and "BEGIN" not in p.stderr, p.stderr  # no key material either
        assert needle in p.stderr, (needle, p.stderr)
    assert len(stderr_lines(replay)) == 1 and len(stderr_lines(send)) == 1
    assert watch.longest < 10  # a certificate problem is not retried: it will not get better
