"""``pilotlog relay``: the DIRAC Pilot's remote logger, received on the worker node and spooled.

The Pilot posts DIRAC's form (``method``, ``args``) with ``urllib.request.urlopen``: no
timeout, and any non-2xx answer raises and ends the pilot.  The relay takes those posts in
its place (``-z -g http://127.0.0.1:PORT/``), stores each durably in the spool, and only
then answers as DIRAC's ``TornadoPilotLoggingHandler`` would; ``ship.py`` forwards what it
stored to the configured sink, and the HTTPS sink posts each stored form unchanged.

* One HTTP server, one reading of the form, one acceptance rule, shared with ``pilotlog
  serve`` (httpd.py, diracform.py).  DIRAC's pilot-id rule decides the answer here (DIRAC
  refuses other ids whatever the credentials), yet such a post is kept and forwarded (see
  :meth:`Intake.take`); the VO is not checked, since DIRAC chooses it from the forwarding
  credentials (their group's VO first), so only DIRAC can refuse one.
* Never harms the Pilot: every request it can read is answered with HTTP 200, and
  ``{"OK": false, "Message": …}`` where it cannot store (full spool, malformed, oversized)
  or DIRAC would refuse (a pilot id); each request is answered within ``request_timeout`` (reading) plus
  the spool's lock wait (5 s) — a Pilot waiting on a silent DIRAC is what this replaces.
* Only the Pilot may post: a connection that does not come from the relay's own Unix user
  (peeruid.py; on systems without Linux's socket table, one that is not from loopback) is
  answered ``{"OK": false}`` and nothing of it is stored.  It is judged as it is accepted and
  served in a small lane of its own (httpd's ``admit``), so other users cannot take the
  Pilot's connections by opening many.
* What one pilot can make it store is bounded by the spool's bounds: relayed records are
  not ``log`` events, so they are never evicted; once the spool is full the answer is
  ``{"OK": false}`` (the Pilot reads none of its answers and goes on).

A relayed record is a schema-v1 event (see :func:`record`): ``pilot`` the Pilot's id,
``source`` ``relay``, ``phase`` the Pilot command found in the ``[CommandClass]`` of its
lines (``shutdown`` for ``finaliseLogs``), and ``data.dirac_form`` the form fields to post
again.  A message too large for one event (``max_event_bytes``) is stored as several
``sendMessage`` records cut at line ends: DIRAC appends each as it comes, so its file holds
the same bytes as after the one post.
"""

import json
import os
import re
import threading

from . import httpd
from .console import warn
from .diracform import FORM_TYPE, check_ids, encode_args, message_bytes, read_form
from .events import (
    DRAFT_ROOM,
    LIFECYCLE_PHASES,
    LOG_PHASE,
    RELAYED,
    EventError,
    check_name,
    check_pilot,
    make_event,
    to_json,
)
from .httpd import Reject

DEFAULT_LISTEN = "127.0.0.1:0"
#: Largest request taken: a 1000-line buffer is well under 1 MiB; a request is held in memory
#: a few times over while it is decoded, in the pilot's own memory when ``run --relay`` hosts it.
MAX_BODY = 8 * 1024 * 1024
MAX_CONNECTIONS = 20  # one Pilot posts one request at a time (two with its flush timer)
SOURCE = "relay"
OTHER_PHASE = "relay"  # the phase of lines with no [CommandClass] (or one that is not a phase name)
MESSAGE_CHARS = 300
#: A line of the Pilot's ``Logger.messageTemplate`` (``2026-12-04T10:00:00.123456Z INFO [Name] …``,
#: older pilots ``2026-12-04 10:00:00 UTC INFO [Name] …``): its level and logger name.
HEADER = r"^\d{4}-\d\d-\d\d[T ][0-9:.]+Z?(?: UTC)? ([A-Z]+) \[([^\]\r\n]{1,64})\]"
LEVELS = {"ERROR": "error", "CRITICAL": "error", "FATAL": "error", "EXCEPTION": "error"}
LEVELS.update(WARN="warning", WARNING="warning", DEBUG="debug", VERBOSE="debug")
RANK = {"debug": 0, "info": 1, "warning": 2, "error": 3}


def summary(text: str):
    """``(phase, status, message)`` of a block of the Pilot's lines: the first logger name that
    is a phase name, the worst level, and the first line at that level when it is a warning or
    an error (else the last line), shortened."""
    phase = worst = first_worst = None
    for match in re.finditer(HEADER, text, re.M):
        status = LEVELS.get(match.group(1), "info")
        if phase is None:
            phase = _phase(match.group(2))
        if worst is None or RANK[status] > RANK[worst]:
            worst, first_worst = status, match.start()
    if worst is not None and first_worst is not None and RANK[worst] >= RANK["warning"]:
        line = text[first_worst:].split("\n", 1)[0]
    else:
        line = next((x for x in reversed(text.split("\n")) if x.strip()), "")
    return phase or OTHER_PHASE, worst or "info", _shortened(line.rstrip("\r"))


def _shortened(line: str) -> str:
    """At most MESSAGE_CHARS characters, and twice as many bytes once in an event (a control
    character takes six there), so that a message never crowds out the lines in a record."""
    line = line[:MESSAGE_CHARS]
    while len(to_json(line).encode("utf-8")) > 2 * MESSAGE_CHARS:
        line = line[: len(line) // 2]
    return line


def _phase(name: str):
    """A logger name as a phase: a valid name that is not one of pilotlogger's own phases."""
    try:
        check_name("phase", name)
    except EventError:
        return None
    return None if name in LIFECYCLE_PHASES or name == LOG_PHASE else name


def exit_code(ret_code) -> int:
    """The exit code a ``finaliseLogs`` retCode says: the Pilot sends ``str(SystemExit)`` —
    ``""`` for ``sys.exit()`` (0), the number, or the text of ``sys.exit("text")`` (which exits 1)."""
    if ret_code is None or ret_code == "":
        return 0
    if isinstance(ret_code, int) and not isinstance(ret_code, bool):
        return ret_code if abs(ret_code) < 1 << 31 else 1
    text = str(ret_code).strip()
    return int(text) if re.match(r"-?[0-9]{1,9}\Z", text) else 1  # ASCII digits only: int("²") raises


def record(form, phase: str, status: str, message: str, args: str, **data) -> tuple:
    """One relayed record, as ``(phase, status, message, data)`` for the spool."""
    data[RELAYED] = {"method": form.method, "args": args}
    return phase, status, message, data


def _lines(text: str) -> list:
    """The lines of ``text``, each with its "\\n" (the last without one when the text has none)."""
    pieces = text.split("\n")
    return [p + "\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


class Sizer:
    """What a sendMessage record costs in the spool: an event holds the text JSON-encoded three
    times over (the payload, ``args``, the event), each escape character by character, so the
    cost of a text is the sum of the costs of its pieces."""

    #: The most one character costs: outside the BMP it is two ``\\udxxx`` escapes, whose backslash
    #: doubles at each of the next two encodings (9 bytes each).
    WORST = 18

    def __init__(self, limit: int, base: int):
        self.budget = limit - base  # bytes left for the text in one record
        self.empty = self._encoded("")

    @staticmethod
    def _encoded(piece: str) -> int:
        return len(to_json(json.dumps(json.dumps(piece))).encode("utf-8"))

    def cost(self, piece: str) -> int:
        return self._encoded(piece) - self.empty

    def parts(self, text: str) -> list:
        """``text`` cut into parts each within the budget, at line ends where a line fits."""
        parts: list = []
        current: list = []
        used = 0
        for line in _lines(text):
            pieces = self._cut(line)
            for piece in pieces:
                cost = self.cost(piece)
                if current and used + cost > self.budget:
                    parts.append("".join(current))
                    current, used = [], 0
                current.append(piece)
                used += cost
        if current or not parts:
            parts.append("".join(current))
        return parts

    def _cut(self, line: str) -> list:
        """A line longer than the budget, cut where it fits (each character costs 1 to WORST bytes)."""
        out = []
        while len(line) > self.budget // self.WORST and (len(line) > self.budget or self.cost(line) > self.budget):
            low, high = 1, min(len(line), self.budget)  # the longest prefix that fits: at least one character
            while low < high:
                middle = (low + high + 1) // 2
                if self.cost(line[:middle]) <= self.budget:
                    low = middle
                else:
                    high = middle - 1
            out.append(line[:low])
            line = line[low:]
        return out + [line] if line else out


class Intake:
    """What the relay stores: each request read, checked and put in the spool before its answer."""

    def __init__(self, config) -> None:
        from .spool import SyncGroup, open_spool

        self.config, self.spool, self.context = config, open_spool(config), config.context()
        self._warned: set = set()
        self.group = SyncGroup(self.spool, on_error=self._warn) if config.log_fsync == "grouped" else None
        #: ``observer(method, pilot, content, names)``, told of each request stored (``run --relay``:
        #: relayrun.py): the message's text or the finaliseLogs payload, and the spool files.
        self.observer = None
        self._gate = threading.Lock()  # a store and its telling, or the close: never one within the other
        self.closed = False
        self._fits = self._sure_to_fit()

    def _sure_to_fit(self) -> int:
        """The longest ``args`` whose record is sure to fit one event, whatever its pilot id, phase
        and message: so that a usual post (a few lines) is not built and encoded once more only to
        learn its size.  In an event a character of ``args`` takes at most 6 bytes (a control
        character's ``\\u00XX``; UTF-8 takes at most 4), of the pilot id too (at most MAX_PILOT_LEN
        characters); a phase name is ASCII; a message at most 2 × MESSAGE_CHARS bytes."""
        from .events import MAX_NAME_LEN, MAX_PILOT_LEN

        empty = self._size("p", ("p", "warning", "", {RELAYED: {"method": "finaliseLogs", "args": ""}}))
        worst = empty + 6 * MAX_PILOT_LEN + MAX_NAME_LEN + 2 * MESSAGE_CHARS
        return max(0, (self.config.max_event_bytes - worst) // 6)

    def take(self, body: bytes):
        """Read, check and store one request; DIRAC's ``Value`` once it is stored, else Reject.

        A pilot id DIRAC refuses is answered with DIRAC's refusal, as DIRAC would, yet kept
        and forwarded as it came when it can be an event's pilot (the Pilot's default
        ``unknown`` can): a broker takes it, and DIRAC's own refusal is then quarantined with
        the lines and said by ``status`` -- the Pilot alone would have lost them.
        """
        form = read_form(body)
        try:
            check_ids(form.pilot)
            refusal = None
        except Reject as exc:
            refusal = exc
            self._note_refusal("pilot %r: %s" % (form.pilot[:80], exc))
            try:
                check_pilot(form.pilot)
            except EventError as why:
                raise Reject(400, "%s; not kept (%s)" % (exc, why)) from None
        try:
            content = form.content()
        except Reject:
            if refusal is not None:
                raise refusal from None  # DIRAC's plugin checks the id before it reads the message
            raise
        if form.method == "sendMessage":
            content = message_bytes(content).decode("utf-8")  # refuses what cannot be stored (a lone surrogate)
            records = self._message_records(form, content)
            value = "Message logged successfully for pilot: %s and %s" % (form.pilot, form.vo)
        else:
            code = exit_code(content.get("retCode"))
            message = "finaliseLogs: retCode %s" % json.dumps(content.get("retCode"))[:MESSAGE_CHARS]
            records = [
                (form.pilot,)
                + record(form, "shutdown", "info" if code == 0 else "error", message, form.args, exit_code=code)
            ]
            value = None  # DIRAC's S_OK() for finaliseLogs
        with self._gate:
            if self.closed:
                raise Reject(503, "not stored: the relay is closing (its run ended)")
            names = self._store(records, sync=form.method == "finaliseLogs" or self.group is None)
            self._tell(form, content, names)
        if refusal is not None:
            raise Reject(400, "%s; kept, and forwarded as it came" % refusal)
        return value

    def _message_records(self, form, text: str) -> list:
        """The records of a sendMessage: one holding ``args`` as it came when it fits an event,
        else one per part of the text, each with ``args`` as the Pilot would encode that part."""
        phase, status, message = summary(text)
        whole = record(form, phase, status, message, form.args)
        limit = self.config.max_event_bytes
        if len(form.args) <= self._fits or self._size(form.pilot, whole) <= limit:
            return [(form.pilot,) + whole]
        empty = record(form, phase, status, message + " (part 99999 of 99999)", encode_args("", form.pilot, form.vo))
        sizer = Sizer(limit, self._size(form.pilot, empty))
        if sizer.budget < 4 * Sizer.WORST:
            raise Reject(413, "max_event_bytes=%d leaves no room for the Pilot's lines: raise it" % limit)
        parts = sizer.parts(text)
        return [
            (form.pilot,)
            + record(
                form,
                phase,
                status,
                "%s (part %d of %d)" % (message, i, len(parts)),
                encode_args(part, form.pilot, form.vo),
            )
            for i, part in enumerate(parts, 1)
        ]

    def _event(self, pilot: str, phase: str, status: str, message: str, data: dict, seq: int = 1, epoch: float = 0.0):
        return make_event(phase, message, status, SOURCE, data, pilot=pilot, context=self.context, seq=seq, epoch=epoch)

    def _builder(self, rec: tuple):
        """The spool's ``build(seq, epoch)`` of a record ``(pilot, phase, status, message, data)``."""
        pilot, phase, status, message, data = rec
        return lambda seq, epoch: self._event(pilot, phase, status, message, data, seq, epoch)

    def _size(self, pilot: str, rec: tuple) -> int:
        """Bytes of a record's event as the spool stores it (with room for its real seq)."""
        return len((to_json(self._event(pilot, *rec)) + "\n").encode("utf-8")) + DRAFT_ROOM

    def _tell(self, form, content, names: list) -> None:
        """The observer hears of a stored request; what goes wrong there is said, never raised."""
        if self.observer is not None:
            try:
                self.observer(form.method, form.pilot, content, names)
            except Exception as exc:
                self._warn("relay: %s: %s" % (type(exc).__name__, exc))

    def _store(self, records: list, sync: bool) -> list:
        """Put every record durably, or none: a part that does not fit removes the parts before it;
        the names of the spool files."""
        from .spool import SpoolError

        stored: list = []
        try:
            for rec in records:
                result = self.spool.put(self._builder(rec), sync=sync)
                if not result.stored:
                    self._count_drops(1)
                    full = "spool %s is full (max_events=%d, max_bytes=%d) and holds no log events to evict" % (
                        self.spool.path,
                        self.config.max_events,
                        self.config.max_bytes,
                    )
                    # the Pilot reads no {"OK": false}: the node's log is the only place this is said
                    self._warn(
                        "relay: %s: the Pilot's posts are not kept; run 'pilotlog replay' or raise the bounds" % full
                    )
                    raise Reject(507, "not stored: " + full)
                stored.append(result.name)
                if result.evicted:
                    self._warn(
                        "spool %s is full: evicted the oldest log event(s) to keep relayed lines" % self.spool.path
                    )
                    self._count_drops(result.evicted)
        except (SpoolError, EventError, Reject) as exc:
            for name in stored:
                try:
                    self.spool.ack(name)
                except SpoolError:
                    pass
            if isinstance(exc, Reject):
                raise
            self._warn("relayed request not stored: %s" % exc)
            raise Reject(503, "not stored: %s" % exc) from None
        if self.group is not None and not sync:
            for name in stored:
                self.group.add(name)
        return stored

    def close(self) -> None:
        """Take no more requests (one being stored is finished first), fsync what waits (grouped fsyncs)."""
        with self._gate:
            self.closed = True
        if self.group is not None:
            self.group.close()

    # -- bookkeeping -------------------------------------------------------------------------

    def _warn(self, message: str) -> None:
        if message not in self._warned:  # a flood must not print a line per request
            self._warned.add(message)
            warn(message)

    def _count_drops(self, n: int) -> None:
        from .spool import SpoolError

        try:
            self.spool.update_state(dropped_total=n)
        except SpoolError:
            pass

    def _note_refusal(self, reason: str) -> None:
        """A request DIRAC's rules refuse: `pilotlog status` says so (whether or not it was kept)."""
        import time

        from .spool import SpoolError

        self._warn("relay refused %s" % reason)
        try:
            self.spool.ensure()  # the first request may be the refused one
            self.spool.update_state(last_refusal="relay: " + reason, last_refusal_time=time.time())
        except SpoolError:
            pass


class Relay:
    """The relay: its HTTP server (a thread once :meth:`start` ran) and its :class:`Intake`.

    ``config`` None (the configuration could not be read): every post is answered
    ``{"OK": false}`` with ``problem``, so a Pilot pointed at the relay still runs.
    """

    def __init__(self, config, listen: str = DEFAULT_LISTEN, problem=None, context=None, allowed_cns=()):
        self.problem = problem
        self.allowed_cns = frozenset(allowed_cns)
        httpd.check_connectable(listen)  # before anything is opened
        self.intake = Intake(config) if config is not None else None
        #: ``on_post(sock)``, called with each connection before its request is taken (``run
        #: --relay``: relayrun.py, to find the Pilot's credential while its socket is there).
        self.on_post = None
        self._thread: "threading.Thread | None" = None
        try:
            self.server = httpd.Server(
                listen,
                _make_handler(self),
                context,
                httpd.DEFAULT_REQUEST_TIMEOUT,
                MAX_CONNECTIONS,
                "relay",
                admit=self.refusal_of,
                each_line_once=True,
            )
        except BaseException:
            if self.intake is not None:
                self.intake.close()
            raise
        self.url = _url(listen, self.server.server_address, context is not None)

    def start(self) -> "Relay":
        """Serve from a background thread (``run --relay``); :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.server.serve_forever, name="pilotlog-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: float = 2.0) -> None:
        """Stop taking connections, let requests in progress finish (up to ``wait`` s), fsync."""
        import time

        self.server.shutdown()
        ends = time.monotonic() + wait
        while self.server.active and time.monotonic() < ends:
            time.sleep(0.02)
        self.server.close()
        if self._thread is not None:
            self._thread.join(5)
        if self.intake is not None:
            self.intake.close()

    def heard_from(self, sock) -> None:
        """Tell ``on_post`` of a connection whose request is about to be taken; never raises."""
        if self.on_post is not None:
            try:
                self.on_post(sock)
            except Exception as exc:
                warn("relay: %s: %s" % (type(exc).__name__, exc))

    def take(self, body: bytes):
        if self.intake is None:
            read_form(body)  # a malformed request is said as such
            raise Reject(503, "not recorded: %s" % self.problem)
        return self.intake.take(body)

    @staticmethod
    def refusal_of(sock) -> "str | None":
        """Why a connection is refused (None: it comes from this relay's own user)."""
        from . import peeruid

        if not peeruid.available():  # no socket table to ask: the weaker rule, loopback peers only
            import ipaddress

            host = sock.getpeername()[0].split("%", 1)[0]
            address = ipaddress.ip_address(host)
            if (getattr(address, "ipv4_mapped", None) or address).is_loopback:
                return None
            return "refused: this relay takes requests from this host only, not from %s" % host
        try:
            uid = peeruid.peer_uid(sock)
        except OSError as exc:
            return "refused: cannot tell which user connected (%s)" % (exc.strerror or exc)
        if uid is None:
            return "refused: the connection does not come from a process of this host"
        if uid != os.geteuid():
            return "refused: this relay takes requests only from its own user (uid %d), not from uid %d" % (
                os.geteuid(),
                uid,
            )
        return None


def _url(listen: str, address, tls: bool) -> str:
    """The URL the Pilot is given: the host as ``--listen`` names it when it is a name (a TLS
    client checks it against the relay's certificate), else the address listened on (loopback
    for every address)."""
    import ipaddress

    named, port = httpd.parse_listen(listen)[0], int(address[1])
    try:
        ipaddress.ip_address(named.split("%", 1)[0])
        host = httpd.reachable(str(address[0]))
    except ValueError:  # a name
        host = named
    return "%s://%s:%d/" % ("https" if tls else "http", "[%s]" % host if ":" in host else host, port)


def _make_handler(relay: Relay):
    class Handler(httpd.handler_base("relay", MAX_BODY, always_200=True)):  # type: ignore[misc]  # made at run time
        def do_POST(self):
            self._respond(self._post)

        def _post(self):
            body = self._body()  # read whole before any answer: a reset would crash the Pilot
            if relay.allowed_cns:
                cn = httpd.client_cn(self.connection, "relay")
                if cn not in relay.allowed_cns:
                    raise Reject(403, "client certificate CN %r is not allowed: nothing stored" % cn)
            kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if kind != FORM_TYPE:
                raise Reject(415, "Content-Type %r is not DIRAC's form (%s)" % (kind[:80], FORM_TYPE))
            relay.heard_from(self.connection)
            return relay.take(body)

        def log_request(self, code="-", size="-"):  # not a line per post: the Pilot's stderr is its log
            pass

    return Handler
