"""DIRAC's own pilot wrapper, run for real: the harness of tests/test_dirac_pilot.py (and of the relay's tests).

A pilot as a DIRAC SiteDirector sends it, end to end on loopback:

* :func:`generate_wrapper` — the batch-job script made by DIRAC 9.1.22's own
  ``PilotWrapper.pilotWrapperScript()`` (run in the DIRAC venv, tests/dirac/pilot_wrapper.py;
  nothing of DIRAC is imported here), with the SiteDirector's keyword arguments;
* :class:`PilotFiles` — its ``location``: a loopback HTTPS server (the test PKI's
  ``server.pem``, ``DNS:localhost``) serving ``checksums.sha512``, ``pilot.json`` and
  ``pilot.tar``, the tar holding tests/dirac/standin_pilot.py as ``dirac-pilot.py`` (a stand-in
  that logs and posts exactly as DIRAC's Pilot does; its docstring says from which code);
* :func:`worker_env` — a worker node's environment: ``python3`` on ``PATH``, the grid variables
  the wrapper's download (``X509_CERT_DIR``: the test CA's hashed directory, as the wrapper
  reads it) and the Pilot's POSTs (``X509_CERT_DIR``, ``X509_USER_PROXY``: a proxy-style PEM)
  use, and the SiteDirector's ``DIRAC_PILOT_STAMP``;
* :func:`run_wrapper` — ``bash WRAPPER`` as the batch system runs it (:func:`start_wrapper` in the
  background; :func:`wait_for_pid` for the stand-in's ``hang``, to kill it in a command);
* :func:`stored_log`, :func:`masked`, :func:`direct_reference` — what DIRAC's
  ``TornadoPilotLoggingHandler`` stored for a pilot, and the same with what differs between two
  runs masked, so a run through pilotlogger can be compared byte for byte with the Pilot
  posting directly to DIRAC.

For the relay's tests::

    pilot = new_stamp()
    with PilotFiles(pki, tmp_path / "files", bufsize=1) as files:
        wrapper = generate_wrapper(tmp_path / "wrapper.sh", files.url, tmp_path, RELAY_OPTIONS)
        env = dict(worker_env(pki, tmp_path, pilot), **settings_of_pilotlog)
        p = pilotlog("run", "--relay", "--", "bash", wrapper, env=env)
    assert masked(stored_log(dirac, pilot), pilot) == direct_reference(dirac, pki, tmp_path / "ref", bufsize=1)

The reference run uses the same pilot options with ``PILOTLOG_RELAY_URL`` set to DIRAC's own
URL, so the two runs differ only in what :func:`masked` masks.
"""

import hashlib
import io
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from brokers import free_port
from helpers import SEEN_OUTPUT
from test_dirac import dirac_python

HERE = Path(__file__).resolve().parent / "dirac"
STANDIN = HERE / "standin_pilot.py"

#: The pilot options of a VO that sends the Pilot's remote logging to the relay (issue 23):
#: the wrapper is an unquoted bash here-document, so bash puts the variable's value in.
RELAY_OPTIONS = "-z -g $PILOTLOG_RELAY_URL --wnVO=dteam"


def new_stamp() -> str:
    """A pilot stamp as the SiteDirector makes one for DIRAC_PILOT_STAMP (32 of [0-9a-z])."""
    return uuid.uuid4().hex


class PilotFiles:
    """The wrapper's ``location``: checksums.sha512, pilot.json and pilot.tar over loopback HTTPS.

    ``bufsize`` is the pilot.json ``RemoteLoggerBufsize``; ``corrupt`` names a file whose
    checksum is served wrong (a checksum mismatch). ``fetched`` lists the paths asked for.
    ``gate`` (a threading.Event): nothing is served before it is set (within 120 s), so the
    Pilot starts only once the test has seen what it waits for.
    """

    def __init__(self, pki, directory: Path, bufsize: int = 1000, corrupt: "str | None" = None, gate=None):
        directory.mkdir(parents=True, exist_ok=True)
        standin = STANDIN.read_bytes()
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w") as t:
            info = tarfile.TarInfo("dirac-pilot.py")
            info.size, info.mode = len(standin), 0o755
            t.addfile(info, io.BytesIO(standin))
        files = {
            "pilot.json": json.dumps({"Defaults": {"Pilot": {"RemoteLoggerBufsize": bufsize}}}).encode(),
            "pilot.tar": tar.getvalue(),
            "dirac-pilot.py": standin,  # in the tar; checked after extraction, as DIRAC's pilot files are
        }
        sums = []
        for name, content in files.items():
            digest = hashlib.sha512(content + (b"corrupted" if name == corrupt else b"")).hexdigest()
            sums.append("%s  %s\n" % (digest, name))
        for name in ("pilot.json", "pilot.tar"):
            (directory / name).write_bytes(files[name])
        (directory / "checksums.sha512").write_text("".join(sums))
        self.fetched = []
        files_served = self.fetched

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                if gate is not None:
                    gate.wait(120)
                super().do_GET()

            def log_message(self, *args):
                files_served.append(self.path)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.path("server.pem"), pki.path("server.key"))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(directory)))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = "https://localhost:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def unreachable_location() -> str:
    """A location nothing listens at: the download fails as when a site cannot reach the file server."""
    return "https://localhost:%d" % free_port()


def generate_wrapper(path: Path, location: str, workdir: Path, pilot_options: str = RELAY_OPTIONS, **kwargs) -> Path:
    """DIRAC's pilot wrapper for ``location`` and ``pilot_options``, written to ``path``.

    ``CVMFS_locations`` points under ``workdir`` (nothing there), so the wrapper's last
    fallback never finds a real DIRAC pilot on a machine that mounts /cvmfs. Other keyword
    arguments are ``pilotWrapperScript()``'s, or ``bundled_proxy`` (a PEM file bundled as the
    SiteDirector bundles the pilot's proxy).
    """
    kwargs = dict(kwargs, pilotOptions=pilot_options, location=location)
    kwargs.setdefault("CVMFS_locations", [str(workdir / "no-cvmfs")])
    p = subprocess.run(
        [dirac_python(), str(HERE / "pilot_wrapper.py"), str(path), json.dumps(kwargs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout
    return path


def worker_env(pki, workdir: Path, pilot: str, python: str = sys.executable, **extra) -> dict:
    """A worker node's environment for the wrapper: ``python`` as python3 on PATH (the wrapper
    and the Pilot run with it), the test CA directory as X509_CERT_DIR, a proxy-style PEM
    (certificate, key, CA) as X509_USER_PROXY, and the SiteDirector's stamp."""
    bindir = workdir / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    if not (bindir / "python3").exists():
        (bindir / "python3").symlink_to(os.path.realpath(python))
    env = {
        "PATH": "%s:/usr/bin:/bin" % bindir,
        "LANG": "C.UTF-8",
        "X509_CERT_DIR": pki.path("certificates"),
        "X509_USER_PROXY": pki.path("proxy.pem"),
        "DIRAC_PILOT_STAMP": pilot,
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_wrapper(wrapper: Path, cwd: Path, env: dict) -> subprocess.Popen:
    """``bash WRAPPER`` in ``cwd`` in the background (text pipes), as a batch system runs the job:
    in a session of its own, so that ``os.killpg(job.pid, …)`` ends all of it."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["bash", str(wrapper)],
        cwd=str(cwd),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        start_new_session=True,
    )


def run_wrapper(wrapper: Path, cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """``bash WRAPPER`` run to its end; its output as text."""
    job = start_wrapper(wrapper, cwd, env)
    try:
        out, err = job.communicate(timeout=timeout)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    SEEN_OUTPUT.append(("bash pilot-wrapper", out + err))
    return subprocess.CompletedProcess(job.args, job.returncode, out, err)


def wait_for_pid(pidfile: Path, process: subprocess.Popen, timeout: float = 60) -> int:
    """The pid the stand-in wrote when it reached its ``hang`` (``PILOT_STANDIN_PIDFILE``),
    waiting for it while ``process`` (the wrapper, or pilotlog around it) runs."""
    deadline = time.monotonic() + timeout
    while not (pidfile.exists() and pidfile.read_text().endswith("\n")):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("the stand-in never reached its hang (exit %s)" % process.poll())
        time.sleep(0.05)
    return int(pidfile.read_text())


def kill_in_its_hang(pidfile: Path, process: subprocess.Popen) -> None:
    """SIGKILL the stand-in once it hangs (``PILOT_STANDIN_FAULT=<Command>:hang``), as a batch
    system or the OOM killer ends a pilot in the middle of a command."""
    os.kill(wait_for_pid(pidfile, process), signal.SIGKILL)


def stored_log(dirac, pilot: str, vo: str = "dteam") -> str:
    """What DIRAC's handler stored for ``pilot``: the finalised ``.log``, else the open file, else ""."""
    for name in (pilot + ".log", pilot):
        path = dirac.store / vo / name
        if path.is_file():
            return path.read_text()
    return ""


def is_finalised(dirac, pilot: str, vo: str = "dteam") -> bool:
    return (dirac.store / vo / (pilot + ".log")).is_file()


_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.,]\d{6}Z")  # the wrapper's "…,µsZ", the Pilot's "….µsZ"
_URL = re.compile(r"(?:https?|file):/[^\s'\"\],]*")
_WORKDIR = re.compile(r"/\S*?DIRAC_\w+pilot")  # the wrapper's mkdtemp(prefix="DIRAC_", suffix="pilot")
_ENV_LINE = re.compile(r"^(<TIME> DEBUG +\[pilotLogger\] )([A-Za-z_][A-Za-z0-9_]*)=.*$")


def masked(text: str, pilot: str) -> str:
    """``text`` with what differs between two runs of one scenario masked: times, URLs (the
    location's and the logging service's ports), the wrapper's temporary directory, the pilot
    id, and the values of the environment the wrapper dumps (paths of the run). pilotlogger's
    own ``PILOTLOG_*`` settings, which ``pilotlog run`` passes on to the wrapper, are left out
    of that dump."""
    text = _TIME.sub("<TIME>", text)
    text = _URL.sub("<URL>", text)
    text = _WORKDIR.sub("<WORKDIR>", text)
    text = text.replace(pilot, "<PILOT>")
    lines = []
    for line in text.split("\n"):
        env = _ENV_LINE.match(line)
        if env and env.group(2).startswith("PILOTLOG_"):
            continue
        lines.append(env.group(1) + env.group(2) + "=<value>" if env else line)
    return "\n".join(lines)


def direct_reference(dirac, pki, workdir: Path, bufsize: int = 1000, fault: "str | None" = None, **env) -> str:
    """The Pilot posting directly to DIRAC: DIRAC's store for a normal run (or one with the
    stand-in's ``fault``; with ``<Command>:hang`` it is killed there, :func:`kill_in_its_hang`)
    of the generated wrapper with :data:`RELAY_OPTIONS` and ``PILOTLOG_RELAY_URL`` set to DIRAC's
    own URL, masked. What a run through the relay must leave in DIRAC's store, masked the same
    way. ``env``: more variables of the job, after those (the wrapper logs them in order)."""
    pilot = new_stamp()
    extra = {"PILOTLOG_RELAY_URL": dirac.url}
    if fault:
        extra["PILOT_STANDIN_FAULT"] = fault
    if fault and fault.endswith(":hang"):
        extra["PILOT_STANDIN_PIDFILE"] = str(workdir / "pilot.pid")
    extra.update(env)
    with PilotFiles(pki, workdir / "files", bufsize=bufsize) as files:
        wrapper = generate_wrapper(workdir / "wrapper.sh", files.url, workdir)
        if fault and fault.endswith(":hang"):
            job = start_wrapper(wrapper, workdir / "job", worker_env(pki, workdir, pilot, **extra))
            try:
                kill_in_its_hang(workdir / "pilot.pid", job)
                job.communicate(timeout=60)
            finally:
                if job.poll() is None:
                    job.kill()
                    job.wait()
        else:
            run_wrapper(wrapper, workdir / "job", worker_env(pki, workdir, pilot, **extra))
    return masked(stored_log(dirac, pilot), pilot)
