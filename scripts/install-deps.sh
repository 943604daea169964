#!/usr/bin/env bash
# Install (idempotently) the Debian packages the tests, the demo and the
# benchmark use, and make sure FUSE and overlayfs are available.
# Needs root on Debian bookworm; touches nothing when all is present.
set -euo pipefail

PACKAGES=(
  containerd runc docker-registry skopeo stargz-snapshotter busybox-static
  fuse3 protobuf-compiler jq debootstrap ca-certificates gzip tar
  containernetworking-plugins iproute2
  # containerd's own snapshotter test suite (Go, built offline from Debian's
  # sources by bins/remote-snapshotter/tests/containerd_testsuite.rs)
  golang-go golang-github-containerd-containerd-dev
)
# Extra packages for the benchmark/demo are requested with EXTRA_PACKAGES.
read -r -a EXTRA <<<"${EXTRA_PACKAGES:-}"

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: must run as root (it installs packages, mounts FUSE)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}" "${EXTRA[@]}"; do
  [ -n "$p" ] || continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Kernel pieces: a container may already have them built in.
grep -qw fuse /proc/filesystems || modprobe fuse || true
grep -qw overlay /proc/filesystems || modprobe overlay || true
[ -e /dev/fuse ] || { echo "install-deps: /dev/fuse is missing" >&2; exit 1; }
grep -qw overlay /proc/filesystems || { echo "install-deps: no overlayfs in this kernel" >&2; exit 1; }

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
