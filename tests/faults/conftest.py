"""Fixtures of the fault tests: a `pilotlog serve` per test, and each hostile broker of the table."""

import collections
import os
import shutil
import tempfile
import time
import uuid

import pytest

from brokers import free_port
from fault_tables import CASES, PEERS, ScriptedBroker, TricklingHandshake, case_environment
from helpers import Pilotlog, Serve, SilentListener, https_env


@pytest.fixture(scope="module")
def shm():
    """A directory on tmpfs (where there is one) for a module's generated worlds: fsync costs nothing
    there, so a slow call is the fault's doing, never the disk's."""
    root = tempfile.mkdtemp(prefix="pilotlog-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server(bundle, pki, tmp_path):
    servers = []

    def start(cert, *extra):
        servers.append(Serve(bundle, pki, tmp_path / "store", *extra, cert=cert))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def case_pilot(bundle, pki, server, tmp_path):
    """``start(case)`` for a CASES entry: its `pilotlog serve` started, a pilot configured for it
    with one event spooled, and the case's environment: ``(pilotlog, env)``."""

    def start(case):
        cert = CASES[case][0]
        s = server(*cert) if isinstance(cert, tuple) else server(cert)
        time.sleep(1.1 if "expired" in case else 0)  # valid for zero days: expired a second later
        pilotlog = Pilotlog(bundle, tmp_path)
        pilotlog.env.update(
            https_env(pki),
            PILOTLOG_DEADLINE="2",
            PILOTLOG_TIMEOUT="2",
            PILOTLOG_PILOT_UUID=str(uuid.uuid4()),
            PILOTLOG_SINK=s.url,
        )
        assert pilotlog("emit", "boot").returncode == 0
        return pilotlog, case_environment(case, pki, tmp_path, s.url)

    return start


#: A hostile broker of fault_tables.PEERS, started: its ``broker`` (a ScriptedBroker, with its books) is
#: None for the special kinds; ``env`` is what the pilot must set for it beside the sink.
Peer = collections.namedtuple("Peer", "name port expected env broker")


@pytest.fixture(params=sorted(PEERS))
def peer(request, pki):
    kind, expected = PEERS[request.param][:2]
    env = PEERS[request.param][2] if len(PEERS[request.param]) > 2 else {}
    if kind == "closed":
        yield Peer(request.param, free_port(), expected, env, None)
    elif kind == "silent":
        with SilentListener() as listener:
            yield Peer(request.param, listener.port, expected, env, None)
    elif kind == "trickling":
        with TricklingHandshake(pki, None) as server:
            yield Peer(request.param, server.port, expected, env, None)
    else:
        with ScriptedBroker(pki, kind) as broker:
            yield Peer(request.param, broker.port, expected, env, broker)
