#!/usr/bin/env bash
# Breaks the local cluster's links for SECONDS with nftables rules on loopback (its own table,
# deleted afterwards), then heals them. Needs root; it changes this machine's firewall rules
# while it runs, only for the nodes' cluster port (7000) on 127.0.0.1-3.
#   scripts/cut-link.sh isolate N SECONDS        node N cut off from the others, both ways
#   scripts/cut-link.sh oneway FROM TO SECONDS   FROM cannot reach TO's cluster port (TO still reaches FROM)
#   scripts/cut-link.sh loss N PERCENT SECONDS   PERCENT of node N's cluster-link packets dropped
set -euo pipefail
port=${SWITCHBOARD_CLUSTER_PORT:-7000}
table=switchboard_faults
rule() { nft add rule inet "$table" out "$@"; }
heal() { nft delete table inet "$table" 2>/dev/null || true; }
usage() { sed -n '2,9p' "$0" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "cut-link.sh changes nftables rules: run it as root" >&2; exit 1; }
heal
trap heal EXIT
nft add table inet "$table"
nft add chain inet "$table" out '{ type filter hook output priority 0 ; }'
case "${1:-}" in
  isolate)
    n=${2:?}; secs=${3:?}
    for m in 1 2 3; do
      [ "$m" = "$n" ] && continue
      for d in dport sport; do
        rule ip saddr "127.0.0.$n" ip daddr "127.0.0.$m" tcp "$d" "$port" drop
        rule ip saddr "127.0.0.$m" ip daddr "127.0.0.$n" tcp "$d" "$port" drop
      done
    done
    echo "node $n cut off from the others for ${secs}s" ;;
  oneway)
    from=${2:?}; to=${3:?}; secs=${4:?}
    rule ip saddr "127.0.0.$from" ip daddr "127.0.0.$to" tcp dport "$port" drop
    echo "node $from cannot reach node $to for ${secs}s (node $to still reaches node $from)" ;;
  loss)
    n=${2:?}; pct=${3:?}; secs=${4:?}
    for a in saddr daddr; do
      for d in dport sport; do
        rule ip "$a" "127.0.0.$n" tcp "$d" "$port" numgen random mod 100 \< "$pct" drop
      done
    done
    echo "${pct}% of node $n's cluster-link packets dropped for ${secs}s" ;;
  *) usage ;;
esac
sleep "$secs"
echo "healed"
