"""Fixtures of the fault tests: a `pilotlog serve` per test, and each hostile broker of the table."""

import pytest

from brokers import free_port
from fault_tables import PEERS, ScriptedBroker
from helpers import Serve, SilentListener


@pytest.fixture
def server(bundle, pki, tmp_path):
    servers = []

    def start(cert, *extra):
        servers.append(Serve(bundle, pki, tmp_path / "store", *extra, cert=cert))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(params=sorted(PEERS))
def peer(request, pki):
    kind, expected = PEERS[request.param]
    if kind == "closed":
        yield request.param, free_port(), expected
    elif kind == "silent":
        with SilentListener() as listener:
            yield request.param, listener.port, expected
    else:
        with ScriptedBroker(pki, kind) as broker:
            yield request.param, broker.port, expected
