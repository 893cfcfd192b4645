"""Which Unix user is at the other end of a TCP connection on this host (Linux), stdlib only.

A worker node is shared: any local user can connect to a loopback port.  ``pilotlog relay``
forwards what it accepts with the pilot's own credentials into that pilot's log, so it takes
requests only from its own user, and asks this module who connected.

On Linux the kernel lists every TCP socket of the network namespace in ``/proc/net/tcp``
(IPv4) and ``/proc/net/tcp6`` (IPv6, and IPv4 as ``::ffff:a.b.c.d``) with the uid that owns
it.  The peer's socket of a connection we accepted is the entry whose local address is our
remote address and whose remote address is our local address: its uid column is the
peer's user.  Addresses are written there as the kernel holds them: each 32-bit word of the
address in the machine's byte order as 8 hex digits, then ``:`` and the port as 4.

Elsewhere there is no such table: :func:`available` says so and the caller decides.
"""

import os
import socket
import struct

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
MAX_TABLE_BYTES = 64 * 1024 * 1024  # some hundred thousand sockets; a bound, not a limit met in practice


def available() -> bool:
    """Whether this system lists its TCP sockets with their owners (Linux's /proc/net/tcp)."""
    return os.path.exists(TABLES[0])


def _ipv6_bytes(host: str) -> bytes:
    """The 16 bytes of an address, IPv4 as IPv4-mapped IPv6 (how a dual-stack socket sees it)."""
    host = host.split("%", 1)[0]  # a scope id (fe80::1%eth0) is not part of the address
    try:
        return b"\0" * 10 + b"\xff\xff" + socket.inet_aton(host)
    except OSError:
        return socket.inet_pton(socket.AF_INET6, host)


def _forms(address) -> set:
    """How ``address`` ((host, port, …) as getsockname gives it) is written in the tables."""
    raw, port = _ipv6_bytes(address[0]), "%04X" % address[1]
    forms = {"".join("%08X" % word for word in struct.unpack("=4I", raw)) + ":" + port}
    if raw[:12] == b"\0" * 10 + b"\xff\xff":  # also an IPv4 socket, in /proc/net/tcp
        forms.add("%08X:%s" % (struct.unpack("=I", raw[12:])[0], port))
    return forms


def peer_uid(sock) -> "int | None":
    """The uid owning the peer's end of ``sock`` (a connected TCP socket), or None when no socket
    of this host is that end (a remote peer, or one already gone).  OSError when the tables
    cannot be read."""
    own, peer = _forms(sock.getsockname()), _forms(sock.getpeername())
    for table in TABLES:
        try:
            with open(table, "rb") as f:
                rows = f.read(MAX_TABLE_BYTES).decode("ascii", "replace").splitlines()[1:]
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 7 and fields[1] in peer and fields[2] in own:
                return int(fields[7])
    return None
