"""The sink factory: what a sink URL means, the one parsed form every user of a sink reads."""

import re

import pytest

from pilotlogger.sinks import normalise_destination, parse


def parse_url(url):
    target = parse(url)
    return target.tls, target.hosts, target.destination


@pytest.mark.parametrize(
    "url,expected",
    [
        ("stomp+ssl://mq.example.org/queue/pilots", (True, [("mq.example.org", 61614)], "/queue/pilots")),
        ("stomp://h:1234/topic/t", (False, [("h", 1234)], "/topic/t")),
        ("stomp+ssl://a,b,c:61999/queue/q", (True, [("a", 61999), ("b", 61999), ("c", 61999)], "/queue/q")),
        ("stomp+ssl://a:1,b:2/queue/q", (True, [("a", 1), ("b", 2)], "/queue/q")),
        ("stomp+ssl://[::1]:7/queue/q", (True, [("::1", 7)], "/queue/q")),
        ("stomp+ssl://mq:61614/mq.example.org::Queues::pilotLogging", (True, [("mq", 61614)], "/queue/pilotLogging")),
        ("stomp+ssl://mq:61614/mq::Topic::pilots", (True, [("mq", 61614)], "/topic/pilots")),
    ],
)
def test_stomp_urls(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url,needle",
    [
        ("ftp://h/queue/q", "is not supported"),
        ("stomp+ssl://u:p@h/queue/q", "credentials"),
        ("stomp+ssl://h:port/queue/q", "bad port"),
        ("stomp+ssl://h", "must look like /queue/name"),
        ("stomp+ssl://h/mq::Exchange::x", "DIRAC's host::Queue::name"),
    ],
)
def test_bad_stomp_urls(url, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_url(url)


def test_destinations_pass_through():
    for d in ("/queue/a", "/topic/b", "/exchange/ex/key", "/amq/queue/c"):
        assert normalise_destination(d) == d


@pytest.mark.parametrize(
    "url,expected",
    [
        ("stdout", ("stdout", False, [], "")),
        ("https://h/p", ("https", True, [("h", 443)], "/p")),
        ("https://h:8443/WorkloadManagement/TornadoPilotLogging?x=1",
         ("https", True, [("h", 8443)], "/WorkloadManagement/TornadoPilotLogging?x=1")),
        ("http://h", ("https", False, [("h", 80)], "/")),
        ("stomp://a,b:7/queue/q", ("stomp", False, [("a", 7), ("b", 7)], "/queue/q")),
    ],
)
def test_every_sink_url_has_one_parsed_form(url, expected):
    from pilotlogger.redact import mask_url

    target = parse(url)
    assert (target.kind, target.tls, target.hosts, target.destination) == expected
    assert target.name == mask_url(url)  # printable: a query value may be a token (issue 15)


@pytest.mark.parametrize(
    "url,needle",
    [
        ("https://u:hunter2@h/p", "credentials"),
        ("https:///p", "must look like https://host"),
        ("https://h:port/p", "bad port"),
        ("ftp://u:hunter2@h/x", "is not supported"),
    ],
)
def test_bad_sink_urls_never_show_a_secret(url, needle):
    with pytest.raises(ValueError, match=re.escape(needle)) as info:
        parse(url)
    assert "hunter2" not in str(info.value)


def test_one_backoff_policy_doubles_to_five_seconds_with_jitter_and_resets():
    import random

    from pilotlogger.sink import Backoff

    backoff = Backoff(random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    for delay, base in zip(delays, (0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0)):
        assert 0.5 * base <= delay <= 1.5 * base
    assert backoff.attempts == 8
    backoff.reset()
    assert 0.1 <= backoff.next_delay() <= 0.3
