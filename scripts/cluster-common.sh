# Shared by the cluster scripts: where the binary, data, logs and pids of node N live.
# Node N uses configs/nodeN.toml (127.0.0.N), data/nodeN/, data/nodeN.log, data/nodeN.pid.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE=${SWITCHBOARD_PROFILE:-release}
BIN=${SWITCHBOARD_BIN:-$ROOT/target/$PROFILE/switchboard}
DATA=${SWITCHBOARD_DATA:-$ROOT/data}
ADMIN_TOKEN=${SWITCHBOARD_ADMIN_TOKEN:-switchboard-local-admin}

build() {
  if [ "$PROFILE" = release ]; then
    cargo build --release -q -p switchboard --manifest-path "$ROOT/Cargo.toml"
  else
    cargo build -q -p switchboard --manifest-path "$ROOT/Cargo.toml"
  fi
}

pid_of() { cat "$DATA/node$1.pid" 2>/dev/null || true; }

running() {
  local pid; pid=$(pid_of "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

start_node() {
  local n=$1
  if running "$n"; then echo "node $n already running (pid $(pid_of "$n"))"; return; fi
  mkdir -p "$DATA"
  "$BIN" --config "$ROOT/configs/node$n.toml" --set "node.data_dir=\"$DATA/node$n\"" \
    >>"$DATA/node$n.log" 2>&1 &
  echo $! >"$DATA/node$n.pid"
  echo "node $n started (pid $!, log $DATA/node$n.log)"
}

wait_healthy() {
  local n=$1
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.$n:8083/healthz" >/dev/null && return 0
    running "$n" || { echo "node $n exited; see $DATA/node$n.log" >&2; tail -5 "$DATA/node$n.log" >&2; return 1; }
    sleep 0.1
  done
  echo "node $n not healthy after 20 s" >&2
  return 1
}

wait_ready() {
  local n=$1
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.$n:8083/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "node $n not ready after 30 s (no leader?)" >&2
  return 1
}

# leader: the id of the Raft leader as the first node that answers sees it.
leader() {
  local n s
  for n in 1 2 3 4 5; do
    if s=$(curl -sf -m 2 -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.$n:8083/admin/cluster/status"); then
      python3 -c 'import json, sys; l = json.loads(sys.argv[1])["leader"]; print(l if l is not None else "")' "$s"
      return
    fi
  done
}

# add_member N ROLE: asks the leader to add node N (running, empty data directory) as ROLE.
add_member() {
  local n=$1 role=$2 l
  for _ in $(seq 100); do
    l=$(leader)
    [ -n "$l" ] && break
    sleep 0.1
  done
  [ -n "$l" ] || { echo "no leader to add node $n" >&2; return 1; }
  curl -sf -m 30 -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d "{\"id\":$n,\"raft_addr\":\"127.0.0.$n:7000\",\"public_url\":\"http://127.0.0.$n:8083\",\"role\":\"$role\"}" \
    "http://127.0.0.$l:8083/admin/cluster/nodes" && echo
}
