#!/usr/bin/env bash
# Builds the Switchboard image from ./Containerfile with podman and runs it as a user would: host
# networking, a config file mounted read-only, a data volume. Checks that the node serves rooms,
# STUN and its health endpoints, runs unprivileged, keeps its data on the volume and drains on
# `podman stop`. Part of scripts/test.sh; on its own: scripts/container-test.sh
#
# No registry is reachable from the test machine, so the two base images the Containerfile names
# are made here: a Debian bookworm root from debootstrap (Debian's mirror is reachable), and the
# machine's own Rust toolchain and crate cache mounted into the build stage read-only.
#   PROFILE=release scripts/container-test.sh   builds the release profile (the image's default;
#                                               the test builds dev, which takes half the time)
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-dev}"
work="$PWD/target/container"
tag="localhost/switchboard:test"
base="localhost/switchboard-test/bookworm:latest"
name="switchboard-test-$$"
mkdir -p "$work"

# This machine's container runtime needs a few flags a normal host does not: cgroups v1 with
# crun's hybrid-mode refusal (runc instead), and a descriptor limit no higher than the hard one.
nofile=$(ulimit -Hn)
podman=(podman --runtime runc --cgroup-manager cgroupfs)
run_flags=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=8192:8192)

fail() { echo "container-test: FAIL: $*" >&2; "${podman[@]}" logs "$name" 2>&1 | tail -40 >&2 || true; exit 1; }
cleanup() {
  "${podman[@]}" rm -f "$name" >/dev/null 2>&1 || true
  "${podman[@]}" volume rm -f "$name-data" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# 1. Base images (cached in target/container across runs).
if ! "${podman[@]}" image exists "$base"; then
  root="$work/rootfs"
  if [ ! -x "$root/usr/bin/gcc" ]; then
    rm -rf "$root"
    echo "container-test: debootstrap bookworm (gcc for crates that build C, ca-certificates)"
    debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates bookworm "$root" \
      http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; exit 1; }
  fi
  tar -C "$root" -c . | "${podman[@]}" import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    - "$base" >/dev/null
fi

# 2. The image, built by the Containerfile's own steps.
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
echo "container-test: building $tag (profile $PROFILE)"
start=$(date +%s)
"${podman[@]}" build -f Containerfile -t "$tag" \
  --build-arg RUST_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" --build-arg PROFILE="$PROFILE" \
  --network host --ulimit "nofile=$nofile:$nofile" \
  --volume "$rustup_home:/usr/local/rustup:ro" --volume "$cargo_home/bin:/usr/local/cargo/bin:ro" \
  --volume "$cargo_home/registry:/usr/local/cargo/registry" \
  . >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; fail "podman build"; }
echo "container-test: built in $(( $(date +%s) - start )) s"

# 3. Run it as the deployment guide says: host networking, config read-only, data on a volume.
port=$(( 20000 + RANDOM % 10000 ))
turn=$(( port + 1 ))
raft=$(( port + 2 ))
cat >"$work/node.toml" <<EOF
[http]
listen = "127.0.0.1:$port"
[turn]
listen = ["127.0.0.1:$turn"]
relay_ip = "127.0.0.1"
[ice]
turn_secret = "container-test-secret"
[cluster]
# A one-node Raft group, so that the node keeps its log and snapshots in the data volume.
enabled = true
bootstrap = true
listen = "127.0.0.1:$raft"
public_url = "http://127.0.0.1:$port"
secret = "container-test-cluster-secret"
admin_token = "container-test-admin"
peers = [{ id = 1, raft_addr = "127.0.0.1:$raft", public_url = "http://127.0.0.1:$port" }]
EOF
base_url="http://127.0.0.1:$port"
# run_node WHAT: a container of the image on the config and the data volume, then ready.
run_node() {
  "${podman[@]}" run -d --name "$name" --network host "${run_flags[@]}" \
    -v "$work/node.toml:/etc/switchboard/node.toml:ro" -v "$name-data:/var/lib/switchboard" \
    "$tag" --config /etc/switchboard/node.toml >/dev/null || fail "podman run ($1)"
  for _ in $(seq 100); do
    curl -fsS "$base_url/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  fail "the node never became ready ($1)"
}
"${podman[@]}" volume create "$name-data" >/dev/null
run_node first

# 4. What it serves.
uid=$("${podman[@]}" exec "$name" id -u)
[ "$uid" = 10001 ] || fail "runs as uid $uid, not the unprivileged 10001"
room="ct$RANDOM$RANDOM"
join=$(curl -fsS -X POST "$base_url/join/$room")
echo "$join" | grep -q '"result": *"SUCCESS"' || fail "join answered $join"
# Output is captured before grep -q reads it: with pipefail, a writer cut off early fails the check.
page=$(curl -fsS "$base_url/r/$room")
grep -q "<video" <<<"$page" || fail "the web client page is not served"
turnutils_stunclient -p "$turn" 127.0.0.1 >"$work/stun.log" 2>&1 || { cat "$work/stun.log"; fail "STUN binding"; }
grep -q "UDP reflexive addr: 127.0.0.1" "$work/stun.log" || { cat "$work/stun.log"; fail "STUN answer"; }
data=$("${podman[@]}" exec "$name" ls -A /var/lib/switchboard)
[ -n "$data" ] || fail "nothing written to the data volume"

# 5. `podman stop` sends SIGTERM: the node drains and exits 0 well before podman's 10 s kill.
start=$(date +%s%N)
"${podman[@]}" stop -t 10 "$name" >/dev/null
took=$(( ($(date +%s%N) - start) / 1000000 ))
code=$("${podman[@]}" inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
[ "$took" -lt 9000 ] || fail "stop took $took ms: SIGTERM did not end the node, podman killed it"
"${podman[@]}" logs "$name" >"$work/node.log" 2>&1
grep -qi "SIGTERM: draining" "$work/node.log" || fail "no drain logged on SIGTERM"

# 6. A new container on the same volume carries on with the same state: the room joined above
#    still holds its first member, so the next person to join is not the initiator.
"${podman[@]}" rm "$name" >/dev/null
run_node second
join=$(curl -fsS -X POST "$base_url/join/$room")
echo "$join" | grep -q '"is_initiator": *"false"' || fail "after a restart on the same volume the room was lost: $join"

size=$("${podman[@]}" image inspect -f '{{.Size}}' "$tag")
echo "container-test: ok (uid 10001, join, web client, STUN, data volume, SIGTERM drain in $took ms, exit 0, state kept across containers; image $((size / 1048576)) MiB with a bookworm+gcc base)"
