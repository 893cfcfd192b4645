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
        (
            "https://h:8443/WorkloadManagement/TornadoPilotLogging?x=1",
            ("https", True, [("h", 8443)], "/WorkloadManagement/TornadoPilotLogging?x=1"),
        ),
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


# -- destinations that drop, and queue properties (issue 19) ------------------------------------


@pytest.mark.parametrize(
    "destination,why",
    [
        ("/topic/t", "a topic with no subscriber"),
        ("/exchange/amq.topic/k", "an exchange with no binding"),
        ("/temp-queue/t", "a temporary queue"),
        ("/queue/q", None),
        ("/amq/queue/q", None),
    ],
)
def test_which_destinations_can_drop_what_they_confirm(destination, why):
    from pilotlogger.stompclient import dropping

    assert dropping(destination) == why


def test_a_sink_to_a_dropping_destination_is_refused_unless_trusted():
    from pilotlogger import config as config_module
    from pilotlogger.config import ConfigError
    from pilotlogger.sinks import open_sink

    environ = {"PILOTLOG_SINK": "stomp://h:1/topic/pilots", "PILOTLOG_SPOOL": "/tmp/x"}
    with pytest.raises(ConfigError, match="can drop messages silently .a topic with no subscriber."):
        open_sink(config_module.load(environ=environ), None)
    sink = open_sink(config_module.load(environ=dict(environ, PILOTLOG_DESTINATION_CHECK="off")), None)
    assert sink.destination == "/topic/pilots"


def test_destination_headers_go_on_every_send_and_are_checked():
    from pilotlogger import config as config_module
    from pilotlogger.config import ConfigError
    from pilotlogger.events import make_event
    from pilotlogger.sinks import open_sink
    from pilotlogger.stompcodec import FrameParser

    environ = {
        "PILOTLOG_SINK": "stomp://h:1/queue/q",
        "PILOTLOG_DESTINATION_HEADERS": "x-queue-type=quorum,durable=true",
    }
    sink = open_sink(config_module.load(environ=environ), None)
    event = make_event("boot", pilot="p", seq=1)
    parser = FrameParser(commands=("SEND",))
    parser.feed(sink.encode((event, "{}"), True))
    frame = parser.next_frame()
    assert frame.headers["x-queue-type"] == "quorum" and frame.headers["durable"] == "true"
    assert frame.headers["destination"] == "/queue/q" and frame.headers["receipt"] == event["id"]
    for bad in ("x-queue-type", "destination=/queue/other", "a b=c", "k=v\x01"):
        with pytest.raises(ConfigError, match="destination_headers"):
            open_sink(config_module.load(environ=dict(environ, PILOTLOG_DESTINATION_HEADERS=bad)), None)


def test_a_refusal_pilotlog_can_explain_says_what_to_configure():
    from pilotlogger.stompclient import advice

    error = (
        "broker h:1 sent an ERROR: precondition_failed (PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for "
        "queue 'qq' in vhost '/': received none but current is the value 'quorum' of type 'longstr')"
    )
    assert "add x-queue-type=quorum to destination_headers" in advice(error)
    assert "remove it from destination_headers" in advice(
        error.replace(
            "received none but current is the value 'quorum'",
            "received the value 'quorum' of type 'longstr' but current is none",
        )
    )
    assert advice("sent an ERROR: access refused") == ""
