"""The scale suite (issue 16): one real RabbitMQ cluster for all its tests, and the figures.

``make test`` runs it at reduced size; ``make scale`` (PILOTLOG_SCALE=full) at full size and
writes the measured figures and the paper model into docs/scale.md.
"""

import os

import pytest

import scale_report
from cluster import RabbitCluster
from helpers import unavailable


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, pki):
    if not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"):
        unavailable("RabbitMQ is not installed (make test installs it: apt-get install rabbitmq-server)")
    c = RabbitCluster(str(tmp_path_factory.mktemp("cluster")), pki)
    try:
        c.start()
    except Exception as exc:
        c.shutdown()
        unavailable("the RabbitMQ cluster cannot start: %s" % exc)
    yield c
    c.shutdown()


def pytest_terminal_summary(terminalreporter):
    if scale_report.MEASURED:
        scale_report.record_run()
        terminalreporter.section("scale figures (issue 16)")
        terminalreporter.write(scale_report.markdown())
        path = os.environ.get("PILOTLOG_SCALE_REPORT")
        if path:
            scale_report.write_report(path)
            terminalreporter.write_line("written to %s" % path)
