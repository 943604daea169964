#!/usr/bin/env bash
# Formats: eStargz (gzip) against zstd:chunked on the 3-layer python image of
# bench/lazy_pull.sh (minbase rootfs, python3, 128 MiB app data):
#  1. conversion time and output size: rsnap convert to each format (and
#     zstd:chunked back to eStargz), and the Go reference ctr-remote 0.12
#     (--estargz / --zstdchunked) on the same input;
#  2. chunk decode speed: `rsnap toc --verify` of each layer (every chunk
#     read from a local file, decompressed and hashed), as MB/s of
#     uncompressed bytes;
#  3. cold read through `rsnap mount` from a docker-registry on loopback
#     (prefetch and background fetch off, page cache dropped): every file of
#     the image read once, MB/s.
#
#   RUNS=3 bench/formats.sh          # RSNAP=/path/to/rsnap skips the release build
#   ZLEVEL=3 GZLEVEL=9 (defaults: the writers' defaults)
# Prints markdown tables for docs/benchmarks.md ("Formats").
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
RUNS="${RUNS:-3}"
ZLEVEL="${ZLEVEL:-3}"
GZLEVEL="${GZLEVEL:-9}"
EXTRA_PACKAGES="debootstrap strace" "$repo/scripts/install-deps.sh"
# shellcheck source=bench/bench-lib.sh
. "$repo/bench/bench-lib.sh"
RSNAP="$(bench_rsnap)"
ensure_python_image

lib_init
S="$LIB_SCRATCH"
load_before="$(loadavg)"

# --- 1. conversion ----------------------------------------------------------
declare -A wall cpu size
conv() { # NAME CMD... : RUNS timed runs; the output of the last stays
  local name="$1" w=() c=()
  shift
  for i in $(seq "$RUNS"); do
    rm -rf "$S/out-$name"
    read -r a b < <(timed "$@")
    w+=("$a"); c+=("$b")
  done
  wall[$name]="$(printf '%s\n' "${w[@]}" | median) [${w[*]}]"
  cpu[$name]="$(printf '%s\n' "${c[@]}" | median)"
}
layout_size() { # DIR TAG -> sum of layer sizes
  local m
  m="$(jq -r --arg t "$2" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$1/index.json")"
  jq '[.layers[].size] | add' "$1/blobs/sha256/${m#sha256:}"
}

log "rsnap convert: estargz (gzip $GZLEVEL)"
conv esgz "$RSNAP" convert --compression-level "$GZLEVEL" "oci:$OCI:v1" "oci:$S/out-esgz:v1"
size[esgz]="$(layout_size "$S/out-esgz" v1)"
log "rsnap convert: zstd-chunked (level $ZLEVEL)"
conv zstd "$RSNAP" convert --compression zstd-chunked --oci --zstd-level "$ZLEVEL" "oci:$OCI:v1" "oci:$S/out-zstd:v1"
size[zstd]="$(layout_size "$S/out-zstd" v1)"
log "rsnap convert: zstd-chunked -> estargz"
conv back "$RSNAP" convert --compression-level "$GZLEVEL" "oci:$S/out-zstd:v1" "oci:$S/out-back:v1"
size[back]="$(layout_size "$S/out-back" v1)"
in_size="$(layout_size "$OCI" v1)"

log "ctr-remote (Go reference 0.12) on the same input"
start_containerd "$S/containerd"
# Only tag v1 in the imported index.
mkdir -p "$S/in"
cp -a "$OCI/oci-layout" "$S/in/"
jq '{schemaVersion, manifests: [.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "v1")]}' "$OCI/index.json" >"$S/in/index.json"
tar -C "$S/in" -cf "$S/img.tar" oci-layout index.json
tar -C "$OCI" -rf "$S/img.tar" blobs
ctrd images import --no-unpack --base-name bench/src "$S/img.tar" >/dev/null
go_conv() { # NAME FLAGS...
  local name="$1" w=() c=() i
  shift
  for i in $(seq "$RUNS"); do
    ctrd images rm --sync "bench/$name:$i" >/dev/null 2>&1 || true
    read -r a b < <(timed ctr-remote -a "$CTRD_SOCK" -n demo image convert "$@" --oci bench/src:v1 "bench/$name:$i")
    w+=("$a"); c+=("$b")
  done
  wall[$name]="$(printf '%s\n' "${w[@]}" | median) [${w[*]}]"
  cpu[$name]="$(printf '%s\n' "${c[@]}" | median)"
  local m
  m="$(ctrd images ls "name==bench/$name:1" | awk 'NR==2 {print $3}')"
  size[$name]="$(ctrd content get "$m" | jq '[.layers[].size] | add')"
}
go_conv go-esgz --estargz --estargz-compression-level "$GZLEVEL"
go_conv go-zstd --zstdchunked

# --- 2. decode speed ----------------------------------------------------------
declare -A dec
decode() { # NAME DIR: MB/s of uncompressed bytes over all layers, median of RUNS
  local name="$1" dir="$2" m layers total=0 t=() r l
  m="$(jq -r '.manifests[0].digest' "$dir/index.json")"
  mapfile -t layers < <(jq -r '.layers[] | .digest + " " + .annotations["io.containers.estargz.uncompressed-size"]' "$dir/blobs/sha256/${m#sha256:}")
  for l in "${layers[@]}"; do total=$((total + ${l#* })); done
  for r in $(seq "$RUNS"); do
    local t0 t1
    t0="$(now)"
    for l in "${layers[@]}"; do
      local d="${l%% *}"
      "$RSNAP" toc --quiet --verify "$dir/blobs/sha256/${d#sha256:}" 2>/dev/null
    done
    t1="$(now)"
    t+=("$(secs "$t0" "$t1")")
  done
  local med
  med="$(printf '%s\n' "${t[@]}" | median)"
  dec[$name]="$(awk -v b="$total" -v s="$med" 'BEGIN {printf "%.0f", b / s / 1e6}') MB/s ($med s for $total bytes; runs ${t[*]})"
}
log "decode speed"
decode esgz "$S/out-esgz"
decode zstd "$S/out-zstd"

# --- 3. cold read through rsnap mount -------------------------------------------
start_registry "$S/registry"
skopeo copy --quiet --dest-tls-verify=false "oci:$S/out-esgz:v1" "docker://$REGISTRY/bench/fmt:esgz"
skopeo copy --quiet --dest-tls-verify=false "oci:$S/out-zstd:v1" "docker://$REGISTRY/bench/fmt:zstd"
declare -A cold
mnt="$S/mnt"
mkdir -p "$mnt"
cold_read() { # TAG
  local tag="$1" t=() bytes=0 r
  for r in $(seq "$RUNS"); do
    "$RSNAP" mount --plain-http --noprefetch --no-background-fetch "$REGISTRY/bench/fmt:$tag" "$mnt" >"$S/mount.log" 2>&1 &
    local pid=$!
    LIB_PIDS+=("$pid")
    wait_for 60 mountpoint -q "$mnt" || { cat "$S/mount.log" >&2; exit 1; }
    drop_caches
    local t0 t1
    t0="$(now)"
    bytes="$(find "$mnt" -type f -print0 | xargs -0 cat | wc -c)"
    t1="$(now)"
    t+=("$(secs "$t0" "$t1")")
    kill -TERM "$pid"
    wait "$pid" || true
  done
  local med
  med="$(printf '%s\n' "${t[@]}" | median)"
  cold[$tag]="$(awk -v b="$bytes" -v s="$med" 'BEGIN {printf "%.0f", b / s / 1e6}') MB/s ($med s for $bytes bytes; runs ${t[*]})"
}
log "cold read: estargz"
cold_read esgz
log "cold read: zstd-chunked"
cold_read zstd

cat <<MD

Date: $(date -u +%Y-%m-%d), machine: $(nproc) CPUs, $(cpu_model), $(uname -r)
Load average before: $load_before, after: $(loadavg). rsnap: $RSNAP. $RUNS runs (median [all]).
Input: the 3-layer python image (bench/lazy_pull.sh), $in_size bytes of gzip -6 layers.

| conversion | wall (s) | CPU (s) | output (bytes) | vs input |
|---|---|---|---|---|
| rsnap convert, eStargz gzip $GZLEVEL | ${wall[esgz]} | ${cpu[esgz]} | ${size[esgz]} | $(pct "${size[esgz]}" "$in_size") |
| rsnap convert, zstd:chunked level $ZLEVEL | ${wall[zstd]} | ${cpu[zstd]} | ${size[zstd]} | $(pct "${size[zstd]}" "$in_size") |
| rsnap convert, zstd:chunked -> eStargz | ${wall[back]} | ${cpu[back]} | ${size[back]} | $(pct "${size[back]}" "$in_size") |
| ctr-remote 0.12 --estargz (gzip $GZLEVEL) | ${wall[go-esgz]} | ${cpu[go-esgz]} | ${size[go-esgz]} | $(pct "${size[go-esgz]}" "$in_size") |
| ctr-remote 0.12 --zstdchunked | ${wall[go-zstd]} | ${cpu[go-zstd]} | ${size[go-zstd]} | $(pct "${size[go-zstd]}" "$in_size") |

| format | chunk decode + sha256 (rsnap toc --verify, local file) | cold read, rsnap mount, loopback registry |
|---|---|---|
| eStargz (gzip) | ${dec[esgz]} | ${cold[esgz]} |
| zstd:chunked | ${dec[zstd]} | ${cold[zstd]} |
MD
