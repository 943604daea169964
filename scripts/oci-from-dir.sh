#!/usr/bin/env bash
# Pack root filesystem directories into a single-platform OCI image layout,
# one gzip layer per directory (base first):
#   scripts/oci-from-dir.sh OUT_DIR TAG 'CMD JSON ARRAY' ROOTFS_DIR...
# e.g. scripts/oci-from-dir.sh /tmp/oci v1 '["/bin/sh"]' /tmp/rootfs
# GZIP_LEVEL (default 6) sets the gzip level. Entries are sorted and owners
# numeric so the same tree always gives the same layer.
set -euo pipefail

if [ "$#" -lt 4 ]; then
  sed -n '2,6p' "$0" >&2
  exit 2
fi
out="$1"; tag="$2"; cmd="$3"; shift 3
level="${GZIP_LEVEL:-6}"
mkdir -p "$out/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"

case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch="$(uname -m)" ;; esac

put_blob() { # FILE -> prints sha256:HEX, moves FILE into the layout
  local h
  h="$(sha256sum "$1" | cut -d' ' -f1)"
  chmod 644 "$1"
  mv "$1" "$out/blobs/sha256/$h"
  echo "sha256:$h"
}

layers='[]'
diff_ids='[]'
for dir in "$@"; do
  tmp="$(mktemp "$out/blobs/.layer.XXXXXX")"
  # Top-level names without a "./" prefix, as docker writes them.
  mapfile -t top < <(cd "$dir" && ls -A | LC_ALL=C sort)
  (cd "$dir" && tar --sort=name --numeric-owner --xattrs --xattrs-include='*' \
      -cf - -- "${top[@]}") >"$tmp.tar"
  diff_id="$(sha256sum "$tmp.tar" | cut -d' ' -f1)"
  gzip -n -"$level" -c "$tmp.tar" >"$tmp"
  rm -f "$tmp.tar"
  size="$(stat -c %s "$tmp")"
  digest="$(put_blob "$tmp")"
  layers="$(jq -c --arg d "$digest" --argjson s "$size" \
    '. + [{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":$d,"size":$s}]' <<<"$layers")"
  diff_ids="$(jq -c --arg d "sha256:$diff_id" '. + [$d]' <<<"$diff_ids")"
done

cfg="$(mktemp "$out/blobs/.config.XXXXXX")"
jq -nc --arg arch "$arch" --argjson cmd "$cmd" --argjson ids "$diff_ids" '{
  architecture: $arch, os: "linux",
  config: {Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: $cmd},
  rootfs: {type: "layers", diff_ids: $ids},
  history: [$ids[] | {created_by: "scripts/oci-from-dir.sh"}]
}' >"$cfg"
cfg_size="$(stat -c %s "$cfg")"
cfg_digest="$(put_blob "$cfg")"

man="$(mktemp "$out/blobs/.manifest.XXXXXX")"
jq -nc --arg cd "$cfg_digest" --argjson cs "$cfg_size" --argjson layers "$layers" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
  layers: $layers
}' >"$man"
man_size="$(stat -c %s "$man")"
man_digest="$(put_blob "$man")"

index='{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
[ -f "$out/index.json" ] && index="$(cat "$out/index.json")"
jq -c --arg d "$man_digest" --argjson s "$man_size" --arg t "$tag" '
  .manifests |= (map(select(.annotations["org.opencontainers.image.ref.name"] != $t)) + [{
    mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
    annotations: {"org.opencontainers.image.ref.name": $t}}])' <<<"$index" >"$out/index.json"
echo "$man_digest"
