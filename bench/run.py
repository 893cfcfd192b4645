"""pilotlogger benchmarks, side by side in one run; prints one Markdown table per figure.

    python bench/run.py [--events 20000] [--brokers rabbitmq,activemq] [--runs 21] [--write docs/performance.md]

Figures (see docs/performance.md for the latest results and what they mean):
  1. replay throughput on real brokers (TLS, persistent messages), every variant verified by
     consuming the queue and counting distinct event ids; the replayed spools are made the way
     pilots make them (each event through the emit path: fsynced, renamed, directory fsynced),
     replayed with the page cache kept and, on RabbitMQ, dropped first; beside them, in the same
     run, the file-per-event floor (list, open, read, unlink of such a spool, no network) and the
     TLS/STOMP share (our client sending the same events from memory): replay CPU per event as a
     multiple of the floor (bench/replay_probe.py);
  2. one-shot CLI cost: `emit` from the bundle vs `python -I -S -c pass` (medians), oldest and
     newest Python, cold (first start of a new bundle) and warm; `emit --send`; and the warm
     emit's ratio to a bare start, median and range of --rounds of --runs starts, beside an
     empty zipapp's (the floor of any zipapp: the interpreter imports runpy to run one);
  3. peak RSS of replaying 100,000 vs 1,000 spooled events;
  4. spool: emits per second from 1 and 8 processes;
  5. bundle size;
  6. emit where pilots feel it: in-process emit at spool depth 0 and 20,000 and at the bound,
     beside the disk's durability floor (fsyncs per event counted), the one-shot CLI emit at
     both depths, a logging.Handler burst and `run --capture` per log_fsync mode (median and
     range of --rounds; `--code` measures another checkout, e.g. main, with the same bench);
  7. what pilots print (DIRAC's own pilot wrapper, a DIRAC-install-like burst) and what
     `run --capture` keeps of it, a runaway child, and the pass-through: each child alone and
     under `run --capture` (bench/capture.py);
  8. what the DIRAC Pilot's remote logging costs the Pilot: one sendMessage POST to `pilotlog
     relay` (log_fsync grouped and each, and over TLS), to two no-op HTTP servers and to DIRAC's
     own handler over TLS; a Pilot logging --pilot-lines lines through the relay and directly to
     DIRAC (bench/relay_cost.py, bench/relay_probe.py).
Never run as a test: numbers depend on the machine; compare ratios within one run.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import helpers  # noqa: E402
from brokers import PASSWORD, PKI, USER, ActiveMQ, RabbitMQ  # noqa: E402
from pilotlogger.events import render  # noqa: E402
from pilotlogger.stompcodec import FrameParser, encode_frame  # noqa: E402

BUNDLE = os.path.join(ROOT, "dist", "pilotlog")
PILOT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def pyenv_python(version_prefix: str) -> str:
    root = subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    versions = sorted(v for v in os.listdir(os.path.join(root, "versions")) if v.startswith(version_prefix))
    return os.path.join(root, "versions", versions[-1], "bin", "python")


def fill_spool(path: str, n: int) -> list:
    """n ~430-byte events written straight into a spool, without fsync: the bodies of the stomp.py and
    raw variants, and the emit and memory figures' spools; never a spool that is replayed for a CPU
    figure (those are made through the emit path: pilots_spools)."""
    return helpers.fill_spool(
        path,
        n,
        PILOT,
        message="benchmark line %06d " + "x" * 120,
        context={"host": "wn042.example.org", "site": "LCG.Bench.org"},
    )


def table(title: str, header: list, rows: list) -> str:
    lines = ["### " + title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


# -- 1. throughput ---------------------------------------------------------------------------


class Counter:
    """Counts distinct event ids on a queue with stomp.py: proves a fast number hides no loss."""

    def __init__(self, broker, destination):
        import stomp

        self.ids, self.cond = set(), threading.Condition()
        self.conn = stomp.Connection12([("127.0.0.1", broker.plain)], vhost="/", heartbeats=(0, 0))
        self.conn.set_listener("c", self)
        self.conn.connect(USER, PASSWORD, wait=True)
        self.conn.subscribe(destination, id="1", ack="auto")

    def on_message(self, frame):
        with self.cond:
            self.ids.add(json.loads(frame.body)["id"])
            self.cond.notify_all()

    def wait(self, n, timeout=300):
        end = time.monotonic() + timeout
        with self.cond:
            while len(self.ids) < n and time.monotonic() < end:
                self.cond.wait(0.5)
        self.conn.disconnect()
        return len(self.ids)


def tls_socket(broker, pki):
    ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
    sock = ctx.wrap_socket(socket.create_connection(("localhost", broker.tls)), server_hostname="localhost")
    sock.sendall(
        encode_frame("CONNECT", [("accept-version", "1.2"), ("host", "/"), ("login", USER), ("passcode", PASSWORD)])
    )
    parser = FrameParser()
    while True:
        parser.feed(sock.recv(65536))
        frame = parser.next_frame()
        if frame:
            assert frame.command == "CONNECTED", frame
            return sock, parser


def raw_bound(broker, pki, dest, bodies, receipt_each: bool) -> float:
    """Pre-built SEND frames on one TLS socket; a writer thread, this thread reads receipts."""
    frames = [
        encode_frame(
            "SEND",
            [("destination", dest), ("persistent", "true")]
            + ([("receipt", str(i))] if receipt_each or i == len(bodies) - 1 else []),
            b,
        )
        for i, b in enumerate(bodies)
    ]
    sock, parser = tls_socket(broker, pki)
    want = len(bodies) if receipt_each else 1
    started = time.monotonic()
    writer = threading.Thread(
        target=lambda: [sock.sendall(b"".join(frames[i : i + 500])) for i in range(0, len(frames), 500)]
    )
    writer.start()
    got = 0
    while got < want:
        parser.feed(sock.recv(65536))
        while parser.next_frame():
            got += 1
    elapsed = time.monotonic() - started
    writer.join()
    sock.close()
    return elapsed


def stomppy(broker, pki, dest, bodies, per_message: bool) -> float:
    import stomp

    done, receipts = threading.Event(), []

    class L(stomp.ConnectionListener):
        def on_receipt(self, frame):
            receipts.append(frame.headers["receipt-id"])
            done.set()

    conn = stomp.Connection12([("localhost", broker.tls)], vhost="/", heartbeats=(0, 0))
    conn.set_ssl(for_hosts=[("localhost", broker.tls)], ca_certs=pki.path("ca.pem"))
    conn.set_listener("l", L())
    conn.connect(USER, PASSWORD, wait=True)
    started = time.monotonic()
    for i, body in enumerate(bodies):
        last = i == len(bodies) - 1
        headers = {"persistent": "true"}
        if per_message or last:
            headers["receipt"] = str(i)
            done.clear()
        conn.send(dest, body.decode(), headers=headers)
        if per_message or last:
            done.wait(60)
    elapsed = time.monotonic() - started
    conn.disconnect()
    return elapsed


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def broker_env(broker, pki, dest, **extra) -> dict:
    return dict(
        os.environ,
        PILOTLOG_SINK=broker.url(dest),
        PILOTLOG_CA_FILE=pki.path("ca.pem"),
        PILOTLOG_USER=USER,
        PILOTLOG_PASSCODE=PASSWORD,
        PILOTLOG_PILOT_UUID=PILOT,
        PILOTLOG_SITE="LCG.Bench.org",
        PILOTLOG_DEADLINE="600",  # deadline bounds a whole replay: a measured one must not be cut
        **extra,
    )


def replay_probe(kind: str, *args, env=None) -> dict:
    """One bench/replay_probe.py measurement in a fresh process (pilotlogger from this checkout)."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "replay_probe.py"), ROOT, kind] + [str(a) for a in args],
        env=env or os.environ,
        stdout=subprocess.PIPE,
        universal_newlines=True,
        check=True,
    ).stdout
    return json.loads(out)


def pilots_spools(paths: list, n: int) -> None:
    """Spools made the way pilots make them: each of ``n`` events recorded through the emit path
    (fsynced, renamed, the directory fsynced), all spools filled at once (one process each)."""
    script = os.path.join(ROOT, "bench", "replay_probe.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, ROOT, "fill", path, str(n)],
            env=dict(
                os.environ,
                PILOTLOG_SPOOL=path,
                PILOTLOG_PILOT_UUID=PILOT,
                PILOTLOG_SITE="LCG.Bench.org",
                PILOTLOG_MAX_EVENTS=str(2 * n),  # no eviction
            ),
            stdout=subprocess.DEVNULL,
        )
        for path in paths
    ]
    assert all(p.wait() == 0 for p in procs)


def drop_page_cache(spool: str, whole_machine: bool) -> None:
    """The spool's file pages out of the page cache (or, asked and allowed, all clean caches)."""
    if whole_machine:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    else:
        replay_probe("cold", spool)


def pilotlog_replay(broker, pki, dest, spool, env_extra, cpu: list) -> float:
    """Seconds for `pilotlog replay` of ``spool``; appends its CPU seconds (user+sys) to ``cpu``."""
    env = broker_env(broker, pki, dest, PILOTLOG_SPOOL=spool, **env_extra)
    started, cpu_before = time.monotonic(), children_cpu()
    p = subprocess.run(
        [sys.executable, "-I", "-S", BUNDLE, "replay"], env=env, stderr=subprocess.PIPE, universal_newlines=True
    )
    elapsed = time.monotonic() - started
    cpu.append(children_cpu() - cpu_before)
    assert p.returncode == 0 and "0 left" in p.stderr, p.stderr
    return elapsed


def throughput(broker, pki, n, cold=True, drop_caches=False) -> tuple:
    """The throughput table's rows, and the floors table's: replay CPU per event beside the
    file-per-event floor (same kind of spool, same run) and the TLS/STOMP share."""
    bodies = [render(e, "native").encode() for e in fill_spool(tempfile.mkdtemp() + "/s", n)]
    work = tempfile.mkdtemp(prefix="pilotlog-replay-")
    spools = {k: os.path.join(work, k) for k in ("strict", "every100", "floor")}
    if cold:
        spools.update((k, os.path.join(work, k)) for k in ("strict-cold", "floor-cold"))
    pilots_spools(list(spools.values()), n)
    os.sync()  # the fill's own writeback done before anything is timed

    def replay_cold(d, cpu):
        drop_page_cache(spools["strict-cold"], drop_caches)
        return pilotlog_replay(broker, pki, d, spools["strict-cold"], {}, cpu)

    cpu = {}  # variant index -> CPU seconds of its pilotlog replay process
    size = statistics.mean(len(b) for b in bodies)
    variants = [
        ("stomp.py, receipt awaited per message", lambda d, c: stomppy(broker, pki, d, bodies, True)),
        ("stomp.py pipelined, receipt on last only", lambda d, c: stomppy(broker, pki, d, bodies, False)),
        ("raw frames, receipt on every frame (strict bound)", lambda d, c: raw_bound(broker, pki, d, bodies, True)),
        ("raw frames, receipt on last only (broker ceiling)", lambda d, c: raw_bound(broker, pki, d, bodies, False)),
        (
            "**pilotlog replay** (receipt per event, default)",
            lambda d, c: pilotlog_replay(broker, pki, d, spools["strict"], {}, c),
        ),
        (
            "pilotlog replay, receipt_every=100 (opt-in)",
            lambda d, c: pilotlog_replay(broker, pki, d, spools["every100"], {"PILOTLOG_RECEIPT_EVERY": "100"}, c),
        ),
    ]
    if cold:
        variants.append(("pilotlog replay, page cache dropped first", replay_cold))
    rows, rates = [], {}
    for i, (name, run) in enumerate(variants):
        dest = "/queue/bench-%d-%d" % (os.getpid(), i)
        counter = Counter(broker, dest)
        spent = []
        elapsed = run(dest, spent)
        arrived = counter.wait(n)
        rates[i] = n / elapsed
        if spent:
            cpu[i] = spent[0]
        rows.append([name, "%.0f" % rates[i], "%d/%d" % (arrived, n), "%.0f" % (cpu[i] / n * 1e6) if spent else "—"])
    for row, i in zip(rows, range(len(rows))):
        row.insert(3, "%.2f×" % (rates[i] / rates[2]))
    print("%s: mean event body %.0f bytes" % (broker.name, size))

    dest = "/queue/bench-%d-stomp" % os.getpid()
    counter = Counter(broker, dest)
    share = replay_probe("stomp", n, env=broker_env(broker, pki, dest))
    assert share["n"] == n and counter.wait(n) == n, share
    tls = share["cpu"] / n * 1e6
    floors = []
    for label, spool, index, page_cache in (
        ("warm", "floor", 4, "kept (the files were just written)"),
        ("cold", "floor-cold", 6, "dropped first (%s)" % ("all caches" if drop_caches else "each file's pages")),
    ):
        if spool not in spools:
            continue
        if label == "cold":
            drop_page_cache(spools[spool], drop_caches)
        got = replay_probe("floor", spools[spool])
        assert got["n"] == n, got
        floor = got["cpu"] / n * 1e6
        replay = cpu[index] / n * 1e6
        floors.append(
            [
                "strict replay, page cache %s" % page_cache,
                "%.1f" % floor,
                "%.1f" % tls,
                "%.1f" % replay,
                "%.2f×" % ((replay - tls) / floor),
                "%.1f" % (replay - tls - floor),
                "met" if replay <= 1.5 * floor + tls else "**not met**",
            ]
        )
    shutil.rmtree(work, ignore_errors=True)
    return rows, floors


# -- 2. one-shot cost -------------------------------------------------------------------------


def median_ms(cmd, runs, env, cwd) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def one_shot(runs, send_url=None, pki=None) -> list:
    rows = []
    for label, python in (("oldest", pyenv_python("3.6")), ("newest", pyenv_python("3.13"))):
        d = tempfile.mkdtemp()
        env = {"PATH": os.environ["PATH"], "HOME": d, "PILOTLOG_SPOOL": os.path.join(d, "spool")}
        version = subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            stdout=subprocess.PIPE,
            universal_newlines=True,
        ).stdout.strip()
        bare = median_ms([python, "-I", "-S", "-c", "pass"], runs, env, d)
        emit = [python, "-I", "-S", BUNDLE, "emit", "boot", "-m", "booted up"]
        started = time.perf_counter()
        subprocess.run(emit, env=env, cwd=d)
        cold = (time.perf_counter() - started) * 1000  # first start: unpacks and compiles into the cache
        warm = median_ms(emit, runs, env, d)
        nocache = median_ms(emit, runs, dict(env, PILOTLOG_CACHE="/proc/unwritable"), d)
        rows.append(
            [
                "%s (%s)" % (version, label),
                "%.1f" % bare,
                "%.1f (%.1f×)" % (warm, warm / bare),
                "%.1f" % cold,
                "%.1f (%.1f×)" % (nocache, nocache / bare),
            ]
        )
        if send_url:
            senv = dict(
                env,
                PILOTLOG_SINK=send_url,
                PILOTLOG_CA_FILE=pki.path("ca.pem"),
                PILOTLOG_USER=USER,
                PILOTLOG_PASSCODE=PASSWORD,
            )
            send = median_ms(emit + ["--send"], runs, senv, d)
            rows[-1].append("%.1f (%.1f×)" % (send, send / bare))
        shutil.rmtree(d)
    return rows


def median_cpu_ms(cmd, runs, env, cwd) -> tuple:
    """(median wall ms, median CPU ms: user + system of the process) over ``runs`` starts."""
    walls, cpus = [], []
    for _ in range(runs):
        before, started = children_cpu(), time.perf_counter()
        subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append((time.perf_counter() - started) * 1000)
        cpus.append((children_cpu() - before) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def emit_vs_bare(runs: int, rounds: int) -> list:
    """A warm `emit` against a bare interpreter start, and the floor any zipapp has (an empty
    one: the interpreter imports runpy to run a zip): per round the medians of ``runs`` starts
    of each, taken in turns; the table gives the median and range of the per-round ratios."""
    import zipfile

    rows = []
    for python in (pyenv_python("3.6"), pyenv_python("3.13")):
        d = tempfile.mkdtemp()
        env = {"PATH": os.environ["PATH"], "HOME": d, "PILOTLOG_SPOOL": os.path.join(d, "spool")}
        empty = os.path.join(d, "empty.pyz")
        with zipfile.ZipFile(empty, "w") as z:
            z.writestr("__main__.py", "")
        version = subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            stdout=subprocess.PIPE,
            universal_newlines=True,
        ).stdout.strip()
        emit = [python, "-I", "-S", BUNDLE, "emit", "boot", "-m", "booted up"]
        subprocess.run(emit, env=env, cwd=d, stdout=subprocess.DEVNULL)  # unpacks the cache
        got = {k: [] for k in ("bare", "zip", "emit", "zip_r", "emit_r", "emit_cpu_r")}
        for _ in range(rounds):
            bare = median_cpu_ms([python, "-I", "-S", "-c", "pass"], runs, env, d)
            zipapp = median_cpu_ms([python, "-I", "-S", empty], runs, env, d)
            warm = median_cpu_ms(emit, runs, env, d)
            got["bare"].append(bare[0])
            got["zip"].append(zipapp[0])
            got["emit"].append(warm[0])
            got["zip_r"].append(zipapp[0] / bare[0])
            got["emit_r"].append(warm[0] / bare[0])
            got["emit_cpu_r"].append(warm[1] / bare[1])
        shutil.rmtree(d)
        rows.append(
            [
                version,
                spread(got["bare"], "%.1f"),
                spread(got["zip_r"], "%.2f×"),
                spread(got["emit"], "%.1f"),
                spread(got["emit_r"], "%.2f×"),
                spread(got["emit_cpu_r"], "%.2f×"),
                "≤ 2.5×",
            ]
        )
    return rows


# -- 3. memory, 4. spool, 5. size --------------------------------------------------------------


def peak_rss_mb(n) -> float:
    d = tempfile.mkdtemp()
    fill_spool(os.path.join(d, "spool"), n)
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    env = dict(os.environ, PILOTLOG_SPOOL=os.path.join(d, "spool"), PILOTLOG_SINK="stdout")
    out = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-I", "-S", BUNDLE, "replay"],
        env=env,
        stdout=subprocess.PIPE,
        universal_newlines=True,
    ).stdout
    left = len(os.listdir(os.path.join(d, "spool", "events")))
    shutil.rmtree(d)
    assert left == 0
    return int(out) / 1024.0


def spool_rate(processes: int, per_process: int) -> float:
    d = tempfile.mkdtemp()
    env = dict(os.environ, PILOTLOG_SPOOL=os.path.join(d, "spool"), PILOTLOG_PILOT_UUID=PILOT)
    loop = os.path.join(ROOT, "tests", "emit_loop.py")
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, loop, BUNDLE, "p%d" % i, str(per_process)], env=env, stdout=subprocess.DEVNULL
        )
        for i in range(processes)
    ]
    assert all(p.wait() == 0 for p in procs)
    elapsed = time.monotonic() - started
    stored = len(os.listdir(os.path.join(d, "spool", "events")))
    shutil.rmtree(d)
    assert stored == processes * per_process
    return processes * per_process / elapsed


# -- 6. emit: spool depth, disk floor, chatty loggers ---------------------------------------------


def probe(code: str, kind: str, path: str, n: int, quiet=False, extra=(), **env) -> dict:
    """One bench/emit_probe.py measurement in a fresh process, importing pilotlogger from ``code``."""
    env = dict(os.environ, PILOTLOG_SPOOL=path, PILOTLOG_PILOT_UUID=PILOT, **env)
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "emit_probe.py"), code, kind, path, str(n)] + list(extra),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if quiet else None,
        universal_newlines=True,
        check=True,
    ).stdout
    return json.loads(out)


def spread(values, fmt="%.0f") -> str:
    """``median (min–max)`` of a figure measured in several rounds."""
    return (fmt + " (" + fmt + "–" + fmt + ")") % (statistics.median(values), min(values), max(values))


def emit_costs(code: str, rounds: int, runs: int, emits: int, depth: int = 20000, burst: int = 10000) -> list:
    """Emit at depth 0 and ``depth``, at the bound, the disk floor, the one-shot CLI, the
    Handler and run --capture.  Every round measures each figure once, in turn, so a ratio
    compares numbers taken seconds apart on this shared disk; the tables give the median
    and range over the rounds."""
    bundle = os.path.join(code, "dist", "pilotlog")
    work = tempfile.mkdtemp(prefix="pilotlog-emit-")
    deep, full = os.path.join(work, "deep"), os.path.join(work, "full")
    fill_spool(deep, depth)
    fill_spool(full, depth)
    os.sync()  # else the kernel writes 40,000 fresh files back during the first rounds
    big = {"PILOTLOG_MAX_EVENTS": str(10 * depth)}  # depth without eviction
    f = {
        k: []
        for k in (
            "floor",
            "append",
            "e0",
            "edeep",
            "ebound",
            "fs0",
            "r_floor",
            "r_deep",
            "r_bound",
            "c0",
            "cdeep",
            "r_cli",
            "child",
            "cap_each",
            "cap_grouped",
        )
    }
    h = {m: {k: [] for k in ("p50", "p99", "rate", "durable")} for m in ("each", "grouped")}
    child = [sys.executable, "-I", "-S", "-c", "for i in range(10000): print('pilot output line %d' % i)"]
    for r in range(rounds):
        turn = tempfile.mkdtemp(dir=work)
        for name in ("deep", "full"):  # each round on its own copy: the same depth every time
            shutil.copytree(os.path.join(work, name), os.path.join(turn, name))
        os.sync()
        got = probe(code, "emits", turn, emits, quiet=True, extra=[str(depth)])  # quiet: a warning per eviction
        shutil.rmtree(turn)
        f["floor"].append(got["floor"])
        f["append"].append(got["append"])
        f["e0"].append(got["empty"])
        f["fs0"].append(got["fsyncs"])
        f["edeep"].append(got["deep"])
        f["ebound"].append(got["full"])
        f["r_floor"].append(got["empty"] / got["floor"])
        f["r_deep"].append(got["deep"] / got["empty"])
        f["r_bound"].append(got["full"] / got["empty"])
        emit = [sys.executable, "-I", "-S", bundle, "emit", "log", "-m", "one-shot"]
        empty = os.path.join(work, "cli%d" % r)
        base = {"PATH": os.environ["PATH"], "HOME": work, "PILOTLOG_PILOT_UUID": PILOT}
        subprocess.run(emit, env=dict(base, PILOTLOG_SPOOL=deep, **big), cwd=work)  # unpack cache, counter
        c0 = median_ms(emit, runs, dict(base, PILOTLOG_SPOOL=empty), work)
        cdeep = median_ms(emit, runs, dict(base, PILOTLOG_SPOOL=deep, **big), work)
        f["c0"].append(c0)
        f["cdeep"].append(cdeep)
        f["r_cli"].append(cdeep / c0)
        for mode in ("each", "grouped"):
            got = probe(
                code, "handler", os.path.join(work, "h-%s%d" % (mode, r)), burst, PILOTLOG_LOG_FSYNC=mode, **big
            )
            for k in h[mode]:
                h[mode][k].append(got[k])
        f["child"].append(median_ms(child, 3, os.environ, work))
        for mode in ("each", "grouped"):
            run = [sys.executable, "-I", "-S", bundle, "run", "--capture", "--"] + child
            times = []
            for i in range(3):  # a fresh spool each time: its ~8,000 captured lines fill the default bound
                spool = os.path.join(work, "cap-%s%d-%d" % (mode, r, i))
                times.append(median_ms(run, 1, dict(os.environ, PILOTLOG_SPOOL=spool, PILOTLOG_LOG_FSYNC=mode), work))
            f["cap_" + mode].append(statistics.median(times))
    shutil.rmtree(work, ignore_errors=True)
    return f, h


def emit_tables(f, h, rounds: int, runs: int, depth: int = 20000, burst: int = 10000) -> list:
    out = [
        table(
            "Emit vs spool depth (in-process `pilotlogger.emit()`, emits/s; median (range) of %d rounds)" % rounds,
            ["spooled events", "emits/s", "vs empty (per round)", "target"],
            [
                ["0", spread(f["e0"]), "1", ""],
                ["%d (bound raised)" % depth, spread(f["edeep"]), spread(f["r_deep"], "%.2f×"), "≥ 0.9×"],
                [
                    "%d = the bound (each emit evicts)" % depth,
                    spread(f["ebound"]),
                    spread(f["r_bound"], "%.2f×"),
                    "O(1) eviction",
                ],
            ],
        )
    ]
    out.append(
        table(
            "Emit vs the disk's durability floor (same disk, same round; emits or loops per second)",
            ["loop", "per second", "emit vs it (per round)", "fsyncs per event", "target"],
            [
                [
                    "floor: write tmp + fsync + rename + fsync dir",
                    spread(f["floor"]),
                    spread(f["r_floor"], "%.2f×"),
                    "2",
                    "emit ≥ 0.8×",
                ],
                ["append + fdatasync (one file)", spread(f["append"]), "", "1", "for comparison"],
                ["`pilotlogger.emit()`, empty spool", spread(f["e0"]), "", spread(f["fs0"], "%.2f"), ""],
            ],
        )
    )
    out.append(
        table(
            "One-shot CLI `emit` vs spool depth (ms, median of %d starts per round; %d rounds)" % (runs, rounds),
            ["spooled events", "ms", "vs empty (per round)", "target"],
            [
                ["0", spread(f["c0"], "%.1f"), "1", ""],
                ["%d" % depth, spread(f["cdeep"], "%.1f"), spread(f["r_cli"], "%.2f×"), "≤ 1.1×"],
            ],
        )
    )
    rows = []
    for mode in ("each", "grouped"):
        rows.append(
            [
                "log_fsync=%s" % mode,
                spread(h[mode]["p50"], "%.2f"),
                spread(h[mode]["p99"], "%.2f"),
                spread(h[mode]["rate"]),
                spread(h[mode]["durable"]),
            ]
        )
    out.append(
        table(
            "logging.Handler, a burst of %d records (%d rounds)" % (burst, rounds),
            ["mode", "emit p50 (ms)", "emit p99 (ms)", "records/s while logging", "records/s to disk (close)"],
            rows,
        )
    )
    out.append(
        table(
            "`run --capture` of a child printing 10,000 lines, until the wrapper ends (ms, median of 3 per round; %d"
            " rounds; the default capture_budget records about 7,500 of them as they come, the last 500 at the end)"
            % rounds,
            ["", "ms"],
            [
                ["the child alone", spread(f["child"])],
                ["run --capture, log_fsync=each", spread(f["cap_each"])],
                ["run --capture, log_fsync=grouped", spread(f["cap_grouped"])],
            ],
        )
    )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--brokers", default="rabbitmq,activemq")
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--write", help="replace the results section of this Markdown file")
    ap.add_argument(
        "--only", default="replay,startup,capture,memory,spool,emit,relay", help="sections to run (comma-separated)"
    )
    ap.add_argument("--relay-posts", type=int, default=1000, help="timed sendMessage POSTs to each receiver")
    ap.add_argument("--pilot-lines", type=int, default=10000, help="lines a Pilot logs through each receiver")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the emit figures (median and range)")
    ap.add_argument("--emits", type=int, default=300, help="in-process emits per figure and round")
    ap.add_argument("--burst", type=int, default=10000, help="records per logging.Handler burst")
    ap.add_argument("--code", default=ROOT, help="checkout whose code and bundle the emit figures measure")
    ap.add_argument(
        "--drop-caches",
        action="store_true",
        help="cold replays drop every clean cache of the machine (root; /proc/sys/vm/drop_caches) instead of"
        " only the spool files' pages",
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    global BUNDLE
    BUNDLE = os.path.join(os.path.abspath(args.code), "dist", "pilotlog")
    subprocess.run(["make", "-s", "-C", ROOT, "dist/pilotlog"], check=True)
    work = tempfile.mkdtemp(prefix="pilotlog-bench-")
    pki = PKI(os.path.join(work, "pki"))
    out = [
        "Machine: %s, %d cores; Python %s for the replays; bundle %d bytes; %s.\n"
        % (
            platform.platform(),
            os.cpu_count(),
            platform.python_version(),
            os.path.getsize(BUNDLE),
            time.strftime("%Y-%m-%d"),
        )
    ]
    brokers = {"rabbitmq": RabbitMQ, "activemq": ActiveMQ}
    send_url = None
    if "emit" in only:
        out += emit_tables(
            *emit_costs(args.code, args.rounds, args.runs, args.emits, burst=args.burst),
            rounds=args.rounds,
            runs=args.runs,
            burst=args.burst,
        )
    for name in [b for b in args.brokers.split(",") if b and "replay" in only]:
        broker = brokers[name](os.path.join(work, name), pki).start()
        try:
            rows, floors = throughput(broker, pki, args.events, cold=name == "rabbitmq", drop_caches=args.drop_caches)
            out.append(
                table(
                    "Replay throughput, %s (TLS, persistent, %d events from spools filled through the emit path,"
                    " msg/s)" % (broker.name, args.events),
                    ["variant", "msg/s", "arrived", "vs strict raw bound", "pilotlog CPU µs/event"],
                    rows,
                )
            )
            out.append(
                table(
                    "Replay CPU against its floors, %s (µs per event, same run, same kind of spool)" % broker.name,
                    [
                        "replay",
                        "floor: list, open, read, unlink",
                        "TLS/STOMP share",
                        "replay CPU",
                        "(replay − TLS) ÷ floor",
                        "left beyond floor + TLS",
                        "≤ 1.5 × floor + TLS",
                    ],
                    floors,
                )
            )
            if name == "rabbitmq":
                out.append(
                    table(
                        "One-shot cost (ms, medians of %d; emit --send to RabbitMQ)" % args.runs,
                        [
                            "Python",
                            "bare `-I -S -c pass`",
                            "emit, warm",
                            "emit, cold (first start)",
                            "emit, no cache (zip import)",
                            "emit --send",
                        ],
                        one_shot(args.runs, broker.url("/queue/bench-send"), pki),
                    )
                )
                send_url = True
        finally:
            broker.shutdown() if hasattr(broker, "shutdown") else broker.stop()
    if not send_url and "startup" in only:
        out.append(
            table(
                "One-shot cost (ms, medians of %d)" % args.runs,
                ["Python", "bare", "emit, warm", "emit, cold", "emit, no cache"],
                one_shot(args.runs),
            )
        )
    if "startup" in only:
        out.append(
            table(
                "Warm `emit` against a bare start (median (range) of %d rounds, %d starts each)"
                % (args.rounds, args.runs),
                [
                    "Python",
                    "bare `-I -S -c pass` (ms)",
                    "empty zipapp ÷ bare (the floor)",
                    "emit, warm (ms)",
                    "emit ÷ bare, wall",
                    "emit ÷ bare, CPU",
                    "target",
                ],
                emit_vs_bare(args.runs, args.rounds),
            )
        )
    if "capture" in only:
        import capture

        printed, passthrough, note = capture.measure(BUNDLE, runs=3)
        out.append(
            table(
                "What pilots print, and what `run --capture` keeps (median of 3 runs, default capture_budget)" + note,
                [
                    "child",
                    "lines",
                    "KiB",
                    "child's run (s)",
                    "lines/s",
                    "peak lines in 1 s",
                    "lines recorded",
                    "dropped (counted)",
                    "exit",
                ],
                printed,
            )
        )
        out.append(
            table(
                "Pass-through: the child alone and under `run --capture` (s, median of 3)",
                ["child", "alone", "under run --capture: the child's run", "the wrapper's end"],
                passthrough,
            )
        )
    if "relay" in only:
        import relay_cost

        figures = relay_cost.measure(BUNDLE, pki, args.relay_posts, args.pilot_lines)
        out.append(
            "Python %s (relays, no-op servers and the Pilot's posts); DIRAC's handler on its venv's Python.\n"
            % platform.python_version()
        )
        out += [table(title, header, rows) for title, header, rows in relay_cost.tables(figures)]
    if "memory" in only:
        small, large = peak_rss_mb(1000), peak_rss_mb(100000)
        out.append(
            table(
                "Memory: peak RSS of `replay` to stdout",
                ["spooled events", "peak RSS (MB)"],
                [["1,000", "%.1f" % small], ["100,000", "%.1f" % large], ["growth", "%.1f" % (large - small)]],
            )
        )
    if "spool" in only:
        out.append(
            table(
                "Spool: emits per second (CLI code in a loop, fsync on)",
                ["writers", "emits/s"],
                [["1 process", "%.0f" % spool_rate(1, 300)], ["8 processes", "%.0f" % spool_rate(8, 100)]],
            )
        )
    shutil.rmtree(work, ignore_errors=True)
    if args.write:
        marker = "<!-- results -->"
        with open(args.write) as f:
            head = f.read().split(marker)[0]
        with open(args.write, "w") as f:
            f.write(head + marker + "\n\n" + "\n".join(out))


if __name__ == "__main__":
    main()
