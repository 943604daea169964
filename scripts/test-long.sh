#!/usr/bin/env bash
# The long tests that do not fit the CI budget of scripts/test.sh: the
# #[ignore]d load tests (20 containers at once) and a long run of every
# cargo-fuzz target, one after another under `nice -n 19` so that it does not
# starve other work on the machine. Results go to docs/reliability.md by hand.
#
# Usage: scripts/test-long.sh [tests|fuzz|all]   (default all)
# Environment:
#   LONG_FUZZ_SECONDS  seconds per fuzz target (default 600)
#   FUZZ_TARGETS       space-separated subset of targets (default: all)
#   LOG_DIR            where each fuzz log is kept (default target/test-long)
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
LONG_FUZZ_SECONDS="${LONG_FUZZ_SECONDS:-600}"
LOG_DIR="${LOG_DIR:-target/test-long}"
mkdir -p "$LOG_DIR"
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }
failed=()

if [ "$what" = all ] || [ "$what" = tests ]; then
  step "build binaries"
  cargo build -p rsnap -p remote-snapshotter
  step "ignored (long) tests"
  # --nocapture: the load test prints its figures (bytes, RSS, fds).
  cargo test -p remote-snapshotter --test load -- --ignored --nocapture --test-threads=1 \
    || failed+=("load tests")
fi

if [ "$what" = all ] || [ "$what" = fuzz ]; then
  targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
  # Build every target first so the timed runs are only fuzzing.
  for t in $targets; do
    step "build fuzz target $t"
    nice -n 19 cargo +nightly fuzz build "$t"
  done
  for t in $targets; do
    step "fuzz $t for ${LONG_FUZZ_SECONDS}s"
    log="$LOG_DIR/fuzz-$t.log"
    if ! nice -n 19 cargo +nightly fuzz run "$t" -- \
        -max_total_time="$LONG_FUZZ_SECONDS" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
      tail -n 60 "$log"
      echo "fuzz target $t failed; the reproducer is under fuzz/artifacts/$t" >&2
      failed+=("fuzz $t")
    fi
    # The last status line (runs, coverage, features, corpus) and final stats.
    grep -E '^#[0-9]+' "$log" | tail -n 1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
  done
fi

if [ "${#failed[@]}" -gt 0 ]; then
  step "FAILED: ${failed[*]}"
  exit 1
fi
step "all passed"
