"""The Python API: pilotlogger.emit() and pilotlogger.Handler — spool first, never raise."""

import json
import logging
import os
import subprocess
import sys
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

import pilotlogger
from helpers import ROOT, Serve
from pilotlogger import config


def settings(tmp_path, **env):
    env.setdefault("PILOTLOG_SPOOL", str(tmp_path / "spool"))
    return config.load({}, {k: str(v) for k, v in env.items()})


def spooled(tmp_path):
    d = tmp_path / "spool" / "events"
    return [json.loads((d / n).read_text()) for n in sorted(os.listdir(str(d)))] if d.is_dir() else []


def test_emit_spools_an_event_and_returns_it(tmp_path):
    event = pilotlogger.emit("power", "power of 11 HS06", config=settings(tmp_path, PILOTLOG_PILOT_UUID="p1"), hs06=11)
    assert spooled(tmp_path) == [event]
    assert (event["phase"], event["message"], event["data"], event["pilot"]) == (
        "power",
        "power of 11 HS06",
        {"hs06": 11},
        "p1",
    )


def test_emit_never_raises(tmp_path, capsys):
    assert pilotlogger.emit("bad phase", config=settings(tmp_path)) is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert pilotlogger.emit("boot", config=settings(tmp_path, PILOTLOG_SPOOL=blocker / "spool")) is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("pilotlog: event not recorded: ") for line in lines)


def test_handler_maps_levels_extras_exceptions_and_phase(tmp_path):
    logger = logging.getLogger("DIRAC.Pilot/InstallDIRAC-%s" % uuid.uuid4().hex[:6])
    logger.propagate = False
    handler = pilotlogger.Handler(config=settings(tmp_path, PILOTLOG_PILOT_UUID="p1"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.debug("checking %s", "python")
    logger.info("installed DIRAC via dirac-install", extra={"phase": "install", "version": "v8r0", "obj": object()})
    logger.warning("slow mirror")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        logger.exception("failed to match")
    logger.critical("about to shutdown")
    handler.close()
    events = spooled(tmp_path)
    assert [e["status"] for e in events] == ["debug", "info", "warning", "error", "error"]
    assert [e["phase"] for e in events] == ["log", "install", "log", "log", "log"]
    assert events[0]["message"] == "checking python"
    assert events[1]["data"]["version"] == "v8r0" and events[1]["data"]["obj"].startswith("<object object")
    assert "ZeroDivisionError" in events[3]["data"]["exception"]
    assert events[0]["source"].startswith("DIRAC.Pilot-InstallDIRAC-")  # '/' is not allowed in a name
    assert len({e["seq"] for e in events}) == 5


def test_handler_never_raises_and_cuts_huge_messages(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    logger = logging.getLogger("never-raises-%s" % uuid.uuid4().hex[:6])
    logger.propagate = False
    logger.addHandler(pilotlogger.Handler(config=settings(tmp_path, PILOTLOG_SPOOL=blocker / "spool")))
    logger.error("disk trouble")  # must not raise
    assert "event not recorded" in capsys.readouterr().err
    big = logging.getLogger("big-%s" % uuid.uuid4().hex[:6])
    big.propagate = False
    big.setLevel(logging.INFO)
    big.addHandler(pilotlogger.Handler(config=settings(tmp_path)))
    big.info("x" * 200000)
    (event,) = spooled(tmp_path)
    assert event["message"].endswith(" [truncated]") and len(event["message"]) < 40000


def test_handler_ships_in_the_background_and_on_close(tmp_path, bundle, pki):
    server = Serve(bundle, pki, tmp_path / "store")
    try:
        pilot = str(uuid.uuid4())
        cfg = settings(
            tmp_path,
            PILOTLOG_PILOT_UUID=pilot,
            PILOTLOG_SINK=server.url,
            PILOTLOG_CA_FILE=pki.path("ca.pem"),
            PILOTLOG_CERT=pki.path("client.pem"),
            PILOTLOG_KEY=pki.path("client.key"),
        )
        logger = logging.getLogger("ships-%s" % uuid.uuid4().hex[:6])
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = pilotlogger.Handler(ship_every=0.2, config=cfg)
        logger.addHandler(handler)
        for i in range(3):
            logger.info("line %d", i)
        stored = server.dir / "unknown" / pilot
        end = time.monotonic() + 20
        while not (stored.exists() and len(stored.read_text().splitlines()) == 3) and time.monotonic() < end:
            time.sleep(0.05)
        assert len(stored.read_text().splitlines()) == 3, "the background thread did not ship"
        logger.info("last line")
        handler.close()  # ships what is left
        assert stored.read_text().splitlines()[-1].endswith("log: last line")
        assert spooled(tmp_path) == []
    finally:
        server.stop()


def test_importing_the_package_stays_cheap(bundle):
    """`import pilotlogger` (and so every CLI start) must not import logging; the API appears on use."""
    code = (
        "import sys; sys.path.insert(0, %r); import pilotlogger; assert 'logging' not in sys.modules;"
        " pilotlogger.Handler; assert 'logging' in sys.modules; print(pilotlogger.emit.__module__)"
    ) % str(bundle)
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        cwd=str(ROOT.parent),
        stdout=subprocess.PIPE,
        universal_newlines=True,
        check=True,
    ).stdout
    assert out.strip() == "pilotlogger.handler"
    with pytest.raises(AttributeError):
        _ = pilotlogger.no_such_thing


def test_full_spool_is_reported_and_counted_as_for_the_cli(tmp_path, capsys):
    cfg = settings(tmp_path, PILOTLOG_MAX_EVENTS=1)
    assert pilotlogger.emit("boot", config=cfg) is not None
    assert pilotlogger.emit("os", config=cfg) is None
    assert "this os event was dropped" in capsys.readouterr().err
    from pilotlogger.spool import Spool

    assert Spool(cfg.spool).read_state()["dropped_total"] == 1


@pytest.mark.parametrize("mode", ["grouped", "each"])
def test_log_fsync_grouped_writes_before_returning_and_fsyncs_off_the_callers_path(tmp_path, monkeypatch, mode):
    """grouped: each log record is in events/ when emit returns, but the caller does not wait
    for its fsync (a background group does it, within 0.1 s, and close() syncs what waits);
    lifecycle records are fsynced before emit returns in both modes.  (A put called from the
    main thread runs in a helper thread the caller waits for: its fsyncs are the caller's.)"""
    import threading

    fsyncs, real = [], os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (fsyncs.append(threading.current_thread().name != "pilotlog-fsync"), real(fd))
    )
    handler = pilotlogger.Handler(config=settings(tmp_path, PILOTLOG_PILOT_UUID="p1", PILOTLOG_LOG_FSYNC=mode))
    log = logging.getLogger("test.grouped.%s" % mode)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for i in range(30):
            log.info("line %d", i)
            assert len(spooled(tmp_path)) == i + 1  # written before emit returned
        by_caller = fsyncs.count(True)
        log.info("matched a job", extra={"phase": "match"})
        lifecycle = fsyncs.count(True) - by_caller
    finally:
        log.removeHandler(handler)
        handler.close()
    if mode == "grouped":
        assert by_caller <= 1  # at most the counter's reserve, once per 1024 seqs
        assert len(fsyncs) - by_caller - lifecycle >= 30  # every record fsynced: by the group, or by close()
    else:
        assert by_caller >= 60  # the file and events/, per record
    assert lifecycle >= 2
    assert [e["message"] for e in spooled(tmp_path)][-1] == "matched a job"


def test_background_shipping_opens_nothing_when_nothing_waits(tmp_path):
    """A pilot shipping every few seconds must not cost the broker a TLS handshake each time it has
    nothing to send (issue 16: at 100,000 pilots that would be the first thing to saturate)."""
    from pilotlogger import config as config_module
    from pilotlogger.recorder import Recorder

    environ = {
        "PILOTLOG_SPOOL": str(tmp_path / "spool"),
        "PILOTLOG_SINK": "stomp+ssl://localhost:1/queue/q",
        "PILOTLOG_DEADLINE": "0.5",
        "PILOTLOG_TIMEOUT": "0.5",
    }
    recorder = Recorder(config_module.load(environ=environ))
    assert recorder.ship() is None  # no spool yet: not even a sink opened
    recorder.record("boot", "booted")
    result = recorder.ship()  # now something waits: the (unreachable) broker is tried
    assert result is not None and result.error and result.remaining == 1
    recorder.spool.ack(next(recorder.spool.entries()))
    assert recorder.ship() is None  # empty again: nothing opened


PYTHONS = [sys.executable, "3.6.15"]  # this one, and the oldest supported (no os.register_at_fork)


def interpreter(python: str) -> str:
    from helpers import pyenv_python

    return python if os.path.isabs(python) else pyenv_python(python)


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("start", ["fork", "multiprocessing"])
def test_workers_forked_while_a_thread_logs_keep_every_record_and_wait_for_no_lock(bundle, tmp_path, python, start):
    """Issue 24, defect 1: a thread logs in a loop while the main thread forks 8 workers that each
    log a line.  A fork while the thread was inside Spool.put handed the spool lock to the worker:
    5 s stalls in both processes, records dropped, and (grouped fsyncs) a worker hung for ever in
    logging.shutdown() on a lock of the parent's fsync thread."""
    from helpers import ApiPilot

    spec = {"api": "handler", "threads": 1, "workers": 8, "start": start, "worker_exit": "shutdown"}
    run = ApiPilot(interpreter(python), bundle, spec, tmp_path)
    assert run.broken() == ""
    assert sum(m.startswith("W") for m in run.kept) == 8


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("api", ["emit", "handler"])
def test_a_signal_handler_records_at_once_while_the_main_thread_is_inside_put(bundle, tmp_path, python, api):
    """Issue 24, defect 2: a SIGTERM-like handler records 'shutdown' while the main thread holds the
    spool lock (the signal is sent from inside put, so it lands there every time).  It waited 5 s
    for its own thread, then lost the event blaming 'another process'."""
    from helpers import ApiPilot

    spec = {"api": api, "main_records": 10, "inject": 3, "phase": "install"}
    run = ApiPilot(interpreter(python), bundle, spec, tmp_path)
    assert run.broken() == ""
    assert [m for m in run.kept if m.startswith("S-")] == ["S-1", "S-2", "S-3"]


class Unprintable:
    def __repr__(self):
        raise ValueError("repr is broken")

    __str__ = __repr__


def logger_to_spool(tmp_path):
    """A fresh INFO logger with a Handler writing into tmp_path's spool: (logger, handler)."""
    log = logging.getLogger("data-%s" % uuid.uuid4().hex[:6])
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = pilotlogger.Handler(config=settings(tmp_path, PILOTLOG_PILOT_UUID="p1"))
    log.addHandler(handler)
    return log, handler


def test_a_field_whose_repr_raises_costs_the_field_not_the_record(tmp_path, capsys):
    """Issue 24, defect 7: one extra= value whose repr() raises dropped the whole record (and an
    emit() keyword the whole event); now the value is replaced by a marker naming the failure."""
    log, handler = logger_to_spool(tmp_path)
    try:
        log.info(
            "installed",
            extra={"phase": "install", "version": "v8r0", "obj": Unprintable(), "deep": [1, {"x": Unprintable()}]},
        )
    finally:
        handler.close()
    event = pilotlogger.emit("power", "power of 11 HS06", config=settings(tmp_path), hs06=11, probe=Unprintable())
    assert capsys.readouterr().err == ""
    first, second = spooled(tmp_path)
    assert (first["phase"], first["message"], first["data"]["version"]) == ("install", "installed", "v8r0")
    marker = "<unrepresentable Unprintable: ValueError: repr is broken>"
    assert first["data"]["obj"] == marker and first["data"]["deep"] == [1, {"x": marker}]
    assert event is not None and second == event and event["data"] == {"hs06": 11, "probe": marker}


@pytest.mark.parametrize(
    "msg, args, raw",
    [
        ("disk %s at %d%%", ("/scratch",), "disk %s at %d%%"),  # too few arguments
        ("matched job", (1234,), "matched job"),  # an argument too many
        ("power %d", ("high",), "power %d"),  # the wrong type
        (Unprintable(), (), "<unrepresentable Unprintable: ValueError: repr is broken>"),  # str(msg) raises
    ],
)
def test_a_message_whose_arguments_do_not_match_is_kept_raw_with_its_arguments(tmp_path, capsys, msg, args, raw):
    """Issue 24, defect 7: logging's own %-formatting failed (a pilot's typo in a rarely taken branch),
    and the record was lost; now the raw message is kept, its arguments beside it, with a marker."""
    log, handler = logger_to_spool(tmp_path)
    try:
        log.warning(msg, *args)
    finally:
        handler.close()
    assert capsys.readouterr().err == ""
    (event,) = spooled(tmp_path)
    assert event["status"] == "warning" and event["message"] == raw
    assert event["data"]["message_args"] == [a if isinstance(a, (int, str)) else repr(a) for a in args]
    assert event["data"]["message_error"].startswith("not formatted: ")


class Unhashable(list):
    def __str__(self):
        raise RuntimeError("str is broken")


values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=10**5000, max_value=10**5001),
        st.floats(),
        st.text(),
        st.binary(max_size=8),
        st.builds(Unprintable),
        st.builds(object),
        st.sets(st.integers(), max_size=3),
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.builds(Unhashable, st.lists(inner, max_size=2))
        | st.dictionaries(st.one_of(st.text(max_size=5), st.builds(Unprintable), st.integers()), inner, max_size=3)
    ),
    max_leaves=8,
)


@examples(max_examples=200, deadline=None)
@given(
    message=st.one_of(
        st.text(max_size=20), st.sampled_from(["%s", "%d %s", "%(k)s", "%", "100%"]), st.builds(Unprintable)
    ),
    args=st.lists(values, max_size=3),
    extra=st.dictionaries(st.sampled_from(["a", "b", "version", "phase"]), values, max_size=3),
)
def test_the_handler_keeps_every_record_whatever_its_data(message, args, extra):
    """Generated: messages, %-arguments that fit or not, and extra= values of every kind (repr() or
    str() that raise, huge integers, NaN, bytes, sets, keys that are not text, nesting): each
    record becomes exactly one valid event, with nothing said on stderr."""
    import io
    import tempfile
    from contextlib import redirect_stderr

    from pilotlogger.events import validate

    with tempfile.TemporaryDirectory() as d:
        handler = pilotlogger.Handler(
            config=config.load({}, {"PILOTLOG_SPOOL": d + "/spool", "PILOTLOG_PILOT_UUID": "p1"})
        )
        record = logging.LogRecord("gen", logging.INFO, __file__, 1, message, tuple(args), None)
        record.__dict__.update(extra)
        said = io.StringIO()
        with redirect_stderr(said):
            handler.handle(record)
            handler.close()
        events = os.listdir(d + "/spool/events")
        assert len(events) == 1 and said.getvalue() == ""
        with open(os.path.join(d, "spool", "events", events[0])) as f:
            validate(json.loads(f.read()))


@pytest.mark.parametrize("python", PYTHONS)
def test_a_worker_forked_during_the_apis_first_import_in_a_thread_records_all_the_same(bundle, tmp_path, python):
    """The first pilotlogger.emit() imports the API (logging and all: some 20 ms); a worker forked
    meanwhile by another thread inherited the import half done, which no thread of it finishes:
    pilotlogger.emit raised AttributeError in it (Python 3.13), or hung it (3.6).  Found by the
    generative suite; here the import is held open until the fork, so the race is lost every time.
    Python 3.7+ forks wait for the import; 3.6 forks cannot be made to wait, so the worker makes
    the import again itself."""
    from helpers import ApiPilot

    spec = {"api": "emit", "workers": 1, "worker_records": 3, "fork_in_import": True}
    run = ApiPilot(interpreter(python), bundle, spec, tmp_path)
    assert run.broken() == ""
    assert sorted(run.kept) == ["W0-0", "W0-1", "W0-2", "first"]
