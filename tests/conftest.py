"""Shared fixtures: the bundle (built once per session) and a Pilotlog runner per test."""

from pathlib import Path

import pytest

from helpers import Pilotlog, build_bundle


@pytest.fixture(scope="session")
def bundle() -> Path:
    return build_bundle()


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
