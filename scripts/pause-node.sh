#!/usr/bin/env bash
# Pauses node N of the local cluster (SIGSTOP) for SECONDS, then resumes it (SIGCONT): to the
# other nodes it looks like a long GC pause or a stopped VM. Past cluster.node_down_after_ms it is
# declared down; once resumed it registers its sockets again and is live within about a second.
#   scripts/pause-node.sh N SECONDS
set -euo pipefail
source "$(dirname "$0")/cluster-common.sh"
n=${1:?usage: scripts/pause-node.sh N SECONDS}
secs=${2:?usage: scripts/pause-node.sh N SECONDS}
running "$n" || { echo "node $n is not running" >&2; exit 1; }
pid=$(pid_of "$n")
trap 'kill -CONT "$pid" 2>/dev/null || true' EXIT
kill -STOP "$pid"
echo "node $n paused (pid $pid) for ${secs}s"
sleep "$secs"
kill -CONT "$pid"
echo "node $n resumed"
