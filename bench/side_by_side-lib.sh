# Services and cases of bench/side_by_side.sh (sourced after scripts/lib.sh
# and bench/bench-lib.sh): both snapshotter daemons under one containerd,
# the ctr-remote images, the cold reset, one function per case.
# shellcheck shell=bash

CLK_TCK="$(getconf CLK_TCK)"
OURS_PID=; GO_PID=; CTRD_PID=

# cpu_s PID -> user + system seconds the process has used so far
cpu_s() { awk -v t="$CLK_TCK" '{sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / t}' "/proc/$1/stat"; }
sub2() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }
forget_pid() { # drop a stopped PID from the cleanup list
  local keep=() p
  for p in "${LIB_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  LIB_PIDS=("${keep[@]}")
}
stop_sig() { # PID SIGNAL: stop one process we started, KILL after 10 s
  kill "-$2" "$1" 2>/dev/null || { forget_pid "$1"; return 0; }
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget_pid "$1"
}
unmount_under() { # DIR: every mount below it, deepest first
  awk -v d="$1/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
fuse_mounts_under() { awk -v d="$1/" 'index($5, d) == 1 && / - fuse/' /proc/self/mountinfo | wc -l; }

# up: our daemon (defaults), the Go daemon (upstream defaults), then one
# containerd with both as proxy plugins `remote` and `stargz`.
up() {
  RS="$S/rs"; GOD="$S/go"; CD="$S/containerd"
  mkdir -p "$RS" "$GOD" "$CD/root" "$CD/state"
  LIB_DIRS+=("$RS" "$GOD" "$CD")
  : >"$RS/config.toml"; : >"$GOD/config.toml"
  "$DAEMON" --address "$RS/rs.sock" --root "$RS/root" --config "$RS/config.toml" \
    --log-level "${RS_LOG_LEVEL:-info}" --unmount-on-exit >>"$RS/daemon.log" 2>&1 &
  OURS_PID=$!; LIB_PIDS+=("$OURS_PID")
  "$GOSNAP" --address "$GOD/go.sock" --root "$GOD/root" --config "$GOD/config.toml" \
    --log-level info >>"$GOD/daemon.log" 2>&1 &
  GO_PID=$!; LIB_PIDS+=("$GO_PID")
  wait_for 20 test -S "$RS/rs.sock" || { tail "$RS/daemon.log" >&2; exit 1; }
  wait_for 20 test -S "$GOD/go.sock" || { tail "$GOD/daemon.log" >&2; exit 1; }
  CTRD_SOCK="$CD/c.sock"; CTRD_DIR="$CD"
  cat >"$CD/config.toml" <<TOML
version = 2
root = "$CD/root"
state = "$CD/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
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
[proxy_plugins.stargz]
  type = "snapshot"
  address = "$GOD/go.sock"
TOML
  containerd --config "$CD/config.toml" >>"$CD/containerd.log" 2>&1 &
  CTRD_PID=$!; LIB_PIDS+=("$CTRD_PID")
  wait_for 20 ctr -a "$CTRD_SOCK" version || { tail -20 "$CD/containerd.log" >&2; exit 1; }
  wait_for 30 ctrd snapshots --snapshotter remote ls || { echo "containerd cannot reach our daemon" >&2; exit 1; }
  wait_for 30 ctrd snapshots --snapshotter stargz ls || { echo "containerd cannot reach the Go daemon" >&2; exit 1; }
}

# cold: no image, no snapshot, no cache anywhere; page cache dropped.
cold() {
  local i
  for i in $(ctrd images ls -q); do ctrd images rm --sync "$i" >/dev/null; done
  stop_sig "$CTRD_PID" TERM
  stop_sig "$OURS_PID" TERM     # --unmount-on-exit
  stop_sig "$GO_PID" INT        # SIGINT: the reference unmounts and cleans up
  unmount_under "$RS"; unmount_under "$GOD"
  rm -rf "$RS/root" "$GOD/root"
  up
  drop_caches
}

tag_of() { case "$1/$2" in overlayfs/*) echo v1 ;; */ctrr) echo v1-ctrr ;; */esgz) echo v1-esgz ;; */ctrr-opt) echo v1-ctrr-opt ;; */opt) echo v1-opt ;; esac; }
snap_of() { case "$1" in ours) echo remote ;; go) echo stargz ;; *) echo overlayfs ;; esac; }
pid_of() { case "$1" in ours) echo "$OURS_PID" ;; go) echo "$GO_PID" ;; *) echo "" ;; esac; }

# do_pull SYS REF: each system's own client
do_pull() {
  local out
  case "$1" in
    ours)
      out="$("$RSNAP" pull -a "$CTRD_SOCK" -n demo --plain-http "$2")"
      grep -q '3 lazy' <<<"$out" || { echo "ours not lazy: $out" >&2; exit 1; } ;;
    go)
      ctr-remote -a "$CTRD_SOCK" -n demo images rpull --plain-http --snapshotter stargz "$2" >/dev/null
      [ "$(fuse_mounts_under "$GOD")" -ge 3 ] || { echo "Go reference not lazy" >&2; exit 1; } ;;
    overlayfs) ctrd images pull --plain-http "$2" >/dev/null ;;
  esac
}

# wait_bg NET: until the registry bytes stop growing (background fetch done;
# the reference starts it 5 s after the last foreground read), 180 s at most
wait_bg() {
  local last=-1 cur waited=0
  sleep 7
  cur="$(wan_down "${STATS[$1]}")"
  while [ "$cur" != "$last" ] && [ "$waited" -lt 180 ]; do
    sleep 3; waited=$((waited + 3)); last="$cur"; cur="$(wan_down "${STATS[$1]}")"
  done
  echo "$cur"
}

ID=0
case_start() { # CASE NET SYS: cold reset, then remember the load
  cold
  local l; l="$(loadavg)"; loads+=("$l")
  log "run $r/$RUNS $1 $2 $3 (load $l)"
}

# case_pullrun RUN NET IMG SYS BG
case_pullrun() {
  local net="$2" img="$3" sys="$4" bg="$5" ref pid b0 b1 b2 c0 t0 t1 t2 t3 out k
  case_start "pullrun/$img" "$net" "$sys"
  ref="${HOST[$net]}/bench/py:$(tag_of "$sys" "$img")"
  pid="$(pid_of "$sys")"
  b0="$(wan_down "${STATS[$net]}")"; [ -z "$pid" ] || c0="$(cpu_s "$pid")"
  t0="$(now)"; do_pull "$sys" "$ref"; t1="$(now)"
  b1="$(wan_down "${STATS[$net]}")"
  ID=$((ID + 1))
  t2="$(now)"; out="$(ctrd run --rm --snapshotter="$(snap_of "$sys")" "$ref" "sbs-$ID")"; t3="$(now)"
  b2="$(wan_down "${STATS[$net]}")"
  grep -q "$want" <<<"$out" || { echo "wrong output: $out" >&2; exit 1; }
  k="pullrun/$net/$img/$sys"
  add "$k/pull" "$(secs "$t0" "$t1")"; add "$k/run" "$(secs "$t2" "$t3")"
  add "$k/total" "$(awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" 'BEGIN {printf "%.2f", (b - a) + (d - c)}')"
  add "$k/mb_pull" "$(mb $((b1 - b0)))"; add "$k/mb_total" "$(mb $((b2 - b0)))"
  [ -n "$pid" ] || return 0
  add "$k/cpu" "$(sub2 "$c0" "$(cpu_s "$pid")")"
  add "$k/rss" "$(rss "$pid" | cut -d' ' -f1)"
  [ "$bg" = 1 ] || return 0
  log "  waiting for the background fetch"
  local b3; b3="$(wait_bg "$net")"
  add "$k/hwm_bg" "$(rss "$pid" | cut -d' ' -f2)"
  add "$k/cpu_bg" "$(sub2 "$c0" "$(cpu_s "$pid")")"
  add "$k/mb_bg" "$(mb $((b3 - b0)))"
}
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }

# pull_quiet NET SYS -> sets REF: the ctr-remote image (gzip for overlayfs),
# pulled untimed, page cache dropped after
pull_quiet() {
  REF="${HOST[$1]}/bench/py:$(tag_of "$2" ctrr)"
  do_pull "$2" "$REF"
  drop_caches
}

# case_cat RUN NET SYS: the 128 MiB of app data read in a container, timed inside
case_cat() {
  local net="$2" sys="$3" pid c0 b0 out k s
  case_start cat "$net" "$sys"
  pid="$(pid_of "$sys")"
  b0="$(wan_down "${STATS[$net]}")"; [ -z "$pid" ] || c0="$(cpu_s "$pid")"
  pull_quiet "$net" "$sys"
  ID=$((ID + 1))
  # shellcheck disable=SC2016 # expanded by the container's shell
  out="$(ctrd run --rm --snapshotter="$(snap_of "$sys")" "$REF" "sbs-$ID" sh -c \
    's=$(date +%s%N); cat /app/data/*.bin >/dev/null && e=$(date +%s%N) && echo $((e - s))')"
  [[ "$out" =~ ^[0-9]+$ ]] || { echo "cat failed: $out" >&2; exit 1; }
  s="$(awk -v n="$out" 'BEGIN {printf "%.2f", n / 1e9}')"
  k="cat/$net/ctrr/$sys"
  add "$k/secs" "$s"
  add "$k/mbs" "$(awk -v n="$out" 'BEGIN {printf "%.1f", 134217728 / (n / 1e9) / 1e6}')"
  add "$k/mb_total" "$(mb $(($(wan_down "${STATS[$net]}") - b0)))"
  [ -z "$pid" ] || add "$k/cpu" "$(sub2 "$c0" "$(cpu_s "$pid")")"
}

# case_find RUN NET SYS: a metadata walk in a container, container start included
case_find() {
  local net="$2" sys="$3" t0 t1 out k
  case_start find "$net" "$sys"
  pull_quiet "$net" "$sys"
  ID=$((ID + 1))
  t0="$(now)"
  out="$(ctrd run --rm --snapshotter="$(snap_of "$sys")" "$REF" "sbs-$ID" sh -c 'find / -xdev -type f | wc -l')"
  t1="$(now)"
  k="find/$net/ctrr/$sys"
  add "$k/secs" "$(secs "$t0" "$t1")"; add "$k/files" "$out"
}

# profile_pullrun NET IMG SYS: one more pullrun under perf, with the
# registry's per-request log of it; appends markdown to PROF_MD
profile_pullrun() {
  local net="$1" img="$2" sys="$3" ref pid n0 t0 t1 pp="" out data="$S/perf-$3.data"
  r=profile; case_start "profile/$img" "$net" "$sys"
  ref="${HOST[$net]}/bench/py:$(tag_of "$sys" "$img")"
  pid="$(pid_of "$sys")"
  n0="$(wc -l <"$RLOG")"
  if [ -n "$PERF" ]; then
    perf record -q -F 499 -g -p "$pid" -o "$data" >/dev/null 2>&1 &
    pp=$!; sleep 0.5
  fi
  t0="$(now)"; do_pull "$sys" "$ref"; t1="$(now)"
  ID=$((ID + 1))
  ctrd run --rm --snapshotter="$(snap_of "$sys")" "$ref" "sbs-$ID" >/dev/null
  local t2; t2="$(now)"
  if [ -n "$pp" ]; then kill -INT "$pp"; wait "$pp" 2>/dev/null || true; fi
  PROF_MD+="
#### $sys, pull + run, $net, $img image: pull $(secs "$t0" "$t1") s, pull + run $(secs "$t0" "$t2") s

Registry requests (docker-registry's log; latency is the registry's own, without the WAN delay):

\`\`\`
$(tail -n +"$((n0 + 1))" "$RLOG" | registry_summary)
\`\`\`
"
  if [ -n "$pp" ] && [ -s "$data" ]; then
    out="$(perf report -i "$data" --stdio --no-children -g none --sort dso 2>/dev/null | grep -v '^#' | grep -v '^$' | grep '%' | head -n 8 || true)"
    PROF_MD+="
CPU samples by object (\`perf record -F 499 -g -p PID\` over the case, \`perf report --no-children --sort dso\`):

\`\`\`
$out
\`\`\`

Top symbols:

\`\`\`
$(perf report -i "$data" --stdio --no-children -g none --sort symbol 2>/dev/null | grep -E '^ +[0-9.]+%' | sed -E 's/ +- +- *$//' | head -n 15 | cut -c1-110 || true)
\`\`\`
"
  fi
}

# registry_summary < LOG -> per kind of request: count, bytes, latency
registry_summary() {
  grep 'msg="response completed"' | awk '
    function dur(s) { # Go duration -> ms
      if (s ~ /ms$/) return substr(s, 1, length(s) - 2) + 0
      if (s ~ /µs$/) return substr(s, 1, length(s) - 3) / 1000
      if (s ~ /us$/) return substr(s, 1, length(s) - 2) / 1000
      if (s ~ /ns$/) return substr(s, 1, length(s) - 2) / 1e6
      if (s ~ /s$/) return substr(s, 1, length(s) - 1) * 1000
      return 0
    }
    {
      m = ""; u = ""; st = ""; w = 0; d = 0
      for (i = 1; i <= NF; i++) {
        split($i, kv, "=")
        if (kv[1] == "http.request.method") m = kv[2]
        else if (kv[1] == "http.request.uri") u = kv[2]
        else if (kv[1] == "http.response.status") st = kv[2]
        else if (kv[1] == "http.response.written") w = kv[2]
        else if (kv[1] == "http.response.duration") d = dur(kv[2])
      }
      if (match($0, /T[0-9:.]+Z/)) {
        split(substr($0, RSTART + 1, RLENGTH - 2), hms, ":")
        e = hms[1] * 3600 + hms[2] * 60 + hms[3]; st0 = e - d / 1000
        if (!N || st0 < first) first = st0
        if (!N || e > last) last = e
        busy += d
      }
      kind = (u ~ /\/manifests\//) ? "manifest" : (u ~ /\/blobs\//) ? "blob" : "other"
      key = m " " kind " " st
      n[key]++; b[key] += w; t[key] += d; if (d > mx[key]) mx[key] = d
      N++; B += w
    }
    END {
      printf "%-22s %6s %12s %10s %10s\n", "request", "count", "bytes", "mean ms", "max ms"
      for (k in n) printf "%-22s %6d %12d %10.2f %10.2f\n", k, n[k], b[k], t[k] / n[k], mx[k]
      printf "%-22s %6d %12d\n", "total", N, B
      if (N) printf "first request start -> last response end: %.3f s; the registry was serving for %.0f %% of it (sum of its latencies / span; the rest is round trips and the client)\n", last - first, busy / 1000 / (last - first + 1e-9) * 100
    }'
}

# ensure_ctr_remote_images: the ctr-remote conversions of the gzip image in
# the registry as v1-ctrr (convert --estargz --oci) and v1-ctrr-opt
# (image optimize; if that fails here, convert with a record of the files
# bench-lib.sh traced), made once and cached as OCI archives; sets OPT_HOW.
ensure_ctr_remote_images() {
  local src="$REGISTRY/bench/py:v1" c="$BENCH_CACHE/ctr-remote"
  if [ ! -f "$c/done" ]; then
    log "ctr-remote image convert --estargz --oci (once, cached in $c)"
    rm -rf "$c"; mkdir -p "$c"
    ctrd images pull --plain-http "$src" >/dev/null
    ctr-remote -a "$CTRD_SOCK" -n demo image convert --estargz --oci "$src" "$REGISTRY/bench/py:v1-ctrr" >"$c/convert.log" 2>&1 ||
      { tail "$c/convert.log" >&2; exit 1; }
    log "ctr-remote image optimize --oci"
    if ctr-remote -a "$CTRD_SOCK" -n demo image optimize --oci --record-out "$c/record.json" \
      "$src" "$REGISTRY/bench/py:v1-ctrr-opt" >"$c/optimize.log" 2>&1; then
      echo "\`ctr-remote image optimize --oci\` (its own fanotify trace of the image's command)" >"$c/how"
    else
      log "optimize failed ($(tail -n 1 "$c/optimize.log")): convert with a record of the traced files"
      record_from_trace >"$c/record.json"
      ctr-remote -a "$CTRD_SOCK" -n demo image convert --estargz --oci --estargz-record-in "$c/record.json" \
        "$src" "$REGISTRY/bench/py:v1-ctrr-opt" >"$c/convert-opt.log" 2>&1 || { tail "$c/convert-opt.log" >&2; exit 1; }
      echo "\`ctr-remote image convert --estargz --oci --estargz-record-in\` with the files bench-lib.sh traced with strace (\`image optimize\` failed here: $(tail -n 1 "$c/optimize.log" | cut -c1-160))" >"$c/how"
    fi
    for t in v1-ctrr v1-ctrr-opt; do
      ctrd images export "$c/$t.tar" "$REGISTRY/bench/py:$t"
    done
    touch "$c/done"
  fi
  for t in v1-ctrr v1-ctrr-opt; do
    skopeo copy --quiet --dest-tls-verify=false "oci-archive:$c/$t.tar" "docker://$REGISTRY/bench/py:$t"
  done
  OPT_HOW="$(cat "$c/how")"
}

# record_from_trace: BENCH_CACHE/prioritized.txt as ctr-remote's record
# (one JSON object per line: path, index of the topmost layer that has it)
record_from_trace() {
  local f i
  while read -r f; do
    for i in 2 1 0; do
      case $i in 2) d="$APP" ;; 1) d="$BENCH_CACHE/python3" ;; 0) d="$BENCH_CACHE/rootfs" ;; esac
      if [ -e "$d$f" ]; then jq -cn --arg p "$f" --argjson i "$i" '{path: $p, layerIndex: $i}'; break; fi
    done
  done <"$BENCH_CACHE/prioritized.txt"
}
