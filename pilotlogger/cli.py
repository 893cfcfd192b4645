"""Command line: one sub-command, one function; the exit codes are defined here and only here.

Never harm the pilot: apart from a usage error (exit 2), the commands a pilot runs
(``emit``, ``replay``) exit 0 whatever happens to the disk or the network, and say what
went wrong in one stderr line.
"""

import os
import sys

from .config import SETTINGS, ConfigError, CredentialError
from .console import warn
from .events import STATUSES, EventError
from .spool import SpoolError, open_spool
from .version import __version__

#: Exit codes — documented in README.md ("Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # status/config hit an unexpected error, or serve cannot listen
EXIT_USAGE = 2  # bad arguments, bad config: the caller must fix something
EXIT_UNDELIVERED = 3  # replay --strict only: events are still in the spool

MIN_FRACTION = 0.001  # power: the smallest share of a DB12 run (12,500 draws, some ms) worth timing

PROG = "pilotlog"


class UsageError(Exception):
    """The command line is wrong: exit 2 with this one line."""


#: The options of `emit` beside its phase and the settings: (flags, dest, action, default,
#: argparse extras, help).  argparse is built from this table, and so is the lean parser
#: that spares the common one-liner argparse's import cost.
EMIT_OPTIONS: tuple = (
    (("-m", "--message"), "message", "store", "", {}, "human-readable text"),
    (("-s", "--status"), "status", "store", "info", {"choices": STATUSES}, "level (default: info)"),
    (("--data",), "data_json", "store", None, {"metavar": "JSON"}, "a JSON object of extra fields"),
    (
        ("-d",),
        "data_pairs",
        "append",
        None,
        {"metavar": "KEY=VALUE"},
        "one extra field; KEY=text is a string, KEY:=json a JSON value (repeatable)",
    ),
    (
        ("--send",),
        "send",
        "store_true",
        False,
        {},
        "after spooling, try to ship the spool at once (within --deadline); what fails stays spooled",
    ),
)


class _Args:
    """The namespace the lean parser fills, shaped like argparse's."""

    def __init__(self, **values):
        self.__dict__.update(values)


def parse_emit_quickly(argv):
    """Parse a plain `emit` command line without argparse, or return None to let argparse do it.

    Anything out of the ordinary — help, an unknown or malformed option, a value that
    looks like an option, a bad choice — goes to argparse, which gives the proper
    message; so this only ever accepts what argparse would accept the same way.
    """
    if not argv or argv[0] != "emit":
        return None
    options = {}
    for flags, dest, action, _default, extra, _ in EMIT_OPTIONS:
        for flag in flags:
            options[flag] = (dest, action, extra.get("choices"))
    for s in SETTINGS:
        if s.flag:
            options["--" + s.name.replace("_", "-")] = (s.name, "store", None)
    values = {dest: default for _, dest, _, default, _, _ in EMIT_OPTIONS}
    values.update((s.name, None) for s in SETTINGS if s.flag)
    values["command"], phase, i = "emit", None, 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and arg != "-":
            name, eq, inline = arg.partition("=")
            if name not in options or (eq and not name.startswith("--")):
                return None
            dest, action, choices = options[name]
            if action == "store_true":
                if eq:
                    return None
                values[dest] = True
            else:
                if not eq:
                    i += 1
                    if i >= len(argv) or argv[i].startswith("-"):
                        return None
                value = inline if eq else argv[i]
                if choices and value not in choices:
                    return None
                if action == "append":
                    values[dest] = (values[dest] or []) + [value]
                else:
                    values[dest] = value
        elif phase is None:
            phase = arg
        else:
            return None
        i += 1
    if phase is None:
        return None
    values["phase"] = phase
    return _Args(**values)


def message_is_data(argv):
    """``emit … -m -x`` → ``emit … --message=-x``: the word after ``-m``/``--message`` is the message,
    even when it starts with a dash (a message is data; argparse would take it for an option
    and a ``set -e`` bootstrap would stop on the usage error)."""
    if not argv or argv[0] != "emit":
        return argv
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--":
            return out + argv[i:]
        if argv[i] in ("-m", "--message") and i + 1 < len(argv):
            out.append("--message=" + argv[i + 1])
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _parser():
    import argparse

    from . import cli_help

    class Parser(argparse.ArgumentParser):
        def __init__(self, **kw):
            # No prefix matching: "--passcode X" must not silently become "--passcode-file X".
            super().__init__(allow_abbrev=False, **kw)

        def error(self, message):  # argparse prints usage + message; we want one clear line
            raise UsageError("%s (see '%s --help')" % (message, self.prog))

        def parse_args(self, args=None, namespace=None):
            """Arguments no option takes are named by the command whose help lists what it takes.
            Only option names are repeated, never values: a mistyped secret must not reach a log."""
            parsed, extras = self.parse_known_args(args, namespace)
            if extras:
                command = getattr(parsed, "command", None)
                where = " ".join(filter(None, (PROG, command)))
                raise UsageError((command + ": " if command else "") + unknown_arguments(extras, where))
            return parsed

    by_name = {s.name: s for s in SETTINGS}

    def settings_of(command):
        """The settings a command reads, as its flags, in one help section."""
        parent = Parser(add_help=False)
        group = parent.add_argument_group("settings it reads (flag > PILOTLOG_<NAME> env > config file > default)")
        for s in (by_name[name] for name in cli_help.SETTINGS_READ[command]):
            if s.flag:
                group.add_argument(
                    "--" + s.name.replace("_", "-"),
                    dest=s.name,
                    metavar=s.name.upper() if not s.choices else "{%s}" % ",".join(s.choices),
                    help="%s [env %s]" % (cli_help.READ_AS.get((command, s.name), s.help), s.env),
                )
        return parent

    top = Parser(
        prog=PROG,
        description="Structured lifecycle logging for grid pilots: spool locally, ship to a broker.",
        epilog=cli_help.epilog(None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version="%s %s" % (PROG, __version__))
    sub = top.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, help):
        return sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[settings_of(name)],
            epilog=cli_help.epilog(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    emit = command("emit", "record one event in the spool")
    emit.add_argument("phase", help="boot, install, power, os, match, nomatch, shutdown, log, or any name")
    for flags, dest, action, default, extra, help in EMIT_OPTIONS:
        emit.add_argument(*flags, dest=dest, action=action, default=default, help=help, **extra)

    replay = command("replay", "ship spooled events to the sink, oldest first")
    replay.add_argument("--strict", action="store_true", help="exit 3 when events are left in the spool")

    status = command("status", "show the spool: depth, size, oldest/newest, last delivery error")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    probe = command("probe", "print facts about this worker node (OS, CPU, memory, disk, container, batch job, MJF)")
    probe.add_argument("--emit", action="store_true", help="also record them as an os event")

    power = command("power", "measure one core's power, DB12-style (~2 s), and record a power event")
    power.add_argument("--fraction", type=float, default=0.1, help="share of a full DB12 run (default 0.1)")

    run = command("run", "run a command (the pilot) as a child: boot/shutdown events, its exit code returned exactly")
    run.add_argument("--capture", action="store_true", help="also turn the child's output lines into log events")
    run.add_argument(
        "--pattern",
        action="append",
        default=[],
        metavar="REGEX=PHASE",
        help="a stdout/stderr line matching REGEX (a Python regular expression, searched anywhere in the line) "
        "becomes a PHASE event, with or without --capture; repeatable, the first match wins; "
        "e.g. 'matched a job=match'",
    )
    _add_ship_every(run, "ship")
    run.add_argument(
        "--relay",
        action="store_true",
        help="host a relay for the DIRAC Pilot's remote logger while CMD runs: its URL in $PILOTLOG_RELAY_URL "
        "and in place of an argument {relay}",
    )
    run.add_argument("child", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run")

    relay = command("relay", "receive the DIRAC Pilot's remote logger here: spool each post, forward it to the sink")
    relay.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:0, a free loopback port); the URL is the first line printed",
    )
    _add_ship_every(relay, "forward")
    _add_tls_listener(relay, "optional: https then; it forwards with --cert/--key")

    srv = command("serve", "run an HTTPS receiver storing per-pilot logs (DIRAC file-cache layout)")
    srv.add_argument("--listen", default="127.0.0.1:8444", metavar="HOST:PORT", help="default: 127.0.0.1:8444")
    srv.add_argument("--dir", default="pilotlogs", help="storage directory (default: ./pilotlogs)")
    _add_tls_listener(srv, "needed unless --plain")
    srv.add_argument("--max-body", type=int, default=8 * 1024 * 1024, help="largest request body in bytes")
    srv.add_argument(
        "--default-vo",
        default="unknown",
        metavar="VO",
        help="VO directory for logs whose client and pilot name none (default: unknown)",
    )
    srv.add_argument(
        "--vo-for-cn",
        action="append",
        default=[],
        metavar="CN=VO",
        help="client certificate CN whose logs go to VO, whatever the pilot says (as DIRAC's group VO)",
    )
    srv.add_argument(
        "--max-connections",
        type=int,
        default=100,
        metavar="N",
        help="connections served at once; as many more get 503, the rest are closed (default 100)",
    )
    srv.add_argument(
        "--request-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="time allowed for a whole request: TLS handshake, headers and body (default 15)",
    )
    srv.add_argument("--plain", action="store_true", help="plain HTTP (explicitly insecure, for tests behind TLS)")

    doctor = command("doctor", "check the delivery path step by step (config, spool, DNS, TCP, TLS, STOMP/HTTPS)")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument(
        "--send-test",
        action="store_true",
        help="also send one test event (phase doctor, status debug, data.test=true) and await its receipt",
    )

    tail = command("tail", "print events from the broker (the sink's destination) as they arrive")
    tail.add_argument("--json", action="store_true", help="JSON lines instead of readable lines")
    _add_stop_options(tail, idle=None)

    timeline = command("timeline", "per-pilot lifecycles and a summary, from JSON-lines files or the broker")
    timeline.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="JSON-lines files of events ('-': stdin); none: read the sink's destination",
    )
    timeline.add_argument("--json", action="store_true", help="machine-readable output")
    timeline.add_argument("--html", metavar="FILE", help="also write a self-contained page with a timeline chart")
    _add_stop_options(timeline, idle=5.0)

    conf = command("config", "show the effective configuration and where each value comes from")
    conf.add_argument("--json", action="store_true", help="machine-readable output")
    return top


_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NAME_CHARS = _LETTERS | frozenset("0123456789-_")


def _looks_like_option(text: str) -> bool:
    """``--name`` or ``-x``: an ASCII letter first, then letters, digits, ``-`` or ``_``."""
    body = text[2:] if text.startswith("--") else text[1:] if text.startswith("-") else ""
    return 0 < len(body) <= 40 and body[0] in _LETTERS and all(c in _NAME_CHARS for c in body)


def unknown_arguments(unknown, prog: str) -> str:
    """The usage error for arguments argparse did not take, showing option names, never values.

    What follows an unknown option may be its value (a password), and so may a stray word:
    only what looks like an option name, ``--name`` (cut at ``=``) or a short ``-x``, is
    shown; the rest is counted.
    """
    names = [a.split("=", 1)[0] if a.startswith("--") else a[:2] for a in unknown]
    names = [n for n in names if _looks_like_option(n)]
    parts = ["unknown option(s) %s" % " ".join(dict.fromkeys(names))] if names else []
    if len(unknown) > len(names):
        parts.append("%d unexpected argument(s), not shown in case one is a secret" % (len(unknown) - len(names)))
    return "%s (see '%s --help')" % ("; ".join(parts), prog)


def _add_tls_listener(parser, when: str) -> None:
    """The TLS listener's options, the same for serve and relay (tls.server_context, httpd.client_cn)."""
    parser.add_argument("--server-cert", help="server certificate (PEM) of the TLS listener (%s)" % when)
    parser.add_argument("--server-key", help="server key (PEM)")
    parser.add_argument("--client-ca", help="CA file to verify client certificates (and grid proxies) with")
    parser.add_argument("--require-client-cert", action="store_true", help="refuse clients without a valid certificate")
    parser.add_argument(
        "--allowed-cn",
        action="append",
        default=[],
        metavar="CN",
        help="accept only these client CNs (a proxy's: its owner's)",
    )


def _server_context(args, required: bool):
    """The listener's SSLContext from --server-cert/--server-key/--client-ca/--require-client-cert
    (None when not ``required`` and none is given); a mistake is a usage error."""
    from .tls import TLSConfigError, server_context

    if args.allowed_cn and not args.client_ca:
        raise UsageError("--allowed-cn needs --client-ca (and TLS) to learn the client's CN")
    given = args.server_cert or args.server_key or args.client_ca or args.require_client_cert
    if not (required or given):
        return None
    if not (args.server_cert and args.server_key):
        raise UsageError("TLS needs both --server-cert and --server-key")
    try:
        return server_context(args.server_cert, args.server_key, args.client_ca, args.require_client_cert)
    except TLSConfigError as exc:
        raise UsageError(str(exc)) from None


def _add_ship_every(parser, verb: str) -> None:
    parser.add_argument(
        "--ship-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="with a network sink, %s in the background this often (default 10)" % verb,
    )


def _add_stop_options(parser, idle) -> None:
    """--count/--seconds/--idle; ``idle`` None: no idle stop unless asked (runs until interrupted)."""
    parser.add_argument("--count", type=int, metavar="N", help="stop after N events (default: no limit)")
    parser.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds (default: no limit)")
    parser.add_argument(
        "--idle",
        type=float,
        default=idle,
        metavar="S",
        help="stop when no message came for S seconds (default: %s)" % ("%g" % idle if idle else "never"),
    )


def parse_data(data_json, pairs) -> dict:
    """``--data`` and ``-d`` options → one dict (pairs win); raise UsageError with the reason.

    :mod:`json` is imported only when JSON is given: plain ``-d key=text`` stays lean.
    NaN and Infinity are refused (they are not JSON), and so is nesting deeper than MAX_DEPTH.
    """
    data = {}
    if data_json is not None:
        data = _json_value(data_json, "--data")
        if not isinstance(data, dict):
            raise UsageError("--data must be a JSON object, e.g. '{\"hs06\": 11}'")
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if key.endswith(":"):
            key = key[:-1]
            value = _json_value(value, "-d %s:=…: the value after ':=' (not shown)" % key[:60])
        if not sep or not key:
            raise UsageError("-d %r must be KEY=VALUE or KEY:=JSON" % pair)
        data[key] = value
    return data


def _json_value(text: str, what: str):
    """One JSON value given on the command line as ``what``, or UsageError saying why not."""
    import json

    from .events import MAX_DEPTH, MAX_INT_DIGITS, nesting

    def integer(digits):  # Python 3.6 would take any length; a consumer on 3.11+ could not read it back
        if len(digits.lstrip("-")) > MAX_INT_DIGITS:
            raise ValueError("an integer of %d digits is longer than %d" % (len(digits), MAX_INT_DIGITS))
        return int(digits)

    def refuse(constant):
        raise ValueError("%s is not a JSON number" % constant)

    def finite(number):
        value = float(number)
        if value in (float("inf"), float("-inf")):
            refuse(number + " (Infinity)")
        return value

    try:
        value = json.loads(text, parse_constant=refuse, parse_float=finite, parse_int=integer)
    except ValueError as exc:
        raise UsageError("%s is not valid JSON (%s)" % (what, exc)) from None
    except RecursionError:  # nested far deeper than the limit
        value = None
    else:
        if nesting(value) <= MAX_DEPTH:
            return value
    raise UsageError("%s nests deeper than %d levels, the limit for data" % (what, MAX_DEPTH))


# ---------------------------------------------------------------------------------------------
# Commands.  Each takes (args, config) and returns an exit code.


def cmd_emit(args, config) -> int:
    from .events import DRAFT_ROOM, check_size, clean_text, make_event, to_json
    from .recorder import Recorder, jsonable

    # Bytes that are not UTF-8 (and everything non-ASCII under Python 3.6 in a C locale)
    # arrive as surrogate escapes: recorded with U+FFFD, as the wrapper records child output.
    data = jsonable(parse_data(args.data_json, args.data_pairs))
    args.message = clean_text(args.message)
    recorder = Recorder(config)
    # Validate everything (and the size) before the spool is touched: nothing half-written.
    draft = make_event(
        args.phase,
        args.message,
        args.status,
        config.source,
        data,
        pilot=recorder.pilot or "0" * 36,
        context=recorder.context,
        seq=1,
        epoch=0.0,
    )
    try:
        check_size(len((to_json(draft) + "\n").encode("utf-8")) + DRAFT_ROOM, config.max_event_bytes)
    except EventError as exc:
        raise UsageError(str(exc)) from None
    recorder.record(args.phase, args.message, args.status, None, data, cut_long=False)
    if args.send and config.sink == "stdout":  # the whole spool in the pilot's output is never wanted
        warn("--send: the sink is stdout, so nothing was sent; 'pilotlog replay' prints the spool")
    elif args.send:
        try:
            deliver(config, recorder.spool, report_success=False)
        except ConfigError as exc:  # the event is safe in the spool: a warning, not a usage error
            warn("not sent: %s; the event stays in spool %s" % (exc, recorder.spool.path))
    return EXIT_OK


def _show_progress(delivered: int) -> None:
    sys.stderr.write("\r%s: %d events delivered" % (PROG, delivered))
    sys.stderr.flush()


def deliver(config, spool, report_success: bool = True):
    """Ship the spool to the configured sink and say how it went in one stderr line."""
    from .ship import deliver as ship_spool

    progress = _show_progress if sys.stderr is not None and sys.stderr.isatty() else None
    result, sink = ship_spool(config, spool, sys.stdout, progress)
    if progress:
        sys.stderr.write("\n")
    if getattr(sink, "fell_back", None) and not result.error:
        warn("%s; used the fallback %s" % (sink.fell_back, sink.name))
    if result.refused:
        warn(
            "%d event(s) refused by %s moved to %s (see the .reason files)"
            % (result.refused, sink.name, spool.quarantine_dir)
        )
    if result.broken:
        warn(
            "%d file(s) in the spool were not valid events (damaged, foreign or links) and were moved to %s"
            " (see the .reason files)" % (result.broken, spool.quarantine_dir)
        )
    if result.error:
        warn(
            "%s; delivered %d, %d event(s) kept in spool %s"
            % (result.error, result.delivered, result.remaining, spool.path)
        )
    elif report_success:
        warn(
            "replayed %d event(s) to %s in %.2f s; %d left in spool %s"
            % (result.delivered, sink.name, result.seconds, result.remaining, spool.path)
        )
    return result


def cmd_replay(args, config) -> int:
    spool = open_spool(config)
    if not spool.exists():
        problem = spool.problem()
        warn("nothing replayed: %s" % problem if problem else "nothing to replay: no spool at %s" % spool.path)
        return EXIT_OK
    try:
        result = deliver(config, spool)
    except CredentialError as exc:  # a shipping problem, not a usage error: the events wait in the spool
        depth = spool.stats()["depth"]
        warn("not sent: %s; %d event(s) kept in spool %s" % (exc, depth, spool.path))
        return EXIT_UNDELIVERED if args.strict and depth else EXIT_OK
    if args.strict and result.remaining:
        return EXIT_UNDELIVERED
    return EXIT_OK


def cmd_status(args, config) -> int:
    from .events import rfc3339, to_json
    from .redact import mask_text

    spool = open_spool(config)
    pilot, origin = config.resolved_pilot()
    if pilot is None:
        try:
            with open(os.path.join(spool.path, "pilot-uuid")) as f:
                pilot, origin = f.read().strip(), "spool"
        except OSError:
            pilot, origin = None, "not yet generated"
    report = {
        "spool": spool.path,
        "exists": spool.exists(),
        "problem": spool.problem(),
        "pilot": pilot,
        "pilot_origin": origin,
    }
    report.update(spool.stats())
    state = spool.read_state()
    for key in ("delivered_total", "dropped_total", "quarantine_dropped_total"):
        report[key] = state.get(key, 0)
    for key in ("last_delivery", "last_error", "last_error_time", "last_refusal", "last_refusal_time"):
        report[key] = state.get(key)
    report["last_error"] = mask_text(report["last_error"])  # a state.json of an older version may hold a token
    report["sink"] = config.masked()["sink"]
    for key in (
        "last_delivery",
        "last_error_time",
        "last_refusal_time",
    ):  # RFC 3339 UTC, as the events and stats() have it
        if report[key]:
            report[key] = rfc3339(report[key])
    if args.json:
        print(to_json(report))
        return EXIT_OK
    for key, value in report.items():
        print("%-16s %s" % (key + ":", "-" if value is None else value))
    return EXIT_OK


def cmd_probe(args, config) -> int:
    from .events import to_json
    from .probes import probe_all

    facts = probe_all(config.environ)
    print(to_json(facts))
    if args.emit:
        from .recorder import Recorder

        o = facts["os"]
        message = "%s %s, %s cores" % (
            o.get("pretty_name", o.get("id", "?")),
            o.get("arch", ""),
            facts["cpu"].get("logical_cores"),
        )
        Recorder(config).record("os", message, "info", None, facts)
    return EXIT_OK


def cmd_power(args, config) -> int:
    from .power import db12
    from .probes import wlcg_features
    from .recorder import Recorder

    if not MIN_FRACTION <= args.fraction <= 10:  # below, the run is too short to time: a meaningless figure
        raise UsageError("--fraction must be between %g and 10" % MIN_FRACTION)
    result = db12(args.fraction)
    hs06 = wlcg_features(config.environ).get("hs06")
    if hs06 is not None:
        result["hs06_machine"] = hs06
    message = "power of %.1f DB12" % result["db12"]
    print("%s (%.2f s CPU)" % (message, result["cpu_s"]))
    Recorder(config).record("power", message, "info", None, result)
    return EXIT_OK


def cmd_run(args, config) -> int:
    from .wrapper import Wrapper, parse_patterns

    child = args.child[1:] if args.child[:1] == ["--"] else args.child
    if child[:1] and child[0].startswith("-"):  # an option argparse could not place, not a program
        raise UsageError(unknown_arguments(child[: child.index("--")] if "--" in child else child, "%s run" % PROG))
    if not child:
        raise UsageError("run needs a command: pilotlog run [options] -- CMD ARGS")
    try:
        patterns = parse_patterns(args.pattern)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_ship_every(args)
    return Wrapper(config, child, args.capture, patterns, args.ship_every, args.relay).run()


def _check_ship_every(args) -> None:
    if not 0 <= args.ship_every <= 86400:  # NaN and inf too; 0: no background shipping, a drain at the end
        raise UsageError("--ship-every must be from 0 to 86400 seconds, not %s" % args.ship_every)


def cmd_relay(args, config) -> int:
    """Serve in the foreground until SIGTERM, SIGINT or SIGHUP, then forward what is left."""
    import signal
    import threading

    from .httpd import parse_listen
    from .recorder import Recorder
    from .relay import Relay
    from .ship import Shipper

    try:
        parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_ship_every(args)
    context = _server_context(args, required=False)
    if args.allowed_cn:
        from .httpd import warn_if_owners_unknown

        warn_if_owners_unknown("relay", "--allowed-cn")
    stopped = threading.Event()
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        signal.signal(getattr(signal, name), lambda signum, frame: stopped.set())
    try:
        relay = Relay(config, args.listen, context=context, allowed_cns=args.allowed_cn).start()
    except OSError as exc:
        warn("cannot relay on %s (%s)" % (args.listen, exc.strerror or exc))
        return EXIT_FAILED
    print(relay.url, flush=True)  # the first line: what the Pilot is given (-z -g URL)
    recorder = Recorder(config)
    warn("relaying %s into spool %s, forwarding to %s" % (relay.url, recorder.spool.path, config.masked()["sink"]))
    shipper = Shipper(lambda: recorder, args.ship_every)
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        relay.stop()
        shipper.stop(drain=True)
    return EXIT_OK


def cmd_serve(args, config) -> int:
    """Every argument is checked before anything listens: a mistake is a usage error (exit 2)."""
    from .httpd import parse_listen
    from .serve import StoreError, serve

    try:
        parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for name, value, most in (
        ("--max-body", args.max_body, 1 << 40),
        ("--max-connections", args.max_connections, 100000),
        ("--request-timeout", args.request_timeout, 3600),
    ):
        if not 0 < value <= most:  # NaN too
            raise UsageError("%s must be above 0 and at most %d, not %s" % (name, most, value))
    tls_options = [
        name
        for name, given in (
            ("--server-cert", args.server_cert),
            ("--server-key", args.server_key),
            ("--client-ca", args.client_ca),
            ("--require-client-cert", args.require_client_cert),
            ("--allowed-cn", args.allowed_cn),
            ("--vo-for-cn", args.vo_for_cn),
        )
        if given
    ]
    if args.plain and tls_options:
        raise UsageError(
            "--plain serves plain HTTP, so %s would be ignored: drop them or drop --plain" % ", ".join(tls_options)
        )
    if (args.allowed_cn or args.vo_for_cn) and not args.client_ca:
        raise UsageError(
            "--allowed-cn and --vo-for-cn need --client-ca (and TLS) to learn the client's CN"
            " (without it every POST would be refused, or no VO found)"
        )
    context = None
    if not args.plain:
        if not (args.server_cert and args.server_key):
            raise UsageError("serve needs --server-cert and --server-key (or --plain for plain HTTP)")
        context = _server_context(args, required=True)
    from .diracform import VO_RE

    vo_for_cn = dict(item.rpartition("=")[::2] for item in args.vo_for_cn)
    for vo in [args.default_vo] + list(vo_for_cn.values()):
        if not VO_RE.match(vo) or "" in vo_for_cn:
            raise UsageError("--default-vo/--vo-for-cn: %r is not CN=VO with a VO name DIRAC accepts" % vo)

    def ready(address):
        warn(
            "serving %s on %s:%d, storing into %s" % ("https" if context else "http", address[0], address[1], args.dir)
        )

    try:
        serve(
            args.listen,
            args.dir,
            context,
            args.max_body,
            args.allowed_cn,
            ready,
            args.request_timeout,
            args.max_connections,
            args.default_vo,
            vo_for_cn,
        )
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        warn("cannot serve on %s (%s)" % (args.listen, exc.strerror or exc))
        return EXIT_FAILED
    return EXIT_OK


def cmd_doctor(args, config, config_error=None) -> int:
    """Exit 0 only when events can be delivered; 1 otherwise (the report says where and why)."""
    from .doctor import Doctor, report
    from .events import to_json

    doctor = Doctor(config, config_error, args.send_test)
    works = doctor.run()
    if args.json:
        print(to_json({"works": works, "steps": [s.as_dict() for s in doctor.steps]}))
    else:
        report(doctor.steps, works, sys.stdout)
    return EXIT_OK if works else EXIT_FAILED


def _check_stop_options(args) -> None:
    """--count at least 1; --seconds and --idle over 0 and finite (NaN, inf and 0 mean nothing useful)."""
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1, not %d" % args.count)
    for name in ("seconds", "idle"):
        value = getattr(args, name)
        if value is not None and not 0 < value <= 31536000:  # NaN fails both comparisons
            raise UsageError(
                "--%s must be a number of seconds over 0 and at most a year (31536000), not %g s" % (name, value)
            )


def _follow(config, handle, args, duplicate=None) -> int:
    """Read the broker until a stop option says so; one line and exit 1 if it fails us."""
    _check_stop_options(args)
    from .consumer import follow
    from .sinks import describe
    from .stompclient import StompError
    from .tls import TLSConfigError

    try:
        follow(config, handle, args.count, args.seconds, args.idle, duplicate)
    except (StompError, TLSConfigError, ValueError) as exc:
        warn("cannot read %s: %s" % (describe(config.sink), exc))
        return EXIT_FAILED
    return EXIT_OK


def cmd_tail(args, config) -> int:
    """Events as they arrive: de-duplicated, each ACKed once printed (see consumer.py).

    What a worker node wrote never reaches the terminal raw: control characters are escaped.
    """
    from .events import escape_controls

    def handle(event, text):
        if args.json:
            line = text
        elif event is None:
            line = "? (not a pilotlog event) " + " ".join(text.split())[:300]
        else:
            line = "%s %s %s %s: %s" % (
                event["time"],
                event["pilot"],
                event["status"].upper(),
                event["phase"],
                event["message"] or "-",
            )
        sys.stdout.write(escape_controls(line) + "\n")
        sys.stdout.flush()  # written before it is acknowledged

    return _follow(config, handle, args)


def cmd_timeline(args, config) -> int:
    from .consumer import parse
    from .timeline import Timeline

    timeline = Timeline()
    options = [path for path in args.files if path.startswith("-") and path != "-"]
    if options:  # what argparse left as a file name ("-x=a b"): an option it did not know (write ./-x for a file)
        raise UsageError(unknown_arguments(options, "%s timeline" % PROG))
    if args.files:
        for path in args.files:
            try:
                stream = sys.stdin if path == "-" else open(path, encoding="utf-8", errors="replace")
            except OSError as exc:
                raise UsageError("cannot read %s (%s)" % (path, exc.strerror or exc)) from None
            with stream:
                for line in stream:
                    if line.strip():
                        timeline.add(parse(line))
    else:
        code = _follow(config, lambda event, text: timeline.add(event), args, duplicate=timeline.add)
        if code != EXIT_OK:
            return code
    if args.html:
        from .timeline_html import render

        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(render(timeline))
        except OSError as exc:
            raise UsageError("cannot write %s (%s)" % (args.html, exc.strerror or exc)) from None
    sys.stdout.writelines(timeline.json_chunks() if args.json else timeline.lines())
    return EXIT_OK


def cmd_config(args, config) -> int:
    from .events import to_json

    shown = config.masked()
    if args.json:
        print(to_json({k: {"value": v, "from": config.origin[k]} for k, v in shown.items()}))
        return EXIT_OK
    for key, value in shown.items():
        print("%-20s %-40s (%s)" % (key, "-" if value is None else value, config.origin[key]))
    pilot, origin = config.resolved_pilot()
    print("%-20s %-40s (%s)" % ("pilot (resolved)", pilot or "-", origin or "generated once per spool"))
    return EXIT_OK


COMMANDS = {
    "emit": cmd_emit,
    "replay": cmd_replay,
    "run": cmd_run,
    "relay": cmd_relay,
    "probe": cmd_probe,
    "power": cmd_power,
    "status": cmd_status,
    "serve": cmd_serve,
    "doctor": cmd_doctor,
    "tail": cmd_tail,
    "timeline": cmd_timeline,
    "config": cmd_config,
}
#: Commands a pilot runs: an unexpected failure must still exit 0.
PILOT_SAFE = ("emit", "replay", "probe", "power")


def main(argv=None) -> int:
    """Run one command; return its exit code.  Never raises (except SystemExit from --help)."""
    from . import config as config_module

    if argv is None:  # the process's own entry: its standard streams are ours to guard (not a caller's)
        _guard_std_streams()
    argv = message_is_data(sys.argv[1:] if argv is None else argv)
    command = args = config = None
    try:
        args = parse_emit_quickly(argv) or _parser().parse_args(argv)
        command = args.command
        if command is None:
            raise UsageError("a command is required: %s (see '%s --help')" % (", ".join(COMMANDS), PROG))
        flags = {s.name: getattr(args, s.name, None) for s in SETTINGS if s.flag}  # a command reads some
        try:
            config = config_module.load(flags)
        except ConfigError as exc:
            if command == "doctor":
                return cmd_doctor(args, None, exc)  # a broken configuration is the first finding
            if command != "run":
                raise
            warn("%s; running the command without recording" % exc)  # the pilot must run regardless
            config = None
        if config is not None and command in ("emit", "run", "replay", "config") and config.pilot_warning():
            warn(config.pilot_warning())
        return COMMANDS[command](args, config)
    except (UsageError, ConfigError, EventError) as exc:
        warn(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pilotlog timeline | head`: the reader has what it wanted (the rest is not lost:
        return EXIT_OK  # replay counts only what was flushed, and keeps the rest spooled)
    except Exception as exc:  # the last line of defence: never a traceback into a pilot log
        text = "internal error in %s: %s: %s (please report this)" % (command or PROG, type(exc).__name__, exc)
        warn(text)
        if command == "replay" and config is not None:
            return _replay_failed(config, getattr(args, "strict", False), text)
        return EXIT_OK if command in PILOT_SAFE else EXIT_FAILED
    finally:
        _settle_streams()


def _replay_failed(config, strict: bool, text: str) -> int:
    """After an internal error in replay: record it for ``status`` (as a failed delivery is) and let
    ``--strict`` still say whether events are left (3 also when the spool cannot even be read)."""
    import time

    from .redact import mask_text

    left = None  # unknown: the spool itself may be what failed
    try:
        spool = open_spool(config)
        if not spool.exists():
            return EXIT_OK
        left = spool.stats()["depth"]
        spool.update_state(last_error=mask_text(text), last_error_time=time.time())
    except (SpoolError, OSError, ValueError):  # the spool itself may be what failed; --strict still answers
        pass
    return EXIT_UNDELIVERED if strict and left != 0 else EXIT_OK


def _guard_std_streams() -> None:
    """Make the standard streams safe to use, whatever the pilot's shell left us.

    * A closed descriptor 0, 1 or 2 gets /dev/null: otherwise the next file we open (a
      spool event, a lock) would take its number and a child or a stray print would write
      into it.  The Python stream stays None, so the stdout sink refuses to "deliver" into
      /dev/null (see StdoutSink) and ``print`` writes nothing.
    * stdout and stderr write UTF-8, whatever the locale: Python 3.6 in a C/POSIX locale
      (an EL7 batch job under ``env -i``) would write ASCII and fail on the first "é".  A
      path that is not UTF-8 is written as its own bytes on stdout (surrogateescape).
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                os.open(os.devnull, os.O_RDWR)  # the lowest free number: this fd
            except OSError:
                pass
    for name, errors in (("stdout", "surrogateescape"), ("stderr", "backslashreplace")):
        stream = getattr(sys, name)
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if stream is None or (encoding, stream.errors) == ("utf8", errors) or not hasattr(stream, "detach"):
            continue
        import io  # already imported by the interpreter: free

        try:
            stream.flush()
            line_buffering = stream.line_buffering
            setattr(
                sys,
                name,
                io.TextIOWrapper(stream.detach(), encoding="utf-8", errors=errors, line_buffering=line_buffering),
            )
        except (OSError, ValueError, AttributeError):
            pass


def _settle_streams() -> None:
    """Flush stdout and stderr now; one whose reader is gone (or a full device) goes to /dev/null.

    Otherwise the interpreter's own flush at exit fails again on the buffered data and
    turns our exit code (the child's, for ``run``) into 120 with a "BrokenPipeError" line.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            except (OSError, ValueError):
                pass
