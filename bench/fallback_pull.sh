#!/usr/bin/env bash
# Fallback pull benchmark (issue #15 items 3 and 5): the 3-layer python
# image of bench/lazy_pull.sh as built (plain gzip, never converted, so no
# layer can be lazy), pulled
#   ctr        by containerd itself: `ctr images pull` (overlayfs snapshotter)
#   ours       with `rsnap pull` through our daemon, which pulls and unpacks
#              each layer itself ([fallback_pull], defaults: 4 x 8 MiB ranged
#              requests per layer, the layers above the first pulled at once)
#   ours-1     the same with parallel_layers = 0 (one layer at a time)
# alternating within each run, on NET = loopback (through wanproxy with no
# delay and no cap, to count bytes) and wan (DELAY_MS each way, MBIT).
# Cold before every case: images removed, our daemon restarted on an empty
# root, page cache dropped. Each pull is checked by running the image once
# (its command hashes one file of the app layer).
#
#   bench/fallback_pull.sh [RUNS=3]
#
# Binaries: RSNAP, DAEMON, WANPROXY, or CARGO_TARGET_DIR/$PROFILE (default
# debug: dependencies, where the time goes (zlib-rs, sha2, tar), are built
# with opt-level 2 in dev builds too).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
# shellcheck source=bench/bench-lib.sh
. "$repo/bench/bench-lib.sh"
RUNS="${1:-3}"
DELAY_MS="${DELAY_MS:-15}"
MBIT="${MBIT:-200}"
CASES="${CASES:-ctr ours ours-1}"
NETS="${NETS:-loopback wan}"
PROFILE="${PROFILE:-debug}"
T="${CARGO_TARGET_DIR:-$repo/target}/$PROFILE"
RSNAP="${RSNAP:-$T/rsnap}"
DAEMON="${DAEMON:-$T/remote-snapshotter}"
WANPROXY="${WANPROXY:-$T/wanproxy}"
for b in "$RSNAP" "$DAEMON" "$WANPROXY"; do
  [ -x "$b" ] || { echo "missing $b (cargo build -p rsnap -p remote-snapshotter; cargo build -p e2e --bin wanproxy)" >&2; exit 1; }
done

ensure_python_image
want="$(sha256sum "$APP/app/data/042.bin" | cut -d' ' -f1)"
m="$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "v1") | .digest' "$OCI/index.json")"
GZ_BYTES="$(jq '[.layers[].size] | add' "$OCI/blobs/sha256/${m#sha256:}")"

lib_init
S="$LIB_SCRATCH"
start_registry "$S/registry"
skopeo copy --quiet --dest-tls-verify=false "oci:$OCI:v1" "docker://$REGISTRY/bench/py:v1"
start_wanproxy "${REGISTRY##*:}" 0 0 "$S/lo.stats"; LO="$WAN"
start_wanproxy "${REGISTRY##*:}" "$DELAY_MS" "$MBIT" "$S/wan.stats"
declare -A HOST=([loopback]="$LO" [wan]="$WAN") STATS=([loopback]="$S/lo.stats" [wan]="$S/wan.stats")

RS="$S/rs"; mkdir -p "$RS"; LIB_DIRS+=("$RS")
DAEMON_PID=; CTRD_PID=
up() { # CONFIG_TEXT: our daemon on an empty root, then containerd
  printf '%s\n' "$1" >"$RS/config.toml"
  rm -rf "$RS/root"
  "$DAEMON" --address "$RS/rs.sock" --root "$RS/root" --config "$RS/config.toml" \
    --log-level info --unmount-on-exit >>"$RS/daemon.log" 2>&1 &
  DAEMON_PID=$!; LIB_PIDS+=("$DAEMON_PID")
  wait_for 20 test -S "$RS/rs.sock" || { tail "$RS/daemon.log" >&2; exit 1; }
  start_containerd "$S/containerd" "$RS/rs.sock"
  CTRD_PID="${LIB_PIDS[-1]}"
  wait_for 30 ctrd snapshots --snapshotter remote ls || { echo "containerd cannot reach our daemon" >&2; exit 1; }
}
cold() {
  local i
  if [ -n "$CTRD_PID" ]; then
    for i in $(ctrd images ls -q); do ctrd images rm --sync "$i" >/dev/null; done
    stop_pid "$CTRD_PID"; stop_pid "$DAEMON_PID"
  fi
  up "$1"
  drop_caches
}

declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
loads=(); id=0
for r in $(seq "$RUNS"); do
  for net in $NETS; do
    for c in $CASES; do
      case "$c" in
        ctr) cfg="[fallback_pull]
enable = false" ;;
        ours-1) cfg="[fallback_pull]
parallel_layers = 0" ;;
        *) cfg="" ;;
      esac
      cold "$cfg"
      l="$(loadavg)"; loads+=("$l")
      log "run $r/$RUNS $net $c (load $l)"
      ref="${HOST[$net]}/bench/py:v1"
      b0="$(wan_down "${STATS[$net]}")"
      t0="$(now)"
      if [ "$c" = ctr ]; then
        ctrd images pull --plain-http "$ref" >/dev/null; snap=overlayfs
      else
        out="$("$RSNAP" pull -a "$CTRD_SOCK" -n demo --plain-http "$ref")"
        grep -q ' 0 fetched, 3 pulled by the snapshotter' <<<"$out" || { echo "not pulled by the daemon: $out" >&2; exit 1; }
        snap=remote
      fi
      t1="$(now)"
      b1="$(wan_down "${STATS[$net]}")"
      id=$((id + 1))
      out="$(ctrd run --rm --snapshotter="$snap" "$ref" "fbp-$id")"
      grep -q "$want" <<<"$out" || { echo "wrong output: $out" >&2; exit 1; }
      k="$net/$c"
      add "$k/pull" "$(secs "$t0" "$t1")"; add "$k/bytes" "$((b1 - b0))"
    done
  done
done
if [ -n "${PERF_PROFILE:-}" ]; then
  # One more pull of ours on loopback under perf, for where the time goes.
  cold ""
  perf record -q -g -o "$S/perf.data" -p "$DAEMON_PID" 2>/dev/null & pp=$!
  sleep 0.5
  "$RSNAP" pull -a "$CTRD_SOCK" -n demo --plain-http "${HOST[loopback]}/bench/py:v1" >/dev/null
  kill -INT "$pp"; wait "$pp" || true
  perf report -i "$S/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null | grep -v '^#' | grep . | head -25 >"$PERF_PROFILE" || true
fi
grep -hE 'layer pulled and unpacked|falling back' "$RS/daemon.log" | sed -E 's/key="[^"]*" //; s/error=.*//' | cut -c1-250 >&2 || true

med() { tr ' ' '\n' <<<"${R[$1]:-}" | grep . | median; }
all() { tr ' ' '\n' <<<"${R[$1]:-}" | grep . | tr '\n' ' ' | sed 's/ $//'; }
link_pct() { awk -v b="$1" -v s="$2" -v m="$MBIT" 'BEGIN {printf "%.0f%%", 100 * (b / s) / (m * 1e6 / 8)}'; }
cat <<MD

Date: $(date -u '+%Y-%m-%d %H:%M') UTC; $(nproc) CPUs ($(cpu_model)), $(uname -r); containerd $(containerd --version | awk '{print $3}'); binaries: $PROFILE.
Image: the 3-layer python image (bench-lib.sh), gzip layers $GZ_BYTES bytes.
$RUNS runs; cases alternate in each run: $(for n in $NETS; do for c in $CASES; do printf '%s/%s ' "$n" "$c"; done; done)
Load average before each case: $(printf '[%s] ' "${loads[@]}")
WAN profile: $DELAY_MS ms each way, $MBIT Mbit/s ($(awk -v m="$MBIT" 'BEGIN {print m / 8}') MB/s) per direction.

| net | case | pull s (median [all]) | vs ctr | MB from registry | of the link (WAN) |
|---|---|---|---|---|---|
$(for n in $NETS; do for c in $CASES; do k="$n/$c"; p="$(med "$k/pull")"; b="$(med "$k/bytes")"
  printf '| %s | %s | %s [%s] | %s | %.1f | %s |\n' "$n" "$c" "$p" "$(all "$k/pull")" "$(c="$(med "$n/ctr/pull")"; [ -n "$c" ] && ratio "$p" "$c" || echo -)" "$(awk -v b="$b" 'BEGIN {print b / 1e6}')" "$( [ "$n" = wan ] && link_pct "$b" "$p" || echo -)"; done; done)
MD
