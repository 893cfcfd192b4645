"""echoes.py: which printed lines of the DIRAC Pilot are echoes of its posts (``run --relay --capture``).

In process, without a Pilot: the printing and posting rules of DIRACGrid/Pilot's ``Logger``,
``RemoteLogger``, ``FixedSizeBuffer`` and ``executeAndGetOutput`` (as tests/dirac/standin_pilot.py
follows them) are replayed by a small model, drawn by hypothesis, and the printed lines
``run --capture`` records are paired with the posts in any order the capture may lag by. The
end-to-end tests with DIRAC's own wrapper are in tests/test_dirac_relay.py.
"""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotlogger.echoes import Echoes

LINE_BYTES = 4096
CLOCK = itertools.count()


def stamp() -> str:
    """A fresh clock reading of the Pilot's, different at every call (printed and posted differ)."""
    n = next(CLOCK)
    return "2026-12-04T10:%02d:%02d.%06dZ" % (n // 60000000 % 60, n // 1000000 % 60, n % 1000000)


def header(level: str, name: str, printed: bool) -> str:
    return "%s %s [%s] " % (stamp(), "WARN" if printed and level == "WARNING" else level, name)


def captured(text: str) -> list:
    """The lines ``run --capture`` records from a printed stream: cut at LINE_BYTES, not empty."""
    lines = []
    for raw in text.encode().split(b"\n"):
        line = raw[:LINE_BYTES].decode("utf-8", "replace").rstrip("\r")
        if line:
            lines.append(line)
    return lines


def pair(echoes: Echoes, printed: list, posts: list, order=None) -> set:
    """Feed printed lines (named by their index) and posts in the merged ``order`` (True: the
    next printed line; default: all printed first); the names paired, after ``end``."""
    order = list(order) if order is not None else [True] * len(printed) + [False] * len(posts)
    order += [True] * len(printed) + [False] * len(posts)  # whatever the drawn order left
    names, p, q = set(), iter(enumerate(printed)), iter(posts)
    for take_printed in order:
        if take_printed:
            item = next(p, None)
            if item is not None:
                names.update(echoes.printed(str(item[0]), item[1]))
        else:
            text = next(q, None)
            if text is not None:
                names.update(echoes.posted(text))
    names.update(echoes.end())
    return {int(n) for n in names}


def test_a_logged_line_pairs_whatever_its_clock_level_spelling_and_order():
    printed = [header("WARNING", "InstallDIRAC", True) + "DIRAC installed with a warning", "Trying https://x"]
    posted = header("WARNING", "InstallDIRAC", False) + "DIRAC installed with a warning\n"
    assert pair(Echoes(100, LINE_BYTES), printed, [posted]) == {0}
    assert pair(Echoes(100, LINE_BYTES), printed, [posted], order=[False, True, True]) == {0}
    assert pair(Echoes(100, LINE_BYTES), printed[1:], [posted]) == set()  # never posted: kept


def test_a_message_of_several_lines_pairs_its_continuation_lines_at_the_end_exact_pairs_first():
    """Printed with a header on each line, posted as one header and raw lines; a raw printed line
    that is the same text as a continuation takes its own posted twin first."""
    message = ["two lines of one message:", "the second line", "", "after an empty one"]
    printed = [header("INFO", "InstallDIRAC", True) + line for line in message] + ["the second line"]
    posted = header("INFO", "InstallDIRAC", False) + "\n".join(message) + "\n" + "the second line\n"
    echoes = Echoes(100, LINE_BYTES)
    assert pair(echoes, printed, [posted]) == {0, 1, 2, 3, 4}
    # Without the raw line's own post, the raw printed line takes the posted one, whatever came
    # first: the continuation line it could also be stays (a duplicate at worst, never a loss).
    one = header("INFO", "InstallDIRAC", False) + "\n".join(message) + "\n"
    for order in ([True] * 5 + [False], [False] + [True] * 5, [True, True, False, True, True, True]):
        assert pair(Echoes(100, LINE_BYTES), printed, [one], order) == {0, 2, 3, 4}


def test_an_empty_line_of_a_message_pairs_only_under_its_own_header():
    """A printed header with no text pairs with a posted empty line only under the same level
    and logger: the wrapper's log and raw output hold empty lines of their own."""
    printed = [header("ERROR", "InstallDIRAC", True)]
    others = "wrapper line\n\n" + header("INFO", "CheckWorkerNode", False) + "x\n\n"
    assert pair(Echoes(100, LINE_BYTES), printed, [others]) == set()
    own = header("ERROR", "InstallDIRAC", False) + "Traceback\n\n"
    assert pair(Echoes(100, LINE_BYTES), printed, [others, own]) == {0}


def test_a_chunk_without_newline_is_cut_at_the_next_header_within_and_across_posts():
    """The Pilot prints a newline after each command; it posts the raw chunk as it came, glued to
    what comes next, in the same post or (RemoteLoggerBufsize 1) the next."""
    printed = ["pip install DIRAC: done", header("WARNING", "InstallDIRAC", True) + "installed with a warning"]
    glued = "pip install DIRAC: done" + header("WARNING", "InstallDIRAC", False) + "installed with a warning\n"
    assert pair(Echoes(100, LINE_BYTES), printed, [glued]) == {0, 1}
    apart = [
        "installing\npip install DIRAC: done",
        header("WARNING", "InstallDIRAC", False) + "installed with a warning\n",
    ]
    assert pair(Echoes(100, LINE_BYTES), ["installing"] + printed, apart) == {0, 1, 2}
    assert pair(Echoes(100, LINE_BYTES), ["partial"], ["partial"]) == {0}  # the last post, unfinished


def test_lines_are_counted():
    """Printed twice and posted once: one printed copy stays."""
    line = header("INFO", "LaunchAgent", True) + "polling"
    posted = header("INFO", "LaunchAgent", False) + "polling\n"
    assert len(pair(Echoes(100, LINE_BYTES), [line, line.replace("INFO", "INFO")], [posted])) == 1
    assert pair(Echoes(100, LINE_BYTES), ["same", "same"], ["same\nsame\n"]) == {0, 1}


def test_a_line_longer_than_capture_keeps_pairs_as_it_was_cut():
    """run --capture keeps the first 4096 bytes of a line: a posted line is cut as it was printed
    (with WARN, a multi-byte character split at the cut)."""
    text = "é" * 5000
    printed = captured(header("WARNING", "InstallDIRAC", True) + text + "\n" + "x" * 9000)
    posted = header("WARNING", "InstallDIRAC", False) + text + "\n" + "x" * 9000 + "\n"
    assert pair(Echoes(100, LINE_BYTES), printed, [posted]) == {0, 1}


def test_past_its_bounds_a_line_is_kept_never_dropped_wrongly():
    echoes = Echoes(2, LINE_BYTES)
    assert pair(echoes, ["a", "b", "c", "d"], ["c\nd\n"]) == set()  # c and d came when two waited
    echoes = Echoes(2, LINE_BYTES)
    assert pair(echoes, ["a", "b", "c"], ["a\nb\nc\n"], order=[False, True, True, True]) == {0, 1}
    assert echoes.forgotten == 1


# -- any Pilot session: the model --------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=8)
LEVELS = st.sampled_from(["INFO", "WARNING", "ERROR", "DEBUG"])
NAMES = st.sampled_from(["Pilot", "CheckWorkerNode", "InstallDIRAC", "LaunchAgent"])
#: A log call (level, logger, its lines: a multi-line message, maybe an empty line in it, maybe a
#: line longer than capture keeps), or a command's output (raw lines, maybe no final newline).
ACTION = st.one_of(
    st.tuples(
        st.just("log"),
        LEVELS,
        NAMES,
        st.lists(st.one_of(TEXT, st.just(""), st.just("ü" * 3000)), min_size=1, max_size=3),
    ),
    st.tuples(st.just("run"), NAMES, st.lists(TEXT, min_size=1, max_size=3), st.booleans()),
)


def session(actions, bufsize: int, killed: bool):
    """What the Pilot prints (captured lines, each tagged with whether it was posted) and its
    posts, per the Pilot's rules: ``Logger`` prints each line with a header, ``RemoteLogger``
    buffers one entry for the message; a command's output is printed and buffered raw, with a
    newline printed after it; the buffer is sent when ``bufsize`` lines wait and at the end
    (unless ``killed``: then its last lines are only printed)."""
    printed, posts, buffer, waiting, unique = [], [], [], [], itertools.count()
    state = {"lines": 0}

    def write(text, tags):
        buffer.append(text)
        waiting.extend(tags)
        state["lines"] += max(1, text.count("\n"))
        if state["lines"] >= bufsize:
            posts.append("".join(buffer))
            for tag in waiting:
                tag[1] = True
            del buffer[:], waiting[:]
            state["lines"] = 0

    for action in actions:
        if action[0] == "log":
            _, level, name, lines = action
            lines = ["%s %d" % (line, next(unique)) if line != "" else "" for line in lines]
            tags = []
            for line in lines:
                for cut in captured(header(level, name, True) + line):
                    tags.append([cut, False])
            printed.extend(tags)
            write(header(level, name, False) + "\n".join(lines) + "\n", tags)
        else:
            _, name, lines, newline = action
            command = ["%s %d" % (line, next(unique)) for line in lines]
            head = [[cut, False] for cut in captured(header("INFO", name, True) + "Executing command")]
            printed.extend(head)
            write(header("INFO", name, False) + "Executing command\n", head)
            chunk = "\n".join(command) + ("\n" if newline else "")
            tags = [[cut, False] for cut in captured(chunk + "\n")]
            printed.extend(tags)
            write(chunk, tags)
    if buffer and not killed:
        posts.append("".join(buffer))
        for tag in waiting:
            tag[1] = True
    return printed, posts


@settings(max_examples=300, deadline=None)
@given(
    actions=st.lists(ACTION, max_size=12),
    bufsize=st.sampled_from([1, 2, 3, 1000]),
    killed=st.booleans(),
    order=st.lists(st.booleans(), max_size=80),
)
def test_any_session_pairs_exactly_the_printed_lines_the_pilot_posted(actions, bufsize, killed, order):
    """Whatever the Pilot logged and ran, its buffer size, whether it was killed, and however the
    capture lagged behind the posts: the printed lines paired are exactly those it posted —
    none kept twice, none dropped that DIRAC would not hold (each line's text is made unique)."""
    printed, posts = session(actions, bufsize, killed)
    lines = [line for line, _ in printed]
    paired = pair(Echoes(10000, LINE_BYTES), lines, posts, order)
    # As texts: two lines the capture cut to the same first 4096 bytes are the same line to it.
    assert sorted(lines[i] for i in paired) == sorted(line for line, posted in printed if posted)
