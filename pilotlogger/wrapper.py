"""``pilotlog run -- CMD``: run a pilot (or any bootstrap step) as a child and record its life.

* ``boot`` before the child starts (command line, working directory, the node's probes), ``shutdown`` after
  (exit code, signal, duration, the last lines of its stderr).
* The child's output passes through unchanged, byte for byte.  Its stderr is always read
  (for the tail); with ``capture`` its stdout and stderr lines also become ``log`` events,
  each cut at ``CAPTURE_LINE_BYTES``, within the run's budget (:class:`CaptureBudget`): every
  line of a normal pilot, the first and the last lines of a runaway one.
* ``patterns`` (regex → phase) turn lines of an unmodified pilot ("matched a job") into
  lifecycle events.
* Every recorded line comes before ``shutdown``: after the child's end its output is read
  to the end while lines keep coming (see OUTPUT_IDLE, OUTPUT_CAP).  The 200-pilot burst
  (docs/scale.md) found lines recorded after ``shutdown`` — after the final drain, so left
  spooled, and over HTTPS after DIRAC's ``finaliseLogs`` — when a loaded node recorded them
  more slowly than the child printed them.
* SIGTERM, SIGINT, SIGHUP and SIGUSR1 are forwarded to the child, from the moment it exists.
  After SIGTERM, SIGINT or SIGHUP (the batch system wants the job gone, and kills it when its
  grace period is over) the wrapper returns promptly after the child's end, whatever the disk
  or the network are doing: see ENDING_OUTPUT, ENDING_RECORD.
* The wrapper returns the child's exit code — or 128 + signal — exactly, whatever
  happens to the spool or the network: recording is best effort around the child,
  never in its way.
* With a network sink, a background thread ships while the child runs, and the spool is
  drained at the end (bounded by the configured deadline).
* With ``relay`` a relay (relay.py) listens on a free loopback port for the child's life,
  storing into the same spool: its URL is given to the child as ``PILOTLOG_RELAY_URL`` and
  in place of an argument ``{relay}``, so several pilots on one node never share one.
  relayrun.py's rules then make pilotlogger's events and the Pilot's posts one DIRAC log:
  finalised once, last; each printed line once; forwarded with the Pilot's credential when
  pilotlogger has none.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

from .console import warn
from .recorder import Recorder

FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1")
#: Forwarded signals that ask the job to end (SIGUSR1 only warns, as Slurm's --signal does).  Once one
#: came, the child's output is read for at most ENDING_OUTPUT seconds after its end, and the wrapper
#: waits at most ENDING_RECORD more for the shutdown event, written (a kill loses nothing written) with
#: its fsync let run in the background; no drain: what is spooled waits for the next replay.
ENDING = ("SIGTERM", "SIGINT", "SIGHUP")
ENDING_OUTPUT = 1.0
ENDING_RECORD = 1.0
STDERR_TAIL = 20
#: Characters of a stderr line kept in shutdown's tail, and twice as many bytes once in the event
#: (a control character takes six there): the tail can never make shutdown too large to record.
STDERR_TAIL_CHARS = 500
CAPTURE_LINE_BYTES = 4096
#: What a recorded line costs the run's budget beyond its own bytes: about what its event adds
#: (id, times, pilot, source, context), so that a flood of empty lines is bounded too.
CAPTURE_LINE_COST = 400
#: Past the budget, the last this many lines are held and recorded at the end (the error is there).
CAPTURE_TAIL_LINES = 500
SHIP_EVERY = 10.0
SOURCE = "pilot-wrapper"  # the source of the wrapper's events
RELAY_ARGUMENT = "{relay}"  # an argument of the child's replaced by the relay's URL
RELAY_VARIABLE = "PILOTLOG_RELAY_URL"
LOOPBACK_NAMES = "127.0.0.1,localhost,::1,[::1]"  # added to the child's no_proxy with a relay (urllib reads [::1])
#: After the child's end, its output is read to the end while it keeps coming (a loaded node
#: records slowly), but not past OUTPUT_IDLE seconds without a line (a grandchild holding the
#: pipe open, silent) nor past OUTPUT_CAP seconds in all (one that keeps writing).
OUTPUT_IDLE = 5.0
OUTPUT_CAP = 60.0


class CaptureBudget:
    """Which of the child's lines become events: all of them while the run's budget lasts, then
    only the last ``tail_lines`` — held here and recorded at the end, before ``shutdown`` — with
    the lines in between counted, not recorded.

    A line costs its bytes plus ``line_cost``.  A quarter of the budget (at most what
    ``tail_lines`` full lines cost) is kept back for the tail, so that what a run records
    never exceeds ``budget``, however much the child prints.  A normal pilot (its install
    steps included: docs/performance.md measures them) stays far under the default, and loses
    nothing; a runaway one keeps its first lines (how it started) and its last (how it ended).
    The tail is kept per stream: when room is needed, the stream holding more lines (on a tie,
    the older line) gives up its oldest, so a stdout flood cannot push out the last stderr lines (the error), which a
    separate pipe may deliver before the flood's end.

    Not thread-safe: the wrapper calls it under its own lock.
    """

    def __init__(self, budget: int, tail_lines: int = CAPTURE_TAIL_LINES, line_cost: int = CAPTURE_LINE_COST):
        self.line_cost, self.tail_lines = line_cost, tail_lines
        self.tail_room = min(budget // 4, tail_lines * (CAPTURE_LINE_BYTES + line_cost))
        self.head_room = budget - self.tail_room
        self.spent = self.held_cost = self.arrived = 0
        self.held: dict = {}  # stream -> deque of (arrival, line, phase, cost), oldest first
        self.dropped_lines = self.dropped_bytes = 0

    @property
    def exceeded(self) -> bool:
        return self.held_cost > 0 or self.dropped_lines > 0

    def admit(self, line: str, size: int, stream: str, phase: str) -> bool:
        """True: record this line now.  False: it is held for the tail (an older held line may
        be dropped to make room)."""
        cost = size + self.line_cost
        if not self.exceeded and self.spent + cost <= self.head_room:
            self.spent += cost
            return True
        import collections

        self.arrived += 1
        self.held.setdefault(stream, collections.deque()).append((self.arrived, line, phase, cost))
        self.held_cost += cost
        count = sum(len(q) for q in self.held.values())
        while count and (count > self.tail_lines or self.held_cost > self.tail_room):
            _, _, _, old = max((q for q in self.held.values() if q), key=_longer_then_older).popleft()
            self.held_cost -= old
            count -= 1
            self.dropped_lines += 1
            self.dropped_bytes += old - self.line_cost
        return False

    def pass_over(self, stream: str, count: int, size: int) -> None:
        """``count`` lines of ``stream`` (``size`` bytes) past the budget, followed by at least
        ``tail_lines`` newer ones of the same stream: none of them, nor any line the stream held,
        can be among its last lines, so they are counted as dropped without being held."""
        for _, _, _, cost in self.held.pop(stream, ()):
            self.held_cost -= cost
            self.dropped_lines += 1
            self.dropped_bytes += cost - self.line_cost
        self.dropped_lines += count
        self.dropped_bytes += size

    def take_held(self) -> list:
        """The held tail in the order the lines came, emptied: ``[(line, stream, phase)]``."""
        held = sorted(
            (arrival, line, stream, phase) for stream, q in self.held.items() for arrival, line, phase, _ in q
        )
        self.spent += self.held_cost
        self.held, self.held_cost = {}, 0
        return [(line, stream, phase) for _, line, stream, phase in held]


def _longer_then_older(held) -> tuple:
    """Which stream's held lines give way: the one holding more, on a tie the one holding the older."""
    return len(held), -held[0][0]


class LineCutter:
    """The lines in a stream of chunks, however it is cut, each at most ``most`` bytes: past
    that, the rest of a line is skipped (it has been passed through already), so a flood
    without newlines holds no more than ``most`` bytes."""

    def __init__(self, most: int):
        self.most, self.line, self.dropping = most, b"", False

    def feed(self, chunk: bytes) -> list:
        """The lines ``chunk`` completes (without their newline)."""
        *ended, rest = chunk.split(b"\n")
        most, done = self.most, []
        if ended:  # the first completes the line begun before; the others are whole
            done.append((self.line if self.dropping else self.line + ended[0])[:most])
            done += [piece[:most] for piece in ended[1:]]
            self.line, self.dropping = b"", False
        if not self.dropping:
            self.line += rest
            if len(self.line) > most:
                self.line, self.dropping = self.line[:most], True
        return done

    def end(self) -> list:
        """The last line, when the stream did not end with a newline."""
        return [self.line] if self.line else []


def parse_patterns(specs) -> list:
    """``["REGEX=PHASE", …]`` → [(compiled, phase)]; ValueError names a bad one."""
    from .events import EventError, check_name

    patterns = []
    for spec in specs or ():
        regex, sep, phase = spec.rpartition("=")
        if not sep or not regex:
            raise ValueError("--pattern %r must be REGEX=PHASE" % spec)
        try:
            patterns.append((re.compile(regex), check_name("phase", phase)))
        except re.error as exc:
            raise ValueError("--pattern %r: bad regular expression (%s)" % (spec, exc)) from None
        except EventError as exc:
            raise ValueError("--pattern %r: %s" % (spec, exc)) from None
    return patterns


class Wrapper:
    def __init__(self, config, argv, capture=False, patterns=(), ship_every=SHIP_EVERY, relay=False):
        self.argv, self.capture, self.patterns, self.ship_every = argv, capture, patterns, ship_every
        self.relay = self._relay(config) if relay else None
        #: with no relay after all, what the child gets for {relay}: DIRAC's own URL when that is the sink
        self.direct_url = _diracs_url(config) if relay and self.relay is None else None
        self.recorder = None
        try:
            self.recorder = Recorder(config, group_log_fsyncs=True) if config is not None else None
        except Exception as exc:  # no recording at all; the child still runs
            warn("not recording this run: %s" % exc)
        self.relayed = None  # relayrun.RelayedRun: the rules of a relay around the Pilot
        if self.relay is not None and self.recorder is not None:
            from .relayrun import RelayedRun

            self.relayed = RelayedRun(self.recorder, self.relay, SOURCE, CAPTURE_LINE_BYTES if capture else 0)
        self.tail = []
        self.tail_lock = threading.Lock()
        self.budget = CaptureBudget(self.recorder.config.capture_budget if self.recorder is not None else 0)
        self.shipper = None
        self.output_read = self.lines_seen = 0  # by the pumps: how _wait_for_output sees they are at work
        self.lines_lock = threading.Lock()  # held while a line is recorded, and to close recording
        self.recording_lines = True  # False once the shutdown is recorded: later lines only pass through
        self.interrupted = threading.Event()  # a signal came after the child's end
        self.ending: "str | None" = None  # the signal that asked the job to end (see ENDING)
        self.finishing = False

    @staticmethod
    def _relay(config):
        """The relay for the child's life, listening already (None, said in one line, if it cannot)."""
        from .relay import Relay

        try:
            return Relay(config, problem="the configuration could not be read, nothing is recorded").start()
        except Exception as exc:  # no loopback, no port, no thread: the child still runs
            direct = _diracs_url(config)
            warn(
                "cannot start the relay (%s): %s"
                % (
                    getattr(exc, "strerror", None) or exc,
                    "the child is given DIRAC's URL for %s and posts there itself" % RELAY_ARGUMENT
                    if direct
                    else "%s is left as it is (the sink is not DIRAC's service)" % RELAY_ARGUMENT,
                )
            )
            return None

    def child_argv_env(self):
        """The child's argv and environment: with a relay, its URL in both (None: ours, inherited),
        and loopback in ``no_proxy``: with a site's ``http_proxy`` set, urllib would otherwise send
        the Pilot's posts for 127.0.0.1 to the proxy, which cannot reach our loopback."""
        if self.relay is None:
            return self._argv_with(self.direct_url), None
        env = dict(os.environ)  # passed through to the child, with what the relay needs added
        env[RELAY_VARIABLE] = self.relay.url
        # each of the two spellings the site set (only NO_PROXY: a lowercase one made here would hide it)
        for name in [name for name in ("no_proxy", "NO_PROXY") if name in env] or ["no_proxy"]:
            env[name] = with_loopback(env.get(name, ""))
        return self._argv_with(self.relay.url), env

    def _argv_with(self, url: "str | None") -> list:
        """The child's argv with ``url`` in place of each RELAY_ARGUMENT (None: as it is)."""
        return [url if url and a == RELAY_ARGUMENT else a for a in self.argv]

    def record(self, phase, message, status="info", **data):
        """The event recorded, or None."""
        if self.recorder is not None:
            try:
                return self.recorder.record(phase, message, status, SOURCE, data)
            except Exception as exc:
                warn("event not recorded: %s" % exc)
        return None

    def _pump(self, source, sink, stream_name: str):
        """Copy the child's stream through unchanged as it comes (a prompt or a progress bar
        without a newline passes at once); look at each line on the way, keeping at most
        CAPTURE_LINE_BYTES of one (a newline-free flood costs no memory)."""
        fd = source.fileno()
        lines = LineCutter(CAPTURE_LINE_BYTES)
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.output_read += len(chunk)
            try:
                if sink is not None:  # None: our own stream was closed when we started
                    sink.write(chunk)
                    sink.flush()
            except (OSError, ValueError):
                pass  # our own output is gone; keep draining so the child never blocks
            self._look_at(lines.feed(chunk), stream_name)
        self._look_at(lines.end(), stream_name)  # a last line without a newline
        source.close()

    def _look_at(self, lines: list, stream_name: str) -> None:
        """The lines of one chunk.  Past the capture budget only the last lines of a stream can
        still be kept, so the others of a long chunk are counted in one step: a runaway child
        passes through at the speed of its pipe, not of a Python loop per line."""
        keep = self.budget.tail_lines
        if self.capture and len(lines) > keep and self.budget.exceeded:
            passed, lines = lines[:-keep], lines[-keep:]
            with self.lines_lock:
                self.lines_seen += len(passed)
                if self.recording_lines:
                    self.budget.pass_over(stream_name, len(passed) - passed.count(b""), sum(map(len, passed)))
        for line in lines:
            self._look(line, stream_name)

    def _look(self, raw: bytes, stream_name: str) -> None:
        """One line of the child's (at most CAPTURE_LINE_BYTES, so as many characters): the stderr
        tail, a pattern's event, or a captured log event."""
        line = raw.decode("utf-8", "replace").rstrip("\r")
        with self.lines_lock:
            self.lines_seen += 1
            if not self.recording_lines:
                return  # after the shutdown event: passed through, never recorded out of order
            if stream_name == "stderr":
                with self.tail_lock:
                    self.tail = (self.tail + [_tail_line(line)])[-STDERR_TAIL:]
            phase = next((phase for regex, phase in self.patterns if regex.search(line)), None)
            if phase is None and self.capture and line:
                phase = "log"
            if phase is None or self.recorder is None:
                return
            exceeded = self.budget.exceeded
            if self.budget.admit(line, len(raw), stream_name, phase):
                self._record_line(line, stream_name, phase)
            elif not exceeded:  # the first line past the budget: said once
                warn(
                    "the output of %s is past the capture budget (capture_budget=%d bytes): its last lines (up to"
                    " %d) will be recorded when it ends, the others counted in shutdown"
                    % (self.argv[0], self.recorder.config.capture_budget, self.budget.tail_lines)
                )

    def _record_line(self, line: str, stream_name: str, phase: str) -> None:
        if phase == "log":
            event = self.record("log", line, "warning" if stream_name == "stderr" else "info", stream=stream_name)
            if event is not None and stream_name == "stdout" and self.relayed is not None:
                self.relayed.printed(event, line)
        else:
            self.record(phase, line, stream=stream_name)

    def _record_held_tail(self) -> None:
        """Past the budget: say in place what was left out, then record the lines held for the tail
        (their event time is now: the time they were recorded, not printed)."""
        budget = self.budget
        if budget.dropped_lines:
            message = "%d line(s) (%d bytes) of output not recorded: over the capture budget of %d bytes" % (
                budget.dropped_lines,
                budget.dropped_bytes,
                self.recorder.config.capture_budget if self.recorder is not None else 0,
            )
            self.record(
                "log",
                "%s; its last %d line(s) follow" % (message, len(budget.held)),
                "warning",
                stream="pilotlog",
                dropped_lines=budget.dropped_lines,
                dropped_bytes=budget.dropped_bytes,
            )
        for line, stream_name, phase in budget.take_held():
            self._record_line(line, stream_name, phase)

    def _wait_for_output(self, pumps) -> bool:
        """Let the pumps read the child's output to its end; True when they did.

        Bounded by OUTPUT_IDLE without output, OUTPUT_CAP in all, and a signal; then recording
        of lines stops (under the lock, so none is recorded after the shutdown event) and the
        pumps go on passing output through until the wrapper ends.
        """
        started = time.monotonic()
        seen, progress = (-1, -1), started
        while any(p.is_alive() for p in pumps) and not self.interrupted.is_set():
            now = time.monotonic()
            if (self.output_read, self.lines_seen) != seen:
                seen, progress = (self.output_read, self.lines_seen), now
            elif now - progress >= OUTPUT_IDLE:
                break
            if now - started >= (OUTPUT_CAP if self.ending is None else ENDING_OUTPUT):
                break
            for pump in pumps:
                pump.join(timeout=0.1)
        with self.lines_lock:
            self.recording_lines = False
        return not any(p.is_alive() for p in pumps)

    def run(self) -> int:
        started = time.monotonic()
        facts = {}
        if self.recorder is not None:
            from .probes import probe_all

            facts = probe_all(self.recorder.config.environ)
        try:
            cwd = os.getcwd()
        except OSError as exc:  # deleted under the pilot: the child still runs there
            cwd = "(%s)" % (exc.strerror or exc)
        argv, env = self.child_argv_env()
        extra = {"relay": self.relay.url} if self.relay is not None else {}
        self.record(
            "boot", "starting %s" % " ".join(argv), command=argv, cwd=cwd, pid=os.getpid(), probes=facts, **extra
        )
        child, early = None, []  # a signal that came while the child was being started is forwarded next

        def forward(signum, frame):
            if signal.Signals(signum).name in ENDING:
                self._asked_to_end(signum)
            if child is None:
                early.append(signum)
            else:
                child.send_signal(signum)

        previous = {getattr(signal, name): signal.signal(getattr(signal, name), forward) for name in FORWARDED}
        try:
            child = subprocess.Popen(
                argv, stdout=subprocess.PIPE if self.capture or self.patterns else None, stderr=subprocess.PIPE, env=env
            )
        except OSError as exc:
            self._restore(previous)
            code = 126 if isinstance(exc, PermissionError) else 127  # as a shell would
            warn("cannot run %s: %s" % (self.argv[0], exc.strerror or exc))
            self._stop_relay()
            self.record("shutdown", "could not start: %s" % (exc.strerror or exc), "error", exit_code=code)
            self._finish()
            return code
        for signum in early:
            child.send_signal(signum)
        for pipe in (child.stdout, child.stderr):
            _widen(pipe)
        if self.relayed is not None:
            self.relayed.child_started(child.pid)
        pumps = [threading.Thread(target=self._pump, args=(child.stderr, _binary(sys.stderr), "stderr"), daemon=True)]
        if child.stdout is not None:
            pumps.append(
                threading.Thread(target=self._pump, args=(child.stdout, _binary(sys.stdout), "stdout"), daemon=True)
            )
        for pump in pumps:
            pump.start()
        if self.recorder is not None:
            from .ship import Shipper

            self.shipper = Shipper(
                lambda: self.recorder, self.ship_every, self.relayed.defer if self.relayed is not None else None
            )
        try:
            while True:  # not a bare wait(): a signal the kernel gives another of our threads would only be
                try:  # handled (forwarded) once the child ended; a timed wait wakes every 50 ms at most
                    returncode = child.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
        except BaseException:
            self._restore(previous)
            self._stop_relay()
            raise
        duration = time.monotonic() - started
        for sig in previous:  # the child is gone: a signal now only cuts short what is left to do
            signal.signal(sig, self._interrupt)
        try:
            self._after_child_until_asked_to_end(pumps, returncode, duration)
        finally:
            self._restore(previous)
        return 128 - returncode if returncode < 0 else returncode

    def _interrupt(self, signum, frame) -> None:
        self._asked_to_end(signum)
        self.interrupted.set()

    def _asked_to_end(self, signum: int) -> None:
        """From now on, events are written and their fsyncs left to the background (a kill loses
        nothing written; a disk slow to flush must not hold the job past its grace period)."""
        if self.ending is None:
            self.ending = signal.Signals(signum).name
            if self.recorder is not None:
                self.recorder.defer_fsyncs()

    def _after_child_until_asked_to_end(self, pumps, returncode: int, duration: float) -> None:
        """Run :meth:`_after_child` in a thread and wait for it — but once a signal asked the job to
        end (forwarded to the child, or come since its end), for at most ENDING_OUTPUT +
        ENDING_RECORD seconds: events are then written before they are fsynced (in the
        background, see _asked_to_end), so a slow disk's flushes cost no grace time, and nothing
        is drained.  Only a disk that cannot even take a write by then costs the events still to
        write (one line)."""
        ender = threading.Thread(target=self._end, args=(pumps, returncode, duration), daemon=True)
        ender.start()
        limit = None
        while limit is None or time.monotonic() < limit:
            if limit is None and self.ending is not None:
                limit = time.monotonic() + ENDING_OUTPUT + ENDING_RECORD
            ender.join(0.05)  # a timed wait: the signal handlers run in this thread
            if not ender.is_alive():
                return
        warn(
            "%s asked the job to end, and %g s after that and the end of %s the spool %s (a slow disk?):"
            " returning now"
            % (
                self.ending,
                ENDING_OUTPUT + ENDING_RECORD,
                self.argv[0],
                "has not confirmed its last writes; they are kept unless the node loses power"
                if self.finishing
                else "is still busy: events it had not written by then are not recorded",
            )
        )

    def _end(self, pumps, returncode: int, duration: float) -> None:
        try:
            self._after_child(pumps, returncode, duration)
        except Exception as exc:  # the exit code is the child's all the same (see run)
            warn("shutdown of %s not recorded: %s: %s" % (self.argv[0], type(exc).__name__, exc))

    @staticmethod
    def _restore(previous) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _after_child(self, pumps, returncode: int, duration: float) -> int:
        """Read the rest of the output, record shutdown, drain; the child's exit code, whatever comes.

        A forwarded signal (SIGTERM from the batch system…) arriving now stops the wait for
        output and skips the final drain (the events stay spooled for a replay): the wrapper
        must end, and with the child's code, not with the signal's.
        """
        self._stop_relay()  # the child is gone: what it posted is stored, before its shutdown
        output_ended = self._wait_for_output(pumps)
        self._record_held_tail()
        signum = -returncode if returncode < 0 else None
        code = 128 + signum if signum else returncode
        with self.tail_lock:
            tail = list(self.tail)
        data = {"exit_code": code, "duration_s": round(duration, 3), "stderr_tail": tail}
        if self.relayed is not None:
            data.update(self.relayed.settle())
        if signum:
            data["signal"] = signal_name(signum)
        if self.budget.dropped_lines:
            data["capture_dropped_lines"] = self.budget.dropped_lines
            data["capture_dropped_bytes"] = self.budget.dropped_bytes
        if not output_ended:  # a grandchild holds the child's stdout/stderr open
            data["output_still_open"] = True
        status = "info" if code == 0 else "error"
        ended = "killed by %s" % data["signal"] if signum else "exited with %d" % code
        dropped = "; %d output line(s) over the capture budget not recorded" % self.budget.dropped_lines
        message = "%s %s after %.1f s%s" % (self.argv[0], ended, duration, dropped if self.budget.dropped_lines else "")
        if self.record("shutdown", message, status, **data) is None and self.relayed is not None:
            self.relayed.shutdown_not_recorded()
        self._finish()
        return code

    def _stop_relay(self) -> None:
        relay, self.relay = self.relay, None
        if relay is not None:
            try:
                relay.stop()
            except Exception as exc:
                warn("stopping the relay: %s: %s" % (type(exc).__name__, exc))

    def _finish(self):
        """fsync the captured lines still waiting, drain the spool (the sink's deadline bounds it)
        unless a signal asked the job to end."""
        self.finishing = True  # every event is written: what is left is fsyncs and shipping
        if self.recorder is not None:
            self.recorder.close()
        drain = self.ending is None
        if drain and self.relayed is not None:
            drain = self.relayed.await_credential(self.recorder.config.deadline)
        if self.shipper is not None:
            self.shipper.stop(drain)
        elif self.recorder is not None and drain:
            from .ship import Shipper

            Shipper(lambda: self.recorder).stop()


def _diracs_url(config) -> "str | None":
    """The sink's URL when it is DIRAC's pilot-logging service (the Pilot can post there itself)."""
    if config is None or config.http_protocol != "dirac":
        return None
    sink = config.sink or ""
    return sink if sink.startswith(("https://", "http://")) else None


def with_loopback(no_proxy: str) -> str:
    """A ``no_proxy`` value that also names loopback; ``*`` (no proxy for any host) stays as it is."""
    if no_proxy.strip() == "*":
        return no_proxy
    return ",".join(filter(None, [no_proxy.strip(", "), LOOPBACK_NAMES]))


#: Bytes a child may print ahead of the wrapper (Linux's default pipe holds 64 KiB): an install
#: step printing 500 KB at once is not held up while its lines are recorded.
PIPE_BYTES = 1 << 20


def _widen(pipe) -> None:
    """Give the child's pipe PIPE_BYTES of room (Linux, within /proc/sys/fs/pipe-max-size); elsewhere,
    or refused, it keeps its size."""
    if pipe is None:
        return
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)  # 1031: Linux, Python < 3.10
    except (OSError, ImportError):
        pass


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9; a real-time signal, which has no name of its own, as ``SIGRTMIN+N``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        low = getattr(signal, "SIGRTMIN", None)
        return "SIGRTMIN+%d" % (signum - low) if low is not None and signum >= low else "signal %d" % signum


def _binary(stream):
    return getattr(stream, "buffer", stream)


def _tail_line(line: str) -> str:
    """A stderr line as shutdown's tail keeps it (STDERR_TAIL_CHARS): 20 lines of 4096 characters
    made a shutdown over max_event_bytes, which was then not recorded at all."""
    from .events import to_json

    if len(line) <= STDERR_TAIL_CHARS and len(to_json(line).encode("utf-8")) <= 2 * STDERR_TAIL_CHARS:
        return line
    cut = line[:STDERR_TAIL_CHARS]
    while len(to_json(cut).encode("utf-8")) > 2 * STDERR_TAIL_CHARS:
        cut = cut[: len(cut) // 2]
    return cut + " [truncated]"
