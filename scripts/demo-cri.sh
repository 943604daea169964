#!/usr/bin/env bash
# The demo the Kubernetes way, from a fresh Debian bookworm machine, as root:
# containerd 1.6's own CRI plugin pulls with our snapshotter, and the
# "kubelet" is scripts' cri-pod (tests/src/bin/cri_pod.rs: PullImage,
# RunPodSandbox, CreateContainer, StartContainer over CRI runtime.v1).
#   1. installs the Debian packages, builds rsnap, the daemon and cri-pod
#      (release; PROFILE=debug for a debug build);
#   2. makes a sample image (busybox + 24 MiB of data) and converts it to
#      eStargz, and a pause image for the pod sandbox;
#   3. pushes them to a private docker-registry on 127.0.0.1;
#   4. starts our daemon with `[cri_keychain]` (it serves the CRI image
#      service, the kubelet's --image-service-endpoint, and forwards it to
#      containerd) and a private stock containerd with its CRI plugin using
#      the `remote` snapshotter;
#   5. runs a pod of the gzip image (containerd pulls it in full: our
#      snapshotter falls back) and of the eStargz image (mounted lazily),
#      through CRI, checks both print the same checksum, and prints timings.
# Everything runs in a scratch dir and is stopped/unmounted on exit (KEEP=1
# keeps the scratch dir).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

log "dependencies"
"$repo/scripts/install-deps.sh"

# PROFILE=debug uses (and builds) the debug binaries instead.
profile="${PROFILE:-release}"
log "build rsnap, remote-snapshotter and cri-pod ($profile)"
t0=$(now)
flag=(--release)
[ "$profile" = release ] || flag=()
(cd "$repo" && cargo build "${flag[@]}" -q -p rsnap -p remote-snapshotter &&
  cargo build "${flag[@]}" -q -p e2e --bin cri-pod)
bin="${CARGO_TARGET_DIR:-$repo/target}/$profile"
t_build=$(secs "$t0" "$(now)")

lib_init
S="$LIB_SCRATCH"

log "sample image and pause image"
mkdir -p "$S/base/bin" "$S/base/etc" "$S/base/tmp" "$S/app/data"
cp /bin/busybox "$S/base/bin/busybox"
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -s busybox "$S/base/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$S/base/etc/passwd"
echo "hello from an eStargz layer, through CRI" >"$S/app/data/hello.txt"
head -c $((24 << 20)) /dev/urandom >"$S/app/data/big.bin"
want_sum="$(sha256sum "$S/app/data/big.bin" | cut -d' ' -f1)"
"$repo/scripts/oci-from-dir.sh" "$S/oci" v1 '["/bin/sh"]' "$S/base" "$S/app" >/dev/null
# The sandbox ("pause") image: a shell that sleeps until it is stopped.
"$repo/scripts/oci-from-dir.sh" "$S/pause" v1 \
  '["/bin/sh","-c","trap \"exit 0\" TERM; while :; do sleep 1; done"]' "$S/base" >/dev/null
t0=$(now)
"$bin/rsnap" convert "oci:$S/oci:v1" "oci:$S/oci:v1-esgz"
t_convert=$(secs "$t0" "$(now)")

log "registry"
start_registry "$S/registry"
for tag in v1 v1-esgz; do
  skopeo copy -q --dest-tls-verify=false "oci:$S/oci:$tag" "docker://$REGISTRY/demo/app:$tag"
done
skopeo copy -q --dest-tls-verify=false "oci:$S/pause:v1" "docker://$REGISTRY/pause:v1"

log "remote-snapshotter daemon (snapshots + CRI image service)"
mkdir -p "$S/rs"
ctrd_sock="$S/containerd/c.sock"
# Background fetch off: the demo shows what on-demand reading alone costs.
cat >"$S/rs/config.toml" <<TOML
no_background_fetch = true
[cri_keychain]
enable_keychain = true
image_service_path = "$ctrd_sock"
TOML
"$bin/remote-snapshotter" --address "$S/rs/rs.sock" --root "$S/rs/root" --config "$S/rs/config.toml" \
  --log-level warn --unmount-on-exit >"$S/rs/daemon.log" 2>&1 &
LIB_PIDS+=("$!")
LIB_DIRS+=("$S/rs")
wait_for 20 test -S "$S/rs/rs.sock" || { cat "$S/rs/daemon.log" >&2; exit 1; }

log "containerd (stock, CRI plugin on, snapshotter = \"remote\")"
CRI_SANDBOX_IMAGE="$REGISTRY/pause:v1" CRI_PLAIN_HTTP="$REGISTRY" \
  start_containerd "$S/containerd" "$S/rs/rs.sock"

cmd='cat /data/hello.txt; sha256sum /data/big.bin'
declare -A times
for tag in v1 v1-esgz; do
  ref="$REGISTRY/demo/app:$tag"
  t0=$(now)
  # The kubelet: runtime service on containerd, image service on our daemon.
  out="$("$bin/cri-pod" --runtime "$ctrd_sock" --images "$S/rs/rs.sock" \
    --logs "$S/pod-logs/$tag" "$ref" /bin/sh -c "$cmd" 2>"$S/cri-pod-$tag.err")"
  times[$tag]=$(secs "$t0" "$(now)")
  echo "$tag: $out" | sed 's/^/  /'
  sed 's/^/  /' "$S/cri-pod-$tag.err"
  case "$out" in *"$want_sum"*) ;; *) echo "wrong content in $tag" >&2; exit 1 ;; esac
done

log "timings (seconds)"
printf '  %-48s %s\n' "build" "$t_build" "rsnap convert" "$t_convert"
printf '  %-48s %s\n' "CRI pull + pod + run, v1 (gzip: full pull)" "${times[v1]}"
printf '  %-48s %s\n' "CRI pull + pod + run, v1-esgz (lazy, 24 MiB read)" "${times[v1-esgz]}"
echo "demo-cri OK"
