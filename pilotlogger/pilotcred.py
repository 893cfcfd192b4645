"""The DIRAC Pilot's own credential, borrowed by ``run --relay`` to forward its lines (Linux).

DIRAC's SiteDirector may bundle the pilot's proxy into its wrapper, which unpacks it into its
temporary directory and sets ``X509_USER_PROXY`` in its own Python only: ``pilotlog run`` in
front of the wrapper never sees it (tests/test_dirac_pilot.py,
``test_the_bundled_proxy_is_the_pilots_credential_inside_the_wrapper_only``), yet what the relay
stored must reach DIRAC with a credential DIRAC takes.  So when pilotlogger has none of its own
(no ``cert`` setting, no ``X509_USER_PROXY``/``X509_USER_CERT`` in the job's environment), the
relay hosted by ``run --relay`` takes the one the Pilot posts with:

1. the Pilot's end of the connection it posts on: the socket's owner and inode, from the kernel
   (peeruid.py, the question that already checks who posts);
2. the process holding that socket, looked for only in the wrapper's child and those of its
   descendants that run as the relay's own user (``/proc/<pid>/stat`` for the parents, then
   ``/proc/<pid>/fd``) — another process of the same user is never asked;
3. its ``X509_USER_PROXY`` (and ``X509_CERT_DIR``, when pilotlogger trusts no CA of its own),
   from ``/proc/<pid>/environ``;
4. loaded into a client TLS context at once, while the files exist (the wrapper deletes its
   directory when it ends): the proxy is never copied, never written to the spool or a log;
   the context lives in the wrapper's memory until its final drain.

Steps 1–3 read only ``/proc`` and run inside the Pilot's request (:func:`poster`); step 4 reads
files that may sit on a slow file system and runs beside it (:func:`borrow`): the Pilot's post
is answered whatever the CA directory makes it wait.

A later ``pilotlog replay`` has no Pilot to borrow from: it needs a credential of the node's.
Systems without ``/proc`` get nothing borrowed (:func:`borrow` says so).
"""

import os

from . import peeruid
from .tls import TLSConfigError, client_context, host_credentials

MAX_ENVIRON = 1 << 20  # bytes of a process's environment read


class BorrowError(Exception):
    """Why the Pilot's credential could not be taken, in one line."""


class Borrowed:
    """A client context holding the Pilot's credential; ``hosts`` when it is a host-certificate
    directory (then sent with ``extraCredentials="hosts"``, as the Pilot does); ``origin`` says
    whose it is, for the shutdown event."""

    __slots__ = ("context", "hosts", "origin")

    def __init__(self, context, hosts: bool, origin: str):
        self.context, self.hosts, self.origin = context, hosts, origin


class Poster:
    """The process that posted, and what its environment names: found while its socket is open."""

    __slots__ = ("pid", "proxy", "ca_dir")

    def __init__(self, pid: int, proxy: str, ca_dir: "str | None"):
        self.pid, self.proxy, self.ca_dir = pid, proxy, ca_dir


def poster(sock, root: int) -> Poster:
    """The process (``root`` or one below it) that holds the other end of ``sock``, with its
    ``X509_USER_PROXY`` and ``X509_CERT_DIR``.  Only ``/proc`` is read, so this is quick and can
    run inside the Pilot's request; the files themselves are read by :func:`borrow`, which may
    wait on a slow file system.  Raises :class:`BorrowError`."""
    if not os.path.isdir("/proc/self/fd"):
        raise BorrowError("this system has no /proc in which to find the posting process")
    try:
        owner = peeruid.peer_socket(sock)
    except OSError as exc:
        raise BorrowError("cannot ask the kernel who posted (%s)" % (exc.strerror or exc)) from None
    if owner is None or owner[0] != os.geteuid():
        raise BorrowError("the post comes from no process of this user")
    pid = holder_of(owner[1], [root] + descendants(root))  # the child itself may be the Pilot
    if pid is None:
        raise BorrowError("the post comes from no process of this run's child (pid %d)" % root)
    try:
        env = environ_of(pid)
    except OSError as exc:
        raise BorrowError("cannot read the environment of process %d (%s)" % (pid, exc.strerror or exc)) from None
    proxy = env.get("X509_USER_PROXY")
    if not proxy:
        raise BorrowError("the posting process %d has no X509_USER_PROXY" % pid)
    return Poster(pid, proxy, env.get("X509_CERT_DIR"))


def borrow(found: Poster, ca_file=None, ca_dir=None) -> Borrowed:
    """``found``'s credential in a client context.

    ``ca_file``/``ca_dir``: pilotlogger's own trust; when neither is set, the Pilot's
    ``X509_CERT_DIR`` is read (at once, whole: a cold CVMFS cache or a stalled NFS can make
    that take long, which is why the relay calls this outside the Pilot's request).
    Raises :class:`BorrowError`.
    """
    pilots_ca = found.ca_dir if not (ca_file or ca_dir) else None
    try:
        context = client_context(ca_file, ca_dir or pilots_ca, found.proxy, None, ca_dir_now=bool(pilots_ca))
    except TLSConfigError as exc:
        raise BorrowError("cannot use the X509_USER_PROXY of process %d: %s" % (found.pid, exc)) from None
    return Borrowed(
        context, bool(host_credentials(found.proxy)), "X509_USER_PROXY of process %d (the Pilot)" % found.pid
    )


def descendants(root: int) -> list:
    """The processes below ``root`` that run as this user, nearest first."""
    uid, children = os.geteuid(), {}  # type: int, dict
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat("/proc/" + entry).st_uid != uid:
                continue
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read(4096)
            # "pid (comm) state ppid …": comm may hold spaces and parentheses, so read after the last ")"
            parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
            continue
        children.setdefault(parent, []).append(int(entry))
    found, frontier = [], [root]
    while frontier:
        below = [pid for parent in frontier for pid in children.get(parent, ())]
        found += below
        frontier = below
    return found


def holder_of(inode: int, pids) -> "int | None":
    """The first of ``pids`` with the socket ``inode`` among its open files."""
    target = "socket:[%d]" % inode
    for pid in pids:
        fds = "/proc/%d/fd" % pid
        try:
            names = os.listdir(fds)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(fds + "/" + name) == target:
                    return pid
            except OSError:
                continue
    return None


def environ_of(pid: int) -> dict:
    """The environment a process was started with (``/proc/<pid>/environ``)."""
    with open("/proc/%d/environ" % pid, "rb") as f:
        raw = f.read(MAX_ENVIRON)
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            env[name.decode("utf-8", "replace")] = os.fsdecode(value)
    return env
