#!/usr/bin/env bash
# Images nobody converted (issue #15): the 3-layer python image of
# bench-lib.sh as built (plain gzip), indexed once with `rsnap index`, then
# pulled lazily through containerd by our daemon and run; beside the same
# image converted to eStargz (`rsnap convert`, lazy) and the plain image
# pulled by containerd itself (overlayfs). Writes its section of
# docs/benchmarks.md.
#
#   bench/index.sh [RUNS=3]
#
# Cases, on the WAN profile (`wanproxy`: DELAY_MS each way, MBIT link):
#   gzindex   `rsnap pull` of v1 (plain gzip, index found as an OCI referrer
#             through the sha256-<hex> tag: docker-registry 2.8) + `ctr run`
#   esgz      the same for v1-esgz (eStargz, rsnap convert)
#   overlayfs `ctr images pull` of v1 + `ctr run --snapshotter overlayfs`
# Cold before every case (images removed, containerd and the daemon
# restarted with empty roots, page cache dropped). Reported: pull and pull +
# run seconds, registry MB, the index's size against the layers, the time
# `rsnap index` took, and the load.
#
# Env: RUNS, DELAY_MS (15), MBIT (200), SPAN_MIB (checkpoint spacing, 4),
# CASES (default "gzindex esgz overlayfs"), RSNAP/DAEMON/WANPROXY (else built in
# CARGO_TARGET_DIR/release), DOC (default docs/benchmarks.md; DOC=- prints only),
# NOTE (a sentence for the section: which binaries, what else ran).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
# shellcheck source=bench/bench-lib.sh
. "$repo/bench/bench-lib.sh"
RUNS="${1:-${RUNS:-3}}"
DELAY_MS="${DELAY_MS:-15}"
MBIT="${MBIT:-200}"
SPAN_MIB="${SPAN_MIB:-4}"
CASES="${CASES:-gzindex esgz overlayfs}"
DOC="${DOC:-$repo/docs/benchmarks.md}"
BEGIN_MARK='<!-- index.sh: begin (generated; rerun the script to replace) -->'
END_MARK='<!-- index.sh: end -->'
UPTIME0="$(uptime)"

if [ -z "${RSNAP:-}" ] || [ -z "${DAEMON:-}" ] || [ -z "${WANPROXY:-}" ]; then
  log "release build of rsnap, remote-snapshotter, wanproxy"
  (cd "$repo" && cargo build --release -q -p rsnap -p remote-snapshotter && cargo build --release -q -p e2e --bin wanproxy)
fi
T="${CARGO_TARGET_DIR:-$repo/target}/release"
RSNAP="${RSNAP:-$T/rsnap}"
DAEMON="${DAEMON:-$T/remote-snapshotter}"
WANPROXY="${WANPROXY:-$T/wanproxy}"

ensure_python_image
want="$(sha256sum "$APP/app/data/042.bin" | cut -d' ' -f1)"

lib_init
S="$LIB_SCRATCH"
start_registry "$S/registry"
for tag in v1 v1-esgz; do
  skopeo copy --quiet --dest-tls-verify=false "oci:$OCI:$tag" "docker://$REGISTRY/bench/py:$tag"
done
start_wanproxy "${REGISTRY##*:}" "$DELAY_MS" "$MBIT" "$S/wan.stats"

log "rsnap index of the plain image"
t0="$(now)"
INDEX_OUT="$("$RSNAP" index --plain-http --span-size $((SPAN_MIB << 20)) "$REGISTRY/bench/py:v1")"
INDEX_SECS="$(secs "$t0" "$(now)")"
echo "$INDEX_OUT" >&2

RS="$S/rs"; CD="$S/containerd"; DPID=; CPID=
up() {
  mkdir -p "$RS" "$CD"
  : >"$RS/config.toml"
  "$DAEMON" --address "$RS/rs.sock" --root "$RS/root" --config "$RS/config.toml" \
    --log-level "${RS_LOG_LEVEL:-info}" --unmount-on-exit >>"$RS/daemon.log" 2>&1 &
  DPID=$!; LIB_PIDS+=("$DPID")
  wait_for 20 test -S "$RS/rs.sock" || { tail "$RS/daemon.log" >&2; exit 1; }
  start_containerd "$CD" "$RS/rs.sock"
  CPID="${LIB_PIDS[-1]}"
  wait_for 30 ctrd snapshots --snapshotter remote ls || { echo "containerd cannot reach the daemon" >&2; exit 1; }
}
forget() { # drop a stopped PID from the cleanup list
  local keep=() p
  for p in "${LIB_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  LIB_PIDS=("${keep[@]}")
}
cold() {
  local i
  for i in $(ctrd images ls -q); do ctrd images rm --sync "$i" >/dev/null; done
  stop_pid "$CPID"; forget "$CPID"; stop_pid "$DPID"; forget "$DPID"
  awk -v d="$S/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$RS/root" "$CD/root" "$CD/state"
  up
  drop_caches
}

declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
med() { tr ' ' '\n' <<<"${R[$1]:-}" | grep . | median; }
all() { tr ' ' '\n' <<<"${R[$1]:-}" | grep . | tr '\n' ' ' | sed 's/ $//'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }
loads=()
ID=0
up
for r in $(seq "$RUNS"); do
  for sys in $CASES; do
    cold
    l="$(loadavg)"; loads+=("$l")
    log "run $r/$RUNS $sys (load $l)"
    case $sys in gzindex | overlayfs) tag=v1 ;; esgz) tag=v1-esgz ;; esac
    ref="$WAN/bench/py:$tag"
    b0="$(wan_down "$S/wan.stats")"
    t0="$(now)"
    if [ "$sys" = overlayfs ]; then
      ctrd images pull --plain-http "$ref" >/dev/null
      snap=overlayfs
    else
      out="$("$RSNAP" pull -a "$CTRD_SOCK" -n demo --plain-http "$ref")"
      grep -q '3 lazy' <<<"$out" || { echo "$sys not lazy: $out" >&2; exit 1; }
      snap=remote
    fi
    t1="$(now)"; b1="$(wan_down "$S/wan.stats")"
    ID=$((ID + 1))
    t2="$(now)"; out="$(ctrd run --rm --snapshotter="$snap" "$ref" "idx-$ID")"; t3="$(now)"
    b2="$(wan_down "$S/wan.stats")"
    grep -q "$want" <<<"$out" || { echo "wrong output: $out" >&2; exit 1; }
    add "$sys/pull" "$(secs "$t0" "$t1")"
    add "$sys/total" "$(awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" 'BEGIN {printf "%.2f", (b - a) + (d - c)}')"
    add "$sys/mb_pull" "$(mb $((b1 - b0)))"
    add "$sys/mb_total" "$(mb $((b2 - b0)))"
  done
done

layers_mb() { # TAG -> compressed layer MB of the OCI layout
  local m
  m="$(jq -r --arg t "$1" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$OCI/index.json")"
  jq '[.layers[].size] | add' "$OCI/blobs/sha256/${m#sha256:}" | awk '{printf "%.1f", $1 / 1e6}'
}

section() {
  local idx_line
  idx_line="$(tail -n 1 <<<"$INDEX_OUT")"
  echo "$BEGIN_MARK"
  cat <<MD
### Images nobody converted: a seekable index (bench/index.sh)

The 3-layer python image of bench-lib.sh as built (plain gzip, $(layers_mb v1) MB
of layers), indexed once by \`rsnap index\` ($INDEX_SECS s on this machine;
checkpoints every $SPAN_MIB MiB of tar). $idx_line.
Pushed as an OCI referrer of the image manifest; docker-registry 2.8 has no
referrers API, so the daemon finds it through the \`sha256-<hex>\` tag.
\`bench/index.sh $RUNS\`, $(date -u +%Y-%m-%d), $(cpu_model), $(nproc) cores.
WAN profile: \`wanproxy\` with ${DELAY_MS} ms each way and ${MBIT} Mbit/s. Cold before every
case. Median of $RUNS runs (every run in brackets); the eStargz image is
\`rsnap convert\` of the same image ($(layers_mb v1-esgz) MB of layers).

| | pull s | pull + run s | registry MB, pull | registry MB, pull + run |
|---|---|---|---|---|
MD
  for sys in $CASES; do
    case $sys in
      gzindex) name="plain gzip + index, ours (lazy)" ;;
      esgz) name="eStargz, ours (lazy)" ;;
      overlayfs) name="plain gzip, \`ctr images pull\` + overlayfs" ;;
    esac
    echo "| $name | $(med "$sys/pull") [$(all "$sys/pull")] | $(med "$sys/total") [$(all "$sys/total")] | $(med "$sys/mb_pull") | $(med "$sys/mb_total") [$(all "$sys/mb_total")] |"
  done
  cat <<MD

Pull + run of the indexed image against eStargz: $(ratio "$(med gzindex/total)" "$(med esgz/total)")× (target ≤ 1.5×).
Load (1/5/15 min) before each case: ${loads[*]}. Before the script: $UPTIME0.
${NOTE:-}
\`rsnap index\` said:

\`\`\`
$INDEX_OUT
\`\`\`
MD
  echo "$END_MARK"
}

section >"$S/section.md"
if [ "$DOC" = - ]; then
  cat "$S/section.md"
else
  if grep -qF "$BEGIN_MARK" "$DOC"; then
    awk -v b="$BEGIN_MARK" -v e="$END_MARK" -v f="$S/section.md" '
      $0 == b {while ((getline l < f) > 0) print l; skip = 1; next}
      $0 == e {skip = 0; next}
      !skip' "$DOC" >"$DOC.tmp"
    mv "$DOC.tmp" "$DOC"
  else
    { echo; cat "$S/section.md"; } >>"$DOC"
  fi
  cat "$S/section.md"
  log "wrote the index section of $DOC"
fi
