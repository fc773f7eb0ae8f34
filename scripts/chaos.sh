#!/usr/bin/env bash
# A long chaos run: whole AppRTC calls across three release-built nodes while a seeded random
# schedule of faults runs (kills, slow restarts, pauses, partitions both ways and one way, loss
# on a cluster link), then every rule checked (see cluster-tests/src/chaos.rs). The seed is
# printed at the start and the end; give it again to replay the same schedule.
#   scripts/chaos.sh SECONDS [SEED]      e.g. scripts/chaos.sh 600
# Needs root: the run makes its own network namespace for its nftables rules.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:?usage: scripts/chaos.sh SECONDS [SEED]}
seed=${2:-}
scripts/install-test-deps.sh
cargo build --release -q --workspace
export SWITCHBOARD_BIN="$PWD/target/release/switchboard"
export CHAOS_SECS="$secs"
if [ -n "$seed" ]; then export CHAOS_SEED="$seed"; fi
exec cargo test --release -q -p cluster-tests --test t60_chaos -- --nocapture --test-threads=1
