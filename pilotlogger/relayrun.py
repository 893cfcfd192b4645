"""What ``pilotlog run --relay`` adds around the DIRAC Pilot: one log in DIRAC, each line once.

Run in front of DIRAC's pilot wrapper (``pilotlog run --relay [--capture] -- bash wrapper``),
pilotlogger's own events and the Pilot's posts to the relay carry one pilot id (the wrapper's
``DIRAC_PILOT_STAMP``), so they end in one DIRAC file.  Three rules make that file whole:

1. **One finaliseLogs, last.**  DIRAC's plugin renames the file to ``.log`` at each
   ``finaliseLogs``, and a second one renames a new file over it: the Pilot's whole log was lost
   when its ``LaunchAgent`` finalised and pilotlogger's shutdown finalised again.  So the
   Pilot's ``finaliseLogs`` of the run's own pilot is kept out of background shipping, removed
   from the spool at the end, and its payload goes with pilotlogger's shutdown event
   (``data.pilot_finalise``), whose finaliseLogs DIRAC gets after every other line.  Removed
   before the shutdown is recorded: a kill in between leaves the log open, never finalised
   twice; put back, last, when the shutdown cannot be recorded.
2. **Each printed line once** (``--capture``).  The Pilot prints what it posts, so captured
   stdout lines are recorded as usual but not shipped while the run lasts; each one whose twin
   the relay stored for the run's pilot is removed (echoes.py decides which), and the others —
   ``Trying …``, the lines still buffered when the Pilot was killed or a command raised — go at
   the end, before the shutdown event.  stderr (the Pilot never posts it) ships as usual.
3. **A credential.**  With none configured, the relay takes the one the Pilot posts with
   (pilotcred.py) and the HTTPS sink forwards with it; until then nothing is shipped.

Background shipping (``Shipper``, every ``--ship-every`` seconds) leaves to the final drain:
captured stdout lines, every shutdown-phase event (pilotlogger's own and every relayed
finaliseLogs) and, while a credential is awaited, everything.  The drain leaves nothing.
The same spool goes to any sink, so a broker gets the same: the relayed posts, the printed
lines they do not hold, and one shutdown carrying the Pilot's ``finaliseLogs``.

If the wrapper itself is killed, ``pilotlog replay`` later ships what is left, oldest first:
at-least-once — a printed line not yet removed arrives beside its posted twin, and a Pilot's
``finaliseLogs`` still spooled finalises the log before the lines recorded after it (which
DIRAC then keeps in a new, open file) — never a loss.
"""

import threading

from .console import warn
from .events import LOG_PHASE, PILOT_FINALISE, EventError
from .spool import EventName, SpoolError

#: Attempts at finding the Pilot's credential (each looks through the child's processes).
MOST_BORROWS = 20


class RelayedRun:
    """The rules above for one run: told of the relay's stored posts, of the captured stdout
    lines, and of the end.  Nothing here raises into the wrapper or the relay."""

    def __init__(self, recorder, relay, source: str, capture_bytes: int = 0):
        """``source``: that of the wrapper's events; ``capture_bytes``: with ``--capture``, the
        bytes of a line it keeps (0 without)."""
        from .echoes import Echoes

        self.recorder, self.source = recorder, source
        config = recorder.config
        self.capture = capture_bytes > 0
        self.echoes = Echoes(config.max_events, capture_bytes) if self.capture else None
        self.child: "int | None" = None  # the wrapper's child's pid, once started
        self.lock = threading.Lock()
        self.finalises: list = []  # spool files of the Pilot's finaliseLogs of the run's pilot
        self.finalise_payload: "dict | None" = None
        self.removed_finalise: "dict | None" = None  # the last of them, as it was, until our shutdown is recorded
        self.posts = self.borrow_tries = 0
        self.loading: "threading.Thread | None" = None  # reading the Pilot's credential (heard_from)
        self.ended = False
        self._warned: set = set()
        urls = (config.sink or "", config.fallback_sink or "")
        self.awaits_credential = (
            not config.cert and config.http_protocol == "dirac" and any(u.startswith("https://") for u in urls)
        )
        if relay.intake is not None:
            relay.intake.observer = self.stored
        if self.awaits_credential:
            relay.on_post = self.heard_from

    # -- told by the wrapper -------------------------------------------------------------------

    def child_started(self, pid: int) -> None:
        self.child = pid

    def printed(self, event: dict, line: str) -> None:
        """A captured stdout line was recorded as ``event``."""
        if self.echoes is not None:
            self._remove(self.echoes.printed(EventName.for_event(event), line))

    def defer(self, event: dict) -> bool:
        """Whether background shipping leaves ``event`` to the final drain (see the module)."""
        if self.awaits_credential and self.recorder.config.borrowed_credential is None and not self.ended:
            return True
        if event["phase"] == "shutdown":
            return True
        return (
            self.capture
            and event["phase"] == LOG_PHASE
            and event["source"] == self.source
            and event["data"].get("stream") == "stdout"
        )

    def settle(self) -> dict:
        """At the end (the relay closed, the child's output read): the last pairs removed, the
        Pilot's finaliseLogs removed; what the shutdown event adds to its data."""
        with self.lock:
            self.ended = True
        data: dict = {"relayed_posts": self.posts}
        if self.echoes is not None:
            self._remove(self.echoes.end())
            data["printed_lines_posted"] = self.echoes.paired
        if self.finalises:
            try:
                self.removed_finalise = self.recorder.spool.load(self.finalises[-1])
            except SpoolError as exc:
                self._warn(str(exc))
            self._remove(self.finalises)  # before our shutdown is recorded: never two finalisations
            data[PILOT_FINALISE] = self.finalise_payload
        borrowed = self.recorder.config.borrowed_credential
        if borrowed is not None:
            data["forwarded_with"] = borrowed.origin
        return data

    def shutdown_not_recorded(self) -> None:
        """Our shutdown could not be recorded (a full disk, a spool full of events that are not
        ``log``): the Pilot's finaliseLogs goes back into the spool, last, so the log is finalised."""
        event, self.removed_finalise = self.removed_finalise, None
        if event is None:
            return
        from .events import make_event

        def build(seq, epoch):
            fields = (event["phase"], event["message"], event["status"], event["source"], event["data"])
            return make_event(*fields, pilot=event["pilot"], context=event["context"], seq=seq, epoch=epoch)

        try:
            if not self.recorder.spool.put(build, sync=True).stored:
                self._warn("the Pilot's finaliseLogs could not be kept either (spool full): DIRAC's log stays open")
        except (SpoolError, EventError) as exc:
            self._warn("the Pilot's finaliseLogs could not be kept either (%s): DIRAC's log stays open" % exc)

    # -- told by the relay ---------------------------------------------------------------------

    def stored(self, method: str, pilot: str, content, names: list) -> None:
        """The relay stored a request (its thread, before the Pilot is answered)."""
        if pilot != self.recorder.pilot:
            return  # another pilot's log: DIRAC keeps it apart
        with self.lock:
            self.posts += 1
            if method == "finaliseLogs":
                self.finalises += names
                self.finalise_payload = {"retCode": _ret_code(content.get("retCode"))}
        if method == "sendMessage" and self.echoes is not None:
            self._remove(self.echoes.posted(content))

    def heard_from(self, sock) -> None:
        """A post is about to be taken: while no credential is ours, the poster's, if it is the
        Pilot.  Who posted is found now (quick, ``/proc`` only); the files are read by a thread of
        their own, so a slow CA directory never holds the Pilot's answer."""
        from .pilotcred import BorrowError, poster

        config = self.recorder.config
        with self.lock:
            if config.borrowed_credential is not None or self.loading is not None or self.child is None:
                return
            if self.borrow_tries >= MOST_BORROWS:
                return
            self.borrow_tries += 1
            try:
                found = poster(sock, self.child)
            except BorrowError as exc:
                self._warn("no credential of its own to forward to DIRAC, and not the Pilot's: %s" % exc)
                return
            self.loading = threading.Thread(target=self._load, args=(found,), name="pilotlog-borrow", daemon=True)
            self.loading.start()

    def _load(self, found) -> None:
        from .pilotcred import BorrowError, borrow

        config = self.recorder.config
        try:
            config.borrowed_credential = borrow(found, config.ca_file, config.ca_dir)
        except BorrowError as exc:
            self._warn("no credential of its own to forward to DIRAC, and not the Pilot's: %s" % exc)
        except Exception as exc:  # never a traceback from a thread of ours
            self._warn("taking the Pilot's credential: %s: %s" % (type(exc).__name__, exc))
        finally:
            with self.lock:
                self.loading = None

    def await_credential(self, seconds: float) -> bool:
        """Before the final drain: let a credential being read finish (at most ``seconds``);
        False when it is still being read (then nothing is forwarded: without it DIRAC would refuse)."""
        loading = self.loading
        if loading is None:
            return True
        loading.join(seconds)
        if not loading.is_alive():
            return True
        self._warn(
            "the Pilot's credential was still being read after %g s (a slow X509_CERT_DIR?): nothing forwarded,"
            " everything kept in the spool for pilotlog replay" % seconds
        )
        return False

    # -- spool ---------------------------------------------------------------------------------

    def _remove(self, names: list) -> None:
        for name in names:
            try:
                self.recorder.spool.ack(name)
            except SpoolError as exc:  # kept: at worst a line twice in DIRAC, never one lost
                self._warn(str(exc))

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warn(message)


def _ret_code(value):
    """The Pilot's retCode as it came when it is a short text or a number (DIRAC only logs it),
    else the exit code it says: what our shutdown carries stays small whatever was posted."""
    from .relay import exit_code

    if isinstance(value, (str, int)) and not isinstance(value, bool) and len(str(value)) <= 64:
        return value
    return str(exit_code(value))
