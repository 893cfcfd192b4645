#!/usr/bin/env bash
# A demo pilot lifecycle, as a pilot bootstrap would record it with one-liners:
# every step goes into a local spool first, then `replay` ships the spool (here to stdout).
# Usage: examples/demo-pilot.sh [path/to/pilotlog]   (default: dist/pilotlog)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pilotlog=${1:-$here/../dist/pilotlog}
if [ -z "${PILOTLOG_SPOOL:-}" ]; then  # a temporary spool, removed when the demo ends (however it ends)
  demo_dir=$(mktemp -d)
  trap 'rm -rf "$demo_dir"' EXIT
  export PILOTLOG_SPOOL=$demo_dir/spool
fi
export PILOTLOG_SINK=${PILOTLOG_SINK:-stdout}
export PILOTLOG_SITE=${PILOTLOG_SITE:-DIRAC.Demo.org}

log() { python3 "$pilotlog" emit "$@"; }

log boot     -m "booted up" --source pilot-wrapper
log boot     -m "found DIRAC pilot ok" --source pilot-wrapper
log os       -m "SLC6/CC7" -d os=CC7 -d arch=x86_64
log power    -m "power of 11 HS06" -d hs06:=11
log install  -m "installed DIRAC via dirac-install" -d version=v8r0
log match    -m "matched a job" -d job:=12345
log shutdown -m "about to shutdown" -d exit_code:=0

echo "--- spool before replay ($PILOTLOG_SPOOL) ---" >&2
python3 "$pilotlog" status >&2
echo "--- replay to $PILOTLOG_SINK ---" >&2
shipped=$(dirname "$PILOTLOG_SPOOL")/shipped.jsonl
python3 "$pilotlog" replay | tee "$shipped"
if [ "$PILOTLOG_SINK" = stdout ]; then
  echo "--- what an operator sees: pilotlog timeline $shipped ---" >&2
  python3 "$pilotlog" timeline "$shipped" >&2
fi
