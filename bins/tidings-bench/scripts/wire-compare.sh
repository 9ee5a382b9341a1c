#!/usr/bin/env bash
# The wire adapters' figures (docs/benchmarks.md, "Wire adapters: SSE and
# Socket.IO"): idle memory per connection over each wire, and broadcast
# latency to Socket.IO clients from the gateway and from the reference Node
# socket.io 4.8 server, run back to back, ROUNDS times, each run with its
# own server and private redis-server. Writes one JSON per run and the
# load average before each into OUT.
#
#   cargo build --release -p tidings -p tidings-bench
#   (cd bins/tidings-bench/socketio-baseline && npm install --no-audit --no-fund)
#   OUT=/tmp/wire ROUNDS=3 N=10000 bins/tidings-bench/scripts/wire-compare.sh [idle|broadcast|all]
#
# Not run by CI (.ci/run): it takes minutes and wants a quiet machine.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/../.." && pwd)
B=${B:-$root/target/release/tidings-bench}
GW=${GW:-$root/target/release/tidings}
BASE=${BASELINE:-$here/socketio-baseline}
OUT=${OUT:-/tmp/tidings-wire}
ROUNDS=${ROUNDS:-3}
N=${N:-10000}
IDLE_SECS=${IDLE_SECS:-15}
BCAST_SECS=${BCAST_SECS:-20}
what=${1:-all}
mkdir -p "$OUT"
[ -d "$BASE/node_modules/socket.io" ] || { echo "npm install in $BASE first" >&2; exit 2; }

run() { # name, args...
  local name=$1
  shift
  echo "== $name $(date -u +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log"
  "$B" "$@" --json "$OUT/$name.json" >"$OUT/$name.txt" 2>"$OUT/$name.err" || echo "   (exit $?)" | tee -a "$OUT/log"
  grep -E 'gateway mem|latency|delivery|connect  ' "$OUT/$name.txt" | sed 's/^/   /' | tee -a "$OUT/log"
}

for r in $(seq 1 "$ROUNDS"); do
  if [ "$what" = idle ] || [ "$what" = all ]; then
    for w in websocket sse socketio socketio-polling; do
      run "idle-$w-$r" idle -n "$N" -d "$IDLE_SECS" --wire "$w" --launch "$GW"
    done
    run "idle-node-socketio-$r" idle -n "$N" -d "$IDLE_SECS" --wire socketio --socketio-baseline "$BASE"
    run "idle-node-socketio-polling-$r" idle -n "$N" -d "$IDLE_SECS" --wire socketio-polling --socketio-baseline "$BASE"
  fi
  if [ "$what" = broadcast ] || [ "$what" = all ]; then
    run "bcast-tidings-socketio-$r" broadcast -n "$N" --rate 1 -d "$BCAST_SECS" --wire socketio --launch "$GW"
    run "bcast-node-socketio-$r" broadcast -n "$N" --rate 1 -d "$BCAST_SECS" --wire socketio --socketio-baseline "$BASE"
  fi
done
