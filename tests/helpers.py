"""Helpers shared by the tests: the bundle as a user runs it, a hermetic environment."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "dist" / "pilotlog"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # in-process tests import the package from the checkout


IN_CI = os.environ.get("CI") == "true"


def unavailable(reason: str):
    """A prerequisite is missing: fail under CI=true (never a silent skip), skip elsewhere."""
    import pytest

    if IN_CI:
        pytest.fail("CI=true and a test cannot run: " + reason, pytrace=False)
    pytest.skip(reason)


class SilentListener:
    """A TCP listener on loopback that accepts connections and never says a word.

    The fault a real broker or server cannot be made to show: the deadlines must hold.
    ``held`` lists the accepted connections (so a test can check the client came).
    """

    def __init__(self):
        import socket
        import threading

        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.held, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        import socket

        while not self._stop.is_set():
            try:
                self.held.append(self.server.accept()[0])
            except socket.timeout:
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for conn in self.held:
            conn.close()
        self.server.close()


def build_bundle() -> Path:
    """Build dist/pilotlog with the Makefile rule (a no-op when it is up to date)."""
    subprocess.run(["make", "-s", "-C", str(ROOT), "dist/pilotlog"], check=True, stdout=subprocess.DEVNULL)
    return BUNDLE


def clean_env(**extra) -> dict:
    """An environment with nothing of ours or DIRAC's leaking in from the caller."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


#: Every stdout/stderr the Pilotlog runner saw: scanned for test secrets at the end of the session.
SEEN_OUTPUT = []
#: Directories only the agent writes into (spools, serve's stores): every file in them is scanned too.
AGENT_DIRS = set()
#: Secrets the security tests hand to pilotlog (besides the brokers' passcode and the PKI's keys).
PASSCODE_SECRET = "hunter2-Pa55c0de-9x"
URL_SECRET = "Tok3nS3cr3tXyZ"


class Pilotlog:
    """Runs ``python -I -S dist/pilotlog ...`` from a directory outside the repository."""

    def __init__(self, bundle: Path, cwd: Path, python: str = sys.executable):
        self.bundle, self.cwd, self.python = bundle, cwd, python
        self.spool = cwd / "spool"
        self.env = clean_env(PILOTLOG_SPOOL=self.spool)

    def __call__(self, *args, env=None, input=None, timeout=60, **kw) -> subprocess.CompletedProcess:
        full_env = dict(self.env)
        full_env.update({k: str(v) for k, v in (env or {}).items()})
        p = subprocess.run(
            [self.python, "-I", "-S", str(self.bundle)] + [str(a) for a in args],
            cwd=str(self.cwd), env=full_env, input=input, timeout=timeout,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, **kw
        )
        SEEN_OUTPUT.append((" ".join(str(a) for a in args[:2]), p.stdout + p.stderr))
        AGENT_DIRS.add(str(full_env.get("PILOTLOG_SPOOL", self.spool)))
        return p

    def depth(self) -> int:
        """How many events are spooled; safe while a replay is removing files."""
        d = self.spool / "events"
        return len(os.listdir(str(d))) if d.is_dir() else 0

    def events(self) -> list:
        """The events in the spool, oldest file name first."""
        d = self.spool / "events"
        return [json.loads((d / n).read_text()) for n in sorted(os.listdir(str(d)))] if d.is_dir() else []


def run_loops(tags, count, spool_dir, source, pilot="3f2504e0-4f89-41d3-9a0c-0305e82c3301", **env):
    """Processes that each emit ``count`` events through the real CLI code (tests/emit_loop.py),
    printing ``TAG-i`` after each emit returned: the caller knows what was acknowledged."""
    env = clean_env(PILOTLOG_SPOOL=spool_dir, PILOTLOG_PILOT_UUID=pilot, **env)
    return [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "emit_loop.py"), source, tag, str(count)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
        )
        for tag in tags
    ]


def fill_spool(spool_dir, n: int, pilot: str = "p1") -> set:
    """n valid ``log`` events written straight into a spool (fast set-up, no fsync); their ids."""
    from pilotlogger.events import make_event, render
    from pilotlogger.spool import EventName, Spool

    spool = Spool(str(spool_dir))
    spool.ensure()
    ids, t0 = set(), time.time()
    for i in range(n):
        event = make_event("log", "line %d" % i, pilot=pilot, seq=i + 1, epoch=t0 + i * 1e-6, data={"i": i})
        with open(os.path.join(spool.events_dir, EventName.for_event(event)), "w") as f:
            f.write(render(event, "native") + "\n")
        ids.add(event["id"])
    return ids


def stderr_lines(proc) -> list:
    return [line for line in proc.stderr.splitlines() if line.strip()]
