#!/usr/bin/env bash
# Reruns the hardening checks that papers/ftmalloc.md (Table 7) and README ("Safety and
# correctness") quote, from cold build directories, and keeps their summaries:
#
#   papers/hardening.sh [OUT]      # default OUT: papers/results; ~20 minutes on 2 cores
#
#   sanitize.txt   .ci/sanitize (ASan, then TSan; -Zbuild-std): the script's summary lines,
#                  every test binary run and its result line
#   fuzz.txt       FTMALLOC_FUZZ_SECONDS=${FTMALLOC_FUZZ_SECONDS:-300} .ci/fuzz: each target's
#                  seed count, final libFuzzer statistics and summary line
# The full logs stay in target/asan/sanitize.log, target/tsan/sanitize.log and
# fuzz/target/<target>.log. Needs the nightly toolchain (both scripts say how to get what else
# they need).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-papers/results}"
mkdir -p "$OUT"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
keep() { grep -E "$1" "$LOG" || true; }

rm -rf target/asan target/tsan
status=0
.ci/sanitize > "$LOG" 2>&1 || status=$?
{
    echo "# .ci/sanitize from cold target dirs, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs"
    echo "# $(rustc +nightly --version), exit status $status"
    keep '^(sanitize:|==> |skipped:|     Running |test result:|test .* FAILED)'
} > "$OUT/sanitize.txt"
cat "$OUT/sanitize.txt"
[ "$status" -eq 0 ] || { echo "hardening: .ci/sanitize failed (exit $status)" >&2; exit 1; }

export FTMALLOC_FUZZ_SECONDS="${FTMALLOC_FUZZ_SECONDS:-300}"
status=0
.ci/fuzz > "$LOG" 2>&1 || status=$?
{
    echo "# FTMALLOC_FUZZ_SECONDS=$FTMALLOC_FUZZ_SECONDS .ci/fuzz, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs"
    echo "# exit status $status"
    keep '^(==> |fuzz:|INFO: seed corpus|#[0-9]+[[:space:]]+(INITED|DONE)|Done [0-9]+ runs|stat::)'
} > "$OUT/fuzz.txt"
cat "$OUT/fuzz.txt"
[ "$status" -eq 0 ] || { echo "hardening: .ci/fuzz failed (exit $status)" >&2; exit 1; }
