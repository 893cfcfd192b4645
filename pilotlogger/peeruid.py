"""Which Unix user is at the other end of a TCP connection on this host (Linux), stdlib only.

A worker node is shared: any local user can connect to a loopback port.  ``pilotlog relay``
forwards what it accepts with the pilot's own credentials into that pilot's log, so it takes
requests only from its own user, and asks this module who connected.

The peer's end of a connection we accepted is the socket of this host whose local address is
our remote address and whose remote address is our local address; the kernel knows the uid
that owns it.  Two ways to ask, the first tried first:

* netlink ``sock_diag`` (``NETLINK_SOCK_DIAG``, what ``ss`` uses): one request naming the
  socket exactly, answered with its ``inet_diag_msg`` and ``idiag_uid`` — a few microseconds,
  however many sockets the node has;
* ``/proc/net/tcp`` and ``/proc/net/tcp6``, where every TCP socket of the network namespace
  is a line with its uid: the way when netlink is not allowed (some sandboxes), but reading
  them costs milliseconds on a busy node.  Addresses are written there as the kernel holds
  them: each 32-bit word in the machine's byte order as 8 hex digits, ``:``, the port as 4.

Both also name the socket's inode, which ``run --relay`` looks for among the open files of its
child's processes (pilotcred.py).  A socket in TIME_WAIT has no owner left (the kernel says
uid 0): it is never taken as one.
Elsewhere there is no way to ask: :func:`available` says so and the caller decides.
"""

import os
import socket
import struct

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
MAX_TABLE_BYTES = 64 * 1024 * 1024  # some hundred thousand sockets; a bound, not a limit met in practice
MAPPED = b"\0" * 10 + b"\xff\xff"  # the prefix of an IPv4 address seen by an IPv6 socket
TIME_WAIT = 6  # the kernel's TCP_TIME_WAIT

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NO_COOKIE = 0xFFFFFFFF
#: nlmsghdr (16 bytes), then inet_diag_msg: family, state, timer, retrans, the 48-byte
#: inet_diag_sockid, expires, rqueue, wqueue, uid, inode.
REPLY_STATE, REPLY_UID, REPLY_BYTES = 16 + 1, 16 + 4 + 48 + 12, 16 + 72  # the inode follows the uid


_AVAILABLE: "list" = []  # the answer of available(), once asked: a stat of /proc costs ~20 µs per connection


def available() -> bool:
    """Whether this system can say who owns a TCP socket (Linux's /proc/net/tcp, netlink)."""
    if not _AVAILABLE:
        _AVAILABLE.append(os.path.exists(TABLES[0]))
    return _AVAILABLE[0]


def _ipv6_bytes(host: str) -> bytes:
    """The 16 bytes of an address, IPv4 as IPv4-mapped IPv6 (how a dual-stack socket sees it)."""
    host = host.split("%", 1)[0]  # a scope id (fe80::1%eth0) is not part of the address
    try:
        return MAPPED + socket.inet_aton(host)
    except OSError:
        return socket.inet_pton(socket.AF_INET6, host)


def peer_uid(sock) -> "int | None":
    """The uid owning the peer's end of ``sock`` (a connected TCP socket), or None when no socket
    of this host is that end (a remote peer, or one already gone).  OSError when the kernel
    cannot be asked at all."""
    owner = peer_socket(sock)
    return None if owner is None else owner[0]


def peer_socket(sock) -> "tuple | None":
    """``(uid, inode)`` of the peer's end of ``sock``, or None (see :func:`peer_uid`)."""
    own, peer = sock.getsockname(), sock.getpeername()
    ends = (_ipv6_bytes(peer[0]), peer[1], _ipv6_bytes(own[0]), own[1])
    try:
        return _ask_netlink(*ends)
    except OSError:  # netlink refused (a sandbox) or not there: the tables say the same, slower
        return _read_tables(*ends)


def _ask_netlink(src: bytes, sport: int, dst: bytes, dport: int) -> "tuple | None":
    """sock_diag's answer for the socket (src:sport → dst:dport), as IPv4 when both ends are IPv4
    (a client's AF_INET socket), else as IPv6."""
    asks = [(socket.AF_INET6, src, dst)]
    if src[:12] == MAPPED and dst[:12] == MAPPED:
        asks.insert(0, (socket.AF_INET, src[12:], dst[12:]))
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as link:
        link.settimeout(2.0)
        for seq, (family, local, remote) in enumerate(asks, 1):
            request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
            request += struct.pack("!HH", sport, dport) + local.ljust(16, b"\0") + remote.ljust(16, b"\0")
            request += struct.pack("=III", 0, NO_COOKIE, NO_COOKIE)
            link.send(struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + request)
            reply = link.recv(8192)
            if len(reply) < 20:
                raise OSError("sock_diag: a short answer")
            kind = struct.unpack_from("=H", reply, 4)[0]
            if kind == NLMSG_ERROR:
                error = -struct.unpack_from("=i", reply, 16)[0]
                if error == 2:  # ENOENT: no such socket, as this family
                    continue
                raise OSError(error, "sock_diag: %s" % os.strerror(error))
            if kind != SOCK_DIAG_BY_FAMILY or len(reply) < REPLY_BYTES:
                raise OSError("sock_diag: an answer of type %d" % kind)
            if reply[REPLY_STATE] == TIME_WAIT:
                return None
            return struct.unpack_from("=II", reply, REPLY_UID)
    return None


def _forms(address: bytes, port: int) -> set:
    """How an address and port are written in the tables."""
    forms = {"".join("%08X" % word for word in struct.unpack("=4I", address)) + ":%04X" % port}
    if address[:12] == MAPPED:  # also an IPv4 socket, in /proc/net/tcp
        forms.add("%08X:%04X" % (struct.unpack("=I", address[12:])[0], port))
    return forms


def _read_tables(src: bytes, sport: int, dst: bytes, dport: int) -> "tuple | None":
    peer, own = _forms(src, sport), _forms(dst, dport)
    for table in TABLES:
        try:
            with open(table, "rb") as f:
                rows = f.read(MAX_TABLE_BYTES).decode("ascii", "replace").splitlines()[1:]
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[1] in peer and fields[2] in own and int(fields[3], 16) != TIME_WAIT:
                return int(fields[7]), int(fields[9])
    return None
