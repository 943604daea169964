#!/usr/bin/env bash
# The demo, from a fresh Debian bookworm machine, as root:
#   1. installs the Debian packages it needs and builds rsnap and the
#      remote-snapshotter daemon (release);
#   2. makes a sample image (busybox rootfs + a data layer) as an OCI layout;
#   3. converts it to eStargz with `rsnap convert`;
#   4. pushes both to a private docker-registry on 127.0.0.1;
#   5. starts our daemon and a private stock containerd that uses it as the
#      `remote` snapshotter;
#   6. pulls the plain image the ordinary way (overlayfs) and runs it, then
#      pulls the eStargz image lazily with `rsnap pull` and runs it on the
#      `remote` snapshotter, and checks both print the same checksums;
# and prints how long each step took. Everything runs in a scratch dir and
# is stopped/unmounted on exit (KEEP=1 keeps the scratch dir).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

log "dependencies"
"$repo/scripts/install-deps.sh"

log "build rsnap and remote-snapshotter (release)"
t0=$(now)
(cd "$repo" && cargo build --release -q -p rsnap -p remote-snapshotter)
rsnap="${CARGO_TARGET_DIR:-$repo/target}/release/rsnap"
daemon="${CARGO_TARGET_DIR:-$repo/target}/release/remote-snapshotter"
t_build=$(secs "$t0" "$(now)")

lib_init
S="$LIB_SCRATCH"

log "sample image"
mkdir -p "$S/base/bin" "$S/base/etc" "$S/base/tmp" "$S/app/data"
cp /bin/busybox "$S/base/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -s busybox "$S/base/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$S/base/etc/passwd"
echo "hello from an eStargz layer" >"$S/app/data/hello.txt"
head -c $((24 << 20)) /dev/urandom >"$S/app/data/big.bin"
want_sum="$(sha256sum "$S/app/data/big.bin" | cut -d' ' -f1)"
"$repo/scripts/oci-from-dir.sh" "$S/oci" v1 '["/bin/sh"]' "$S/base" "$S/app" >/dev/null

log "rsnap convert"
t0=$(now)
"$rsnap" convert "oci:$S/oci:v1" "oci:$S/oci:v1-esgz"
t_convert=$(secs "$t0" "$(now)")

log "registry"
start_registry "$S/registry"
for tag in v1 v1-esgz; do
  skopeo copy -q --dest-tls-verify=false "oci:$S/oci:$tag" "docker://$REGISTRY/demo/app:$tag"
done

log "remote-snapshotter daemon"
mkdir -p "$S/rs"
# Background fetch off: the demo shows what on-demand reading alone costs.
printf 'no_background_fetch = true\n' >"$S/rs/config.toml"
"$daemon" --address "$S/rs/rs.sock" --root "$S/rs/root" --config "$S/rs/config.toml" \
  --log-level warn --unmount-on-exit >"$S/rs/daemon.log" 2>&1 &
LIB_PIDS+=("$!")
LIB_DIRS+=("$S/rs")
wait_for 20 test -S "$S/rs/rs.sock" || { cat "$S/rs/daemon.log" >&2; exit 1; }

log "containerd (stock, with our daemon as the 'remote' snapshotter)"
start_containerd "$S/containerd" "$S/rs/rs.sock"
cmd='cat /data/hello.txt; sha256sum /data/big.bin'
declare -A t_pull t_run
for tag in v1 v1-esgz; do
  ref="$REGISTRY/demo/app:$tag"
  t0=$(now)
  if [ "$tag" = v1 ]; then
    ctrd images pull --plain-http "$ref" >/dev/null
    snap=overlayfs
  else
    "$rsnap" pull -a "$CTRD_SOCK" -n demo --plain-http "$ref" | sed 's/^/  /'
    snap=remote
  fi
  t_pull[$tag]=$(secs "$t0" "$(now)")
  t0=$(now)
  out="$(ctrd run --rm --snapshotter="$snap" "$ref" "demo-$tag-$$" sh -c "$cmd")"
  t_run[$tag]=$(secs "$t0" "$(now)")
  echo "$tag on $snap: $out" | sed 's/^/  /'
  case "$out" in *"$want_sum"*) ;; *) echo "wrong content in $tag" >&2; exit 1 ;; esac
done

log "timings (seconds)"
printf '  %-34s %s\n' "build" "$t_build" "rsnap convert" "$t_convert"
printf '  %-34s %s\n' "pull v1 (full, overlayfs)" "${t_pull[v1]}" "run v1" "${t_run[v1]}"
printf '  %-34s %s\n' "pull v1-esgz (lazy, rsnap pull)" "${t_pull[v1-esgz]}" "run v1-esgz (reads 24 MiB lazily)" "${t_run[v1-esgz]}"
echo "demo OK"
