#!/usr/bin/env bash
# Starts node N of the local cluster (configs/nodeN.toml, 127.0.0.N; 4 and 5 are provided) with
# an empty data directory and adds it through the leader's admin API, as a learner (serves
# clients, signaling and TURN; commits do not wait for it) or as a voter.
#   scripts/add-node.sh N [learner|voter]      (default: learner)
set -euo pipefail
source "$(dirname "$0")/cluster-common.sh"
n=${1:?usage: scripts/add-node.sh N [learner|voter]}
role=${2:-learner}
case "$role" in learner|voter) ;; *) echo "role is learner or voter, not $role" >&2; exit 2 ;; esac
[ -f "$ROOT/configs/node$n.toml" ] || { echo "no configs/node$n.toml" >&2; exit 2; }
build
running "$n" || rm -rf "${DATA:?}/node$n"
start_node "$n"
wait_healthy "$n"
add_member "$n" "$role"
wait_ready "$n"
echo "node $n is a $role: http://127.0.0.$n:8083/"
