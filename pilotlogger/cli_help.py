"""What each command's ``--help`` teaches: its examples, and the settings it reads.

Kept apart from the parser (cli.py) because it is text for people, and it grows as the
commands do.  A setting a command does not read is neither shown in its help nor accepted
as its flag, so ``pilotlog serve --help`` is not buried under the spool and STOMP settings.
"""

# Settings by what they are for; a command lists the groups it reads.
WHICH_FILE = ("config", "setup", "vo")
SPOOL = ("spool", "max_events", "max_bytes", "max_event_bytes", "log_fsync", "capture_budget")
EVENTS = ("pilot_uuid", "source", "level", "site", "ce", "queue")
CONNECTION = (
    "sink",
    "user",
    "passcode",
    "passcode_file",
    "vhost",
    "ca_file",
    "ca_dir",
    "cert",
    "key",
    "timeout",
    "deadline",
)
SHIPPING = (
    "format",
    "fallback_sink",
    "window",
    "receipt_every",
    "destination_headers",
    "destination_check",
    "http_protocol",
    "batch_events",
    "batch_bytes",
)

#: A setting's help where a command reads it differently from the one the settings table says.
READ_AS = {
    ("tail", "sink"): "the broker URL whose destination is read (the queue or topic replay sends to)",
    ("timeline", "sink"): "without FILEs: the broker URL whose destination is read (as tail)",
    ("doctor", "sink"): "the path to check: a broker or HTTPS URL (stdout: nothing to check)",
}

RECORDING = WHICH_FILE + SPOOL + EVENTS
DELIVERY = CONNECTION + SHIPPING
EVERYTHING = RECORDING + DELIVERY

#: command -> the settings it reads (its flags); emit, run and config read them all.
SETTINGS_READ = {
    "emit": EVERYTHING,  # --send ships at once
    "run": EVERYTHING,  # records, and ships in the background
    "relay": EVERYTHING,  # records what the Pilot posts, and forwards it in the background
    "replay": WHICH_FILE + SPOOL + DELIVERY,
    "status": WHICH_FILE + SPOOL + ("pilot_uuid", "sink"),
    "probe": RECORDING,  # --emit records
    "power": RECORDING,
    "serve": (),
    "doctor": WHICH_FILE + SPOOL + EVENTS + DELIVERY,  # its test event carries the pilot id and context
    "tail": WHICH_FILE + CONNECTION,
    "timeline": WHICH_FILE + CONNECTION,
    "config": EVERYTHING,
}

MQ = "stomp+ssl://mq.example.org:61614/queue/pilots"

EXAMPLES = {
    None: """\
  pilotlog emit boot -m "booted up"                 # record an event (durable before it returns)
  pilotlog run --capture -- ./dirac-pilot.sh        # record a whole pilot run, keep its exit code
  pilotlog replay                                   # ship what is spooled
  pilotlog doctor                                   # where does delivery break?
  pilotlog COMMAND --help                           # each command's options, settings and examples""",
    "emit": """\
  pilotlog emit boot -m "booted up"
  pilotlog emit power -m "power of 11 HS06" -d hs06:=11 -d unit=HS06
  pilotlog emit nomatch -m "failed to match" --status warning
  pilotlog emit install --send -m "installed DIRAC"    # spool, then try to deliver at once""",
    "replay": """\
  pilotlog replay                                      # to the configured sink (default: stdout)
  pilotlog replay --strict --sink %s
  pilotlog replay --vo lhcb --sink https://dirac.example.org:8444/WorkloadManagement/TornadoPilotLogging"""
    % MQ,
    "run": """\
  pilotlog run -- python3 dirac-pilot.py -S LHCb-Production
  pilotlog run --capture --pattern 'matched a job=match' --pattern 'failed to match=nomatch' -- ./pilot.sh
  pilotlog run --ship-every 30 --sink %s -- ./pilot.sh
  pilotlog run --relay -- python3 dirac-pilot.py -z -g {relay} --pilotUUID "$DIRAC_PILOT_STAMP" …"""
    % MQ,
    "relay": """\
  pilotlog relay --sink https://dirac.example.org:8444/WorkloadManagement/TornadoPilotLogging   # prints its URL
  pilotlog relay --listen 127.0.0.1:8555 --spool /scratch/pilot/.pilotlog-spool   # the Pilot: -z -g <URL>
  pilotlog relay --listen localhost:0 --server-cert host.pem --server-key host.key --client-ca ca.pem \\
      --require-client-cert --allowed-cn pilot.example.org   # https://localhost:PORT/, the Pilot's proxy only""",
    "status": """\
  pilotlog status
  pilotlog status --json --spool /scratch/pilot/.pilotlog-spool""",
    "probe": """\
  pilotlog probe
  pilotlog probe --emit > /dev/null                    # also record them as an os event""",
    "power": """\
  pilotlog power                                       # about 2 s of one core
  pilotlog power --fraction 0.02                       # quicker, coarser""",
    "serve": """\
  pilotlog serve --plain --listen 127.0.0.1:8080 --dir ./pilotlogs     # a local test receiver
  pilotlog serve --listen 0.0.0.0:8444 --dir /var/lib/pilotlogs \\
      --server-cert hostcert.pem --server-key hostkey.pem --client-ca ca-bundle.pem --require-client-cert""",
    "doctor": """\
  pilotlog doctor
  pilotlog doctor --send-test --sink %s
  pilotlog doctor --json                               # for scripts: {"works": ..., "steps": [...]}"""
    % MQ,
    "tail": """\
  pilotlog tail --sink stomp+ssl://mq.example.org:61614/topic/pilots
  pilotlog tail --json --idle 10 > today.jsonl          # stop after 10 s without a message""",
    "timeline": """\
  pilotlog timeline today.jsonl
  pilotlog timeline today.jsonl --html today.html      # a page to open in a browser
  pilotlog timeline --json --idle 10 --sink %s"""
    % MQ,
    "config": """\
  pilotlog config
  pilotlog config --json --config pilot.json --vo lhcb""",
}


def epilog(command) -> str:
    return "examples:\n" + EXAMPLES[command] + "\n"
