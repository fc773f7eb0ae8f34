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
