"""Brokers that misbehave in ways a real broker cannot be made to: the deadlines and limits hold.

Each peer of ``fault_tables.PEERS`` is a real TLS server on loopback (the test PKI's
server certificate), scripted to fail one way.  For each, the pilot's three ways of using pilotlog are tried:
``replay`` and ``emit --send`` must exit 0 with one clear stderr line and keep every
event spooled; ``run -- sh -c 'exit 7'`` must return 7.  All within a bounded time.
"""

import ledger
from helpers import stderr_lines

TIMEOUT, DEADLINE = 1.0, 3.0
BOUND = 2 * DEADLINE + 6  # the worst case: failover deadline, then the wrapper's drain


def test_a_hostile_broker_never_harms_the_pilot(pilotlog, pki, peer):
    name, port, expected = peer
    env = {
        "PILOTLOG_SINK": "stomp+ssl://localhost:%d/queue/pilots" % port,
        "PILOTLOG_CA_FILE": pki.path("ca.pem"),
        "PILOTLOG_TIMEOUT": TIMEOUT,
        "PILOTLOG_DEADLINE": DEADLINE,
    }
    for i in range(5):
        assert pilotlog("emit", "log", "-m", "line %d" % i).returncode == 0
    spooled = {e["id"] for e in pilotlog.events()}
    watch, lines, exit_ok = ledger.Stopwatch(), [], True

    with watch:
        replay = pilotlog("replay", env=env)
    lines += stderr_lines(replay)
    exit_ok &= replay.returncode == 0 and len(stderr_lines(replay)) == 1
    with watch:
        send = pilotlog("emit", "install", "-m", "installing", "--send", env=env)
    exit_ok &= send.returncode == 0 and len(stderr_lines(send)) == 1
    with watch:
        wrapped = pilotlog("run", "--", "sh", "-c", "exit 7", env=env)
    exit_ok &= wrapped.returncode == 7

    kept = {e["id"] for e in pilotlog.events()}
    lost = len(spooled - kept)
    ledger.record(
        "hostile broker", name, 3, lost, exit_ok and watch.longest < BOUND, watch.longest, lines[0] if lines else ""
    )
    assert lost == 0 and len(kept) >= len(spooled) + 3  # install, and the wrapper's boot and shutdown
    assert replay.returncode == 0 and send.returncode == 0 and wrapped.returncode == 7
    (line,) = stderr_lines(replay)
    assert expected in line and "5 event(s) kept in spool" in line, line
    assert "Traceback" not in replay.stderr + send.stderr + wrapped.stderr
    assert watch.longest < BOUND
