#!/usr/bin/env bash
# Installs what Switchboard's tests use from Debian: headless Chromium and its WebDriver for the
# browser tests, coturn's turnutils_* as reference TURN clients, systemd-analyze to check the unit
# file, Prometheus and promtool to check the alert rules and scrape a node, iproute2/nftables/
# iptables for network namespaces and NAT, strace to slow a node's system calls (ordering tests),
# podman, runc and debootstrap to build and run the container image; from crates.io
# cargo-nextest (the test runner) and cargo-deny (the dependency policy in deny.toml). Safe to run
# again: it only installs what is missing.
set -euo pipefail

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v turnutils_uclient >/dev/null || need+=(coturn)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v iptables >/dev/null || need+=(iptables)
command -v curl >/dev/null || need+=(curl)
command -v strace >/dev/null || need+=(strace)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null && podman=1 || podman=0
command -v cargo-nextest >/dev/null && nextest=1 || nextest=0
command -v cargo-deny >/dev/null && deny=1 || deny=0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
if [ ${#need[@]} -gt 0 ] || [ "$podman" -eq 0 ]; then
  $sudo apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$podman" -eq 0 ]; then
  # With its recommended packages (network backend, storage helpers), as a user would install it.
  echo "installing: podman runc debootstrap"
  $sudo apt-get install -y -qq podman runc debootstrap >/dev/null
fi
if [ "$nextest" -eq 0 ]; then
  cargo install --locked cargo-nextest
fi
if [ "$deny" -eq 0 ]; then
  cargo install --locked cargo-deny
fi
