"""`pilotlog run -- CMD`: the child's exit code exactly, its output unchanged, its life recorded."""

import json
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def run(pilotlog, *child, options=(), env=None):
    return pilotlog("run", *options, "--", *child, env=env)


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_exit_code_is_returned_exactly(pilotlog, code):
    p = run(pilotlog, "sh", "-c", "exit %d" % code)
    assert p.returncode == code
    boot, shutdown = pilotlog.events()
    assert boot["phase"] == "boot" and boot["data"]["command"] == ["sh", "-c", "exit %d" % code]
    assert shutdown["phase"] == "shutdown" and shutdown["data"]["exit_code"] == code
    assert shutdown["status"] == ("info" if code == 0 else "error")


def test_killed_child_gives_128_plus_signal(pilotlog):
    p = run(pilotlog, "sh", "-c", "kill -9 $$")
    assert p.returncode == 137
    assert pilotlog.events()[-1]["data"]["signal"] == "SIGKILL"


def test_a_child_killed_by_a_real_time_signal_is_recorded_with_its_code(pilotlog):
    """A real-time signal has no name in Python's signal.Signals: the shutdown still says which."""
    rt = signal.SIGRTMIN + 6
    p = run(
        pilotlog,
        "python3",
        "-c",
        "import os, signal; signal.signal(%d, signal.SIG_DFL); os.kill(os.getpid(), %d)" % (rt, rt),
    )
    assert p.returncode == 128 + rt, p.stderr
    shutdown = pilotlog.events()[-1]
    assert shutdown["phase"] == "shutdown"
    assert shutdown["data"]["signal"] == "SIGRTMIN+6"
    assert shutdown["data"]["exit_code"] == 128 + rt


def test_missing_command_is_127_like_a_shell(pilotlog):
    p = run(pilotlog, "/no/such/pilot")
    assert p.returncode == 127 and "cannot run /no/such/pilot" in p.stderr
    assert pilotlog.events()[-1]["data"]["exit_code"] == 127


def test_the_outcome_never_changes_when_recording_fails(pilotlog, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    p = run(pilotlog, "sh", "-c", "echo still here; exit 7", env={"PILOTLOG_SPOOL": blocker / "spool"})
    assert p.returncode == 7 and p.stdout == "still here\n"
    p = run(pilotlog, "sh", "-c", "exit 5", env={"PILOTLOG_CONFIG": tmp_path / "missing.json"})
    assert p.returncode == 5 and "running the command without recording" in p.stderr


def test_output_passes_through_unchanged_and_stderr_tail_is_kept(pilotlog):
    script = (
        "import sys; sys.stdout.buffer.write(b'a\\xff\\x00b\\nno newline'); sys.stderr.write('e1\\ne2\\n'); sys.exit(3)"
    )
    for options in ((), ("--capture",)):
        p = subprocess.run(
            [pilotlog.python, "-I", "-S", str(pilotlog.bundle), "run", *options, "--", sys.executable, "-c", script],
            cwd=str(pilotlog.cwd),
            env=pilotlog.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        assert p.returncode == 3
        assert p.stdout == b"a\xff\x00b\nno newline"
        assert p.stderr.endswith(b"e1\ne2\n")
    assert pilotlog.events()[-1]["data"]["stderr_tail"] == ["e1", "e2"]


def test_long_stderr_lines_never_cost_the_shutdown_event(pilotlog):
    """20 stderr lines of 4,000 characters (control characters among them, six bytes each in the
    event) used to make the shutdown event 80 KB, over max_event_bytes: it was not recorded at
    all. Each tail line is now cut, and says so."""
    script = "import sys\nfor i in range(20): print('%d %s' % (i, '\\x01' * 4000), file=sys.stderr)\nsys.exit(4)"
    p = run(pilotlog, sys.executable, "-c", script)
    assert p.returncode == 4 and "not recorded" not in p.stderr, p.stderr
    shutdown = pilotlog.events()[-1]
    assert shutdown["phase"] == "shutdown" and shutdown["data"]["exit_code"] == 4
    tail = shutdown["data"]["stderr_tail"]
    assert [line.split()[0] for line in tail] == [str(i) for i in range(20)]
    assert all(line.endswith(" [truncated]") for line in tail)


def test_patterns_and_capture(pilotlog):
    script = "echo 'installed DIRAC v8r0'; echo 'JobAgent: matched a job 1234'; echo plain; echo 'failed to match' >&2"
    p = run(
        pilotlog,
        "sh",
        "-c",
        script,
        options=(
            "--capture",
            "--pattern",
            "installed DIRAC=install",
            "--pattern",
            "matched a job=match",
            "--pattern",
            "failed to match=nomatch",
        ),
    )
    assert p.returncode == 0
    phases = [(e["phase"], e["message"]) for e in pilotlog.events()][1:-1]
    assert sorted(phases) == sorted(
        [
            ("install", "installed DIRAC v8r0"),
            ("match", "JobAgent: matched a job 1234"),
            ("log", "plain"),
            ("nomatch", "failed to match"),
        ]
    )


def test_an_install_like_burst_keeps_every_line(pilotlog):
    """A pilot's install step prints hundreds of lines in a second, and the line that says why it
    failed comes last: every line is recorded, in order (issue 25: 20 lines/s after a burst of 200
    kept about 220 of these 1,000, and not the error)."""
    child = (
        "import sys, time\n"
        "for i in range(999):\n"
        "    print('Collecting package-%d (from -r requirements.txt)' % i, flush=True)\n"
        "    time.sleep(0.001)\n"
        "print('ERROR: Could not install packages due to an OSError: No space left on device', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    p = run(pilotlog, sys.executable, "-c", child, options=("--capture",))
    assert p.returncode == 1 and len(p.stdout.splitlines()) == 999
    events = pilotlog.events()
    logs = [e for e in events if e["phase"] == "log"]
    assert [e["message"] for e in logs[:999]] == [
        "Collecting package-%d (from -r requirements.txt)" % i for i in range(999)
    ]
    assert logs[-1]["message"].startswith("ERROR: Could not install") and logs[-1]["status"] == "warning"
    assert len(logs) == 1000 and events[-1]["phase"] == "shutdown"
    assert "capture_dropped_lines" not in events[-1]["data"] and "not recorded" not in events[-1]["message"]


def test_a_runaway_child_keeps_its_first_and_last_lines_within_the_budget(pilotlog):
    """A million lines: all pass through; the first lines are recorded as they come, the last ones
    (the error among them) at the end, within the budget; the rest are counted in shutdown and
    the exit code is the child's."""
    budget = 200000
    child = (
        "import sys\n"
        "sys.stdout.writelines('runaway line %d\\n' % i for i in range(1000000))\n"
        "sys.stdout.flush()\n"
        "print('Traceback: the reason it failed', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    p = run(pilotlog, sys.executable, "-c", child, options=("--capture",), env={"PILOTLOG_CAPTURE_BUDGET": budget})
    assert p.returncode == 3
    out = p.stdout.splitlines()
    assert len(out) == 1000000 and out[-1] == "runaway line 999999"
    assert "past the capture budget" in p.stderr
    events = pilotlog.events()
    boot, *recorded, shutdown = events
    lines = [e for e in recorded if e["data"]["stream"] != "pilotlog"]
    (marker,) = [e for e in recorded if e["data"]["stream"] == "pilotlog"]
    head = lines[: recorded.index(marker)]
    tail = lines[recorded.index(marker) :]
    assert [e["message"] for e in head] == ["runaway line %d" % i for i in range(len(head))] and len(head) > 100
    tail_out = [e["message"] for e in tail if e["data"]["stream"] == "stdout"]
    assert tail_out == ["runaway line %d" % i for i in range(1000000 - len(tail_out), 1000000)] and len(tail_out) > 10
    assert "Traceback: the reason it failed" in [e["message"] for e in tail if e["data"]["stream"] == "stderr"]
    assert sum(len(e["message"].encode()) + 400 for e in lines) <= budget
    dropped = 1000001 - len(lines)
    assert shutdown["data"]["exit_code"] == 3 and shutdown["data"]["capture_dropped_lines"] == dropped
    assert marker["data"]["dropped_lines"] == dropped and "%d output line(s)" % dropped in shutdown["message"]


def test_a_child_may_print_a_mebibyte_ahead_of_the_recording(pilotlog):
    """An install step printing 500 KB at once is not held up while its lines are recorded: its
    pipes hold 1 MiB (Linux's default 64 KiB would stop it at the first 64 KiB)."""
    child = "import fcntl, sys; print(fcntl.fcntl(1, 1032), fcntl.fcntl(2, 1032))"  # F_GETPIPE_SZ
    with open("/proc/sys/fs/pipe-max-size") as f:
        assert int(f.read()) >= 1 << 20  # the kernel's default limit for unprivileged processes
    p = run(pilotlog, sys.executable, "-c", child, options=("--capture",))
    assert p.returncode == 0 and p.stdout.split() == ["1048576", "1048576"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4096), st.sampled_from(["stdout", "stderr"])), max_size=300), st.data())
def test_the_capture_budget_keeps_a_prefix_and_each_streams_last_lines_never_more_than_it_allows(lines, data):
    """Whatever the lines and the budget: every line is recorded while it fits, then each stream's
    last lines; never more than the budget allows; every line is recorded, held or counted."""
    from pilotlogger.wrapper import CaptureBudget

    budget, tail_lines = data.draw(st.integers(1, 60000)), data.draw(st.integers(1, 50))
    policy = CaptureBudget(budget, tail_lines=tail_lines, line_cost=10)
    now = [i for i, (size, stream) in enumerate(lines) if policy.admit(str(i), size, stream, "log")]
    later = [int(line) for line, _, _ in policy.take_held()]
    assert now == list(range(len(now))) and later == sorted(later) and len(later) <= tail_lines
    for name in ("stdout", "stderr"):  # of each stream, what was not recorded at once: its last lines
        rest = [i for i in range(len(now), len(lines)) if lines[i][1] == name]
        kept = [i for i in later if lines[i][1] == name]
        assert kept == rest[len(rest) - len(kept) :]
    assert len(now) + len(later) + policy.dropped_lines == len(lines)
    assert sum(lines[i][0] + 10 for i in now + later) <= budget
    assert policy.dropped_bytes == sum(size for i, (size, _) in enumerate(lines) if i >= len(now) and i not in later)
    if sum(size + 10 for size, _ in lines) <= budget * 3 // 4:  # a normal run: everything as it comes
        assert len(now) == len(lines)
    if tail_lines >= 2 and policy.tail_room >= tail_lines * (4096 + 10):  # room by lines, not bytes:
        for name in ("stdout", "stderr"):  # a flood of one stream never pushes out the other's last line
            last = [i for i in range(len(now), len(lines)) if lines[i][1] == name][-1:]
            assert set(last) <= set(later)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.lists(st.integers(0, 300), max_size=40)), max_size=30),
    st.integers(1, 40000),
    st.integers(1, 12),
)
def test_counting_a_long_chunk_past_the_budget_in_one_step_changes_nothing(chunks, budget, tail_lines):
    """The wrapper's shortcut for a runaway (the lines of a long chunk before its last
    ``tail_lines`` are counted in one step, not held) keeps and counts what taking them one by
    one would — when the tail is bounded by its lines, as with the default budget.  When its
    bytes bound it, the shortcut may keep a line that a passed-over one would have pushed out;
    what it keeps is still each stream's last lines, within the budget."""
    from pilotlogger.wrapper import CaptureBudget

    one, fast = (CaptureBudget(budget, tail_lines=tail_lines, line_cost=10) for _ in range(2))
    n, every = 0, []
    for stream, sizes in chunks:
        lines = [(str(n + i), size) for i, size in enumerate(sizes)]
        n += len(sizes)
        every += [(stream, size) for size in sizes]
        now = [line for line, size in lines if one.admit(line, size, stream, "log")]
        if len(lines) > tail_lines and fast.exceeded:
            passed, lines = lines[:-tail_lines], lines[-tail_lines:]
            fast.pass_over(stream, len(passed), sum(size for _, size in passed))
        assert [line for line, size in lines if fast.admit(line, size, stream, "log")] == now
    if fast.tail_room >= tail_lines * (300 + 10):
        assert (fast.spent, fast.dropped_lines, fast.dropped_bytes) == (one.spent, one.dropped_lines, one.dropped_bytes)
        assert fast.take_held() == one.take_held()
        return
    held = [int(line) for line, _, _ in fast.take_held()]
    for name in ("stdout", "stderr"):
        ours = [i for i in range(n) if every[i][0] == name and i not in held]
        assert [i for i in held if every[i][0] == name] == [i for i in range(n) if every[i][0] == name][len(ours) :]
    assert fast.spent <= budget


def test_bad_pattern_or_no_command_is_a_usage_error(pilotlog):
    assert pilotlog("run", "--pattern", "([=x", "--", "true").returncode == 2
    assert pilotlog("run", "--pattern", "x=bad phase", "--", "true").returncode == 2
    p = pilotlog("run")
    assert p.returncode == 2 and "run needs a command" in p.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1])
def test_signals_are_forwarded_to_the_child(pilotlog, sig):
    child = (
        "import signal, sys, time\n"
        "signal.signal(%d, lambda s, f: sys.exit(40 + s))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    ) % sig
    proc = subprocess.Popen(
        [pilotlog.python, "-I", "-S", str(pilotlog.bundle), "run", "--", sys.executable, "-c", child],
        cwd=str(pilotlog.cwd),
        env=pilotlog.env,
        stdout=subprocess.PIPE,
        universal_newlines=True,
    )
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    assert proc.wait(20) == 40 + sig
    assert pilotlog.events()[-1]["data"]["exit_code"] == 40 + sig


def test_ships_while_the_child_runs_and_drains_at_the_end(pilotlog, bundle, pki, tmp_path):
    import uuid

    from helpers import Serve

    server = Serve(bundle, pki, tmp_path / "store")
    try:
        pilot = str(uuid.uuid4())
        env = {
            "PILOTLOG_PILOT_UUID": pilot,
            "PILOTLOG_SINK": server.url,
            "PILOTLOG_CA_FILE": pki.path("ca.pem"),
            "PILOTLOG_CERT": pki.path("client.pem"),
            "PILOTLOG_KEY": pki.path("client.key"),
        }
        stored = server.dir / "unknown" / pilot
        proc = subprocess.Popen(
            [
                pilotlog.python,
                "-I",
                "-S",
                str(bundle),
                "run",
                "--ship-every",
                "0.2",
                "--",
                "sh",
                "-c",
                "sleep 3; exit 9",
            ],
            cwd=str(pilotlog.cwd),
            env=dict(pilotlog.env, **env),
        )
        end = time.monotonic() + 2.5
        while not stored.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert stored.exists() and proc.poll() is None, "boot was not shipped while the child ran"
        assert proc.wait(30) == 9
        final = server.dir / "unknown" / (pilot + ".log")  # shutdown finalised the DIRAC log
        lines = final.read_text().splitlines()
        assert "boot: starting sh -c sleep 3; exit 9" in lines[0] and "shutdown: sh exited with 9" in lines[-1]
        assert pilotlog.events() == []
    finally:
        server.stop()


def test_a_grandchild_holding_the_output_open_does_not_keep_the_wrapper(pilotlog):
    """A pilot that leaves a background process with its stdout: the wrapper returns after the idle
    bound, the lines read are all before shutdown, and shutdown says the output was still open."""
    started = time.monotonic()
    p = pilotlog("run", "--capture", "--", "sh", "-c", "sleep 20 & echo started a daemon; exit 3")
    elapsed = time.monotonic() - started
    assert p.returncode == 3 and elapsed < 15, (p.returncode, elapsed)
    events = pilotlog.events()
    assert [e["phase"] for e in events] == ["boot", "log", "shutdown"]
    assert events[1]["message"] == "started a daemon" and events[2]["data"]["output_still_open"] is True


def test_lines_read_slowly_are_all_recorded_before_the_shutdown(tmp_path, monkeypatch):
    """A node so loaded that recording a line takes longer than the child takes to print it (the
    200-pilot burst): the child is long gone when the last lines are read; they come before
    shutdown all the same.  (Recording is slowed by hand: no real disk can be made this slow.)"""
    from pilotlogger import config as config_module
    from pilotlogger.wrapper import Wrapper

    monkeypatch.setattr("pilotlogger.wrapper.OUTPUT_IDLE", 2.0)  # each line still comes well within it
    config = config_module.load({"spool": str(tmp_path / "spool")}, environ={"HOME": str(tmp_path)}, cwd=str(tmp_path))
    wrapper = Wrapper(config, ["sh", "-c", "for i in $(seq 1 60); do echo line $i; done; exit 5"], capture=True)
    record = wrapper.recorder.record

    def slow_record(*args, **kw):
        time.sleep(0.1)  # 60 lines: 6 s of recording, three times the idle bound
        return record(*args, **kw)

    wrapper.recorder.record = slow_record
    assert wrapper.run() == 5
    wrapper.recorder.close()
    from pilotlogger.spool import open_spool

    spool = open_spool(config)
    events = [spool.read(name)[0] for name in spool.entries()]
    assert [e["phase"] for e in events] == ["boot"] + ["log"] * 60 + ["shutdown"]
    assert [e["message"] for e in events[1:-1]] == ["line %d" % i for i in range(1, 61)]
    assert "output_still_open" not in events[-1]["data"]


def test_output_without_a_newline_passes_through_at_once_and_a_flood_costs_no_memory(pilotlog):
    """A prompt without a newline reaches the terminal while the child still runs; a 64 MiB line
    without a newline passes through whole and is recorded cut at 4 KiB."""
    script = (
        "import sys, time; sys.stdout.write('Proceed? '); sys.stdout.flush(); time.sleep(3);"
        "sys.stdout.write('x' * (64 << 20)); sys.stdout.flush()"
    )
    proc = subprocess.Popen(
        [pilotlog.python, "-I", "-S", str(pilotlog.bundle), "run", "--capture", "--", sys.executable, "-c", script],
        cwd=str(pilotlog.cwd),
        env=pilotlog.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.read(9) == b"Proceed? "  # before the child's end (it sleeps 3 s after)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and rest == b"x" * (64 << 20)
    events = pilotlog.events()
    assert [e["phase"] for e in events] == ["boot", "log", "shutdown"]
    assert events[1]["message"] == "Proceed? " + "x" * (4096 - 9)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_after_the_childs_end_cuts_the_wait_short_and_keeps_its_exit_code(pilotlog, sig):
    """The child has ended but a background process holds its output: SIGTERM from the batch
    system must not make the wrapper die with 143; it ends at once with the child's code."""
    proc = subprocess.Popen(
        [pilotlog.python, "-I", "-S", str(pilotlog.bundle), "run", "--", "sh", "-c", "sleep 30 & exit 9"],
        cwd=str(pilotlog.cwd),
        env=pilotlog.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.5)  # the child (sh) has exited; the wrapper waits for its output (sleep holds it)
    started = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=20)
    assert proc.returncode == 9 and time.monotonic() - started < 3
    events = pilotlog.events()
    assert events[-1]["phase"] == "shutdown" and events[-1]["data"]["exit_code"] == 9
    assert events[-1]["data"]["duration_s"] < 1.5  # the child's run time, not the wait for output


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from([b"\n", b"a", b"bc", b"\xff\xfe", b"0123456789", b"\r\n", b"x" * 20]), max_size=40),
    st.data(),
)
def test_lines_are_the_same_however_the_output_is_cut(pieces, data):
    """The pump's lines: those of the whole output, each cut at the bound, whatever the chunks the
    pipe delivered; never more than the bound held (here 8 bytes)."""
    from pilotlogger.wrapper import LineCutter

    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    cutter, got = LineCutter(8), []
    for start, end in zip([0] + cuts, cuts + [len(stream)]):
        got += cutter.feed(stream[start:end])
        assert len(cutter.line) <= 8
    got += cutter.end()
    *whole, last = stream.split(b"\n")
    assert got == [line[:8] for line in whole] + ([last[:8]] if last else [])


def test_a_sigterm_that_comes_while_the_child_is_being_started_reaches_it_at_once(bundle, tmp_path):
    """The wrapper installed its forwarding after starting the child: a SIGTERM in between (the child
    already printing, the test reading it) killed the wrapper and left the child running."""
    from helpers import hampered

    proc = hampered(bundle, tmp_path, "--signal-at-start", "--", "run", "--", "sleep", "30")
    assert proc.wait(20) == 128 + signal.SIGTERM
    events = [json.loads(p.read_text()) for p in sorted((tmp_path / "spool" / "events").iterdir())]
    assert events[-1]["phase"] == "shutdown" and events[-1]["data"]["signal"] == "SIGTERM"


def test_a_delivery_stuck_at_the_end_is_the_drain_not_a_second_deadline(pilotlog):
    """The sink accepts and never answers. When the child ends, a background delivery is stuck
    on it: the final drain waits for that one (its deadline) instead of starting a second, so
    the batch slot is held one deadline, not two, and the failure is said once."""
    from helpers import SilentListener

    with SilentListener() as silent:
        env = {
            "PILOTLOG_SINK": "http://127.0.0.1:%d/" % silent.port,
            "PILOTLOG_TIMEOUT": "1",
            "PILOTLOG_DEADLINE": "3",
        }
        p = pilotlog("run", "--ship-every", "0.2", "--", "sh", "-c", "sleep 1; exit 4", env=env, timeout=120)
    assert p.returncode == 4, p.stderr
    failures = [line for line in p.stderr.splitlines() if "still failing" in line]
    assert len(failures) == 1 and "event(s) kept in spool" in failures[0], p.stderr
    assert [e["phase"] for e in pilotlog.events()][-1] == "shutdown"
