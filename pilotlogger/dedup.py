"""The de-duplication window: which event ids were seen lately.

Delivery is at-least-once, so a consumer (``tail``, ``timeline``) sees an event again after
a replay was cut short; it recognises it by its id.  Duplicates arrive close together (a
replay re-sends at most its window), so a bounded window of recent ids is enough, and a
day of events never holds every id in memory.
"""

SEEN_LIMIT = 200000  # ids remembered for de-duplication (~25 MB at most)


class Seen:
    """The ids handled lately: at most ``limit``, and always at least the newest ``limit // 2``.

    Two generations of sets rather than an ordered map (a third of the memory per id, which
    matters for a day of events): a full generation becomes the old one, the old one is
    dropped.  An id seen again is refreshed into the current generation.
    """

    def __init__(self, limit: int = SEEN_LIMIT):
        self.current: set = set()
        self.previous: set = set()
        self.half = max(1, limit // 2)

    def add(self, event_id: str) -> bool:
        """True the first time an id is seen (within the window)."""
        if event_id in self.current:
            return False
        known = event_id in self.previous
        if len(self.current) >= self.half:
            self.previous, self.current = self.current, set()
        self.current.add(event_id)
        return not known
