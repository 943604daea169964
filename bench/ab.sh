#!/usr/bin/env bash
# A/B of two builds of our binaries on the lazy pull and lazy read
# benchmarks, alternating A and B within each run (same machine, same
# cached image), so that a refactor can be shown not to regress.
#
#   bench/ab.sh A_DIR B_DIR [RUNS=3]
#
# A_DIR and B_DIR each hold release builds of rsnap, remote-snapshotter and
# wanproxy. Cases: lazy_pull.sh `lazy` on loopback and the WAN profile, and
# lazyfs_read.sh (all its cases). Every run's table rows are printed under a
# `### run N A|B` header.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
A="${1:?usage: ab.sh A_DIR B_DIR [RUNS]}"
B="${2:?usage: ab.sh A_DIR B_DIR [RUNS]}"
RUNS="${3:-3}"
with() { # DIR CMD...: run CMD with that build's binaries
  local d="$1"; shift
  RSNAP="$d/rsnap" DAEMON="$d/remote-snapshotter" WANPROXY="$d/wanproxy" "$@"
}
for r in $(seq 1 "$RUNS"); do
  for side in A B; do
    d="$A"; [ "$side" = B ] && d="$B"
    echo "### run $r $side lazy_pull ($d)"
    CASES=lazy NETS="loopback wan" with "$d" "$repo/bench/lazy_pull.sh" 1 2>&1 | grep '^|' || true
  done
  for side in A B; do
    d="$A"; [ "$side" = B ] && d="$B"
    echo "### run $r $side lazyfs_read ($d)"
    with "$d" "$repo/bench/lazyfs_read.sh" 1 2>&1 | grep '^|' || true
  done
done
