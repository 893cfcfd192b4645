"""DIRAC's own pilot wrapper and a faithful stand-in of its Pilot, against DIRAC's own handler (issue 23).

The wrapper is the batch-job script DIRAC 9.1.22's ``pilotWrapperScript()`` makes; it downloads
its pilot files from a loopback HTTPS location and runs tests/dirac/standin_pilot.py as
``dirac-pilot.py``, which posts to DIRAC's ``TornadoPilotLoggingHandler`` (tests/test_dirac.py's
``dirac`` fixture) as DIRAC's Pilot does. The harness is tests/dirac_pilot.py.

These are the baselines the relay's tests build on: what reaches DIRAC today, with the Pilot
posting directly and with ``pilotlog run --capture`` around the wrapper; and the facts the
relay's design rests on (``$PILOTLOG_RELAY_URL`` in the pilot options, what the wrapper and the
Pilot print and what they post).
"""

import ast
import json
import os
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import pytest

import test_dirac
from dirac_pilot import (
    RELAY_OPTIONS,
    PilotFiles,
    direct_reference,
    generate_wrapper,
    is_finalised,
    masked,
    new_stamp,
    run_wrapper,
    start_wrapper,
    stored_log,
    unreachable_location,
    wait_for_pid,
    worker_env,
)
from helpers import AGENT_DIRS, SilentListener, https_env, pyenv_python
from test_dirac import PATH, tree

dirac = test_dirac.dirac  # DIRAC's TornadoPilotLoggingHandler: tests/test_dirac.py's module fixture, reused

#: How pilotlogger's HTTPS sink prints a captured line into DIRAC's log (events.readable_line).
CAPTURED = re.compile(r'^\S+ (?:INFO|WARNING) \[pilot-wrapper\] log: (.*) \{"stream":"(stdout|stderr)"\}$')
SHUTDOWN = re.compile(r"^\S+ \w+ \[pilot-wrapper\] shutdown: [^{]* (\{.*\})$")


@pytest.fixture
def pilotlog_env(pki):
    """pilotlog's settings for DIRAC's handler (set per test: the sink URL)."""
    return dict(https_env(pki), PILOTLOG_DEADLINE="20", PILOTLOG_TIMEOUT="3")


def printed(text: str) -> list:
    """The non-empty lines of a stream, as ``pilotlog run --capture`` records them."""
    return [line.rstrip("\r") for line in text.split("\n") if line.rstrip("\r")]


def captured_lines(log: str) -> dict:
    """The captured lines in DIRAC's log, per stream, in order."""
    found = {"stdout": [], "stderr": []}
    for line in log.splitlines():
        m = CAPTURED.match(line)
        if m:
            found[m.group(2)].append(m.group(1))
    return found


def early_death(pki, tmp_path, how):
    """A wrapper that dies before the Pilot starts: ``download`` (nothing listens at the location)
    or ``checksum`` (dirac-pilot.py's checksum is served wrong); (wrapper, the files server or None)."""
    if how == "download":
        return generate_wrapper(tmp_path / "wrapper.sh", unreachable_location(), tmp_path), None
    files = PilotFiles(pki, tmp_path / "files", corrupt="dirac-pilot.py")
    return generate_wrapper(tmp_path / "wrapper.sh", files.url, tmp_path), files


EARLY_DEATHS = {
    "download": "None of the locations of the pilot files is reachable",
    "checksum": "Checksum mismatch for file 'dirac-pilot.py'",
}


# -- the wrapper dies before the Pilot: without pilotlogger nothing reaches DIRAC -------------------


@pytest.mark.parametrize("how", sorted(EARLY_DEATHS))
def test_a_wrapper_dying_early_leaves_no_trace_in_dirac(dirac, pki, tmp_path, how):
    wrapper, files = early_death(pki, tmp_path, how)
    pilot, before = new_stamp(), tree(dirac.store)
    try:
        p = run_wrapper(wrapper, tmp_path / "job", worker_env(pki, tmp_path, pilot, PILOTLOG_RELAY_URL=dirac.url))
    finally:
        if files:
            files.stop()
    assert p.returncode == 255 and EARLY_DEATHS[how] in p.stderr, p.stderr  # sys.exit(-1)
    assert "dirac-pilot.py  will be called" not in p.stdout
    assert len(printed(p.stdout)) > 10  # it said a lot ...
    assert tree(dirac.store) == before  # ... and DIRAC holds none of it


@pytest.mark.parametrize("how", sorted(EARLY_DEATHS))
def test_under_pilotlog_capture_every_line_of_a_wrapper_dying_early_reaches_dirac(dirac, pki, tmp_path, pilotlog, how):
    wrapper, files = early_death(pki, tmp_path, how)
    pilot = new_stamp()
    env = worker_env(pki, tmp_path, pilot, PILOTLOG_RELAY_URL=dirac.url, PILOTLOG_SINK=dirac.url)
    try:
        p = pilotlog("run", "--capture", "--", "bash", wrapper, env=env)
    finally:
        if files:
            files.stop()
    assert p.returncode == 255, p.stderr  # the wrapper's own code, through pilotlog
    assert EARLY_DEATHS[how] in p.stderr
    log = stored_log(dirac, pilot)
    assert is_finalised(dirac, pilot)  # pilotlogger's shutdown event finalised it
    stored = captured_lines(log)
    assert stored == {"stdout": printed(p.stdout), "stderr": printed(p.stderr)}, log
    shutdown = json.loads(SHUTDOWN.match(log.splitlines()[-1]).group(1))
    assert shutdown["exit_code"] == 255 and "capture_skipped_lines" not in shutdown


def test_a_vo_template_puts_pilotlog_in_front_of_the_wrappers_python(dirac, pki, tmp_path, pilotlog):
    """The VO's road without the site: a SiteDirector extension (its own ``_writePilotScript``)
    changes one line of DIRAC's script so the here-document's Python runs under pilotlog (the
    here-document is pilotlog's stdin, which the child inherits); pilotlog comes from the node
    (here ``$PILOTLOG``, e.g. on CVMFS). A download failure is then recorded and reaches DIRAC."""
    line = "/usr/bin/env $py << EOF"
    text = generate_wrapper(tmp_path / "dirac-wrapper.sh", unreachable_location(), tmp_path).read_text()
    assert text.count(line) == 1
    wrapper = tmp_path / "vo-wrapper.sh"
    wrapper.write_text(text.replace(line, '"$PILOTLOG" run --capture -- ' + line))
    pilot = new_stamp()
    env = dict(pilotlog.env, **worker_env(pki, tmp_path, pilot, PILOTLOG=pilotlog.bundle, PILOTLOG_SINK=dirac.url))
    AGENT_DIRS.add(str(pilotlog.spool))
    p = run_wrapper(wrapper, tmp_path / "job", env)
    assert p.returncode == 255 and EARLY_DEATHS["download"] in p.stderr, p.stderr
    assert captured_lines(stored_log(dirac, pilot)) == {"stdout": printed(p.stdout), "stderr": printed(p.stderr)}
    assert is_finalised(dirac, pilot)


# -- how the Pilot learns the relay's URL: $PILOTLOG_RELAY_URL in the pilot options ----------------


def normal_run(pki, tmp_path, options, **extra):
    """The generated wrapper with ``options`` run to its end, its files served: (process, pilot id)."""
    pilot = new_stamp()
    with PilotFiles(pki, tmp_path / "files") as files:
        wrapper = generate_wrapper(tmp_path / "wrapper.sh", files.url, tmp_path, options)
        p = run_wrapper(wrapper, tmp_path / "job", worker_env(pki, tmp_path, pilot, **extra))
    return p, pilot


def options_seen(stdout: str) -> list:
    """The options the Pilot parsed, from its PilotParams debug line."""
    line = next(line for line in stdout.splitlines() if "[PilotParams] Options list: " in line)
    return ast.literal_eval(line.split("Options list: ", 1)[1])  # the repr of getopt's list of pairs


@pytest.mark.parametrize("version", ["3.6.15", "3.13.0"])
def test_the_wrapper_puts_pilotlog_relay_url_from_its_environment_into_the_pilot_options(dirac, pki, tmp_path, version):
    """DIRAC writes ``$PILOTLOG_RELAY_URL`` into the script as it is; bash expands it when the
    batch job runs, from the job's environment: the Pilot posts to that URL. The wrapper and the
    stand-in on the oldest and newest Python a worker node may have."""
    python = pyenv_python(version)
    p, pilot = normal_run(pki, tmp_path, RELAY_OPTIONS, python=python, PILOTLOG_RELAY_URL=dirac.url)
    script = (tmp_path / "wrapper.sh").read_text()
    assert 'opt = "%s"' % RELAY_OPTIONS in script and "<< EOF" in script and dirac.url not in script
    assert p.returncode == 0, p.stderr
    assert ("-g", dirac.url) in options_seen(p.stdout)
    assert "INFO [LaunchAgent] DiskSpace (MB) = 1000" in stored_log(dirac, pilot)  # the POSTs went there


def test_without_the_variable_the_logger_url_swallows_the_next_option(dirac, pki, tmp_path):
    """``-g $PILOTLOG_RELAY_URL`` with the variable unset: getopt takes the next option as the
    URL and the Pilot dies at its first POST, before any command (exit 1)."""
    p, pilot = normal_run(pki, tmp_path, RELAY_OPTIONS)
    assert ("-g", "--wnVO=dteam") in options_seen(p.stdout)
    assert p.returncode == 1 and "unknown url type: '--wnVO=dteam'" in p.stderr, p.stderr
    assert "instantiated" not in p.stdout and stored_log(dirac, pilot) == ""


@pytest.mark.parametrize("relay_set", [True, False], ids=["variable-set", "variable-unset"])
def test_a_default_url_makes_the_option_safe_with_and_without_pilotlogger(dirac, pki, tmp_path, relay_set):
    """``-g ${PILOTLOG_RELAY_URL:-<DIRAC's URL>}``: the relay's URL when the wrapper runs under
    ``pilotlog run --relay``, DIRAC's own when it does not."""
    unreachable = unreachable_location() + PATH
    relay, default = (dirac.url, unreachable) if relay_set else (None, dirac.url)
    options = "-z -g ${PILOTLOG_RELAY_URL:-%s} --wnVO=dteam" % default
    p, pilot = normal_run(pki, tmp_path, options, **({"PILOTLOG_RELAY_URL": relay} if relay else {}))
    assert p.returncode == 0, p.stderr
    assert ("-g", dirac.url) in options_seen(p.stdout)
    assert "INFO [LaunchAgent] DiskSpace (MB) = 1000" in stored_log(dirac, pilot)


def test_the_bundled_proxy_is_the_pilots_credential_inside_the_wrapper_only(dirac, pki, tmp_path):
    """The SiteDirector bundles the pilot's proxy into the wrapper, which unpacks it into its
    working directory and sets X509_USER_PROXY in its own Python, after it dumped the job's
    environment: the Pilot posts with it, while a ``pilotlog run`` in front of the wrapper, with
    the job's environment, never sees it (its own credential must come from the node)."""
    pilot = new_stamp()
    with PilotFiles(pki, tmp_path / "files") as files:
        wrapper = generate_wrapper(tmp_path / "wrapper.sh", files.url, tmp_path, bundled_proxy=pki.path("proxy.pem"))
        env = worker_env(pki, tmp_path, pilot, PILOTLOG_RELAY_URL=dirac.url)
        del env["X509_USER_PROXY"]
        p = run_wrapper(wrapper, tmp_path / "job", env)
    assert p.returncode == 0, p.stderr
    assert "X509_USER_PROXY" not in p.stdout and "os.environ['X509_USER_PROXY']" in wrapper.read_text()
    assert "INFO [LaunchAgent] DiskSpace (MB) = 1000" in stored_log(dirac, pilot)


# -- what the wrapper and the Pilot print, and what they post: the reference of a direct run --------


def test_the_direct_reference_is_the_same_whatever_the_buffer_size(dirac, pki, tmp_path):
    """DIRAC's file is every POST of the pilot in order, so ``RemoteLoggerBufsize`` (1: a POST
    per line; 1000: a POST per command) changes the requests, not the bytes stored; two runs
    differ only in what ``masked`` masks. The relay's tests compare against this reference."""
    one = direct_reference(dirac, pki, tmp_path / "bufsize-1", bufsize=1)
    thousand = direct_reference(dirac, pki, tmp_path / "bufsize-1000", bufsize=1000)
    assert one == thousand
    for part in (
        "INFO [Pilot] Remote logger activated\n<TIME> DEBUG    [pilotLogger] ====",  # then the wrapper's log
        "INFO     [pilotLogger] Getting the pilot files from <URL>\n",
        "DEBUG [PilotParams] Options list: [('-z', ''), ('-g', '<URL>'), ('--wnVO', 'dteam'), ('--pilotUUID', '<PILOT>')]",
        "INFO [CheckWorkerNode] WorkingDir = <WORKDIR>\n",
        "installed DIRACOS\npip install DIRAC: done<TIME> WARNING [InstallDIRAC] DIRAC installed",  # a raw chunk
        "INFO [LaunchAgent] Flushing the remote logger buffer for pilot on sys.exit():  (exit code:0)\n",
    ):
        assert part in one, part
    assert "cannot access" not in one  # a command's stderr is never posted


class FormRecorder:
    """A plain-HTTP loopback service that keeps every request's body and answers as DIRAC does
    to an accepted one (the Pilot's remote logger works with an ``http://`` URL unchanged)."""

    def __init__(self):
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                bodies.append((self.headers["Content-Type"], self.rfile.read(int(self.headers["Content-Length"]))))
                answer = b'{"OK": true, "Value": null}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_stand_in_posts_the_pilots_form(pki, tmp_path):
    """The requests themselves, as a relay receives them: urlencoded ``method`` then ``args``,
    ``args`` the JSON of (the JSON of the text, the pilot id, the VO); with the default buffer
    one POST for the "Pilot" logger's first flush (its first line, then the wrapper's log), one
    before the commands, one per command, and ``finaliseLogs`` with ``{"retCode": "0"}`` after
    ``LaunchAgent``'s ``sys.exit(0)``."""
    recorder = FormRecorder()
    try:
        p, pilot = normal_run(pki, tmp_path, RELAY_OPTIONS, PILOTLOG_RELAY_URL=recorder.url)
    finally:
        recorder.close()
    assert p.returncode == 0, p.stderr
    requests = []
    for content_type, body in recorder.bodies:
        assert content_type == "application/x-www-form-urlencoded"
        fields = parse_qsl(body.decode(), strict_parsing=True)
        assert [name for name, _ in fields] == ["method", "args"]
        text, pilot_id, vo = json.loads(fields[1][1])
        assert (pilot_id, vo) == (pilot, "dteam")
        requests.append((fields[0][1], json.loads(text)))
    methods = [method for method, _ in requests]
    assert methods == ["sendMessage"] * 5 + ["finaliseLogs"] and requests[-1][1] == {"retCode": "0"}
    texts = [text for _, text in requests[:-1]]
    assert re.match(r"\S+ INFO \[Pilot\] Remote logger activated\n", texts[0])
    assert "[pilotLogger] Getting the pilot files from" in texts[0] and "[PilotParams]" in texts[1]
    assert [re.findall(r"\[(CheckWorkerNode|InstallDIRAC|LaunchAgent)\]", t)[:1] for t in texts[2:]] == [
        ["CheckWorkerNode"],
        ["InstallDIRAC"],
        ["LaunchAgent"],
    ]


def test_what_the_pilot_prints_and_what_it_posts(dirac, pki, tmp_path):
    """The facts behind docs/dirac.md's "which road for which line" (capture and relay together):
    the wrapper's log lines are printed and posted byte for byte alike (one formatting, stdout
    and the buffer the Pilot posts first); the Pilot's own lines are printed and posted with
    separate clock readings, ``WARN`` printed / ``WARNING`` posted, a multi-line message printed
    with a header per line and posted as one; some lines are only printed, none only posted."""
    p, pilot = normal_run(pki, tmp_path, RELAY_OPTIONS, PILOTLOG_RELAY_URL=dirac.url)
    assert p.returncode == 0, p.stderr
    posted = stored_log(dirac, pilot)
    out = printed(p.stdout)
    wrapper_lines = [line for line in out if "[pilotLogger]" in line]
    assert len(wrapper_lines) > 15 and all(line + "\n" in posted for line in wrapper_lines)
    ours = [line for line in out if re.match(r"\S+ (INFO|DEBUG|WARN|ERROR) \[(Pilot|PilotParams|[A-Z]\w+)\] ", line)]
    no_time = masked(posted, pilot)
    for line in ours:
        level_fixed = masked(line, pilot).replace(" WARN [", " WARNING [")
        if "the second line" in line:
            continue
        assert level_fixed in no_time, line
    assert "INFO [InstallDIRAC] two lines of one message:\nthe second line\n" in no_time
    assert "INFO [InstallDIRAC] the second line" in p.stdout
    assert "Trying %s" % "https://localhost:" in p.stdout and "Trying " not in posted  # printed, never posted
    assert "cannot access" in p.stderr and "cannot access" not in posted


# -- the Pilot's own remote logging, posting directly: its loss and harm cases --------------------


def test_dirac_down_the_pilot_exits_1_before_its_first_command(dirac, pki, tmp_path):
    """Remote logging on and DIRAC unreachable for the whole run: the Pilot dies at its first POST
    (the "Pilot" logger's flush of the wrapper's log), exit 1, no command run, nothing stored.
    With remote logging off the same pilot runs every command and exits 0."""
    down = unreachable_location() + PATH
    p, pilot = normal_run(pki, tmp_path / "on", RELAY_OPTIONS, PILOTLOG_RELAY_URL=down)
    assert p.returncode == 1 and "Connection refused" in p.stderr, p.stderr
    assert "INFO [Pilot] Remote logger activated" in p.stdout and "instantiated" not in p.stdout
    assert stored_log(dirac, pilot) == ""
    off, _ = normal_run(pki, tmp_path / "off", "--wnVO=dteam")
    assert off.returncode == 0 and "INFO [LaunchAgent] DiskSpace (MB) = 1000" in off.stdout, off.stderr


def test_a_silent_dirac_holds_the_pilot_at_its_first_post_for_ever(pki, tmp_path):
    """DIRAC accepts the connection and never answers: the Pilot's ``urlopen`` has no timeout, so
    it waits at its first POST (the TLS handshake) and never runs a command. Once the silent
    server holds its connection the Pilot cannot go on, so a few seconds more show it waiting."""
    pilot = new_stamp()
    with SilentListener() as silent, PilotFiles(pki, tmp_path / "files") as files:
        wrapper = generate_wrapper(tmp_path / "wrapper.sh", files.url, tmp_path)
        env = worker_env(pki, tmp_path, pilot, PILOTLOG_RELAY_URL="https://localhost:%d%s" % (silent.port, PATH))
        job = start_wrapper(wrapper, tmp_path / "job", env)
        try:
            ends = time.monotonic() + 60
            while not silent.held and job.poll() is None and time.monotonic() < ends:
                time.sleep(0.05)
            assert silent.held, "the Pilot never reached DIRAC"
            time.sleep(3)
            assert job.poll() is None  # still waiting for the answer
        finally:
            os.killpg(job.pid, signal.SIGKILL)  # the whole job, as the batch system ends it
            out, err = job.communicate(timeout=60)
    assert "INFO [Pilot] Remote logger activated" in out and "instantiated" not in out, err


def test_a_refused_pilot_id_loses_everything_silently(dirac, pki, tmp_path):
    """DIRAC answers ``{"OK": false, "Message": "Pilot UUID is invalid"}`` with HTTP 200 to a pilot
    id such as the Pilot's default ``unknown``; the Pilot never reads the answer: it runs on,
    exits 0, and DIRAC stored nothing."""
    before = tree(dirac.store)
    with PilotFiles(pki, tmp_path / "files") as files:
        wrapper = generate_wrapper(tmp_path / "wrapper.sh", files.url, tmp_path)
        env = worker_env(pki, tmp_path, "unknown", PILOTLOG_RELAY_URL=dirac.url)
        p = run_wrapper(wrapper, tmp_path / "job", env)
    assert p.returncode == 0 and ("--pilotUUID", "unknown") in options_seen(p.stdout), p.stderr
    assert "INFO [LaunchAgent] DiskSpace (MB) = 1000" in p.stdout and tree(dirac.store) == before


def test_a_command_that_exits_finalises_the_log(dirac, pki, tmp_path):
    """``sys.exit`` in a command: its buffer flushed, then ``finaliseLogs`` with the exit code
    (DIRAC renames the file to ``.log``); the wrapper turns any failure of the Pilot into 1."""
    p, pilot = normal_run(
        pki, tmp_path, RELAY_OPTIONS, PILOTLOG_RELAY_URL=dirac.url, PILOT_STANDIN_FAULT="InstallDIRAC:exit:3"
    )
    assert p.returncode == 1, p.stderr
    assert is_finalised(dirac, pilot)
    log = masked(stored_log(dirac, pilot), pilot)
    assert log.endswith(
        "INFO [InstallDIRAC] Flushing the remote logger buffer for pilot on sys.exit():  (exit code:3)\n"
    )
    assert "[LaunchAgent]" not in log  # no command after it


def test_a_command_that_raises_loses_its_unflushed_lines_and_traceback(dirac, pki, tmp_path):
    """An exception in a command: ``logFinalizer`` logs it and its traceback into the buffer
    but does not flush: with the default buffer the command's lines never reach DIRAC; they are
    only printed (and the interpreter prints the traceback again on stderr)."""
    p, pilot = normal_run(
        pki, tmp_path, RELAY_OPTIONS, PILOTLOG_RELAY_URL=dirac.url, PILOT_STANDIN_FAULT="InstallDIRAC:raise"
    )
    assert p.returncode == 1 and "RuntimeError: stand-in fault: InstallDIRAC raised" in p.stderr, p.stderr
    assert "ERROR [InstallDIRAC] Traceback (most recent call last):" in p.stdout
    log = stored_log(dirac, pilot)
    assert "INFO [CheckWorkerNode] Host Name" in log  # the command before it, flushed at its end
    assert "[InstallDIRAC]" not in log and not is_finalised(dirac, pilot)


@pytest.mark.parametrize("bufsize", [1, 1000])
def test_kill_9_in_a_command_loses_what_was_still_buffered(dirac, pki, tmp_path, bufsize):
    """A pilot killed (batch system, OOM killer) in the middle of a command: what it had posted
    is in DIRAC, its buffered lines are lost; with ``RemoteLoggerBufsize`` 1 every line but
    none is lost. The stand-in's ``hang`` writes its pid for the kill."""
    pilot, pidfile = new_stamp(), tmp_path / "pilot.pid"
    fault = {"PILOT_STANDIN_FAULT": "LaunchAgent:hang", "PILOT_STANDIN_PIDFILE": pidfile}
    with PilotFiles(pki, tmp_path / "files", bufsize=bufsize) as files:
        wrapper = generate_wrapper(tmp_path / "wrapper.sh", files.url, tmp_path)
        job = start_wrapper(
            wrapper, tmp_path / "job", worker_env(pki, tmp_path, pilot, PILOTLOG_RELAY_URL=dirac.url, **fault)
        )
        try:
            os.kill(wait_for_pid(pidfile, job), signal.SIGKILL)
            out, err = job.communicate(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
    assert job.returncode == 1 and "INFO [LaunchAgent] hanging until killed" in out, err
    log = stored_log(dirac, pilot)
    assert "INFO [InstallDIRAC] Installing DIRAC locally" in log  # an earlier command, flushed at its end
    assert ("INFO [LaunchAgent] hanging until killed" in log) == (bufsize == 1)
