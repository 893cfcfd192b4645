"""pilotlogger → real RabbitMQ and ActiveMQ over STOMP 1.2/TLS, checked with stomp.py.

Every test runs the bundle as a user would, then decodes what the broker delivered to an
independent client and compares it field by field with what was spooled.
"""

import json
import socket
import time

import pytest

from brokers import CLIENT_CN, PASSWORD
from helpers import SilentListener, broker_env, stderr_lines
from helpers import replay as replay_env

PILOTS = ["https://ce.example.org:9000/aBc:12", "0123456789abcdef0123456789abcdef"]


@pytest.fixture
def pilotlog_env(pki):
    return broker_env(pki)


def spool_lifecycle(pilotlog, pilot=PILOTS[0]):
    steps = [
        ("boot", "booted up", []),
        ("os", "SLC6/CC7", ["-d", "os=CC7"]),
        ("power", "power of 11 HS06", ["-d", "hs06:=11"]),
        ("install", "installed DIRAC via dirac-install — ünïcode ok", ["--source", "InstallDIRAC"]),
        ("nomatch", "failed to match", ["--status", "warning"]),
        ("shutdown", "about to shutdown", ["-d", "exit_code:=0"]),
    ]
    for phase, message, extra in steps:
        p = pilotlog("emit", phase, "-m", message, *extra, env={"PILOTLOG_PILOT_UUID": pilot})
        assert p.returncode == 0, p.stderr
    return pilotlog.events()


def check_delivered(messages, spooled):
    """Bodies decode to exactly the spooled events, in order, with the filtering headers."""
    assert [json.loads(m.body) for m in messages] == spooled
    for m, event in zip(messages, spooled):
        h = m.headers
        assert (h["pilot_id"], h["event_id"], h["phase"], h["status"]) == (
            event["pilot"],
            event["id"],
            event["phase"],
            event["status"],
        )
        assert h["content-type"].startswith("application/json")


def replay(pilotlog, sink, **env):
    return replay_env(pilotlog, PILOTLOG_SINK=sink, **env)


def test_replay_to_a_queue_over_tls_with_login(broker, pilotlog, queue, consume):
    spooled = spool_lifecycle(pilotlog)
    p, _ = replay(pilotlog, broker.url(queue))
    assert p.returncode == 0, p.stderr
    (line,) = stderr_lines(p)
    assert line.startswith("pilotlog: replayed 6 event(s) to stomp+ssl://localhost:")
    assert pilotlog.events() == []
    check_delivered(consume(broker, queue).wait_for(6), spooled)


def test_replay_to_a_topic_only_when_trusted(broker, pilotlog, queue, consume):
    """A topic drops what nobody subscribes to: refused by default, sent with destination_check=off."""
    topic = queue.replace("/queue/", "/topic/")
    consumer = consume(broker, topic)  # a topic only delivers to subscribers present at send time
    time.sleep(0.3)
    spooled = spool_lifecycle(pilotlog, PILOTS[1])
    p, _ = replay(pilotlog, broker.url(topic))
    assert p.returncode == 2 and "can drop messages silently" in p.stderr and len(pilotlog.events()) == 6
    p, _ = replay(pilotlog, broker.url(topic), PILOTLOG_DESTINATION_CHECK="off")
    assert p.returncode == 0, p.stderr
    check_delivered(consumer.wait_for(6), spooled)


def test_failover_to_the_next_host(broker, pilotlog, queue, consume):
    """Hosts in the URL are tried (shuffled) until one answers: a dead one does not stop delivery."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    spooled = spool_lifecycle(pilotlog)
    url = "stomp+ssl://localhost:%d,localhost:%d%s" % (dead, broker.tls, queue)
    for _ in range(3):  # whatever order the shuffle picks
        p, _ = replay(pilotlog, url)
        assert p.returncode == 0 and "replayed" in p.stderr, p.stderr
    check_delivered(consume(broker, queue).wait_for(6), spooled)


def test_dirac_format_to_a_dirac_style_destination(broker, pilotlog, queue, consume):
    spooled = spool_lifecycle(pilotlog)
    name = queue.rsplit("/", 1)[1]
    p, _ = replay(pilotlog, broker.url("/mq.example.org::Queues::" + name), PILOTLOG_FORMAT="dirac")
    assert p.returncode == 0, p.stderr
    records = [json.loads(m.body) for m in consume(broker, queue).wait_for(6)]
    # What DIRAC's PilotLoggerTools.isMessageFormatCorrect accepts: six non-empty strings.
    assert [sorted(r) for r in records] == [
        sorted(["pilotUUID", "timestamp", "source", "phase", "status", "messageContent"])
    ] * 6
    assert all(isinstance(v, str) and v for r in records for v in r.values())
    assert [(r["phase"], r["pilotUUID"]) for r in records] == [(e["phase"], e["pilot"]) for e in spooled]
    assert records[2]["messageContent"].startswith("power of 11 HS06 | id=%s" % spooled[2]["id"])


def test_emit_send_delivers_at_once(broker, pilotlog, queue, consume):
    p = pilotlog("emit", "match", "-m", "matched a job", "--send", env={"PILOTLOG_SINK": broker.url(queue)})
    assert (p.returncode, p.stderr) == (0, "")
    assert pilotlog.events() == []
    (message,) = consume(broker, queue).wait_for(1)
    assert json.loads(message.body)["message"] == "matched a job"


def test_proxy_style_combined_pem_and_hashed_ca_dir(broker, pilotlog, queue, consume, pki):
    """X509_USER_PROXY (cert + key + chain in one file) and X509_CERT_DIR, as on a worker node."""
    spooled = spool_lifecycle(pilotlog)
    env = {"PILOTLOG_CA_FILE": "", "X509_CERT_DIR": pki.path("certificates"), "X509_USER_PROXY": pki.path("proxy.pem")}
    url = broker.cert_url(queue) if hasattr(broker, "cert_url") else broker.url(queue)
    p, _ = replay(pilotlog, url, **env)
    assert p.returncode == 0, p.stderr
    check_delivered(consume(broker, queue).wait_for(6), spooled)


def test_client_certificate_authentication(broker, pilotlog, queue, consume, pki):
    """Log in with the client certificate alone: no login, no passcode."""
    spooled = spool_lifecycle(pilotlog)
    no_login = {"PILOTLOG_USER": "", "PILOTLOG_PASSCODE": ""}
    url = broker.cert_url(queue) if hasattr(broker, "cert_url") else broker.url(queue)
    # Without a certificate the broker refuses (RabbitMQ: no user; ActiveMQ: certificate required).
    p, _ = replay(pilotlog, url, **no_login)
    assert p.returncode == 0 and len(pilotlog.events()) == 6
    (line,) = stderr_lines(p)
    assert "6 event(s) kept in spool" in line
    assert ("refused the connection" in line) or ("TLS" in line) or ("certificate" in line), line
    certs = dict(no_login, PILOTLOG_CERT=pki.path("client.pem"), PILOTLOG_KEY=pki.path("client.key"))
    p, _ = replay(pilotlog, url, **certs)
    assert p.returncode == 0, p.stderr
    check_delivered(consume(broker, queue).wait_for(6), spooled)
    if broker.name == "RabbitMQ":
        assert CLIENT_CN  # the broker mapped the certificate CN to its user of that name


# -- faults: each leaves every event in the spool, exits 0, and says why in one line ------------


def assert_kept(pilotlog, p, count, *needles):
    assert p.returncode == 0
    lines = stderr_lines(p)
    assert len(lines) == 1, lines
    assert "Traceback" not in p.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "%d event(s) kept in spool %s" % (count, pilotlog.spool) in lines[0]
    assert len(pilotlog.events()) == count
    return lines[0]


def test_wrong_password_is_refused_at_once(broker, pilotlog, queue):
    spool_lifecycle(pilotlog)
    p, took = replay(pilotlog, broker.url(queue), PILOTLOG_PASSCODE="Not-The-Passc0de-7f3", PILOTLOG_DEADLINE=30)
    assert_kept(pilotlog, p, 6, "refused the connection")
    assert PASSWORD not in p.stderr and "Not-The-Passc0de-7f3" not in p.stderr
    assert took < 10  # not retried until the deadline: a wrong password will not get better


def test_unknown_vhost(rabbitmq, pilotlog, queue):
    spool_lifecycle(pilotlog)
    p, _ = replay(pilotlog, rabbitmq.url(queue), PILOTLOG_VHOST="/no-such-vhost")
    assert_kept(pilotlog, p, 6, "refused the connection")


def test_bad_destination(rabbitmq, pilotlog):
    spool_lifecycle(pilotlog)
    p, _ = replay(pilotlog, rabbitmq.url("/nonsense/x"))
    assert_kept(pilotlog, p, 6, "sent an ERROR: Unknown destination")


def test_untrusted_ca(broker, pilotlog, queue, pki):
    spool_lifecycle(pilotlog)
    p, took = replay(pilotlog, broker.url(queue), PILOTLOG_CA_FILE=pki.path("other-ca.pem"))
    assert_kept(pilotlog, p, 6, "not trusted")
    assert took < 10


def test_host_name_mismatch(broker, pilotlog, queue):
    spool_lifecycle(pilotlog)
    p, _ = replay(pilotlog, broker.url(queue, host="127.0.0.1"))  # the certificate names only localhost
    assert_kept(pilotlog, p, 6, "does not match the host name")


def test_broker_not_listening(pilotlog, queue):
    spool_lifecycle(pilotlog)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    p, took = replay(pilotlog, "stomp+ssl://localhost:%d%s" % (port, queue), PILOTLOG_DEADLINE=2)
    assert_kept(pilotlog, p, 6, "cannot reach broker localhost:%d within 2 s" % port, "refused")
    assert 1.5 < took < 8


def test_listener_that_never_answers_hits_the_deadline(pilotlog, queue):
    """A listener that accepts TCP and then says nothing: the deadlines hold, events stay."""
    with SilentListener() as silent:
        spool_lifecycle(pilotlog)
        p, took = replay(
            pilotlog, "stomp+ssl://localhost:%d%s" % (silent.port, queue), PILOTLOG_TIMEOUT=1, PILOTLOG_DEADLINE=3
        )
        assert_kept(pilotlog, p, 6, "timed out")
        assert took < 8
        assert silent.held, "the client never connected"
