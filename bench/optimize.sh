#!/usr/bin/env bash
# `rsnap optimize` vs the Go reference's `ctr-remote image optimize` (issue
# #13 item 5), on the same source image: the 3-layer python image of
# bench-lib.sh (gzip, in a local docker-registry), whose command imports a
# few modules and hashes one 1 MiB file. Writes its section of
# docs/benchmarks.md.
#
#   bench/optimize.sh [RUNS=2]
#
# 1. Optimize wall time, RUNS times each, alternating:
#    ours: `rsnap optimize --plain-http REG/bench/py:v1 REG/bench/py:v1-opt`
#          (reads the source from the registry, runs the command in runc,
#          converts, pushes);
#    Go:   `ctr-remote image optimize --oci` of the same image already pulled
#          into containerd (untimed), then `ctr images push` (timed apart).
# 2. Lazy pull + run of each optimized image with each daemon on the WAN
#    profile (15 ms each way, 200 Mbit/s, `wanproxy`), cold before every
#    case, both daemons as proxy plugins of one containerd
#    (bench/side_by_side-lib.sh's `case_pullrun`).
#
# Env: RUNS, DELAY_MS, MBIT, RSNAP/DAEMON/WANPROXY (else built in
# CARGO_TARGET_DIR/release), REF_DIR, DOC (DOC=- prints only), LOAD_NOTE.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
# shellcheck source=bench/bench-lib.sh
. "$repo/bench/bench-lib.sh"
# shellcheck source=bench/side_by_side-lib.sh
. "$repo/bench/side_by_side-lib.sh"
# shellcheck source=bench/side_by_side-report.sh
. "$repo/bench/side_by_side-report.sh"
SBS_BEGIN='<!-- optimize.sh: begin (generated; rerun the script to replace) -->'
SBS_END='<!-- optimize.sh: end -->'
RUNS="${1:-${RUNS:-2}}"
DELAY_MS="${DELAY_MS:-15}"
MBIT="${MBIT:-200}"
DOC="${DOC:-$repo/docs/benchmarks.md}"
UPTIME0="$(uptime)"

if [ -z "${RSNAP:-}" ] || [ -z "${DAEMON:-}" ]; then
  log "release build of rsnap, remote-snapshotter, wanproxy"
  (cd "$repo" && cargo build --release -q -p rsnap -p remote-snapshotter && cargo build --release -q -p e2e --bin wanproxy)
fi
T="${CARGO_TARGET_DIR:-$repo/target}/release"
RSNAP="${RSNAP:-$T/rsnap}"
DAEMON="${DAEMON:-$T/remote-snapshotter}"
WANPROXY="${WANPROXY:-$T/wanproxy}"
REF_DIR="${REF_DIR:-$BENCH_CACHE/reference}"
if [ ! -x "$REF_DIR/containerd-stargz-grpc" ]; then
  log "building the Go reference into $REF_DIR"
  "$repo/../shared/reference/build.sh" "$REF_DIR" >&2
fi
GOSNAP="$REF_DIR/containerd-stargz-grpc"
command -v ctr-remote >/dev/null || apt-get install -y -q stargz-snapshotter >/dev/null

ensure_python_image
want="$(sha256sum "$APP/app/data/042.bin" | cut -d' ' -f1)"

lib_init
S="$LIB_SCRATCH"
start_registry "$S/registry"
skopeo copy --quiet --dest-tls-verify=false "oci:$OCI:v1" "docker://$REGISTRY/bench/py:v1"
start_wanproxy "${REGISTRY##*:}" "$DELAY_MS" "$MBIT" "$S/wan.stats"
declare -A HOST=([wan]="$WAN") STATS=([wan]="$S/wan.stats")
up

declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
loads=()
SRC="$REGISTRY/bench/py:v1"

# ---- 1. optimize wall time -----------------------------------------------------
ctrd images pull --plain-http "$SRC" >/dev/null
for r in $(seq "$RUNS"); do
  l="$(loadavg)"; loads+=("$l")
  log "run $r/$RUNS: rsnap optimize (load $l)"
  drop_caches
  t0="$(now)"
  "$RSNAP" optimize --plain-http --scratch-dir "$S" "$SRC" "$REGISTRY/bench/py:v1-opt" >"$S/ours-opt.log" 2>&1 ||
    { tail "$S/ours-opt.log" >&2; exit 1; }
  t1="$(now)"; add opt/ours "$(secs "$t0" "$t1")"
  log "run $r/$RUNS: ctr-remote image optimize --oci"
  ctrd images rm --sync "$REGISTRY/bench/py:v1-ctrr-opt" >/dev/null 2>&1 || true
  drop_caches
  t0="$(now)"
  ctr-remote -a "$CTRD_SOCK" -n demo image optimize --oci "$SRC" "$REGISTRY/bench/py:v1-ctrr-opt" >"$S/go-opt.log" 2>&1 ||
    { tail "$S/go-opt.log" >&2; exit 1; }
  t1="$(now)"
  ctrd images push --plain-http "$REGISTRY/bench/py:v1-ctrr-opt" >/dev/null
  t2="$(now)"
  add opt/go "$(secs "$t0" "$t1")"; add push/go "$(secs "$t1" "$t2")"
  add optpush/go "$(secs "$t0" "$t2")"
done
OURS_FIRST="$(grep -E 'files first' "$S/ours-opt.log" | awk '{s += $2} END {print s + 0}')"

# ---- 2. lazy pull + run of each optimized image, WAN ---------------------------
for r in $(seq "$RUNS"); do
  for img in opt ctrr-opt; do
    for sys in ours go; do case_pullrun "$r" wan "$img" "$sys" 0; done
  done
done

# ---- the section ---------------------------------------------------------------------
cell() { # KEY -> "median (min–max)"
  local m; m="$(med "$1")"
  if [ -z "$m" ]; then echo "—"; else echo "$m ($(rng "$1"))"; fi
}
opt_section() {
  echo "$SBS_BEGIN"
  echo "## rsnap optimize vs ctr-remote image optimize (issue #13)"
  echo
  echo "\`bench/optimize.sh $RUNS\`, $(date -u +%Y-%m-%d), $(cpu_model), $(nproc) cores;"
  echo "binaries: \`$RSNAP\`, \`$DAEMON\`; Go reference: Debian's stargz-snapshotter $(dpkg-query -W -f '${Version}' stargz-snapshotter 2>/dev/null) (\`ctr-remote\`), containerd-stargz-grpc from \`$REF_DIR\`."
  echo "Medians of two runs are the lower value (bench-lib.sh's \`median\`)."
  echo "Machine load (1/5/15 min) at the start of each optimize run: ${loads[*]:0:$RUNS};"
  echo "uptime at start: \`$UPTIME0\`.${LOAD_NOTE:+ $LOAD_NOTE}"
  echo "Source: bench-lib.sh's 3-layer python image (gzip), \`python3 /app/run.py\`."
  echo "Medians of $RUNS runs (range in brackets), seconds."
  echo
  echo "| | rsnap optimize | ctr-remote image optimize | ours / Go |"
  echo "|---|---|---|---|"
  echo "| optimize wall time (ours: registry in, registry out; Go: from containerd's store, push apart) | $(cell opt/ours) | $(cell opt/go) + push $(cell push/go) = $(cell optpush/go) | $(rat "$(med opt/ours)" "$(med optpush/go)") |"
  echo
  echo "rsnap put $OURS_FIRST files first in all (its last run)."
  echo
  echo "Lazy pull + run on the WAN profile ($DELAY_MS ms each way, $MBIT Mbit/s), cold before each case:"
  echo
  echo "| image | our daemon: pull + run (s) | registry MB | Go daemon: pull + run (s) | registry MB |"
  echo "|---|---|---|---|---|"
  local img label
  for img in opt ctrr-opt; do
    case $img in opt) label="rsnap optimize" ;; *) label="ctr-remote image optimize" ;; esac
    echo "| $label | $(cell "pullrun/wan/$img/ours/total") | $(or_dash "$(med "pullrun/wan/$img/ours/mb_total")") | $(cell "pullrun/wan/$img/go/total") | $(or_dash "$(med "pullrun/wan/$img/go/mb_total")") |"
  done
  echo
  echo "Every run: $(for k in opt/ours optpush/go pullrun/wan/opt/ours/total pullrun/wan/opt/go/total pullrun/wan/ctrr-opt/ours/total pullrun/wan/ctrr-opt/go/total; do printf '%s: %s; ' "$k" "$(all "$k")"; done)"
  echo "$SBS_END"
}
opt_section >"$S/section.md"
if [ "$DOC" = - ]; then
  cat "$S/section.md"
else
  replace_section "$DOC" "$S/section.md"
  cat "$S/section.md"
  log "wrote the optimize section of $DOC"
fi
