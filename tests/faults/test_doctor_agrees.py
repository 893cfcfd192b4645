"""``pilotlog doctor`` says what ``replay`` then does, for every fault of the fault tables.

An admin runs doctor, reads its verdict, then the pilot replays.  They agree when:

* replay delivers everything (``replay --strict`` exits 0)  ⇔  doctor exits 0;
* replay refuses the configuration (exit 2)  ⇔  doctor exits 1 and its first failure is the
  ``config``, ``credentials`` or ``sink`` step;
* replay keeps the events (``--strict``: exit 3)  ⇔  doctor exits 1 and its first failure
  is a later step: the one named below;

and in both cases that step says what replay's line says (the same words, or where doctor
knows more — an expired certificate it reads before connecting — words naming the same cause).

Over HTTPS doctor POSTs through the sink's own code even without ``--send-test`` (a request
that stores nothing), so both modes must agree.  Over STOMP a broker that fails only at SEND
(stalls, hangs up, an ERROR, an oversized answer) is out of sight of a check that sends
nothing: there only ``--send-test`` must agree, and without it doctor must say that it did
not send.
"""

import json
import uuid

import pytest

from fault_tables import CASES, PEERS
from helpers import Pilotlog, https_env, stderr_lines

# bad configuration / credentials case -> the doctor step that must fail first [, its words if not replay's]
CASE_STEPS = {
    "unknown key in the config file": {"config"},
    "wrong type in the config file": {"config"},
    "config file that is not JSON": {"config"},
    "wrong type in the environment": {"config"},
    "unreadable client certificate": {"credentials"},
    "unreadable client key": {"credentials"},
    "key that does not match the certificate": {"credentials"},
    "missing proxy file": {"credentials"},
    "missing CA file": {"credentials"},
    "missing CA directory": {"credentials"},
    "expired server certificate": {"tls"},
    "server certificate from another CA": {"tls"},
    "host-name mismatch": {"tls"},
    # doctor reads the certificate's expiry before connecting; replay learns it from the server
    "expired client certificate": ({"credentials"}, "expired"),
    # TLS 1.3: the server judges our certificate after our side of the handshake is done,
    # so its alert arrives with the first answer (the POST) — or, with TLS 1.2, in the handshake.
    "no client certificate": {"tls", "https"},
    "client certificate the server does not allow": {"https"},
    "credentials in the HTTPS URL": {"config", "sink"},
}

# hostile broker -> (the doctor step that must fail first, what it must say if not replay's words)
PEER_STEPS = {
    "refuses connections": ("tcp", None),
    "accepts TCP, never speaks": ("tls", None),
    "trickles its TLS handshake": ("tls", None),
    "answers garbage": ("stomp", None),
    # doctor waits for one receipt (timeout); replay retries until its deadline and says so
    "stalls after CONNECTED": ("send", "no RECEIPT within 1 s"),
    "hangs up at every SEND": ("send", "closed the connection"),  # replay adds that it gave up reconnecting
    "sends an ERROR frame": ("send", None),
    "sends a frame over the size limit": ("send", None),
    "sends an ERROR in the read of its CONNECTED": ("stomp", None),
    "sends garbage in the read of its CONNECTED": ("stomp", None),
    "offers heart-beats of 400 digits": ("send", None),
    "reads the SENDs, then hangs up": ("send", "closed the connection"),
    "heart-beats, never receipts": ("send", "no RECEIPT within 1 s"),
    "receipts only the frames that asked for none": ("send", "no RECEIPT within 1 s"),  # doctor's SEND asks one
}
SEEN_ONLY_BY_SENDING = {name for name, (step, _) in PEER_STEPS.items() if step == "send"}
CONFIG_STEPS = {"config", "credentials", "sink"}  # where a configuration error shows
PATH_STEPS = {"credentials", "dns", "tcp", "tls", "stomp", "destination", "https", "send"}  # where a broken path does


def test_every_fault_has_an_expected_doctor_step():
    assert set(CASE_STEPS) == set(CASES) and set(PEER_STEPS) == set(PEERS)


def doctor(pilotlog, env, send_test: bool):
    """doctor's exit code, its steps, and its first failed step (or None)."""
    args = ["doctor", "--json"] + (["--send-test"] if send_test else [])
    p = pilotlog(*args, env=env)
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
    report = json.loads(p.stdout)
    first = next((s for s in report["steps"] if not s["ok"]), None)
    assert p.returncode == (0 if report["works"] else 1), p.stdout
    return p.returncode, report["steps"], first


def assert_agree(name, verdict, replay, step_names, words):
    code, steps, first = verdict
    shown = json.dumps(steps, indent=1)
    if replay.returncode == 0:
        assert code == 0, "%s: replay delivered, doctor said no:\n%s" % (name, shown)
        return
    assert code == 1, "%s: replay exited %d (%s), doctor said the path works:\n%s" % (
        name,
        replay.returncode,
        replay.stderr,
        shown,
    )
    if replay.returncode == 2:
        assert first["name"] in CONFIG_STEPS & step_names, (name, replay.stderr, shown)
    else:
        assert replay.returncode == 3, (name, replay.returncode, replay.stderr)
        assert first["name"] in step_names & PATH_STEPS, (name, replay.stderr, shown)
    assert words in first["detail"], (name, words, first, replay.stderr)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("send_test", [False, True], ids=["check", "send-test"])
def test_doctor_agrees_with_replay_on_a_bad_configuration(case, send_test, case_pilot, tmp_path):
    replay_words = CASES[case][3]
    steps, doctor_words = CASE_STEPS[case] if isinstance(CASE_STEPS[case], tuple) else (CASE_STEPS[case], None)
    pilotlog, env = case_pilot(case)
    verdict = doctor(pilotlog, env, send_test)
    replay = pilotlog("replay", "--strict", env=env)
    replay_words = replay_words.format(d=tmp_path)
    assert len(stderr_lines(replay)) == 1 and replay_words in replay.stderr, replay.stderr
    assert_agree(case, verdict, replay, steps, doctor_words or replay_words)


@pytest.mark.parametrize("send_test", [False, True], ids=["check", "send-test"])
def test_doctor_and_replay_agree_when_the_service_works(send_test, bundle, pki, server, tmp_path):
    """The working road: both succeed; --send-test's event is in the pilot's own log on the server,
    marked, and the check without it stored nothing."""
    s = server("server")
    pilot = str(uuid.uuid4())
    pilotlog = Pilotlog(bundle, tmp_path)
    pilotlog.env.update(https_env(pki), PILOTLOG_PILOT_UUID=pilot, PILOTLOG_SINK=s.url)
    verdict = doctor(pilotlog, {}, send_test)
    stored = list((tmp_path / "store").rglob(pilot + "*"))
    log = "".join(p.read_text() for p in stored)
    if send_test:
        assert [s["name"] for s in verdict[1]][-2:] == ["https", "send"]
        assert "pilotlog doctor test event: safe to ignore" in log and "doctor" in log
    else:
        assert log == ""  # at most an empty log file, as DIRAC's plugin makes for a message of no lines
    assert pilotlog("emit", "boot", "-m", "after the doctor").returncode == 0
    replay = pilotlog("replay", "--strict")
    assert_agree("working service", verdict, replay, set(), "")
    assert "after the doctor" in "".join(p.read_text() for p in (tmp_path / "store").rglob(pilot + "*"))


@pytest.mark.parametrize("send_test", [False, True], ids=["check", "send-test"])
def test_doctor_agrees_with_replay_on_a_hostile_broker(peer, send_test, pilotlog, pki):
    name, port, replay_words = peer.name, peer.port, peer.expected
    step, doctor_words = PEER_STEPS[name]
    env = {
        "PILOTLOG_SINK": "stomp+ssl://localhost:%d/queue/pilots" % port,
        "PILOTLOG_CA_FILE": pki.path("ca.pem"),
        "PILOTLOG_TIMEOUT": 1,
        "PILOTLOG_DEADLINE": 3,
    }
    env.update(peer.env)
    assert pilotlog("emit", "boot").returncode == 0
    verdict = doctor(pilotlog, env, send_test)
    replay = pilotlog("replay", "--strict", env=env)
    assert replay.returncode == 3 and replay_words in replay.stderr, replay.stderr
    if name in SEEN_ONLY_BY_SENDING and not send_test:
        assert verdict[0] == 0 and verdict[2] is None, verdict
        text = pilotlog("doctor", env=env).stdout
        assert "as far as a check that stores nothing shows (--send-test" in text, text
        return
    assert_agree(name, verdict, replay, {step}, doctor_words or replay_words)


STOMP_URL_CASES = {
    # name: (sink URL, the step doctor must fail first, words both must say)
    "credentials in the STOMP URL": (
        "stomp+ssl://pilot:s3cret@localhost:{port}/queue/pilots",
        {"config", "sink"},
        "put credentials in user/passcode settings",
    ),
    "an IPv6 address nothing listens on": ("stomp+ssl://[::1]:{port}/queue/pilots", {"tcp"}, "Connection refused"),
}


@pytest.mark.parametrize("case", sorted(STOMP_URL_CASES))
def test_doctor_agrees_with_replay_on_odd_stomp_urls(case, pilotlog, pki):
    from brokers import free_port

    url, steps, words = STOMP_URL_CASES[case]
    env = {
        "PILOTLOG_SINK": url.format(port=free_port()),
        "PILOTLOG_CA_FILE": pki.path("ca.pem"),
        "PILOTLOG_TIMEOUT": 1,
        "PILOTLOG_DEADLINE": 1,
    }
    assert pilotlog("emit", "boot").returncode == 0
    verdict = doctor(pilotlog, env, send_test=True)
    replay = pilotlog("replay", "--strict", env=env)
    assert words in replay.stderr, replay.stderr
    assert_agree(case, verdict, replay, steps, words)
