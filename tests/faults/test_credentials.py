"""Bad configuration and credentials, produced for real against a real TLS receiver.

Each case of ``fault_tables.CASES`` is tried the three ways a pilot uses pilotlog: ``replay`` (exit 0 when the
path fails, 2 when the configuration itself is wrong — a usage error), ``emit --send``
(a configuration error is a usage error too; a failing path keeps the event, exit 0),
and ``run -- sh -c 'exit 7'`` (always 7).  One line each, naming the key or file, no
traceback, no key material; every event already spooled stays spooled.
"""

import pytest

import ledger
from fault_tables import CASES
from helpers import stderr_lines


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_configuration(case, case_pilot, tmp_path):
    _, _, (replay_code, send_code), needle = CASES[case]
    pilotlog, env = case_pilot(case)
    spooled = {e["id"] for e in pilotlog.events()}
    needle = needle.format(d=tmp_path)
    watch = ledger.Stopwatch()
    with watch:
        replay = pilotlog("replay", env=env)
    with watch:
        send = pilotlog("emit", "os", "--send", env=env)
    with watch:
        wrapped = pilotlog("run", "--", "sh", "-c", "exit 7", env=env)
    config_error = send_code == 2
    runs = (replay, send, wrapped)
    lost = len(spooled - {e["id"] for e in pilotlog.events()})
    exit_ok = replay.returncode == replay_code and send.returncode == send_code and wrapped.returncode == 7
    ledger.record(
        "bad config" if config_error else "credentials",
        case,
        3,
        lost,
        exit_ok,
        watch.longest,
        stderr_lines(replay)[0] if replay.stderr else "",
        extra="replay %d, emit --send %d%s, run 7"
        % (replay_code, send_code, " (event kept)" if send_code == 0 else ""),
    )
    assert exit_ok, [(p.returncode, p.stderr) for p in runs]
    assert lost == 0
    for p in runs:
        assert "Traceback" not in p.stderr and "BEGIN" not in p.stderr, p.stderr  # no key material either
        assert needle in p.stderr, (needle, p.stderr)
    assert len(stderr_lines(replay)) == 1 and len(stderr_lines(send)) == 1
    assert watch.longest < 10  # a certificate problem is not retried: it will not get better
