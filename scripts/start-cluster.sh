#!/usr/bin/env bash
# Builds Switchboard and starts the local cluster (node N on 127.0.0.N, same ports, like
# separate hosts): three voters, and with `5` two learners (nodes 4 and 5) that serve clients like
# the others while commits wait only for the voters. On the first start node 1 creates the Raft
# group and the learners are added through the admin API. Waits until every node is ready, then
# prints where to point browsers.
#   scripts/start-cluster.sh [3|5]
set -euo pipefail
source "$(dirname "$0")/cluster-common.sh"
count=${1:-3}
case "$count" in 3|5) ;; *) echo "usage: scripts/start-cluster.sh [3|5]" >&2; exit 2 ;; esac
build
for n in 1 2 3; do start_node "$n"; done
for n in 1 2 3; do wait_healthy "$n"; done
for n in 1 2 3; do wait_ready "$n"; done
if [ "$count" = 5 ]; then
  for n in 4 5; do
    if running "$n"; then continue; fi
    # A learner that ran before keeps its place in the group; a new one joins.
    fresh=$([ -d "$DATA/node$n/raft" ] && echo no || echo yes)
    start_node "$n"
    wait_healthy "$n"
    [ "$fresh" = no ] || add_member "$n" learner
    wait_ready "$n"
  done
fi
room=$(printf '%06d' $((RANDOM * 32768 % 1000000 + RANDOM % 1000)))
echo
echo "Switchboard cluster is up:"
for n in $(seq "$count"); do echo "  node $n  http://127.0.0.$n:8083/r/$room"; done
echo "Open two of these in two browsers; kill a node with scripts/kill-node.sh N."
echo "Status: scripts/cluster-status.sh   Stop: scripts/stop-cluster.sh"
