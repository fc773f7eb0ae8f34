#!/usr/bin/env bash
# (Re)starts node N of the local cluster with its data directory: a killed node catches up from
# its log or a snapshot and serves again. A running node is stopped with SIGTERM first.
set -euo pipefail
source "$(dirname "$0")/cluster-common.sh"
n=${1:?usage: scripts/restart-node.sh N}
if running "$n"; then
  kill -TERM "$(pid_of "$n")"
  for _ in $(seq 300); do running "$n" || break; sleep 0.1; done
fi
[ -x "$BIN" ] || build
start_node "$n"
wait_healthy "$n"
wait_ready "$n"
echo "node $n is ready"
