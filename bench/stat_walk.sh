#!/usr/bin/env bash
# Metadata walk of issue #4 item 8: the debootstrap minbase rootfs (cached in
# BENCH_CACHE, made as bench/convert.sh makes it) as one eStargz layer from a
# local docker-registry, mounted with `rsnap mount`, against the same tree on
# local disk and through overlayfs.
#
#   bench/stat_walk.sh [RUNS=5]
#
# The walk: `find DIR -xdev -type f -printf '%s %m\n' | wc -l` (lists every
# directory and stats every regular file). Cases alternate within each run:
#   ours-cold      a fresh `rsnap mount` (new FUSE mount, nothing in the kernel), page cache dropped
#   ours-warm      the same mount again (kernel dentry/attr caches warm)
#   ours-ovl-cold  a fresh mount seen through overlayfs (lowerdir=FUSE mount, an upper dir), as a container sees it
#   disk-cold      the tree on local disk (ext4), page cache dropped
#   disk-warm      again
#   ovl-cold       an overlayfs mount with the tree as lowerdir (a fresh mount), page cache dropped
#   ovl-warm       again
# Also the RSS of the `rsnap mount` process after mounting and after the walk.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
# shellcheck source=bench/bench-lib.sh
. "$repo/bench/bench-lib.sh"
RUNS="${1:-5}"
if [ -z "${RSNAP:-}" ]; then (cd "$repo" && cargo build --release -q -p rsnap); fi
RSNAP="${RSNAP:-${CARGO_TARGET_DIR:-$repo/target}/release/rsnap}"

ensure_minbase
ROOT="$BENCH_CACHE/rootfs"
lib_init
S="$LIB_SCRATCH"
LIB_DIRS+=("$S")
log "minbase rootfs -> one eStargz layer"
GZIP_LEVEL=1 "$repo/scripts/oci-from-dir.sh" "$S/oci" v1 '["/bin/bash"]' "$ROOT" >/dev/null
"$RSNAP" convert "oci:$S/oci:v1" "oci:$S/esgz:v1" >/dev/null 2>&1
rm -rf "$S/oci"
start_registry "$S/registry"
skopeo copy --quiet --dest-tls-verify=false "oci:$S/esgz:v1" "docker://$REGISTRY/bench/base:v1"
IMG="$REGISTRY/bench/base:v1"

mkdir -p "$S/mnt" "$S/ovl"
walk() { # DIR -> "seconds files"
  local t0 t1 n
  t0="$(now)"; n="$(find "$1" -xdev -type f -printf '%s %m\n' | wc -l)"; t1="$(now)"
  awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN {printf "%.3f %d\n", b - a, n}'
}
RSNAP_PID=
mount_ours() {
  "$RSNAP" mount --noprefetch --no-background-fetch "$IMG" "$S/mnt" >"$S/rsnap.log" 2>&1 &
  RSNAP_PID=$!
  LIB_PIDS+=("$RSNAP_PID")
  wait_for 30 mountpoint -q "$S/mnt" || { cat "$S/rsnap.log" >&2; exit 1; }
}
mount_ovl() { # LOWER
  rm -rf "$S/upper" "$S/work"; mkdir -p "$S/upper" "$S/work"
  mount -t overlay overlay -o "lowerdir=$1,upperdir=$S/upper,workdir=$S/work" "$S/ovl"
}
declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
loads=(); counts=(); rss_m=(); rss_w=()
for r in $(seq "$RUNS"); do
  loads+=("$(loadavg)")
  log "run $r/$RUNS (load $(loadavg))"
  mount_ours
  rss_m+=("$(rss "$RSNAP_PID" | cut -d' ' -f1)")
  drop_caches; read -r t n < <(walk "$S/mnt"); add ours-cold "$t"; counts+=("ours:$n")
  read -r t n < <(walk "$S/mnt"); add ours-warm "$t"
  rss_w+=("$(rss "$RSNAP_PID" | tr ' ' /)")
  stop_pid "$RSNAP_PID"

  drop_caches; read -r t n < <(walk "$ROOT"); add disk-cold "$t"; counts+=("disk:$n")
  read -r t n < <(walk "$ROOT"); add disk-warm "$t"

  mount_ovl "$ROOT"
  drop_caches; read -r t n < <(walk "$S/ovl"); add ovl-cold "$t"; counts+=("ovl:$n")
  read -r t n < <(walk "$S/ovl"); add ovl-warm "$t"
  umount "$S/ovl"

  mount_ours
  mount_ovl "$S/mnt"
  drop_caches; read -r t n < <(walk "$S/ovl"); add ours-ovl-cold "$t"
  read -r t n < <(walk "$S/ovl"); add ours-ovl-warm "$t"
  umount "$S/ovl"
  stop_pid "$RSNAP_PID"
done

med() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
row() { # CASE LABEL VS
  printf '| %s | %s | %s | %s |\n' "$2" "$(med "$1")" "$(tr ' ' '\n' <<<"${R[$1]}" | grep . | mmm)" \
    "$(awk -v a="$(med "$1")" -v b="$(med "$3")" 'BEGIN {printf "%.2f", a / b}')"
}
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
cat <<MD

Date: $(date -u '+%Y-%m-%d %H:%M') UTC; $(nproc) CPUs ($cpu), $(uname -r). $RUNS runs, cases alternating within each run.
Load average before each run: $(printf '[%s] ' "${loads[@]}")
Files found (per case, run 1): $(printf '%s ' "${counts[@]:0:3}")
rsnap mount RSS after mounting (MiB): ${rss_m[*]}; RSS/HWM after two walks: ${rss_w[*]}

| case | median s | min / median / max s | vs overlayfs, same cache state |
|---|---|---|---|
$(row ours-cold "rsnap mount, cold (fresh mount, page cache dropped)" ovl-cold)
$(row ours-ovl-cold "rsnap mount under overlayfs (as in a container), cold" ovl-cold)
$(row ovl-cold "overlayfs over the local tree, page cache dropped" ovl-cold)
$(row disk-cold "local disk (ext4), page cache dropped" ovl-cold)
$(row ours-warm "rsnap mount, warm" ovl-warm)
$(row ours-ovl-warm "rsnap mount under overlayfs, warm" ovl-warm)
$(row ovl-warm "overlayfs over the local tree, warm" ovl-warm)
$(row disk-warm "local disk, warm" ovl-warm)
MD
