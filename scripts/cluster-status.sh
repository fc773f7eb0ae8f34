#!/usr/bin/env bash
# Prints the local cluster's state as each node sees it: role, leader, term, last applied log
# index, rooms, sockets bound per node, and a digest of the replicated state (equal on nodes that
# have applied the same log).
set -euo pipefail
source "$(dirname "$0")/cluster-common.sh"
printf '%-5s %-9s %-7s %-5s %-8s %-6s %-20s %-17s %s\n' node role leader term applied rooms "bindings (1/../5)" digest links
for n in 1 2 3 4 5; do
  # Nodes 4 and 5 (learners) only when they were started.
  [ "$n" -le 3 ] || [ -f "$DATA/node$n.pid" ] || continue
  if ! s=$(curl -sf -m 2 -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.$n:8083/admin/cluster/status"); then
    printf '%-5s %s\n' "$n" "down"
    continue
  fi
  python3 - "$s" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
b = {m["id"]: m["bindings"] for m in s["members"]}
links = " ".join(f'{m["id"]}:{"up" if m["link_up"] else "DOWN"}{"" if m["up"] else "(declared down)"}' for m in s["members"])
role = s["state"] if any(m["id"] == s["node"] and m["voter"] for m in s["members"]) else "Learner"
print(f'{s["node"]:<5} {role:<9} {str(s["leader"]):<7} {s["term"]:<5} {str(s["last_applied"]):<8} {s["rooms"]:<6} {"/".join(str(b.get(i, "-")) for i in (1, 2, 3, 4, 5)):<20} {s["digest"]:<17} {links}')
PY
done
