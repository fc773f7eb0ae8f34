#!/usr/bin/env bash
# The one command that runs every Switchboard test: installs the tools the tests drive (Chromium,
# chromedriver, coturn's clients), builds the workspace, then runs unit tests and the black-box
# tests that start real node processes, browsers and TURN clients.
#   scripts/test.sh              everything
#   scripts/test.sh t11_         only tests whose name matches (nextest filter)
#   scripts/test.sh container    only the container image (scripts/container-test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
# Dependency policy (deny.toml): licences, banned crates, crates.io only. Advisories need the
# RustSec database, fetched from GitHub: checked when it is reachable, said when it is not.
cargo deny --locked check licenses bans sources
if timeout 10 git ls-remote https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  cargo deny --locked check advisories
else
  echo "cargo deny: advisories not checked (the RustSec database on GitHub is unreachable from here)"
fi
cargo build --workspace --all-targets --locked
export SWITCHBOARD_BIN="$PWD/target/debug/switchboard"
if [ "${1:-}" = container ]; then
  exec scripts/container-test.sh
fi
status=0
cargo nextest run --workspace --locked --no-fail-fast --profile ci "$@" || status=$?
# The container image is built and run after the other tests: its build takes both cores, which
# would starve the timing-sensitive cluster tests beside it.
if [ $# -eq 0 ]; then
  scripts/container-test.sh || status=1
fi
exit $status
