#!/usr/bin/env bash
# Kills node N of the local cluster with SIGKILL, as a crash would. Bring it back with
# scripts/restart-node.sh N.
set -euo pipefail
source "$(dirname "$0")/cluster-common.sh"
n=${1:?usage: scripts/kill-node.sh N}
if running "$n"; then
  kill -KILL "$(pid_of "$n")"
  echo "node $n killed (pid $(pid_of "$n"))"
else
  echo "node $n is not running"
fi
