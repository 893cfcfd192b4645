"""A burst of pilots on this machine, each the real wrapper with background shipping (issue 16).

Against the RabbitMQ cluster: all events delivered (counted by id), end-to-end delay from
emit to the consumer, broker connections per pilot and handshakes per second (the broker's
own churn counters), client CPU per pilot (rusage of each pilot process), the broker's CPU and
memory (its own counters), and the edge: a connection limit on the broker leaves events
spooled and pilots unharmed.  Against ``pilotlog serve`` over HTTPS: requests per pilot
lifecycle (compared with DIRAC's pilot) and serve's throughput.

Sizes: ``make test`` runs a reduced burst; ``make scale`` the full one (PILOTLOG_SCALE=full).
"""

import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid

import ledger
import scale_report
from brokers import PASSWORD, USER, free_port
from helpers import clean_env
from pilotlogger.events import parse_rfc3339

PILOTS = scale_report.size(30, 200)
LINES = scale_report.size(10, 20)  # lines the fake pilot prints, each a captured log event
EVENTS_PER_PILOT = LINES + 2  # boot, the lines (the last a match), shutdown
EXIT = 3
FAKE_PILOT = (
    "for i in $(seq 1 %d); do echo \"JobAgent: step $i\"; sleep 0.1; done; "
    "echo 'JobAgent: matched a job 4242'; exit %d" % (LINES - 1, EXIT)
)
COUNTERS = (
    "{element(1, erlang:statistics(runtime)), erlang:memory(total), "
    "case ets:lookup(connection_churn_metrics, node()) of [] -> 0; [T] -> element(2, T) end}."
)


def broker_counters(cluster) -> tuple:
    """(CPU ms, memory bytes, connections ever created) summed over the nodes, from the brokers."""
    cpu = memory = connections = 0
    for node in cluster.nodes:
        a, b, c = (int(x) for x in re.findall(r"\d+", node.ctl("eval", COUNTERS).strip().splitlines()[-1]))
        cpu, memory, connections = cpu + a, memory + b, connections + c
    return cpu, memory, connections


def start_pilots(bundle, tmp_path, n: int, env: dict, tag: str) -> list:
    """n pilots at once: `pilotlog run --capture` around a fake pilot, each with its own spool and id."""
    pilots = []
    for i in range(n):
        pilot = str(uuid.uuid4())
        spool = tmp_path / ("%s-%03d" % (tag, i))
        cmd = [
            sys.executable,
            "-I",
            "-S",
            str(bundle),
            "run",
            "--capture",
            "--pattern",
            "matched a job=match",
            "--ship-every",
            "1",
            "--",
            "sh",
            "-c",
            FAKE_PILOT,
        ]
        proc = subprocess.Popen(
            cmd,
            cwd=str(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(env, PILOTLOG_SPOOL=str(spool), PILOTLOG_PILOT_UUID=pilot),
        )
        pilots.append((pilot, spool, proc))
    return pilots


def wait_pilots(pilots) -> list:
    """(exit code, CPU seconds of the pilot process and its child, stderr) per pilot."""
    results = []
    for _, _, proc in pilots:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else (status >> 8)
        results.append((proc.returncode, usage.ru_utime + usage.ru_stime, proc.stderr.read().decode()))
    return results


def spooled(spool) -> int:
    d = spool / "events"
    return len(os.listdir(str(d))) if d.is_dir() else 0


def troubles(pilots, results) -> list:
    """What the pilots that left events spooled said on stderr (the first few), for a failure's message."""
    return [
        (spooled(spool), err.strip().splitlines()[-3:])
        for (_, spool, _), (_, _, err) in zip(pilots, results)
        if spooled(spool)
    ][:5]


class Arrivals:
    """stomp.py on one node: each event's arrival time, by id."""

    def __init__(self, node, destination):
        import stomp

        self.times, self.events, self.lock = {}, {}, threading.Lock()
        outer = self

        class Listener(stomp.ConnectionListener):
            def on_message(self, frame):
                event = json.loads(frame.body)
                with outer.lock:
                    outer.times.setdefault(event["id"], time.time())
                    outer.events[event["id"]] = event

        self.conn = stomp.Connection12([("127.0.0.1", node.plain)], vhost="/", heartbeats=(0, 0))
        self.conn.set_listener("", Listener())
        self.conn.connect(USER, PASSWORD, wait=True)
        self.conn.subscribe(destination, id="1", ack="auto", headers={"prefetch-count": "1000"})

    def wait_for(self, count: int, timeout: float) -> int:
        end = time.monotonic() + timeout
        while len(self.times) < count and time.monotonic() < end:
            time.sleep(0.1)
        return len(self.times)

    def close(self):
        self.conn.disconnect()


def pilot_env(cluster, pki, destination, **extra):
    env = clean_env(
        PILOTLOG_SINK=cluster.url(destination),
        PILOTLOG_CA_FILE=pki.path("ca.pem"),
        PILOTLOG_USER=USER,
        PILOTLOG_PASSCODE=PASSWORD,
        PILOTLOG_DEADLINE="60",
    )
    env.update(extra)
    return env


def test_a_burst_of_pilots_against_the_cluster(cluster, pki, bundle, tmp_path):
    destination = cluster.declare_quorum_queue("burst-" + uuid.uuid4().hex[:8])
    arrivals = Arrivals(cluster.nodes[0], destination)
    cpu0, _, conns0 = broker_counters(cluster)
    started = time.monotonic()
    pilots = start_pilots(bundle, tmp_path, PILOTS, pilot_env(cluster, pki, destination), "stomp")
    results = wait_pilots(pilots)
    wall = time.monotonic() - started
    expected = PILOTS * EVENTS_PER_PILOT
    got = arrivals.wait_for(expected, timeout=120)
    cpu1, memory, conns1 = broker_counters(cluster)
    arrivals.close()
    delays = sorted(arrivals.times[i] - parse_rfc3339(e["time"]) for i, e in arrivals.events.items())
    per_pilot = {}
    for e in arrivals.events.values():
        per_pilot.setdefault(e["pilot"], []).append(e["phase"])
    left = sum(spooled(spool) for _, spool, _ in pilots)
    ledger.record(
        "burst",
        "%d pilots at once (wrapper, background shipping) against the cluster" % PILOTS,
        PILOTS,
        expected - got,
        all(code == EXIT for code, _, _ in results),
        wall,
        extra="%d events delivered of %d; %d left spooled" % (got, expected, left),
    )
    assert [code for code, _, _ in results] == [EXIT] * PILOTS, [err for _, _, err in results if err][:3]
    assert got == expected and left == 0, troubles(pilots, results)
    assert (
        all(
            phases.count("boot") == 1 and phases.count("match") == 1 and phases.count("shutdown") == 1
            for phases in per_pilot.values()
        )
        and len(per_pilot) == PILOTS
    )
    connections = conns1 - conns0 - 1  # the consumer's own
    measure = scale_report.measure
    measure(
        "stomp.pilots",
        PILOTS,
        "pilots",
        "started at once on this 2-core machine, each `pilotlog run "
        "--capture --ship-every 1` around a shell pilot printing %d lines in ~%.0f s" % (LINES, LINES * 0.1),
    )
    measure("stomp.events_delivered", got, "events", "distinct ids consumed by stomp.py from the quorum queue")
    measure("stomp.burst_wall_s", wall, "s", "from the first start to the last pilot's exit")
    measure("stomp.delay_p50_s", delays[len(delays) // 2], "s", "end-to-end: event time -> arrival at the consumer")
    measure("stomp.delay_p99_s", delays[int(len(delays) * 0.99)], "s", "end-to-end, 99th percentile")
    measure(
        "stomp.connections_per_pilot",
        connections / PILOTS,
        "connections",
        "broker's connection churn counter (all nodes) / pilots: background ship runs + final drain",
    )
    measure("stomp.handshakes_per_s", connections / wall, "1/s", "TLS connections opened per second of the burst")
    measure(
        "stomp.client_cpu_ms_per_pilot",
        1000 * statistics.mean(c for _, c, _ in results),
        "ms",
        "rusage of each pilot process (pilotlog and its shell child)",
    )
    measure(
        "stomp.broker_cpu_ms_per_pilot",
        (cpu1 - cpu0) / PILOTS,
        "ms",
        "broker VMs' own CPU counter (erlang:statistics(runtime), all nodes) / pilots",
    )
    measure("stomp.broker_cpu_us_per_event", 1000 * (cpu1 - cpu0) / got, "us", "the same / events")
    measure("stomp.broker_memory_mb", memory / 1e6, "MB", "erlang:memory(total), all 3 nodes, after the burst")


def test_at_the_edge_a_connection_limit_leaves_events_spooled_and_pilots_unharmed(cluster, pki, bundle, tmp_path):
    destination = cluster.declare_quorum_queue("edge-" + uuid.uuid4().hex[:8])
    """The vhost's connection limit reached (two connections held by the test, whatever the
    machine's load: pilots started one after another would otherwise slip in one at a time and
    the limit never bite): every pilot exits with its own code, its events kept, and all of them
    arrive once the limit is lifted and the spools replayed."""
    import stomp

    n = 12
    first = cluster.nodes[0]
    first.ctl("set_vhost_limits", "-p", "/", '{"max-connections": 2}')
    held = []
    try:
        for _ in range(2):
            conn = stomp.Connection12([("127.0.0.1", first.plain)], vhost="/", heartbeats=(0, 0))
            conn.connect(USER, PASSWORD, wait=True)
            held.append(conn)
        pilots = start_pilots(bundle, tmp_path, n, pilot_env(cluster, pki, destination, PILOTLOG_DEADLINE="5"), "edge")
        results = wait_pilots(pilots)
    finally:
        for conn in held:
            conn.disconnect()
        first.ctl("set_vhost_limits", "-p", "/", '{"max-connections": -1}')
    kept = sum(spooled(spool) for _, spool, _ in pilots)
    refused = sum(1 for _, _, err in results if "refused" in err or "limit" in err.lower())
    arrivals = Arrivals(first, destination)
    try:
        for _, spool, _ in pilots:  # the limit lifted, each pilot's spool is replayed: everything arrives
            p = subprocess.run(
                [sys.executable, "-I", "-S", str(bundle), "replay"],
                cwd=str(tmp_path),
                env=pilot_env(cluster, pki, destination, PILOTLOG_SPOOL=str(spool)),
                stderr=subprocess.PIPE,
                universal_newlines=True,
                timeout=120,
            )
            assert p.returncode == 0, p.stderr
        got = arrivals.wait_for(n * EVENTS_PER_PILOT, timeout=60)
    finally:
        arrivals.close()
    ledger.record(
        "burst",
        "%d pilots against a broker limited to 2 connections" % n,
        n,
        n * EVENTS_PER_PILOT - got,
        all(code == EXIT for code, _, _ in results),
        0.0,
        next((err.strip().splitlines()[-1] for _, _, err in results if "refused" in err), ""),
        extra="%d events kept spooled at the limit, all delivered once it was lifted" % kept,
    )
    assert [code for code, _, _ in results] == [EXIT] * n  # the pilots' own exit code, whatever the broker did
    assert kept > 0 and refused > 0, "the limit did not bite: nothing was refused"
    assert got == n * EVENTS_PER_PILOT


def test_a_burst_of_pilots_against_serve_over_https(pki, bundle, tmp_path):
    port = free_port()
    store = tmp_path / "pilotlogs"
    serve = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            str(bundle),
            "serve",
            "--listen",
            "127.0.0.1:%d" % port,
            "--dir",
            str(store),
            "--server-cert",
            pki.path("server.pem"),
            "--server-key",
            pki.path("server.key"),
        ],
        env=clean_env(),
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    try:
        assert "serving https" in serve.stderr.readline()
        log = []
        reader = threading.Thread(target=lambda: log.extend(iter(serve.stderr.readline, "")), daemon=True)
        reader.start()
        env = clean_env(
            PILOTLOG_SINK="https://localhost:%d/WorkloadManagement/TornadoPilotLogging" % port,
            PILOTLOG_CA_FILE=pki.path("ca.pem"),
            PILOTLOG_VO="dteam",
            PILOTLOG_DEADLINE="60",
        )
        started = time.monotonic()
        pilots = start_pilots(bundle, tmp_path, PILOTS, env, "https")
        results = wait_pilots(pilots)
        wall = time.monotonic() - started
    finally:
        serve.terminate()
        serve.wait(10)
    reader.join(5)
    posts = [line for line in log if '"POST ' in line]
    stored = {}
    for name in os.listdir(str(store / "dteam")):
        with open(str(store / "dteam" / name)) as f:
            stored[name] = f.read().splitlines()
    ledger.record(
        "burst",
        "%d pilots at once against pilotlog serve (HTTPS, DIRAC protocol)" % PILOTS,
        PILOTS,
        PILOTS * EVENTS_PER_PILOT - sum(len(v) for v in stored.values()),
        all(code == EXIT for code, _, _ in results),
        wall,
        extra="%d requests" % len(posts),
    )
    assert [code for code, _, _ in results] == [EXIT] * PILOTS
    assert sorted(stored) == sorted(p + ".log" for p, _, _ in pilots), troubles(pilots, results)  # all finalised
    assert all(len(lines) == EVENTS_PER_PILOT for lines in stored.values())
    measure = scale_report.measure
    measure(
        "https.requests_per_pilot",
        len(posts) / PILOTS,
        "requests",
        "POSTs serve logged / pilots (sendMessage batches + finaliseLogs); DIRAC's pilot sends one "
        "sendMessage per finished command plus one before them and finaliseLogs: 11 for its default 9 "
        "commands, each on a new connection",
    )
    measure("https.requests_per_s", len(posts) / wall, "1/s", "serve's requests per second during the burst")
    measure("https.events_per_s", PILOTS * EVENTS_PER_PILOT / wall, "1/s", "events stored per second of the burst")
