"""The pyperformance subset that bench/pytrace/cpython_bench.py times under each allocator.

Twelve pure-Python benchmarks from pyperformance 1.14.0 (pyperf 2.11.0) that need no package
beyond pyperf. Each runs as ONE process, the benchmark's own `run_benchmark.py` in pyperf's
worker mode with a fixed loop count:

    PY .../bm_NAME/run_benchmark.py --worker --loops L --values 1 --warmups 0 -o OUT.json [EXTRA]

`--worker` runs the benchmark in that process (pyperf's usual parent spawns workers with a
filtered environment, which would drop FTMALLOC_PYTHON, PYTHONMALLOC and LD_PRELOAD); `--loops L
--values 1 --warmups 0` means no calibration, exactly L calls of the timed loop, so every
allocator does identical work. OUT.json holds pyperf's own timing of the loop (start-up,
imports and pyperf's metadata collection excluded); the caller also times the whole process.

Standalone (checks that each benchmark runs, prints its times; no allocator switching):

    python3 bench/pytrace/pyperf_subset.py [--python PY] [--quick] [--benchmarks a,b]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PYPERFORMANCE_VERSION = "1.14.0"
PYPERF_VERSION = "2.11.0"
INSTALL_HINT = f"pip install pyperformance=={PYPERFORMANCE_VERSION} pyperf=={PYPERF_VERSION}"

# name -> (directory under pyperformance/data-files/benchmarks, extra args, loops, quick loops).
# Loops are sized for about half a second of timed work per process on the 2-core development
# machine (CPython 3.11.7); --quick takes about a tenth (one loop at least).
SUBSET = {
    "nbody": ("bm_nbody", [], 3, 1),
    "richards": ("bm_richards", [], 4, 1),
    "float": ("bm_float", [], 4, 1),
    "deltablue": ("bm_deltablue", [], 60, 6),
    "go": ("bm_go", [], 2, 1),
    "hexiom": ("bm_hexiom", [], 32, 3),
    "nqueens": ("bm_nqueens", [], 2, 1),
    "raytrace": ("bm_raytrace", [], 1, 1),
    "chaos": ("bm_chaos", [], 3, 1),
    "json_dumps": ("bm_json_dumps", [], 12, 1),
    # pyperformance's own variant names: bm_pickle/bm_pickle_pure_python.toml and
    # bm_unpickle_pure_python.toml give these extra_opts.
    "pickle_pure_python": ("bm_pickle", ["--pure-python", "pickle"], 30, 3),
    "unpickle_pure_python": ("bm_pickle", ["--pure-python", "unpickle"], 50, 5),
}

PROBE = (
    "import json, os, pyperf, pyperformance\n"
    "print(json.dumps({'pyperf': pyperf.__version__, 'pyperformance': pyperformance.__version__,"
    " 'benchmarks': os.path.join(os.path.dirname(pyperformance.__file__), 'data-files',"
    " 'benchmarks')}))\n"
)


def locate(python):
    """Returns {'pyperf', 'pyperformance', 'benchmarks'} for interpreter `python`, or raises
    SystemExit naming what to install."""
    proc = subprocess.run([python, "-c", PROBE], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(
            f"the pyperformance subset needs pyperf and pyperformance in {python} ({last}): "
            f"run `{python} -m {INSTALL_HINT}`")
    info = json.loads(proc.stdout)
    if (info["pyperf"], info["pyperformance"]) != (PYPERF_VERSION, PYPERFORMANCE_VERSION):
        print(f"note: {python} has pyperf {info['pyperf']} and pyperformance "
              f"{info['pyperformance']}; the subset's loop counts were sized with "
              f"{PYPERF_VERSION} and {PYPERFORMANCE_VERSION}", file=sys.stderr)
    missing = [n for n, (d, *_r) in SUBSET.items()
               if not os.path.exists(os.path.join(info["benchmarks"], d, "run_benchmark.py"))]
    if missing:
        raise SystemExit(f"pyperformance {info['pyperformance']} in {python} lacks "
                         f"{', '.join(missing)}: run `{python} -m {INSTALL_HINT}`")
    return info


def parse_names(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in SUBSET]
    if bad or not names:
        raise SystemExit(f"--benchmarks: unknown benchmark(s) {', '.join(bad) or repr(text)}; "
                         f"accepted: {', '.join(SUBSET)}")
    return names


def loops(name, quick):
    return SUBSET[name][3] if quick else SUBSET[name][2]


def command(bench_dir, name, quick, out_json):
    """The argument list after the interpreter: the benchmark script and pyperf's options."""
    directory, extra, full, short = SUBSET[name]
    return [os.path.join(bench_dir, directory, "run_benchmark.py"), "--worker",
            "--loops", str(short if quick else full), "--values", "1", "--warmups", "0",
            "-o", out_json, *extra]


def read_result(out_json, name, quick):
    """pyperf's timing of the loop in seconds (the sum of its values times the loop count), after
    checking that the file holds one run of one value and the loop count asked for."""
    with open(out_json) as f:
        data = json.load(f)
    benches = data.get("benchmarks", [])
    if len(benches) != 1:
        raise SystemExit(f"{name}: {out_json} holds {len(benches)} benchmarks, expected 1")
    runs = [r for r in benches[0].get("runs", []) if "values" in r]
    values = [v for r in runs for v in r["values"]]
    if len(values) != 1:
        raise SystemExit(f"{name}: {out_json} holds {len(values)} values, expected 1")
    meta = dict(data.get("metadata", {}))
    meta.update(benches[0].get("metadata", {}))
    for r in runs:
        meta.update(r.get("metadata", {}))
    want = loops(name, quick)
    got = meta.get("loops")
    if got is not None and got != want:
        raise SystemExit(f"{name}: pyperf ran {got} loops, expected {want}")
    inner = meta.get("inner_loops", 1)
    return sum(values) * want * inner


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--quick", action="store_true", help="about a tenth of the loops")
    ap.add_argument("--benchmarks", default=",".join(SUBSET))
    args = ap.parse_args()
    names = parse_names(args.benchmarks)
    info = locate(args.python)
    print(f"pyperformance {info['pyperformance']}, pyperf {info['pyperf']}, {args.python}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = os.path.join(tmp, name + ".json")
            start = time.perf_counter()
            proc = subprocess.run([args.python, *command(info["benchmarks"], name, args.quick, out)],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed: {proc.stderr[-2000:]}")
            t = read_result(out, name, args.quick)
            print(f"{name:22} loops {loops(name, args.quick):4}  timed {t:7.3f} s  "
                  f"process {wall:7.3f} s")


if __name__ == "__main__":
    main()
