#!/usr/bin/env bash
# Ranged-read benchmark of crates/registry against a local docker-registry
# (plain HTTP on 127.0.0.1; the test starts and stops it by PID).
# Prints a markdown table: reads/s, MB/s and latency per read size and
# concurrency, and multi-range against single ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -q -p registry --test bench_ranged -- --ignored --nocapture 2>&1 \
  | grep -E '^\||^16 x'
