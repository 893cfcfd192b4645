"""Helpers shared by the tests: the bundle as a user runs it, a hermetic environment."""

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
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


def pyenv_python(version: str) -> str:
    """The pyenv interpreter of ``version`` (e.g. "3.6.15"); unavailable() when it is not installed."""
    root = subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    exe = os.path.join(root or os.path.expanduser("~/.pyenv"), "versions", version, "bin", "python")
    if not os.access(exe, os.X_OK):
        unavailable("Python %s is not installed with pyenv" % version)
    return exe


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

    def _env(self, env) -> dict:
        full_env = dict(self.env)
        full_env.update({k: str(v) for k, v in (env or {}).items()})
        AGENT_DIRS.add(str(full_env.get("PILOTLOG_SPOOL", self.spool)))
        return full_env

    def start(self, *args, env=None, **kw) -> subprocess.Popen:
        """The command running in the background (its stderr a text pipe), for a fault made meanwhile;
        ``kw`` for Popen (e.g. ``stdout=subprocess.PIPE``)."""
        return subprocess.Popen(
            [self.python, "-I", "-S", str(self.bundle)] + [str(a) for a in args],
            cwd=str(self.cwd),
            env=self._env(env),
            stderr=subprocess.PIPE,
            universal_newlines=True,
            **kw,
        )

    def __call__(self, *args, env=None, input=None, timeout=60, **kw) -> subprocess.CompletedProcess:
        p = subprocess.run(
            [self.python, "-I", "-S", str(self.bundle)] + [str(a) for a in args],
            cwd=str(self.cwd),
            env=self._env(env),
            input=input,
            timeout=timeout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            **kw,
        )
        SEEN_OUTPUT.append((" ".join(str(a) for a in args[:2]), p.stdout + p.stderr))
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
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
        )
        for tag in tags
    ]


def hampered(bundle, cwd, *options_and_args, env=None, **kw) -> subprocess.Popen:
    """``pilotlog`` from the bundle in a process hampered on purpose (tests/hampered_run.py: every
    fsync stalled on demand, a SIGTERM as the child starts), in its own session (so that the
    child and what it leaves behind can be ended with it); its spool is ``cwd/spool``."""
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(ROOT / "tests" / "hampered_run.py"), str(bundle), *options_and_args],
        cwd=str(cwd),
        env=clean_env(PILOTLOG_SPOOL=Path(cwd) / "spool", **(env or {})),
        universal_newlines=True,
        start_new_session=True,
        **kw,
    )


#: The promise on every call of the Python API (issue 24): it never waits this long for the spool lock.
#: Far above a normal wait (another put's write and fsync: milliseconds, at most 31 ms measured beside
#: a 6 GB writer), far below the 5 s lock_timeout that an inherited or self-held lock costs.
LOCK_WAIT_BOUND = 0.5


class ApiPilot:
    """The outcome of one run of tests/api_pilot.py (threads, forked workers, signal handlers):
    what every process made, what the spool kept, and the promise checked on it (:meth:`broken`)."""

    def __init__(self, python: str, import_path, spec: dict, tmp_path, timeout: float = 60):
        spec = dict(spec, spool=str(tmp_path / "spool"), report=str(tmp_path / "reports"))
        os.mkdir(spec["report"])
        started = time.monotonic()
        proc = subprocess.Popen(
            [python, "-I", "-S", str(ROOT / "tests" / "api_pilot.py"), str(import_path), json.dumps(spec)],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            start_new_session=True,  # its workers too can be ended if it hangs
        )
        try:
            out, err = proc.communicate(timeout=timeout)
            self.hung = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
            self.hung = True
        self.seconds, self.returncode, self.stderr = time.monotonic() - started, proc.returncode, err
        self.warnings = [line for line in err.splitlines() if line.startswith("pilotlog:")]
        self.reports = []
        for name in os.listdir(spec["report"]):
            with open(os.path.join(spec["report"], name)) as f:
                self.reports.append(json.load(f))
        self.made = [m for r in self.reports for m in r["records"]]
        events = os.path.join(spec["spool"], "events")
        self.kept = []
        for name in sorted(os.listdir(events)) if os.path.isdir(events) else ():
            with open(os.path.join(events, name)) as f:
                self.kept.append(json.load(f)["message"])
        self.longest_lock_wait = max((r["longest_lock_wait"] for r in self.reports), default=0.0)
        self.longest_call = max((r["longest_call"] for r in self.reports), default=0.0)
        self.expected_reports = 1 + spec.get("workers", 0)

    def broken(self) -> str:
        """Which promise this run broke ("" when none): every process ended and reported, no record
        lost or doubled, no call waited LOCK_WAIT_BOUND for the spool lock, nothing said on stderr."""
        lost = sorted(set(self.made) - set(self.kept))
        if self.hung or self.returncode != 0 or len(self.reports) != self.expected_reports:
            return "hung %s, exit %s, %d of %d processes reported; %d record(s) lost; stderr %s" % (
                self.hung,
                self.returncode,
                len(self.reports),
                self.expected_reports,
                len(lost),
                self.stderr[-300:],
            )
        if lost:
            return "%d of %d record(s) lost, e.g. %s; %s" % (len(lost), len(self.made), lost[:3], self.warnings[:1])
        if len(self.kept) != len(set(self.kept)) or set(self.kept) != set(self.made):
            return "the spool holds records no call made, or twice: %d kept, %d made" % (len(self.kept), len(self.made))
        if self.longest_lock_wait > LOCK_WAIT_BOUND:
            return "a call waited %.2f s for the spool lock" % self.longest_lock_wait
        if self.warnings:
            return "said: %s" % self.warnings[0]
        return ""


def make_events(n: int, pilot: str = "p1", message: str = "line %d", shutdown: bool = False, context=None) -> list:
    """n valid events of one pilot, a microsecond apart: ``log`` lines (``message % i``), the last
    a ``shutdown`` with exit_code 3 when asked."""
    from pilotlogger.events import make_event

    t0, events = time.time(), []
    for i in range(n):
        last = shutdown and i == n - 1
        events.append(
            make_event(
                "shutdown" if last else "log",
                message % i,
                pilot=pilot,
                seq=i + 1,
                epoch=t0 + i * 1e-6,
                data={"exit_code": 3} if last else {"i": i},
                context=context,
            )
        )
    return events


def fill_spool(spool_dir, n: int, pilot: str = "p1", **kw) -> list:
    """``make_events(n, pilot, **kw)`` written straight into a spool (fast set-up, no fsync); the events."""
    from pilotlogger.events import render
    from pilotlogger.spool import EventName, Spool

    spool = Spool(str(spool_dir))
    spool.ensure()
    events = make_events(n, pilot, **kw)
    for event in events:
        with open(os.path.join(spool.events_dir, EventName.for_event(event)), "w") as f:
            f.write(render(event, "native") + "\n")
    return events


def replay(pilotlog, **env):
    """``pilotlog replay`` with ``env`` added: (the completed process, seconds it took)."""
    started = time.monotonic()
    p = pilotlog("replay", env=env)
    return p, time.monotonic() - started


class Page:
    """An HTML page as a test reads it: ``tags`` [(tag, attrs)…], ``text`` pieces, ``urls`` it loads."""

    def __init__(self, html: str):
        from html.parser import HTMLParser

        page = self
        self.tags, self.text = [], []

        class Parser(HTMLParser):
            def handle_starttag(self, tag, attrs):
                page.tags.append((tag, dict(attrs)))

            def handle_data(self, data):
                page.text.append(data)

        Parser().feed(html)

    @property
    def urls(self) -> list:
        return [a[k] for _, a in self.tags for k in ("src", "href") if a.get(k)]


SERVE_PATH = "/WorkloadManagement/TornadoPilotLogging"


@contextmanager
def serving(directory, context=None, **options):
    """serve's receiver in-process (pilotlogger.serve.Server, what `pilotlog serve` runs) on a free
    loopback port, serving from a thread until the block ends."""
    import threading

    from pilotlogger.serve import Server

    AGENT_DIRS.add(str(directory))
    server = Server("127.0.0.1:0", str(directory), context, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.serving.wait(10)  # its threads wait in accept: a test counting threads counts them all
    try:
        yield server
    finally:
        server.shutdown()
        server.close()
        thread.join(10)


class Serve:
    """`pilotlog serve` from the bundle, as a site would run it (TLS, client certificates required)."""

    def __init__(self, bundle, pki, directory, *extra, cert="server", python=sys.executable, log=None):
        from brokers import free_port

        self.bundle, self.pki, self.dir, self.extra, self.cert = bundle, pki, directory, list(extra), cert
        self.python, self.log = python, log  # log: a file for serve's stderr (else it is dropped)
        self.port = free_port()
        self.proc = None
        AGENT_DIRS.add(str(directory))  # the stored logs are scanned for secrets
        self.start()

    @property
    def url(self):
        return "https://localhost:%d%s" % (self.port, SERVE_PATH)

    def start(self):
        import socket

        p = self.pki.path
        cmd = [
            self.python,
            "-I",
            "-S",
            str(self.bundle),
            "serve",
            "--listen",
            "127.0.0.1:%d" % self.port,
            "--dir",
            str(self.dir),
            "--server-cert",
            p(self.cert + ".pem"),
            "--server-key",
            p(self.cert + ".key"),
            "--client-ca",
            p("ca.pem"),
            "--require-client-cert",
        ] + self.extra
        if not self.log:
            self.proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        else:
            with open(str(self.log), "a") as log:
                self.proc = subprocess.Popen(cmd, stderr=log)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("pilotlog serve did not start")

    def stop(self):
        import signal

        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def post(self, body: bytes, content_type: str, cert=True):
        import http.client
        import ssl

        ctx = ssl.create_default_context(cafile=self.pki.path("ca.pem"))
        if cert:
            ctx.load_cert_chain(self.pki.path("client.pem"), self.pki.path("client.key"))
        conn = http.client.HTTPSConnection("localhost", self.port, context=ctx, timeout=10)
        conn.request("POST", SERVE_PATH, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, json.loads(response.read())


def broker_env(pki) -> dict:
    """What a pilot needs to reach the test brokers: their CA and the test login."""
    from brokers import PASSWORD, USER

    return {"PILOTLOG_CA_FILE": pki.path("ca.pem"), "PILOTLOG_USER": USER, "PILOTLOG_PASSCODE": PASSWORD}


def https_env(pki) -> dict:
    """What a pilot needs to reach `pilotlog serve`: the CA and a client certificate."""
    return {
        "PILOTLOG_CA_FILE": pki.path("ca.pem"),
        "PILOTLOG_CERT": pki.path("client.pem"),
        "PILOTLOG_KEY": pki.path("client.key"),
    }


def stderr_lines(proc) -> list:
    return [line for line in proc.stderr.splitlines() if line.strip()]
