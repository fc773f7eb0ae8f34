#!/usr/bin/env bash
# Switchboard benchmarks. Each prints a table; run them on an otherwise idle machine and quote
# medians (the machine is shared and noisy).
#   scripts/bench.sh signaling [ROOMS...]   Collider load: N rooms x 2 sockets, 1 message in flight
#                                            per room (default N = 100 5000), then idle memory
#                                            per session at 10 000 sessions.
#   scripts/bench.sh cluster                 three nodes: join latency and joins/s through Raft,
#                                            cross-node messaging vs one node, failover times.
#   scripts/bench.sh calls                   whole AppRTC calls (join, register, K stored and K
#                                            live messages each way, bye, leave) on a bare floor
#                                            server, one node, three (same node, cross-node) and
#                                            five (3 voters + 2 learners), ratios to one node and
#                                            to the floor's CPU;
#                                            the 10-frame burst spread; joins through Raft.
#   scripts/bench.sh limiter                 TURN login limiter: cost per new failing source from 0
#                                            to 1 000 000 sources, beside the full-scan limiter it
#                                            replaced.
#   scripts/bench.sh turn                    coturn vs Switchboard with the same turnutils_uclient
#                                            loads (stable, fixed 50 k/s, Send indications,
#                                            saturating x5), then memory per idle allocation.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
shift || true
DURATION=${DURATION:-10}
REPEAT=${REPEAT:-3}
WORKERS=${WORKERS:-"1 2"}

build() {
  cargo build --release -q -p switchboard -p cluster-tests --bin switchboard --bin loadgen --bin barerelay
}

# start_node ADDR [--set k=v ...]: starts a release node, echoes its pid.
start_node() {
  local addr=$1; shift
  local log
  log=$(mktemp /tmp/switchboard-bench.XXXXXX.log)
  RUST_LOG=warn target/release/switchboard --listen "$addr" --set http.max_sessions=30000 "$@" >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -sf "http://$addr/healthz" >/dev/null && { echo "$pid"; return; }
    sleep 0.1
  done
  echo "node did not start; log: $log" >&2
  cat "$log" >&2
  exit 1
}

# stop PID: SIGTERM, then wait until it is gone (it is not a child of this shell).
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
  kill -9 "$1" 2>/dev/null || true
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }

signaling() {
  build
  # 10 000 sessions need as many descriptors in the node and in the generator.
  ulimit -n "$(ulimit -Hn)"
  local rooms=("$@")
  [ ${#rooms[@]} -gt 0 ] || rooms=(100 5000)
  local addr=127.0.0.1:18083
  echo "# Collider signaling load on one node ($(nproc) cores), ${DURATION}s per run, median of ${REPEAT}"
  echo "# reference (Go Collider, same load shape, this kind of machine): 93 000 msgs/s at N=100,"
  echo "#   p50 2.0 ms, p99 6.1 ms, 7-9 µs CPU per message"
  echo
  echo "| rooms | workers | msgs/s | RTT p50 | RTT p99 | server µs/msg | server cores | generator cores | server RSS | vs Collider msgs/s | vs Collider µs/msg |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for n in "${rooms[@]}"; do
  for w in $WORKERS; do
    local runs=()
    for _ in $(seq "$REPEAT"); do
      local pid
      pid=$(start_node "$addr" --set "http.workers=$w")
      runs+=("$(target/release/loadgen --target "$addr" --rooms "$n" --duration "$DURATION" --server-pid "$pid" --kv)")
      stop "$pid"
    done
    local rate p50 p99 us cores gen rss
    rate=$(printf '%s\n' "${runs[@]}" | field msgs_per_s | median)
    p50=$(printf '%s\n' "${runs[@]}" | field rtt_p50_ms | median)
    p99=$(printf '%s\n' "${runs[@]}" | field rtt_p99_ms | median)
    us=$(printf '%s\n' "${runs[@]}" | field server_us_per_msg | median)
    cores=$(printf '%s\n' "${runs[@]}" | field server_cpu_cores | median)
    gen=$(printf '%s\n' "${runs[@]}" | field gen_cpu_cores | median)
    rss=$(printf '%s\n' "${runs[@]}" | field server_rss_mib | median)
    printf '| %s | %s | %.0f | %.2f ms | %.2f ms | %.2f | %.2f | %.2f | %.1f MiB | %.2fx | %.2fx |\n' \
      "$n" "$w" "$rate" "$p50" "$p99" "$us" "$cores" "$gen" "$rss" \
      "$(awk -v r="$rate" 'BEGIN {print r / 93000}')" "$(awk -v u="$us" 'BEGIN {print u / 8}')"
  done
  done
  echo
  echo "# floor: a bare single-threaded tokio relay (cluster-tests/src/bin/barerelay.rs) under the same load"
  local bare
  target/release/barerelay --listen 127.0.0.1:18090 & bare=$!
  sleep 0.3
  for n in "${rooms[@]}"; do
    target/release/loadgen --target 127.0.0.1:18090 --rooms "$n" --duration "$DURATION" --server-pid "$bare" --kv
  done
  stop "$bare"
  echo
  local pid
  pid=$(start_node "$addr")
  target/release/loadgen --target "$addr" --rooms 5000 --idle --server-pid "$pid"
  stop "$pid"
}

cluster() {
  cargo build --release -q -p switchboard -p cluster-tests --bin switchboard --bin loadgen --bin clusterbench
  ulimit -n "$(ulimit -Hn)"
  export SWITCHBOARD_BIN="$PWD/target/release/switchboard"
  echo "# three-node cluster on 127.0.0.1-3 ($(nproc) cores), release build"
  echo
  echo "## joins through Raft (${DURATION}s per row)"
  target/release/clusterbench joins --duration "$DURATION"
  echo
  echo "## signaling messages, each room's two clients on two nodes vs on one (${DURATION}s)"
  # Closed loop: latency follows throughput, so a sweep shows both the light-load path latency
  # and the CPU-bound plateau.
  target/release/clusterbench messages --rooms 10 --rooms 60 --rooms 100 --duration "$DURATION"
  echo
  echo "## failover"
  target/release/clusterbench failover --rounds "${ROUNDS:-5}"
}

calls() {
  cargo build --release -q -p switchboard -p cluster-tests --bin switchboard --bin callgen --bin burst --bin clusterbench --bin callfloor
  ulimit -n "$(ulimit -Hn)"
  export SWITCHBOARD_BIN="$PWD/target/release/switchboard"
  local n=${CALLS:-5000} c=${CONCURRENCY:-16}
  echo "# whole calls ($(nproc) cores, generator included), K = 10, $c at once, $n calls per run, median of ${REPEAT}"
  echo "# targets: one node >= 1000 calls/s, p50 < 5 ms, p99 < 20 ms, <= 0.5 ms server CPU per call;"
  echo "#   three nodes cross-node >= 50 % of one node, p50 < 15 ms, p99 < 50 ms"
  echo
  echo "# floor: callfloor (cluster-tests/src/bin/callfloor.rs), one thread, no framework, no limits, the same calls"
  echo
  echo "| deployment | placement | calls/s | set-up p50 | set-up p99 | server CPU ms/call | generator CPU ms/call | Raft entries/call | failed calls | calls/s vs one node | server CPU vs floor |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  local base="" floor=""
  for row in "floor same floor" "single same one-node" "three same three-nodes" "three cross three-nodes" "five cross five-nodes-(3-voters+2-learners)"; do
    set -- $row
    local runs=()
    for _ in $(seq "$REPEAT"); do
      if [ "$1" = floor ]; then
        local fpid
        target/release/callfloor --listen 127.0.0.1:18095 & fpid=$!
        sleep 0.3
        runs+=("$(target/release/callgen --nodes http://127.0.0.1:18095 --server-pid "$fpid" --placement same --calls "$n" --concurrency "$c" --kv || true)")
        stop "$fpid"
      else
        runs+=("$(target/release/callgen --spawn "$1" --placement "$2" --calls "$n" --concurrency "$c" --kv || true)")
      fi
    done
    local rate p50 p99 srv gen entries failed
    rate=$(printf '%s\n' "${runs[@]}" | field calls_per_s | median)
    p50=$(printf '%s\n' "${runs[@]}" | field setup_p50_ms | median)
    p99=$(printf '%s\n' "${runs[@]}" | field setup_p99_ms | median)
    srv=$(printf '%s\n' "${runs[@]}" | field server_ms_per_call | median)
    gen=$(printf '%s\n' "${runs[@]}" | field gen_ms_per_call | median)
    # Log entries per call (commands are ~21 per call; fewer entries: more batched). None on one node.
    entries=$(printf '%s\n' "${runs[@]}" | field raft_entries_per_call | grep -v '–' || true)
    entries=$([ -n "$entries" ] && echo "$entries" | median || echo "–")
    failed=$(printf '%s\n' "${runs[@]}" | awk '{for (i = 1; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]} f += v["calls"] - v["ok"] + 0} END {print f + 0}')
    if [ "$1" = floor ]; then floor=$srv; elif [ -z "$base" ]; then base=$rate; fi
    local label=${3//-/ } vs_one="–"
    [ "$1" = floor ] || vs_one=$(awk -v r="$rate" -v b="$base" 'BEGIN {printf "%.2fx", r / b}')
    printf '| %s | %s | %.1f | %.2f ms | %.2f ms | %.2f | %.2f | %s | %s | %s | %.2fx |\n' "${label//+/ + }" "$2" "$rate" "$p50" "$p99" "$srv" "$gen" "$entries" "$failed" \
      "$vs_one" "$(awk -v s="$srv" -v f="$floor" 'BEGIN {print s / f}')"
  done
  echo
  echo "## burst: 10 frames written back-to-back by one client, spread of their arrival at its peer (target: within 1 ms)"
  target/release/burst --spawn single --rounds "${ROUNDS:-200}"
  target/release/burst --spawn three --rounds "${ROUNDS:-200}" | tail -n +3
  echo
  echo "## joins through Raft (three nodes, ${DURATION}s per row; target >= 10 000/s at 64 at once, sequential p50 < 1 ms)"
  target/release/clusterbench joins --duration "$DURATION" --concurrency 16 --concurrency 64
  echo
  echo "## the same joins with two learners added (target: latency within 10 % of three nodes)"
  target/release/clusterbench joins --duration "$DURATION" --learners 2
}

turn() {
  if ! command -v turnserver >/dev/null || ! command -v turnutils_uclient >/dev/null; then
    echo "installing coturn (the reference server and its clients)"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq coturn >/dev/null
  fi
  cargo build --release -q -p switchboard -p cluster-tests --bin switchboard --bin turnbench
  ulimit -n "$(ulimit -Hn)"
  target/release/turnbench --switchboard target/release/switchboard --seconds "${SECONDS_PER_RUN:-12}" \
    --saturating-runs "${SATURATING_RUNS:-5}" "$@"
  echo
  target/release/turnbench --switchboard target/release/switchboard --idle-allocations "${IDLE_ALLOCATIONS:-10000}"
}

limiter() {
  cargo build --release -q -p cluster-tests --bin limiterbench
  target/release/limiterbench
}

case "$what" in
  signaling) signaling "$@" ;;
  cluster) cluster "$@" ;;
  turn) turn "$@" ;;
  calls) calls "$@" ;;
  limiter) limiter "$@" ;;
  *) echo "usage: scripts/bench.sh signaling [ROOMS...] | cluster | calls | turn | limiter" >&2; exit 2 ;;
esac
