"""Generative robustness (issue 13): hypothesis varies what a worker node varies, the bundle runs.

Each example is one real process of ``dist/pilotlog`` on the oldest and the newest Python
(pyenv 3.6.15 and 3.13.0), in a world drawn from:

* argv: bytes that are not UTF-8, words with leading dashes, huge messages, JSON nested
  far beyond the documented limit, NaN;
* environment: locale unset / C / POSIX / UTF-8 / garbage, HOME unset or unwritable,
  ``PILOTLOG_*`` garbage, special files (``/dev/zero``, a FIFO, a directory) as config;
* file descriptors 0, 1, 2 closed, or 1/2 unwritable (``/dev/full``, a pipe with no reader);
* the working directory deleted (or mode 000 as ``nobody``);
* the spool path: a regular file, a link to our own directory, a dangling link, mode 000,
  5,000 characters, missing parents, another account's;
* the bytecode cache: cold, damaged, a file, unwritable.

Invariants checked on every example (the issue's list):

* ``run`` starts the child and returns its exact exit code;
* ``emit`` exits 0 or 2, never prints a traceback, and an exit-0 emit either stored a valid
  JSON event or said in one line why not;
* ``replay`` never removes an event it did not deliver (stdout sink: what reached stdout);
* no process runs past its deadline (a hang fails by timeout).

Counts: ``make test`` runs a few dozen examples per (Python, command), a couple of minutes
in all; ``PILOTLOG_FAULTS=full`` (``make faults``) ten times as many.  Every fault class
becomes a row of docs/reliability.md: trials, broken promises, outcome.
"""

import collections
import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ledger
from helpers import build_bundle, pyenv_python
from pilotlogger.events import validate

PYTHONS = ("3.6.15", "3.13.0")
EXAMPLES = ledger.trials(60, 600)  # per (Python, command): ~2 minutes in make test
DEADLINE = 45  # seconds: default network deadline 20 s plus start-up on a loaded machine
NOBODY = pwd.getpwnam("nobody") if "nobody" in {p.pw_name for p in pwd.getpwall()} else None

#: fault class -> [trials, broken promises, example of what broke, longest process (s)]
TALLY = collections.defaultdict(lambda: [0, 0, "", 0.0])


# -- the world ---------------------------------------------------------------------------------

SETTINGS_NAMES = (
    "SPOOL_NOPE",
    "SINK",
    "FORMAT",
    "SOURCE",
    "MAX_EVENTS",
    "MAX_BYTES",
    "MAX_EVENT_BYTES",
    "TIMEOUT",
    "DEADLINE",
    "WINDOW",
    "SITE",
    "PILOT_UUID",
    "BATCH_EVENTS",
    "PASSCODE_FILE",
    "CA_FILE",
    "CERT",
)
garbage_text = st.binary(min_size=0, max_size=40).map(
    lambda b: b.replace(b"\0", b"").decode("utf-8", "surrogateescape")
)
garbage_value = st.one_of(
    garbage_text,
    st.sampled_from(
        [
            "0",
            "-1",
            "1e999",
            "nan",
            "",
            " ",
            "stomp://127.0.0.1:1/q",
            "https://127.0.0.1:1/x",
            "1",
            "debug",
            "dirac",
            "/dev/zero",
        ]
    ),
)
message_bytes = st.one_of(  # an argv word holds no NUL and at most 128 KiB (MAX_ARG_STRLEN)
    st.binary(max_size=60).map(lambda b: b.replace(b"\0", b"")),
    st.sampled_from([b"-x", b"--", b"-", b"--help", b"-m", b"a\xffb", b"\xed\xa0\x80", "héllo".encode()]),
    st.integers(min_value=1, max_value=120000).map(lambda n: b"y" * n),
)
data_args = st.one_of(
    st.just([]),
    st.integers(min_value=1, max_value=3000).map(lambda n: [b"-d", b"k:=" + b"[" * n + b"]" * n]),
    st.sampled_from(
        [
            [b"-d", b"k:=NaN"],
            [b"-d", b"i:=1e999"],
            [b"--data", b'{"a": Infinity}'],
            [b"-d", b"\xff=\xfe"],
            [b"--data", b'{"k": "\\ud800"}'],
            [b"-d", b"k:=" + b"1" * 5000],
            [b"-d", b"=v"],
        ]
    ),
)
phases = st.one_of(
    st.sampled_from([b"boot", b"log", b"shutdown", b"x" * 65, b"-boot", b"b\xffoot", b"1st"]),
    st.binary(min_size=1, max_size=10).map(lambda b: b.replace(b"\0", b"") or b"p"),
)

world = st.fixed_dictionaries(
    {
        "locale": st.sampled_from([None, "C", "POSIX", "C.UTF-8", "xx_YY.NOPE"]),
        "home": st.sampled_from(["normal", "unset", "unwritable"]),
        "garbage": st.lists(st.tuples(st.sampled_from(SETTINGS_NAMES), garbage_value), max_size=2),
        "config": st.sampled_from([None, None, "/dev/zero", "fifo", "directory", "/dev/null", "huge"]),
        "fds": st.sampled_from(["", "", "<&-", ">&-", "2>&-", ">/dev/full", "2>/dev/full", "<&- >&- 2>&-", "epipe"]),
        "cwd": st.sampled_from(["normal", "normal", "deleted"]),
        "spool": st.sampled_from(
            [
                "fresh",
                "fresh",
                "relative",
                "parents",
                "file",
                "own link",
                "dangling link",
                "mode 000",
                "too long",
                "other owner",
            ]
        ),
        "cache": st.sampled_from(["warm", "warm", "cold", "damaged", "a file", "unwritable"]),
        "nobody": st.booleans() if NOBODY else st.just(False),
    }
)


class World:
    """Builds one drawn world in a fresh directory and runs the bundle in it."""

    def __init__(self, drawn: dict, python: str, bundle: str, warm_cache: str):
        self.drawn, self.python, self.bundle = drawn, python, bundle
        self.base = tempfile.mkdtemp(prefix="pilotlog-robust-")
        os.chmod(self.base, 0o755)
        self.user = NOBODY if drawn["nobody"] else None
        if self.user:  # pyenv lives in root's private home: nobody runs the system Python
            self.python = shutil.which("python3", path="/usr/bin:/bin")
        self.faults = []
        self.env = {"PATH": "/usr/bin:/bin"}
        self._locale(drawn["locale"])
        self._home(drawn["home"])
        self._cache(drawn["cache"], warm_cache)
        self.spool = self._spool(drawn["spool"])
        os.mkdir(os.path.join(self.base, "work"), 0o755)
        self._own(os.path.join(self.base, "work"))
        self._config(drawn["config"])
        for name, value in drawn["garbage"]:
            self.env["PILOTLOG_" + name] = value
            self.faults.append("env: PILOTLOG_* garbage")
        self.marker = os.path.join(self.base, "work", "child-started")

    def _own(self, path: str) -> None:
        if self.user:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def _dir(self, name: str) -> str:
        path = os.path.join(self.base, name)
        os.mkdir(path, 0o700)
        self._own(path)
        return path

    def _locale(self, locale):
        if locale:
            self.env["LC_ALL"] = self.env["LANG"] = locale
        if locale != "C.UTF-8":
            self.faults.append("locale %s" % (locale or "unset"))

    def _home(self, home):
        if home == "normal":
            self.env["HOME"] = self._dir("home")
        elif home == "unwritable":
            self.env["HOME"] = "/proc/pilotlog-home"
        if home != "normal":
            self.faults.append("HOME %s" % home)

    def _cache(self, kind, warm):
        if kind == "warm" and not self.user:
            self.env["PILOTLOG_CACHE"] = warm
            return
        self.faults.append("cache %s" % kind)
        path = os.path.join(self.base, "cache")
        if kind in ("cold", "warm"):
            pass
        elif kind == "damaged":
            shutil.copytree(warm, path)
            for key in os.listdir(path):
                os.unlink(os.path.join(path, key, "pilotlogger", "events.py"))
                for pyc in os.listdir(os.path.join(path, key, "pilotlogger", "__pycache__")):
                    if pyc.startswith("cli."):
                        with open(os.path.join(path, key, "pilotlogger", "__pycache__", pyc), "r+b") as f:
                            f.seek(16)
                            f.write(b"\xff" * 32)
            for dirpath, _, _ in os.walk(path):
                self._own(dirpath)
                for name in os.listdir(dirpath):
                    self._own(os.path.join(dirpath, name))
        elif kind == "a file":
            with open(path, "w") as f:
                f.write("not a directory")
        else:
            path = "/proc/pilotlog-cache"
        self.env["PILOTLOG_CACHE"] = path

    def _spool(self, kind):
        if kind != "fresh":
            self.faults.append("spool %s" % kind)
        if kind == "relative":
            self.env["PILOTLOG_SPOOL"] = "spool"
            return None  # under the working directory
        path = os.path.join(self.base, "spool")
        if kind == "parents":
            path = os.path.join(self.base, "logs", "deeper", "spool")
        elif kind == "file":
            with open(path, "w") as f:
                f.write("not a spool")
            self._own(path)
        elif kind == "own link":
            os.symlink(self._dir("real-spool"), path)
        elif kind == "dangling link":
            os.symlink(os.path.join(self.base, "nowhere"), path)
        elif kind == "mode 000":
            self._dir("spool")
            os.chmod(path, 0)
        elif kind == "too long":
            path = os.path.join(self.base, *(["d" * 200] * 25))
        elif kind == "other owner":
            os.mkdir(path, 0o755)
            other = NOBODY if not self.user else pwd.getpwuid(0)
            if other:
                os.chown(path, other.pw_uid, other.pw_gid)
        self.env["PILOTLOG_SPOOL"] = path
        return path

    def _config(self, kind):
        if kind is None:
            return
        self.faults.append("config %s" % kind)
        path = {"directory": self.base}.get(kind, kind)
        if kind == "fifo":
            path = os.path.join(self.base, "fifo")
            os.mkfifo(path)
        elif kind == "huge":
            path = os.path.join(self.base, "huge.json")
            with open(path, "w") as f:
                f.write("{" + " " * (5 * 1024 * 1024) + "}")
        self.env["PILOTLOG_CONFIG"] = path

    def seed(self, count: int = 2) -> None:
        """A few events (one non-ASCII) in a usable spool, written through the bundle itself."""
        for i in range(count):
            self.run([b"emit", b"log", b"-m", "seed %d é" % i], fds="", cwd="normal")

    def run(self, argv, fds=None, cwd=None):
        """The bundle in this world; stdout and stderr captured unless the world closes or breaks them."""
        fds = self.drawn["fds"] if fds is None else fds
        cwd = self.drawn["cwd"] if cwd is None else cwd
        setup = "cd %s" % os.path.join(self.base, "work")
        if cwd == "deleted":
            setup += " && mkdir gone && cd gone && rmdir ../gone"
        script = setup + ' && exec "$@" ' + (fds if fds != "epipe" else "")
        prefix = []
        if self.user:
            prefix = ["setpriv", "--reuid=%d" % self.user.pw_uid, "--regid=%d" % self.user.pw_gid, "--clear-groups"]
        cmd = prefix + ["sh", "-c", script, "sh", self.python, "-I", "-S", self.bundle] + list(argv)
        stdout = subprocess.PIPE
        if fds == "epipe":  # stdout is a pipe whose reader has gone
            reader, stdout = os.pipe()
            os.close(reader)
        try:
            started = time.monotonic()
            p = subprocess.run(cmd, env=self.env, stdout=stdout, stderr=subprocess.PIPE, timeout=DEADLINE)
            p.seconds = time.monotonic() - started
        finally:
            if fds == "epipe":
                os.close(stdout)
        p.stdout = p.stdout or b""
        return p

    # -- what is in the spool -------------------------------------------------------------------

    def spool_dir(self):
        return self.spool or os.path.join(self.base, "work", "spool")

    def files(self, sub: str) -> dict:
        """name -> bytes of the files in events/ or quarantine/ (empty if unreadable)."""
        d = os.path.join(self.spool_dir(), sub)
        try:
            names = os.listdir(d)
        except OSError:
            return {}
        out = {}
        for name in names:
            try:
                with open(os.path.join(d, name), "rb") as f:
                    out[name] = f.read()
            except OSError:
                pass
        return out

    def cleanup(self):
        for dirpath, dirnames, _ in os.walk(self.base):
            for d in dirnames:
                try:
                    os.chmod(os.path.join(dirpath, d), 0o700)
                except OSError:
                    pass
        shutil.rmtree(self.base, ignore_errors=True)


def strict_event(raw: bytes) -> dict:
    """A stored event: UTF-8, strict JSON (no NaN), schema v1."""

    def refuse(constant):
        raise ValueError(constant)

    return validate(json.loads(raw.decode("utf-8"), parse_constant=refuse))


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_caches():
    """One warm bytecode cache per Python (most examples use it: a cold start costs ~0.3 s)."""
    bundle = str(build_bundle())
    base = tempfile.mkdtemp(prefix="pilotlog-warm-")
    caches = {}
    for version in PYTHONS:
        python = pyenv_python(version)
        caches[version] = os.path.join(base, version)
        subprocess.run(
            [python, "-I", "-S", bundle, "--version"],
            env={"PILOTLOG_CACHE": caches[version]},
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=60,
        )
        # compile every module, not only the ones --version imports
        (key,) = os.listdir(caches[version])
        subprocess.run([python, "-m", "compileall", "-q", os.path.join(caches[version], key)], check=True, timeout=120)
    yield caches
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def ledger_rows():
    yield
    for fault, (trials, broken, what, longest) in sorted(TALLY.items()):
        ledger.record(
            "robustness",
            fault,
            trials,
            broken,
            broken == 0,
            longest,
            what,
            extra="examples that broke an invariant are counted as lost; Python %s" % " and ".join(PYTHONS),
        )


FDS = {
    "<&-": "stdin closed",
    ">&-": "stdout closed",
    "2>&-": "stderr closed",
    ">/dev/full": "stdout /dev/full",
    "2>/dev/full": "stderr /dev/full",
    "<&- >&- 2>&-": "fds 0, 1, 2 closed",
    "epipe": "stdout a pipe with no reader",
}


def tally(world: World, command: str, broken: str, seconds: float) -> None:
    """Count the example under each fault class it had, and under its command."""
    faults = world.faults + ["%s: every example" % command]
    if world.drawn["fds"]:
        faults.append(FDS[world.drawn["fds"]])
    if world.drawn["cwd"] == "deleted":
        faults.append("working directory deleted")
    if world.user:
        faults.append("run as nobody (system Python)")
    for fault in set(faults):
        row = TALLY[fault]
        row[0] += 1
        row[3] = max(row[3], seconds)
        if broken:
            row[1] += 1
            row[2] = row[2] or broken[:140]


@contextlib.contextmanager
def world_of(version: str, warm_caches: dict, drawn: dict):
    """The drawn world, built for one example and removed after it."""
    w = World(drawn, pyenv_python(version), str(build_bundle()), warm_caches[version])
    try:
        yield w
    finally:
        w.cleanup()


def verdict(w: World, command: str, broken: str, p) -> None:
    """Count the example in the ledger, then fail it if it broke an invariant."""
    tally(w, command, broken, p.seconds)
    assert not broken, (w.drawn, broken)


def no_traceback(p) -> bool:
    return b"Traceback" not in p.stderr and b"internal error" not in p.stderr


def lines(data: bytes) -> list:
    return [line for line in data.splitlines() if line.strip()]


common = ledger.generated(EXAMPLES)


# -- the invariants ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", PYTHONS)
@common
@given(drawn=world, code=st.integers(min_value=0, max_value=255), extra=st.lists(message_bytes, max_size=2))
def test_run_starts_the_child_and_returns_its_exact_code(version, warm_caches, drawn, code, extra):
    with world_of(version, warm_caches, drawn) as w:
        child = [b"sh", b"-c", b'echo started > "$0"; exit ' + str(code).encode(), w.marker.encode()] + extra
        p = w.run([b"run", b"--"] + child)
        started = os.path.exists(w.marker)
        broken = (
            ""
            if p.returncode == code and started and no_traceback(p)
            else ("exit %s for %s, child started: %s; %s" % (p.returncode, code, started, p.stderr[-300:]))
        )
        verdict(w, "run", broken, p)


@pytest.mark.parametrize("version", PYTHONS)
@common
@given(drawn=world, phase=phases, message=message_bytes, data=data_args, send=st.booleans())
def test_emit_exits_0_or_2_and_stores_a_valid_event_or_says_why(
    version, warm_caches, drawn, phase, message, data, send
):
    with world_of(version, warm_caches, drawn) as w:
        before = w.files("events")
        p = w.run([b"emit", phase, b"-m", message] + data + ([b"--send"] if send else []))
        new = {n: raw for n, raw in w.files("events").items() if n not in before}
        said = lines(p.stderr)
        stderr_seen = "2>" not in drawn["fds"]
        broken = ""
        if p.returncode not in (0, 2) or not no_traceback(p):
            broken = "exit %d: %s" % (p.returncode, p.stderr[-300:])
        elif stderr_seen and len(said) > (2 if send else 1):
            broken = "more than one line: %r" % said
        elif p.returncode == 2 and (new or (stderr_seen and not said)):
            broken = "usage error that stored %d event(s) or said nothing" % len(new)
        elif p.returncode == 0:
            if len(new) > 1:
                broken = "%d events stored by one emit" % len(new)
            for raw in new.values():
                try:
                    strict_event(raw)
                except ValueError as exc:
                    broken = "stored an invalid event (%s): %r" % (exc, raw[:200])
            if not new and stderr_seen and not said:
                broken = "exit 0, nothing stored, nothing said"
        verdict(w, "emit", broken, p)


@pytest.mark.parametrize("version", PYTHONS)
@common
@given(drawn=world, strict=st.booleans())
def test_replay_never_removes_an_event_it_did_not_deliver(version, warm_caches, drawn, strict):
    with world_of(version, warm_caches, drawn) as w:
        w.seed()
        before = w.files("events")
        p = w.run([b"replay"] + ([b"--strict"] if strict else []))
        after = set(w.files("events")) | {n for n in w.files("quarantine") if not n.endswith(".reason")}
        delivered = set()
        for line in lines(p.stdout):
            try:
                delivered.add(json.loads(line.decode("utf-8"))["id"])
            except (ValueError, KeyError, TypeError):
                pass
        gone = [n for n in before if n not in after]
        lost = [n for n in gone if json.loads(before[n].decode("utf-8"))["id"] not in delivered]
        broken = ""
        if lost:
            broken = "%d event(s) removed but not delivered; %s" % (len(lost), p.stderr[-200:])
        elif p.returncode not in ((0, 2, 3) if strict else (0, 2)) or not no_traceback(p):
            broken = "exit %d: %s" % (p.returncode, p.stderr[-300:])
        verdict(w, "replay", broken, p)
