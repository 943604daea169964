#!/usr/bin/env bash
# The demo, from a fresh Debian bookworm machine, as root:
#   1. installs the Debian packages it needs and builds rsnap (release);
#   2. makes a sample image (busybox rootfs + a data layer) as an OCI layout;
#   3. converts it to eStargz with `rsnap convert`;
#   4. pushes both to a private docker-registry on 127.0.0.1;
#   5. pulls and runs both with a private, stock containerd (overlayfs) to
#      show the eStargz image is an ordinary image to any runtime;
# and prints how long each step took. Everything runs in a scratch dir and
# is stopped/unmounted on exit (KEEP=1 keeps the scratch dir).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

log "dependencies"
"$repo/scripts/install-deps.sh"

log "build rsnap (release)"
t0=$(now)
(cd "$repo" && cargo build --release -q -p rsnap)
rsnap="${CARGO_TARGET_DIR:-$repo/target}/release/rsnap"
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

log "containerd (stock, overlayfs)"
start_containerd "$S/containerd"
cmd='cat /data/hello.txt; sha256sum /data/big.bin'
declare -A t_pull t_run
for tag in v1 v1-esgz; do
  ref="$REGISTRY/demo/app:$tag"
  t0=$(now)
  ctrd images pull --plain-http "$ref" >/dev/null
  t_pull[$tag]=$(secs "$t0" "$(now)")
  t0=$(now)
  out="$(ctrd run --rm "$ref" "demo-$tag-$$" sh -c "$cmd")"
  t_run[$tag]=$(secs "$t0" "$(now)")
  echo "$tag: $out" | sed 's/^/  /'
  case "$out" in *"$want_sum"*) ;; *) echo "wrong content in $tag" >&2; exit 1 ;; esac
done

log "timings (seconds)"
printf '  %-26s %s\n' "build rsnap" "$t_build" "rsnap convert" "$t_convert"
for tag in v1 v1-esgz; do
  printf '  %-26s %s\n' "pull $tag (overlayfs)" "${t_pull[$tag]}" "run $tag" "${t_run[$tag]}"
done
echo "demo OK"
