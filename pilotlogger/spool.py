"""The spool: a durable on-disk queue of events, one file per event.

Layout of a spool directory (all 0700, files 0600)::

    lock            record lock (fcntl) target: every writer holds it while it assigns a seq and writes
    replay.lock     record lock (fcntl) target: held by whoever ships the spool, so replays take turns
    seq             the writers' bookkeeping: last seq, count and bytes in events/... (see _Books)
    evict           the oldest log events (eviction victims), read one record at a time
    acked           present when replay or quarantine removed events since the last recount
    pilot-uuid      the pilot id generated for this spool when the environment gave none
    state.json      delivery bookkeeping for `pilotlog status` (last error, drops)
    tmp/            events being written; anything here while the lock is held is debris
    events/         ready events, ``<time>_<seq>_<phase>_<id>.json``, shipped in seq order
    quarantine/     files that could not be read as events, each with a ``.reason`` beside it

Guarantees and how they are kept:

* *Durable before acknowledged*: write into ``tmp/``, fsync, rename into ``events/``,
  fsync ``events/``: two fsyncs per event, both for power loss (a kill -9 needs only the
  write and the rename, which the page cache keeps).  A kill -9 at any instant leaves
  either the whole event in ``events/`` or only debris in ``tmp/`` (removed by the next
  writer).  ``put(sync=False)`` skips both fsyncs for :class:`SyncGroup`.
* *Unique, increasing seq with concurrent writers*: seq and time are assigned under an
  exclusive lock held for the whole write, so seq order is acceptance order — and the
  order of everything that reads the spool (replay, eviction, ``status``), whatever the
  wall clock does: a clock stepped back (chronyd's ``makestep`` on a fresh VM) changes the
  times events carry, never their order.  The ``seq`` file holds the last seq (written
  before the event becomes visible; fsynced once per ``RESERVE`` seqs, see :class:`_Books`),
  and no rule deriving it reads a clock: after a reboot it continues above its fsynced
  reserve; if it is lost, from the highest seq still queued (so a spool emptied by replay
  and then stripped of its counter starts again at 1: seq orders one spool's events).
* *Bounded*: at most ``max_events`` files and ``max_bytes`` bytes.  When full, the
  oldest ``log`` events are evicted to make room (lifecycle phases are kept); when only
  lifecycle events remain, the new event is dropped.  Neither case blocks the pilot.
  Count and bytes are kept in the ``seq`` file, never below the truth whatever is killed
  when, so a put costs the same at any depth; a listing is made only to recount (see
  :meth:`Spool._recount`).
* *Never follows links*: files are opened with ``O_NOFOLLOW``; anything that is not a
  regular file with a well-formed name is moved to ``quarantine/`` (the link itself,
  not its target).
* *Forks and signal handlers*: the locks are POSIX record locks, which a forked child never
  inherits (a flock is the open file's, which fork copies: a fork while a thread wrote handed
  the lock to the child for its life), with the threads of one process taking turns first
  (:class:`~pilotlogger.concurrency.ProcessLock`, made anew in a child).  A put or state update
  called from the main thread runs in a helper thread, so a signal handler that records never
  waits for the lock its own interrupted thread holds (:func:`beyond_signal_handlers`).
* *Streams*: :meth:`Spool.entries` walks ``events/`` in name order a chunk at a time,
  so replaying 100,000 events never holds 100,000 names in memory.
"""

import errno
import os
import stat
import time

from .concurrency import ProcessLock, beyond_signal_handlers
from .events import LOG_PHASE, EventError, check_size, new_id, to_json, validate

DEFAULT_MAX_EVENTS = 10000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 64 * 1024
LOCK_TIMEOUT = 5.0
#: Names handed out per directory scan by :meth:`Spool.entries` (bounds replay memory).
SCAN_CHUNK = 8192  # names per directory scan: fewer rescans of a large spool, ~1 MB of names

#: Seqs handed out per fsync of the counter (seq stays unique across a power cut, see _Books).
RESERVE = 1024
#: Fewest eviction victims listed per recount (at least an eighth of max_events): amortises the listing.
EVICT_BATCH = 256
_COUNTER = 512  # bytes of the seq file: one write replaces it whole
_VICTIM = 128  # bytes per record of the evict file

#: The quarantine's bound is checked on the first and every this many quarantines of a process.
QUARANTINE_CHECK_EVERY = 64

_SUFFIX = ".json"
_REASON = ".reason"


class SpoolError(Exception):
    """The spool could not do what was asked (disk full, permissions, lock held...)."""


class EventName:
    """A parsed spool file name: ``<time>_<seq>_<phase>_<id>.json``.

    The time (the compact UTC form ``YYYYmmddTHHMMSS.ffffffZ``) goes first for an admin
    reading the spool with ``ls``; the spool orders names by seq (:meth:`order_key`), never
    by time.  The names are those of every earlier release, so any release reads any
    spool.  The phase is in the name so that eviction can pick ``log`` events.
    """

    __slots__ = ("name", "time", "seq", "phase", "id")

    def __init__(self, name: str):
        if not name.endswith(_SUFFIX):
            raise ValueError(name)
        stamp, seq, rest = name[: -len(_SUFFIX)].split("_", 2)
        phase, event_id = rest.rsplit("_", 1)
        if len(stamp) != 23 or not seq.isdigit() or len(event_id) != 36 or not phase:
            raise ValueError(name)
        self.name, self.time, self.seq, self.phase, self.id = name, stamp, int(seq), phase, event_id

    @staticmethod
    def for_event(event: dict) -> str:
        t = event["time"]  # 2026-11-28T02:23:19.123456Z
        stamp = t[0:4] + t[5:7] + t[8:10] + "T" + t[11:13] + t[14:16] + t[17:19] + t[19:]
        return "%s_%012d_%s_%s%s" % (stamp, event["seq"], event["phase"], event["id"], _SUFFIX)

    @property
    def rfc3339(self) -> str:
        """The event time back in the RFC 3339 form of the event itself (inverse of for_event)."""
        t = self.time
        return "%s-%s-%sT%s:%s:%s" % (t[0:4], t[4:6], t[6:8], t[9:11], t[11:13], t[13:])

    @staticmethod
    def order_key(name: str) -> str:
        """A string that sorts spool names in seq order: the name from its seq on (seq,
        phase, id), then its time.  Cheap, since replay keys every name of every scan: a
        seq of the names' 12 digits needs no parsing; a longer one (10^12 and up) sorts
        after those, by its number.  A name the spool does not write keys as itself."""
        if name[23:24] == "_" and name[36:37] == "_":
            return name[24:] + name[:23]
        parsed = EventName.parse(name)
        return name if parsed is None else "~%020d%s" % (parsed.seq, name)

    @classmethod
    def parse(cls, name: str):
        """The parsed name, or None when the name is not one this spool writes."""
        try:
            return cls(name)
        except ValueError:
            return None


class PutResult:
    """What happened to an event handed to :meth:`Spool.put`."""

    __slots__ = ("event", "stored", "evicted", "name")

    def __init__(self, event: dict, stored: bool, evicted: int, name: "str | None" = None):
        self.event, self.stored, self.evicted, self.name = event, stored, evicted, name


class _Books:
    """The writers' bookkeeping, one fixed-width line in the ``seq`` file::

        seq bytes count reserve boot cursor pending victims

    ``seq`` the last seq handed out; ``bytes``/``count`` what ``events/`` holds, never
    under the truth (a writer counts its event before the rename; acks and quarantine
    leave the ``acked`` mark instead of counting down, and the next writer at a bound
    recounts); ``reserve`` a seq bound that was fsynced; ``boot`` the boot it was written
    in; ``cursor`` the next of ``victims`` names in the ``evict`` file; ``pending`` the
    event the last writer was renaming, so that the next one finds its debris in O(1).
    """

    __slots__ = ("seq", "bytes", "count", "reserve", "boot", "cursor", "pending", "victims")

    def __init__(self, seq, size, count, reserve, boot, cursor, pending, victims):
        self.seq, self.bytes, self.count, self.reserve = seq, size, count, reserve
        self.boot, self.cursor, self.pending, self.victims = boot, cursor, pending, victims

    @classmethod
    def read(cls, path: str):
        """The bookkeeping in ``path``; None when lost or unreadable.  A counter of an older
        release (``seq bytes``) reads with ``count`` None, which makes the writer recount."""
        try:
            with open(path, "rb") as f:
                fields = f.read(_COUNTER).decode("ascii").split()
            if len(fields) < 8:
                return cls(int(fields[0]), 0, None, int(fields[0]), "-", 0, "-", 0)
            seq, size, count, reserve, cursor, victims = (int(fields[i]) for i in (0, 1, 2, 3, 5, 7))
            return cls(seq, size, count, reserve, fields[4], cursor, fields[6], victims)
        except (OSError, ValueError, IndexError):
            return None

    def encode(self) -> bytes:
        line = "%d %d %d %d %s %d %s %d" % (
            self.seq,
            self.bytes,
            self.count,
            self.reserve,
            self.boot,
            self.cursor,
            self.pending,
            self.victims,
        )
        return line.encode("ascii").ljust(_COUNTER - 1) + b"\n"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes, sync: bool = True) -> None:
    """Create ``path`` (0600, must not exist) with ``data`` and fsync it (unless ``sync`` is false)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _check_own_directory(path: str, follow: bool = False) -> None:
    """Raise SpoolError unless ``path`` is a directory of ours.  ``follow``: the spool path
    itself may be a symbolic link to such a directory (the user chose it); inside it, never."""
    info = os.stat(path) if follow else os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise SpoolError("spool path %s exists and is not a directory" % path)
    if info.st_uid != os.geteuid():
        raise SpoolError(
            "spool directory %s belongs to uid %d, not to this user (uid %d), who must not trust it;"
            " use a spool of your own (--spool or PILOTLOG_SPOOL)" % (path, info.st_uid, os.geteuid())
        )


def _not_json(constant: str):
    """json's parse_constant: NaN and Infinity are not JSON, so a file holding them is not an event."""
    raise ValueError("%s is not a JSON number" % constant)


#: The threads of this process take turns before the record locks, which exclude processes only.
_WRITERS = ProcessLock()
_SHIPPERS = ProcessLock()
_ADOPTING = ProcessLock()  # a forked child's first users of a SyncGroup make one state, not two


class _Kept(Exception):
    """A lock stayed taken (or cannot be taken): the message says by whom."""


def _hold(path: str, threads: ProcessLock, timeout: float, pause: float) -> int:
    """Take ``threads``, then an exclusive POSIX record lock on ``path`` (retried every ``pause``
    s), within ``timeout`` s in all; the open descriptor holding it (see :func:`_release`).

    A record lock, not a flock: a flock belongs to the open file description, which fork()
    copies, so a fork while one of our threads held it handed the lock to the child for its
    whole life; a record lock belongs to the process and is never inherited.  It is also let
    go when the process closes *any* descriptor of the file: hence the threads' turn first,
    and this the only place the file is opened.  Raises OSError when ``path`` cannot be
    opened or locked, :class:`_Kept` when the lock stays taken.
    """
    import fcntl

    deadline = time.monotonic() + timeout
    if not threads.acquire(timeout=timeout):
        raise _Kept("another thread of this process")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except BaseException:
        threads.release()
        raise
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                _release(fd, threads)
                raise  # no locks on this file system, for one
            if time.monotonic() > deadline:
                _release(fd, threads)
                raise _Kept("another process") from None
            time.sleep(pause)


def ready_to_write(states: bool = False, done=[]) -> None:  # noqa: B006  # the list remembers: once
    """Import what a put (``states``: and a state update) uses under the spool's locks, before
    they are taken.  A first import waits for the interpreter's import lock, which a thread
    holds while a signal handler runs in the middle of its import (between two bytecodes of a
    finder): were that handler recording, waiting for the writers' lock, each thread would wait
    for the other.  The Python API calls it as it is imported, so that a worker forked later
    finds nothing half imported (see pilotlogger.__init__)."""
    if states:
        import json  # noqa: F401  # read_state
    if not done:
        import fcntl  # noqa: F401  # _hold
        import heapq  # noqa: F401  # _recount

        to_json("")  # its string encoder's first import
        done.append(True)


def _release(fd: int, threads: ProcessLock) -> None:
    try:
        os.close(fd)  # lets the record lock go
    finally:
        threads.release()


def _make_parents(path: str) -> None:
    """Create the missing directories above ``path`` (0700: they lead to private events)."""
    missing, parent = [], os.path.dirname(path)
    while parent and not os.path.isdir(parent) and parent != os.path.dirname(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:  # made meanwhile by a concurrent first emit
            pass


def _first_accepted(victim: tuple) -> str:
    """Eviction order of a ``(name, size)`` victim: the first accepted log event goes first."""
    return EventName.order_key(victim[0])


def _describe(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


class Spool:
    """A spool directory.  Cheap to construct: nothing touches the disk until it is used."""

    def __init__(
        self,
        path: str,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        lock_timeout: float = LOCK_TIMEOUT,
    ):
        try:
            self.path = os.path.abspath(path)
        except OSError:  # a relative path, and the working directory was deleted under us
            self.path = path
        self.events_dir = os.path.join(self.path, "events")
        self._events_prefix = self.events_dir + os.sep
        self.tmp_dir = os.path.join(self.path, "tmp")
        self.quarantine_dir = os.path.join(self.path, "quarantine")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_event_bytes = max_event_bytes
        self.lock_timeout = lock_timeout
        self.quarantined_here = 0  # files this object moved to quarantine (for replay's summary)
        self._acked = os.path.join(self.path, "acked")
        self._boot: "str | None" = None  # this boot's id, read once
        self._made = False  # ensure() made (or found) every directory once

    # -- setup and locking ---------------------------------------------------------------

    def ensure(self) -> None:
        """Create the spool directories (0700) if they are missing; refuse ones that are not ours.

        A spool directory owned by another account is refused: that account could read the
        events or plant files and links in them (the rule ssh applies to ``~/.ssh``).  Once
        made, a later call (every put) checks only the two a put writes into, ``events/`` and
        ``tmp/``: two ``lstat`` instead of four ``mkdir`` and their checks.
        """
        if self._made and self._still_made():
            return
        if not os.path.isabs(self.path):
            raise SpoolError(
                "cannot use spool %s: the working directory no longer exists; give an absolute"
                " path (--spool or PILOTLOG_SPOOL)" % self.path
            )
        try:
            for d in (self.path, self.events_dir, self.tmp_dir, self.quarantine_dir):
                try:
                    os.mkdir(d, 0o700)
                except FileExistsError:
                    _check_own_directory(d, follow=d == self.path)
                except FileNotFoundError:
                    if d != self.path:
                        raise
                    _make_parents(d)  # as mkdir -p would, but private
                    os.mkdir(d, 0o700)
        except OSError as exc:
            raise SpoolError("cannot create spool %s (%s)" % (d, _describe(exc))) from None
        self._made = True

    def _still_made(self) -> bool:
        uid = os.geteuid()
        try:
            return all(
                stat.S_ISDIR(info.st_mode) and info.st_uid == uid
                for info in (os.lstat(self.events_dir), os.lstat(self.tmp_dir))
            )
        except OSError:
            return False

    def exists(self) -> bool:
        return os.path.isdir(self.events_dir)

    def holds_events(self) -> bool:
        """Whether anything waits in events/: one directory read, stopping at the first entry
        (True when it cannot be read: shipping will say why)."""
        try:
            with os.scandir(self.events_dir) as entries:
                return next(entries, None) is not None
        except FileNotFoundError:
            return False
        except OSError:
            return True

    def problem(self):
        """Why this spool cannot be read, in one line; None when it can, or does not exist yet.

        So that ``status`` and ``replay`` never mistake a spool they may not read (a file,
        mode 000, a path too long, another account's) for an empty or missing one.
        """
        try:
            _check_own_directory(self.path, follow=True)
            os.listdir(self.path)
            if os.path.lexists(self.events_dir):
                _check_own_directory(self.events_dir)
                os.listdir(self.events_dir)
        except FileNotFoundError:
            return None
        except SpoolError as exc:
            return str(exc)
        except OSError as exc:
            return "cannot read spool %s (%s)" % (self.path, _describe(exc))
        return None

    def _lock(self) -> int:
        try:
            return _hold(os.path.join(self.path, "lock"), _WRITERS, self.lock_timeout, 0.002)
        except OSError as exc:
            raise SpoolError("cannot open spool lock in %s (%s)" % (self.path, _describe(exc))) from None
        except _Kept as kept:
            raise SpoolError(
                "spool %s is locked by %s for more than %g s" % (self.path, kept, self.lock_timeout)
            ) from None

    @staticmethod
    def _unlock(fd: int) -> None:
        _release(fd, _WRITERS)

    def lock_replay(self):
        """Hold the right to ship this spool (waiting up to ``lock_timeout``); release with
        :meth:`unlock_replay`.  Raise SpoolError when another process keeps shipping it.

        Concurrent replays take turns, so each event is sent by one of them (duplicates
        come only from a crash between receipt and removal).  Separate from the writers'
        lock: an emit never waits for a long replay.
        """
        try:
            return _hold(os.path.join(self.path, "replay.lock"), _SHIPPERS, self.lock_timeout, 0.05)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return None  # nothing can be removed from this spool, so nothing is shipped (check_writable)
            raise SpoolError("cannot open the replay lock in %s (%s)" % (self.path, _describe(exc))) from None
        except _Kept as kept:
            raise SpoolError(
                "spool %s is being shipped by %s (waited %g s); its events are left to it"
                % (self.path, kept, self.lock_timeout)
            ) from None

    def unlock_replay(self, fd) -> None:
        if fd is not None:
            _release(fd, _SHIPPERS)

    # -- pilot id --------------------------------------------------------------------------

    def pilot_id(self) -> str:
        """The pilot id persisted in this spool, generated (atomically, once) on first use.

        Two first emitters racing both write a candidate and ``link`` it into place;
        ``link`` never overwrites, so exactly one wins and both read the winner.
        """
        self.ensure()
        target = os.path.join(self.path, "pilot-uuid")
        for _ in range(2):
            try:
                with open(target, "rb") as f:  # binary: text mode would import locale
                    value = f.read().decode("utf-8", "replace").strip()
                if value:
                    return value
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise SpoolError("cannot read %s (%s)" % (target, _describe(exc))) from None
            candidate = os.path.join(self.tmp_dir, ".pilot-uuid-%d-%s" % (os.getpid(), new_id()))
            try:
                _write_file(candidate, (new_id() + "\n").encode())
                try:
                    os.link(candidate, target)
                except FileExistsError:
                    pass
                _fsync_dir(self.path)
            except OSError as exc:
                raise SpoolError("cannot write %s (%s)" % (target, _describe(exc))) from None
            finally:
                try:
                    os.unlink(candidate)
                except OSError:
                    pass
        raise SpoolError("%s is empty; remove it to let a new pilot id be generated" % target)

    # -- writing ---------------------------------------------------------------------------

    @beyond_signal_handlers
    def put(self, build, sync: bool = True) -> PutResult:
        """Assign seq and time, build the event with ``build(seq, epoch)``, store it durably.

        Returns once the event is on disk (or was dropped by the full-spool policy: see
        ``PutResult.stored``).  Raises :class:`EventError` for an event over the size cap
        (nothing is written then) and :class:`SpoolError` when the disk refuses.

        O(1) whatever the depth: the counts come from the ``seq`` file, not a listing.
        With ``sync=False`` the event is written and renamed into place but not fsynced
        (a kill -9 loses nothing; power loss may): the caller fsyncs it later, see
        :class:`SyncGroup`.
        """
        self.ensure()
        ready_to_write()
        fd = self._lock()
        try:
            books = self._books()
            seq = books.seq + 1
            event = build(seq, time.time())
            body = (to_json(event) + "\n").encode("utf-8")
            check_size(len(body), self.max_event_bytes)
            evicted, books = self._make_room(books, event["phase"], len(body))
            if evicted is None:
                self._write_counter(books)
                return PutResult(event, stored=False, evicted=0)
            name = EventName.for_event(event)
            books.seq, books.count, books.bytes, books.pending = seq, books.count + 1, books.bytes + len(body), name
            self._write_counter(books)  # before any of the event exists: a kill -9 leaves an over-estimate
            tmp = os.path.join(self.tmp_dir, name)
            try:
                _write_file(tmp, body, sync)
                os.rename(tmp, os.path.join(self.events_dir, name))
                if sync:
                    _fsync_dir(self.events_dir)
            except OSError as exc:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                self._mark_acked()  # counted, not stored: the counts are over
                raise SpoolError("cannot write event to spool %s (%s)" % (self.path, _describe(exc))) from None
            return PutResult(event, stored=True, evicted=evicted, name=name)
        finally:
            self._unlock(fd)

    def _books(self) -> "_Books":
        """The writers' bookkeeping (lock held), repaired in O(1) after a killed writer;
        recounted from a listing only when the counter is lost, of an older format, or
        written before the machine rebooted (it is not fsynced, see :class:`_Books`)."""
        books = _Books.read(os.path.join(self.path, "seq"))
        boot = self._boot_id()
        if books is None or books.count is None or books.boot != boot:
            return self._recount(books, after_reboot=books is not None and books.boot != boot)
        if books.pending != "-":  # did the last writer get as far as its rename?  (the only debris possible)
            debris = os.path.join(self.tmp_dir, books.pending)
            try:
                size = os.lstat(debris).st_size
                os.unlink(debris)
                books.count, books.bytes = books.count - 1, books.bytes - size
            except FileNotFoundError:
                if not os.path.lexists(os.path.join(self.events_dir, books.pending)):
                    self._mark_acked()  # delivered since, or died before writing it: the counts may be over
            except OSError:
                pass  # unreadable: an over-estimate is safe
            books.pending = "-"
        return books

    def _boot_id(self) -> str:
        """This boot's id (Linux), "-" elsewhere: a counter written in another boot may have
        lost its last writes to a power cut, so it is recounted."""
        if self._boot is None:
            try:
                with open("/proc/sys/kernel/random/boot_id", "rb") as f:
                    self._boot = f.read().decode("ascii", "replace").strip() or "-"
            except OSError:
                self._boot = "-"
        return self._boot or "-"

    def _clear_debris(self) -> None:
        """Remove files in tmp/: with the lock held, no live writer can own one."""
        try:
            for name in os.listdir(self.tmp_dir):
                if not name.startswith(".pilot-uuid-"):  # written outside the lock, see pilot_id()
                    os.unlink(os.path.join(self.tmp_dir, name))
        except OSError:
            pass  # debris is harmless; the write below reports real trouble

    def _recount(self, old, after_reboot: bool = False) -> "_Books":
        """Exact bookkeeping from a listing (lock held), and a fresh list of eviction victims.

        O(depth), so only when the counter cannot be trusted: lost, after a reboot, when
        something left ``events/`` behind the writers' backs (the ``acked`` mark) or when
        the victims run out — at most once per ``len(victims)`` evictions at the bound.
        """
        try:
            os.unlink(self._acked)  # before listing: an ack after the listing marks again
        except OSError:
            pass
        self._clear_debris()
        count = size = top = 0
        logs = []
        try:
            with os.scandir(self.events_dir) as it:
                for entry in it:
                    if not entry.name.endswith(_SUFFIX):
                        continue
                    try:
                        n = entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
                    count, size = count + 1, size + n
                    parsed = EventName.parse(entry.name)
                    if parsed is not None:
                        top = max(top, parsed.seq)
                        if parsed.phase == LOG_PHASE:
                            logs.append((entry.name, n))
        except OSError as exc:
            raise SpoolError("cannot list spool %s (%s)" % (self.events_dir, _describe(exc))) from None
        import heapq

        victims = heapq.nsmallest(max(EVICT_BATCH, self.max_events // 8), logs, key=_first_accepted)
        seq = max(top, old.seq if old else 0, old.reserve if old and after_reboot else 0)
        books = _Books(seq, size, count, old.reserve if old else 0, self._boot_id(), 0, "-", len(victims))
        self._write_victims(victims)
        self._write_counter(books)
        return books

    def _write_victims(self, victims: list) -> None:
        """The oldest log events, oldest first, in fixed-width records (name, size) so that
        an evicting writer reads the one at the cursor without reading the rest."""
        data = b"".join(("%s %d" % v).encode().ljust(_VICTIM - 1)[: _VICTIM - 1] + b"\n" for v in victims)
        tmp = os.path.join(self.tmp_dir, ".evict-%d" % os.getpid())
        try:
            _write_file(tmp, data, sync=False)  # lost in a power cut: the reboot recounts
            os.rename(tmp, os.path.join(self.path, "evict"))
        except OSError as exc:
            raise SpoolError("cannot write %s/evict (%s)" % (self.path, _describe(exc))) from None

    def _victim(self, fd: int, index: int):
        """(name, size) of victim ``index``, or None past the end of the list."""
        fields = os.pread(fd, _VICTIM, index * _VICTIM).split()
        if len(fields) != 2:
            return None
        return fields[0].decode("ascii", "replace"), int(fields[1])

    def _write_counter(self, books: "_Books") -> None:
        """Overwrite the counter in one write (a kill -9 sees the old or the new record).

        Not fsynced per event: only when ``seq`` passes the reserve, which is then raised by
        ``RESERVE`` — a counter read after a reboot continues above its reserve, so seq stays
        unique across a power cut for one fsync per ``RESERVE`` events.
        """
        path = os.path.join(self.path, "seq")
        durable = books.seq >= books.reserve or books.boot == "-"
        if durable:
            books.reserve = books.seq + RESERVE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                os.pwrite(fd, books.encode(), 0)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolError("cannot write %s (%s)" % (path, _describe(exc))) from None

    def _make_room(self, books: "_Books", phase: str, size: int):
        """Apply the full-spool policy: ``(log events evicted or None to drop, bookkeeping now)``.

        The common case costs nothing: under both bounds by the counter, which can only
        over-estimate.  At a bound, the oldest log events are evicted from the victim list
        (O(1) each); the spool is recounted first when the counter may be over (the
        ``acked`` mark, a victim already gone) so that nothing is evicted from a spool
        that is not really full.
        """

        def fits():
            return books.count + 1 <= self.max_events and books.bytes + size <= self.max_bytes

        if fits():
            return 0, books
        recounted = False
        if os.path.lexists(self._acked):
            books, recounted = self._recount(books), True
        evicted, fd = 0, None
        try:
            while not fits():
                if fd is None:
                    try:
                        fd = os.open(os.path.join(self.path, "evict"), os.O_RDONLY | os.O_NOFOLLOW)
                    except OSError:
                        fd = -1
                victim = self._victim(fd, books.cursor) if fd >= 0 and books.cursor < books.victims else None
                if victim is None:
                    if recounted:
                        return None, books  # only lifecycle events left: drop the new one
                    books, recounted = self._recount(books), True
                    if fd >= 0:
                        os.close(fd)
                    fd = None
                    continue
                books.cursor += 1
                try:
                    os.unlink(os.path.join(self.events_dir, victim[0]))
                except FileNotFoundError:
                    if not recounted:  # left behind the writers' backs: the counts may be over
                        books, recounted = self._recount(books), True
                        if fd >= 0:
                            os.close(fd)
                        fd = None
                    continue
                except OSError as exc:
                    raise SpoolError("cannot evict %s (%s)" % (victim[0], _describe(exc))) from None
                books.count, books.bytes, evicted = books.count - 1, books.bytes - victim[1], evicted + 1
            return evicted, books
        finally:
            if fd is not None and fd >= 0:
                os.close(fd)

    # -- reading and acknowledging ----------------------------------------------------------

    def entries(self, chunk: int = SCAN_CHUNK):
        """Yield the names of ready events in seq order (the order they were accepted in,
        whatever the clock did), scanning ``chunk`` names at a time.

        Events added while this runs have higher seqs, so they are picked up in this pass.
        Files whose names this spool does not write are quarantined on the way.
        """
        import heapq

        key, last = EventName.order_key, ""
        while True:
            try:
                with os.scandir(self.events_dir) as it:
                    batch = heapq.nsmallest(chunk, (k for k in ((key(e.name), e.name) for e in it) if k[0] > last))
            except FileNotFoundError:
                return
            except OSError as exc:
                raise SpoolError("cannot list spool %s (%s)" % (self.events_dir, _describe(exc))) from None
            if not batch:
                return
            for _, name in batch:
                if EventName.parse(name) is None:
                    self.quarantine(name, "file name is not one pilotlog writes")
                else:
                    yield name
            last = batch[-1][0]

    def load(self, name: str):
        """Read and validate one event file; quarantine it (and return None) when it is bad."""
        loaded = self.read(name)
        return loaded and loaded[0]

    def read(self, name: str):
        """``(event, text)`` of one event file — ``text`` is its native JSON, ready to send —
        or None after quarantining a bad file."""
        path = self._events_prefix + name  # join() is measurable per event
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return None  # acknowledged by a concurrent replay
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.quarantine(name, "is a symbolic link; links are never followed")
            else:
                self.quarantine(name, "cannot be opened (%s)" % _describe(exc))
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                reason = "is not a regular file"
            elif info.st_size > self.max_event_bytes:
                reason = "is %d bytes, over the event size limit %d" % (info.st_size, self.max_event_bytes)
            else:
                reason = None
                raw = os.read(fd, self.max_event_bytes + 1)
        finally:
            os.close(fd)
        if reason is None:
            import json

            try:
                text = raw.decode("utf-8").rstrip("\n")
                event = validate(json.loads(text, parse_constant=_not_json))
                if EventName.for_event(event) != name:
                    raise EventError("content does not match the file name")
                return event, text
            except (ValueError, EventError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
                reason = "is not a valid event (%s)" % exc
        self.quarantine(name, reason)
        return None

    def ack(self, name: str) -> None:
        """Remove a delivered event.  Not fsynced: losing an ack only means a duplicate."""
        try:
            os.unlink(self._events_prefix + name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SpoolError(
                "cannot remove delivered event %s (%s): it will be sent again" % (name, _describe(exc))
            ) from None
        self._mark_acked()

    def _mark_acked(self) -> None:
        """Tell writers that events left behind their counter, after the fact (so a writer's
        recount, which removes the mark before listing, cannot miss this removal).  One
        ``lstat`` when the mark is there already."""
        try:
            os.lstat(self._acked)
        except FileNotFoundError:
            try:
                os.close(os.open(self._acked, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            except OSError:
                pass
        except OSError:
            pass

    def check_writable(self) -> None:
        """Raise SpoolError unless this spool is ours and delivered events can be removed
        (read-only mount, permissions)."""
        try:
            for d in (self.path, self.events_dir):
                _check_own_directory(d, follow=d == self.path)
        except OSError as exc:
            raise SpoolError("cannot use spool %s (%s)" % (self.path, _describe(exc))) from None
        if not os.access(self.events_dir, os.W_OK | os.X_OK):
            raise SpoolError(
                "spool %s cannot be changed (%s): nothing sent, since delivered events could not be "
                "removed and would be sent again" % (self.path, "read-only or not writable by this user")
            )

    def quarantine(self, name: str, reason: str) -> None:
        """Move a bad file (never its link target) out of the queue, with the reason beside it."""
        try:
            os.makedirs(self.quarantine_dir, 0o700, exist_ok=True)
            target = os.path.join(self.quarantine_dir, name)
            if os.path.lexists(target) or name.endswith(_REASON):
                target = os.path.join(self.quarantine_dir, "%s.%s" % (name, new_id()[:8]))
            os.rename(os.path.join(self.events_dir, name), target)
            self._mark_acked()
            self.quarantined_here += 1
            _write_file(target + _REASON, (reason + "\n").encode("utf-8"))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SpoolError("cannot quarantine %s (%s)" % (name, _describe(exc))) from None
        if self.quarantined_here % QUARANTINE_CHECK_EVERY == 1:
            self._trim_quarantine()

    def _trim_quarantine(self) -> None:
        """Keep the quarantine within the spool's own bounds (``max_events`` files, ``max_bytes``
        bytes): past them its oldest files go, counted in ``quarantine_dropped_total``.

        Without a bound a destination that refuses everything (a pilot id DIRAC will never take,
        relayed for hours) would fill the worker node's disk with what it refused.  Looked at on
        the first and every QUARANTINE_CHECK_EVERY-th quarantine of this process, so a storm of
        refusals costs one listing per that many files (the bound may be passed by as many).
        """
        files = []
        try:
            with os.scandir(self.quarantine_dir) as it:
                for entry in it:
                    if entry.name.endswith(_REASON):
                        continue
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    files.append((info.st_mtime, entry.name, info.st_size))
        except OSError:
            return
        count, size = len(files), sum(f[2] for f in files)
        if count <= self.max_events and size <= self.max_bytes:
            return
        dropped = 0
        for _, name, n in sorted(files):
            if count <= self.max_events and size <= self.max_bytes:
                break
            for victim in (name, name + _REASON):
                try:
                    os.unlink(os.path.join(self.quarantine_dir, victim))
                except OSError:
                    pass
            count, size, dropped = count - 1, size - n, dropped + 1
        try:
            self.update_state(quarantine_dropped_total=dropped)
        except SpoolError:
            pass

    # -- bookkeeping -------------------------------------------------------------------------

    def read_state(self) -> dict:
        import json

        try:
            with open(os.path.join(self.path, "state.json"), "r") as f:
                state = json.load(f)
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    @beyond_signal_handlers
    def update_state(self, **changes) -> None:
        """Merge ``changes`` into state.json (atomically; counters named ``*_total`` are added)."""
        ready_to_write(states=True)
        fd = self._lock()
        try:
            state = self.read_state()
            for key, value in changes.items():
                state[key] = state.get(key, 0) + value if key.endswith("_total") else value
            tmp = os.path.join(self.tmp_dir, ".state-%d" % os.getpid())
            _write_file(tmp, (to_json(state) + "\n").encode("utf-8"), sync=False)  # for status: a power cut may lose it
            os.rename(tmp, os.path.join(self.path, "state.json"))
        except OSError as exc:
            raise SpoolError("cannot write %s/state.json (%s)" % (self.path, _describe(exc))) from None
        finally:
            self._unlock(fd)

    def stats(self) -> dict:
        """Depth, bytes, oldest/newest and quarantine count, for `pilotlog status`.

        Oldest and newest are the first and the last event accepted (lowest and highest
        seq): the one replay ships first and the latest, each with the time it carries — so
        a clock stepped back in between shows as a newest time before the oldest."""
        depth = size = 0
        oldest = newest = None
        try:
            with os.scandir(self.events_dir) as it:
                for entry in it:
                    parsed = EventName.parse(entry.name)
                    if parsed is None:
                        continue
                    depth += 1
                    size += entry.stat(follow_symlinks=False).st_size
                    key = (EventName.order_key(parsed.name), parsed.name)
                    oldest = key if oldest is None or key < oldest else oldest
                    newest = key if newest is None or key > newest else newest
        except OSError:  # missing, or unreadable: problem() says which
            pass
        try:
            quarantined = sum(1 for n in os.listdir(self.quarantine_dir) if not n.endswith(_REASON))
        except OSError:
            quarantined = 0
        return {
            "depth": depth,
            "bytes": size,
            "oldest": EventName(oldest[1]).rfc3339 if oldest else None,
            "newest": EventName(newest[1]).rfc3339 if newest else None,
            "quarantined": quarantined,
        }


class SyncGroup:
    """fsyncs of events put with ``sync=False``, grouped: each event is written and renamed
    into ``events/`` before its ``put`` returns (a kill -9 loses nothing), and on disk
    (power loss loses nothing) within ``every`` seconds or once ``most`` are waiting.

    A group starts writeback of all its files first (``posix_fadvise``), then fsyncs each
    and ``events/`` once: the disk sees one flush for many events instead of two per
    event.  A background thread keeps the time bound; past ``4 * most`` waiting events the
    caller syncs itself, so a writer faster than the disk cannot widen the window.
    Nothing here raises into a caller: errors go to ``on_error``.  A forked child gets a
    group of its own (see :meth:`_adopt`).
    """

    def __init__(self, spool: Spool, every: float = 0.1, most: int = 100, on_error=None):
        self.spool, self.every, self.most, self.on_error = spool, every, most, on_error
        self._closed = False
        self._pid: "int | None" = None
        self._adopt()

    def _adopt(self) -> None:
        if os.getpid() != self._pid:
            self._start_here()

    @beyond_signal_handlers
    def _start_here(self) -> None:
        """Start this process's state: at first, and again in a forked child, which has copies of
        the parent's locks (held for ever if its fsync thread held one at the fork) but not that
        thread.  The parent syncs what it added; the child starts empty.  (Off the main thread:
        a signal handler's record coming here meanwhile waits for the state, never finds it half
        made.)"""
        import threading

        with _ADOPTING:
            pid = os.getpid()
            if pid == self._pid:
                return
            self._pending: list = []
            self._first = 0.0
            self._cond = threading.Condition()
            self._syncing = threading.RLock()  # a signal handler's record may sync while its thread does
            self._thread = None
            if not self._closed:
                self._thread = threading.Thread(target=self._run, name="pilotlog-fsync", daemon=True)
                self._thread.start()
            self._pid = pid

    def add(self, name: str) -> None:
        self._adopt()
        if self._closed:
            self._pending.append(name)
            self.sync()
            return
        with self._cond:
            if not self._pending:
                self._first = time.monotonic()
            self._pending.append(name)
            if len(self._pending) >= self.most:
                self._cond.notify()
            behind = len(self._pending) >= 4 * self.most
        if behind:
            self.sync()

    def sync(self) -> None:
        """fsync every event added so far (and ``events/``); returns when they are on disk."""
        self._adopt()
        with self._syncing:
            with self._cond:
                batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                self._fsync(batch)
            except OSError as exc:
                if self.on_error is not None:
                    self.on_error(
                        "cannot fsync %d event(s) in spool %s (%s); they are written and survive a crash of"
                        " this process, not a power cut" % (len(batch), self.spool.path, _describe(exc))
                    )

    def _fsync(self, names: list) -> None:
        advise = getattr(os, "posix_fadvise", None)
        fds = []
        try:
            for name in names:
                try:
                    fd = os.open(self.spool._events_prefix + name, os.O_RDONLY | os.O_NOFOLLOW)
                except FileNotFoundError:
                    continue  # already delivered and acknowledged, or evicted
                fds.append(fd)
                if advise is not None:
                    advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # starts writeback of this file now
            for fd in fds:
                os.fsync(fd)
        finally:
            for fd in fds:
                os.close(fd)
        _fsync_dir(self.spool.events_dir)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                while len(self._pending) < self.most and not self._closed:
                    left = self._first + self.every - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            self.sync()

    def close(self) -> None:
        """Sync what is waiting and stop the thread."""
        self._adopt()
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sync()


def open_spool(config) -> Spool:
    """The spool a resolved :class:`~pilotlogger.config.Config` names, with its bounds."""
    return Spool(
        config.spool, max_events=config.max_events, max_bytes=config.max_bytes, max_event_bytes=config.max_event_bytes
    )
