# Helpers for the read and pull benchmarks (sourced after scripts/lib.sh):
# cached Debian rootfs layers, medians, timing, page-cache drops, RSS.
# shellcheck shell=bash

BENCH_CACHE="${BENCH_CACHE:-/var/tmp/rsnap-bench}"

# The Debian mirror this machine already uses (as bench/convert.sh finds it).
bench_mirror() {
  local m
  m="$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | grep debian | head -n1)"
  echo "${m:-http://deb.debian.org/debian}"
}

# BENCH_CACHE/rootfs: debootstrap --variant=minbase bookworm, made once
# (the same tree and marker bench/convert.sh uses).
ensure_minbase() {
  [ -f "$BENCH_CACHE/rootfs/.done" ] && return 0
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
  log "debootstrap --variant=minbase bookworm ($(bench_mirror))"
  rm -rf "$BENCH_CACHE/rootfs"
  mkdir -p "$BENCH_CACHE"
  debootstrap --variant=minbase bookworm "$BENCH_CACHE/rootfs" "$(bench_mirror)" >"$BENCH_CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$BENCH_CACHE/debootstrap.log" >&2; return 1; }
  touch "$BENCH_CACHE/rootfs/.done"
}

# BENCH_CACHE/python3: only what `apt-get install python3` adds on top of
# the minbase rootfs (an overlayfs upper dir, its deletion markers turned
# into OCI whiteouts and overlayfs' own xattrs dropped), made once.
ensure_python_layer() {
  ensure_minbase
  local d="$BENCH_CACHE/python3" w="$BENCH_CACHE/python3.work" m="$BENCH_CACHE/python3.merged"
  [ -f "$BENCH_CACHE/python3.done" ] && return 0
  log "python3 layer: apt-get install python3 in a chroot over the minbase rootfs"
  umount "$m/proc" 2>/dev/null || true
  umount "$m" 2>/dev/null || true
  rm -rf "$d" "$w" "$m"
  mkdir -p "$d" "$w" "$m"
  mount -t overlay overlay -o "lowerdir=$BENCH_CACHE/rootfs,upperdir=$d,workdir=$w" "$m"
  mount -t proc proc "$m/proc"
  local rc=0
  {
    chroot "$m" apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive chroot "$m" apt-get install -y -q --no-install-recommends python3 &&
      chroot "$m" apt-get clean
  } >"$BENCH_CACHE/python3.log" 2>&1 || rc=$?
  umount "$m/proc"
  umount "$m"
  rm -rf "$w" "$m"
  if [ "$rc" != 0 ]; then tail -20 "$BENCH_CACHE/python3.log" >&2; return 1; fi
  rm -rf "$d/var/lib/apt/lists" "$d/var/cache/apt" "$d/proc"
  python3 - "$d" <<'PY'
import os, stat, sys
root = sys.argv[1]
for dirpath, dirs, files in os.walk(root):
    for name in dirs + files:
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            # overlayfs deletion marker -> OCI whiteout
            os.unlink(p)
            open(os.path.join(dirpath, ".wh." + name), "w").close()
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        for x in os.listxattr(p, follow_symlinks=False):
            if x.startswith("trusted.overlay."):
                if x == "trusted.overlay.opaque":
                    open(os.path.join(p, ".wh..wh..opq"), "w").close()
                os.removexattr(p, x, follow_symlinks=False)
PY
  touch "$BENCH_CACHE/python3.done"
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
# "min / median / max" of numbers on stdin
mmm() { sort -g | awk '{a[NR]=$1} END {if (NR) printf "%s / %s / %s", a[1], a[int((NR+1)/2)], a[NR]}'; }

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# rss PID -> "VmRSS VmHWM" in MiB (one decimal)
rss() {
  awk '/^VmRSS|^VmHWM/ {v[$1] = $2} END {printf "%.1f %.1f\n", v["VmRSS:"] / 1024, v["VmHWM:"] / 1024}' "/proc/$1/status"
}

# start_wanproxy UPSTREAM_PORT DELAY_MS MBIT STATS_FILE -> sets WAN=127.0.0.1:PORT, WAN_PID
start_wanproxy() {
  local out
  out="$(mktemp)"
  "$WANPROXY" --upstream "$1" --delay-ms "$2" --mbit "$3" --stats "$4" >"$out" &
  WAN_PID=$!
  LIB_PIDS+=("$WAN_PID")
  wait_for 10 test -s "$out" || { echo "wanproxy did not start" >&2; return 1; }
  WAN="$(head -n1 "$out")"
  rm -f "$out"
}
stop_pid() { # stop one process we started, by PID
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
# bytes delivered from the upstream so far, from a wanproxy stats file
wan_down() { sleep 0.15; sed -n 's/^down=\([0-9]*\).*/\1/p' "$1"; }

# The release rsnap (RSNAP=/path skips the build); needs $repo.
bench_rsnap() {
  if [ -z "${RSNAP:-}" ]; then
    (cd "$repo" && cargo build --release -q -p rsnap)
  fi
  echo "${RSNAP:-${CARGO_TARGET_DIR:-$repo/target}/release/rsnap}"
}

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

# The 3-layer python image of bench/lazy_pull.sh, built offline once and
# cached in BENCH_CACHE (needs $repo and $RSNAP): sets APP (the app layer's
# tree) and OCI (an OCI layout with tags v1 = gzip, v1-esgz = rsnap convert,
# v1-opt = rsnap convert --prioritized-files of what the command opens,
# traced with strace into BENCH_CACHE/prioritized.txt).
ensure_python_image() {
  ensure_python_layer
  APP="$BENCH_CACHE/app"
  if [ ! -f "$APP.done" ]; then
    log "app layer: 128 x 1 MiB random files + /app/run.py"
    rm -rf "$APP"; mkdir -p "$APP/app/data"
    for i in $(seq -w 0 127); do head -c 1048576 /dev/urandom >"$APP/app/data/$i.bin"; done
    cat >"$APP/app/run.py" <<'PY'
import hashlib, json, os, re, subprocess, urllib.parse, email.message, decimal
with open("/app/data/042.bin", "rb") as f:
    print(json.dumps({"sha256": hashlib.sha256(f.read()).hexdigest(), "files": len(os.listdir("/app/data"))}))
PY
    touch "$APP.done"
  fi
  OCI="$BENCH_CACHE/python-oci"
  if [ ! -f "$OCI.done" ]; then
    log "OCI layout (gzip -6) and rsnap convert"
    rm -rf "$OCI"
    "$repo/scripts/oci-from-dir.sh" "$OCI" v1 '["python3","/app/run.py"]' "$BENCH_CACHE/rootfs" "$BENCH_CACHE/python3" "$APP" >/dev/null
    "$RSNAP" convert "oci:$OCI:v1" "oci:$OCI:v1-esgz" >/dev/null 2>&1
    touch "$OCI.done"
  fi
  # The optimized variant: the files the command opens (strace in a chroot of
  # the merged layers) go first in their layers, before .prefetch.landmark.
  if [ ! -f "$OCI.opt.done" ]; then
    log "optimized variant: trace the command, rsnap convert --prioritized-files"
    local m rc
    m="$BENCH_CACHE/trace.merged"; mkdir -p "$m"
    mount -t overlay overlay -o "lowerdir=$APP:$BENCH_CACHE/python3:$BENCH_CACHE/rootfs" "$m"
    rc=0
    strace -f -qq -e trace=open,openat,execve -o "$BENCH_CACHE/trace.log" chroot "$m" python3 /app/run.py >/dev/null || rc=$?
    # successful opens and execs, resolved inside the image, regular files only, first-use order
    grep -v ' = -1 ' "$BENCH_CACHE/trace.log" | grep -oE '(open|openat|execve)\([^"]*"[^"]+"' |
      sed -E 's/.*"([^"]+)"$/\1/' | grep '^/' | awk '!seen[$0]++' |
      chroot "$m" xargs -r readlink -f 2>/dev/null | awk '!seen[$0]++' |
      while read -r f; do [ -f "$m$f" ] && [ ! -L "$m$f" ] && echo "$f"; done >"$BENCH_CACHE/prioritized.txt" || true
    umount "$m"; rmdir "$m"
    [ "$rc" = 0 ] || { echo "tracing the command failed" >&2; exit 1; }
    "$RSNAP" convert --prioritized-files "$BENCH_CACHE/prioritized.txt" "oci:$OCI:v1" "oci:$OCI:v1-opt" >/dev/null 2>&1
    touch "$OCI.opt.done"
  fi
}
