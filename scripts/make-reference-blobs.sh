#!/usr/bin/env bash
# Make small eStargz blobs with the Go reference converter (ctr-remote, from
# Debian's stargz-snapshotter) for crates/estargz's interop tests:
#   scripts/make-reference-blobs.sh [OUT_DIR]   (default crates/estargz/tests/data)
# Builds a one-layer OCI image from a tree made here (every entry type,
# xattrs, whiteouts, a >4 MiB file), imports it into a private containerd
# in a scratch dir, converts it three ways (defaults; 64 KiB chunks; with
# prioritized files), and copies each layer blob + its annotations out.
# Needs root, containerd, ctr, ctr-remote, jq, python3. Cleans up after
# itself (containerd stopped by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-crates/estargz/tests/data}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

scratch="$(mktemp -d /tmp/refblobs.XXXXXX)"
ctrd_pid=""
cleanup() {
  if [ -n "$ctrd_pid" ]; then kill "$ctrd_pid" 2>/dev/null || true; wait "$ctrd_pid" 2>/dev/null || true; fi
  # containerd may leave mounts in its root if it was interrupted.
  { grep -o " $scratch/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount "$m" || true; done
  rm -rf "$scratch"
}
trap cleanup EXIT

# --- the source tree ---------------------------------------------------------
root="$scratch/rootfs"
mkdir -p "$root"/{bin,etc,dev,old,usr/share,big}
cp -a /usr/share/common-licenses "$root/usr/share/"
cp /usr/bin/jq "$root/bin/jq"
ln "$root/bin/jq" "$root/bin/jq-hardlink"
ln -s jq "$root/bin/jq-symlink"
cp /etc/services "$root/etc/services"
: >"$root/etc/empty"
printf 'reference\n' >"$root/etc/hostname"
install -m 4755 /dev/null "$root/bin/setuid"
mkfifo "$root/dev/fifo"
mknod "$root/dev/null" c 1 3
mknod "$root/dev/sda" b 8 0
: >"$root/old/.wh.gone"
: >"$root/old/.wh..wh..opq"
long="$root/a-directory-with-a-rather-long-name-$(printf 'x%.0s' $(seq 60))"
mkdir -p "$long"
printf 'deep\n' >"$long/and-a-file-whose-full-path-is-longer-than-one-hundred-bytes.txt"
python3 - "$root" <<'EOF'
import os, sys
root = sys.argv[1]
# Over the 4 MiB default chunk size, compressible, not trivially so.
with open(os.path.join(root, "big/log.txt"), "w") as f:
    # Repeats within gzip's 32 KiB window, so it stays small in the repo.
    for i in range(110000):
        f.write(f"{i % 500:04d} INFO request served path=/api/v1/items status=200\n")
for path, attrs in [("etc/services", {b"user.origin": b"debian", b"user.bin": bytes(range(8))}),
                    ("bin/jq", {b"user.note": b"hello"})]:
    for k, v in attrs.items():
        os.setxattr(os.path.join(root, path), k, v)
EOF
find "$root" -exec touch -h -d '2024-01-02 03:04:05Z' {} +

# --- OCI image and a private containerd ---------------------------------------
scripts/oci-from-dir.sh "$scratch/oci" src '["/bin/sh"]' "$root" >/dev/null
src_layer="$(jq -r '.manifests[0].digest' "$scratch/oci/index.json")"
src_layer="$(jq -r '.layers[0].digest' "$scratch/oci/blobs/sha256/${src_layer#sha256:}")"
(cd "$scratch/oci" && tar -cf "$scratch/oci.tar" .)

sock="$scratch/containerd.sock"
cat >"$scratch/containerd.toml" <<EOF
version = 2
root = "$scratch/containerd/root"
state = "$scratch/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = "$scratch/containerd-debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$scratch/containerd/opt"
EOF
containerd --config "$scratch/containerd.toml" >"$scratch/containerd.log" 2>&1 &
ctrd_pid=$!
for _ in $(seq 100); do ctr -a "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done
ctr -a "$sock" version >/dev/null

img=docker.io/library/reference
ctr -a "$sock" images import --no-unpack --base-name "$img" "$scratch/oci.tar" >/dev/null
ctr -a "$sock" images ls -q | grep -qx "$img:src"

manifest_of() { ctr -a "$sock" images ls | awk -v n="$1" '$1 == n { print $3 }'; }
src_manifest="$(manifest_of "$img:src")"
printf '{"path":"etc/hostname","manifestDigest":"%s","layerIndex":0}\n{"path":"bin/jq","manifestDigest":"%s","layerIndex":0}\n' \
  "$src_manifest" "$src_manifest" >"$scratch/record.json"

convert() { # NAME ARGS...
  local name="$1"; shift
  ctr-remote -a "$sock" image convert --oci --estargz "$@" "$img:src" "$img:$name" >/dev/null
  local m layer cfg
  m="$(manifest_of "$img:$name")"
  ctr -a "$sock" content get "$m" >"$scratch/$name.manifest.json"
  layer="$(jq -r '.layers[0].digest' "$scratch/$name.manifest.json")"
  cfg="$(jq -r '.config.digest' "$scratch/$name.manifest.json")"
  ctr -a "$sock" content get "$layer" >"$out/go-$name.estargz"
  jq -n --arg name "$name" --arg args "${*//$scratch\//}" \
    --argjson desc "$(jq '.layers[0]' "$scratch/$name.manifest.json")" \
    --arg diff_id "$(ctr -a "$sock" content get "$cfg" | jq -r '.rootfs.diff_ids[0]')" \
    '{file: ("go-" + $name + ".estargz"), converter_args: $args, descriptor: $desc, diff_id: $diff_id}' \
    >"$out/go-$name.json"
  echo "go-$name.estargz: $(stat -c %s "$out/go-$name.estargz") bytes"
}

convert default
convert chunk64k --estargz-chunk-size 65536
convert prioritized --estargz-record-in "$scratch/record.json"

cp "$scratch/oci/blobs/sha256/${src_layer#sha256:}" "$out/source-layer.tar.gz"
echo "source-layer.tar.gz: $(stat -c %s "$out/source-layer.tar.gz") bytes"
ctr-remote --version | head -1 >"$out/GENERATED-BY"
echo "made by scripts/make-reference-blobs.sh" >>"$out/GENERATED-BY"
