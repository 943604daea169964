#!/usr/bin/env bash
# Build zstdverify (tests/go/src/zstdverify): the Go reference's zstd:chunked reader
# (stargz-snapshotter 0.12 from Debian bookworm's Go sources) checking a blob we wrote.
# Usage (root, Debian bookworm): scripts/build-zstdverify.sh OUT_DIR  -> OUT_DIR/zstdverify
# Installs golang-go and golang-github-containerd-stargz-snapshotter-dev with apt if missing.
set -euo pipefail
OUT=$(mkdir -p "${1:?usage: build-zstdverify.sh OUT_DIR}" && cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")/.." && pwd)
need=()
for p in golang-go golang-github-containerd-stargz-snapshotter-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
export GO111MODULE=off GOPATH="$HERE/tests/go:/usr/share/gocode" GOCACHE="${GOCACHE:-/var/tmp/refbench-gocache}"
go build -o "$OUT/zstdverify" zstdverify
echo "built $OUT/zstdverify"
