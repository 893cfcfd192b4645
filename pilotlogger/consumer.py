"""Reading events back from a broker: the consumer side of ``pilotlog tail`` and ``timeline``.

The subscription uses ``client-individual`` acknowledgments: each MESSAGE is handed to
the caller and ACKed only after the caller has written it, so a consumer that dies
loses nothing (the broker redelivers what was not acknowledged).  Delivery upstream is
at-least-once, so events are de-duplicated by id; a duplicate is acknowledged and dropped.
"""

import json
import time

from .dedup import Seen
from .events import EventError, validate


def parse(text: str):
    """The event in a message body or JSON line, or None when it is not a pilotlog event
    (e.g. DIRAC's six-field format, or anything else on a shared destination).

    Pilots are untrusted: whatever a line holds — a time ``validate`` refuses, NaN (not
    JSON), nesting deeper than the parser's recursion limit, a 5,000-digit number (refused
    by Python 3.11+) — it is counted as not an event, never an error of the reader.
    """
    try:
        return validate(json.loads(text, parse_constant=_not_json))
    except (ValueError, EventError, RecursionError):
        return None


def _not_json(constant: str):
    raise ValueError("%s is not a JSON number" % constant)


def follow(config, handle, count=None, seconds=None, idle=None, duplicate=None) -> int:
    """Subscribe to ``config.sink`` and call ``handle(event_or_None, body_text)`` once per new
    message, ACKing it after ``handle`` returned.  A duplicate is ACKed and dropped (after
    ``duplicate(event)`` when given, for counting).

    Stops after ``count`` handled messages, after ``seconds``, or after ``idle`` seconds
    without any message — whichever comes first (none: until interrupted).  A lost
    connection is re-established (failover within ``deadline``, said on stderr); what was
    not acknowledged comes again and is recognised.  Returns how many were handled.
    Raises :class:`stompsession.StompError` when the broker refuses us or stays away.
    """
    from .console import warn
    from .sinks import parse as parse_sink
    from .stompclient import StompError, connect
    from .tls import client_context_for

    target = parse_sink(config.sink)
    if target.kind != "stomp":
        raise ValueError("reading events needs a STOMP sink (stomp+ssl://host:port/queue/name), not %s" % target.name)
    context = client_context_for(config) if target.tls else None

    def subscribed():
        conn = connect(
            target.hosts, context, config.vhost, config.user, config.passcode, config.timeout, config.deadline
        )
        conn.subscribe(target.destination)
        return conn

    conn = subscribed()
    seen, handled = Seen(), 0
    started = last = time.monotonic()
    try:
        while count is None or handled < count:
            stops = [t for t in (seconds and started + seconds, idle and last + idle) if t]
            now = time.monotonic()
            if stops and now >= min(stops):
                break
            try:
                for frame in conn.messages(min(stops + [now + 1.0])):
                    text = frame.body.decode("utf-8", "replace")
                    event = parse(text)
                    if event is None or seen.add(event["id"]):
                        handle(event, text)
                        handled += 1
                    elif duplicate is not None:
                        duplicate(event)
                    conn.ack(frame)
                    last = time.monotonic()
                    if count is not None and handled >= count:
                        break
            except StompError as exc:
                if not exc.retryable:
                    raise
                conn.abort()
                warn("%s; reconnecting" % exc)
                conn = subscribed()
                warn("reconnected to %s" % conn.where)
    finally:
        conn.close()  # DISCONNECT with a receipt: our ACKs are in; what we did not ACK is redelivered
    return handled
