#!/usr/bin/env bash
# Redis CPU per 10,000 messages/s on a 3-master Redis Cluster: classic
# PUBLISH versus sharded SPUBLISH (docs/benchmarks.md, "Redis Cluster").
#
# Starts 3 cluster nodes on free loopback ports (no replicas), one
# subscriber per node (classic: SUBSCRIBE on every node, as gateways
# spread over the nodes would; sharded: SSUBSCRIBE on each channel's
# owner), publishes N messages of 100 bytes with redis-benchmark, and reads
# each redis-server's CPU time (utime + stime) from /proc before and after.
# Needs redis-server, redis-cli and redis-benchmark (Debian: redis-server,
# redis-tools).
set -euo pipefail
N=${N:-300000}
BASE=${BASE_PORT:-17301}
dir=$(mktemp -d)
pids=()
subs=()
cleanup() {
  for p in "${subs[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
ports=($BASE $((BASE + 1)) $((BASE + 2)))
for p in "${ports[@]}"; do
  mkdir -p "$dir/$p"
  (cd "$dir/$p" && exec redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --save "" --appendonly no >/dev/null) &
  pids+=($!)
done
sleep 0.5
redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-yes >/dev/null
until redis-cli -p "${ports[0]}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
sleep 1
tck=$(getconf CLK_TCK)
cpu() { # total CPU ticks of the three nodes
  local t=0
  for p in "${pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
payload=$(head -c 100 /dev/zero | tr '\0' x)
owner() { # the port owning the slot of $1 (the one that does not answer MOVED)
  local p
  for p in "${ports[@]}"; do
    if ! redis-cli -p "$p" spublish "$1" probe | grep -q MOVED; then echo "$p"; return; fi
  done
}
report() { # label ticks messages
  awk -v l="$1" -v t="$2" -v n="$3" -v hz="$tck" 'BEGIN {
    s = t / hz; printf "%-9s %8d msgs  %6.2f CPU-s  %5.3f cores per 10k msg/s\n", l, n, s, s / n * 10000 }'
}

# Classic: one SUBSCRIBE per node; PUBLISH spread over the nodes.
for p in "${ports[@]}"; do redis-cli -p "$p" subscribe c >/dev/null & subs+=($!); done
sleep 0.5
before=$(cpu)
for p in "${ports[@]}"; do
  redis-benchmark -p "$p" -n $((N / 3)) -c 10 -P 16 -q publish c "$payload" >/dev/null &
done
wait_bench() { while pgrep -f "redis-benchmark -p $BASE|redis-benchmark -p $((BASE + 1))|redis-benchmark -p $((BASE + 2))" >/dev/null; do sleep 0.2; done; }
wait_bench
report classic $(($(cpu) - before)) "$N"
for p in "${subs[@]}"; do kill "$p" 2>/dev/null || true; done
subs=()

# Sharded: three channels, one per node; SSUBSCRIBE and SPUBLISH on each owner.
declare -A chan
for i in $(seq 1 200); do
  o=$(owner "s$i")
  [ -z "${chan[$o]:-}" ] && chan[$o]="s$i"
  [ "${#chan[@]}" -eq 3 ] && break
done
for o in "${!chan[@]}"; do redis-cli -p "$o" ssubscribe "${chan[$o]}" >/dev/null & subs+=($!); done
sleep 0.5
before=$(cpu)
for o in "${!chan[@]}"; do
  redis-benchmark -p "$o" -n $((N / 3)) -c 10 -P 16 -q spublish "${chan[$o]}" "$payload" >/dev/null &
done
wait_bench
report sharded $(($(cpu) - before)) "$N"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
