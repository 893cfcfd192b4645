"""A real 3-node RabbitMQ cluster on loopback, STOMP over TLS on every node (issue 16).

Nodes are private processes of Debian's ``rabbitmq-server`` (see brokers.py for one node),
sharing one Erlang cookie and one epmd, joined with ``rabbitmqctl join_cluster``.  The
destination is a **quorum queue** (RabbitMQ's replicated queue type: each message is on a
majority of nodes before the broker confirms it), declared once all three nodes are members,
by a STOMP SEND carrying the queue-property headers the STOMP plugin reads
(``x-queue-type:quorum``, ``durable:true``, ``auto-delete:false``).  pilotlogger then sends to
``/amq/queue/NAME``: an existing queue, used as it is.
"""

import os
import socket
import subprocess
import time

from brokers import PASSWORD, USER, Broker, BrokerError, RabbitMQ, free_port

NODES = 3


class ClusterNode(RabbitMQ):
    """One node: its own ports and data; the cluster's cookie and epmd."""

    def __init__(self, base: str, pki, index: int, cookie: str, epmd):
        super().__init__(base, pki)
        self.index = index
        self.node = "plcluster%d_%d@localhost" % (index, self.amqp)
        self.epmd, self.epmd_port = epmd
        path = os.path.join(base, ".erlang.cookie")
        with open(path, "w") as f:
            f.write(cookie)
        os.chmod(path, 0o400)

    def start(self):
        return Broker.start(self)  # the cluster's epmd is already running

    def shutdown(self):
        self.stop()

    def wait_ready(self, timeout: float = 90) -> None:
        end = time.monotonic() + timeout
        while not (self._listening(self.tls) and self._accepts_login()):
            if time.monotonic() > end:
                raise BrokerError("%s is not serving STOMP after %g s; log: %s" % (self.node, timeout, self.tail()))
            time.sleep(0.3)


class RabbitCluster:
    """Three nodes; ``url(destination)`` names all of them, as a site's DNS alias would."""

    def __init__(self, base: str, pki):
        self.base, self.pki = base, pki
        self.epmd_port = free_port()
        self.epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.cookie = os.urandom(16).hex()
        self.nodes = []

    def _start_node(self, index: int) -> ClusterNode:
        """Start node ``index``, on fresh ports if a port it was given is taken meanwhile (another
        process may bind a port between free_port() and the broker's own bind)."""
        for attempt in range(3):
            node = ClusterNode(
                os.path.join(self.base, "n%d-%d" % (index, attempt)),
                self.pki,
                index,
                self.cookie,
                (self.epmd, self.epmd_port),
            )
            try:
                node.start()
                node.ctl("await_startup")
                return node
            except BrokerError as exc:
                node.stop(kill=True)
                failure = exc
        raise failure

    def start(self) -> "RabbitCluster":
        first = self._start_node(1)
        self.nodes.append(first)
        for index in range(2, NODES + 1):
            node = self._start_node(index)
            self.nodes.append(node)
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
            node.wait_ready()
        running = first.ctl("cluster_status", "--formatter", "json")
        missing = [n.node for n in self.nodes if n.node not in running]
        if missing:
            raise BrokerError("nodes did not join the cluster: %s" % ", ".join(missing))
        return self

    def url(self, destination: str) -> str:
        return "stomp+ssl://%s%s" % (",".join("localhost:%d" % n.tls for n in self.nodes), destination)

    def declare_quorum_queue(self, name: str) -> str:
        """Declare ``name`` as a quorum queue on all three nodes; return ``/amq/queue/name``."""
        from pilotlogger.stompcodec import FrameParser, encode_frame

        with socket.create_connection(("127.0.0.1", self.nodes[0].plain), timeout=10) as sock:
            sock.sendall(
                encode_frame(
                    "CONNECT", [("accept-version", "1.2"), ("host", "/"), ("login", USER), ("passcode", PASSWORD)]
                )
            )
            # A SUBSCRIBE with the queue properties declares it; unsubscribing leaves it (not auto-delete).
            sock.sendall(
                encode_frame(
                    "SUBSCRIBE",
                    [
                        ("destination", "/queue/" + name),
                        ("id", "declare"),
                        ("x-queue-type", "quorum"),
                        ("durable", "true"),
                        ("auto-delete", "false"),
                        ("receipt", "declared"),
                    ],
                )
            )
            sock.sendall(encode_frame("UNSUBSCRIBE", [("id", "declare"), ("receipt", "done")]))
            parser, seen = FrameParser(), []
            while "done" not in seen:
                data = sock.recv(65536)
                if not data:
                    raise BrokerError("declaring %s: the broker closed the connection" % name)
                parser.feed(data)
                for frame in iter(parser.next_frame, None):
                    if frame.command == "ERROR":
                        raise BrokerError("declaring %s: %s" % (name, frame.body.decode(errors="replace")))
                    seen.append(frame.headers.get("receipt-id"))
        members = self.nodes[0].ctl("list_queues", "name", "type", "members", "--formatter", "json")
        if name not in members or "quorum" not in members:
            raise BrokerError("queue %s is not a quorum queue: %s" % (name, members[-500:]))
        return "/amq/queue/" + name

    def node_of_port(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if port in (n.tls, n.plain))

    def shutdown(self) -> None:
        for node in self.nodes:
            node.stop()
        self.epmd.kill()
        self.epmd.wait(10)
