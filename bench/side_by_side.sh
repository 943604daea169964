#!/usr/bin/env bash
# Side by side with the Go reference (issue #10): containerd-stargz-grpc 0.12
# (built from Debian's Go sources by ../shared/reference/build.sh, once,
# cached) and our remote-snapshotter as two proxy plugins of ONE stock
# containerd 1.6.20, the same local docker-registry, the same image bytes and
# network profile, systems alternating within each run (ours, Go, overlayfs),
# cold before every case. Writes its section of docs/benchmarks.md.
#
#   bench/side_by_side.sh [RUNS=3]
#
# The image is bench/lazy_pull.sh's 3-layer python image (bench-lib.sh,
# cached in /var/tmp/rsnap-bench), in five forms: gzip (overlayfs), eStargz
# by `ctr-remote image convert --estargz --oci` and by `rsnap convert`, and
# optimized by `ctr-remote image optimize` (falls back to convert with a
# record of the traced files if optimize fails here; the section says which)
# and by `rsnap convert --prioritized-files`.
#
# Cases, for NET = loopback (through `wanproxy` with no delay and no cap,
# only to count bytes) and wan (15 ms each way, 200 Mbit/s):
#   pullrun  pull (ours: `rsnap pull`; Go: `ctr-remote images rpull`;
#            overlayfs: `ctr images pull`) + `ctr run` of the image's command
#            (imports a few modules, hashes one 1 MiB file): seconds, registry
#            bytes, daemon RSS after the run, daemon CPU seconds. On loopback
#            with the ctr-remote image the case then waits for the daemons'
#            background fetch to finish: peak RSS (VmHWM) and CPU after it.
#   opt      pullrun on the optimized images (ours and Go only)
#   cat      pull, then a container times `cat /app/data/*.bin` (128 MiB) inside
#   find     (loopback) pull, then `ctr run ... find / -xdev -type f | wc -l`
#            timed from outside (container start included)
# Cold before every case: every image removed (`ctr images rm --sync`),
# containerd and both daemons stopped, their roots wiped and unmounted,
# started again, page cache dropped. Then a profile pass (PROFILE=0 skips):
# one WAN pullrun per daemon under `perf record`, with the registry's
# per-request log (requests, bytes, registry-side latency).
#
# Env: RUNS, NETS ("loopback wan"), CASES ("pullrun opt cat find"), DELAY_MS,
# MBIT, RSNAP/DAEMON/WANPROXY (else built in CARGO_TARGET_DIR/release),
# REF_DIR (Go reference binaries, default BENCH_CACHE/reference), DOC
# (default docs/benchmarks.md; DOC=- prints only), PROFILE, LOAD_NOTE (a word on
# what else ran, for the section).
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
RUNS="${1:-${RUNS:-3}}"
DELAY_MS="${DELAY_MS:-15}"
MBIT="${MBIT:-200}"
NETS="${NETS:-loopback wan}"
CASES="${CASES:-pullrun opt cat find}"
PROFILE="${PROFILE:-1}"
DOC="${DOC:-$repo/docs/benchmarks.md}"
UPTIME0="$(uptime)"
LINK_MBS="$(awk -v m="$MBIT" 'BEGIN {print m / 8}')" # MB/s of the WAN link

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
PERF=""; [ "$PROFILE" = 1 ] && command -v perf >/dev/null && PERF=perf

ensure_python_image
want="$(sha256sum "$APP/app/data/042.bin" | cut -d' ' -f1)"
UNPACKED="$(du -sb "$BENCH_CACHE/rootfs" "$BENCH_CACHE/python3" "$APP" | awk '{s += $1} END {print s}')"

# ---- services ----------------------------------------------------------------
lib_init
S="$LIB_SCRATCH"
# info: one "response completed" line per request, with its duration and size
export REGISTRY_LOG_LEVEL=info
start_registry "$S/registry"
RLOG="$S/registry/registry.log"
for tag in v1 v1-esgz v1-opt; do
  skopeo copy --quiet --dest-tls-verify=false "oci:$OCI:$tag" "docker://$REGISTRY/bench/py:$tag"
done
start_wanproxy "${REGISTRY##*:}" 0 0 "$S/lo.stats"; LO="$WAN"
start_wanproxy "${REGISTRY##*:}" "$DELAY_MS" "$MBIT" "$S/wan.stats"
declare -A HOST=([loopback]="$LO" [wan]="$WAN") STATS=([loopback]="$S/lo.stats" [wan]="$S/wan.stats")
up
ensure_ctr_remote_images # v1-ctrr, v1-ctrr-opt in the registry; sets OPT_HOW
cold

# ---- the runs ----------------------------------------------------------------
declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
loads=()
for r in $(seq "$RUNS"); do
  for net in $NETS; do
    if [[ " $CASES " == *" pullrun "* ]]; then
      for img in ctrr esgz; do
        for sys in ours go overlayfs; do
          [ "$sys" = overlayfs ] && [ "$img" != ctrr ] && continue
          bg=0; [ "$net" = loopback ] && [ "$img" = ctrr ] && [ "$sys" != overlayfs ] && bg=1
          case_pullrun "$r" "$net" "$img" "$sys" "$bg"
        done
      done
    fi
    if [[ " $CASES " == *" opt "* ]]; then
      for img in ctrr-opt opt; do
        for sys in ours go; do case_pullrun "$r" "$net" "$img" "$sys" 0; done
      done
    fi
    if [[ " $CASES " == *" cat "* ]]; then
      for sys in ours go overlayfs; do case_cat "$r" "$net" "$sys"; done
    fi
  done
  if [[ " $CASES " == *" find "* ]]; then
    for sys in ours go overlayfs; do case_find "$r" loopback "$sys"; done
  fi
done
PROF_MD=""
if [ "$PROFILE" = 1 ]; then
  for sys in ours go; do profile_pullrun wan ctrr "$sys"; done
fi

# ---- the section -------------------------------------------------------------
section >"$S/section.md"
if [ "$DOC" = - ]; then
  cat "$S/section.md"
else
  replace_section "$DOC" "$S/section.md"
  cat "$S/section.md"
  log "wrote the side-by-side section of $DOC"
fi
