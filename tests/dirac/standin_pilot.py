"""A stand-in for DIRAC's ``dirac-pilot.py``: it logs, prints and posts exactly as the Pilot does.

DIRACGrid/Pilot is not on PyPI, so the tests serve this file as ``dirac-pilot.py`` inside the
``pilot.tar`` that DIRAC's own generated pilot wrapper downloads (tests/dirac_pilot.py). It is
written from the Pilot's code, read with the search tools, and keeps every behaviour of its
*remote logging*; what the Pilot's commands really do (install DIRAC, match jobs) is replaced
by a few lines of the same kind. Standard library only, Python 3.6+ (the wrapper runs it with
``python3`` from PATH). Where each behaviour comes from:

``Pilot/dirac-pilot.py`` (current, the version with ``wnVO``):
  * ``PilotParams()`` runs with ``sys.stdout`` swapped for a StringIO; that text is then
    printed (``bufContent``).
  * Remote logging is on when ``pilotLogging`` (``-z``) and a ``loggerURL`` (``-g``) are set.
    Then the wrapper's stdin is read whole (unless a tty), a ``RemoteLogger`` named "Pilot"
    logs "Remote logger activated", the stdin text is written into its buffer, the buffer is
    flushed (the first POST: an unreachable server makes the Pilot die here, exit 1, before
    any command), and ``bufContent`` is written after it.
  * "Clearing PYTHONPATH…", "PARAMETER […]" (debug), "Executing commands: […]", then the
    "Pilot" buffer is flushed (its timer cancelled) before the commands run.
  * Each command is made by ``getCommand`` and logs "Command X instantiated from M" with its
    own logger before ``execute()``; one that cannot be made: an error line, a flush, exit -1.
``Pilot/pilotCommands.py`` (current): ``LaunchAgent`` ends with ``sys.exit(0)``, so a normal
  run is finalised. ``logFinalizer``: a command that returns flushes its buffer; on
  ``sys.exit`` it logs "Flushing the remote logger buffer for pilot on sys.exit(): …",
  flushes, and posts ``finaliseLogs`` with ``{"retCode": str(code)}`` (an error there is only
  logged); any other exception is logged (``str(exc)`` then the traceback, as two error
  messages) *without* a flush, and re-raised: those lines are lost with the buffer.
``Pilot/pilotTools.py`` (read at 58ff48dc, the last stored version; where the current one
  differs, the team's notes in /work/shared/dirac.md, made from the current code, are
  followed, marked "current" below):
  * ``Logger``: every line of a message printed to stdout as
    ``messageTemplate.format(level=…, message=line)`` (``"<UTC ISO-8601 µs>Z <LEVEL> [<name>] <line>"``)
    and appended to ``pilot.out``; levels DEBUG (only with ``-d``/``PilotLogLevel``), INFO,
    WARN, ERROR.
  * ``RemoteLogger``: prints as ``Logger``, then puts *one* entry for the whole message into
    its buffer with a second ``messageTemplate`` (a second clock reading: the posted time is
    not the printed one; ``warn`` posts ``WARNING``; a multi-line message is one header and raw
    continuation lines). Current: a failed send is not caught there.
  * ``FixedSizeBuffer``: lines are counted as ``max(1, text.count("\\n"))`` per write; the
    buffer is sent when ``bufsize`` lines wait, and on ``flush()`` (which sends even an empty
    buffer). Current: ``bufsize`` is ``RemoteLoggerBufsize`` (default 1000, at least 1). The
    current buffer also has a timer (``RemoteLoggerTimerInterval``); it is 0 (off) for the
    commands and the "Pilot" logger's is cancelled before the first command, so none here.
  * ``sendMessage(url, pilotUUID, wnVO, method, rawMessage)`` (current): one ``urlopen`` POST,
    **no timeout**, of the urlencoded form ``method`` and
    ``args = json.dumps((json.dumps(rawMessage), pilotUUID, wnVO))``; TLS context
    ``ssl.create_default_context()`` + ``load_verify_locations(capath=$X509_CERT_DIR)`` +
    ``load_cert_chain($X509_USER_PROXY)``, or, when that path is a directory, its
    ``hostcert.pem``/``hostkey.pem`` and the form field ``extraCredentials="hosts"`` (JSON).
    A non-2xx answer raises (urllib); the JSON answer (``{"OK": false}``) is never read.
  * ``CommandBase``: a ``RemoteLogger`` named after the command's class when there is a
    ``loggerURL`` (else a ``Logger``), active only with ``-z``; ``executeAndGetOutput`` reads
    the child's stdout and stderr as they come: stdout chunks are printed *and* written raw
    into the buffer, stderr chunks only printed to stderr; then a newline on each stream.
  * ``PilotParams``: ``getopt.getopt`` over the Pilot's options (the first non-option ends
    them), pilot.json read first, the command line second; its own ``Logger`` prints debug.
    (Here pilot.json's ``Defaults/Pilot`` only; the Pilot also looks in the setup's and VO's.)

Not from the Pilot, for the tests: ``PILOT_STANDIN_FAULT=<Command>:exit:<code>`` (``sys.exit``
after that command's lines; in ``LaunchAgent`` before its last line), ``<Command>:raise`` (an
exception there), ``<Command>:hang``
(log "hanging until killed", write the pid to ``$PILOT_STANDIN_PIDFILE`` if set, sleep for
ever). The commands are ``CheckWorkerNode``, ``InstallDIRAC``, ``LaunchAgent`` (``-X`` picks).
"""

import fcntl
import getopt
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from functools import partial
from io import StringIO
from urllib.parse import urlencode
from urllib.request import urlopen


class Logger(object):
    """The Pilot's plain logger: prints each line with a header, keeps a copy in pilot.out."""

    def __init__(self, name="Pilot", debugFlag=False, pilotOutput="pilot.out"):
        self.name, self.debugFlag, self.out = name, debugFlag, pilotOutput

    @property
    def messageTemplate(self):
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return "%s {level} [%s] {message}" % (stamp, self.name)

    def _output(self, msg, level):
        with open(self.out, "a") as copy:
            for line in str(msg).split("\n"):
                printed = self.messageTemplate.format(level=level, message=line)
                print(printed)
                copy.write(printed + "\n")
        sys.stdout.flush()

    def debug(self, msg):
        if self.debugFlag:
            self._output(msg, "DEBUG")

    def info(self, msg):
        self._output(msg, "INFO")

    def warn(self, msg):
        self._output(msg, "WARN")

    def error(self, msg):
        self._output(msg, "ERROR")


class RemoteLogger(Logger):
    """Prints as Logger, and buffers one entry per message for the remote logging service."""

    def __init__(self, url, name="Pilot", bufsize=1000, pilotUUID="unknown", debugFlag=False, wnVO=""):
        super(RemoteLogger, self).__init__(name, debugFlag)
        self.url, self.pilotUUID, self.wnVO = url, pilotUUID, wnVO
        self.isPilotLoggerOn = True
        self.buffer = FixedSizeBuffer(partial(sendMessage, url, pilotUUID, wnVO, "sendMessage"), bufsize)

    def _remote(self, level, msg):
        if self.isPilotLoggerOn:
            self.buffer.write(self.messageTemplate.format(level=level, message=msg) + "\n")

    def debug(self, msg):
        super(RemoteLogger, self).debug(msg)
        if self.debugFlag:
            self._remote("DEBUG", msg)

    def info(self, msg):
        super(RemoteLogger, self).info(msg)
        self._remote("INFO", msg)

    def warn(self, msg):
        super(RemoteLogger, self).warn(msg)
        self._remote("WARNING", msg)

    def error(self, msg):
        super(RemoteLogger, self).error(msg)
        self._remote("ERROR", msg)


class FixedSizeBuffer(object):
    """Text sent as one message once ``bufsize`` lines wait, or on flush()."""

    def __init__(self, senderFunc, bufsize=1000):
        self.output, self.bufsize, self.nlines, self.senderFunc = StringIO(), bufsize, 0, senderFunc

    def write(self, text):
        if self.output.closed:  # after a flush
            self.output = StringIO()
        self.output.write(text)
        self.nlines += max(1, text.count("\n"))
        if self.nlines >= self.bufsize:
            self.flush()
            self.output = StringIO()

    def flush(self):
        self.output.flush()
        text = self.output.getvalue()
        self.senderFunc(text)
        self.nlines = 0
        self.output.close()

    def cancelTimer(self):
        """The current Pilot's buffer timer; none here (see the module's docstring)."""


def sendMessage(url, pilotUUID, wnVO, method, rawMessage):
    """One POST of the Pilot's form, as ``pilotTools.sendMessage``: no timeout, answer unread."""
    fields = {"method": method, "args": json.dumps((json.dumps(rawMessage), pilotUUID, wnVO))}
    cert = os.getenv("X509_USER_PROXY")
    context = ssl.create_default_context()
    context.load_verify_locations(capath=os.getenv("X509_CERT_DIR"))
    if os.path.isdir(cert):
        context.load_cert_chain(os.path.join(cert, "hostcert.pem"), os.path.join(cert, "hostkey.pem"))
        fields["extraCredentials"] = json.dumps("hosts")
    else:
        context.load_cert_chain(cert)
    urlopen(url, urlencode(fields).encode("utf-8"), context=context).close()


SHORT_OPTIONS = "a:cde:g:hkl:n:o:m:r:s:t:u:x:y:zC:D:E:F:G:K:M:N:O:P:Q:R:S:T:V:W:X:Z:"
LONG_OPTIONS = (
    "requiredTag= gridCEType= cert debug extraPackages= loggerURL= help keepPP project= name= option= "
    "maxNumberOfProcessors= modules= userEnvVariables= pipInstallOptions= release= section= tag= url= execute= "
    "CEType= pilotLogging configurationServer= disk= commandExtensions= pilotCFGFile= Group= certLocation= "
    "MaxCycles= PollingTime= StopOnApplicationFailure= StopAfterFailedMatches= Name= OwnerDN= wnVO= "
    "pilotProcessors= Queue= reference= setup= CPUTime= installation= gateway= commands= commandOptions= "
    "pythonVersion= defaultsURL= pilotUUID= architectureScript= preinstalledEnv= preinstalledEnvPrefix= "
    "CVMFS_locations="
).split()


class PilotParams(object):
    """The options the remote logging needs, read as the Pilot reads them: pilot.json, then getopt."""

    def __init__(self):
        self.log = Logger("PilotParams", debugFlag=True)
        self.workingDir = os.getcwd()
        self.commands = ["CheckWorkerNode", "InstallDIRAC", "LaunchAgent"]
        self.debugFlag, self.keepPythonPath, self.commandExtensions = False, False, []
        self.pilotLogging, self.loggerURL, self.loggerBufsize = False, None, 1000
        self.pilotUUID, self.wnVO, self.pilotReference = "unknown", "", ""
        self.optList, _ = getopt.getopt(sys.argv[1:], SHORT_OPTIONS, LONG_OPTIONS)
        self.log.debug("Options list: %s" % self.optList)
        self.log.debug("JSON file loaded: pilot.json")
        with open("pilot.json") as f:
            options = json.load(f).get("Defaults", {}).get("Pilot", {})
        self.pilotLogging = str(options.get("RemoteLogging", self.pilotLogging)).lower() in ("true", "yes", "1")
        self.loggerURL = options.get("RemoteLoggerURL")
        self.loggerBufsize = max(1, int(options.get("RemoteLoggerBufsize", self.loggerBufsize)))
        self.debugFlag = str(options.get("PilotLogLevel", "INFO")).lower() == "debug"
        self.log.debug("JSON: Remote logging: %s" % self.pilotLogging)
        self.log.debug("JSON: Remote logging URL: %s" % self.loggerURL)
        for o, v in self.optList:  # the command line wins over pilot.json
            if o in ("-z", "--pilotLogging"):
                self.pilotLogging = True
            elif o in ("-g", "--loggerURL"):
                self.loggerURL = v
            elif o == "--pilotUUID":
                self.pilotUUID = v
            elif o == "--wnVO":
                self.wnVO = v
            elif o in ("-d", "--debug"):
                self.debugFlag = True
            elif o in ("-k", "--keepPP"):
                self.keepPythonPath = True
            elif o in ("-X", "--commands"):
                self.commands = v.split(",")


def logFinalizer(func):
    """pilotCommands.logFinalizer: flush at a command's end, finaliseLogs on sys.exit."""

    def wrapper(self):
        if not self.log.isPilotLoggerOn:
            self.log.debug("Remote logger is not active, no log flushing performed")
            return func(self)
        try:
            ret = func(self)
            self.log.buffer.flush()
            return ret
        except SystemExit as exCode:
            pRef = self.pp.pilotReference
            self.log.info(
                "Flushing the remote logger buffer for pilot on sys.exit(): %s (exit code:%s)" % (pRef, exCode)
            )
            self.log.buffer.flush()
            try:
                sendMessage(self.log.url, self.log.pilotUUID, self.log.wnVO, "finaliseLogs", {"retCode": str(exCode)})
            except Exception as exc:
                self.log.error("Remote logger couldn't be finalised %s " % str(exc))
            raise
        except Exception as exc:
            self.log.error(str(exc))
            self.log.error(traceback.format_exc())
            raise
        finally:
            self.log.buffer.cancelTimer()

    return wrapper


class CommandBase(object):
    def __init__(self, pilotParams):
        self.pp = pilotParams
        name = self.__class__.__name__
        if pilotParams.loggerURL is None:
            self.log = Logger(name, debugFlag=pilotParams.debugFlag)
            self.log.isPilotLoggerOn = False
        else:
            self.log = RemoteLogger(
                pilotParams.loggerURL,
                name,
                bufsize=pilotParams.loggerBufsize,
                pilotUUID=pilotParams.pilotUUID,
                debugFlag=pilotParams.debugFlag,
                wnVO=pilotParams.wnVO,
            )
            self.log.isPilotLoggerOn = pilotParams.pilotLogging
        self.log.debug("Initialized command %s" % name)

    def executeAndGetOutput(self, cmd):
        """Run ``cmd`` in a shell; its stdout printed and buffered raw, its stderr only printed."""
        self.log.info("Executing command %s" % cmd)
        p = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=False)
        for fd in (p.stdout.fileno(), p.stderr.fileno()):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        outData = ""
        while True:
            readable, _, _ = select.select([p.stdout, p.stderr], [], [])
            dataWasRead = False
            for stream in readable:
                chunk = stream.read().decode("ascii", "replace").replace("\ufffd", "")
                if not chunk:
                    continue
                dataWasRead = True
                if stream is p.stderr:
                    sys.stderr.write(chunk)
                    sys.stderr.flush()
                else:
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
                    if hasattr(self.log, "buffer") and self.log.isPilotLoggerOn:
                        self.log.buffer.write(chunk)
                    outData += chunk
            if not dataWasRead:
                break
        sys.stdout.write("\n")
        sys.stdout.flush()
        sys.stderr.write("\n")
        sys.stderr.flush()
        returnCode = p.wait()
        self.log.debug("Return code of %s: %d" % (cmd, returnCode))
        return returnCode, outData

    def fault(self):
        """The test's fault for this command, if any (PILOT_STANDIN_FAULT)."""
        command, _, what = os.environ.get("PILOT_STANDIN_FAULT", "").partition(":")
        if command != self.__class__.__name__:
            return
        if what == "raise":
            raise RuntimeError("stand-in fault: %s raised" % command)
        if what.startswith("exit:"):
            sys.exit(int(what[5:]))
        if what == "hang":
            self.log.info("hanging until killed")
            if os.environ.get("PILOT_STANDIN_PIDFILE"):
                with open(os.environ["PILOT_STANDIN_PIDFILE"], "w") as f:
                    f.write("%d\n" % os.getpid())
            while True:
                time.sleep(3600)


class CheckWorkerNode(CommandBase):
    @logFinalizer
    def execute(self):
        self.log.info("Uname      = %s" % " ".join(os.uname()))
        self.log.info("Host Name  = %s" % socket.gethostname())
        self.log.info("WorkingDir = %s" % self.pp.workingDir)
        self.fault()


class InstallDIRAC(CommandBase):
    @logFinalizer
    def execute(self):
        self.log.info("Installing DIRAC locally")
        self.executeAndGetOutput(
            "printf 'installing DIRACOS\\ninstalled DIRACOS\\n'; ls /no/such/diracos; printf 'pip install DIRAC: done'"
        )
        self.log.warn("DIRAC installed with a warning")
        self.log.info("two lines of one message:\nthe second line")
        self.fault()


class LaunchAgent(CommandBase):
    @logFinalizer
    def execute(self):
        self.log.info("Starting JobAgent")
        self.executeAndGetOutput("echo 'JobAgent: no job matched'")
        self.fault()
        self.log.info("DiskSpace (MB) = 1000")
        sys.exit(0)  # as the Pilot's LaunchAgent ends: a normal run is finalised too


COMMANDS = {c.__name__: c for c in (CheckWorkerNode, InstallDIRAC, LaunchAgent)}


def getCommand(params, commandName):
    command = COMMANDS.get(commandName)
    return (command(params), "pilotCommands") if command else (None, None)


def main():
    sys.stdout, oldstdout = StringIO(), sys.stdout
    pilotParams = PilotParams()
    sys.stdout, buffer = oldstdout, sys.stdout
    bufContent = buffer.getvalue()
    buffer.close()
    sys.stdout.write(bufContent)
    remote = pilotParams.pilotLogging and pilotParams.loggerURL is not None
    if remote:
        receivedContent = "" if sys.stdin.isatty() else sys.stdin.read()
        log = RemoteLogger(
            pilotParams.loggerURL,
            "Pilot",
            bufsize=pilotParams.loggerBufsize,
            pilotUUID=pilotParams.pilotUUID,
            debugFlag=pilotParams.debugFlag,
            wnVO=pilotParams.wnVO,
        )
        log.info("Remote logger activated")
        log.buffer.write(receivedContent)
        log.buffer.flush()
        log.buffer.write(bufContent)
    else:
        log = Logger("Pilot", debugFlag=pilotParams.debugFlag)
    if not pilotParams.keepPythonPath:
        log.info("Clearing PYTHONPATH for child processes.")
        if "PYTHONPATH" in os.environ:
            os.environ["PYTHONPATH_SAVE"] = os.environ["PYTHONPATH"]
            os.environ["PYTHONPATH"] = ""
    log.debug("PARAMETER [%s]" % ", ".join(map(str, pilotParams.optList)))
    log.info("Executing commands: %s" % str(pilotParams.commands))
    if remote:
        try:
            log.buffer.cancelTimer()
            log.debug("Timer canceled")
            log.buffer.flush()
        except Exception as exc:
            log.error(str(exc))
    for commandName in pilotParams.commands:
        command, module = getCommand(pilotParams, commandName)
        if command is not None:
            command.log.info("Command %s instantiated from %s" % (commandName, module))
            command.execute()
        else:
            log.error("Command %s could not be instantiated" % commandName)
            if remote:
                log.buffer.flush()
            sys.exit(-1)


if __name__ == "__main__":
    main()
