#!/usr/bin/env bash
# The project's test command (what CI runs): formatting, lints, every test
# including the root-only end-to-end ones (real registry, containerd, runc,
# FUSE), then a short bounded fuzz run of every cargo-fuzz target.
#
# Environment:
#   TEST_THREADS   parallel tests per test binary (default 2; e2e tests start
#                  their own registry/containerd, so they do not share state)
#   FUZZ_SECONDS   seconds per fuzz target (default 20; 0 skips fuzzing)
#   CI=true        missing tools make e2e tests fail instead of skip
set -euo pipefail
cd "$(dirname "$0")/.."

TEST_THREADS="${TEST_THREADS:-2}"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }
# Every step runs even if an earlier one failed, so one CI run shows every
# problem; the script fails at the end if any step did.
failed=()
check() { # NAME CMD...
  local name="$1"; shift
  step "$name"
  "$@" || { failed+=("$name"); echo "FAILED: $name" >&2; }
}

check "cargo fmt --check" cargo fmt --all --check
check "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
# The e2e tests run the workspace's binaries (rsnap, remote-snapshotter);
# cargo only builds a package's binaries for that package's own tests, so a
# clean target dir needs them built first.
check "cargo build (bins)" cargo build --workspace --bins
check "cargo test" cargo test --workspace --no-fail-fast -- --test-threads="$TEST_THREADS"

step "fuzz"
if [ "$FUZZ_SECONDS" = 0 ]; then
  echo "skipped (FUZZ_SECONDS=0)"
elif [ ! -f fuzz/Cargo.toml ]; then
  echo "skipped (no fuzz/ crate yet)"
elif ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  if [ "${CI:-}" = true ]; then
    echo "cargo-fuzz or the nightly toolchain is missing" >&2
    failed+=("fuzz (tools missing)")
  fi
  echo "skipped (cargo-fuzz or nightly missing: cargo install cargo-fuzz)"
else
  # All targets built in one cargo call (their links run in parallel), then
  # each gets a bounded run; a crash or leak fails the script.
  if ! cargo +nightly fuzz build; then
    failed+=("fuzz build")
  fi
  for t in $(cargo +nightly fuzz list); do
    echo "-- fuzz $t for ${FUZZ_SECONDS}s"
    log="$(mktemp)"
    if ! cargo +nightly fuzz run "$t" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 >"$log" 2>&1; then
      tail -n 60 "$log"
      echo "fuzz target $t failed; the reproducer is under fuzz/artifacts/$t" >&2
      failed+=("fuzz $t")
    fi
    tail -n 2 "$log"
    rm -f "$log"
  done
fi

step "leftovers"
# Tests unmount what they mount (Drop guards); a FUSE mount left here is a bug.
if grep -E '^[^ ]+ /tmp/[^ ]* fuse' /proc/mounts; then
  echo "FUSE mounts left under /tmp by the tests" >&2
  failed+=("FUSE leftovers")
else
  echo "none"
fi

if [ "${#failed[@]}" -gt 0 ]; then
  step "FAILED: ${failed[*]}"
  exit 1
fi
step "all passed"
