"""Which lines the DIRAC Pilot printed are echoes of lines it posted (``run --relay --capture``).

The Pilot prints what it posts: its remote logger prints each line, then buffers it for the
POST, and DIRAC's wrapper prints its own log and pipes it to the Pilot, which posts it.  With
``run --relay --capture`` both roads reach pilotlogger, so a printed stdout line whose twin the
relay stored is dropped from the spool (the posted copy keeps the Pilot's bytes), and the
printed lines with no twin are kept: ``Trying …``, and the lines still buffered when the Pilot
was killed or a command raised.  This module decides which; it keeps no event and does no IO.

How a printed line and a posted one are the same line (tests/test_dirac_pilot.py's
``test_what_the_pilot_prints_and_what_it_posts`` has the facts):

* the Pilot's header ``<time> <LEVEL> [<name>] `` is printed and posted with two clock
  readings, so the time is left out; ``WARN`` is printed where ``WARNING`` is posted;
* a message of several lines is printed with a header on each line and posted as one header
  and raw continuation lines: a printed header line with no posted twin may pair, at the end,
  with a line posted without a header under the same level and logger (its continuation) —
  an empty one included, since a printed empty line is not captured;
* the posts make one stream per pilot, as DIRAC's append-only file holds them: a post that
  ends without a newline is continued by the next one, and a raw chunk without a final newline
  is glued to the next header (the Pilot prints a newline after every command), so a posted
  line is cut where a Pilot header starts inside it;
* a captured line is its first ``line_bytes`` bytes (``run --capture`` cuts longer ones), header
  included: lines are compared on the first ``line_bytes - HEADER_ROOM`` bytes of their text, which
  a printed line holds whole whatever its header.

Pairs are counted (a line printed twice and posted once keeps one printed copy), made as soon
as both sides are known, exact pairs first; the continuation pairs only at :meth:`Echoes.end`.
Each side remembers at most ``most`` entries waiting for a twin (``max_events``: no more printed
lines can wait in the spool): past that a line is not remembered, so its printed copy is kept —
a duplicate, never a loss.  What the pairing cannot tell apart: two lines of one level and logger
whose first ``line_bytes - HEADER_ROOM`` bytes are the same (the capture keeps little more of them).
"""

import hashlib
import re
import threading

#: The Pilot's ``Logger.messageTemplate``: ``2026-12-04T10:00:00.123456Z INFO [Command] message``.
PILOT_HEADER = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ([A-Z]{1,16}) \[([^\]\n]{1,64})\] "
HEADER = re.compile(PILOT_HEADER)
LEVELS = {"WARN": "WARNING"}  # printed WARN, posted WARNING (pilotTools.RemoteLogger.warn)
#: Bytes a header takes at most (27 of time, a level of 16, a name of 64 characters of up to 4
#: bytes, the spaces and brackets), with room for the character a cut line ends with.
HEADER_ROOM = 512
MOST_CARRIED = 1 << 16  # characters of an unfinished posted line kept for the next post


def _digest(*parts: str) -> int:
    text = "\0".join(parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _compared(text: str, keep: int) -> str:
    """The part of a line's text that is compared: its first ``keep`` bytes."""
    raw = text.encode("utf-8", "surrogatepass")
    return text if len(raw) <= keep else raw[:keep].decode("utf-8", "ignore")


def printed_keys(line: str, keep: int):
    """``(exact, continuation)`` of a printed line: ``continuation`` is ``(key, (level, logger))``
    for a line with a header — the raw line it is when posted as a continuation, under that
    header — else None."""
    header = HEADER.match(line)
    if header is None:
        return _digest("R", _compared(line, keep)), None
    rest = _compared(line[header.end() :], keep)
    level = LEVELS.get(header.group(1), header.group(1))
    return _digest("H", level, header.group(2), rest), (_digest("R", rest), (level, header.group(2)))


class Echoes:
    """Printed lines paired with posted ones; thread-safe (the relay's and the pumps' threads).

    :meth:`posted` and :meth:`printed` return the names (spool files) of printed lines just
    paired: the caller removes them from the spool, since their posted twin is stored there.
    """

    def __init__(self, most: int, line_bytes: int):
        self.most, self.keep = most, max(line_bytes - HEADER_ROOM, 1)
        self.lock = threading.Lock()
        #: key -> {(level, logger) of the header a raw line was posted under, or None: count} of
        #: posted lines without a printed twin yet
        self.posts: dict = {}
        self.posted_entries = 0
        self.waiting: dict = {}  # exact key -> [(name, continuation)] of printed lines without a twin
        self.waiting_count = 0
        self.carried = ""  # the end of the last post, when it had no final newline
        self.header: "tuple | None" = None  # (level, logger) of the last Pilot header posted
        self.paired = self.forgotten = 0

    # -- the two sides ---------------------------------------------------------------------

    def posted(self, text: str) -> list:
        """A sendMessage text of the run's pilot, as the relay stored it."""
        with self.lock:
            text, last = self.carried + text, text.endswith("\n")
            lines = text.split("\n")
            self.carried = "" if last else lines.pop()[:MOST_CARRIED]
            if last:
                lines.pop()  # the empty piece after the final newline
            names: list = []
            for line in lines:
                for key, under in self._keys_of_posted(line):
                    names += self._take_post(key, under)
            return names

    def printed(self, name: str, line: str) -> list:
        """A captured stdout line, recorded in the spool as ``name``."""
        exact, continuation = printed_keys(line, self.keep)
        with self.lock:
            if self._count_out(exact, None):
                return [name]
            if self.waiting_count >= self.most:
                self.forgotten += 1
                return []
            self.waiting.setdefault(exact, []).append((name, continuation))
            self.waiting_count += 1
            return []

    def end(self) -> list:
        """No more posts nor printed lines: the unfinished last post as a line, then the printed
        header lines paired with lines posted raw under the same header (a message's
        continuation lines); the names paired now."""
        names = self.posted("\n") if self.carried else []  # (takes the lock itself)
        with self.lock:
            for entries in self.waiting.values():
                for name, continuation in entries:
                    if continuation is not None and self._count_out(*continuation):
                        names.append(name)
            self.waiting, self.waiting_count = {}, 0
        return names

    # -- keys --------------------------------------------------------------------------------

    def _keys_of_posted(self, line: str) -> list:
        """``(key, header)`` of each piece of one posted line, cut where a Pilot header starts
        inside it (a glued chunk); ``header`` is None for a piece with a header of its own, else
        the last header posted (a raw piece may be a continuation of its message)."""
        line = line.rstrip("\r")
        starts = [m.start() for m in HEADER.finditer(line) if m.start() > 0]
        keys = []
        for a, b in zip([0] + starts, starts + [len(line)]):
            header = HEADER.match(line, a)
            if header is not None:
                self.header = (LEVELS.get(header.group(1), header.group(1)), header.group(2))
            keys.append((printed_keys(line[a:b], self.keep)[0], None if header else self.header))
        return keys

    # -- counting (under the lock) ------------------------------------------------------------

    def _take_post(self, key: int, under) -> list:
        entries = self.waiting.get(key)
        if entries:
            name, _ = entries.pop(0)
            if not entries:
                del self.waiting[key]
            self.waiting_count -= 1
            self.paired += 1
            return [name]
        counts = self.posts.setdefault(key, {})
        if under in counts:
            counts[under] += 1
        elif self.posted_entries < self.most:
            counts[under] = 1
            self.posted_entries += 1
        else:
            self.forgotten += 1
            if not counts:
                del self.posts[key]
        return []

    def _count_out(self, key: int, under) -> bool:
        """Pair with one posted line of ``key`` (posted under the header ``under``; None: any)."""
        counts = self.posts.get(key)
        if not counts:
            return False
        if under is None:
            under = next(iter(counts))
        elif under not in counts:
            return False
        counts[under] -= 1
        if not counts[under]:
            del counts[under]
            self.posted_entries -= 1
            if not counts:
                del self.posts[key]
        self.paired += 1
        return True
