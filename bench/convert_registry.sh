#!/usr/bin/env bash
# Registry-to-registry conversion (issue #3): `rsnap convert SRC_REF DST_REF`
# against what a user of the Go reference does for the same job:
# `ctr-remote images pull` + `ctr-remote image convert --estargz --oci` +
# `ctr-remote images push`, through a private containerd. Same input (the
# debootstrap minbase rootfs as a one-layer gzip image in a local
# docker-registry), same gzip level and chunk size, runs alternating.
#
#   bench/convert_registry.sh            # LEVEL=9 RUNS=3 by default
#
# Each run pushes to a fresh repository so nothing is skipped as already
# present; for the Go side the source image is removed from containerd
# (`images rm --sync`) before each run, so its pull is cold too.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
LEVEL="${LEVEL:-9}"
RUNS="${RUNS:-3}"
CHUNK="${CHUNK:-4194304}"
EXTRA_PACKAGES="debootstrap curl" "$repo/scripts/install-deps.sh"
# shellcheck source=bench/bench-lib.sh
. "$repo/bench/bench-lib.sh"
rsnap="$(bench_rsnap)"
ensure_minbase
rootfs="$BENCH_CACHE/rootfs"

lib_init
S="$LIB_SCRATCH"
log "input image (gzip -6 layer) in a local registry"
GZIP_LEVEL=6 "$repo/scripts/oci-from-dir.sh" "$S/oci" v1 '["/bin/bash"]' "$rootfs" >/dev/null
start_registry "$S/registry"
skopeo copy --quiet --dest-tls-verify=false "oci:$S/oci:v1" "docker://$REGISTRY/bench/src:v1"
SRC="$REGISTRY/bench/src:v1"
in_size="$(du -b "$S/oci/blobs/sha256" | cut -f1)"
start_containerd "$S/containerd"
cr() { ctr-remote -a "$CTRD_SOCK" -n demo "$@"; }

go_job() { # N
  cr images pull --plain-http "$SRC" >/dev/null &&
    cr image convert --estargz --oci --estargz-compression-level "$LEVEL" \
      --estargz-chunk-size "$CHUNK" "$SRC" "$REGISTRY/bench/go-$1:v1" >/dev/null &&
    cr images push --plain-http "$REGISTRY/bench/go-$1:v1" >/dev/null
}
rs_job() { # N
  "$rsnap" convert --compression-level "$LEVEL" --chunk-size "$CHUNK" \
    "$SRC" "$REGISTRY/bench/rs-$1:v1"
}
layer_size() { # REPO
  curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REGISTRY/v2/$1/manifests/v1" | jq '[.layers[].size] | add'
}

load="$(loadavg)"
go_times=(); rs_times=(); go_cpu=(); rs_cpu=()
for i in $(seq "$RUNS"); do
  log "run $i/$RUNS: ctr-remote pull + convert + push"
  cr images rm --sync "$SRC" "$REGISTRY/bench/go-$((i - 1)):v1" >/dev/null 2>&1 || true
  read -r w c < <(timed go_job "$i")
  go_times+=("$w"); go_cpu+=("$c")
  log "run $i/$RUNS: rsnap convert registry to registry"
  read -r w c < <(timed rs_job "$i")
  rs_times+=("$w"); rs_cpu+=("$c")
done
go_size="$(layer_size bench/go-1)"
rs_size="$(layer_size bench/rs-1)"
# Both results must be real images: pull each back and check the layer.
skopeo copy --quiet --src-tls-verify=false "docker://$REGISTRY/bench/rs-1:v1" "oci:$S/check:v1"
"$rsnap" toc --verify "$S/check/blobs/sha256/$(jq -r '.layers[0].digest' \
  "$S/check/blobs/sha256/$(jq -r '.manifests[0].digest' "$S/check/index.json" | cut -d: -f2)" | cut -d: -f2)" >/dev/null

go_med="$(printf '%s\n' "${go_times[@]}" | median)"
rs_med="$(printf '%s\n' "${rs_times[@]}" | median)"
go_cpu_med="$(printf '%s\n' "${go_cpu[@]}" | median)"
rs_cpu_med="$(printf '%s\n' "${rs_cpu[@]}" | median)"
cat <<MD

Date: $(date -u +%Y-%m-%d), machine: $(nproc) CPUs, $(cpu_model), $(uname -r), load average before: $load
Input: $SRC, one gzip -6 layer of the debootstrap minbase rootfs ($in_size bytes of blobs).
Settings: gzip level $LEVEL, chunk size $CHUNK, $RUNS runs (median; all runs in brackets).

| job | wall time (s) | CPU time (s) | output layer (bytes) |
|---|---|---|---|
| ctr-remote 0.12: images pull + image convert + images push | $go_med [${go_times[*]}] | $go_cpu_med [${go_cpu[*]}] | $go_size |
| rsnap convert REF REF | $rs_med [${rs_times[*]}] | $rs_cpu_med [${rs_cpu[*]}] | $rs_size |

rsnap / Go: wall time $(ratio "$rs_med" "$go_med"), CPU time $(ratio "$rs_cpu_med" "$go_cpu_med") (Go's CPU leaves out the containerd daemon's share), size $(pct "$rs_size" "$go_size")
MD
