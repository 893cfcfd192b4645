"""The spool: durability, ordering, concurrency, bounds, quarantine, permissions."""

import json
import os
import random
import stat
import subprocess
import sys
import time

import pytest

from helpers import clean_env, run_loops
from pilotlogger.events import make_event
from pilotlogger.spool import EventName, Spool, SpoolError, _Books

PILOT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def builder(phase="boot", message="m", **kw):
    return lambda seq, epoch: make_event(phase, message, pilot=PILOT, seq=seq, epoch=epoch, **kw)


def names(spool):
    return sorted(os.listdir(spool.events_dir))


def test_put_is_durable_ordered_and_readable(tmp_path):
    spool = Spool(str(tmp_path / "s"))
    results = [spool.put(builder("boot", "m%d" % i)) for i in range(5)]
    assert [r.event["seq"] for r in results] == [1, 2, 3, 4, 5]
    assert all(r.stored for r in results)
    listed = names(spool)
    assert listed == [EventName.for_event(r.event) for r in results]  # name order == acceptance order
    assert [spool.load(n) for n in listed] == [r.event for r in results]
    assert os.listdir(spool.tmp_dir) == []


def test_permissions_are_private(tmp_path):
    spool = Spool(str(tmp_path / "s"))
    spool.put(builder())
    spool.pilot_id()
    for d in (spool.path, spool.events_dir, spool.tmp_dir, spool.quarantine_dir):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    for root, _, files in os.walk(spool.path):
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) == 0o600, f


def test_a_long_lived_writer_makes_the_spool_once_and_again_when_it_is_removed(tmp_path, monkeypatch):
    """A relay or a Handler puts for hours through one Spool: its directories are made (four mkdir)
    once, then only checked; removed under it (a pilot cleaning its working directory), they are
    made again by the next put, private, and that put is stored."""
    import shutil

    spool = Spool(str(tmp_path / "s"))
    spool.put(builder())
    made = []
    real = os.mkdir
    monkeypatch.setattr(os, "mkdir", lambda path, mode=0o777, **kw: (made.append(path), real(path, mode, **kw))[1])
    for _ in range(5):
        spool.put(builder())
    assert made == [] and len(names(spool)) == 6
    shutil.rmtree(spool.path)
    assert spool.put(builder()).stored
    assert spool.events_dir in made and len(names(spool)) == 1
    assert stat.S_IMODE(os.stat(spool.tmp_dir).st_mode) == 0o700


def test_seq_continues_above_queued_events_when_the_counter_is_lost(tmp_path):
    spool = Spool(str(tmp_path / "s"))
    for _ in range(3):
        spool.put(builder())
    os.unlink(os.path.join(spool.path, "seq"))  # e.g. lost in a crash
    assert spool.put(builder()).event["seq"] == 4


def test_debris_of_a_killed_writer_is_cleared(tmp_path):
    spool = Spool(str(tmp_path / "s"))
    spool.ensure()
    debris = os.path.join(spool.tmp_dir, "half-written.json")
    with open(debris, "w") as f:
        f.write('{"v":1,"id":')
    spool.put(builder())
    assert not os.path.exists(debris)


def test_entries_stream_in_chunks_in_order(tmp_path):
    spool = Spool(str(tmp_path / "s"))
    stored = [spool.put(builder()).event for _ in range(10)]
    assert list(spool.entries(chunk=3)) == [EventName.for_event(e) for e in stored]


def test_pilot_id_is_generated_once_and_reused(tmp_path):
    spool = Spool(str(tmp_path / "s"))
    first = spool.pilot_id()
    assert first == Spool(str(tmp_path / "s")).pilot_id()
    assert len(first) == 36


def test_lock_held_elsewhere_times_out_with_a_clear_error(tmp_path):
    spool = Spool(str(tmp_path / "s"), lock_timeout=0.2)
    spool.ensure()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); fcntl.lockf(fd, fcntl.LOCK_EX);"
            " print('held', flush=True); time.sleep(30)",
            os.path.join(spool.path, "lock"),
        ],
        stdout=subprocess.PIPE,
        universal_newlines=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        started = time.monotonic()
        with pytest.raises(SpoolError) as err:
            spool.put(builder())
        assert time.monotonic() - started < 2
        assert "locked by another process" in str(err.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_fork_while_a_thread_writes_leaves_the_lock_to_no_one(tmp_path):
    """Issue 24, defect 1, at its root: a thread is inside put (the lock held) when the process
    forks.  A flock belonged to the open file, which the child's copy kept held for its whole
    life: the child's own puts and the parent's next ones waited lock_timeout and failed."""
    import threading

    spool = Spool(str(tmp_path / "s"), lock_timeout=2)
    inside, forked = threading.Event(), threading.Event()

    def build_slowly(seq, epoch):
        inside.set()
        forked.wait(10)  # hold the lock until the fork is done
        return builder("install", "parent thread")(seq, epoch)

    writer = threading.Thread(target=spool.put, args=(build_slowly,))
    writer.start()
    assert inside.wait(10)
    reader, writer_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write one event, say how it went, then stay alive a while
        os.close(reader)
        try:
            spool.put(builder("install", "child"))
            os.write(writer_end, b"ok\n")
        except BaseException as exc:
            os.write(writer_end, ("%s\n" % exc).encode())
        finally:
            time.sleep(3)  # alive, holding whatever it inherited, while the parent writes again
            os._exit(0)
    try:
        os.close(writer_end)
        forked.set()
        writer.join(10)
        with os.fdopen(reader) as said:
            assert said.readline() == "ok\n"
        assert spool.put(builder("install", "parent after the fork")).stored  # the child still lives
        assert [spool.load(n)["message"] for n in names(spool)] == ["parent thread", "child", "parent after the fork"]
    finally:
        os.waitpid(pid, 0)


# -- bounds ------------------------------------------------------------------------------------


def test_full_spool_evicts_oldest_log_events_and_keeps_lifecycle(tmp_path):
    spool = Spool(str(tmp_path / "s"), max_events=5)
    for phase in ("boot", "log", "log", "os", "log"):
        spool.put(builder(phase))
    r = spool.put(builder("power"))  # full: the oldest log goes
    assert r.stored and r.evicted == 1
    r = spool.put(builder("log", "newest line"))  # full: logs rotate, newest kept
    assert r.stored and r.evicted == 1
    kept = [spool.load(n) for n in names(spool)]
    assert [e["phase"] for e in kept] == ["boot", "os", "log", "power", "log"]
    assert kept[-1]["message"] == "newest line"
    assert len(kept) == 5


def test_full_spool_of_lifecycle_events_drops_the_new_event(tmp_path):
    spool = Spool(str(tmp_path / "s"), max_events=3)
    for phase in ("boot", "os", "power"):
        spool.put(builder(phase))
    r = spool.put(builder("match"))
    assert not r.stored
    assert [EventName(n).phase for n in names(spool)] == ["boot", "os", "power"]


def test_byte_bound_is_respected(tmp_path):
    spool = Spool(str(tmp_path / "s"), max_events=1000, max_bytes=3000, max_event_bytes=600)
    for i in range(40):
        spool.put(builder("log" if i % 4 else "install", "x" * random.randint(10, 300)))
        total = sum(os.path.getsize(os.path.join(spool.events_dir, n)) for n in names(spool))
        assert total <= 3000
    assert any(EventName(n).phase == "install" for n in names(spool))


# -- quarantine --------------------------------------------------------------------------------


def test_bad_files_are_quarantined_with_a_reason_and_links_never_followed(tmp_path):
    spool = Spool(str(tmp_path / "s"))
    good = spool.put(builder("boot")).event
    template = EventName.for_event(good)
    outside = tmp_path / "secret.txt"
    outside.write_text("do not touch")
    planted = {
        "foreign.txt": "hello",
        template.replace("_boot_", "_os_"): "{not json",  # well-formed name, garbage content
        template.replace("_boot_", "_install_"): json.dumps(dict(good, seq="x")),
    }
    for name, content in planted.items():
        with open(os.path.join(spool.events_dir, name), "w") as f:
            f.write(content)
    link = template.replace("_boot_", "_power_")
    os.symlink(str(outside), os.path.join(spool.events_dir, link))

    loaded = [spool.load(n) for n in spool.entries()]
    assert [e for e in loaded if e] == [good]
    assert names(spool) == [template]
    q = sorted(os.listdir(spool.quarantine_dir))
    assert len([n for n in q if n.endswith(".reason")]) == 4
    reasons = " ".join(open(os.path.join(spool.quarantine_dir, n)).read() for n in q if n.endswith(".reason"))
    for needle in ("not one pilotlog writes", "not a valid event", "symbolic link"):
        assert needle in reasons
    assert outside.read_text() == "do not touch"
    assert os.path.islink(os.path.join(spool.quarantine_dir, link))  # the link moved, not its target
    assert spool.stats()["quarantined"] == 4


# -- many processes (kill -9: tests/faults/test_kills.py) -------------------------------------------------------------------


def test_concurrent_emitters_lose_nothing_and_share_no_seq(tmp_path, bundle):
    n, m = 8, 40
    spool = Spool(str(tmp_path / "s"))
    procs = run_loops(["p%d" % i for i in range(n)], m, spool.path, str(bundle))
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    stored = [spool.load(name) for name in names(spool)]
    assert len(stored) == n * m
    seqs = [e["seq"] for e in stored]
    assert len(set(seqs)) == n * m
    assert seqs == sorted(seqs)  # file-name order is seq order: replay keeps acceptance order
    assert {e["message"] for e in stored} == {"p%d-%d" % (i, j) for i in range(n) for j in range(m)}


def test_concurrent_first_emitters_agree_on_the_generated_pilot_id(tmp_path, bundle):
    spool_dir = str(tmp_path / "s")
    env = clean_env(PILOTLOG_SPOOL=spool_dir)
    procs = [subprocess.Popen([sys.executable, "-I", "-S", str(bundle), "emit", "boot"], env=env) for _ in range(6)]
    assert [p.wait(60) for p in procs] == [0] * 6
    spool = Spool(spool_dir)
    pilots = {spool.load(n)["pilot"] for n in names(spool)}
    assert pilots == {spool.pilot_id()}


def test_cached_byte_total_self_corrects_after_acks(tmp_path):
    """Replay's acks do not update the cached byte total; the next near-bound put recounts
    instead of evicting events that are no longer there."""
    spool = Spool(str(tmp_path / "s"), max_events=1000, max_bytes=2000, max_event_bytes=400)
    for _ in range(6):
        assert spool.put(builder("log", "x" * 40)).evicted == 0
    for name in names(spool):  # a replay delivered everything
        spool.ack(name)
    kept = [spool.put(builder("log", "y" * 40)) for _ in range(6)]
    assert [r.evicted for r in kept] == [0] * 6 and all(r.stored for r in kept)
    assert len(names(spool)) == 6
    with open(os.path.join(spool.path, "seq")) as f:
        seq, total = map(int, f.read().split()[:2])
    assert seq == 12 and total == sum(os.path.getsize(os.path.join(spool.events_dir, n)) for n in names(spool))


class Scans:
    """Counts directory listings (os.listdir / os.scandir) by directory, while installed."""

    def __init__(self, monkeypatch):
        self.dirs = []
        for fn in ("listdir", "scandir"):
            real = getattr(os, fn)
            monkeypatch.setattr(os, fn, self._wrap(real))

    def _wrap(self, real):
        def counted(path="."):
            self.dirs.append(os.path.basename(str(path)))
            return real(path)

        return counted


def test_put_does_not_list_the_spool_per_event(tmp_path, monkeypatch):
    """Emit cost must not grow with the spool's depth: put() lists nothing per event, and at
    the bound it evicts from a victim list, recounting once per many evictions."""
    spool = Spool(str(tmp_path / "s"), max_events=400)
    for _ in range(300):
        spool.put(builder("log"))
    scans = Scans(monkeypatch)
    fresh = Spool(spool.path, max_events=400)  # as in a new process (one-shot CLI emit)
    for _ in range(100):
        assert fresh.put(builder("log")).evicted == 0
    assert scans.dirs == []
    del scans.dirs[:]
    for _ in range(200):  # at the bound now: every put evicts the oldest log event
        assert fresh.put(builder("log")).evicted == 1
    assert scans.dirs.count("events") <= 200 // 50 + 1, scans.dirs
    assert len(names(fresh)) == 400


def test_acks_never_lead_to_evicting_from_a_spool_that_is_not_full(tmp_path):
    """Acks do not count down (replay holds no lock): they leave a mark, and the writer that
    finds the spool full by its counter recounts before evicting anything."""
    spool = Spool(str(tmp_path / "s"), max_events=20)
    for _ in range(20):
        spool.put(builder("log"))
    oldest = names(spool)[:5]
    for name in oldest:
        spool.ack(name)
    assert [spool.put(builder("log")).evicted for _ in range(5)] == [0] * 5
    assert len(names(spool)) == 20 and not set(oldest) & set(names(spool))
    assert spool.put(builder("log")).evicted == 1


class Killed(BaseException):
    """A simulated kill -9: nothing after it runs, not even except clauses for Exception."""


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("step", ["open", "pwrite", "fsync", "rename", "unlink"])
def test_bounds_hold_after_a_writer_dies_between_any_two_steps(tmp_path, monkeypatch, step, after):
    """Die before or after each system call of an evicting put, in turn: the next put
    still keeps both bounds, keeps lifecycle events and hands out a fresh seq."""
    import shutil

    real = getattr(os, step)
    full = Spool(str(tmp_path / "full"), max_events=10, max_bytes=3600)
    for i in range(10):
        assert full.put(builder("log" if i else "boot", "x" * 30)).evicted == 0
    for k in range(40):
        path = str(tmp_path / ("s%d" % k))
        shutil.copytree(full.path, path)
        spool = Spool(path, max_events=10, max_bytes=3600)
        calls = []

        def dying(*args, calls=calls, k=k, **kw):
            calls.append(args)
            if len(calls) - 1 == k:
                if after:
                    try:
                        real(*args, **kw)
                    except OSError:
                        pass
                raise Killed()
            return real(*args, **kw)

        monkeypatch.setattr(os, step, dying)
        try:
            spool.put(builder("log", "dies"))
            died = False
        except Killed:
            died = True
        finally:
            monkeypatch.setattr(os, step, real)
        survivor = Spool(path, max_events=10, max_bytes=3600)
        for _ in range(4):
            r = survivor.put(builder("log", "y" * random.randint(1, 400)))
            assert r.stored
            listed = names(survivor)
            size = sum(os.path.getsize(os.path.join(survivor.events_dir, n)) for n in listed)
            assert len(listed) <= 10 and size <= 3600
            books = _Books.read(os.path.join(path, "seq"))
            assert books.count >= len(listed) and books.bytes >= size  # never under the truth
        seqs = [EventName(n).seq for n in names(survivor)]
        assert len(set(seqs)) == len(seqs)
        assert EventName(names(survivor)[0]).phase == "boot"
        assert not [n for n in os.listdir(survivor.tmp_dir) if n.endswith(".json")], "debris left in tmp/"
        if not died:
            break
    assert k > 0, "the put never made that call"


def test_event_names_give_back_the_events_time(tmp_path):
    spool = Spool(str(tmp_path / "s"))
    event = spool.put(builder()).event
    assert EventName(EventName.for_event(event)).rfc3339 == event["time"]
    assert spool.stats()["oldest"] == spool.stats()["newest"] == event["time"]


def test_the_quarantine_keeps_within_the_spools_bounds_dropping_its_oldest(tmp_path):
    """A destination refusing everything for hours (a pilot id DIRAC never takes, relayed) must not
    fill the node's disk with what it refused: the quarantine holds at most the spool's bounds."""
    from pilotlogger.spool import QUARANTINE_CHECK_EVERY

    spool = Spool(str(tmp_path / "s"), max_events=50)
    refused = 3 * QUARANTINE_CHECK_EVERY + 1  # the last one makes this process look again
    names_in_order = []
    for i in range(refused):
        name = spool.put(builder("log", "refused %d" % i)).name
        names_in_order.append(name)
        spool.quarantine(name, "the destination refused it")
        os.utime(os.path.join(spool.quarantine_dir, name), (1000 + i, 1000 + i))  # the order they came in
    kept = sorted(n for n in os.listdir(spool.quarantine_dir) if not n.endswith(".reason"))
    assert len(kept) == 50
    assert set(kept) == set(names_in_order[-50:])  # the newest refusals stay, with their reasons
    assert all(os.path.exists(os.path.join(spool.quarantine_dir, n + ".reason")) for n in kept)
    assert len(os.listdir(spool.quarantine_dir)) == 100  # no reason left without its file
    assert spool.read_state()["quarantine_dropped_total"] == refused - 50
    assert spool.stats()["quarantined"] == 50
