#!/usr/bin/env bash
# Stops every node of the local cluster with SIGTERM (each drains: hands leadership over and
# tells its sockets to reconnect elsewhere) and waits for them to exit.
set -euo pipefail
source "$(dirname "$0")/cluster-common.sh"
for n in 1 2 3 4 5; do
  if running "$n"; then kill -TERM "$(pid_of "$n")"; echo "node $n: SIGTERM"; fi
done
for n in 1 2 3 4 5; do
  for _ in $(seq 300); do running "$n" || break; sleep 0.1; done
  if running "$n"; then kill -KILL "$(pid_of "$n")"; echo "node $n did not exit in 30 s: killed"; fi
  rm -f "$DATA/node$n.pid"
done
echo "cluster stopped"
