"""pilotlogger against DIRAC's own code (DIRAC 9.1.22 from PyPI, in its own venv: `make dirac`).

* The HTTPS sink drives the real TornadoPilotLoggingHandler (DIRAC's form decoding, its
  authorisation from a CS file, FileCacheLoggingPlugin) over TLS with the test PKI, and the
  files DIRAC wrote are compared with what was emitted.
* `pilotlog serve` and DIRAC get the same requests and must leave the same bytes on disk.
* pilot.json files come from DIRAC's own PilotCStoJSONSynchronizer.getCSDict().
DIRAC runs in a subprocess of the DIRAC venv's python; nothing of it is imported here.
"""

import hashlib
import http.client
import json
import os
import ssl
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers import CLIENT_CN, HOST_CN, free_port
from helpers import Pilotlog, Serve, https_env, stderr_lines, unavailable
from pilotlogger.events import readable_line
from proxies import GOOD

HERE = Path(__file__).resolve().parent / "dirac"
PATH = "/WorkloadManagement/TornadoPilotLogging"
STAMP = "0123456789abcdefghijklmnopqrstuv"  # a DIRAC pilot stamp: 32 of [0-9a-z]


@pytest.fixture
def pilotlog_env(pki):
    """The HTTPS sink's settings: the test PKI's CA and client certificate."""
    return dict(https_env(pki), PILOTLOG_DEADLINE="20", PILOTLOG_TIMEOUT="3")


def dirac_python() -> str:
    """The DIRAC venv `make dirac` built: cache directory keyed by the requirements' hash."""
    digest = hashlib.sha256((HERE / "requirements.txt").read_bytes()).hexdigest()[:16]
    venv = Path(os.environ.get("DIRAC_CACHE", "/var/cache/pilotlogger")) / ("dirac-" + digest)
    if not (venv / ".installed").exists():
        unavailable("no DIRAC venv at %s: run 'make dirac'" % venv)
    return str(venv / "bin" / "python")


CS = """
Systems
{
  WorkloadManagement
  {
    Services
    {
      TornadoPilotLogging
      {
        Protocol = https
        LoggingPlugin = FileCacheLoggingPlugin
        Authorization
        {
          Default = authenticated
          sendMessage = Operator
          sendMessage += GenericPilot
          finaliseLogs = Operator
          finaliseLogs += Pilot
          finaliseLogs += GenericPilot
        }
      }
    }
  }
}
Registry
{
  DefaultGroup = dteam_pilot
  Users
  {
    pilotclient
    {
      DN = /CN=%(client)s
    }
  }
  Groups
  {
    dteam_pilot
    {
      Users = pilotclient
      Properties = GenericPilot
      VO = dteam
    }
  }
  Hosts
  {
    %(host)s
    {
      DN = /CN=%(host)s
      Properties = GenericPilot
    }
  }
  VO
  {
    dteam
    {
    }
  }
}
""" % {"client": CLIENT_CN, "host": HOST_CN}


class DiracService:
    """DIRAC's TornadoPilotLoggingHandler on loopback (tests/dirac/pilotlogging_server.py)."""

    def __init__(self, python, pki, workdir: Path):
        self.workdir, self.pki, self.port = workdir, pki, free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "cs.cfg").write_text(CS)
        self.log = open(str(workdir / "server.log"), "w")
        p = pki.path
        self.proc = subprocess.Popen(
            [
                python,
                str(HERE / "pilotlogging_server.py"),
                str(workdir / "cs.cfg"),
                str(self.port),
                p("server.pem"),
                p("server.key"),
                p("ca.pem"),
                str(workdir),
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            universal_newlines=True,
            start_new_session=True,
        )
        if self.proc.stdout.readline().strip() != "READY":
            self.stop()
            raise RuntimeError("DIRAC's handler did not start: %s" % (workdir / "server.log").read_text()[-2000:])

    @property
    def url(self):
        return "https://localhost:%d%s" % (self.port, PATH)

    @property
    def store(self) -> Path:
        return self.workdir / "pilotlogs"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def post(port, fields, pki, cert="client"):
    """One POST as DIRAC's pilot makes it (pilotTools.sendMessage): a urlencoded form."""
    ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
    if cert == "host":
        ctx.load_cert_chain(pki.path("hostcreds/hostcert.pem"), pki.path("hostcreds/hostkey.pem"))
    else:
        ctx.load_cert_chain(pki.path("client.pem"), pki.path("client.key"))
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=20)
    conn.request(
        "POST", PATH, body=urlencode(fields).encode(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    response = conn.getresponse()
    body = response.read()
    conn.close()
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    return response.status, answer


def accepted(status, answer) -> bool:
    return status == 200 and isinstance(answer, dict) and answer.get("OK") is True


def pilot_form(method, raw, pilot, vo=""):
    """The fields of the current Pilot's sendMessage: args = JSON of (JSON of the message, pilot, VO)."""
    return [("method", method), ("args", json.dumps((json.dumps(raw), pilot, vo)))]


def tree(root: Path) -> dict:
    return (
        {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        if root.exists()
        else {}
    )


@pytest.fixture(scope="module")
def dirac(pki, tmp_path_factory):
    service = DiracService(dirac_python(), pki, tmp_path_factory.mktemp("dirac"))
    yield service
    service.stop()


def emit_run(pilotlog, pilot, n, shutdown=True, **env):
    """n events through the real CLI (the last a shutdown with exit code 3): their readable lines."""
    env = dict(env, PILOTLOG_PILOT_UUID=pilot) if pilot else env
    for i in range(n - 1):
        assert pilotlog("emit", "log", "-m", "line %d of the pilot" % i, env=env).returncode == 0
    if shutdown:
        assert pilotlog("emit", "shutdown", "-m", "done", "--data", '{"exit_code": 3}', env=env).returncode == 0
    else:
        assert pilotlog("emit", "log", "-m", "still running", env=env).returncode == 0
    return [readable_line(e) for e in pilotlog.events()]


def delivered_total(pilotlog, **env) -> int:
    return json.loads(pilotlog("status", "--json", env=env).stdout)["delivered_total"]


# -- the HTTPS sink against DIRAC's handler ------------------------------------------------------


@pytest.mark.parametrize(
    "cert,key,vo,where",
    [
        ("client.pem", "client.key", None, "dteam"),  # no VO: DIRAC takes the client group's
        ("client.pem", "client.key", "lhcb", "dteam"),  # the group's VO wins over the pilot's
        ("proxy.pem", "", None, "dteam"),  # proxy-style PEM: certificate, key and chain in one file
        ("hostcreds", "", "lhcb", "lhcb"),  # host-certificate directory: extraCredentials "hosts"
    ],
)
def test_sink_delivers_to_diracs_handler_and_dirac_stores_what_was_emitted(dirac, pilotlog, pki, cert, key, vo, where):
    pilot = str(uuid.uuid4())
    env = {"PILOTLOG_SINK": dirac.url, "PILOTLOG_CERT": pki.path(cert), "PILOTLOG_KEY": key and pki.path(key)}
    if vo:
        env["PILOTLOG_VO"] = vo
    lines = emit_run(pilotlog, pilot, 5, **env)
    p = pilotlog("replay", env=env)
    assert p.returncode == 0 and "replayed 5 event(s)" in p.stderr, p.stderr
    assert (dirac.store / where / (pilot + ".log")).read_bytes() == "".join(line + "\n" for line in lines).encode()
    assert pilotlog.events() == [] and delivered_total(pilotlog, **env) == 5


@pytest.mark.parametrize("proxy", GOOD + ("independent",))
def test_sink_delivers_to_diracs_handler_with_a_real_proxy(dirac, pilotlog, proxies, proxy):
    """X509_USER_PROXY holding an RFC 3820 proxy (one or two levels, limited) and its chain: DIRAC's
    own X509Chain reads the chain the client sent and files the log under its owner's group VO."""
    pilot = str(uuid.uuid4())
    env = {
        "PILOTLOG_SINK": dirac.url,
        "PILOTLOG_CERT": "",
        "PILOTLOG_KEY": "",
        "X509_USER_PROXY": proxies.x509up(proxy),
    }
    lines = emit_run(pilotlog, pilot, 3, **env)
    p = pilotlog("replay", env=env)
    assert p.returncode == 0 and "replayed 3 event(s)" in p.stderr, p.stderr
    assert (dirac.store / "dteam" / (pilot + ".log")).read_bytes() == "".join(line + "\n" for line in lines).encode()


def test_diracs_handler_refuses_a_proxy_that_claims_another_owner(dirac, pilotlog, proxies):
    """The impostor's own CN is the registered user's, its owner is not: DIRAC refuses it too."""
    pilot = str(uuid.uuid4())
    env = {
        "PILOTLOG_SINK": dirac.url,
        "PILOTLOG_CERT": "",
        "PILOTLOG_KEY": "",
        "X509_USER_PROXY": proxies.x509up("impostor"),
    }
    before = tree(dirac.store)
    emit_run(pilotlog, pilot, 2, **env)
    p = pilotlog("replay", env=env)
    assert p.returncode == 0 and len(pilotlog.events()) == 2 and tree(dirac.store) == before, p.stderr


def test_dirac_stamp_ids_and_open_logs(dirac, pilotlog):
    env = {"PILOTLOG_SINK": dirac.url, "DIRAC_PILOT_STAMP": STAMP, "PILOTLOG_BATCH_EVENTS": "2"}
    lines = emit_run(pilotlog, None, 5, shutdown=False, **env)
    p = pilotlog("replay", env=env)
    assert p.returncode == 0, p.stderr
    assert (dirac.store / "dteam" / STAMP).read_bytes() == "".join(line + "\n" for line in lines).encode()


@pytest.mark.parametrize(
    "pilot,cert,vo,reason",
    [
        ("https://ce.example.org:8443/job-1f", "client", None, "Pilot UUID is invalid"),
        ("ABCDEF0123456789ABCDEF0123456789", "client", None, "Pilot UUID is invalid"),
        (None, "hostcreds", None, "VO name is invalid"),  # a host has no VO and the pilot gave none
    ],
)
def test_refusals_are_quarantined_never_counted_delivered(dirac, pilotlog, pki, pilot, cert, vo, reason):
    env = {"PILOTLOG_SINK": dirac.url}
    if cert == "hostcreds":
        env.update(PILOTLOG_CERT=pki.path("hostcreds"), PILOTLOG_KEY="")
    before = tree(dirac.store)
    emit_run(pilotlog, pilot, 4, **env)
    p = pilotlog("replay", env=dict(env, **({"PILOTLOG_PILOT_UUID": pilot} if pilot else {})))
    assert p.returncode == 0 and "4 event(s) refused by %s moved to" % dirac.url in p.stderr, p.stderr
    if pilot:  # said once, clearly, before anything is sent
        assert "refused by DIRAC's pilot logging" in stderr_lines(p)[0]
    assert delivered_total(pilotlog, **env) == 0 and pilotlog.events() == []
    reasons = [f for f in os.listdir(str(pilotlog.spool / "quarantine")) if f.endswith(".reason")]
    assert len(reasons) == 4 and reason in (pilotlog.spool / "quarantine" / reasons[0]).read_text()
    assert tree(dirac.store) == before  # DIRAC stored nothing


def test_a_refused_finalise_is_not_a_delivery(dirac, pilotlog):
    """DIRAC stores the lines, then refuses the rename (a directory stands where the .log goes)."""
    pilot = str(uuid.uuid4())
    (dirac.store / "dteam" / (pilot + ".log")).mkdir(parents=True)
    env = {"PILOTLOG_SINK": dirac.url}
    lines = emit_run(pilotlog, pilot, 3, **env)
    p = pilotlog("replay", env=env)
    assert p.returncode == 0 and "3 event(s) refused by %s" % dirac.url in p.stderr, p.stderr
    assert delivered_total(pilotlog, **env) == 0 and pilotlog.events() == []
    reasons = [f for f in os.listdir(str(pilotlog.spool / "quarantine")) if f.endswith(".reason")]
    assert len(reasons) == 3 and "IsADirectoryError" in (pilotlog.spool / "quarantine" / reasons[0]).read_text()
    assert (dirac.store / "dteam" / pilot).read_bytes() == "".join(line + "\n" for line in lines).encode()


@pytest.mark.parametrize("send_test", [False, True], ids=["check", "send-test"])
def test_doctor_agrees_with_replay_on_diracs_handler(dirac, pilotlog, pki, send_test):
    """doctor's POST reaches DIRAC's own handler: it passes where replay delivers (with --send-test the
    marked event is in the pilot's log DIRAC keeps, without it DIRAC stored nothing), and it fails
    with DIRAC's own words where DIRAC refuses what replay would send (a host with no VO)."""
    args = ["doctor", "--json"] + (["--send-test"] if send_test else [])
    pilot = str(uuid.uuid4())
    env = {"PILOTLOG_SINK": dirac.url, "PILOTLOG_PILOT_UUID": pilot}
    p = pilotlog(*args, env=env)
    report = json.loads(p.stdout)
    assert p.returncode == 0 and report["works"], p.stdout
    log = (dirac.store / "dteam" / pilot).read_text()
    assert ("pilotlog doctor test event: safe to ignore" in log) == send_test and log.count("\n") == int(send_test)
    emit_run(pilotlog, pilot, 2, **env)
    assert pilotlog("replay", "--strict", env=env).returncode == 0 and pilotlog.events() == []

    refused = dict(env, PILOTLOG_CERT=pki.path("hostcreds"), PILOTLOG_KEY="")  # a host, and no VO
    p = pilotlog(*args, env=refused)
    report = json.loads(p.stdout)
    first = next(s for s in report["steps"] if not s["ok"])
    assert p.returncode == 1 and first["name"] == "https" and "VO name is invalid" in first["detail"], p.stdout
    emit_run(pilotlog, pilot, 2, **refused)
    p = pilotlog("replay", env=refused)
    assert "2 event(s) refused" in p.stderr and "VO name is invalid" in (
        next((pilotlog.spool / "quarantine").glob("*.reason")).read_text()
    ), p.stderr


def test_grid_job_id_is_never_used_for_dirac(dirac, pilotlog):
    env = {"PILOTLOG_SINK": dirac.url, "GRID_GLOBAL_JOBID": "https://ce.example.org:8443/job-1f"}
    emit_run(pilotlog, None, 2, **env)
    pilot = pilotlog.events()[0]["pilot"]
    assert pilot != env["GRID_GLOBAL_JOBID"]
    assert pilotlog("replay", env=env).returncode == 0
    assert (dirac.store / "dteam" / (pilot + ".log")).exists() and delivered_total(pilotlog, **env) == 2


# -- serve against DIRAC: same requests, same bytes ------------------------------------------------


@pytest.fixture
def serve(bundle, pki, tmp_path):
    """`pilotlog serve` with the client certificate's CN mapped to its DIRAC group's VO."""
    server = Serve(bundle, pki, tmp_path / "serve-store", "--vo-for-cn", "%s=dteam" % CLIENT_CN)
    yield server.port, server.dir
    server.stop()


def test_serve_stores_the_same_bytes_as_diracs_plugin(dirac, serve, pki):
    port, store = serve
    pilots = [str(uuid.uuid4()), "zz" + uuid.uuid4().hex[2:]]
    messages = [
        # What the Pilot's RemoteLogger sends: its buffer, one string of lines.
        "2026-11-29T10:00:00.000000Z INFO [Pilot] booting\n2026-11-29T10:00:01.000000Z INFO [Pilot] next\n",
        "windows line\r\nunicode line separator\u2028inside\nno trailing newline",
        "\u00e9t\u00e9 \U0001f600 \x00 nul and tab\t\n",
        ["a list of lines", "kept one per line", ""],  # what pilotlogger sends
    ]
    for pilot in pilots:
        for message in messages:
            for port_ in (dirac.port, port):
                assert accepted(*post(port_, pilot_form("sendMessage", message, pilot), pki))
    for port_ in (dirac.port, port):
        assert accepted(*post(port_, pilot_form("finaliseLogs", {"retCode": 0}, pilots[0]), pki))
    ours = tree(store)
    theirs = {k: v for k, v in tree(dirac.store).items() if k.split("/")[-1].split(".")[0] in pilots}
    assert ours == theirs and len(ours) == 2


#: Text a worker node may log: any code point but lone surrogates (serve refuses those whole,
#: DIRAC writes part and refuses: see docs/dirac.md), with line breaks of every kind.
LOG_TEXT = st.lists(
    st.characters(blacklist_categories=("Cs",)) | st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\x85"]), max_size=60
).map("".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(LOG_TEXT | st.lists(LOG_TEXT, max_size=5), min_size=1, max_size=4), finalise=st.booleans())
def test_serve_and_dirac_store_the_same_bytes_for_any_text(dirac, serve, pki, messages, finalise):
    port, store = serve
    pilot = str(uuid.uuid4())
    for message in messages:
        for port_ in (dirac.port, port):
            assert accepted(*post(port_, pilot_form("sendMessage", message, pilot), pki))
    if finalise:
        for port_ in (dirac.port, port):
            assert accepted(*post(port_, pilot_form("finaliseLogs", {"retCode": 1}, pilot), pki))
    name = "dteam/" + pilot + (".log" if finalise else "")
    assert (store / name).read_bytes() == (dirac.store / name).read_bytes()


def test_serve_accepts_and_refuses_what_dirac_does(dirac, serve, pki):
    port, store = serve
    good = str(uuid.uuid4())
    cases = [
        ("three args", pilot_form("sendMessage", ["x"], good), "client", True),
        ("two args", [("method", "sendMessage"), ("args", json.dumps((json.dumps(["x"]), good)))], "client", False),
        ("32-char stamp of [0-9a-z]", pilot_form("sendMessage", ["x"], STAMP), "client", True),
        ("uppercase stamp", pilot_form("sendMessage", ["x"], STAMP.upper()), "client", False),
        ("grid job URL", pilot_form("sendMessage", ["x"], "https://ce:8443/job-1f"), "client", False),
        ("uppercase UUID", pilot_form("sendMessage", ["x"], good.upper()), "client", False),
        (
            "host, VO lhcb",
            pilot_form("sendMessage", ["x"], good, "lhcb") + [("extraCredentials", '"hosts"')],
            "host",
            True,
        ),
        (
            "host, VO a.b-c",
            pilot_form("sendMessage", ["x"], good, "a.b-c") + [("extraCredentials", '"hosts"')],
            "host",
            True,
        ),
        (
            "host, VO lhcb_prod",
            pilot_form("sendMessage", ["x"], good, "lhcb_prod") + [("extraCredentials", '"hosts"')],
            "host",
            False,
        ),
        (
            "host, bare hosts",
            pilot_form("sendMessage", ["x"], good, "lhcb") + [("extraCredentials", "hosts")],
            "host",
            False,
        ),
        (
            "finalise with two args",
            [("method", "finaliseLogs"), ("args", json.dumps((json.dumps({"retCode": 0}), good)))],
            "client",
            False,
        ),
        ("finalise, nothing open", pilot_form("finaliseLogs", {"retCode": 0}, str(uuid.uuid4())), "client", False),
    ]
    for name, fields, cert, expected in cases:
        for who, port_ in (("DIRAC", dirac.port), ("serve", port)):
            assert accepted(*post(port_, fields, pki, cert)) is expected, "%s: %s" % (who, name)


def test_a_second_finalise_never_loses_lines_in_serve(dirac, serve, pki):
    """DIRAC renames over the finalised log (its first part is lost); serve appends to it."""
    port, store = serve
    pilot = str(uuid.uuid4())
    for port_ in (dirac.port, port):
        for part in (["first 1", "first 2", "first 3"], ["second"]):
            assert accepted(*post(port_, pilot_form("sendMessage", part, pilot), pki))
            assert accepted(*post(port_, pilot_form("finaliseLogs", {"retCode": 0}, pilot), pki))
    assert (store / "dteam" / (pilot + ".log")).read_bytes() == b"first 1\nfirst 2\nfirst 3\nsecond\n"
    assert (dirac.store / "dteam" / (pilot + ".log")).read_bytes() == b"second\n"  # DIRAC 9.1.22's behaviour


# -- pilot.json made by DIRAC's PilotCStoJSONSynchronizer -----------------------------------------

OPERATIONS_DIRAC9 = """
Operations
{
  Defaults
  {
    Pilot
    {
      RemoteLogging = False
      PilotLogLevel = INFO
    }
  }
  dteam
  {
    Pilot
    {
      RemoteLogging = True
      RemoteLoggerURL = https://vo9:8444/WorkloadManagement/TornadoPilotLogging
      RemoteLoggerCEsWhiteList = ce1.example.org, ce2.example.org
      PilotLogLevel = DEBUG
    }
  }
}
"""
# DIRAC 8's layout: setups inside Operations and a DefaultSetup.  DIRAC 9.1.22's getCSDict
# dumps /Operations whatever its shape, as DIRAC 8's did, so it produces this layout too.
OPERATIONS_DIRAC8 = """
DIRAC
{
  DefaultSetup = dteam-Production
}
Operations
{
  Defaults
  {
    Pilot
    {
      PilotLogLevel = INFO
    }
  }
  dteam-Production
  {
    Pilot
    {
      RemoteLogging = True
      RemoteLoggerURL = https://setup8:8444/WorkloadManagement/TornadoPilotLogging
    }
  }
  dteam
  {
    dteam-Production
    {
      Pilot
      {
        RemoteLoggerURL = https://vo-setup8:8444/WorkloadManagement/TornadoPilotLogging
      }
    }
  }
}
"""
RESOURCES = """
Resources
{
  Sites
  {
    LCG
    {
      LCG.Test.ch
      {
        CEs
        {
          ce1.example.org
          {
            CEType = HTCondorCE
            Queues
            {
              long
              {
              }
            }
          }
        }
      }
    }
  }
}
"""


def pilot_json(tmp_path, operations) -> str:
    cfg = tmp_path / "cs-ops.cfg"
    cfg.write_text(operations + RESOURCES)
    out = tmp_path / "pilot.json"
    p = subprocess.run(
        [dirac_python(), str(HERE / "pilot_json.py"), str(cfg), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout
    return str(out)


def config(bundle, tmp_path, *flags):
    p = Pilotlog(bundle, tmp_path)("config", "--json", *flags)
    assert p.returncode == 0, p.stderr
    return {k: v["value"] for k, v in json.loads(p.stdout).items()}


def test_dirac9_pilot_json_from_diracs_synchronizer(bundle, tmp_path):
    path = pilot_json(tmp_path, OPERATIONS_DIRAC9)
    assert "dteam" in json.load(open(path)) and "Setups" not in json.load(open(path))
    c = config(bundle, tmp_path, "--config", path, "--vo", "dteam", "--ce", "ce2.example.org")
    assert c["sink"] == "https://vo9:8444/WorkloadManagement/TornadoPilotLogging" and c["level"] == "debug"
    assert config(bundle, tmp_path, "--config", path, "--vo", "dteam", "--ce", "ce9.example.org")["sink"] == "stdout"
    assert config(bundle, tmp_path, "--config", path, "--ce", "ce1.example.org")["level"] == "info"


def test_dirac8_pilot_json_from_diracs_synchronizer(bundle, tmp_path):
    path = pilot_json(tmp_path, OPERATIONS_DIRAC8)
    assert json.load(open(path))["DefaultSetup"] == "dteam-Production"
    c = config(bundle, tmp_path, "--config", path, "--vo", "dteam")
    assert (
        c["sink"] == "https://vo-setup8:8444/WorkloadManagement/TornadoPilotLogging"
        and c["setup"] == "dteam-Production"
    )
    assert (
        config(bundle, tmp_path, "--config", path)["sink"]
        == "https://setup8:8444/WorkloadManagement/TornadoPilotLogging"
    )
