"""DIRAC's own pilot wrapper under ``pilotlog run --relay`` (and ``--capture``), against DIRAC's own handler (issue 23).

The wrapper is the batch-job script DIRAC 9.1.22's ``pilotWrapperScript()`` makes, with the
pilot options docs/dirac.md recommends (``-z -g ${PILOTLOG_RELAY_URL:-<DIRAC>}``); its Pilot is
the stand-in of tests/dirac/standin_pilot.py; the sink of pilotlog is DIRAC's
``TornadoPilotLoggingHandler`` (tests/test_dirac.py's service). The harness is tests/dirac_pilot.py.

One DIRAC file per pilot holds the Pilot's posts (through the relay) and pilotlogger's own
events (``[pilot-wrapper]`` lines: boot, the captured lines the Pilot did not post, shutdown),
since both carry the wrapper's ``DIRAC_PILOT_STAMP``. The Pilot's part is compared with
DIRAC's file after the same pilot posted to DIRAC directly (``direct_reference``), masked.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import test_dirac
from dirac_pilot import (
    PilotFiles,
    direct_reference,
    generate_wrapper,
    kill_in_its_hang,
    masked,
    new_stamp,
    stored_log,
    unreachable_location,
    wait_for_pid,
    worker_env,
)
from helpers import SEEN_OUTPUT, Pilotlog, SilentListener, https_env, pyenv_python
from test_dirac import PATH, tree

dirac = test_dirac.dirac  # DIRAC's TornadoPilotLoggingHandler, one per module

#: A line of pilotlogger's own in DIRAC's file (events.readable_line), wherever it starts: after a
#: Pilot's post that ended without a newline it follows that post's last characters.
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
OURS = re.compile(TIME + r" [A-Z]+ \[pilot-wrapper\] [^\n]*\n")
CAPTURED = re.compile(r'^\S+ (?:INFO|WARNING) \[pilot-wrapper\] log: (.*) \{"stream":"(stdout|stderr)"\}$')
SHUTDOWN = re.compile(r"^\S+ \w+ \[pilot-wrapper\] shutdown: [^{]* (\{.*\})$")
BUFSIZES = [1, 1000]


@pytest.fixture
def pilotlog_env(pki):
    """pilotlog's settings for DIRAC's handler (the sink is set per test)."""
    return dict(https_env(pki), PILOTLOG_DEADLINE="20", PILOTLOG_TIMEOUT="3")


@pytest.fixture(scope="module")
def references(dirac, pki, tmp_path_factory):
    """``direct_reference`` per (bufsize, fault), made once per module: DIRAC's file for the
    pilot posting to DIRAC itself, masked, with the variable ``run --relay`` adds to the job."""
    made = {}

    def reference(bufsize: int, fault=None) -> str:
        if (bufsize, fault) not in made:
            workdir = tmp_path_factory.mktemp("reference")
            extra = {"no_proxy": "127.0.0.1,localhost,::1"}  # run --relay adds it; the wrapper logs it
            made[bufsize, fault] = direct_reference(dirac, pki, workdir, bufsize, fault, **extra)
        return made[bufsize, fault]

    return reference


def safe_options(dirac) -> str:
    """The pilot options docs/dirac.md recommends: the relay's URL under pilotlog, DIRAC's otherwise."""
    return "-z -g ${PILOTLOG_RELAY_URL:-%s} --wnVO=dteam" % dirac.url


class Run:
    """``pilotlog run [--capture] --relay -- bash <DIRAC's wrapper>``: what it printed, its pilot id."""

    def __init__(self, proc, pilot, out, err):
        self.returncode, self.pilot, self.stdout, self.stderr = proc.returncode, pilot, out, err


def run_pilot(
    pilotlog,
    pki,
    dirac,
    tmp_path,
    *,
    capture=True,
    bufsize=1000,
    fault=None,
    location=None,
    python=None,
    args=(),
    wrapper_args=None,
    meanwhile=None,
    gate=None,
    **env,
):
    """The wrapper for a pilot with the stand-in's ``fault`` (``<Command>:hang``: killed there)
    under pilotlog (``args``: more of pilotlog run's options), its files served from a loopback
    location (``location``: that one instead; ``gate``: PilotFiles's), the worker node's python3
    ``python``; ``wrapper_args``: more of pilotWrapperScript()'s; ``meanwhile(proc)`` is called
    once pilotlog runs; ``env``: the job's variables over worker_env's."""
    pilot = new_stamp()
    extra = {}
    if fault:
        extra["PILOT_STANDIN_FAULT"] = fault
    pidfile = tmp_path / "pilot.pid"
    if fault and fault.endswith(":hang"):
        extra["PILOT_STANDIN_PIDFILE"] = pidfile
    files = PilotFiles(pki, tmp_path / "files", bufsize=bufsize, gate=gate) if location is None else None
    try:
        wrapper = generate_wrapper(
            tmp_path / "wrapper.sh", location or files.url, tmp_path, safe_options(dirac), **(wrapper_args or {})
        )
        job_env = worker_env(pki, tmp_path, pilot, python=python or sys.executable, **extra)
        job_env.update({k: str(v) for k, v in env.items() if v is not None})
        for name in [k for k, v in env.items() if v is None]:
            job_env.pop(name, None)
        argv = ["run"] + (["--capture"] if capture else []) + ["--relay"] + list(args) + ["--", "bash", wrapper]
        proc = pilotlog.start(*argv, env=job_env, stdout=subprocess.PIPE)
        try:
            if meanwhile is not None:
                meanwhile(proc)
            if fault and fault.endswith(":hang"):
                kill_in_its_hang(pidfile, proc)
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        if files is not None:
            files.stop()
    SEEN_OUTPUT.append(("pilotlog run --relay bash wrapper", out + err))
    return Run(proc, pilot, out, err)


def pilots_part(log: str) -> str:
    """DIRAC's file without pilotlogger's own lines: what the Pilot posted, as it came."""
    return OURS.sub("", log)


def our_lines(log: str) -> list:
    return [line.rstrip("\n") for line in OURS.findall(log)]


def captured(log: str, stream: str) -> list:
    """The captured lines of ``stream`` in DIRAC's file, in order."""
    found = [CAPTURED.match(line) for line in our_lines(log)]
    return [m.group(1) for m in found if m and m.group(2) == stream]


def shutdown_data(log: str) -> dict:
    (last,) = [line for line in our_lines(log) if "] shutdown: " in line]
    return json.loads(SHUTDOWN.match(last).group(1))


def printed(text: str) -> list:
    """The non-empty lines of a stream, as ``run --capture`` records them."""
    return [line.rstrip("\r") for line in text.split("\n") if line.rstrip("\r")]


def finalisations(dirac, pilot: str) -> int:
    """How many times DIRAC's plugin finalised this pilot's log (its own log line says so)."""
    return (dirac.workdir / "server.log").read_text().count("Log file %s finalised" % pilot)


def assert_one_log(dirac, pilot: str) -> str:
    """DIRAC holds one file for the pilot, finalised once: its text."""
    files = sorted(p.name for p in (dirac.store / "dteam").glob(pilot + "*"))
    assert files == [pilot + ".log"], files  # no open file left beside it
    assert finalisations(dirac, pilot) == 1
    return stored_log(dirac, pilot)


# -- b. a normal run ---------------------------------------------------------------------------


@pytest.mark.parametrize("bufsize", BUFSIZES)
def test_relay_alone_leaves_in_dirac_what_the_pilot_posting_directly_leaves(
    dirac, pki, tmp_path, pilotlog, references, bufsize
):
    """``run --relay``: DIRAC's file is pilotlogger's boot line, the Pilot's posts byte for byte
    as when it posts to DIRAC itself, and pilotlogger's shutdown line; finalised once, last —
    the Pilot's own finaliseLogs is carried by pilotlogger's shutdown."""
    run = run_pilot(pilotlog, pki, dirac, tmp_path, capture=False, bufsize=bufsize, PILOTLOG_SINK=dirac.url)
    assert run.returncode == 0, run.stderr
    log = assert_one_log(dirac, run.pilot)
    assert masked(pilots_part(log), run.pilot) == references(bufsize)
    ours = our_lines(log)
    assert len(ours) == 2 and "[pilot-wrapper] boot: " in ours[0] and "[pilot-wrapper] shutdown: " in ours[1]
    assert log.startswith(ours[0] + "\n") and log.endswith(ours[1] + "\n")
    data = shutdown_data(log)
    assert data["exit_code"] == 0 and data["pilot_finalise"] == {"retCode": "0"}, data
    assert pilotlog.events() == []


def unposted(run, buffered_from=None) -> list:
    """The printed lines the Pilot never posted: the wrapper's ``Trying <location>``, and, when
    the Pilot died with its buffer unsent, every line from ``Command <buffered_from> instantiated``
    on."""
    lines = printed(run.stdout)
    found = [line for line in lines if line.startswith("Trying ")]
    if buffered_from:
        first = next(i for i, line in enumerate(lines) if "Command %s instantiated" % buffered_from in line)
        found += lines[first:]
    return found


def assert_each_printed_line_once(log: str, run, expected: list) -> None:
    """No line reaches DIRAC twice: the captured stdout lines in DIRAC are exactly ``expected``
    (the printed lines the Pilot never posted), all of stderr is there, and every other printed
    stdout line is in the Pilot's part."""
    pilot = run.pilot
    assert [masked(line, pilot) for line in captured(log, "stdout")] == [masked(line, pilot) for line in expected]
    assert captured(log, "stderr") == [line for line in printed(run.stderr) if not line.startswith("pilotlog: ")]
    part = masked(pilots_part(log), pilot).replace(" WARNING [", " WARN [")
    rest = list(printed(run.stdout))
    for line in expected:
        rest.remove(line)
    for line in rest:
        text = masked(line, pilot)
        if text not in part:  # a line of a multi-line message: posted without its own header
            text = re.sub(r"^<TIME> [A-Z]+ \[\w+\] ", "", text)
        assert text in part, line


@pytest.mark.parametrize("bufsize", BUFSIZES)
def test_relay_and_capture_bring_each_line_to_dirac_once(dirac, pki, tmp_path, pilotlog, references, bufsize):
    """``run --capture --relay``: the Pilot prints every line it posts; DIRAC gets the posted
    copy, and of the printed ones only those the Pilot never posted (here the wrapper's
    ``Trying <location>``), and every stderr line (the Pilot posts none)."""
    run = run_pilot(pilotlog, pki, dirac, tmp_path, bufsize=bufsize, PILOTLOG_SINK=dirac.url)
    assert run.returncode == 0, run.stderr
    log = assert_one_log(dirac, run.pilot)
    assert masked(pilots_part(log), run.pilot) == references(bufsize)
    assert len(unposted(run)) == 1 and "cannot access" in run.stderr
    assert_each_printed_line_once(log, run, unposted(run))
    data = shutdown_data(log)
    assert data["printed_lines_posted"] == len(printed(run.stdout)) - 1 and data["pilot_finalise"] == {"retCode": "0"}
    assert log.endswith(our_lines(log)[-1] + "\n") and pilotlog.events() == []


# -- a. the wrapper dies before the Pilot ------------------------------------------------------

EARLY_DEATHS = {
    "download": "None of the locations of the pilot files is reachable",
    "checksum": "Checksum mismatch for file 'dirac-pilot.py'",
}


@pytest.mark.parametrize("how", sorted(EARLY_DEATHS))
def test_every_line_of_a_wrapper_dying_before_the_pilot_reaches_dirac(dirac, pki, tmp_path, pilotlog, how):
    """No Pilot, so no post: every line the wrapper printed, stdout and stderr, is in DIRAC
    (tests/test_dirac_pilot.py shows the same death leaving DIRAC's store empty without pilotlog).
    The download death runs with 120 more variables in the job, as a worker node has them: the
    wrapper logs one line each, all within a tenth of a second, and none is left out."""
    if how == "download":
        node = {"NODE_VARIABLE_%03d" % i: "value %d of a worker node's environment" % i for i in range(120)}
        run = run_pilot(
            pilotlog, pki, dirac, tmp_path, location=unreachable_location(), PILOTLOG_SINK=dirac.url, **node
        )
        assert sum("NODE_VARIABLE_" in line for line in printed(run.stdout)) == 120
    else:
        with PilotFiles(pki, tmp_path / "files", corrupt="dirac-pilot.py") as files:
            run = run_pilot(pilotlog, pki, dirac, tmp_path, location=files.url, PILOTLOG_SINK=dirac.url)
    assert run.returncode == 255 and EARLY_DEATHS[how] in run.stderr, run.stderr
    log = assert_one_log(dirac, run.pilot)
    assert pilots_part(log) == ""
    assert captured(log, "stdout") == printed(run.stdout) and captured(log, "stderr") == printed(run.stderr)
    data = shutdown_data(log)
    assert data["exit_code"] == 255 and data["relayed_posts"] == 0 and "capture_dropped_lines" not in data


# -- c. DIRAC down for the whole run -------------------------------------------------------------


@pytest.mark.parametrize("bufsize", BUFSIZES)
def test_dirac_down_the_pilot_runs_as_without_remote_logging_and_replay_completes_its_log(
    dirac, pki, tmp_path, pilotlog, references, bufsize
):
    """The Pilot alone exits 1 at its first post (test_dirac_down_the_pilot_exits_1_before_its_first_command);
    through the relay it runs every command and exits 0, as with remote logging off. Everything
    stays spooled; a later replay, DIRAC back, completes its log: the Pilot's part as posted,
    each printed line once, finalised once."""
    down = unreachable_location() + PATH
    run = run_pilot(
        pilotlog, pki, dirac, tmp_path, bufsize=bufsize, PILOTLOG_SINK=down, PILOTLOG_DEADLINE="2", PILOTLOG_TIMEOUT="1"
    )
    assert run.returncode == 0, run.stderr
    assert "INFO [LaunchAgent] DiskSpace (MB) = 1000" in run.stdout and stored_log(dirac, run.pilot) == ""
    assert "events kept in spool" in run.stderr or "event(s) kept in spool" in run.stderr
    p = pilotlog("replay", env={"PILOTLOG_SINK": dirac.url})
    assert p.returncode == 0 and pilotlog.events() == [], p.stderr
    log = assert_one_log(dirac, run.pilot)
    assert masked(pilots_part(log), run.pilot) == references(bufsize)
    assert_each_printed_line_once(log, run, unposted(run))
    assert log.endswith(our_lines(log)[-1] + "\n") and "[pilot-wrapper] shutdown: " in our_lines(log)[-1]


# -- d. kill -9 of the Pilot in the middle of a command ------------------------------------------


@pytest.mark.parametrize("bufsize", BUFSIZES)
@pytest.mark.parametrize("capture", [False, True], ids=["relay", "relay-capture"])
def test_kill_9_in_a_command_every_posted_line_reaches_dirac_and_printed_ones_too(
    dirac, pki, tmp_path, pilotlog, references, bufsize, capture
):
    """The Pilot killed in LaunchAgent: what it had posted is in DIRAC, as when it posts to DIRAC
    itself, and the log is finalised (by pilotlogger's shutdown: the Pilot never finalises);
    with --capture, also the lines it had printed and still held in its buffer (all of
    LaunchAgent's with RemoteLoggerBufsize 1000, none with 1)."""
    fault = "LaunchAgent:hang"
    run = run_pilot(
        pilotlog, pki, dirac, tmp_path, capture=capture, bufsize=bufsize, fault=fault, PILOTLOG_SINK=dirac.url
    )
    assert run.returncode == 1, run.stderr  # the wrapper says the Pilot failed
    log = assert_one_log(dirac, run.pilot)
    assert masked(pilots_part(log), run.pilot) == references(bufsize, fault)
    assert ("INFO [LaunchAgent] hanging until killed" in pilots_part(log)) == (bufsize == 1)
    data = shutdown_data(log)
    assert data["exit_code"] == 1 and "pilot_finalise" not in data
    if capture:
        assert_each_printed_line_once(log, run, unposted(run, "LaunchAgent" if bufsize == 1000 else None))
        assert "INFO [LaunchAgent] hanging until killed" in log


# -- e. a pilot id DIRAC refuses -------------------------------------------------------------------


def test_a_pilot_id_dirac_refuses_is_never_counted_delivered_and_status_names_the_refusal(
    dirac, pki, tmp_path, pilotlog
):
    """``DIRAC_PILOT_STAMP=unknown`` (the Pilot's default id): the Pilot posts as ``unknown`` and
    DIRAC refuses it; the relay answered as DIRAC would, kept the posts and forwarded them: DIRAC
    refused each, so each is quarantined with DIRAC's words and none is counted delivered, and
    ``status`` names the refusal. pilotlogger's own events go under an id DIRAC takes (one per
    spool), so what the Pilot printed reaches DIRAC all the same."""
    before = tree(dirac.store)
    run = run_pilot(pilotlog, pki, dirac, tmp_path, DIRAC_PILOT_STAMP="unknown", PILOTLOG_SINK=dirac.url)
    assert run.returncode == 0, run.stderr
    assert "refused pilot 'unknown': Pilot UUID is invalid" in run.stderr
    state = json.loads(pilotlog("status", "--json").stdout)
    quarantined = [p for p in (pilotlog.spool / "quarantine").iterdir() if not p.name.endswith(".reason")]
    relayed = sorted((json.loads(p.read_text()) for p in quarantined), key=lambda e: e["seq"])
    assert relayed and all(e["source"] == "relay" and e["pilot"] == "unknown" for e in relayed)
    assert [e["data"]["dirac_form"]["method"] for e in relayed][-1] == "finaliseLogs"
    assert state["quarantined"] == len(relayed) and state["depth"] == 0
    assert re.search(r"refused it: Pilot UUID is invalid", state["last_refusal"]), state
    added = set(tree(dirac.store)) - set(before)
    (ours,) = {name.split("/")[-1] for name in added}
    own = ours[: -len(".log")]
    assert own != "unknown" and not any("unknown" in name for name in added)
    assert state["delivered_total"] == len(our_lines(stored_log(dirac, own)))  # only pilotlogger's own events
    log = stored_log(dirac, own)
    assert pilots_part(log) == "" and captured(log, "stdout") == printed(run.stdout)


# -- f. a command that raises ----------------------------------------------------------------------


@pytest.mark.parametrize("bufsize", BUFSIZES)
def test_a_command_that_raises_its_lines_and_traceback_reach_dirac(dirac, pki, tmp_path, pilotlog, references, bufsize):
    """InstallDIRAC raises: the Pilot logs the error and its traceback without a flush and dies.
    What it had posted reaches DIRAC as posted (its traceback too with RemoteLoggerBufsize 1);
    what it printed and never posted, by capture (the whole command with 1000); and the
    interpreter's traceback, by capture of stderr."""
    fault = "InstallDIRAC:raise"
    run = run_pilot(pilotlog, pki, dirac, tmp_path, bufsize=bufsize, fault=fault, PILOTLOG_SINK=dirac.url)
    assert run.returncode == 1 and "RuntimeError: stand-in fault: InstallDIRAC raised" in run.stderr, run.stderr
    log = assert_one_log(dirac, run.pilot)
    assert masked(pilots_part(log), run.pilot) == references(bufsize, fault)
    assert ("ERROR [InstallDIRAC] Traceback (most recent call last):" in pilots_part(log)) == (bufsize == 1)
    assert_each_printed_line_once(log, run, unposted(run, "InstallDIRAC" if bufsize == 1000 else None))
    assert "ERROR [InstallDIRAC] Traceback (most recent call last):" in log
    assert "RuntimeError: stand-in fault: InstallDIRAC raised" in captured(log, "stderr")


# -- the Pilot's own credential -------------------------------------------------------------------

OUTSIDER = r"""
import json, sys, urllib.parse, urllib.request
args = json.dumps((json.dumps("a post from outside the pilot's processes\n"), sys.argv[2], ""))
with urllib.request.urlopen(sys.argv[1], urllib.parse.urlencode({"method": "sendMessage", "args": args}).encode(), timeout=60) as a:
    print(json.loads(a.read().decode())["OK"])
"""


def relay_url(pilotlog, proc, timeout: float = 60) -> str:
    """The relay's URL, from the boot event pilotlog recorded before it started the wrapper."""
    ends = time.monotonic() + timeout
    while time.monotonic() < ends and proc.poll() is None:
        boots = [e for e in pilotlog.events() if e["phase"] == "boot"]
        if boots:
            return boots[0]["data"]["relay"]
        time.sleep(0.05)
    raise AssertionError("no boot event recorded")


@pytest.mark.parametrize(
    "ca,version",
    [("job", None), ("wrapper", None), ("job", "3.6.15")],
    ids=["ca-of-the-job", "ca-set-by-the-wrapper", "ca-of-the-job-python-3.6"],
)
def test_with_no_credential_of_its_own_the_relay_forwards_with_the_pilots_bundled_proxy(
    dirac, pki, proxies, tmp_path, bundle, pilotlog, references, ca, version
):
    """The SiteDirector bundled a real RFC 3820 proxy into the wrapper, which sets
    X509_USER_PROXY in its own Python only; pilotlogger has no certificate (and with
    ``ca-set-by-the-wrapper`` no CA either: the wrapper sets X509_CERT_DIR for itself). The relay
    takes the Pilot's proxy (and CA directory) from the posting process and DIRAC authorises
    every forwarded post with it: the Pilot's part as posted directly, pilotlogger's own events
    too. A process of the same user that is not the Pilot's posts first with an expired proxy in
    its environment: its credential is not taken (with it nothing would reach DIRAC). The proxy
    is never written to the spool. Also with the bundle, the wrapper and the Pilot on Python 3.6."""
    python = pyenv_python(version) if version else None
    if version:
        pilotlog = Pilotlog(bundle, tmp_path, python=python)
        pilotlog.env.update(https_env(pki), PILOTLOG_DEADLINE="20", PILOTLOG_TIMEOUT="3")
    gate = threading.Event()
    outsider = {}

    def post_from_outside(proc):
        url = relay_url(pilotlog, proc)
        env = dict(os.environ, X509_USER_PROXY=proxies.x509up("expired"))
        outsider["pilot"] = new_stamp()
        answer = subprocess.run(
            [sys.executable, "-c", OUTSIDER, url, outsider["pilot"]],
            env=env,
            stdout=subprocess.PIPE,
            universal_newlines=True,
            timeout=60,
        )
        outsider["answer"] = answer.stdout.strip()
        gate.set()  # only now may the wrapper get its files and start the Pilot

    job = {"X509_USER_PROXY": None, "PILOTLOG_CERT": "", "PILOTLOG_KEY": ""}
    wrapper_args = {"bundled_proxy": proxies.x509up("first")}
    if ca == "wrapper":
        job.update(X509_CERT_DIR=None, PILOTLOG_CA_FILE="")
        wrapper_args["envVariables"] = {"X509_CERT_DIR": pki.path("certificates")}
    run = run_pilot(
        pilotlog,
        pki,
        dirac,
        tmp_path,
        capture=False,
        gate=gate,
        meanwhile=post_from_outside,
        wrapper_args=wrapper_args,
        python=python,
        PILOTLOG_SINK=dirac.url,
        **job,
    )
    assert run.returncode == 0 and outsider["answer"] == "True", run.stderr
    assert "not the Pilot's: the post comes from no process of this run's child" in run.stderr
    log = assert_one_log(dirac, run.pilot)
    part, expected = masked(pilots_part(log), run.pilot), references(1000)
    assert same_but_credentials(any_python(part)) == same_but_credentials(any_python(expected))
    data = shutdown_data(log)
    assert re.match(r"X509_USER_PROXY of process \d+ \(the Pilot\)\Z", data["forwarded_with"]), data
    assert "PRIVATE KEY" not in log and "BEGIN CERTIFICATE" not in log  # what was spooled is all in DIRAC's file
    assert stored_log(dirac, outsider["pilot"]) == "a post from outside the pilot's processes\n"  # forwarded too
    assert json.loads(pilotlog("status", "--json").stdout)["delivered_total"] > 2 and pilotlog.events() == []


def any_python(log: str) -> str:
    """A log without the version of the wrapper's Python (``sys.version``, on one or two lines)."""
    return re.sub(r"(<TIME> DEBUG +\[pilotLogger\] )3\.\d+\.\d+ \(.*\n(.*\n)*?(?=<TIME>)", r"\1<PYTHON>\n", log)


def same_but_credentials(log: str) -> str:
    """A log without what a bundled proxy changes: the job's X509_* variables in the wrapper's
    dump of its environment, and its line about unpacking the bundled files."""
    return re.sub(r"<TIME> \w+ +\[pilotLogger\] (X509_\w+=<value>|But first unpacking pilot files)\n", "", log)


def spawn_tree(depth: int, env: dict) -> subprocess.Popen:
    """A process whose descendant (``depth`` levels down) connects to the port it reads on stdin
    and holds the connection until stdin closes."""
    leaf = (
        "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.stdin.readline())));"
        " print('connected', flush=True); sys.stdin.read()"
    )
    argv = [sys.executable, "-c", leaf]
    for _ in range(depth):
        argv = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.call(%r))" % (argv,)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, universal_newlines=True)


@pytest.mark.parametrize("credential", ["proxy", "hostcreds", None])
def test_the_pilots_credential_is_taken_only_from_a_process_below_the_child(pki, credential):
    """pilotcred.poster and borrow: the process at the other end of the connection, two levels below the
    child, gives its X509_USER_PROXY (a host-certificate directory is said as such); the same
    connection judged against another process as the child gives none, nor does a process with
    no X509_USER_PROXY."""
    from pilotlogger.pilotcred import BorrowError, borrow, poster

    env = {k: v for k, v in os.environ.items() if k != "X509_USER_PROXY"}
    if credential:
        env["X509_USER_PROXY"] = pki.path("proxy.pem" if credential == "proxy" else "hostcreds")
    other = subprocess.Popen(["sleep", "120"])
    tree_ = spawn_tree(2, env)
    try:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            listener.settimeout(60)
            tree_.stdin.write("%d\n" % listener.getsockname()[1])
            tree_.stdin.flush()
            conn, _ = listener.accept()
            with conn:
                assert tree_.stdout.readline().strip() == "connected"
                with pytest.raises(BorrowError, match="no process of this run's child"):
                    poster(conn, other.pid)
                if credential is None:
                    with pytest.raises(BorrowError, match="has no X509_USER_PROXY"):
                        poster(conn, tree_.pid)
                else:
                    borrowed = borrow(poster(conn, tree_.pid), ca_file=pki.path("ca.pem"))
                    assert borrowed.hosts == (credential == "hostcreds")
                    assert re.match(r"X509_USER_PROXY of process \d+ \(the Pilot\)\Z", borrowed.origin)
    finally:
        other.kill()
        other.wait()
        tree_.stdin.close()
        tree_.wait(30)


# -- DIRAC silent: the Pilot alone hangs for ever (tests/test_dirac_pilot.py) --------------------


def test_forwarding_to_a_silent_dirac_never_holds_the_pilot(dirac, pki, tmp_path, pilotlog, references):
    """DIRAC accepts connections and never answers (the Pilot alone would wait for ever: its
    urlopen has no timeout). The wrapper's files are served only once pilotlog's background
    shipping is stuck on that silent DIRAC, so the Pilot runs the whole time the forwarding
    waits: every post is answered by the relay, the Pilot runs to its end, pilotlog returns its
    code after its bounded drain, and everything stays spooled for a later replay."""
    gate = threading.Event()
    with SilentListener() as silent:

        def open_the_gate_once_shipping_is_stuck(proc):
            ends = time.monotonic() + 60
            while not silent.held and time.monotonic() < ends and proc.poll() is None:
                time.sleep(0.05)
            gate.set()

        run = run_pilot(
            pilotlog,
            pki,
            dirac,
            tmp_path,
            gate=gate,
            args=["--ship-every", "0.2"],
            meanwhile=open_the_gate_once_shipping_is_stuck,
            PILOTLOG_SINK="https://localhost:%d%s" % (silent.port, PATH),
            PILOTLOG_TIMEOUT="1",
            PILOTLOG_DEADLINE="3",
        )
        assert silent.held, "pilotlog never tried the silent DIRAC"
    assert run.returncode == 0, run.stderr
    assert "INFO [LaunchAgent] DiskSpace (MB) = 1000" in run.stdout
    assert "Traceback" not in run.stderr
    p = pilotlog("replay", env={"PILOTLOG_SINK": dirac.url})
    assert p.returncode == 0 and pilotlog.events() == [], p.stderr
    log = assert_one_log(dirac, run.pilot)
    assert masked(pilots_part(log), run.pilot) == references(1000)


# -- the Python a worker node has ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["3.6.15", "3.13.0"])
def test_relay_and_capture_on_the_oldest_and_newest_python(dirac, pki, tmp_path, bundle, references, version):
    """The bundle, the wrapper and the Pilot on the oldest and the newest Python a node may have."""
    python = pyenv_python(version)
    pilotlog = Pilotlog(bundle, tmp_path, python=python)
    pilotlog.env.update(https_env(pki), PILOTLOG_DEADLINE="20", PILOTLOG_TIMEOUT="3")
    run = run_pilot(pilotlog, pki, dirac, tmp_path, bufsize=1, python=python, PILOTLOG_SINK=dirac.url)
    assert run.returncode == 0, run.stderr
    log = assert_one_log(dirac, run.pilot)
    assert any_python(masked(pilots_part(log), run.pilot)) == any_python(references(1))
    assert_each_printed_line_once(log, run, unposted(run))


# -- what any sink gets: the same spool -----------------------------------------------------------


def test_the_spool_holds_the_posts_the_unposted_printed_lines_and_one_shutdown(dirac, pki, tmp_path, pilotlog):
    """With the stdout sink nothing is shipped during the run: the spool at its end is what any
    sink (a broker, DIRAC) gets: pilotlogger's boot, the Pilot's posts as relayed records, the
    printed lines it did not post and every stderr line, then one shutdown carrying the Pilot's
    finaliseLogs — the relayed finaliseLogs itself is gone. ``timeline`` shows one lifecycle."""
    run = run_pilot(pilotlog, pki, dirac, tmp_path, bufsize=1000)
    assert run.returncode == 0, run.stderr
    events = pilotlog.events()
    assert events[0]["phase"] == "boot" and events[-1]["phase"] == "shutdown"
    assert [e["phase"] for e in events].count("shutdown") == 1
    relayed = [e for e in events if e["source"] == "relay"]
    assert [e["data"]["dirac_form"]["method"] for e in relayed] == ["sendMessage"] * 5
    assert {e["pilot"] for e in events} == {run.pilot}
    stdout = [e["message"] for e in events if e["phase"] == "log" and e["data"]["stream"] == "stdout"]
    stderr = [e["message"] for e in events if e["phase"] == "log" and e["data"]["stream"] == "stderr"]
    assert stdout == unposted(run)
    assert stderr == printed(run.stderr)
    assert events[-1]["data"]["pilot_finalise"] == {"retCode": "0"}
    replayed = pilotlog("replay")
    (tmp_path / "day.jsonl").write_text(replayed.stdout)
    line = pilotlog("timeline", tmp_path / "day.jsonl").stdout.splitlines()[0]
    expected = r"%s  \S+  boot → Pilot .*→ CheckWorkerNode .*→ InstallDIRAC .*→ LaunchAgent .*→ shutdown [^→]*\Z"
    assert re.match(expected % run.pilot, line), line


# -- the VO's road: its SiteDirector's own wrapper template ----------------------------------------

RERUN = '[ -n "$PILOTLOG_RELAY_URL" ] || exec "$PILOTLOG" run --relay --capture -- /bin/bash "$0" "$@"'


@pytest.mark.parametrize("where", ["first-line", "here-document"])
def test_a_vo_template_runs_the_whole_wrapper_again_under_pilotlog(dirac, pki, tmp_path, pilotlog, references, where):
    """A SiteDirector extension may change DIRAC's script, pilotlog coming from the node (here
    ``$PILOTLOG``). Its here-document is expanded by the bash that reads it, before the command
    it feeds starts: ``"$PILOTLOG" run --relay -- /usr/bin/env $py << EOF`` hands the Pilot the
    default URL (DIRAC's: the relay gets nothing), while a first line that runs the whole script
    again under pilotlog when it is not yet (``RERUN``) gives the Pilot the relay's URL."""
    text = generate_wrapper(tmp_path / "dirac-wrapper.sh", "https://localhost:1", tmp_path, safe_options(dirac))
    text = text.read_text()
    heredoc = "/usr/bin/env $py << EOF"
    assert text.startswith("#!/bin/bash\n") and text.count(heredoc) == 1
    if where == "first-line":
        text = text.replace("#!/bin/bash\n", "#!/bin/bash\n" + RERUN + "\n", 1)
    else:
        text = text.replace(heredoc, '"$PILOTLOG" run --relay --capture -- ' + heredoc)
    pilot = new_stamp()
    with PilotFiles(pki, tmp_path / "files") as files:
        wrapper = tmp_path / "vo-wrapper.sh"
        wrapper.write_text(text.replace("https://localhost:1", files.url))
        env = dict(pilotlog.env, **worker_env(pki, tmp_path, pilot, PILOTLOG=pilotlog.bundle, PILOTLOG_SINK=dirac.url))
        job = subprocess.run(
            ["bash", str(wrapper)],
            cwd=str(tmp_path),
            env={k: str(v) for k, v in env.items()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            timeout=180,
        )
    SEEN_OUTPUT.append(("vo wrapper", job.stdout + job.stderr))
    assert job.returncode == 0, job.stderr
    (options,) = [line for line in job.stdout.splitlines() if "[PilotParams] Options list:" in line]
    if where == "here-document":
        assert "('-g', '%s')" % dirac.url in options  # the relay never hears from the Pilot
        return
    assert re.search(r"\('-g', 'http://127\.0\.0\.1:\d+/'\)", options), options
    log = assert_one_log(dirac, pilot)
    environment = re.compile(r"<TIME> DEBUG +\[pilotLogger\] [A-Za-z_]\w*=<value>\n")  # this job's differs
    assert environment.sub("", masked(pilots_part(log), pilot)) == environment.sub("", references(1000))
    assert shutdown_data(log)["relayed_posts"] == 6


# -- the whole job killed, pilotlog too: a later replay ------------------------------------------


def test_the_whole_job_killed_a_later_replay_loses_no_line(dirac, pki, tmp_path, pilotlog, references):
    """The batch system kills the job, pilotlog included, while the Pilot hangs in LaunchAgent
    with its buffer unsent. Nothing ran at the end (no pairing, no shutdown): a later replay
    ships what the spool holds, oldest first — every line the Pilot posted as posted, every
    printed line at least once (at-least-once: a printed line not yet paired arrives beside its
    posted twin), never one lost."""
    pidfile = tmp_path / "pilot.pid"

    def kill_the_job_once_the_last_line_is_recorded(proc):
        wait_for_pid(pidfile, proc)
        ends = time.monotonic() + 60
        while time.monotonic() < ends and not any("hanging until killed" in e["message"] for e in pilotlog.events()):
            time.sleep(0.05)
        from pilotlogger.pilotcred import descendants

        for pid in [proc.pid] + descendants(proc.pid):  # the job's processes, as a batch system's kill
            os.kill(pid, signal.SIGKILL)

    run = run_pilot(
        pilotlog,
        pki,
        dirac,
        tmp_path,
        meanwhile=kill_the_job_once_the_last_line_is_recorded,
        PILOT_STANDIN_FAULT="LaunchAgent:hang",
        PILOT_STANDIN_PIDFILE=pidfile,
        PILOTLOG_SINK=dirac.url,
    )
    assert run.returncode == -signal.SIGKILL
    p = pilotlog("replay", env={"PILOTLOG_SINK": dirac.url})
    assert p.returncode == 0 and pilotlog.events() == [], p.stderr
    log = stored_log(dirac, run.pilot)
    assert masked(pilots_part(log), run.pilot) == references(1000, "LaunchAgent:hang")
    every = masked(pilots_part(log) + "\n".join(captured(log, "stdout")), run.pilot).replace(" WARNING [", " WARN [")
    for line in printed(run.stdout):
        text = masked(line, run.pilot)
        assert text in every or re.sub(r"^<TIME> [A-Z]+ \[\w+\] ", "", text) in every, line


FINALISING = r"""
import json, os, sys, urllib.parse, urllib.request
for i in range(20):  # a stderr tail as long as the shutdown event keeps
    print("%d %s" % (i, "e" * 4000), file=sys.stderr, flush=True)
def post(method, payload):
    args = json.dumps((json.dumps(payload), os.environ["DIRAC_PILOT_STAMP"], ""))
    body = urllib.parse.urlencode({"method": method, "args": args}).encode()
    print(json.loads(urllib.request.urlopen(os.environ["PILOTLOG_RELAY_URL"], body).read())["OK"], flush=True)
post("sendMessage", "2026-12-04T10:00:00.000000Z INFO [LaunchAgent] done\n")
post("finaliseLogs", {"retCode": os.environ["RET_CODE"]})
"""


@pytest.mark.parametrize("ret_code", ["3", "x" * 50000])
def test_the_pilots_finalise_is_carried_by_the_shutdown_and_never_makes_it_too_large(tmp_path, pilotlog, ret_code):
    """The Pilot's finaliseLogs of the run's pilot leaves the spool at the end, its retCode in
    the shutdown (``data.pilot_finalise``), as it came when short; a retCode of 50,000 characters
    (the relay stored it: it fits one event) becomes the exit code it says, so the shutdown,
    whose stderr tail is already long, is still recorded."""
    child = tmp_path / "finalising.py"
    child.write_text(FINALISING)
    p = pilotlog(
        "run", "--relay", "--", sys.executable, child, env={"DIRAC_PILOT_STAMP": new_stamp(), "RET_CODE": ret_code}
    )
    assert p.returncode == 0 and p.stdout == "True\nTrue\n", p.stderr
    events = pilotlog.events()
    assert [e["phase"] for e in events] == ["boot", "LaunchAgent", "shutdown"]
    assert events[-1]["data"]["pilot_finalise"] == {"retCode": ret_code if len(ret_code) < 64 else "1"}
    assert len(events[-1]["data"]["stderr_tail"]) == 20


def test_when_our_shutdown_cannot_be_recorded_the_pilots_finalise_goes_back_last(tmp_path, monkeypatch):
    """A fault no peer makes on cue: the wrapper's shutdown is not recorded (a disk full at that
    instant). The Pilot's finaliseLogs, taken out of the spool for it, goes back in, last, so
    that DIRAC's log is finalised all the same. In process: the recorder refuses the shutdown."""
    from pilotlogger import recorder
    from pilotlogger.config import load
    from pilotlogger.wrapper import Wrapper

    record = recorder.Recorder.record

    def no_shutdown(self, phase, message, status="info", source=None, data=None, cut_long=True):
        if phase == "shutdown" and source == "pilot-wrapper":
            return None
        return record(self, phase, message, status, source, data, cut_long)

    monkeypatch.setattr(recorder.Recorder, "record", no_shutdown)
    monkeypatch.setenv("DIRAC_PILOT_STAMP", new_stamp())
    monkeypatch.setenv("RET_CODE", "0")
    child = tmp_path / "finalising.py"
    child.write_text(FINALISING)
    config = load({"spool": str(tmp_path / "spool")})
    assert Wrapper(config, [sys.executable, str(child)], relay=True).run() == 0
    events = Pilotlog(None, tmp_path).events()
    assert [(e["phase"], e["source"]) for e in events] == [
        ("boot", "pilot-wrapper"),
        ("LaunchAgent", "relay"),
        ("shutdown", "relay"),
    ]
    assert events[-1]["data"]["dirac_form"]["method"] == "finaliseLogs" and events[-1]["seq"] > events[1]["seq"] + 1
