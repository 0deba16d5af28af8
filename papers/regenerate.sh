#!/usr/bin/env bash
# Regenerates every table and figure that papers/ftmalloc.md cites, into papers/results/
# (or the folder given as the first argument). Run it on a quiet machine: it measures.
#
#   papers/regenerate.sh                  # everything, about 25 minutes on 2 cores
#   papers/regenerate.sh /tmp/fresh       # elsewhere, to compare with the committed run
#
# What makes what:
#   report.md, table.txt, results.csv, *.svg   cargo run --release -- --out DIR
#   harness-stdout.txt                         its standard output: the table, then each mode's
#                                              heap statistics (sys._debugmallocstats() style)
#   results-rerun.csv, noise.txt               a second harness run right after the first, and
#                                              python3 papers/noise.py comparing the two
#   criterion-pairs.txt                        cargo bench --bench fastpath -- pair
#   cpython.md                                 bench/pytrace/cpython_bench.py --python VENV/bin/python
#                                              --markdown (a venv with ./python, pyperformance and
#                                              pyperf; libftmalloc.so)
#   loom.txt                                   .ci/loom
# Not run here (too long for a measuring run; regenerate by hand):
#   mutants.txt                                .ci/mutants.py --preemptions 1 (about 35 minutes),
#                                              the table in papers/design.md
#   sanitize.txt, fuzz.txt                     papers/hardening.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
OUT="${1:-papers/results}"
mkdir -p "$OUT"
step() { printf '\n==> %s\n' "$*" >&2; }

command -v python3 >/dev/null || { echo "regenerate: python3 is needed for cpython.md" >&2; exit 1; }

step "harness: cargo run --release -- --out $OUT"
cargo run --release -- --out "$OUT" | tee "$OUT/harness-stdout.txt"

step "noise: a second harness run, compared cell by cell (papers/noise.py)"
RERUN=$(mktemp -d)
cargo run --release -- --out "$RERUN" > /dev/null
cp "$RERUN/results.csv" "$OUT/results-rerun.csv"
rm -rf "$RERUN"
python3 papers/noise.py "$OUT/results.csv" "$OUT/results-rerun.csv" | tee "$OUT/noise.txt"

step "criterion fast path: cargo bench --bench fastpath -- pair > $OUT/criterion-pairs.txt"
cargo bench --bench fastpath -- pair > "$OUT/criterion-pairs.txt" 2>&1

step "CPython: bench/pytrace/cpython_bench.py --markdown > $OUT/cpython.md"
cargo build --release -p ftmalloc-preload
VENV=target/bench-venv
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q ./python pyperformance==1.14.0 pyperf==2.11.0
"$VENV/bin/python" bench/pytrace/cpython_bench.py --python "$VENV/bin/python" --markdown > "$OUT/cpython.md"

step "loom: .ci/loom > $OUT/loom.txt"
.ci/loom > "$OUT/loom.txt" 2>&1

step "done: $OUT (date: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs)"
