"""Destinations that drop messages, and quorum queues over STOMP (issue 19), on the real brokers.

RabbitMQ confirms (RECEIPT) a SEND it routes nowhere: to an ``/amq/queue/`` that does not
exist, an ``/exchange/`` with no binding, a ``/topic/`` with no subscriber.  A receipt is
then not a delivery, so pilotlog checks before it sends: it refuses destinations that can
drop (unless ``destination_check=off``) and checks that an ``/amq/queue/`` exists, without
consuming from it.  A quorum queue is reached as ``/queue/NAME`` with the queue properties
in ``destination_headers``.  For each case: what replay, ``emit --send``, ``run`` and
``doctor`` do, and nothing counted delivered that no queue holds.
"""

import json
import socket
import uuid

import pytest

from brokers import PASSWORD, USER
from helpers import broker_env, fill_spool, stderr_lines
from pilotlogger.stompcodec import FrameParser, encode_frame


@pytest.fixture
def pilotlog_env(pki):
    return dict(broker_env(pki), PILOTLOG_DEADLINE="10", PILOTLOG_TIMEOUT="3")


def stomp_frames(broker, *frames, wait_for=None):
    """Send raw frames on the broker's plain port (as a site's admin tool would); the frames back."""
    with socket.create_connection(("127.0.0.1", broker.plain), timeout=10) as sock:
        sock.sendall(
            encode_frame("CONNECT", [("accept-version", "1.2"), ("host", "/"), ("login", USER), ("passcode", PASSWORD)])
        )
        for command, headers, body in frames:
            sock.sendall(encode_frame(command, headers, body))
        parser, got = FrameParser(), []
        while wait_for not in [f.headers.get("receipt-id") for f in got] and not any(f.command == "ERROR" for f in got):
            data = sock.recv(65536)
            if not data:
                break
            parser.feed(data)
            got += list(iter(parser.next_frame, None))
        return got


def declare_quorum_queue(broker, name: str) -> None:
    got = stomp_frames(
        broker,
        (
            "SUBSCRIBE",
            [
                ("destination", "/queue/" + name),
                ("id", "d"),
                ("receipt", "r"),
                ("x-queue-type", "quorum"),
                ("durable", "true"),
                ("auto-delete", "false"),
            ],
            b"",
        ),
        ("UNSUBSCRIBE", [("id", "d"), ("receipt", "done")], b""),
        wait_for="done",
    )
    assert not [f for f in got if f.command == "ERROR"], got


def test_a_missing_amq_queue_is_found_before_anything_is_sent(rabbitmq, pilotlog, consume, tmp_path):
    """Without the check RabbitMQ would confirm all three and keep none (issue 19, item 1)."""
    name = "pilotlog-missing-" + uuid.uuid4().hex[:8]
    env = {"PILOTLOG_SINK": rabbitmq.url("/amq/queue/" + name)}
    fill_spool(pilotlog.spool, 3)
    p = pilotlog("replay", env=env)
    (line,) = stderr_lines(p)
    assert p.returncode == 0 and pilotlog.depth() == 3, p.stderr  # kept, not "delivered"
    assert "queue /amq/queue/%s does not exist" % name in line and "3 event(s) kept" in line
    assert "send to /queue/%s" % name in line
    p = pilotlog("emit", "boot", "--send", env=env)
    assert p.returncode == 0 and pilotlog.depth() == 4 and "does not exist" in p.stderr
    p = pilotlog("run", "--ship-every", "0.2", "--", "sh", "-c", "exit 4", env=env)
    assert p.returncode == 4 and pilotlog.depth() == 6 and "does not exist" in p.stderr  # boot and shutdown kept
    p = pilotlog("doctor", "--json", env=env)
    steps = {s["name"]: s for s in json.loads(p.stdout)["steps"]}
    assert p.returncode == 1 and not steps["destination"]["ok"] and "does not exist" in steps["destination"]["detail"]
    assert p.returncode == pilotlog("replay", "--strict", env=env).returncode - 2  # doctor 1, replay --strict 3
    # Declared, the same destination takes everything; the check consumed nothing on its way.
    declare_quorum_queue(rabbitmq, name)
    stomp_frames(
        rabbitmq, ("SEND", [("destination", "/amq/queue/" + name), ("receipt", "s")], b'{"not": "ours"}'), wait_for="s"
    )
    consumer = consume(rabbitmq, "/amq/queue/" + name)
    p = pilotlog("replay", env=env)
    assert p.returncode == 0 and pilotlog.depth() == 0, p.stderr
    bodies = [m.body for m in consumer.wait_for(7)]
    assert len(bodies) == 7 and '{"not": "ours"}' in bodies  # the queue's own message is still there, once


@pytest.mark.parametrize(
    "broker,destination",
    [
        ("rabbitmq", "/topic/pilotlog-nobody"),
        ("activemq", "/topic/pilotlog-nobody"),
        ("rabbitmq", "/exchange/amq.topic/pilotlog-nobody"),  # /exchange/ is RabbitMQ's only
    ],
    indirect=["broker"],
)
def test_destinations_that_can_drop_are_refused_unless_trusted(broker, destination, pilotlog):
    env = {"PILOTLOG_SINK": broker.url(destination)}
    pilotlog("emit", "boot")
    p = pilotlog("replay", env=env)
    assert p.returncode == 2 and pilotlog.depth() == 1  # a configuration to fix, nothing sent
    (line,) = stderr_lines(p)
    assert "can drop messages silently" in line and "destination_check=off" in line
    p = pilotlog("emit", "install", "--send", env=env)
    assert p.returncode == 0 and pilotlog.depth() == 2 and "can drop messages silently" in p.stderr
    p = pilotlog("run", "--ship-every", "0.2", "--", "sh", "-c", "exit 5", env=env)
    assert p.returncode == 5 and pilotlog.depth() == 4
    assert p.stderr.count("can drop messages silently") == 1  # said once, not at every background ship
    p = pilotlog("doctor", "--json", env=env)
    steps = {s["name"]: s for s in json.loads(p.stdout)["steps"]}
    assert p.returncode == 1 and not steps["destination"]["ok"]
    # Trusted on purpose (a binding or a durable subscriber holds them): the broker's word is taken.
    p = pilotlog("replay", env=dict(env, PILOTLOG_DESTINATION_CHECK="off"))
    assert p.returncode == 0 and pilotlog.depth() == 0, p.stderr


def test_a_quorum_queue_as_queue_name_needs_its_properties(rabbitmq, pilotlog, consume):
    """Issue 19, item 2: refused without x-queue-type (kept, and the line says what to set); delivered with it."""
    name = "pilotlog-quorum-" + uuid.uuid4().hex[:8]
    declare_quorum_queue(rabbitmq, name)
    env = {"PILOTLOG_SINK": rabbitmq.url("/queue/" + name)}
    ids = {e["id"] for e in fill_spool(pilotlog.spool, 5)}
    p = pilotlog("replay", env=env)
    (line,) = stderr_lines(p)
    assert p.returncode == 0 and pilotlog.depth() == 5
    assert "PRECONDITION_FAILED" in line and "add x-queue-type=quorum to destination_headers" in line
    p = pilotlog("doctor", "--json", "--send-test", env=env)
    steps = {s["name"]: s for s in json.loads(p.stdout)["steps"]}
    assert p.returncode == 1 and not steps["send"]["ok"] and "x-queue-type=quorum" in steps["send"]["advice"]
    consumer = consume(rabbitmq, "/amq/queue/" + name)  # as /queue/ it would need the properties too
    good = dict(env, PILOTLOG_DESTINATION_HEADERS="x-queue-type=quorum,durable=true,auto-delete=false")
    assert json.loads(pilotlog("doctor", "--json", env=good).stdout)["works"]
    p = pilotlog("replay", env=good)
    assert p.returncode == 0 and pilotlog.depth() == 0, p.stderr
    assert consumer.wait_for_ids(ids) >= ids


def test_activemq_keeps_what_is_sent_to_any_queue_name(activemq, pilotlog, consume):
    """ActiveMQ creates a queue for any non-topic destination (even /amq/queue/…): nothing to check."""
    destination = "/amq/queue/pilotlog-" + uuid.uuid4().hex[:8]
    consumer = consume(activemq, destination)
    ids = {e["id"] for e in fill_spool(pilotlog.spool, 3)}
    p = pilotlog("replay", env={"PILOTLOG_SINK": activemq.url(destination)})
    assert p.returncode == 0 and pilotlog.depth() == 0, p.stderr
    assert consumer.wait_for_ids(ids) >= ids


def test_bad_destination_headers_are_a_clear_configuration_error(rabbitmq, pilotlog, queue):
    pilotlog("emit", "boot")
    for value, needle in (("x-queue-type", "must be NAME=VALUE"), ("receipt=1", "not a header pilotlog can send")):
        p = pilotlog("replay", env={"PILOTLOG_SINK": rabbitmq.url(queue), "PILOTLOG_DESTINATION_HEADERS": value})
        assert p.returncode == 2 and needle in p.stderr and pilotlog.depth() == 1


def test_the_existence_check_on_a_queue_full_of_messages_never_fails_a_replay(rabbitmq, pilotlog, consume):
    """RabbitMQ can hand the check's subscription a message after its UNSUBSCRIBE was confirmed (a
    quorum queue delivers asynchronously); it then sends an ERROR 'Subscription not found' and keeps
    the connection.  Found by the 200-pilot burst (issue 16): that ERROR failed a pilot's last drain.
    A queue that is never empty makes the race likely; every replay must still deliver, and the
    message the check was handed is given back, never lost."""
    name = "pilotlog-busy-" + uuid.uuid4().hex[:8]
    declare_quorum_queue(rabbitmq, name)
    theirs = [
        ("SEND", [("destination", "/amq/queue/" + name), ("receipt", "s%d" % i)], b'{"theirs": %d}' % i)
        for i in range(300)
    ]
    stomp_frames(rabbitmq, *theirs, wait_for="s299")
    env = {"PILOTLOG_SINK": rabbitmq.url("/amq/queue/" + name)}
    for attempt in range(30):
        fill_spool(pilotlog.spool, 5)
        p = pilotlog("replay", "--strict", env=env)
        assert p.returncode == 0 and pilotlog.depth() == 0, (attempt, p.stderr)
    consumer = consume(rabbitmq, "/amq/queue/" + name)
    bodies = [m.body for m in consumer.wait_for(300 + 150)]
    assert sum('"theirs"' in b for b in bodies) == 300 and len(bodies) == 450
