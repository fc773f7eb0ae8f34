#!/usr/bin/env bash
# Builds Switchboard and starts the local three-node cluster (node N on 127.0.0.N, same ports,
# like three hosts). On the first start node 1 creates the Raft group. Waits until every node is
# ready, then prints where to point browsers.
set -euo pipefail
source "$(dirname "$0")/cluster-common.sh"
build
for n in 1 2 3; do start_node "$n"; done
for n in 1 2 3; do wait_healthy "$n"; done
for n in 1 2 3; do wait_ready "$n"; done
room=$(printf '%06d' $((RANDOM * 32768 % 1000000 + RANDOM % 1000)))
echo
echo "Switchboard cluster is up:"
for n in 1 2 3; do echo "  node $n  http://127.0.0.$n:8083/r/$room"; done
echo "Open two of these in two browsers; kill a node with scripts/kill-node.sh N."
echo "Status: scripts/cluster-status.sh   Stop: scripts/stop-cluster.sh"
