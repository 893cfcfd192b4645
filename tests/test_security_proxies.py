"""Real grid proxies, the credential every pilot has (issue 23, deliverable 6), good and hostile.

The proxies are made with openssl at run time (tests/proxies.py): RFC 3820 proxyCertInfo,
signed by the client's certificate, one and two levels deep, limited, independent, expired,
signed by another user, forged, from another CA, and an impostor whose own CN names the client.

* ``pilotlog serve --require-client-cert`` accepts the good ones (OpenSSL's allow-proxy flag),
  finds their owner -- the user certificate -- for ``--allowed-cn`` and ``--vo-for-cn`` from the
  chain OpenSSL verified, and refuses the rest: in-process here (this venv's Python), and as the
  bundle on Python 3.6, 3.10 and 3.13 with the pilot's bundle on 3.6 and 3.13.
* ``pilotlog relay`` on TLS (``--server-cert``, ``--client-ca``, ``--require-client-cert``) takes the
  Pilot's own proxy by the same rules (its owner for ``--allowed-cn``), on Python 3.6 and 3.13, and
  answers what it refuses with HTTP 200 ``{"OK": false}`` (the Pilot goes on); a bad chain is refused
  in the handshake.
* The HTTPS sink and the STOMP client send the chain held in ``X509_USER_PROXY``.
DIRAC's own handler with real proxies: tests/test_dirac.py.
"""

import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.request
import uuid
from urllib.parse import urlencode

import pytest

import ledger
from brokers import CLIENT_CN
from helpers import Pilotlog, Serve, pyenv_python, serving
from pilotlogger.events import make_event, to_json
from pilotlogger.https import dirac_form
from pilotlogger.serve import client_cn
from pilotlogger.stompcodec import FrameParser, encode_frame
from pilotlogger.tls import client_context, server_context
from pilotlogger.x509 import first_certificate, owner
from proxies import BAD_CHAIN, GOOD, ROBOT_SUBJECT
from test_relay import TLS_URL, RelayRun, relay_tls

OLD, NEW = "3.6.15", "3.13.0"
FORM = "application/x-www-form-urlencoded"
PROXY_CNS = ("1001", "proxy", "limited proxy")  # the proxies' own last CNs, chosen by their holder


def held(attack: str, ok, what: str) -> bool:
    return ledger.attack("serve", attack, bool(ok), what)


def files_under(path) -> list:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def ders(path: str) -> list:
    """The certificates of a PEM file, in order, as DER."""
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", open(path).read(), re.S)
    return [ssl.PEM_cert_to_DER_cert(pem) for pem in pems]


# -- reading proxies -------------------------------------------------------------------------------


def test_the_certificate_reader_knows_a_proxy_its_policy_and_its_owner(pki, proxies):
    expected = {"first": 1, "second": 2, "limited": 1}
    for name, levels in expected.items():
        path = proxies.x509up(name)
        assert first_certificate(path)["proxy"] in ("1.3.6.1.5.5.7.21.1", "1.3.6.1.4.1.3536.1.1.1.9")
        found = owner(ders(path) + ders(pki.path("ca.pem")))
        assert (found["subject"], found["cn"], found["proxies"]) == ("/CN=" + CLIENT_CN, CLIENT_CN, levels)
        with pytest.raises(ValueError, match="ends at a proxy"):  # the owner must be in the chain
            owner(ders(path)[:levels])
    assert first_certificate(pki.path("client.pem"))["proxy"] is None
    assert owner(ders(pki.path("client.pem")))["proxies"] == 0
    assert owner(ders(proxies.x509up("impostor")))["subject"] == ROBOT_SUBJECT  # no CN: cn ""
    assert owner(ders(proxies.x509up("impostor")))["cn"] == ""
    with pytest.raises(ValueError, match="does not carry its issuer's identity"):
        owner(ders(proxies.x509up("independent")))


# -- serve in-process (on this venv's Python) ------------------------------------------------------


def running(directory, pki, **options):
    """serve's receiver with `pilotlog serve --require-client-cert`'s TLS context, on a free port."""
    context = server_context(pki.path("server.pem"), pki.path("server.key"), pki.path("ca.pem"), True)
    return serving(directory, context, request_timeout=5.0, **options)


def post(server, pki, x509up, body: bytes, content_type: str, headers=None, key=None):
    """A POST with pilotlogger's own client context (what the HTTPS sink uses): (status, document)."""
    context = client_context(ca_file=pki.path("ca.pem"), cert=x509up, key=key)
    conn = http.client.HTTPSConnection("localhost", server.server_address[1], context=context, timeout=10)
    try:
        conn.request("POST", "/p", body=body, headers=dict(headers or {}, **{"Content-Type": content_type}))
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def logged(capfd, needle: str, seconds: float = 10.0) -> str:
    """serve's stderr until ``needle`` shows (its connection thread writes after the client gave up)."""
    said, deadline = "", time.monotonic() + seconds
    while needle not in said and time.monotonic() < deadline:
        said += capfd.readouterr().err
        time.sleep(0.02)
    return said


def events_body(pilot: str) -> bytes:
    return to_json(make_event("boot", "up", pilot=pilot, seq=1, epoch=1.0)).encode() + b"\n"


def both_protocols(server, pki, x509up, asked_vo="lhcb"):
    """The same pilot posting by JSON lines (X-Pilotlog-VO) and by DIRAC's form, both asking ``asked_vo``."""
    pilot = str(uuid.uuid4())
    ndjson = post(server, pki, x509up, events_body(pilot), "application/x-ndjson", {"X-Pilotlog-VO": asked_vo})
    form = post(server, pki, x509up, dirac_form("sendMessage", ["l"], pilot, asked_vo, False), FORM)
    return pilot, ndjson, form


def test_serve_maps_a_proxy_to_its_owner_never_to_its_own_cn(tmp_path, pki, proxies):
    store = tmp_path / "store"
    with running(store, pki, allowed_cns=[CLIENT_CN], vo_for_cn={CLIENT_CN: "dteam"}) as server:
        for name in GOOD:
            pilot, ndjson, form = both_protocols(server, pki, proxies.x509up(name))
            assert held(
                "a real proxy (one and two levels, limited) of an allowed client",
                ndjson[0] == form[0] == 200 and (store / "dteam" / pilot).read_text().count("\n") == 2,
                "accepted as its owner's (the user certificate's CN, its --vo-for-cn VO), on both protocols",
            ), (name, ndjson, form)
    with running(tmp_path / "other", pki, allowed_cns=list(PROXY_CNS)) as server:
        for name in GOOD:
            _, ndjson, form = both_protocols(server, pki, proxies.x509up(name))
            assert held(
                "a proxy whose own CN is the one allowed (--allowed-cn 1001, proxy, limited proxy)",
                ndjson[0] == form[0] == 403 and files_under(tmp_path / "other") == [],
                "403: a proxy is its owner, never its own CN",
            ), (name, ndjson, form)


def test_serve_refuses_proxies_whose_chain_does_not_hold(tmp_path, pki, proxies, capfd):
    store = tmp_path / "store"
    with running(store, pki) as server:
        for name, reason in BAD_CHAIN.items():
            capfd.readouterr()
            with pytest.raises((ssl.SSLError, OSError)):
                post(server, pki, proxies.x509up(name), events_body(str(uuid.uuid4())), "application/x-ndjson")
            said = logged(capfd, reason)
            assert held(
                "a proxy expired, signed by another user, forged with another user's key, of another CA",
                reason in said and files_under(store) == [],
                "refused in the handshake, with OpenSSL's reason in serve's log; nothing stored",
            ), (name, said)
        # The other user, with its own certificate, is a client like any: the refusal is the proxy's.
        other = pki.path("other-user.pem"), pki.path("other-user.key")
        pilot = str(uuid.uuid4())
        assert post(server, pki, other[0], events_body(pilot), "application/x-ndjson", key=other[1])[0] == 200
        assert files_under(store) == ["unknown/" + pilot]


def test_a_proxy_cannot_claim_another_owner(tmp_path, pki, proxies):
    """The impostor is a valid proxy of a certificate with no CN, naming itself pilot-client: by the
    first CN of its own subject it would be pilot-client.  The independent proxy is pilot-client's
    own, but says it is not pilot-client (id-ppl-independent)."""
    store = tmp_path / "store"
    with running(store, pki, allowed_cns=[CLIENT_CN], vo_for_cn={CLIENT_CN: "dteam"}) as server:
        for name in ("impostor", "independent"):
            _, ndjson, form = both_protocols(server, pki, proxies.x509up(name))
            assert held(
                "a valid proxy whose own CN names an allowed client (owner with no CN; an independent proxy)",
                ndjson[0] == form[0] == 403 and files_under(store) == [],
                "403: not that client; nothing stored",
            ), (name, ndjson, form)
    with running(store, pki, vo_for_cn={CLIENT_CN: "dteam"}) as server:
        pilot, ndjson, form = both_protocols(server, pki, proxies.x509up("impostor"), asked_vo="lhcb")
        assert held(
            "a valid proxy whose own CN names an allowed client (owner with no CN; an independent proxy)",
            ndjson[0] == form[0] == 200 and files_under(store) == ["lhcb/" + pilot],
            "without --allowed-cn: stored where it asks, never under the named client's --vo-for-cn VO",
        ), (ndjson, form)


def test_the_chain_in_x509_user_proxy_is_what_lets_the_server_verify_it(tmp_path, pki, proxies, capfd):
    """The sink's context sends every certificate after the key: cut them and the server cannot
    reach its CA from the proxy."""
    cut = tmp_path / "x509up-cut"
    text = open(proxies.x509up("second")).read()
    cut.write_text(text[: text.index("-----END PRIVATE KEY-----") + len("-----END PRIVATE KEY-----\n")])
    with running(tmp_path / "store", pki) as server:
        with pytest.raises((ssl.SSLError, OSError)):
            post(server, pki, str(cut), events_body(str(uuid.uuid4())), "application/x-ndjson")
        assert "unable to get local issuer certificate" in logged(capfd, "unable to get local issuer certificate")
        assert (
            post(server, pki, proxies.x509up("second"), events_body(str(uuid.uuid4())), "application/x-ndjson")[0]
            == 200
        )


# -- the bundle: a pilot on 3.6 and 3.13, serve on 3.6, 3.10 and 3.13 ------------------------------


def pilot_run(pilotlog, serve, x509up, pilot) -> "tuple":
    """boot and shutdown of one pilot, replayed to ``serve`` with X509_USER_PROXY: (replay, events left)."""
    env = {
        "PILOTLOG_SINK": serve.url,
        "PILOTLOG_HTTP_PROTOCOL": "json",
        "PILOTLOG_CA_FILE": serve.pki.path("ca.pem"),
        "X509_USER_PROXY": x509up,
        "PILOTLOG_VO": "lhcb",
        "PILOTLOG_PILOT_UUID": pilot,
        "PILOTLOG_SPOOL": str(pilotlog.cwd / pilot),
        "PILOTLOG_DEADLINE": "10",
    }
    assert pilotlog("emit", "boot", "-m", "up", env=env).returncode == 0
    assert pilotlog("emit", "shutdown", "-m", "done", env=env).returncode == 0
    p = pilotlog("replay", env=env)
    assert p.returncode == 0, p.stderr
    return p, len(list((pilotlog.cwd / pilot / "events").iterdir()))


@pytest.mark.parametrize("server_version", [OLD, "3.10.13", NEW])
@pytest.mark.parametrize("client_version", [OLD, NEW])
def test_a_pilot_with_a_real_proxy_logs_to_serve(bundle, pki, proxies, tmp_path, client_version, server_version):
    pilotlog = Pilotlog(bundle, tmp_path, pyenv_python(client_version))
    log = tmp_path / "serve.log"
    rules = ("--allowed-cn", CLIENT_CN, "--vo-for-cn", "%s=dteam" % CLIENT_CN)
    serve = Serve(bundle, pki, tmp_path / "store", *rules, python=pyenv_python(server_version), log=log)
    try:
        for name in GOOD:
            pilot = str(uuid.uuid4())
            p, left = pilot_run(pilotlog, serve, proxies.x509up(name), pilot)
            if server_version != OLD:  # the owner found from the verified chain: its VO, not the pilot's
                assert left == 0 and (serve.dir / "dteam" / (pilot + ".log")).exists(), (name, p.stderr)
            else:  # no verified chain before 3.10: refused with what to do; every event kept
                said = "HTTP 403" in p.stderr and "Python 3.6 cannot find a grid proxy's owner" in p.stderr
                assert left == 2 and said, (name, p.stderr)
        for name in BAD_CHAIN:
            p, left = pilot_run(pilotlog, serve, proxies.x509up(name), str(uuid.uuid4()))
            assert left == 2 and "the server refused our client certificate" in p.stderr, (name, p.stderr)
    finally:
        serve.stop()
    if server_version == OLD:
        assert "Python 3.6 cannot show a server the chain it verified" in log.read_text()
        serve = Serve(bundle, pki, tmp_path / "open-store", python=pyenv_python(server_version))
        try:  # with no rule on the client's identity, a proxy whose chain holds is accepted on 3.6 too
            pilot = str(uuid.uuid4())
            p, left = pilot_run(pilotlog, serve, proxies.x509up("second"), pilot)
            assert left == 0 and (serve.dir / "lhcb" / (pilot + ".log")).exists(), p.stderr
        finally:
            serve.stop()


# -- the relay over TLS: the Pilot's own proxy -------------------------------------------------------


def relay_held(attack: str, ok, what: str) -> bool:
    return ledger.attack("relay", attack, bool(ok), what)


def pilot_post_tls(url: str, pki, x509up: str, pilot: str) -> tuple:
    """A sendMessage as the DIRAC Pilot posts one over https (its context: ``X509_CERT_DIR``, the test
    CA's directory; ``X509_USER_PROXY``; then urlopen): (status, answer)."""
    context = ssl.create_default_context()
    context.load_verify_locations(capath=pki.path("certificates"))
    context.load_cert_chain(x509up)
    data = urlencode({"method": "sendMessage", "args": json.dumps((json.dumps("a line\n"), pilot, "dteam"))})
    with urllib.request.urlopen(url, data.encode(), context=context, timeout=30) as answer:
        return answer.status, json.loads(answer.read().decode("utf-8"))


@pytest.mark.parametrize("version", [OLD, NEW])
def test_the_relay_over_tls_takes_the_pilots_proxy_as_its_owner(bundle, pki, proxies, tmp_path, version):
    pilotlog = Pilotlog(bundle, tmp_path, pyenv_python(version))
    relay = RelayRun(pilotlog, *relay_tls(pki, "--allowed-cn", CLIENT_CN), expect=TLS_URL)
    try:
        for name in GOOD:
            status, answer = pilot_post_tls(relay.url, pki, proxies.x509up(name), uuid.uuid4().hex)
            if version == NEW:  # the owner found from the chain OpenSSL verified
                assert status == 200 and answer["OK"] is True, (name, answer)
            else:  # Python gives a server no verified chain before 3.10: refused, saying so (HTTP 200: the Pilot goes on)
                assert status == 200 and answer["OK"] is False, (name, answer)
                assert "relay on Python 3.6 cannot find a grid proxy's owner" in answer["Message"], answer
        assert pilotlog.depth() == (len(GOOD) if version == NEW else 0)
    finally:
        relay.stop()
    if version == OLD:
        assert "Python 3.6 cannot show a server the chain it verified" in "".join(relay.stderr)
        return
    spool = tmp_path / "own-cns"
    relay = RelayRun(pilotlog, *relay_tls(pki, *("--allowed-cn=" + cn for cn in PROXY_CNS)), expect=TLS_URL,
                     env={"PILOTLOG_SPOOL": spool})  # fmt: skip
    try:
        answers = [pilot_post_tls(relay.url, pki, proxies.x509up(name), uuid.uuid4().hex) for name in GOOD]
    finally:
        relay.stop()
    assert relay_held(
        "a proxy whose own CN is the one allowed (--allowed-cn 1001, proxy, limited proxy), relay on TLS",
        all(s == 200 and a["OK"] is False and "not allowed" in a["Message"] for s, a in answers)
        and not list((spool / "events").glob("*")),
        "answered {OK: false} (HTTP 200: the Pilot goes on): a proxy is its owner, never its own CN; nothing stored",
    ), answers


def test_the_relay_over_tls_refuses_bad_proxies_and_stores_nothing(bundle, pki, proxies, tmp_path):
    pilotlog = Pilotlog(bundle, tmp_path, pyenv_python(NEW))
    relay = RelayRun(pilotlog, *relay_tls(pki, "--allowed-cn", CLIENT_CN), expect=TLS_URL)
    try:
        for name, reason in BAD_CHAIN.items():
            with pytest.raises((ssl.SSLError, OSError)):  # urllib.error.URLError is an OSError
                pilot_post_tls(relay.url, pki, proxies.x509up(name), uuid.uuid4().hex)
            deadline = time.monotonic() + 10
            while reason not in "".join(relay.stderr) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert relay_held(
                "a proxy expired, signed by another user, forged with another user's key, of another CA; relay on TLS",
                reason in "".join(relay.stderr) and pilotlog.depth() == 0,
                "refused in the handshake, with OpenSSL's reason in the relay's log; nothing stored",
            ), (name, relay.stderr)
        for name in ("impostor", "independent"):
            status, answer = pilot_post_tls(relay.url, pki, proxies.x509up(name), uuid.uuid4().hex)
            assert relay_held(
                "a valid proxy whose own CN names the allowed client (owner with no CN; independent); relay on TLS",
                status == 200 and answer["OK"] is False and pilotlog.depth() == 0,
                "answered {OK: false}: not that client; nothing stored",
            ), (name, answer)
        status, answer = pilot_post_tls(relay.url, pki, proxies.x509up("second"), uuid.uuid4().hex)
        assert status == 200 and answer["OK"] is True and pilotlog.depth() == 1  # still serving the Pilot
    finally:
        relay.stop()


# -- the STOMP client sends the chain too -----------------------------------------------------------


class StompPeer:
    """A STOMP 1.2 server over TLS with serve's server context (client certificate required, proxies
    allowed): CONNECTED, a RECEIPT for each SEND; records whose certificate each connection carried."""

    def __init__(self, pki):
        self.context = server_context(pki.path("server.pem"), pki.path("server.key"), pki.path("ca.pem"), True)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(0.2)  # so that the accepting thread sees stop (close() does not wake accept)
        self.owners, self.refused, self.sent = [], [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            raw.settimeout(10)
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                self.refused.append(str(exc))
                raw.close()
                continue
            self.owners.append(client_cn(conn))
            with conn:
                self._converse(conn)

    def _converse(self, conn):
        parser = FrameParser(commands={"CONNECT", "STOMP", "SEND", "DISCONNECT"})
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            parser.feed(data)
            for frame in iter(parser.next_frame, None):
                if frame.command in ("CONNECT", "STOMP"):
                    conn.sendall(encode_frame("CONNECTED", [("version", "1.2"), ("heart-beat", "0,0")]))
                    continue
                self.sent += frame.command == "SEND"
                if "receipt" in frame.headers:
                    conn.sendall(encode_frame("RECEIPT", [("receipt-id", frame.headers["receipt"])]))

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.listener.close()


@pytest.mark.parametrize("version", [OLD, NEW])
def test_the_stomp_client_sends_the_proxy_chain(bundle, pki, proxies, tmp_path, version):
    peer = StompPeer(pki)
    pilotlog = Pilotlog(bundle, tmp_path, pyenv_python(version))
    env = {
        "PILOTLOG_SINK": "stomp+ssl://localhost:%d/queue/pilots" % peer.port,
        "PILOTLOG_CA_FILE": pki.path("ca.pem"),
        "X509_USER_PROXY": proxies.x509up("second"),
        "PILOTLOG_DEADLINE": "10",
    }
    try:
        for i in range(3):
            assert pilotlog("emit", "log", "-m", "line %d" % i, env=env).returncode == 0
        p = pilotlog("replay", env=env)
        assert p.returncode == 0 and pilotlog.depth() == 0 and peer.sent == 3, (p.stderr, peer.refused)
        assert peer.owners == [CLIENT_CN] and peer.refused == []  # the chain reached the server: it found the owner
        env["X509_USER_PROXY"] = proxies.x509up("foreign")
        assert pilotlog("emit", "log", "-m", "from another user", env=env).returncode == 0
        p = pilotlog("replay", env=env)
        assert pilotlog.depth() == 1 and "proxy subject name violation" in peer.refused[-1], p.stderr
        assert "the server refused our client certificate" in p.stderr and "renew the proxy" in p.stderr, p.stderr
    finally:
        peer.close()
