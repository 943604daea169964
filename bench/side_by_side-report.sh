# The markdown of bench/side_by_side.sh (sourced by it): the issue #10 table
# from the medians in R, every run, and the profile; replace_section puts it
# between its markers in docs/benchmarks.md.
# shellcheck shell=bash

SBS_BEGIN='<!-- side_by_side.sh: begin (generated; rerun the script to replace) -->'
SBS_END='<!-- side_by_side.sh: end -->'

vals() { tr ' ' '\n' <<<"${R[$1]:-}" | grep .; }
med() { vals "$1" | median; }
all() { vals "$1" | tr '\n' ' ' | sed 's/ $//'; }
rng() { vals "$1" | sort -g | awk 'NR == 1 {a = $1} {b = $1} END {if (NR) {if (a == b) print a; else print a "–" b}}'; }
# range over several keys
rngs() { local k; for k in "$@"; do vals "$k"; done | sort -g | awk 'NR == 1 {a = $1} {b = $1} END {if (NR) {if (a == b) print a; else print a "–" b}}'; }
rat() { # A B -> A / B, or "—"
  if [ -n "$1" ] && [ -n "$2" ] && awk -v b="$2" 'BEGIN {exit !(b > 0)}'; then ratio "$1" "$2"; else echo "—"; fi
}
or_dash() { if [ -n "$1" ]; then echo "$1"; else echo "—"; fi; }

# row LABEL KEY_PREFIX METRIC UNIT [with_overlayfs=1]: medians of pullrun-like keys
row() {
  local label="$1" k="$2" m="$3" u="$4" ov="${5:-1}" o g s
  o="—"; [ "$ov" = 1 ] && o="$(or_dash "$(med "$k/overlayfs/$m")")$u"
  g="$(med "$k/go/$m")"; s="$(med "$k/ours/$m")"
  echo "| $label | $o | $(or_dash "$g")$u | $(or_dash "$s")$u | $(rat "$s" "$g") |"
}
# a cat row: seconds (MB/s, % of link)
catrow() {
  local net="$1" k="cat/$1/ctrr" c sys v out=()
  for sys in overlayfs go ours; do
    v="$(med "$k/$sys/secs")"
    if [ -z "$v" ]; then out+=("—"); continue; fi
    c="$(med "$k/$sys/mbs")"
    if [ "$net" = wan ] && [ "$sys" != overlayfs ]; then
      out+=("$v s ($c MB/s, $(awk -v a="$c" -v b="$LINK_MBS" 'BEGIN {printf "%.0f", a / b * 100}') % of the link)")
    else
      out+=("$v s ($c MB/s)")
    fi
  done
  echo "| \`cat\` of the 128 MiB data in a container, $net | ${out[0]} | ${out[1]} | ${out[2]} | $(rat "$(med "$k/ours/secs")" "$(med "$k/go/secs")") |"
}

section() {
  local n k
  local gz es cr
  gz="$(layers_mb v1)"; es="$(layers_mb v1-esgz)"
  cr="$(skopeo inspect --raw --tls-verify=false "docker://$REGISTRY/bench/py:v1-ctrr" | jq '[.layers[].size] | add / 1e6 | . * 10 | round / 10')"
  echo "$SBS_BEGIN"
  cat <<MD
## Side by side with the Go reference (issue #10, \`bench/side_by_side.sh\`)

Date: $(date -u '+%Y-%m-%d %H:%M') UTC. Machine: $(nproc) CPUs ($(cpu_model)), $(free -g | awk '/^Mem/ {print $2}') GiB RAM, kernel $(uname -r), containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR == 1 {print $3}').
Ours: \`$(git -C "$repo" rev-parse --short HEAD)\`$(git -C "$repo" diff --quiet HEAD -- crates bins 2>/dev/null || echo ' (with uncommitted changes)') release build ($DAEMON). Go reference: containerd-stargz-grpc 0.12 from Debian's Go sources (\`../shared/reference/build.sh\`), upstream default config.
Clients: ours pulls with \`rsnap pull\`, the reference with \`ctr-remote images rpull\`, overlayfs with \`ctr images pull\`; every container is \`ctr run --rm\`.
Image: 3 layers (debootstrap minbase, python3, 128 × 1 MiB random data + a script that imports a few modules and hashes one 1 MiB file), $(mb "$UNPACKED") MB unpacked; layers $gz MB gzip, $cr MB by \`ctr-remote image convert --estargz --oci\`, $es MB by \`rsnap convert\`.
Optimized images: $OPT_HOW; and \`rsnap convert --prioritized-files\` with the files the command opens (strace).
Network: every registry byte goes through \`wanproxy\` (counted there): loopback = no delay, no cap; WAN = $DELAY_MS ms each way, $MBIT Mbit/s ($LINK_MBS MB/s) per direction.
$RUNS runs; in each run the systems alternate case by case (ours, Go, overlayfs); cold before every case (images removed with \`ctr images rm --sync\`, containerd and both daemons restarted on empty roots, page cache dropped). Medians; every run below.
Load: 1-min load average before the cases min / median / max $(printf '%s\n' "${loads[@]}" | cut -d' ' -f1 | mmm) on $(nproc) CPUs${LOAD_NOTE:+ ($LOAD_NOTE)}; \`uptime\` at the start: $UPTIME0.

| | overlayfs full pull | Go reference | ours | ours / Go |
|---|---|---|---|---|
$(row "pull, loopback" pullrun/loopback/ctrr pull " s")
$(row "pull, WAN profile" pullrun/wan/ctrr pull " s")
$(row "pull + run, loopback" pullrun/loopback/ctrr total " s")
$(row "pull + run, WAN profile" pullrun/wan/ctrr total " s")
$(row "registry MB for pull + run (WAN)" pullrun/wan/ctrr mb_total " MB")
$(row "rsnap-converted image: pull, WAN" pullrun/wan/esgz pull " s" 0)
$(row "rsnap-converted image: pull + run, loopback" pullrun/loopback/esgz total " s" 0)
$(row "rsnap-converted image: pull + run, WAN" pullrun/wan/esgz total " s" 0)
$(row "rsnap-converted image: registry MB for pull + run (WAN)" pullrun/wan/esgz mb_total " MB" 0)
$(row "optimized by ctr-remote: pull, WAN" pullrun/wan/ctrr-opt pull " s" 0)
$(row "optimized by ctr-remote: pull + run, WAN" pullrun/wan/ctrr-opt total " s" 0)
$(row "optimized by ctr-remote: pull + run, loopback" pullrun/loopback/ctrr-opt total " s" 0)
$(row "optimized by ctr-remote: registry MB for pull + run" pullrun/wan/ctrr-opt mb_total " MB" 0)
$(row "optimized by rsnap convert: pull, WAN" pullrun/wan/opt pull " s" 0)
$(row "optimized by rsnap convert: pull + run, WAN" pullrun/wan/opt total " s" 0)
$(row "optimized by rsnap convert: pull + run, loopback" pullrun/loopback/opt total " s" 0)
$(catrow wan)
$(catrow loopback)
$(row "\`find / -xdev -type f\` in a container, loopback (container start included)" find/loopback/ctrr secs " s")
| files \`find\` counted | $(or_dash "$(rng find/loopback/ctrr/overlayfs/files)") | $(or_dash "$(rng find/loopback/ctrr/go/files)") | $(or_dash "$(rng find/loopback/ctrr/ours/files)") | |
| daemon RSS after the run, MiB (all pull + run cases, min–max) | — | $(or_dash "$(rngs pullrun/{loopback,wan}/{ctrr,esgz}/go/rss)") | $(or_dash "$(rngs pullrun/{loopback,wan}/{ctrr,esgz}/ours/rss)") | $(rat "$(med pullrun/wan/ctrr/ours/rss)" "$(med pullrun/wan/ctrr/go/rss)") (WAN medians) |
| daemon peak RSS (VmHWM) after the background fetch, MiB (loopback) | — | $(or_dash "$(rng pullrun/loopback/ctrr/go/hwm_bg)") | $(or_dash "$(rng pullrun/loopback/ctrr/ours/hwm_bg)") | $(rat "$(med pullrun/loopback/ctrr/ours/hwm_bg)" "$(med pullrun/loopback/ctrr/go/hwm_bg)") |
| registry MB once the background fetch is done (loopback) | — | $(or_dash "$(med pullrun/loopback/ctrr/go/mb_bg)") | $(or_dash "$(med pullrun/loopback/ctrr/ours/mb_bg)") | |
$(row "daemon CPU s: pull + run, WAN" pullrun/wan/ctrr cpu "" 0)
$(row "daemon CPU s: pull + run + background fetch, loopback" pullrun/loopback/ctrr cpu_bg "" 0)
$(row "daemon CPU s: pull + \`cat\` 128 MiB, WAN" cat/wan/ctrr cpu "" 0)
$(row "daemon CPU s: pull + \`cat\` 128 MiB, loopback" cat/loopback/ctrr cpu "" 0)

Every run (key = case/net/image/system/metric; image ctrr = ctr-remote's conversion, esgz = rsnap's, ctrr-opt / opt = their optimized forms; overlayfs always pulls the gzip image; s, MB, MiB, CPU s):

| key | median | runs |
|---|---|---|
MD
  for k in $(printf '%s\n' "${!R[@]}" | sort); do echo "| $k | $(med "$k") | $(all "$k") |"; done
  if [ -n "$PROF_MD" ]; then
    echo
    echo "### Where the time goes (profile pass: one more cold WAN pull + run per daemon)"
    echo "$PROF_MD"
  fi
  echo "$SBS_END"
}

layers_mb() { # TAG of the OCI layout -> total compressed layer MB
  local m; m="$(jq -r --arg t "$1" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$OCI/index.json")"
  jq '[.layers[].size] | add / 1e6 | . * 10 | round / 10' "$OCI/blobs/sha256/${m#sha256:}"
}

# replace_section DOC FILE: FILE replaces what is between the markers, or is appended
replace_section() {
  local doc="$1" new="$2"
  if grep -qF "$SBS_BEGIN" "$doc"; then
    awk -v b="$SBS_BEGIN" -v e="$SBS_END" -v f="$new" '
      $0 == b {while ((getline l < f) > 0) print l; skip = 1; next}
      $0 == e {skip = 0; next}
      !skip' "$doc" >"$doc.tmp"
    mv "$doc.tmp" "$doc"
  else
    { echo; cat "$new"; } >>"$doc"
  fi
}
