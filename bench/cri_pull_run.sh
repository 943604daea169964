#!/usr/bin/env bash
# The kubelet's path, timed (issue #11 item 7): containerd 1.6.20's CRI
# plugin, driven over runtime.v1 by `cri_pullrun` (a bin of the e2e
# package): PullImage -> RunPodSandbox (host network) -> CreateContainer +
# StartContainer of the image's own command -> exited -> output. overlayfs
# (the gzip image, full pull) against ours (`snapshotter = "remote"`, the
# rsnap-converted eStargz image, daemon defaults), loopback and the WAN
# profile, alternating within each run, cold before every case. The image is
# bench/lazy_pull.sh's python image (bench-lib.sh).
#
#   bench/cri_pull_run.sh [RUNS=3]
#
# Env: NETS, DELAY_MS, MBIT, RSNAP/DAEMON/WANPROXY/CRI_PULLRUN (else built in
# CARGO_TARGET_DIR/release), DOC (default docs/benchmarks.md; - prints only).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
# shellcheck source=bench/bench-lib.sh
. "$repo/bench/bench-lib.sh"
RUNS="${1:-${RUNS:-3}}"
DELAY_MS="${DELAY_MS:-15}"
MBIT="${MBIT:-200}"
NETS="${NETS:-loopback wan}"
DOC="${DOC:-$repo/docs/benchmarks.md}"
if [ -z "${RSNAP:-}" ] || [ -z "${DAEMON:-}" ] || [ -z "${CRI_PULLRUN:-}" ]; then
  (cd "$repo" && cargo build --release -q -p rsnap -p remote-snapshotter && cargo build --release -q -p e2e --bin wanproxy --bin cri_pullrun)
fi
T="${CARGO_TARGET_DIR:-$repo/target}/release"
RSNAP="${RSNAP:-$T/rsnap}"; DAEMON="${DAEMON:-$T/remote-snapshotter}"
WANPROXY="${WANPROXY:-$T/wanproxy}"; CRI_PULLRUN="${CRI_PULLRUN:-$T/cri_pullrun}"
UPTIME0="$(uptime)"

ensure_python_image
want="$(sha256sum "$APP/app/data/042.bin" | cut -d' ' -f1)"

lib_init
S="$LIB_SCRATCH"
start_registry "$S/registry"
for tag in v1 v1-esgz; do
  skopeo copy --quiet --dest-tls-verify=false "oci:$OCI:$tag" "docker://$REGISTRY/bench/py:$tag"
done
"$CRI_PULLRUN" --pause-image "$S/pause" v1
skopeo copy --quiet --dest-tls-verify=false "oci:$S/pause:v1" "docker://$REGISTRY/pause:v1"
start_wanproxy "${REGISTRY##*:}" 0 0 "$S/lo.stats"; LO="$WAN"
start_wanproxy "${REGISTRY##*:}" "$DELAY_MS" "$MBIT" "$S/wan.stats"
declare -A HOST=([loopback]="$LO" [wan]="$WAN") STATS=([loopback]="$S/lo.stats" [wan]="$S/wan.stats")

RS="$S/rs"; CD="$S/containerd"; LIB_DIRS+=("$RS" "$CD")
OURS_PID=; CTRD_PID=
up() { # SNAPSHOTTER: our daemon, then containerd with CRI on that snapshotter
  mkdir -p "$RS" "$CD/root" "$CD/state" "$CD/cni/conf" "$CD/cni/bin"
  : >"$RS/config.toml"
  "$DAEMON" --address "$RS/rs.sock" --root "$RS/root" --config "$RS/config.toml" \
    --log-level info --unmount-on-exit >>"$RS/daemon.log" 2>&1 &
  OURS_PID=$!; LIB_PIDS+=("$OURS_PID")
  wait_for 20 test -S "$RS/rs.sock" || { tail "$RS/daemon.log" >&2; exit 1; }
  CTRD_SOCK="$CD/c.sock"; CTRD_DIR="$CD"
  cat >"$CD/config.toml" <<TOML
version = 2
root = "$CD/root"
state = "$CD/state"
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = "$CD/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CD/opt"
[proxy_plugins.remote]
  type = "snapshot"
  address = "$RS/rs.sock"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "$REGISTRY/pause:v1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$1"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CD/cni/bin"
    conf_dir = "$CD/cni/conf"
TOML
  for h in "$REGISTRY" "$LO" "$WAN"; do
    printf '  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."%s"]\n    endpoint = ["http://%s"]\n' "$h" "$h" >>"$CD/config.toml"
  done
  containerd --config "$CD/config.toml" >>"$CD/containerd.log" 2>&1 &
  CTRD_PID=$!; LIB_PIDS+=("$CTRD_PID")
  wait_for 20 ctr -a "$CTRD_SOCK" version || { tail -20 "$CD/containerd.log" >&2; exit 1; }
  wait_for 30 ctr -a "$CTRD_SOCK" -n k8s.io snapshots --snapshotter remote ls || { echo "containerd cannot reach our daemon" >&2; exit 1; }
  # The sandbox image, untimed, into the snapshotter the pods use.
  ctr -a "$CTRD_SOCK" -n k8s.io images pull --plain-http --snapshotter "$1" "$REGISTRY/pause:v1" >/dev/null
}
down() {
  local i p
  for i in $(ctr -a "$CTRD_SOCK" -n k8s.io images ls -q); do ctr -a "$CTRD_SOCK" -n k8s.io images rm --sync "$i" >/dev/null; done
  for p in "$CTRD_PID" "$OURS_PID"; do stop_pid "$p"; done
  awk -v d="$S/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$RS/root" "$CD/root" "$CD/state"
}

declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
loads=()
first=1
for r in $(seq "$RUNS"); do
  for net in $NETS; do
    for mode in ours overlayfs; do
      if [ "$first" = 1 ]; then first=0; else down; fi
      snap=remote; tag=v1-esgz
      [ "$mode" = overlayfs ] && { snap=overlayfs; tag=v1; }
      up "$snap"; drop_caches
      l="$(loadavg)"; loads+=("$l"); log "run $r/$RUNS $net $mode (load $l)"
      b0="$(wan_down "${STATS[$net]}")"
      out="$("$CRI_PULLRUN" --socket "$CTRD_SOCK" --image "${HOST[$net]}/bench/py:$tag" --log-dir "$S/logs/$r-$net-$mode")"
      b1="$(wan_down "${STATS[$net]}")"
      grep -q "$want" <<<"$out" || { echo "wrong output: $out" >&2; exit 1; }
      k="$net/$mode"
      for f in pull pod start exited total; do add "$k/$f" "$(head -n1 <<<"$out" | grep -oE "$f=[0-9.]+" | cut -d= -f2)"; done
      add "$k/mb" "$(awk -v b=$((b1 - b0)) 'BEGIN {printf "%.1f", b / 1e6}')"
    done
  done
done

med() { tr ' ' '\n' <<<"${R[$1]}" | grep . | median; }
all() { tr ' ' '\n' <<<"${R[$1]}" | grep . | tr '\n' ' ' | sed 's/ $//'; }
B='<!-- cri_pull_run.sh: begin (generated; rerun the script to replace) -->'
E='<!-- cri_pull_run.sh: end -->'
{
  echo "$B"
  cat <<MD
## CRI: PullImage to a running container's output (issue #11 item 7, \`bench/cri_pull_run.sh\`)

Date: $(date -u '+%Y-%m-%d %H:%M') UTC; $(nproc) CPUs ($(cpu_model)), kernel $(uname -r), containerd $(containerd --version | awk '{print $3}') with its CRI plugin, driven over runtime.v1 by \`cri_pullrun\` (e2e package): PullImage, RunPodSandbox (host network; the sandbox image pulled beforehand), CreateContainer + StartContainer of the python image's own command, wait until it exited. Ours: \`snapshotter = "remote"\`, the \`rsnap convert\`ed image, daemon defaults; overlayfs: the gzip image. WAN = $DELAY_MS ms each way, $MBIT Mbit/s. $RUNS runs, modes alternating, cold before every case. Load before the cases: $(printf '%s\n' "${loads[@]}" | cut -d' ' -f1 | mmm); \`uptime\` at the start: $UPTIME0.

| net | mode | PullImage s | RunPodSandbox s | Create+Start s | until exited s | total s (median [all]) | MB from registry |
|---|---|---|---|---|---|---|---|
$(for n in $NETS; do for m in ours overlayfs; do k="$n/$m"; echo "| $n | $m | $(med "$k/pull") | $(med "$k/pod") | $(med "$k/start") | $(med "$k/exited") | $(med "$k/total") [$(all "$k/total")] | $(med "$k/mb") |"; done; done)
MD
  echo "$E"
} >"$S/section.md"
cat "$S/section.md"
if [ "$DOC" != - ]; then
  if grep -qF "$B" "$DOC"; then
    awk -v b="$B" -v e="$E" -v f="$S/section.md" '$0 == b {while ((getline l < f) > 0) print l; skip = 1; next} $0 == e {skip = 0; next} !skip' "$DOC" >"$DOC.tmp"
    mv "$DOC.tmp" "$DOC"
  else
    { echo; cat "$S/section.md"; } >>"$DOC"
  fi
fi
