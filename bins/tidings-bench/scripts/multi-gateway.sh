#!/usr/bin/env bash
# End-to-end cost of classic versus sharded pub/sub on a 3-master Redis
# Cluster with 1, 2 and 3 gateways (docs/benchmarks.md, "Several gateways on
# a Redis Cluster").
#
# Starts 3 cluster nodes (no replicas) on free loopback ports, then for each
# cell of the matrix runs `tidings-bench per-user` with --gateways G gateway
# processes launched on the cluster (redis.mode = "cluster"), the clients
# spread round-robin over them, classic (PUBLISH, routing as configured by
# default) or --sharded (the user channels' rule says sharded = true; the
# bench publishes with SPUBLISH to each channel's slot owner). Each cell
# prints delivered/lost, latency, Redis CPU per 10,000 msg/s (total and per
# node, the CPU at rest subtracted) and the gateways' CPU; the JSON reports
# stay in $OUT.
#
# Needs redis-server and redis-cli (Debian: redis-server, redis-tools), jq,
# and a release build: cargo build --release -p tidings -p tidings-bench
#
# Knobs (environment): N sockets (2000, each its own user and channel),
# RATE msg/s (10000), D seconds of publishing (20), BASELINE seconds at rest
# before publishing (3), GATEWAYS ("1 2 3"), KINDS ("classic sharded"),
# RUNS per cell (1), OUT (a new temporary directory), TIDINGS and BENCH (the
# binaries).
set -euo pipefail
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
root=$(CDPATH='' cd -- "$here/../../.." && pwd)
BENCH=${BENCH:-$root/target/release/tidings-bench}
TIDINGS=${TIDINGS:-$root/target/release/tidings}
N=${N:-2000}
RATE=${RATE:-10000}
D=${D:-20}
BASELINE=${BASELINE:-3}
GATEWAYS=${GATEWAYS:-"1 2 3"}
KINDS=${KINDS:-"classic sharded"}
RUNS=${RUNS:-1}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
for bin in "$BENCH" "$TIDINGS"; do
  [ -x "$bin" ] || { echo "missing $bin: cargo build --release -p tidings -p tidings-bench" >&2; exit 2; }
done

dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
ports=()
while [ "${#ports[@]}" -lt 3 ]; do
  p=$(free_port)
  # The cluster bus listens on port + 10000: keep both free and distinct.
  if [ "$p" -lt 55000 ] && [[ " ${ports[*]} " != *" $p "* ]] && ! (echo >"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null; then
    ports+=("$p")
  fi
done
for p in "${ports[@]}"; do
  mkdir -p "$dir/$p"
  (cd "$dir/$p" && exec redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --save "" --appendonly no --logfile "$dir/$p/log") &
  pids+=($!)
done
for p in "${ports[@]}"; do
  until redis-cli -p "$p" ping 2>/dev/null | grep -q PONG; do sleep 0.1; done
done
redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-yes >"$dir/create.log"
for p in "${ports[@]}"; do
  until redis-cli -p "$p" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
done
sleep 1
nodes=$(printf '127.0.0.1:%s,' "${ports[@]}")
nodes=${nodes%,}
echo "cluster: $nodes (redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'))"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $N sockets, $RATE msg/s for $D s per cell; reports in $OUT"
echo
printf '%-4s %-8s %-4s %9s %6s %8s %8s %8s  %-24s %8s %9s %7s %s\n' \
  gw kind run delivered lost p50_ms p99_ms max_ms "redis/10k (per node)" gw/10k gw_us/dlv others load
for g in $GATEWAYS; do
  for kind in $KINDS; do
    for run in $(seq 1 "$RUNS"); do
      name="g$g-$kind-$run"
      extra=()
      [ "$kind" = sharded ] && extra+=(--sharded)
      set +e
      "$BENCH" per-user -n "$N" --rate "$RATE" -d "$D" --baseline-secs "$BASELINE" \
        --launch "$TIDINGS" --gateways "$g" --redis-cluster "$nodes" "${extra[@]}" \
        --json "$OUT/$name.json" >"$OUT/$name.txt" 2>"$OUT/$name.err"
      rc=$?
      set -e
      if [ ! -s "$OUT/$name.json" ]; then
        echo "$name: no report (exit $rc); see $OUT/$name.err" >&2
        tail -5 "$OUT/$name.err" >&2
        continue
      fi
      jq -r --arg g "$g" --arg kind "$kind" --arg run "$run" '
        def f(n): if . == null then "n/a" else (. * pow(10; n) | round / pow(10; n) | tostring) end;
        [ $g, $kind, $run,
          (.delivery.received | tostring), (.delivery.lost | tostring),
          (.delivery.latency.p50_ms | f(2)), (.delivery.latency.p99_ms | f(2)), (.delivery.latency.max_ms | f(1)),
          ((.redis.cores_per_10k_msg_per_sec | f(4)) + " (" + ([.redis.nodes[].cores_per_10k_msg_per_sec | f(4)] | join(" ")) + ")"),
          (.gateway.cores_per_10k_msg_per_sec | f(4)), (.gateway.cpu_us_per_delivery | f(1)),
          ((.machine.other_processes_percent_of_all_cores_main | f(1)) + "%"),
          (.machine.loadavg_at_start // "n/a")
        ] | @tsv' "$OUT/$name.json" |
        awk -F'\t' '{ printf "%-4s %-8s %-4s %9s %6s %8s %8s %8s  %-24s %8s %9s %7s %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 }'
      [ "$rc" -eq 0 ] || echo "  ($name: the bench reported problems, exit $rc; see $OUT/$name.txt)"
      sleep 2
    done
  done
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
