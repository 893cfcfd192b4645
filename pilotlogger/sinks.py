"""Sinks: which destination a sink URL means.  The only place a sink URL is read.

A URL becomes one :class:`Target` (kind, TLS or not, hosts, destination), and every user
of a sink works from it: ``replay`` and the background shipping (through
:func:`open_sink`), ``doctor`` (which walks its hosts), ``tail`` and ``timeline`` (which
subscribe to its destination).  Credentials never appear in a sink URL (they are
settings: user/passcode, cert/key), so a Target's ``name`` can be printed as it is.

Adding a sink: one module with a sink following the contract in ``sink.py`` and a
``make(config, target, stdout)`` building it, and one line in :data:`MODULES` (plus one in
:data:`SCHEMES` for a new URL scheme).  A sink's module is imported only when such a sink
is asked for (the emit path never pays for the network sinks).
"""

import importlib

from .sink import FallbackSink

#: scheme -> (kind, TLS, default port)
SCHEMES = {
    "stomp+ssl": ("stomp", True, 61614),
    "stomp": ("stomp", False, 61613),
    "https": ("https", True, 443),
    "http": ("https", False, 80),
}
#: kind -> the module (in this package) whose ``make(config, target, stdout)`` opens such a sink
MODULES = {"stdout": "stdoutsink", "stomp": "stompclient", "https": "https"}
SUPPORTED = "use stdout, stomp+ssl://host:port/queue/name or https://host/path; stomp:// and http:// for plain TCP"


class Target:
    """A parsed sink URL.

    ``kind``: ``stdout``, ``stomp`` or ``https``; ``tls``: whether the connection is
    verified TLS; ``hosts``: [(host, port)…], in the order written (STOMP failover);
    ``destination``: the STOMP destination, or the HTTP path with its query;
    ``name``: the URL as it may be printed.
    """

    __slots__ = ("kind", "tls", "hosts", "destination", "name")

    def __init__(self, kind: str, tls: bool, hosts: list, destination: str, name: str):
        self.kind, self.tls, self.hosts, self.destination, self.name = kind, tls, hosts, destination, name

    def __repr__(self):
        return "Target(%r, %r, %r, %r)" % (self.kind, self.tls, self.hosts, self.destination)


def describe(url: str) -> str:
    """A sink for messages: the URL without credentials."""
    from .redact import mask_url

    return mask_url(url)


def normalise_destination(path: str) -> str:
    """``/queue/x``, ``/topic/x`` (any ``/...`` form passes) or DIRAC's ``host::Queues::x``."""
    if "::" in path:
        parts = path.lstrip("/").split("::")
        if len(parts) == 3 and parts[2]:
            kind = parts[1].lower().rstrip("s")
            if kind in ("queue", "topic"):
                return "/%s/%s" % (kind, parts[2])
        raise ValueError("destination %r is not DIRAC's host::Queue::name or host::Topic::name" % path)
    if not path.startswith("/") or path.rstrip("/").count("/") < 2:
        raise ValueError("destination %r must look like /queue/name or /topic/name" % path)
    return path


def parse(url: str) -> Target:
    """The Target a sink URL names; ValueError says what is wrong with it."""
    if url == "stdout":
        return Target("stdout", False, [], "", "stdout")
    scheme = url.partition("://")[0]
    if "://" not in url or scheme not in SCHEMES:
        raise ValueError("sink %r is not supported (%s)" % (describe(url), SUPPORTED))
    if SCHEMES[scheme][0] == "stomp":
        return _parse_stomp(url)
    return _parse_http(url)


def _parse_stomp(url: str) -> Target:
    """``stomp+ssl://h1[:p1][,h2[:p2]…][:port]/destination``.

    A host without its own port takes the port written last (or the scheme's default:
    61614 with TLS, 61613 plain).  Parsed by hand: ``urllib`` knows no host lists.
    """
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        raise ValueError("put credentials in user/passcode settings, not in the STOMP URL")
    hosts = []
    for item in netloc.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or host.count(":") and not host.endswith("]"):  # no port, or a bare IPv6 address
            host, port = item.strip(), ""
        host = host.strip("[]")
        if not host:
            raise ValueError("STOMP URL %r has an empty host" % describe(url))
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("STOMP URL %r has a bad port %r (1 to 65535)" % (describe(url), port))
        hosts.append((host, int(port) if port else None))
    kind, tls, default = SCHEMES[scheme]
    default = next((p for _, p in reversed(hosts) if p), default)
    destination = normalise_destination("/" + path if slash else "")
    return Target(kind, tls, [(h, p or default) for h, p in hosts], destination, describe(url))


def _parse_http(url: str) -> Target:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.hostname or any(c.isspace() for c in parts.netloc):
        raise ValueError("HTTPS URL %r must look like https://host[:port]/path" % describe(url))
    if parts.username or parts.password:
        raise ValueError("put credentials in cert/key settings, not in the HTTPS URL")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise ValueError("HTTPS URL %r has a bad port (1 to 65535)" % describe(url))
    kind, tls, default = SCHEMES[parts.scheme]
    path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    return Target(kind, tls, [(parts.hostname, default if port is None else port)], path, describe(url))


def _open_one(url: str, config, stdout):
    from .config import ConfigError
    from .tls import TLSConfigError

    if url.startswith("stomp") and getattr(config, "credential_error", None):
        from .config import CredentialError  # an unreadable passcode_file: said when shipping, events kept

        raise CredentialError("sink %s: %s" % (describe(url), config.credential_error))
    try:
        target = parse(url)
        sink = importlib.import_module("." + MODULES[target.kind], __package__).make(config, target, stdout)
    except (ValueError, TLSConfigError) as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith("sink ") else "sink %s: %s" % (describe(url), text)) from None
    sink.name = target.name
    return sink


def open_sink(config, stdout):
    """The sink named by ``config.sink``, behind a fallback when ``config.fallback_sink`` is set."""
    primary = _open_one(config.sink, config, stdout)
    if not config.fallback_sink:
        return primary
    return FallbackSink(primary, _open_one(config.fallback_sink, config, stdout))
