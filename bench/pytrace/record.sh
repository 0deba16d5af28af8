#!/usr/bin/env bash
# Regenerates bench/pytrace/pytrace.bin.gz: records CPython (PYTHONMALLOC=malloc, so every object
# comes from malloc) running bench/pytrace/workload.py under libftmalloc.so with FTMALLOC_TRACE,
# then converts the raw trace to the compact format the harness's `pytrace` workload replays.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p ftmalloc-preload
PY="$(python3 -c 'import sys; print(sys.executable)')"
RAW="$(mktemp)"
trap 'rm -f "$RAW"' EXIT
PYTHONMALLOC=malloc FTMALLOC_TRACE="$RAW" LD_PRELOAD="$PWD/target/release/libftmalloc.so" \
    "$PY" bench/pytrace/workload.py
"$PY" bench/pytrace/convert.py "$RAW" bench/pytrace/pytrace.bin.gz
ls -l bench/pytrace/pytrace.bin.gz
