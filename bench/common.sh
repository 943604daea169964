# Shared by the bench/*.sh scripts (sourced after scripts/lib.sh): the cached
# debootstrap rootfs, medians and timing of one command.

CACHE="${BENCH_CACHE:-/var/tmp/rsnap-bench}"

# The Debian mirror this machine already uses (debootstrap needs one).
bench_mirror() {
  local m
  m="$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | grep debian | head -n1)"
  echo "${m:-http://deb.debian.org/debian}"
}

# A Debian bookworm minbase rootfs (~200 MB), made once into $CACHE/rootfs.
bench_rootfs() {
  if [ ! -f "$CACHE/rootfs/.done" ]; then
    log "debootstrap --variant=minbase bookworm ($(bench_mirror))"
    rm -rf "$CACHE/rootfs"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase bookworm "$CACHE/rootfs" "$(bench_mirror)" >"$CACHE/debootstrap.log" 2>&1 ||
      { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    touch "$CACHE/rootfs/.done"
  fi
  echo "$CACHE/rootfs"
}

# The release rsnap (RSNAP=/path skips the build).
bench_rsnap() {
  if [ -z "${RSNAP:-}" ]; then
    (cd "$repo" && cargo build --release -q -p rsnap)
  fi
  echo "${RSNAP:-${CARGO_TARGET_DIR:-$repo/target}/release/rsnap}"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# timed CMD... -> prints "WALL CPU" (CPU = user + sys of the command and its
# children); CPU time is less sensitive than wall time to other load.
timed() {
  local TIMEFORMAT='%R %U %S' t
  t="$( { time "$@" >/dev/null; } 2>&1 | tail -n 1)"
  awk '{printf "%.2f %.2f\n", $1, $2 + $3}' <<<"$t"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.2f%%", (a / b - 1) * 100}'; }
cpu_model() { grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'; }
