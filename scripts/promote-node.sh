#!/usr/bin/env bash
# Makes learner N of the local cluster a voter (through the leader's admin API).
#   scripts/promote-node.sh N
set -euo pipefail
source "$(dirname "$0")/cluster-common.sh"
n=${1:?usage: scripts/promote-node.sh N}
l=$(leader)
[ -n "$l" ] || { echo "no leader" >&2; exit 1; }
curl -sf -m 30 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.$l:8083/admin/cluster/nodes/$n/promote" && echo
