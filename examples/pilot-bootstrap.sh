#!/usr/bin/env bash
# A pilot bootstrap instrumented with pilotlogger, the three ways:
#   1. one-liners for the steps the bootstrap itself performs,
#   2. the wrapper flag around the pilot proper (its lines become lifecycle events),
#   3. replay at the end, shipping whatever is still spooled.
# Every step is spooled first; nothing here can change the pilot's outcome: the script
# exits with the pilot's own exit code.
#
# Usage: examples/pilot-bootstrap.sh [path/to/pilotlog]
#   PILOTLOG_SINK=stomp+ssl://mq.example.org:61614/queue/pilots (plus credentials) to ship;
#   PILOT_COMMAND="python3 dirac-pilot.py ..." for the real pilot (default: examples/fake-pilot.py).
set -u
here=$(cd "$(dirname "$0")" && pwd)
pilotlog="python3 ${1:-$here/../dist/pilotlog}"
export PILOTLOG_SPOOL=${PILOTLOG_SPOOL:-$PWD/.pilotlog-spool}
read -r -a pilot <<< "${PILOT_COMMAND:-python3 $here/fake-pilot.py}"

$pilotlog emit boot -m "booted up" --source bootstrap
$pilotlog probe --emit >/dev/null                 # the os event: OS, CPU, memory, batch job...
$pilotlog power --fraction 0.02 >/dev/null         # the power event, DB12-style
$pilotlog emit install -m "installed DIRAC via dirac-install" --source bootstrap

$pilotlog run --pattern 'matched a job=match' --pattern 'failed to match=nomatch' -- "${pilot[@]}"
rc=$?

$pilotlog replay                                   # ship what is left (exit 0 even if the broker is down)
exit "$rc"
