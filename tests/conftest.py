"""Shared fixtures: the bundle (built once per session) and a Pilotlog runner per test."""

import os
import stat
import sys
from pathlib import Path

import pytest

from brokers import PKI
from helpers import Pilotlog, build_bundle, unavailable

pytest_plugins = ["broker_fixtures"]  # rabbitmq, activemq, queue, consume: for interop and faults


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
    pki = PKI(str(tmp_path_factory.mktemp("pki")))
    PKI_DIRS.append(pki.dir)
    return pki


@pytest.fixture(scope="session")
def proxies(pki):
    """Real grid proxies (RFC 3820) of the test PKI's client and a few bad ones (tests/proxies.py)."""
    from proxies import Proxies

    return Proxies(pki)


#: The PKI made in this session (under PYTEST_DEBUG_TEMPROOT too): its keys are secrets to look for.
PKI_DIRS = []


@pytest.fixture
def pilotlog_env() -> dict:
    """Settings every ``pilotlog`` run of a test module gets; a module overrides this fixture
    (e.g. with ``helpers.broker_env(pki)``) instead of redefining ``pilotlog``."""
    return {}


@pytest.fixture
def pilotlog(bundle, tmp_path, pilotlog_env) -> Pilotlog:
    """The bundle as a user runs it, in a fresh directory with its own spool."""
    p = Pilotlog(bundle, tmp_path)
    p.env.update({k: str(v) for k, v in pilotlog_env.items()})
    return p


def _secrets():
    """The test secrets: the brokers' passcode and the body of every private key the PKI made."""
    import glob

    from brokers import PASSWORD
    from helpers import PASSCODE_SECRET, URL_SECRET

    found = {PASSWORD, PASSCODE_SECRET, URL_SECRET}
    for fixture_dir in PKI_DIRS:
        for key in glob.glob(os.path.join(fixture_dir, "*.key")):
            with open(key) as f:
                lines = [line for line in f.read().splitlines() if line and not line.startswith("-----")]
            found.update(lines[1:3])  # two full lines of base64 key material identify it
    return found


def _agent_files():
    """(path, text) of every file in a directory only the agent writes: spools (state.json,
    quarantine reasons, events) and serve's stores."""
    from helpers import AGENT_DIRS

    for top in sorted(AGENT_DIRS):
        for directory, _, names in os.walk(top):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    if not stat.S_ISREG(os.lstat(path).st_mode):
                        continue  # links and FIFOs planted by the fault tests: not written by the agent
                    with open(path, "rb") as f:
                        yield path, f.read().decode("utf-8", "replace")
                except OSError:
                    pass  # gone, or made unreadable by a fault test


def pytest_sessionfinish(session, exitstatus):
    """Secrets never appear in any output of the suite (issue 7), nor in any file the agent wrote
    (issue 15): passcodes, tokens in URLs, key material."""
    import ledger
    from helpers import SEEN_OUTPUT

    secrets = _secrets()
    scanned = SEEN_OUTPUT + list(_agent_files())
    leaks = sorted({command for command, text in scanned for secret in secrets if secret in text})
    ledger.attack(
        "secrets",
        "test passcodes, URL tokens and key material in every output and agent-written file",
        not leaks,
        "none found (%d secrets looked for)" % len(secrets),
        trials=len(scanned),
    )
    if ledger.ROWS:
        ledger.record(
            "secrets",
            "passcodes, URL tokens and private-key material in any output or file written",
            len(scanned),
            0,
            not leaks,
            0.0,
            extra="%d secrets looked for; leaks in: %s" % (len(secrets), ", ".join(leaks) or "none"),
        )
    if leaks:
        session.exitstatus = 1
        sys.stderr.write("\nSECRET LEAK: test secrets appeared in the output of: %s\n" % ", ".join(leaks))
    elif SEEN_OUTPUT:
        sys.stderr.write(
            "\nsecrets scan: %d outputs and %d written files scanned for %d test secrets, none found\n"
            % (len(SEEN_OUTPUT), len(scanned) - len(SEEN_OUTPUT), len(secrets))
        )


def pytest_terminal_summary(terminalreporter):
    """Say which Python versions ran the bundle's smoke suite, and how the fault trials went."""
    import ledger
    from test_matrix import RESULTS

    if ledger.ROWS:
        terminalreporter.section("fault trials (issue 7)")
        terminalreporter.write(ledger.markdown())
    if ledger.attacked():
        terminalreporter.section("security trials (issue 15)")
        terminalreporter.write(ledger.security_markdown())
    if ledger.ROWS or ledger.attacked():
        report = os.environ.get("PILOTLOG_FAULTS_REPORT")
        if report:
            ledger.write_report(report)
            terminalreporter.write_line("written to %s" % report)

    if RESULTS:
        terminalreporter.section("version matrix (bundle smoke suite)")
        for key in sorted(RESULTS, key=lambda k: [int(x) if x.isdigit() else 0 for x in k.split()[0].split(".")]):
            terminalreporter.write_line("  %-34s %s" % (key, RESULTS[key]))
