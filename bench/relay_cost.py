"""What the DIRAC Pilot's remote logging costs the Pilot through `pilotlog relay` (bench/run.py, issue 23).

In one run, each receiver in its own process on loopback:

* two no-op HTTP servers that answer at once (bench/relay_probe.py says what each is): ``raw``,
  the floor of any HTTP server here, and ``http.server``, the standard library's; and the raw one
  storing each post with the relay's own ``Intake.take`` first (what durability costs, without
  the relay's HTTP server);
* ``pilotlog relay`` from the bundle, with ``log_fsync=grouped`` (the default) and ``each``,
  and over TLS (``--server-cert``, the Pilot's proxy as its client certificate, ``grouped``);
* DIRAC 9.1.22's own ``TornadoPilotLoggingHandler`` over TLS (tests/dirac/pilotlogging_server.py,
  the suite's DIRAC venv), the Pilot's proxy-style credentials as its client certificate.

The Pilot's side is timed by bench/relay_probe.py, posting as the Pilot does (its stand-in's
code): one ``sendMessage`` POST (p50/p99), the POST alone and the Pilot's whole ``sendMessage``;
then a Pilot logging ``lines`` lines with ``RemoteLoggerBufsize`` 1000 and 1, through the relay,
directly to DIRAC, and to the raw no-op (what no receiver can beat).  The relays forward nothing
(a ``stdout`` sink, never shipped in the background): what each holds in its spool at the end
is counted against what was posted to it, so a fast figure hides no loss.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROBE = os.path.join(HERE, "relay_probe.py")
WARM_UP = 20  # untimed posts to each receiver before the timed ones (relay_probe.posts)


class Receiver:
    """A receiver process whose first stdout line is its URL."""

    def __init__(self, label: str, command: list, env=None, cwd=None):
        self.label, self.posts, self.spool = label, 0, None
        self.proc = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True
        )
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http"), "%s did not start" % label

    def stop(self) -> str:
        """SIGTERM (a relay forwards what it holds, here to stdout, then exits); the rest of stdout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=300)
        return out


def relay(bundle: str, work: str, label: str, fsync: str, *tls) -> Receiver:
    """`pilotlog relay` with its own spool, forwarding nothing (a stdout sink is never shipped)."""
    spool = os.path.join(work, "spool-" + label.replace(" ", "-"))
    env = dict(os.environ, PILOTLOG_SPOOL=spool, PILOTLOG_SINK="stdout", PILOTLOG_LOG_FSYNC=fsync)
    command = [sys.executable, "-I", "-S", bundle, "relay", "--ship-every", "0"] + list(tls)
    receiver = Receiver(label, command, env=env)
    receiver.spool = spool
    return receiver


def probe(*args, env=None, cwd=None) -> dict:
    out = subprocess.run(
        [sys.executable, PROBE] + [str(a) for a in args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        universal_newlines=True,
        check=True,
    ).stdout
    return json.loads(out)


def measure(bundle: str, pki, posts: int = 1000, lines: int = 10000) -> dict:
    """Every figure of the section, and the receivers' names: see :func:`tables`."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_dirac import DiracService, dirac_python

    work = tempfile.mkdtemp(prefix="pilotlog-relay-cost-")
    pilot_env = dict(os.environ, X509_CERT_DIR=pki.path("certificates"), X509_USER_PROXY=pki.path("proxy.pem"))
    tls = ["--listen", "localhost:0", "--server-cert", pki.path("server.pem"), "--server-key", pki.path("server.key")]
    tls += ["--client-ca", pki.path("ca.pem"), "--require-client-cert", "--allowed-cn", "pilot-client"]
    receivers = []
    dirac = None
    try:
        probe_cmd = [sys.executable, PROBE, "noop"]
        receivers.append(Receiver("no-op, raw socket", probe_cmd + ["raw"]))
        receivers.append(Receiver("no-op, http.server", probe_cmd + ["http"]))
        spool = os.path.join(work, "spool-raw-intake")
        receivers.append(
            Receiver(
                "raw socket + the relay's Intake.take (grouped)",
                probe_cmd + ["raw-intake"],
                env=dict(os.environ, PILOTLOG_SPOOL=spool, PILOTLOG_SINK="stdout", PILOTLOG_LOG_FSYNC="grouped"),
            )
        )
        receivers.append(relay(bundle, work, "relay grouped", "grouped"))
        receivers.append(relay(bundle, work, "relay each", "each"))
        receivers.append(relay(bundle, work, "relay TLS grouped", "grouped", *tls))
        dirac = DiracService(dirac_python(), pki, _path(work, "dirac"))
        by_url = {r.url: r for r in receivers}
        urls = [r.url for r in receivers] + [dirac.url]
        figures: dict = {"names": [r.label for r in receivers] + ["DIRAC's handler, TLS"]}
        for way, n in (("post", posts), ("sendmessage", max(20, posts // 5))):
            got = probe("posts", n, way, *urls, env=pilot_env)
            figures[way] = [got[url] for url in urls]
            for url in by_url:
                by_url[url].posts += WARM_UP + n
        pilots = {}
        for bufsize in (1000, 1):
            for url, name in ((receivers[3].url, "relay"), (dirac.url, "dirac"), (receivers[0].url, "noop")):
                cwd = tempfile.mkdtemp(dir=work)  # the Pilot's pilot.out
                pilots[(bufsize, name)] = probe("pilot", url, bufsize, lines, env=pilot_env, cwd=cwd)["seconds"]
                if url in by_url:
                    by_url[url].posts += lines // bufsize + 1  # the buffer's posts, and the flush at the end
        figures["pilots"] = pilots
        figures["lines"] = lines
        figures["lost"] = {}
        for r in receivers[3:]:  # every post in its spool: none lost
            r.stop()
            figures["lost"][r.label] = (r.posts, posts_in(r.spool))
        return figures
    finally:
        for r in receivers:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
        if dirac is not None:
            dirac.stop()
        shutil.rmtree(work, ignore_errors=True)


def posts_in(spool: str) -> int:
    """The posts a relay's spool holds: one record each, or several (``(part i of n)``) for a post
    larger than one event."""
    import re

    events = os.path.join(spool, "events")
    count = 0
    for name in os.listdir(events):
        with open(os.path.join(events, name), encoding="utf-8") as f:
            part = re.search(r"\(part (\d+) of \d+\)\Z", json.load(f)["message"])
        count += part is None or part.group(1) == "1"
    return count


def _path(work: str, name: str):
    from pathlib import Path

    return Path(work) / name


def tables(figures: dict) -> list:
    """(title, header, rows) of the section's tables."""
    names = figures["names"]
    raw, http, grouped, dirac = 0, 1, 3, len(names) - 1
    out = []
    for way, what in (
        ("post", "the POST alone: urlopen of DIRAC's form, a new connection each"),
        ("sendmessage", "the Pilot's whole sendMessage: a new TLS context, then the POST"),
    ):
        rows = []
        got = figures[way]
        for i, name in enumerate(names):
            p50 = got[i]["p50"]
            rows.append(
                [
                    name,
                    "%.3f" % p50,
                    "%.3f" % got[i]["p99"],
                    "%.2f×" % (p50 / got[raw]["p50"]),
                    "%.2f×" % (p50 / got[http]["p50"]),
                    "%.2f×" % (p50 / got[dirac]["p50"]),
                ]
            )
        if way == "post":
            goal = "; relay grouped ≤ 2× raw no-op: %s; ≤ 0.25× DIRAC: %s" % (
                "met" if got[grouped]["p50"] <= 2 * got[raw]["p50"] else "**not met**",
                "met" if got[grouped]["p50"] <= 0.25 * got[dirac]["p50"] else "**not met**",
            )
        else:
            goal = "; the Pilot's own context is most of every row"
        title = "One `sendMessage` as the Pilot posts it, %s (ms, %d posts each, in turns%s)" % (
            what,
            got[0]["n"],
            goal,
        )
        out.append((title, ["receiver", "p50", "p99", "÷ raw no-op", "÷ http.server no-op", "÷ DIRAC"], rows))
    pilots, rows = figures["pilots"], []
    for bufsize in (1000, 1):
        relay_s, dirac_s, noop_s = (pilots[(bufsize, k)] for k in ("relay", "dirac", "noop"))
        rows.append(
            [
                "%d" % bufsize,
                "%.2f" % relay_s,
                "%.2f" % dirac_s,
                "%.2f" % noop_s,
                "%.2f×" % (relay_s / dirac_s),
                "%.2f×" % (noop_s / dirac_s),
                "met" if relay_s <= 0.5 * dirac_s else "**not met**",
            ]
        )
    out.append(
        (
            "A Pilot logging %d lines (the stand-in's RemoteLogger; s)" % figures["lines"],
            [
                "RemoteLoggerBufsize",
                "through the relay",
                "directly to DIRAC",
                "to the raw no-op",
                "relay ÷ DIRAC",
                "no-op ÷ DIRAC (no receiver does better)",
                "≤ 0.5×",
            ],
            rows,
        )
    )
    rows = [[label, "%d" % posted, "%d" % forwarded] for label, (posted, forwarded) in figures["lost"].items()]
    out.append(("What each relay was posted and holds", ["relay", "posts made to it", "posts in its spool"], rows))
    return out
