"""Shared fixtures: the bundle (built once per session) and a Pilotlog runner per test."""

from pathlib import Path

import pytest

from brokers import PKI
from helpers import Pilotlog, build_bundle, unavailable


@pytest.fixture(scope="session")
def bundle() -> Path:
    return build_bundle()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    """A test CA, server (DNS:localhost) and client certificates, made with openssl at run time."""
    import shutil

    for tool in ("openssl", "keytool"):
        if not shutil.which(tool):
            unavailable("%s is needed to make the test PKI" % tool)
    return PKI(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def pilotlog(bundle, tmp_path) -> Pilotlog:
    return Pilotlog(bundle, tmp_path)


def pytest_terminal_summary(terminalreporter):
    """Say which Python versions ran the bundle's smoke suite, and how it went."""
    from test_matrix import RESULTS

    if RESULTS:
        terminalreporter.section("version matrix (bundle smoke suite)")
        for key in sorted(RESULTS, key=lambda k: [int(x) if x.isdigit() else 0 for x in k.split()[0].split(".")]):
            terminalreporter.write_line("  %-34s %s" % (key, RESULTS[key]))
