"""The spool: a durable on-disk queue of events, one file per event.

Layout of a spool directory (all 0700, files 0600)::

    lock            flock(2) target: every writer holds it while it assigns a seq and writes
    seq             the last sequence number handed out, and the bytes in events/ (text)
    pilot-uuid      the pilot id generated for this spool when the environment gave none
    state.json      delivery bookkeeping for `pilotlog status` (last error, drops)
    tmp/            events being written; anything here while the lock is held is debris
    events/         ready events, ``<time>_<seq>_<phase>_<id>.json``, oldest name first
    quarantine/     files that could not be read as events, each with a ``.reason`` beside it

Guarantees and how they are kept:

* *Durable before acknowledged*: write into ``tmp/``, flush, fsync, rename into
  ``events/``, fsync ``events/``.  A kill -9 at any instant leaves either the whole
  event in ``events/`` or only debris in ``tmp/`` (removed by the next writer).
* *Unique, increasing seq with concurrent writers*: seq and time are assigned under an
  exclusive ``flock`` held for the whole write, so (time, seq) order is acceptance order.
  The ``seq`` file (fsynced before the event becomes visible) holds the last seq; if it
  is lost, the next seq is derived from the highest one still queued.
* *Bounded*: at most ``max_events`` files and ``max_bytes`` bytes.  When full, the
  oldest ``log`` events are evicted to make room (lifecycle phases are kept); when only
  lifecycle events remain, the new event is dropped.  Neither case blocks the pilot.
* *Never follows links*: files are opened with ``O_NOFOLLOW``; anything that is not a
  regular file with a well-formed name is moved to ``quarantine/`` (the link itself,
  not its target).
* *Streams*: :meth:`Spool.entries` walks ``events/`` in name order a chunk at a time,
  so replaying 100,000 events never holds 100,000 names in memory.
"""

import errno
import os
import stat
import time

from .events import LOG_PHASE, EventError, check_size, new_id, to_json, validate

DEFAULT_MAX_EVENTS = 10000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 64 * 1024
LOCK_TIMEOUT = 5.0
#: Names handed out per directory scan by :meth:`Spool.entries` (bounds replay memory).
SCAN_CHUNK = 8192  # names per directory scan: fewer rescans of a large spool, ~1 MB of names

_SUFFIX = ".json"
_REASON = ".reason"


class SpoolError(Exception):
    """The spool could not do what was asked (disk full, permissions, lock held...)."""


class EventName:
    """A parsed spool file name: ``<time>_<seq>_<phase>_<id>.json``.

    The time goes first so that names sort in (time, seq) order; it is the compact
    UTC form ``YYYYmmddTHHMMSS.ffffffZ``.  The phase is in the name so that eviction can
    pick ``log`` events and an admin can read the spool with ``ls``.
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

    @classmethod
    def parse(cls, name: str):
        """The parsed name, or None when the name is not one this spool writes."""
        try:
            return cls(name)
        except ValueError:
            return None


class PutResult:
    """What happened to an event handed to :meth:`Spool.put`."""

    __slots__ = ("event", "stored", "evicted")

    def __init__(self, event: dict, stored: bool, evicted: int):
        self.event, self.stored, self.evicted = event, stored, evicted


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    """Create ``path`` (0600, must not exist) with ``data`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_own_directory(path: str) -> None:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise SpoolError("spool path %s exists and is not a directory" % path)
    if info.st_uid != os.geteuid():
        raise SpoolError(
            "spool directory %s belongs to uid %d, not to this user (uid %d), who must not trust it;"
            " use a spool of your own (--spool or PILOTLOG_SPOOL)" % (path, info.st_uid, os.geteuid())
        )


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
        self.path = os.path.abspath(path)
        self.events_dir = os.path.join(self.path, "events")
        self._events_prefix = self.events_dir + os.sep
        self.tmp_dir = os.path.join(self.path, "tmp")
        self.quarantine_dir = os.path.join(self.path, "quarantine")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_event_bytes = max_event_bytes
        self.lock_timeout = lock_timeout
        self.quarantined_here = 0  # files this object moved to quarantine (for replay's summary)

    # -- setup and locking ---------------------------------------------------------------

    def ensure(self) -> None:
        """Create the spool directories (0700) if they are missing; refuse ones that are not ours.

        A spool directory owned by another account is refused: that account could read the
        events or plant files and links in them (the rule ssh applies to ``~/.ssh``).
        """
        try:
            for d in (self.path, self.events_dir, self.tmp_dir, self.quarantine_dir):
                try:
                    os.mkdir(d, 0o700)
                except FileExistsError:
                    _check_own_directory(d)
        except OSError as exc:
            raise SpoolError("cannot create spool %s (%s)" % (d, _describe(exc))) from None

    def exists(self) -> bool:
        return os.path.isdir(self.events_dir)

    def _lock(self) -> int:
        import fcntl

        try:
            fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise SpoolError("cannot open spool lock in %s (%s)" % (self.path, _describe(exc))) from None
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    os.close(fd)
                    raise SpoolError(
                        "spool %s is locked by another process for more than %g s" % (self.path, self.lock_timeout)
                    ) from None
                time.sleep(0.002)

    @staticmethod
    def _unlock(fd: int) -> None:
        os.close(fd)  # closing the descriptor releases the flock

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

    def put(self, build) -> PutResult:
        """Assign seq and time, build the event with ``build(seq, epoch)``, store it durably.

        Returns once the event is on disk (or was dropped by the full-spool policy: see
        ``PutResult.stored``).  Raises :class:`EventError` for an event over the size cap
        (nothing is written then) and :class:`SpoolError` when the disk refuses.
        """
        self.ensure()
        fd = self._lock()
        try:
            self._clear_debris()
            names = self._listing()
            counter = self._read_counter()
            if counter is None:  # lost or unreadable: derive seq from what is queued, bytes by scan
                counter = (max((n.seq for n in map(EventName.parse, names) if n), default=0), None)
            seq, total = counter[0] + 1, counter[1]
            event = build(seq, time.time())
            body = (to_json(event) + "\n").encode("utf-8")
            check_size(len(body), self.max_event_bytes)
            room = self._make_room(names, event["phase"], len(body), total)
            if room is None:
                return PutResult(event, stored=False, evicted=0)
            evicted, total = room
            self._write_counter(seq, total + len(body))
            name = EventName.for_event(event)
            tmp = os.path.join(self.tmp_dir, name)
            try:
                _write_file(tmp, body)
                os.rename(tmp, os.path.join(self.events_dir, name))
                _fsync_dir(self.events_dir)
            except OSError as exc:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise SpoolError("cannot write event to spool %s (%s)" % (self.path, _describe(exc))) from None
            return PutResult(event, stored=True, evicted=evicted)
        finally:
            self._unlock(fd)

    def _clear_debris(self) -> None:
        """Remove files in tmp/: with the lock held, no live writer can own one."""
        try:
            for name in os.listdir(self.tmp_dir):
                if not name.startswith(".pilot-uuid-"):  # written outside the lock, see pilot_id()
                    os.unlink(os.path.join(self.tmp_dir, name))
        except OSError:
            pass  # debris is harmless; the write below reports real trouble

    def _read_counter(self):
        """(last seq, bytes in events/ as last counted) from the ``seq`` file, or None if lost.

        The byte total is updated by writers under the lock but not by replay's acks, so
        it can only over-estimate: "under the bound" is always a safe answer, and an exact
        count is made whenever it says the bound is near.
        """
        try:
            with open(os.path.join(self.path, "seq"), "rb") as f:
                fields = f.read().split()
            return int(fields[0]), (int(fields[1]) if len(fields) > 1 else None)
        except (OSError, ValueError, IndexError):
            return None

    def _write_counter(self, seq: int, total: int) -> None:
        path = os.path.join(self.path, "seq")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                data = b"%d %d\n" % (seq, total)
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolError("cannot write %s (%s)" % (path, _describe(exc))) from None

    def _listing(self) -> list:
        """Names in events/ (lock held), unparsed: parsing 10,000 names per emit is what we avoid."""
        try:
            return [n for n in os.listdir(self.events_dir) if n.endswith(_SUFFIX)]
        except OSError as exc:
            raise SpoolError("cannot list spool %s (%s)" % (self.events_dir, _describe(exc))) from None

    def _make_room(self, names: list, phase: str, size: int, total):
        """Apply the full-spool policy: ``(evicted log events, bytes now stored)``, or None to drop.

        The common case costs nothing: under both bounds by count and by the cached
        (over-estimating) byte total.  Otherwise sizes are counted exactly (one stat per
        file) and the oldest ``log`` events are evicted as needed.
        """
        count = len(names)
        if total is not None and count + 1 <= self.max_events and total + size <= self.max_bytes:
            return 0, total
        sizes = {n: self._size(n) for n in names}
        total = sum(sizes.values())
        evictable = sorted(n.name for n in map(EventName.parse, names) if n and n.phase == LOG_PHASE)
        evicted = 0
        while count + 1 > self.max_events or total + size > self.max_bytes:
            if not evictable:
                return None
            victim = evictable.pop(0)
            try:
                os.unlink(os.path.join(self.events_dir, victim))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise SpoolError("cannot evict %s (%s)" % (victim, _describe(exc))) from None
            count -= 1
            total -= sizes.pop(victim)
            evicted += 1
        return evicted, total

    def _size(self, name: str) -> int:
        try:
            return os.lstat(os.path.join(self.events_dir, name)).st_size
        except OSError:
            return 0

    # -- reading and acknowledging ----------------------------------------------------------

    def entries(self, chunk: int = SCAN_CHUNK):
        """Yield the names of ready events, oldest first, scanning ``chunk`` names at a time.

        Events added while this runs are picked up when they sort after the last name
        handed out; anything else waits for the next replay.  Files whose names this
        spool does not write are quarantined on the way.
        """
        import heapq

        last = ""
        while True:
            try:
                with os.scandir(self.events_dir) as it:
                    batch = heapq.nsmallest(chunk, (e.name for e in it if e.name > last))
            except FileNotFoundError:
                return
            except OSError as exc:
                raise SpoolError("cannot list spool %s (%s)" % (self.events_dir, _describe(exc))) from None
            if not batch:
                return
            for name in batch:
                if EventName.parse(name) is None:
                    self.quarantine(name, "file name is not one pilotlog writes")
                else:
                    yield name
            last = batch[-1]

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
                event = validate(json.loads(text))
                if EventName.for_event(event) != name:
                    raise EventError("content does not match the file name")
                return event, text
            except (ValueError, EventError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                reason = "is not a valid event (%s)" % exc
        self.quarantine(name, reason)
        return None

    def ack(self, name: str) -> None:
        """Remove a delivered event.  Not fsynced: losing an ack only means a duplicate."""
        try:
            os.unlink(self._events_prefix + name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SpoolError(
                "cannot remove delivered event %s (%s): it will be sent again" % (name, _describe(exc))
            ) from None

    def check_writable(self) -> None:
        """Raise SpoolError unless this spool is ours and delivered events can be removed
        (read-only mount, permissions)."""
        try:
            for d in (self.path, self.events_dir):
                _check_own_directory(d)
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
            self.quarantined_here += 1
            _write_file(target + _REASON, (reason + "\n").encode("utf-8"))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SpoolError("cannot quarantine %s (%s)" % (name, _describe(exc))) from None

    # -- bookkeeping -------------------------------------------------------------------------

    def read_state(self) -> dict:
        import json

        try:
            with open(os.path.join(self.path, "state.json"), "r") as f:
                state = json.load(f)
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def update_state(self, **changes) -> None:
        """Merge ``changes`` into state.json (atomically; counters named ``*_total`` are added)."""
        fd = self._lock()
        try:
            state = self.read_state()
            for key, value in changes.items():
                state[key] = state.get(key, 0) + value if key.endswith("_total") else value
            tmp = os.path.join(self.tmp_dir, ".state-%d" % os.getpid())
            _write_file(tmp, (to_json(state) + "\n").encode("utf-8"))
            os.rename(tmp, os.path.join(self.path, "state.json"))
        except OSError as exc:
            raise SpoolError("cannot write %s/state.json (%s)" % (self.path, _describe(exc))) from None
        finally:
            self._unlock(fd)

    def stats(self) -> dict:
        """Depth, bytes, oldest/newest and quarantine count, for `pilotlog status`."""
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
                    oldest = parsed.name if oldest is None or parsed.name < oldest else oldest
                    newest = parsed.name if newest is None or parsed.name > newest else newest
        except FileNotFoundError:
            pass
        try:
            quarantined = sum(1 for n in os.listdir(self.quarantine_dir) if not n.endswith(_REASON))
        except FileNotFoundError:
            quarantined = 0
        return {
            "depth": depth,
            "bytes": size,
            "oldest": EventName(oldest).rfc3339 if oldest else None,
            "newest": EventName(newest).rfc3339 if newest else None,
            "quarantined": quarantined,
        }


def open_spool(config) -> Spool:
    """The spool a resolved :class:`~pilotlogger.config.Config` names, with its bounds."""
    return Spool(config.spool, max_events=config.max_events, max_bytes=config.max_bytes,
                 max_event_bytes=config.max_event_bytes)
