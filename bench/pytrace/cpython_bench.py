"""Times CPython on bench/pytrace/workload.py and bench/pytrace/threaded.py under each allocator,
side by side in one run, and reports wall time and peak RSS as ratios to CPython's own pymalloc.

Workloads: workload.py, threaded.py, queue_soak.py (8,000 items per producer).
Allocators: pymalloc (CPython's default), glibc malloc (PYTHONMALLOC=malloc), ftmalloc GIL mode
and free-threaded mode (libftmalloc.so, PYTHONMALLOC=malloc), mimalloc and jemalloc (Debian's
libmimalloc2.0 and libjemalloc2, installed by this script if missing; PYTHONMALLOC=malloc).
Runs are interleaved (one of each allocator per round) so drift hits every allocator alike; the
median of the rounds is reported.

Usage: python3 bench/pytrace/cpython_bench.py [--rounds N] [--scale N] [--markdown]
(run from the repository root after `cargo build --release -p ftmalloc-preload`).
"""
import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LIB = os.path.join(ROOT, "target", "release", "libftmalloc.so")
DEB_LIBS = {
    "mimalloc": ("libmimalloc2.0", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
    "jemalloc": ("libjemalloc2", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
}


def ensure_debian_libs():
    missing = [pkg for pkg, path in DEB_LIBS.values() if not os.path.exists(path)]
    if missing:
        print("installing", " ".join(missing), file=sys.stderr)
        # apt's progress goes to stderr: stdout is the report (--markdown > cpython.md).
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=sys.stderr)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=sys.stderr
        )


def allocators():
    return [
        ("pymalloc", {}),
        ("glibc", {"PYTHONMALLOC": "malloc"}),
        ("ftmalloc-gil", {"PYTHONMALLOC": "malloc", "LD_PRELOAD": LIB, "FTMALLOC_MODE": "gil"}),
        ("ftmalloc-ft", {"PYTHONMALLOC": "malloc", "LD_PRELOAD": LIB, "FTMALLOC_MODE": "ft"}),
        ("mimalloc", {"PYTHONMALLOC": "malloc", "LD_PRELOAD": DEB_LIBS["mimalloc"][1]}),
        ("jemalloc", {"PYTHONMALLOC": "malloc", "LD_PRELOAD": DEB_LIBS["jemalloc"][1]}),
    ]


def run_once(cmd, extra_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTMALLOC_", "PYTHONMALLOC", "LD_PRELOAD"))}
    env.update(extra_env)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.communicate()
    if status != 0:
        raise SystemExit(f"{cmd} failed under {extra_env}: {err.decode(errors='replace')[-2000:]}")
    return wall, rusage.ru_maxrss, out.decode().strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=int, default=3)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    if args.rounds < 1 or args.scale < 1:
        ap.error(f"--rounds and --scale must be at least 1 (got {args.rounds}, {args.scale})")
    if not os.path.exists(LIB):
        ap.error(f"{LIB} not found: run `cargo build --release -p ftmalloc-preload` first")
    ensure_debian_libs()
    py = sys.executable
    workloads = [
        ("workload.py", [py, os.path.join(HERE, "workload.py"), "--scale", str(args.scale)]),
        ("threaded.py", [py, os.path.join(HERE, "threaded.py")]),
        # The issue-11 program: 4 producers, 4 consumers, most objects die on another thread.
        ("queue_soak.py", [py, os.path.join(HERE, "queue_soak.py"), "8000"]),
    ]
    results = {}
    for wname, cmd in workloads:
        samples = {a: [] for a, _ in allocators()}
        outputs = {}
        for _ in range(args.rounds):
            for aname, env in allocators():
                wall, rss, out = run_once(cmd, env)
                samples[aname].append((wall, rss))
                # The program's own RSS report differs by allocator, as it should.
                outputs[aname] = re.sub(r"peak_rss_kib=\d+", "peak_rss_kib=*", out)
        if len(set(outputs.values())) != 1:
            raise SystemExit(f"{wname}: outputs differ between allocators: {outputs}")
        results[wname] = {
            a: (statistics.median(w for w, _ in s), statistics.median(r for _, r in s))
            for a, s in samples.items()
        }
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"# CPython allocator benchmark: {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs ({cpu}), {time.strftime('%Y-%m-%d')}, median of {args.rounds} rounds, "
          f"workload.py --scale {args.scale}")
    for wname, res in results.items():
        base_t, base_r = res["pymalloc"]
        print(f"\n{wname}\n")
        print("| allocator | wall s | time / pymalloc | peak RSS MiB | RSS / pymalloc |")
        print("|---|---:|---:|---:|---:|")
        for aname, (t, r) in res.items():
            print(f"| {aname} | {t:.3f} | {t / base_t:.3f} | {r / 1024:.1f} | {r / base_r:.3f} |")


if __name__ == "__main__":
    main()
