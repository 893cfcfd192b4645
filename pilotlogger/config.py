"""Configuration: one table of settings, resolved once per command from four layers.

Precedence, highest first: command-line flags > ``PILOTLOG_*`` environment > config file
(``--config`` / ``PILOTLOG_CONFIG``: our JSON, or a DIRAC ``pilot.json``) > defaults.

This is the only module that reads the environment.  Everything a command needs is
resolved here and passed down as a :class:`Config`, which also remembers where each
value came from (``pilotlog config`` shows it, with secrets masked).
"""

import os
import stat

from .events import (
    CONTEXT_KEYS,
    FORMATS,
    MAX_PILOT_LEN,
    STATUSES,
    EventError,
    check_name,
    check_pilot,
    clean_text,
    dirac_accepts,
)
from .redact import MASK, mask_url
from .spool import DEFAULT_MAX_BYTES, DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_EVENTS

DEFAULT_SPOOL = ".pilotlog-spool"
MAX_SECONDS = 86400  # the largest timeout or deadline: a day


class ConfigError(ValueError):
    """A setting has a bad value or the config file is unusable; the message names which."""


class CredentialError(ConfigError):
    """A credential cannot be read: a shipping problem, said when shipping (events are still recorded)."""


#: Largest config file read (a DIRAC pilot.json is a few tens of KiB); a secret file is smaller still.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_SECRET_BYTES = 64 * 1024


class Setting:
    """One configuration key: its name in files, its environment variable, type and default."""

    __slots__ = ("name", "kind", "default", "help", "choices", "secret", "flag")

    def __init__(self, name, kind, default, help, choices=None, secret=False, flag=True):
        self.name, self.kind, self.default, self.help = name, kind, default, help
        self.choices, self.secret, self.flag = choices, secret, flag

    @property
    def env(self) -> str:
        return "PILOTLOG_" + self.name.upper()

    def parse(self, value, where: str):
        """Coerce ``value`` (a string from env/flags, or a JSON value from a file) to this type."""
        given = value
        try:
            if self.kind is int:
                if isinstance(value, bool):
                    raise ValueError
                value = int(value)
                if value <= 0:
                    raise ValueError
            elif self.kind is float:
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
                if not 0 < value <= MAX_SECONDS:  # NaN and inf too: every network step keeps a deadline
                    raise ValueError
            elif not isinstance(value, str):
                raise ValueError
        except (TypeError, ValueError):
            expected = {int: "a positive integer", float: "a positive number of at most %d" % MAX_SECONDS}.get(
                self.kind, "a string"
            )
            shown = MASK if self.secret else given  # a mistyped passcode is still a passcode
            raise ConfigError("%s: %r is not %s" % (where, shown, expected)) from None
        if self.choices and value not in self.choices:
            raise ConfigError("%s: %r is not one of %s" % (where, value, ", ".join(self.choices)))
        return value


SETTINGS = (
    Setting("config", str, None, "JSON config file, or a DIRAC pilot.json"),
    Setting("spool", str, DEFAULT_SPOOL, "spool directory (relative paths are under the working directory)"),
    Setting("pilot_uuid", str, None, "pilot id; default: DIRAC_PILOT_STAMP, grid job id, else one generated per spool"),
    Setting("sink", str, "stdout", "where replay sends events: stdout (JSON lines) or a broker/HTTPS URL"),
    Setting("format", str, "native", "event rendering on the sink", choices=FORMATS),
    Setting("source", str, "pilot", "default source of emitted events"),
    Setting("level", str, "debug", "events below this status are not recorded", choices=STATUSES),
    Setting("site", str, None, "site name attached to events (e.g. LCG.CERN.cern)"),
    Setting("ce", str, None, "computing element attached to events"),
    Setting("queue", str, None, "CE queue attached to events"),
    Setting("max_events", int, DEFAULT_MAX_EVENTS, "spool bound: number of events"),
    Setting("max_bytes", int, DEFAULT_MAX_BYTES, "spool bound: total bytes of events"),
    Setting("max_event_bytes", int, DEFAULT_MAX_EVENT_BYTES, "largest accepted event, in bytes"),
    Setting(
        "log_fsync",
        str,
        "grouped",
        "log events of the logging Handler and run --capture: written before the"
        " call returns, fsynced in groups (within 0.1 s) or each before returning",
        choices=("grouped", "each"),
    ),
    Setting(
        "capture_budget",
        int,
        4 * 1024 * 1024,
        "run --capture: bytes of the child's output recorded per run, each line counting 400 more;"
        " past it only the last 500 lines are recorded (at the end), the rest counted in shutdown",
    ),
    Setting("setup", str, None, "DIRAC setup to read in pilot.json (default: its DefaultSetup)"),
    Setting("vo", str, None, "VO to read in pilot.json"),
    # Delivery to a broker (STOMP) -- see README "Sending to a broker".
    Setting("user", str, None, "STOMP login"),
    Setting(
        "passcode", str, None, "STOMP passcode: environment or config file only, never a flag", secret=True, flag=False
    ),
    Setting("passcode_file", str, None, "file holding the STOMP passcode (first line)"),
    Setting("vhost", str, "/", "STOMP CONNECT host header (RabbitMQ virtual host)"),
    Setting("ca_file", str, None, "PEM file of trusted CAs"),
    Setting(
        "ca_dir",
        str,
        None,
        "hashed CA directory (default: X509_CERT_DIR, else /etc/grid-security/certificates if it exists, else the system's CAs)",
    ),
    Setting("cert", str, None, "client certificate (default: X509_USER_CERT, else the proxy X509_USER_PROXY)"),
    Setting("key", str, None, "client key (default: X509_USER_KEY; none for a proxy, whose key is inside)"),
    Setting(
        "timeout",
        float,
        5.0,
        "seconds allowed for each network step: connect, TLS, CONNECTED, each receipt (a whole HTTPS POST: twice this)",
    ),
    Setting(
        "deadline",
        float,
        20.0,
        "seconds a delivery to a broker may take in all: connecting (all addresses, retries), sending,"
        " receipts, reconnecting",
    ),
    Setting("window", int, 1000, "SEND frames in flight awaiting their receipts"),
    Setting("receipt_every", int, 1, "opt-in: a RECEIPT every K frames, cumulative (default 1: one per event)"),
    Setting(
        "destination_headers",
        str,
        None,
        "STOMP headers sent with every SEND, e.g. RabbitMQ's queue properties:"
        " x-queue-type=quorum,durable=true (to reach a quorum queue as /queue/NAME)",
    ),
    Setting(
        "destination_check",
        str,
        "strict",
        "strict: refuse destinations that can drop a confirmed message"
        " (/topic/, /exchange/…) and check that a RabbitMQ /amq/queue/ exists; off: trust any RECEIPT",
        choices=("strict", "off"),
    ),
    # Delivery over HTTPS, fallback, batching.
    Setting(
        "fallback_sink",
        str,
        None,
        "used for the rest of a run when the sink fails (e.g. https://… behind stomp+ssl://…)",
    ),
    Setting(
        "http_protocol",
        str,
        "dirac",
        "HTTPS body: DIRAC's pilot-logging form, or JSON lines",
        choices=("dirac", "json"),
    ),
    Setting("batch_events", int, 1000, "most events per batch (one HTTPS request, one stdout write)"),
    Setting("batch_bytes", int, 1024 * 1024, "most bytes of events per batch"),
)
BY_NAME = {s.name: s for s in SETTINGS}

#: Batch systems recognised from the job environment: (variable, batch_system).
BATCH_JOB_VARS = (
    ("SLURM_JOB_ID", "slurm"),
    ("PBS_JOBID", "pbs"),
    ("LSB_JOBID", "lsf"),
    ("JOB_ID", "sge"),  # only with SGE_ROOT, see batch_context()
    ("_CONDOR_JOB_AD", "htcondor"),
)


class Config:
    """Resolved settings (attribute access) plus ``origin``: where each value came from."""

    def __init__(self, values: dict, origin: dict, environ, credential_error: "str | None" = None):
        self.__dict__.update(values)
        self.origin = origin
        self._environ = environ
        #: Why a credential (passcode_file) could not be read; raised by open_sink for a STOMP sink.
        self.credential_error = credential_error
        #: The DIRAC Pilot's own credential, taken by ``run --relay`` when none is configured
        #: (pilotcred.Borrowed): the HTTPS sink forwards to DIRAC with it.  In memory only.
        self.borrowed_credential = None

    @property
    def environ(self):
        """The environment this configuration was resolved from (probes read job variables)."""
        return self._environ

    def masked(self) -> dict:
        """Settings for display: secrets replaced by ``****``, URLs masked (see redact.py)."""
        shown = {}
        for s in SETTINGS:
            value = getattr(self, s.name)
            if value is not None and s.secret:
                value = MASK
            elif isinstance(value, str) and ("://" in value or s.name.endswith("sink")):
                value = mask_url(value)
            shown[s.name] = value
        return shown

    def speaks_dirac_https(self) -> bool:
        """Whether events may go to DIRAC's pilot-logging service (an HTTPS sink, dirac protocol)."""
        urls = (self.sink or "", self.fallback_sink or "")
        return self.http_protocol == "dirac" and any(u.startswith(("https://", "http://")) for u in urls)

    def resolved_pilot(self):
        """(pilot id, where from) from settings and DIRAC's variables, or (None, None).

        Order: explicit id, then ``DIRAC_PILOT_STAMP`` (the pilot wrapper's, what DIRAC's
        current pilot uses), then the legacy ``PilotLoggerTools.getUniqueIDFromOS`` order:
        a VM's id (``vm://CE/CE:VMTYPE:VM_UUID``), ``CREAM_JOBID``, ``GRID_GLOBAL_JOBID``.
        None means "let the spool generate and persist one" (a UUID, as the current pilot
        does).  When events go to DIRAC's HTTPS service, a candidate it would refuse (see
        :func:`~pilotlogger.events.dirac_accepts`) is skipped; an explicit one is kept and
        :meth:`pilot_warning` says so.
        """
        if self.pilot_uuid:
            return self.pilot_uuid, self.origin["pilot_uuid"]
        env = self._environ
        candidates = [(env.get("DIRAC_PILOT_STAMP"), "env DIRAC_PILOT_STAMP")]
        if env.get("VM_UUID") and env.get("CE_NAME") and env.get("VMTYPE"):
            ce = env["CE_NAME"]
            candidates.append(("vm://%s/%s:%s:%s" % (ce, ce, env["VMTYPE"], env["VM_UUID"]), "env VM_UUID"))
        candidates += [(env.get(var), "env " + var) for var in ("CREAM_JOBID", "GRID_GLOBAL_JOBID")]
        dirac = self.speaks_dirac_https()
        for pilot, where in candidates:
            if pilot and (not dirac or dirac_accepts(pilot)):
                return pilot, where
        return None, None

    def pilot_warning(self):
        """One line when the configured pilot id is one DIRAC's HTTPS service refuses, else None."""
        if self.pilot_uuid and self.speaks_dirac_https() and not dirac_accepts(self.pilot_uuid):
            return (
                "pilot id %r (%s) is refused by DIRAC's pilot logging (it takes a UUID or 32 characters "
                "[0-9a-z]); its events will be quarantined: unset it or give a DIRAC pilot stamp"
                % (self.pilot_uuid[:80], self.origin["pilot_uuid"])
            )
        return None

    def context(self) -> dict:
        """Context attached to every event: host, site/CE/queue when known, batch job id."""
        ctx = {"host": os.uname().nodename, "site": self.site, "ce": self.ce, "queue": self.queue}
        ctx.update(batch_context(self._environ))
        return {k: clean_text(ctx[k]) for k in CONTEXT_KEYS if ctx.get(k)}  # env bytes may not be UTF-8


def batch_context(environ) -> dict:
    for var, system in BATCH_JOB_VARS:
        value = environ.get(var)
        if not value or (system == "sge" and not environ.get("SGE_ROOT")):
            continue
        if system == "htcondor":
            return {"batch_system": system}  # the job id lives inside the job ad file
        return {"batch_system": system, "batch_job": value}
    return {}


def load(flags: "dict | None" = None, environ=None, cwd: "str | None" = None) -> Config:
    """Resolve every setting.  ``flags`` holds only the options given on the command line."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v not in (None, "")}  # empty: unset, as for PILOTLOG_*
    values, origin = {}, {}

    def take(name, value, where):
        values[name] = BY_NAME[name].parse(value, where)
        origin[name] = where

    for s in SETTINGS:
        values[s.name], origin[s.name] = s.default, "default"
    if "config" in flags:
        take("config", flags["config"], "--config")
    elif environ.get("PILOTLOG_CONFIG"):
        take("config", environ["PILOTLOG_CONFIG"], "env PILOTLOG_CONFIG")
    if values["config"]:
        # The file needs setup/vo to be read, and those may come from flags or env.
        hint = {k: flags.get(k) or environ.get(BY_NAME[k].env) for k in ("setup", "vo", "ce")}
        for name, (value, where) in read_file(values["config"], hint).items():
            take(name, value, where)
    for s in SETTINGS:
        if s.name != "config" and environ.get(s.env) not in (None, ""):
            take(s.name, environ[s.env], "env " + s.env)
    for name, value in flags.items():
        if name != "config":
            take(name, value, "--" + name.replace("_", "-"))

    values["spool"] = os.path.expanduser(values["spool"])
    if not os.path.isabs(values["spool"]):
        try:
            values["spool"] = os.path.join(cwd or os.getcwd(), values["spool"])
        except OSError:  # the working directory was deleted: the spool says so when it is used
            pass
    _grid_defaults(values, origin, environ)
    credential_error = None
    if values["passcode_file"]:
        try:
            values["passcode"], origin["passcode"] = _read_secret(values["passcode_file"]), "passcode_file"
        except ConfigError as exc:  # events are still recorded; shipping says it (see sinks.open_sink)
            values["passcode"], origin["passcode"], credential_error = None, "passcode_file (unreadable)", str(exc)
    for name, check in (("source", lambda v: check_name("source", v)), ("pilot_uuid", check_pilot)):
        try:
            if values[name]:
                check(values[name])
        except EventError as exc:
            raise ConfigError("%s: %s" % (origin[name], exc)) from None
    for name in ("site", "ce", "queue"):  # context of every event: too long, and every event is refused
        if values[name] and len(values[name]) > MAX_PILOT_LEN:
            raise ConfigError("%s: %s is longer than %d characters" % (origin[name], name, MAX_PILOT_LEN))
    config = Config(values, origin, environ, credential_error)
    pilot, where = config.resolved_pilot()
    if pilot and where.startswith("env "):  # DIRAC_PILOT_STAMP, a grid job id...: name the variable
        try:
            check_pilot(pilot)
        except EventError as exc:
            raise ConfigError("%s: %s" % (where, exc)) from None
    return config


def _grid_defaults(values: dict, origin: dict, environ) -> None:
    """Fill CA dir and client credentials from the grid's X509_* variables when unset."""
    if not values["ca_dir"] and not values["ca_file"] and environ.get("X509_CERT_DIR"):
        values["ca_dir"], origin["ca_dir"] = environ["X509_CERT_DIR"], "env X509_CERT_DIR"
    if values["cert"]:
        return
    if environ.get("X509_USER_CERT"):
        values["cert"], origin["cert"] = environ["X509_USER_CERT"], "env X509_USER_CERT"
        if not values["key"] and environ.get("X509_USER_KEY"):
            values["key"], origin["key"] = environ["X509_USER_KEY"], "env X509_USER_KEY"
    elif environ.get("X509_USER_PROXY"):
        values["cert"], origin["cert"] = environ["X509_USER_PROXY"], "env X509_USER_PROXY"


def read_regular_file(path: str, what: str, limit: int) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes, or ConfigError naming ``what``.

    Never blocks and never reads without bound: a FIFO, ``/dev/zero`` or a device as a
    config or secret file is refused at once (the pilot must start whatever is configured).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ConfigError("%s %s cannot be read (%s)" % (what, path, exc.strerror or exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("%s %s is not a regular file" % (what, path))
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError("%s %s cannot be read (%s)" % (what, path, exc.strerror or exc)) from None
    finally:
        os.close(fd)
    if size > limit:
        raise ConfigError("%s %s is larger than %d bytes" % (what, path, limit))
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("%s %s is not UTF-8 text (%s)" % (what, path, exc.reason)) from None


def _read_secret(path: str) -> str:
    """The first line of a secret file.  Errors name the file, never its content."""
    secret = read_regular_file(path, "passcode_file", MAX_SECRET_BYTES).split("\n", 1)[0].rstrip("\r")
    if not secret:
        raise ConfigError("passcode_file %s is empty" % path)
    return secret


# ---------------------------------------------------------------------------------------------
# Config files


def read_file(path: str, hint: dict) -> dict:
    """Settings from a config file, as ``{name: (value, where)}``.

    Our own format is a flat JSON object of setting names; unknown keys are an error
    (a typo must not silently fall back to a default).  A file with DIRAC's top-level
    keys (``Setups``, ``DefaultSetup``, ``Defaults``) is read as a DIRAC pilot.json.
    """
    import json

    text = read_regular_file(path, "config file", MAX_CONFIG_BYTES)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError("config file %s is not valid JSON (%s)" % (path, exc)) from None
    if not isinstance(data, dict):
        raise ConfigError("config file %s must hold a JSON object" % path)
    if any(k in data for k in ("Setups", "DefaultSetup", "Defaults")):
        return {k: (v, "%s (DIRAC pilot.json %s)" % (path, where)) for k, (v, where) in from_dirac(data, hint).items()}
    unknown = sorted(set(data) - set(BY_NAME) - {"config"}) + (["config"] if "config" in data else [])
    if unknown:
        raise ConfigError(
            "config file %s: unknown key %r (known keys: %s)"
            % (path, unknown[0], ", ".join(s.name for s in SETTINGS if s.name != "config"))
        )
    return {k: (v, "%s key %s" % (path, k)) for k, v in data.items()}


def _path(data: dict, keys) -> dict:
    node: object = data
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def from_dirac(data: dict, hint: dict) -> dict:
    """Translate a DIRAC pilot.json into our settings: ``{name: (value, where-in-file)}``.

    * Legacy MQ logging: ``Setups/<setup>/Logging`` with ``Host``, ``Port``, ``Queue``
      (or ``QueuePath``), ``HostKey``, ``HostCertificate``, ``CACertificate`` → a
      ``stomp+ssl://`` sink in DIRAC's six-field ``dirac`` format (what its
      PilotsLogging consumer reads).
    * Current remote logging (docs/dirac.md lists each key and its DIRAC version):
      ``RemoteLogging``, ``RemoteLoggerURL``, ``RemoteLoggerCEsWhiteList``, ``PilotLogLevel``
      looked up as the current DIRAC Pilot does, along ``Defaults/Pilot``, ``<setup>/Pilot``,
      ``<vo>/Defaults/Pilot``, ``<vo>/<setup>/Pilot``, ``<vo>/Pilot`` (DIRAC 9's layout), the
      later path winning → an ``https://`` sink, unless a CE white list is given and our
      ``ce`` is not in it.  ``PilotLogLevel`` only switches debug on (``DEBUG``) or off.
      A file with ``Setups`` is the old format, whose reader in the Pilot ignores these keys.
      When the MQ road is configured too, it is the sink and HTTPS the ``fallback_sink``.
    """
    out = {}
    setup, vo = hint.get("setup"), hint.get("vo")
    if not setup and isinstance(data.get("DefaultSetup"), str) and data["DefaultSetup"]:
        setup = data["DefaultSetup"]
        out["setup"] = (setup, "DefaultSetup")

    pilot = {}
    paths = (("Defaults", "Pilot"), (setup, "Pilot"), (vo, "Defaults", "Pilot"), (vo, setup, "Pilot"), (vo, "Pilot"))
    for where in () if "Setups" in data else paths:
        if None not in where:
            for key, value in _path(data, where).items():
                pilot[key] = (value, "/".join(map(str, where)) + "/" + key)
    if "PilotLogLevel" in pilot:
        value, where = pilot["PilotLogLevel"]
        out["level"] = ("debug" if str(value).upper() == "DEBUG" else "info", where)
    enabled = str(pilot.get("RemoteLogging", ("", ""))[0]).lower() in ("true", "yes", "1", "y")
    if "RemoteLoggerCEsWhiteList" in pilot:
        listed, _ = pilot["RemoteLoggerCEsWhiteList"]
        listed = listed if isinstance(listed, list) else str(listed).replace(",", " ").split()
        enabled = enabled and hint.get("ce") in [str(x).strip() for x in listed]
    if enabled and "RemoteLoggerURL" in pilot:
        out["sink"] = pilot["RemoteLoggerURL"]

    logging = _path(data, ("Setups", setup, "Logging")) if setup else {}
    if logging.get("Host") and (logging.get("LoggingType", "MQ") == "MQ"):
        section = "Setups/%s/Logging" % setup
        queue = logging.get("QueuePath") or logging.get("Queue") or ""
        if isinstance(queue, list):
            queue = queue[0] if queue else ""
        queue = str(queue).split(",")[0].strip()
        if not queue:
            raise ConfigError("DIRAC pilot.json %s: Host is set but Queue is missing" % section)
        destination = queue if queue.startswith("/") else "/queue/" + queue
        if "sink" in out:  # both roads configured: the broker first, HTTPS as the fallback
            out["fallback_sink"] = out["sink"]
        out["sink"] = ("stomp+ssl://%s:%s%s" % (logging["Host"], logging.get("Port", 61614), destination), section)
        out["format"] = ("dirac", section)
        for key, name in (("HostCertificate", "cert"), ("HostKey", "key"), ("CACertificate", "ca_file")):
            if logging.get(key):
                out[name] = (logging[key], "%s/%s" % (section, key))
    return out
