"""Real brokers for the interop and fault tests, started once per session on loopback.

A pytest plugin (see conftest.py): a broker starts only when a test asks for it, and
stomp.py is imported only when a test opens a consumer, so the unit tests run on a
machine without it.

With CI=true a broker that cannot be started fails the tests that need it (never a
silent skip); on a developer machine without the packages they are skipped with the
command that installs them.
"""

import json
import os
import shutil
import threading
import time
import uuid

import pytest

from brokers import PASSWORD, USER, ActiveMQ, BrokerError, RabbitMQ
from helpers import unavailable


def _start(cls, pki, tmp_path_factory):
    try:
        return cls(str(tmp_path_factory.mktemp(cls.name.lower())), pki).start()
    except (BrokerError, OSError) as exc:
        unavailable("%s cannot start: %s" % (cls.name, exc))


@pytest.fixture(scope="session")
def rabbitmq(pki, tmp_path_factory):
    if not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"):
        unavailable("RabbitMQ is not installed (make test installs it: apt-get install rabbitmq-server)")
    broker = _start(RabbitMQ, pki, tmp_path_factory)
    yield broker
    broker.shutdown()


@pytest.fixture(scope="session")
def activemq(pki, tmp_path_factory):
    if not os.path.exists("/usr/share/activemq/bin/activemq.jar") or not shutil.which("java"):
        unavailable("ActiveMQ is not installed (make test installs it: apt-get install activemq)")
    broker = _start(ActiveMQ, pki, tmp_path_factory)
    yield broker
    broker.shutdown()


@pytest.fixture(params=["rabbitmq", "activemq"])
def broker(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def queue():
    return "/queue/pilotlog-test-" + uuid.uuid4().hex[:12]


def publish(broker, destination: str, bodies) -> None:
    """Send message bodies to ``destination`` with stomp.py (persistent), as another producer on
    the broker would: what ``tail`` and ``timeline`` then read."""
    import stomp

    conn = stomp.Connection12([("127.0.0.1", broker.plain)], vhost="/", heartbeats=(0, 0))
    conn.connect(USER, PASSWORD, wait=True)
    for body in bodies:
        conn.send(destination, body, headers={"persistent": "true"})
    conn.disconnect()


class Consumer:
    """stomp.py — the independent implementation — reading what the broker delivered.

    A stomp.py listener (stomp.py calls the ``on_*`` methods a listener has).
    """

    def __init__(self, broker, destination: str):
        import stomp

        self.messages = []
        self.ids = set()  # distinct event ids received; len(messages) - len(ids) are duplicates
        self.cond = threading.Condition()
        self.conn = stomp.Connection12([("127.0.0.1", broker.plain)], vhost="/", heartbeats=(0, 0))
        self.conn.set_listener("consumer", self)
        self.conn.connect(USER, PASSWORD, wait=True)
        self.conn.subscribe(destination, id="1", ack="auto")

    def on_message(self, frame):
        try:
            body = json.loads(frame.body)
        except ValueError:
            body = None
        event_id = body.get("id") if isinstance(body, dict) else None
        with self.cond:
            self.messages.append(frame)
            self.ids.add(event_id)
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> list:
        end = time.monotonic() + timeout
        with self.cond:
            while len(self.messages) < count and time.monotonic() < end:
                self.cond.wait(0.2)
            return list(self.messages)

    def wait_for_ids(self, ids: set, timeout: float = 60.0) -> set:
        """Event ids received until all of ``ids`` came (duplicates do not count twice) or timeout."""
        end = time.monotonic() + timeout
        with self.cond:
            while not ids <= self.ids and time.monotonic() < end:
                self.cond.wait(0.2)
            return set(self.ids) - {None}

    def close(self):
        try:
            self.conn.disconnect()
        except Exception:
            pass


@pytest.fixture
def consume():
    opened = []

    def open_consumer(broker, destination):
        c = Consumer(broker, destination)
        opened.append(c)
        return c

    yield open_consumer
    for c in opened:
        c.close()
