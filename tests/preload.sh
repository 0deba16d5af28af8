#!/usr/bin/env bash
# Runs unmodified programs on libftmalloc.so (LD_PRELOAD), in both modes: C-ABI checks, ordinary
# programs, and CPython with PYTHONMALLOC=malloc over its own regression tests.
# Fails loudly on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p ftmalloc-preload
LIB="$PWD/target/release/libftmalloc.so"
test -f "$LIB" || { echo "preload: $LIB was not built" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# -fno-builtin: GCC's model of posix_memalign would otherwise fold abi.c's check that a failed
# call leaves its out-pointer alone.
cc -O1 -fno-builtin -pthread -o "$WORK/abi" tests/c/abi.c
cc -O1 -pthread -o "$WORK/fork_orders" tests/c/fork_orders.c
cc -O1 -o "$WORK/debug" tests/c/debug.c
for prog in fork_window signal_malloc stats_cancel first_large_race trace; do
    cc -O1 -fno-builtin -pthread -o "$WORK/$prog" "tests/c/$prog.c"
done

# A real interpreter binary (not a pyenv shim script, which would run under the library too).
PY="$(python3 -c 'import sys; print(sys.executable)')"
PY_TESTS=(test_dict test_list test_set test_unicode test_json test_pickle test_gc test_weakref
          test_thread test_threading_local test_queue test_collections test_re)
# Items per producer for bench/pytrace/queue_soak.py at 1x; it also runs at 10x this.
SOAK_N=8000

run() { # mode, description, command...
    local mode="$1" what="$2"; shift 2
    printf 'preload[%s]: %s\n' "$mode" "$what"
    if ! FTMALLOC_MODE="$mode" LD_PRELOAD="$LIB" "$@" >"$WORK/out" 2>"$WORK/err"; then
        echo "preload[$mode]: FAILED: $what" >&2
        tail -n 40 "$WORK/out" "$WORK/err" >&2
        exit 1
    fi
}

expect_abort() { # mode, debug (0/1), tests/c/debug.c case, the message's operation
    local mode="$1" debug="$2" case="$3" op="$4" rc=0 target
    printf 'preload[%s]: FTMALLOC_DEBUG=%s: debug.c %s aborts naming the pointer\n' "$mode" "$debug" "$case"
    # Through an inner shell, whose "Aborted" notice goes to the captured stderr.
    FTMALLOC_DEBUG="$debug" FTMALLOC_MODE="$mode" LD_PRELOAD="$LIB" \
        bash -c '"$@"; exit $?' debug "$WORK/debug" "$case" >"$WORK/out" 2>"$WORK/err" || rc=$?
    target="$(sed -n 's/^target //p' "$WORK/err")"
    # 134: killed by SIGABRT (not SIGSEGV, not a normal return).
    if [ "$rc" -ne 134 ] || [ -z "$target" ] || ! grep -q "^ftmalloc: invalid $op of $target: " "$WORK/err"; then
        echo "preload[$mode]: FAILED: FTMALLOC_DEBUG=$debug debug.c $case: expected exit status" \
             "134 (SIGABRT) and a message \"ftmalloc: invalid $op of ${target:-?}: ...\"; got $rc:" >&2
        cat "$WORK/out" "$WORK/err" >&2
        exit 1
    fi
    grep -m1 "^ftmalloc: invalid" "$WORK/err"
}

# Runs `first_large_race` RUNS times with two CPU hogs, failing on the first failed run.
race_under_load() { # mode, runs
    local mode="$1" runs="$2" i hogs=() rc=0
    printf 'preload[%s]: first_large_race x%s with two CPU hogs (glibc underneath set up at load)\n' "$mode" "$runs"
    for i in 1 2; do nice -n 19 sh -c 'while :; do :; done' & hogs+=($!); done
    for ((i = 1; i <= runs; i++)); do
        FTMALLOC_MODE="$mode" LD_PRELOAD="$LIB" "$WORK/first_large_race" 8 >"$WORK/out" 2>"$WORK/err" || { rc=$?; break; }
    done
    kill "${hogs[@]}"
    wait "${hogs[@]}" 2>/dev/null || true
    if [ "$rc" -ne 0 ]; then
        echo "preload[$mode]: FAILED: first_large_race run $i of $runs exited $rc:" >&2
        cat "$WORK/out" "$WORK/err" >&2
        exit 1
    fi
}

for mode in ft gil; do
    run "$mode" "C-ABI checks" "$WORK/abi"
    # fork in the lock orders that deadlock a fork handler taking the lock unconditionally
    # (stdio locks, fork from a signal handler, allocating pthread_atfork handlers): a hang
    # is a failure (timeout exits 124). In debug mode too: what a fork's window hands out
    # comes from underneath, and debug mode must not wrap it in its header (the atfork
    # handlers and fork_window allocate, reallocate and free such blocks).
    for case in stdio sigfork atfork; do
        run "$mode" "fork_orders $case (a hang is a deadlock)" \
            env FORK_ORDERS_CASE="$case" timeout 60 "$WORK/fork_orders"
    done
    for case in stdio atfork; do
        run "$mode" "FTMALLOC_DEBUG=1: fork_orders $case" \
            env FTMALLOC_DEBUG=1 FORK_ORDERS_CASE="$case" timeout 60 "$WORK/fork_orders"
    done
    for debug in 0 1; do
        for case in atfork fork-free; do
            run "$mode" "FTMALLOC_DEBUG=$debug: fork_window $case (blocks from a fork's window)" \
                env FTMALLOC_DEBUG="$debug" timeout 60 "$WORK/fork_window" "$case"
        done
    done
    # glibc's allocator underneath is set up before any thread exists: deterministically
    # (malloc_stats in a thread with a pending cancellation returns), then the race itself.
    run "$mode" "stats_cancel (glibc underneath set up at load)" "$WORK/stats_cancel"
    race_under_load "$mode" 600
    # Debug mode checks a pointer before reading its debug header, for realloc and
    # malloc_usable_size as for free; free of a pool's or arena's start is an invalid free in
    # both modes. realloc names its own bad pointers (interior ones too) in both modes.
    expect_abort "$mode" 1 usable-interior usable_size
    # realloc(p, 0) frees p: debug mode names the free that follows as a double free.
    printf 'preload[%s]: FTMALLOC_DEBUG=1: free(p) after realloc(p, 0) is a double free\n' "$mode"
    rc=0
    FTMALLOC_DEBUG=1 FTMALLOC_MODE="$mode" LD_PRELOAD="$LIB" \
        bash -c '"$@"; exit $?' debug "$WORK/debug" realloc-zero-free >"$WORK/out" 2>"$WORK/err" || rc=$?
    target="$(sed -n 's/^target //p' "$WORK/err")"
    if [ "$rc" -ne 134 ] || [ -z "$target" ] || ! grep -q "^ftmalloc debug: double free at $target " "$WORK/err"; then
        echo "preload[$mode]: FAILED: realloc(p, 0) did not free p (expected SIGABRT and" \
             "\"ftmalloc debug: double free at ${target:-?}\"; got $rc):" >&2
        cat "$WORK/out" "$WORK/err" >&2
        exit 1
    fi
    for debug in 1 0; do
        expect_abort "$mode" "$debug" realloc-interior realloc
        expect_abort "$mode" "$debug" free-pool-start free
        expect_abort "$mode" "$debug" free-arena-start free
        # Frees the fast path sees first (a pool the thread owns): an interior pointer, and
        # (the always-on check; debug mode names a double free its own way) a second free of
        # a pool's only block.
        expect_abort "$mode" "$debug" free-interior free
        if [ "$debug" = 0 ]; then
            expect_abort "$mode" 0 double-free free
        fi
        run "$mode" "FTMALLOC_DEBUG=$debug: malloc(0) usable size above 0, calloc zeroed" \
            env FTMALLOC_DEBUG="$debug" "$WORK/debug" small
        run "$mode" "FTMALLOC_DEBUG=$debug: calloc(1, 4 GiB) not resident" \
            env FTMALLOC_DEBUG="$debug" "$WORK/debug" calloc-rss
        echo "preload[$mode]: $(grep -m1 '^calloc(1, 4 GiB)' "$WORK/err")"
    done
    if [ "$mode" = gil ]; then
        # A signal handler that mallocs while its thread holds the lock (a hang is the
        # failure). Free-threaded mode is not async-signal-safe (README, "Drop-in malloc").
        run "$mode" "signal_malloc (SIGALRM handler mallocs; a hang is a deadlock)" \
            timeout 60 "$WORK/signal_malloc" 40
    fi
    # FTMALLOC_TRACE: recording, %p, a forked child records nothing, a file that cannot be made.
    run "$mode" "FTMALLOC_TRACE=.../trace.%p" env FTMALLOC_TRACE="$WORK/trace.%p" "$WORK/trace"
    pid="$(sed -n 's/^pid //p' "$WORK/out")"
    [ -n "$pid" ] && [ -f "$WORK/trace.$pid" ] \
        || { echo "preload[$mode]: FAILED: FTMALLOC_TRACE=$WORK/trace.%p made no $WORK/trace.${pid:-?}" >&2; ls "$WORK" >&2; exit 1; }
    "$PY" - "$WORK/trace.$pid" <<'PYEOF' || { echo "preload[$mode]: FAILED: the trace is wrong" >&2; exit 1; }
import struct, sys
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"FTMTRC01", data[:8]
(n,) = struct.unpack_from("<Q", data, 8)
assert len(data) == 16 + 16 * n, (len(data), n)
ev = [struct.unpack_from("<QIHBx", data, 16 + 16 * i) for i in range(n)]
live = {}
counts = {77: 0, 1001: 0, 3003: 0, 55: 0}
for ident, size, thread, op in ev:
    assert op in (0, 1), op
    assert size != 4242, "the forked child's allocation was recorded"
    if op == 0:
        assert ident not in live, hex(ident)
        live[ident] = size
        counts[size] = counts.get(size, 0) + 1
    elif ident in live:
        del live[ident]
assert counts[77] == 3 and counts[1001] == 3 and counts[3003] == 3 and counts[55] == 10, counts
assert not any(s in (77, 1001, 3003, 55) for s in live.values()), "a traced block was never freed"
print(f"trace: {n} events; sizes 77, 1001, 3003 (3 times) and 55 (10 times, after the fork) allocated and freed; nothing from the child")
PYEOF
    rc=0
    FTMALLOC_TRACE="$WORK/no/such/dir/t" FTMALLOC_MODE="$mode" LD_PRELOAD="$LIB" \
        bash -c '"$@"; exit $?' trace "$WORK/trace" >"$WORK/out" 2>"$WORK/err" || rc=$?
    grep -q "^ftmalloc: FTMALLOC_TRACE: cannot create the trace file \"$WORK/no/such/dir/t\": No such file or directory (ENOENT)$" "$WORK/err" && [ "$rc" -ne 0 ] \
        || { echo "preload[$mode]: FAILED: an uncreatable FTMALLOC_TRACE file was not reported with its path and reason (exit $rc):" >&2; cat "$WORK/err" >&2; exit 1; }
    echo "preload[$mode]: $(grep -m1 '^ftmalloc: FTMALLOC_TRACE' "$WORK/err")"
    # FTMALLOC_STATS reaches the user from a program that closes stderr before it exits (ls),
    # with a header naming the process; and into a file (%p: the pid).
    run "$mode" "FTMALLOC_STATS=1 ls /" env FTMALLOC_STATS=1 ls /
    grep -q "^ftmalloc: statistics at exit of pid [0-9]* (ls)$" "$WORK/err" && grep -q "^ftmalloc ($mode mode)" "$WORK/err" \
        || { echo "preload[$mode]: FAILED: FTMALLOC_STATS=1 ls printed no statistics naming the process:" >&2; cat "$WORK/err" >&2; exit 1; }
    rm -f "$WORK"/stats.*
    run "$mode" "FTMALLOC_STATS=.../stats.%p ls /" env FTMALLOC_STATS="$WORK/stats.%p" ls /
    set -- "$WORK"/stats.*
    [ "$#" -eq 1 ] && [ -f "$1" ] && grep -q "^ftmalloc: statistics at exit of pid ${1##*/stats.} (ls)$" "$1" && grep -q "^ftmalloc ($mode mode)" "$1" \
        || { echo "preload[$mode]: FAILED: FTMALLOC_STATS=$WORK/stats.%p wrote no report naming its pid:" >&2; ls "$WORK" >&2; cat "$WORK"/stats.* >&2 || true; exit 1; }
    run "$mode" "ls -lR /usr/share" ls -lR /usr/share
    run "$mode" "sort" sh -c "ls -lR /usr/share/doc | sort > '$WORK/sorted' && test -s '$WORK/sorted'"
    run "$mode" "git --version" git --version
    run "$mode" "python3 -c" "$PY" -c 'import json, re; assert json.loads(json.dumps({"a": [1, 2]}))["a"] == [1, 2]; assert re.match(r"\w+", "ftmalloc")'
    # Every Python object from ftmalloc. (No FTMALLOC_STATS here: some tests check that a child
    # interpreter writes nothing to stderr.)
    run "$mode" "python3 -m test (PYTHONMALLOC=malloc): ${PY_TESTS[*]}" \
        env PYTHONMALLOC=malloc "$PY" -m test -q "${PY_TESTS[@]}"
    grep -q "Tests result: SUCCESS" "$WORK/out" || { echo "preload[$mode]: CPython tests did not succeed" >&2; tail "$WORK/out" >&2; exit 1; }
    # The statistics at exit must show that ftmalloc served Python's small objects.
    run "$mode" "python3 (PYTHONMALLOC=malloc, FTMALLOC_STATS=1): dict/list/str churn" \
        env PYTHONMALLOC=malloc FTMALLOC_STATS=1 "$PY" -c 'd = {str(i): [i] * (i % 7) for i in range(100000)}; print(len(d))'
    grep -q "^ftmalloc ($mode mode)" "$WORK/err" || { echo "preload[$mode]: no ftmalloc statistics at exit" >&2; exit 1; }
    awk '/^# arenas highwater mark/ { gsub(",", "", $NF); if ($NF + 0 < 2) bad = 1; seen = 1 } END { exit (seen && !bad) ? 0 : 1 }' "$WORK/err" \
        || { echo "preload[$mode]: ftmalloc served no small object" >&2; exit 1; }
    echo "preload[$mode]: $(grep -m1 '^# arenas highwater mark' "$WORK/err" | tr -s ' ')"
    # Cross-thread frees at scale: producers hand items through a queue.Queue to consumers that
    # free them. The live set does not depend on the item count, so peak RSS at 10x the items
    # must be at most 1.2x the peak at 1x (memory freed on other threads must be reused).
    soak_rss=()
    for n in "$SOAK_N" "$((SOAK_N * 10))"; do
        run "$mode" "python3 (PYTHONMALLOC=malloc): bench/pytrace/queue_soak.py $n" \
            env PYTHONMALLOC=malloc "$PY" bench/pytrace/queue_soak.py "$n"
        rss="$(awk -v n="$n" '$1 == "queue_soak" && $2 == "items=" n && $3 ~ /^peak_rss_kib=[0-9]+$/ { sub("peak_rss_kib=", "", $3); print $3 }' "$WORK/out")"
        [ -n "$rss" ] || { echo "preload[$mode]: FAILED: queue_soak.py $n printed no peak RSS line:" >&2; cat "$WORK/out" >&2; exit 1; }
        soak_rss+=("$rss")
    done
    ratio="$(awk -v a="${soak_rss[0]}" -v b="${soak_rss[1]}" 'BEGIN { printf "%.2f", b / a }')"
    awk -v a="${soak_rss[0]}" -v b="${soak_rss[1]}" 'BEGIN { exit (b <= 1.2 * a) ? 0 : 1 }' || {
        echo "preload[$mode]: FAILED: queue_soak peak RSS grows with the item count:" \
             "1x ($SOAK_N items) ${soak_rss[0]} KiB, 10x ($((SOAK_N * 10)) items) ${soak_rss[1]} KiB" \
             "(${ratio}x, more than 1.2x): memory freed on other threads is not reused" >&2
        exit 1
    }
    echo "preload[$mode]: queue_soak peak RSS 1x ${soak_rss[0]} KiB, 10x ${soak_rss[1]} KiB (${ratio}x)"
done

# A bad mode is refused with a message naming it.
if FTMALLOC_MODE=bogus LD_PRELOAD="$LIB" ls / >/dev/null 2>"$WORK/err"; then
    echo "preload: FTMALLOC_MODE=bogus was accepted" >&2; exit 1
fi
grep -q 'FTMALLOC_MODE="bogus" is not accepted; accepted values: ft, gil' "$WORK/err" \
    || { echo "preload: no clear message for FTMALLOC_MODE=bogus:" >&2; cat "$WORK/err" >&2; exit 1; }
# A bad FTMALLOC_STATS is refused with a message naming it.
if FTMALLOC_STATS=yes LD_PRELOAD="$LIB" ls / >/dev/null 2>"$WORK/err"; then
    echo "preload: FTMALLOC_STATS=yes was accepted" >&2; exit 1
fi
grep -q 'FTMALLOC_STATS="yes" is not accepted; accepted values: 0, 1 (stderr), a file path' "$WORK/err" \
    || { echo "preload: no clear message for FTMALLOC_STATS=yes:" >&2; cat "$WORK/err" >&2; exit 1; }
echo "preload: all passed"
