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
# run SUMMARY HEADER PATTERN COMMAND...: runs the command, writes HEADER, its exit status and
# the log lines matching PATTERN to SUMMARY, shows them, and fails if the command failed.
run() {
    local summary=$1 header=$2 pattern=$3 status=0
    shift 3
    "$@" > "$LOG" 2>&1 || status=$?
    {
        echo "# $header, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, exit status $status"
        grep -E "$pattern" "$LOG" || true
    } > "$summary"
    cat "$summary"
    [ "$status" -eq 0 ] || { echo "hardening: $* failed (exit $status)" >&2; exit 1; }
}

rm -rf target/asan target/tsan
run "$OUT/sanitize.txt" \
    ".ci/sanitize from cold target dirs, $(rustc +nightly --version)" \
    '^(sanitize:|==> |skipped:|     Running |test result:|test .* FAILED)' \
    .ci/sanitize

export FTMALLOC_FUZZ_SECONDS="${FTMALLOC_FUZZ_SECONDS:-300}"
run "$OUT/fuzz.txt" \
    "FTMALLOC_FUZZ_SECONDS=$FTMALLOC_FUZZ_SECONDS .ci/fuzz" \
    '^(==> |fuzz:|INFO: seed corpus|#[0-9]+[[:space:]]+(INITED|DONE)|Done [0-9]+ runs|stat::)' \
    .ci/fuzz
