#!/usr/bin/env bash
# Read benchmark of issue #4 item 8: 128 files of 1 MiB (random bytes) in one
# eStargz layer (rsnap convert), served by a local docker-registry, mounted
# with `rsnap mount` (prefetch and background fetch off, chunk cache on disk
# in a fresh directory per run), against the same files on local disk.
#
#   bench/lazyfs_read.sh [RUNS=5]        (FILES=128 for fewer files while testing)
#
# Each run, cases alternating in this order (page cache dropped before each
# "cold"/"dropped" case; `uptime` load recorded before each run):
#   cold-loopback  fresh mount, empty cache: `cat` of all files, registry on 127.0.0.1
#   cold-wan       same through bench's WAN proxy (15 ms each way, 200 Mbit/s)
#   mem-tier       same mount as cold-loopback, page cache dropped: our memory/disk cache
#   disk-tier      a new rsnap mount on the filled cache dir, page cache dropped: disk cache only
#   page-cache     that mount again, page cache warm
#   rand-dropped   4 KiB random preads (python3), page cache dropped, on another new mount (disk cache)
#   rand-warm      the same again, page cache warm
#   native-*       the same `cat` and random reads on the local files (ext4/overlay of /tmp)
# Prints markdown tables (median and min/max of RUNS, MB/s = 10^6 B/s).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
# shellcheck source=bench/bench-lib.sh
. "$repo/bench/bench-lib.sh"
RUNS="${1:-5}"
FILES="${FILES:-128}"
DELAY_MS="${DELAY_MS:-15}"
MBIT="${MBIT:-200}"
RAND_READS="${RAND_READS:-4096}"

if [ -z "${RSNAP:-}" ]; then
  (cd "$repo" && cargo build --release -q -p rsnap && cargo build --release -q -p e2e --bin wanproxy)
fi
T="${CARGO_TARGET_DIR:-$repo/target}/release"
RSNAP="${RSNAP:-$T/rsnap}"
WANPROXY="${WANPROXY:-$T/wanproxy}"

lib_init
S="$LIB_SCRATCH"
LIB_DIRS+=("$S")
log "image: $FILES x 1 MiB random files -> eStargz"
mkdir -p "$S/rootfs/app/data" "$S/rootfs/bin"
cp /bin/busybox "$S/rootfs/bin/"
for i in $(seq -w 0 $((FILES - 1))); do head -c 1048576 /dev/urandom >"$S/rootfs/app/data/$i.bin"; done
BYTES=$((FILES * 1048576))
GZIP_LEVEL=1 "$repo/scripts/oci-from-dir.sh" "$S/oci" v1 '["/bin/busybox","sh"]' "$S/rootfs" >/dev/null
"$RSNAP" convert "oci:$S/oci:v1" "oci:$S/esgz:v1" >/dev/null 2>&1
start_registry "$S/registry"
skopeo copy --quiet --dest-tls-verify=false "oci:$S/esgz:v1" "docker://$REGISTRY/bench/data:v1"
start_wanproxy "${REGISTRY##*:}" "$DELAY_MS" "$MBIT" "$S/wan.stats"
LINK_MBS="$(awk -v m="$MBIT" 'BEGIN {printf "%.1f", m / 8}')"

cat >"$S/rand.py" <<'PY'
import os, random, sys, time
files = sorted(os.path.join(sys.argv[1], f) for f in os.listdir(sys.argv[1]))
n = int(sys.argv[2])
rng = random.Random(42)  # same offsets every run and on every target
fds = [os.open(f, os.O_RDONLY) for f in files]
size = os.fstat(fds[0]).st_size
ops = [(rng.randrange(len(fds)), rng.randrange(size // 4096) * 4096) for _ in range(n)]
t = time.perf_counter()
for i, off in ops:
    assert len(os.pread(fds[i], 4096, off)) == 4096
print("%.4f" % (time.perf_counter() - t))
PY

mnt="$S/mnt"
mkdir -p "$mnt"
RSNAP_PID=
mount_img() { # IMAGE_REF CACHE_DIR LOG
  "$RSNAP" mount --noprefetch --no-background-fetch --cache-dir "$2" "$1" "$mnt" >"$3" 2>&1 &
  RSNAP_PID=$!
  LIB_PIDS+=("$RSNAP_PID")
  wait_for 30 mountpoint -q "$mnt" || { cat "$3" >&2; exit 1; }
}
unmount_img() { stop_pid "$RSNAP_PID"; }
timed_cat() { # DIR -> seconds
  local t0 t1
  t0="$(now)"; cat "$1"/*.bin >/dev/null; t1="$(now)"
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}'
}
declare -A R  # case -> space separated seconds
add() { R[$1]="${R[$1]:-} $2"; }
loads=()
fetched=()

for r in $(seq "$RUNS"); do
  loads+=("$(loadavg)")
  log "run $r/$RUNS (load $(loadavg))"
  rm -rf "$S/cache-lo" "$S/cache-wan"
  # cold, loopback; then the tiers of the same cache
  mount_img "$REGISTRY/bench/data:v1" "$S/cache-lo" "$S/lo.log"
  drop_caches; add cold-loopback "$(timed_cat "$mnt/app/data")"
  drop_caches; add mem-tier "$(timed_cat "$mnt/app/data")"
  unmount_img
  fetched+=("$(grep -o 'fetched on demand [0-9]*' "$S/lo.log" | awk '{s += $4} END {print s}')")

  # cold through the WAN proxy
  mount_img "$WAN/bench/data:v1" "$S/cache-wan" "$S/wan.log"
  drop_caches; add cold-wan "$(timed_cat "$mnt/app/data")"
  unmount_img

  # native sequential, page cache dropped then warm
  drop_caches; add native-dropped "$(timed_cat "$S/rootfs/app/data")"
  add native-warm "$(timed_cat "$S/rootfs/app/data")"

  # our disk cache only: a new mount (empty memory tier) on the filled cache
  mount_img "$REGISTRY/bench/data:v1" "$S/cache-lo" "$S/disk.log"
  drop_caches; add disk-tier "$(timed_cat "$mnt/app/data")"
  add page-cache "$(timed_cat "$mnt/app/data")"
  unmount_img
  # random reads on a new mount again, so they hit the disk cache, not the memory tier
  mount_img "$REGISTRY/bench/data:v1" "$S/cache-lo" "$S/disk2.log"
  drop_caches; add rand-dropped "$(python3 "$S/rand.py" "$mnt/app/data" "$RAND_READS")"
  add rand-warm "$(python3 "$S/rand.py" "$mnt/app/data" "$RAND_READS")"
  unmount_img
  if grep -q 'fetched on demand [1-9]' "$S/disk.log"; then
    echo "disk-tier mount fetched from the registry: $(grep 'fetched' "$S/disk.log")" >&2
  fi
  drop_caches; add native-rand-dropped "$(python3 "$S/rand.py" "$S/rootfs/app/data" "$RAND_READS")"
  add native-rand-warm "$(python3 "$S/rand.py" "$S/rootfs/app/data" "$RAND_READS")"
done
wan_bytes="$(wan_down "$S/wan.stats")"

mbs() { awk -v b="$BYTES" -v s="$1" 'BEGIN {printf "%.0f", b / s / 1e6}'; }
iops() { awk -v n="$RAND_READS" -v s="$1" 'BEGIN {printf "%.0f", n / s}'; }
med() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
row() { # CASE LABEL [RATIO_TEXT]
  local m; m="$(med "$1")"
  printf '| %s | %s | %s | %s | %s |\n' "$2" "$m" "$(tr ' ' '\n' <<<"${R[$1]}" | grep . | mmm)" "$(mbs "$m")" "${3:-}"
}
rrow() {
  local m; m="$(med "$1")"
  printf '| %s | %s | %s | %s | %s |\n' "$2" "$m" "$(iops "$m")" "$(awk -v n="$RAND_READS" -v s="$m" 'BEGIN {printf "%.1f", n * 4096 / s / 1e6}')" "${3:-}"
}
ratio() { awk -v a="$(med "$1")" -v b="$(med "$2")" 'BEGIN {printf "%.0f %%", b / a * 100}'; }
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
cat <<MD

Date: $(date -u '+%Y-%m-%d %H:%M') UTC; $(nproc) CPUs ($cpu), $(uname -r), $(free -g | awk '/Mem:/ {print $2}') GiB RAM.
$FILES files x 1 MiB ($BYTES bytes), $RUNS runs, cases alternating within each run.
Load average before each run: $(printf '[%s] ' "${loads[@]}")
Bytes fetched on demand per cold loopback run: ${fetched[*]}; WAN proxy delivered $wan_bytes bytes over $RUNS cold runs.
WAN profile: ${DELAY_MS} ms each way, ${MBIT} Mbit/s (${LINK_MBS} MB/s) per direction.

| case | median s | min / median / max s | MB/s (median) | ratio |
|---|---|---|---|---|
$(row cold-loopback "cold, loopback registry")
$(row cold-wan "cold, WAN profile" "$(awk -v b="$BYTES" -v s="$(med cold-wan)" -v l="$LINK_MBS" 'BEGIN {printf "%.0f %% of the link", b / s / 1e6 / l * 100}')")
$(row mem-tier "cached, same mount, page cache dropped" "$(ratio mem-tier native-dropped) of native dropped")
$(row disk-tier "cached, new mount (disk cache only), page cache dropped" "$(ratio disk-tier native-dropped) of native dropped")
$(row page-cache "cached, page cache warm" "$(ratio page-cache native-warm) of native warm")
$(row native-dropped "local disk, page cache dropped")
$(row native-warm "local disk, page cache warm")

4 KiB random preads ($RAND_READS per run, python3, same offsets everywhere):

| case | median s | reads/s | MB/s | ratio |
|---|---|---|---|---|
$(rrow rand-dropped "our mount (disk cache), page cache dropped" "$(ratio rand-dropped native-rand-dropped) of native")
$(rrow rand-warm "our mount, page cache warm" "$(ratio rand-warm native-rand-warm) of native")
$(rrow native-rand-dropped "local disk, page cache dropped")
$(rrow native-rand-warm "local disk, page cache warm")
MD
