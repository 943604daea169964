#!/usr/bin/env bash
# Cold sequential read of 128 MiB through a lazily mounted eStargz image
# served by a local docker-registry (plain HTTP on 127.0.0.1), as in
# docs of the Go reference: 128 files of 1 MiB, `cat` all of them.
# Each run mounts afresh with a memory-only chunk cache and dropped page
# cache, prefetch and background fetch off, so every byte comes over HTTP.
#   bench/lazyfs_cold_read.sh [RUNS=5]
# Prints a markdown table (seconds, MB/s, bytes fetched).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
runs="${1:-5}"
lib_init
S="$LIB_SCRATCH"

log "build rsnap (release)"
cargo build --release -q -p rsnap
RSNAP="$PWD/target/release/rsnap"

log "make a 128 MiB image and convert it to eStargz"
mkdir -p "$S/rootfs/app/data" "$S/rootfs/bin"
cp /bin/busybox "$S/rootfs/bin/"
for i in $(seq -w 0 127); do head -c 1048576 /dev/urandom >"$S/rootfs/app/data/$i.bin"; done
GZIP_LEVEL=1 scripts/oci-from-dir.sh "$S/oci" v1 '["/bin/busybox","sh"]' "$S/rootfs" >/dev/null
"$RSNAP" convert "oci:$S/oci:v1" "oci:$S/esgz:v1" >/dev/null 2>&1
start_registry "$S/registry"
skopeo copy --quiet --dest-tls-verify=false "oci:$S/esgz:v1" "docker://$REGISTRY/bench/data:v1"
IMG="$REGISTRY/bench/data:v1"

mnt="$S/mnt"
mkdir -p "$mnt"
mount_img() { # extra rsnap flags...
  "$RSNAP" mount --plain-http --noprefetch "$@" "$IMG" "$mnt" >"$S/rsnap.log" 2>&1 &
  RSNAP_PID=$!
  LIB_PIDS+=("$RSNAP_PID")
  wait_for 20 mountpoint -q "$mnt" || { cat "$S/rsnap.log" >&2; exit 1; }
}
unmount_img() {
  kill -TERM "$RSNAP_PID"
  wait "$RSNAP_PID" || true
}

printf '| case | run | seconds | MB/s | fetched on demand (bytes) |\n|---|---|---|---|---|\n'
for r in $(seq "$runs"); do
  mount_img --no-background-fetch
  sync; echo 3 >/proc/sys/vm/drop_caches
  t0="$(now)"; cat "$mnt"/app/data/*.bin >/dev/null; t1="$(now)"
  t2="$(now)"; cat "$mnt"/app/data/*.bin >/dev/null; t3="$(now)"
  unmount_img
  fetched="$(grep -o 'fetched on demand [0-9]*' "$S/rsnap.log" | awk '{s += $4} END {print s}')"
  d="$(secs "$t0" "$t1")"
  printf '| cold, loopback registry | %s | %s | %s | %s |\n' "$r" "$d" "$(awk -v d="$d" 'BEGIN {printf "%.0f", 134.2 / d}')" "$fetched"
  d="$(secs "$t2" "$t3")"
  printf '| warm (page cache), same mount | %s | %s | %s | - |\n' "$r" "$d" "$(awk -v d="$d" 'BEGIN {printf "%.0f", 134.2 / d}')"
done
