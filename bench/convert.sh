#!/usr/bin/env bash
# Conversion benchmark: `rsnap convert` against the Go reference
# `ctr-remote image convert --estargz --oci`, same input, same gzip level and
# chunk size, same machine, same run. Input: a Debian bookworm minbase
# rootfs (debootstrap, ~200 MB unpacked) as a one-layer OCI image.
#
#   bench/convert.sh            # LEVEL=9 RUNS=3 by default
#   LEVEL=6 RUNS=5 bench/convert.sh
#
# The rootfs is cached in BENCH_CACHE (default /var/tmp/rsnap-bench); times
# are wall-clock seconds of the conversion command only (for ctr-remote the
# image is imported into a private containerd first, untimed).
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

LEVEL="${LEVEL:-9}"
RUNS="${RUNS:-3}"
CHUNK="${CHUNK:-4194304}"
EXTRA_PACKAGES=debootstrap "$repo/scripts/install-deps.sh"
# shellcheck source=bench/bench-lib.sh
. "$repo/bench/bench-lib.sh"
rsnap="$(bench_rsnap)"
ensure_minbase
rootfs="$BENCH_CACHE/rootfs"

lib_init
S="$LIB_SCRATCH"
log "input image (gzip -6 layer)"
GZIP_LEVEL=6 "$repo/scripts/oci-from-dir.sh" "$S/oci" v1 '["/bin/bash"]' "$rootfs" >/dev/null
in_layer="$(jq -r '.manifests[0].digest' "$S/oci/index.json" | cut -d: -f2)"
in_layer="$(jq -r '.layers[0].digest' "$S/oci/blobs/sha256/$in_layer")"
in_size="$(stat -c %s "$S/oci/blobs/sha256/${in_layer#sha256:}")"
unpacked="$(gzip -dc "$S/oci/blobs/sha256/${in_layer#sha256:}" | wc -c)"

start_containerd "$S/containerd"
tar -C "$S/oci" -cf "$S/img.tar" .
ctrd images import --no-unpack --base-name bench/src "$S/img.tar" >/dev/null

load="$(loadavg)"
go_times=(); rs_times=(); go_cpu=(); rs_cpu=()
for i in $(seq "$RUNS"); do
  log "run $i/$RUNS: ctr-remote"
  ctrd images rm --sync "bench/go:$i" >/dev/null 2>&1 || true
  read -r w c < <(timed ctr-remote -a "$CTRD_SOCK" -n demo image convert --estargz --oci \
    --estargz-compression-level "$LEVEL" --estargz-chunk-size "$CHUNK" bench/src:v1 "bench/go:$i")
  go_times+=("$w"); go_cpu+=("$c")

  log "run $i/$RUNS: rsnap"
  rm -rf "$S/out"
  read -r w c < <(timed "$rsnap" convert --compression-level "$LEVEL" --chunk-size "$CHUNK" \
    "oci:$S/oci:v1" "oci:$S/out:v1")
  rs_times+=("$w"); rs_cpu+=("$c")
done

go_manifest="$(ctrd images ls "name==bench/go:1" | awk 'NR==2 {print $3}')"
go_size="$(ctrd content get "$go_manifest" | jq '.layers[0].size')"
rs_manifest="$(jq -r '.manifests[0].digest' "$S/out/index.json")"
rs_size="$(jq '.layers[0].size' "$S/out/blobs/sha256/${rs_manifest#sha256:}")"

go_med="$(printf '%s\n' "${go_times[@]}" | median)"
rs_med="$(printf '%s\n' "${rs_times[@]}" | median)"
go_cpu_med="$(printf '%s\n' "${go_cpu[@]}" | median)"
rs_cpu_med="$(printf '%s\n' "${rs_cpu[@]}" | median)"
cpu="$(cpu_model)"

cat <<MD

Date: $(date -u +%Y-%m-%d), machine: $(nproc) CPUs, $cpu, $(uname -r), load average before: $load
Input: debootstrap --variant=minbase bookworm, one layer, $unpacked bytes unpacked, $in_size bytes gzip -6.
Settings: gzip level $LEVEL, chunk size $CHUNK, $RUNS runs (median; all runs in brackets).

| converter | wall time (s) | CPU time (s) | output layer (bytes) | vs input |
|---|---|---|---|---|
| ctr-remote 0.12 (Go) | $go_med [${go_times[*]}] | $go_cpu_med [${go_cpu[*]}] | $go_size | $(awk -v a="$go_size" -v b="$in_size" 'BEGIN {printf "%+.2f%%", (a / b - 1) * 100}') |
| rsnap convert | $rs_med [${rs_times[*]}] | $rs_cpu_med [${rs_cpu[*]}] | $rs_size | $(awk -v a="$rs_size" -v b="$in_size" 'BEGIN {printf "%+.2f%%", (a / b - 1) * 100}') |

rsnap / Go: wall time $(awk -v a="$rs_med" -v b="$go_med" 'BEGIN {printf "%.2f", a / b}'), CPU time $(awk -v a="$rs_cpu_med" -v b="$go_cpu_med" 'BEGIN {printf "%.2f", a / b}'), size $(awk -v a="$rs_size" -v b="$go_size" 'BEGIN {printf "%+.2f%%", (a / b - 1) * 100}')
MD
