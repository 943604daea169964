#!/usr/bin/env bash
# Lazy pull benchmark of issue #5 item 8 (and the daemon RSS of issue #4):
# a 3-layer python image built offline (debootstrap minbase; python3
# installed with apt-get in a chroot; 128 x 1 MiB random app data files and a
# script that imports a few modules and hashes one 1 MiB file), as gzip and
# as eStargz (rsnap convert), in a local docker-registry. Our daemon and a
# stock containerd 1.6.20 (scripts/lib.sh), all on 127.0.0.1.
#
#   bench/lazy_pull.sh [RUNS=3]
#
# Cases, alternating within each run, for NET = loopback (through
# `wanproxy` with no delay and no cap, only to count bytes) and wan (15 ms
# each way, 200 Mbit/s):
#   overlayfs   `ctr images pull` of the gzip image + `ctr run` (full pull)
#   lazy        `rsnap pull` of the eStargz image + `ctr run --snapshotter=remote`
#               (daemon defaults: background fetch on)
#   lazy-nobg   the same with no_background_fetch = true
#   opt-nobg    lazy-nobg on the optimized image (rsnap convert --prioritized-files
#               with the files the command opens, traced with strace; prefetched
#               before each layer is reported mounted)
# Cold before every case: image removed with `ctr images rm --sync`, our daemon
# restarted on an empty root (cache), page cache dropped.
# Daemon RSS (VmRSS, VmHWM) idle, after pull, after run, and after the
# background fetch finished (run 1, loopback, lazy).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
# shellcheck source=bench/bench-lib.sh
. "$repo/bench/bench-lib.sh"
RUNS="${1:-3}"
DELAY_MS="${DELAY_MS:-15}"
MBIT="${MBIT:-200}"
CASES="${CASES:-overlayfs lazy lazy-nobg opt-nobg}"
NETS="${NETS:-loopback wan}"

if [ -z "${RSNAP:-}" ]; then
  (cd "$repo" && cargo build --release -q -p rsnap -p remote-snapshotter && cargo build --release -q -p e2e --bin wanproxy)
fi
T="${CARGO_TARGET_DIR:-$repo/target}/release"
RSNAP="${RSNAP:-$T/rsnap}"
DAEMON="${DAEMON:-$T/remote-snapshotter}"
WANPROXY="${WANPROXY:-$T/wanproxy}"

# ---- the image, built offline once and cached (bench-lib.sh) ---------------
ensure_python_image
want="$(sha256sum "$APP/app/data/042.bin" | cut -d' ' -f1)"
layers_of() { # TAG -> total compressed layer bytes
  local m; m="$(jq -r --arg t "$1" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$OCI/index.json")"
  jq '[.layers[].size] | add' "$OCI/blobs/sha256/${m#sha256:}"
}
GZ_BYTES="$(layers_of v1)"; ES_BYTES="$(layers_of v1-esgz)"
UNPACKED="$(du -sb "$BENCH_CACHE/rootfs" "$BENCH_CACHE/python3" "$APP" | awk '{s += $1} END {print s}')"

# ---- services ----------------------------------------------------------------
lib_init
S="$LIB_SCRATCH"
start_registry "$S/registry"
for tag in v1 v1-esgz v1-opt; do
  skopeo copy --quiet --dest-tls-verify=false "oci:$OCI:$tag" "docker://$REGISTRY/bench/py:$tag"
done
start_wanproxy "${REGISTRY##*:}" 0 0 "$S/lo.stats"; LO="$WAN"
start_wanproxy "${REGISTRY##*:}" "$DELAY_MS" "$MBIT" "$S/wan.stats"
declare -A HOST=([loopback]="$LO" [wan]="$WAN") STATS=([loopback]="$S/lo.stats" [wan]="$S/wan.stats")

RS="$S/rs"; mkdir -p "$RS"
DAEMON_PID=
start_daemon() { # CONFIG_TEXT
  printf '%s\n' "$1" >"$RS/config.toml"
  rm -rf "$RS/root"
  "$DAEMON" --address "$RS/rs.sock" --root "$RS/root" --config "$RS/config.toml" \
    --log-level info --unmount-on-exit >>"$RS/daemon.log" 2>&1 &
  DAEMON_PID=$!
  LIB_PIDS+=("$DAEMON_PID")
  wait_for 20 test -S "$RS/rs.sock" || { tail "$RS/daemon.log" >&2; exit 1; }
}
LIB_DIRS+=("$RS")
CTRD_PID=
up() { # start order: our daemon, then containerd (it dials the proxy socket once, then backs off)
  start_daemon "$1"
  start_containerd "$S/containerd" "$RS/rs.sock"
  CTRD_PID="${LIB_PIDS[-1]}"
  wait_for 30 ctrd snapshots --snapshotter remote ls || { echo "containerd cannot reach our daemon" >&2; exit 1; }
}
up ""

cold() { # remove every image, restart our daemon empty (and containerd after it), drop caches
  local i
  for i in $(ctrd images ls -q); do ctrd images rm --sync "$i" >/dev/null; done
  stop_pid "$CTRD_PID"
  stop_pid "$DAEMON_PID"
  up "$1"
  drop_caches
}

declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
loads=(); rss_rows=()
id=0
for r in $(seq "$RUNS"); do
  for net in $NETS; do
    for c in $CASES; do
      cfg=""; case "$c" in *-nobg) cfg="no_background_fetch = true" ;; esac
      cold "$cfg"
      l="$(loadavg)"; loads+=("$l")
      log "run $r/$RUNS $net $c (load $l)"
      case "$c" in
        overlayfs) ref="${HOST[$net]}/bench/py:v1" ;;
        opt*) ref="${HOST[$net]}/bench/py:v1-opt" ;;
        *) ref="${HOST[$net]}/bench/py:v1-esgz" ;;
      esac
      b0="$(wan_down "${STATS[$net]}")"
      idle="$(rss "$DAEMON_PID")"
      t0="$(now)"
      if [ "$c" = overlayfs ]; then
        ctrd images pull --plain-http "$ref" >/dev/null
        snap=overlayfs
      else
        out="$("$RSNAP" pull -a "$CTRD_SOCK" -n demo --plain-http "$ref")"
        grep -q '3 lazy' <<<"$out" || { echo "not lazy: $out" >&2; exit 1; }
        snap=remote
      fi
      t1="$(now)"
      b1="$(wan_down "${STATS[$net]}")"
      pulled="$(rss "$DAEMON_PID")"
      id=$((id + 1))
      t2="$(now)"
      out="$(ctrd run --rm --snapshotter="$snap" "$ref" "bench-$id")"
      t3="$(now)"
      b2="$(wan_down "${STATS[$net]}")"
      ran="$(rss "$DAEMON_PID")"
      grep -q "$want" <<<"$out" || { echo "wrong output: $out" >&2; exit 1; }
      k="$net/$c"
      add "$k/pull" "$(secs "$t0" "$t1")"; add "$k/run" "$(secs "$t2" "$t3")"
      add "$k/total" "$(awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" 'BEGIN {printf "%.2f", (b - a) + (d - c)}')"
      add "$k/bpull" "$((b1 - b0))"; add "$k/btotal" "$((b2 - b0))"
      if [ "$c" != overlayfs ]; then
        rss_rows+=("| $net, $c, run $r | ${idle/ //} | ${pulled/ //} | ${ran/ //} |")
      fi
      if [ "$r" = 1 ] && [ "$net" = loopback ] && [ "$c" = lazy ]; then
        # Wait for the background fetch to finish: it starts after 5 s
        # without on-demand reads, then registry bytes grow until done.
        sleep 7
        last=-1; cur="$(wan_down "${STATS[$net]}")"; waited=0
        while [ "$cur" != "$last" ] && [ "$waited" -lt 120 ]; do
          sleep 3; waited=$((waited + 3)); last="$cur"; cur="$(wan_down "${STATS[$net]}")"
        done
        BG_RSS="$(rss "$DAEMON_PID")"; BG_BYTES="$((cur - b0))"
      fi
    done
  done
done

med() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
all() { tr ' ' '\n' <<<"${R[$1]}" | grep . | tr '\n' ' ' | sed 's/ $//'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
cat <<MD

Date: $(date -u '+%Y-%m-%d %H:%M') UTC; $(nproc) CPUs ($cpu), $(uname -r); containerd $(containerd --version | awk '{print $3}').
Image: 3 layers, $UNPACKED bytes unpacked; gzip layers $GZ_BYTES bytes, eStargz layers $ES_BYTES bytes.
$RUNS runs; in each run the cases alternate: $(for n in $NETS; do for c in $CASES; do printf '%s/%s ' "$n" "$c"; done; done)
Load average before each case: $(printf '[%s] ' "${loads[@]}")
WAN profile: $DELAY_MS ms each way, $MBIT Mbit/s per direction (bench's wanproxy); loopback goes through the same proxy with no delay and no cap (byte counting only).

| net | mode | pull s (median [all]) | run s | pull+run s | MB from registry: pull / pull+run (median) |
|---|---|---|---|---|---|
$(for n in $NETS; do for c in $CASES; do k="$n/$c"; printf '| %s | %s | %s [%s] | %s [%s] | %s [%s] | %s / %s |\n' "$n" "$c" "$(med "$k/pull")" "$(all "$k/pull")" "$(med "$k/run")" "$(all "$k/run")" "$(med "$k/total")" "$(all "$k/total")" "$(mb "$(med "$k/bpull")")" "$(mb "$(med "$k/btotal")")"; done; done)

Daemon RSS / HWM in MiB (remote-snapshotter, VmRSS/VmHWM from /proc/PID/status):

| case | idle | after pull | after run |
|---|---|---|---|
$(printf '%s\n' "${rss_rows[@]}")

After the background fetch of run 1 (loopback, lazy) finished: RSS/HWM ${BG_RSS:-n/a} MiB, ${BG_BYTES:-n/a} bytes from the registry in total.
MD
