"""Times CPython under each allocator in one run: wall time and peak RSS as ratios to pymalloc.

Allocators (`--allocators`, default all):
  in-process (the `ftmalloc` Python package, python/, as CPython's MEM and OBJ allocator through
  PyMem_SetAllocator; the raw domain stays CPython's):
    pymalloc              the interpreter as it is (no FTMALLOC_PYTHON): the baseline, always run
    ftmalloc-gil          FTMALLOC_PYTHON=gil (the package's .pth start-up hook installs GIL mode)
    ftmalloc-ft           FTMALLOC_PYTHON=ft  (free-threaded mode)
  drop-in (PYTHONMALLOC=malloc: every domain goes to the C malloc ABI, LD_PRELOAD replaces it):
    glibc                 no preload
    mimalloc, jemalloc    Debian's libmimalloc2.0 / libjemalloc2 (apt-get installs them if missing)
    ftmalloc-ft-preload   target/release/libftmalloc.so, FTMALLOC_MODE=ft
    ftmalloc-gil-preload  target/release/libftmalloc.so, FTMALLOC_MODE=gil (a lock per call)

Workloads (`--workloads`, default all): workload.py (--scale N), threaded.py, queue_soak.py (8,000
items per producer), and pyperformance, a subset of twelve pure-Python pyperformance benchmarks
with fixed loop counts (bench/pytrace/pyperf_subset.py; per-benchmark ratios and their geometric
mean). Every program runs in a fresh interpreter through bench/pytrace/child.py, which first
checks that the allocator meant is the one in place (ftmalloc.mode(), PYTHONMALLOC, the mapped
preload library) and refuses to run otherwise. PYTHONHASHSEED=0 in every child, so each allocator
gets the same work; the three programs' outputs must also agree across allocators.

Rounds are interleaved (each round runs every allocator once, in an order rotated each round, so
drift hits all alike); the median of the rounds is reported. Time: the child's wall time (for
pyperformance: pyperf's own timing of the fixed loops, start-up excluded; the process's wall time
is shown beside it). Peak RSS: ru_maxrss of the child, from os.wait4.

Set up and run (from the repository root; CPython 3.11 or newer):

    cargo build --release -p ftmalloc-preload
    python3 -m venv target/py-venv
    target/py-venv/bin/pip install ./python pyperformance==1.14.0 pyperf==2.11.0
    target/py-venv/bin/python bench/pytrace/cpython_bench.py --python target/py-venv/bin/python --markdown

Without the package (drop-in only, e.g. with the machine's python3 and pyperformance installed):
    python3 bench/pytrace/cpython_bench.py \
        --allocators pymalloc,glibc,mimalloc,jemalloc,ftmalloc-ft-preload,ftmalloc-gil-preload
A short check of the whole pipeline: add `--rounds 1 --quick`.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in bench/pytrace
import pyperf_subset  # noqa: E402

LIB = os.path.join(ROOT, "target", "release", "libftmalloc.so")
CHILD = os.path.join(HERE, "child.py")
DEB_LIBS = {
    "mimalloc": ("libmimalloc2.0", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
    "jemalloc": ("libjemalloc2", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
}


def make_allocators(lib):
    """name -> (kind, environment, in-process mode, preload library); lib: libftmalloc.so."""
    mi, je = DEB_LIBS["mimalloc"][1], DEB_LIBS["jemalloc"][1]
    return {
        "pymalloc": ("in-process", {}, None, None),
        "ftmalloc-gil": ("in-process", {"FTMALLOC_PYTHON": "gil"}, "gil", None),
        "ftmalloc-ft": ("in-process", {"FTMALLOC_PYTHON": "ft"}, "ft", None),
        "glibc": ("drop-in", {"PYTHONMALLOC": "malloc"}, None, None),
        "mimalloc": ("drop-in", {"PYTHONMALLOC": "malloc", "LD_PRELOAD": mi}, None, mi),
        "jemalloc": ("drop-in", {"PYTHONMALLOC": "malloc", "LD_PRELOAD": je}, None, je),
        "ftmalloc-ft-preload": ("drop-in", {"PYTHONMALLOC": "malloc", "LD_PRELOAD": lib,
                                            "FTMALLOC_MODE": "ft"}, None, lib),
        "ftmalloc-gil-preload": ("drop-in", {"PYTHONMALLOC": "malloc", "LD_PRELOAD": lib,
                                             "FTMALLOC_MODE": "gil"}, None, lib),
    }


ALLOCATORS = make_allocators(LIB)
KNOWN_LIBS = [LIB, DEB_LIBS["mimalloc"][1], DEB_LIBS["jemalloc"][1]]
INPROC_FT = ("ftmalloc-gil", "ftmalloc-ft")
WORKLOADS = ("workload.py", "threaded.py", "queue_soak.py", "pyperformance")
# Variables of the parent that must not leak into a child: each allocator sets its own.
STRIP = ("FTMALLOC_", "PYTHONMALLOC", "LD_PRELOAD", "PYTHONHASHSEED")


def parse_list(text, accepted, option):
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in accepted]
    if bad or not names:
        raise SystemExit(f"{option}: unknown value(s) {', '.join(map(repr, bad)) or repr(text)}; "
                         f"accepted: {', '.join(accepted)}")
    return list(dict.fromkeys(names))


def ensure_debian_libs(names):
    missing = [DEB_LIBS[n][0] for n in names if n in DEB_LIBS and not os.path.exists(DEB_LIBS[n][1])]
    if missing:
        print("installing", " ".join(missing), file=sys.stderr)
        # apt's progress goes to stderr: stdout is the report (--markdown > cpython.md).
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=sys.stderr)


def probe_python(python):
    """Version and ftmalloc availability of the interpreter the children run."""
    code = ("import json, platform, sys\n"
            "try:\n import ftmalloc; e = None; f = getattr(ftmalloc, '__version__', None)\n"
            "except ImportError as x:\n f = None; e = str(x)\n"
            "if e is None and f is None:\n"
            " try:\n  import importlib.metadata as m; f = m.version('ftmalloc')\n"
            " except Exception:\n  f = 'unknown version'\n"
            "print(json.dumps({'version': platform.python_version(), 'impl': "
            "platform.python_implementation(), 'gil': getattr(sys, '_is_gil_enabled', "
            "lambda: True)(), 'ftmalloc': f, 'error': e}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIP)}
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    except OSError as e:
        raise SystemExit(f"--python {python}: cannot run it ({e})")
    if proc.returncode != 0:
        raise SystemExit(f"--python {python}: failed to start: {proc.stderr[-1000:]}")
    return json.loads(proc.stdout)


def child_env(aname):
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIP)}
    env.update(ALLOCATORS[aname][1])
    env["PYTHONHASHSEED"] = "0"
    return env


def spec(aname):
    kind, env, inproc, preload = ALLOCATORS[aname]
    return json.dumps({"label": aname, "inproc": inproc, "preload": preload,
                       "pythonmalloc": env.get("PYTHONMALLOC"), "known_libs": KNOWN_LIBS})


def run_once(python, aname, argv, tmp, what):
    """Runs `python child.py SPEC argv...` under allocator aname; returns (wall s, peak RSS KiB,
    stdout). The outputs go to files (no pipe to fill while we wait)."""
    out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([python, CHILD, spec(aname), *argv], env=child_env(aname),
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    with open(out_path, errors="replace") as f:
        stdout = f.read()
    with open(err_path, errors="replace") as f:
        stderr = f.read()
    if proc.returncode != 0:
        raise SystemExit(f"{what} under {aname} exited with {proc.returncode}:\n{stderr[-3000:]}")
    if f"cpython_bench-check ok {aname} " not in stderr:
        raise SystemExit(f"{what} under {aname}: the allocator check did not report:\n{stderr[-3000:]}")
    if ALLOCATORS[aname][2] and f"cpython_bench-check served {aname} " not in stderr:
        raise SystemExit(f"{what} under {aname}: no report that ftmalloc served it:\n{stderr[-3000:]}")
    return wall, rusage.ru_maxrss, stdout


def median_of(samples):
    return tuple(statistics.median(s[i] for s in samples) for i in range(len(samples[0])))


def spread(samples):
    times = [s[0] for s in samples]
    return (max(times) - min(times)) / statistics.median(times)


def pct(x, rounds):
    return f"{100 * x:.1f}%" if rounds > 1 else "n/a (1 round)"


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def table(headers, rows, markdown, align=None):
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    if markdown:
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align))
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def main():
    global LIB, ALLOCATORS, KNOWN_LIBS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter the children run (a venv's python with the ftmalloc package "
                         "and pyperformance for the in-process allocators; default: this one)")
    ap.add_argument("--allocators", default=",".join(ALLOCATORS),
                    help=f"comma-separated subset of: {', '.join(ALLOCATORS)} (pymalloc always runs)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated subset of: {', '.join(WORKLOADS)}")
    ap.add_argument("--benchmarks", default=",".join(pyperf_subset.SUBSET),
                    help=f"pyperformance subset to run: {', '.join(pyperf_subset.SUBSET)}")
    ap.add_argument("--preload-lib", default=LIB,
                    help="the drop-in library for ftmalloc-*-preload (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=int, default=3, help="workload.py --scale (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="small settings to check the pipeline: workload.py --scale 1, threaded.py "
                         "3000, queue_soak.py 1000, pyperformance loops cut about tenfold")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1 (got {args.rounds})")
    if args.scale < 1:
        ap.error(f"--scale must be at least 1 (got {args.scale})")
    LIB = os.path.abspath(args.preload_lib)
    ALLOCATORS = make_allocators(LIB)
    KNOWN_LIBS = [LIB, DEB_LIBS["mimalloc"][1], DEB_LIBS["jemalloc"][1]]
    allocs = parse_list(args.allocators, list(ALLOCATORS), "--allocators")
    if "pymalloc" not in allocs:
        print("note: pymalloc added (the baseline of every ratio)", file=sys.stderr)
        allocs.insert(0, "pymalloc")
    allocs.sort(key=list(ALLOCATORS).index)
    workloads = parse_list(args.workloads, list(WORKLOADS), "--workloads")
    benches = pyperf_subset.parse_names(args.benchmarks)
    python = args.python if os.sep not in args.python else os.path.abspath(args.python)

    info = probe_python(python)
    wants_inproc = [a for a in allocs if a in INPROC_FT]
    if wants_inproc and info["ftmalloc"] is None:
        raise SystemExit(
            f"{', '.join(wants_inproc)} need the ftmalloc package in {python} (import ftmalloc: "
            f"{info['error']}): run `{python} -m pip install ./python` (in a venv: `python3 -m venv "
            f"target/py-venv && target/py-venv/bin/pip install ./python`, then --python "
            f"target/py-venv/bin/python), or choose drop-in allocators only with --allocators "
            f"{','.join(a for a in ALLOCATORS if a not in INPROC_FT)}")
    if any(ALLOCATORS[a][3] == LIB for a in allocs) and not os.path.exists(LIB):
        raise SystemExit(f"--preload-lib {LIB} not found: run `cargo build --release -p "
                         f"ftmalloc-preload` first (or leave out "
                         f"{', '.join(a for a in allocs if ALLOCATORS[a][3] == LIB)})")
    pp = pyperf_subset.locate(python) if "pyperformance" in workloads else None
    ensure_debian_libs(allocs)

    scale = 1 if args.quick else args.scale
    programs = {
        "workload.py": [os.path.join(HERE, "workload.py"), "--scale", str(scale)],
        "threaded.py": [os.path.join(HERE, "threaded.py")] + (["3000"] if args.quick else []),
        # The issue-11 program: 4 producers, 4 consumers, most objects die on another thread.
        "queue_soak.py": [os.path.join(HERE, "queue_soak.py"), "1000" if args.quick else "8000"],
    }
    started = time.time()
    # results[workload][allocator] = (time s, peak RSS KiB[, process wall s])
    results = {}
    spreads = {}  # spreads[workload][allocator] = (max - min) / median of the rounds' times
    with tempfile.TemporaryDirectory(prefix="cpython_bench.") as tmp:
        # A quick check of every allocator before any timing: a refusal costs seconds, not minutes.
        probe = os.path.join(tmp, "probe.py")
        with open(probe, "w") as f:
            f.write("pass\n")
        for a in allocs:
            run_once(python, a, [probe], tmp, "the allocator check")
        jobs = [(w, programs[w]) for w in workloads if w != "pyperformance"]
        if pp:
            jobs += [(f"pyperformance/{b}", None) for b in benches]
        for wname, argv in jobs:
            samples = {a: [] for a in allocs}
            outputs = {}
            for rnd in range(args.rounds):
                order = allocs[rnd % len(allocs):] + allocs[:rnd % len(allocs)]
                for a in order:
                    if argv is not None:
                        wall, rss, out = run_once(python, a, argv, tmp, wname)
                        # queue_soak.py reports its own RSS, which differs by allocator as it should.
                        outputs[a] = " ".join(w for w in out.split() if not w.startswith("peak_rss_kib="))
                        samples[a].append((wall, rss))
                    else:
                        b = wname.split("/", 1)[1]
                        out_json = os.path.join(tmp, "pyperf.json")
                        if os.path.exists(out_json):
                            os.unlink(out_json)
                        cmd = pyperf_subset.command(pp["benchmarks"], b, args.quick, out_json)
                        wall, rss, _ = run_once(python, a, cmd, tmp, wname)
                        timed = pyperf_subset.read_result(out_json, b, args.quick)
                        samples[a].append((timed, rss, wall))
                print(f"[{time.time() - started:6.0f} s] {wname} round {rnd + 1}/{args.rounds}",
                      file=sys.stderr)
            if argv is not None and len(set(outputs.values())) != 1:
                raise SystemExit(f"{wname}: outputs differ between allocators: {outputs}")
            results[wname] = {a: median_of(s) for a, s in samples.items()}
            spreads[wname] = {a: spread(s) for a, s in samples.items()}
    elapsed = time.time() - started

    md = args.markdown
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    head = (f"CPython allocator benchmark: {info['impl']} {info['version']}"
            f"{'' if info['gil'] else ' (free-threaded build)'} ({python}), {os.cpu_count()} CPUs "
            f"({cpu}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, median of "
            f"{args.rounds} round{'s' if args.rounds > 1 else ''} ({elapsed:.0f} s in all)")
    print(("# " if md else "") + head)
    print()
    settings = [f"workload.py --scale {scale}", f"threaded.py {'3000' if args.quick else '30000'}",
                f"queue_soak.py {'1000' if args.quick else '8000'}"]
    if pp:
        settings.append(f"pyperformance {pp['pyperformance']} / pyperf {pp['pyperf']}, "
                        f"{'quick' if args.quick else 'full'} loop counts")
    print("Settings: " + "; ".join(settings) + ". ftmalloc package: "
          + (info["ftmalloc"] and f"version {info['ftmalloc']}" or "not installed") + ".")
    print("Allocators: " + "; ".join(
        f"{a} ({ALLOCATORS[a][0]}"
        + "".join(f", {k}={os.path.basename(v)}" for k, v in ALLOCATORS[a][1].items()) + ")"
        for a in allocs) + ".")
    print("Ratios are to pymalloc (lower is better); time is wall time of the child, for "
          "pyperformance pyperf's timing of the fixed loops; RSS is the child's ru_maxrss. "
          "Spread: (slowest - fastest) / median over the rounds.")

    for wname in [w for w in workloads if w != "pyperformance"]:
        res = results[wname]
        bt, br = res["pymalloc"]
        rows = [[a, f"{t:.3f}", pct(spreads[wname][a], args.rounds), f"{t / bt:.3f}",
                 f"{r / 1024:.1f}", f"{r / br:.3f}"] for a, (t, r) in res.items()]
        print(f"\n{'## ' if md else ''}{wname}\n")
        print(table(["allocator", "wall s", "spread", "time / pymalloc", "peak RSS MiB",
                     "RSS / pymalloc"], rows, md))

    geo = {}
    if pp:
        keys = [f"pyperformance/{b}" for b in benches]
        tratio = {a: [results[k][a][0] / results[k]["pymalloc"][0] for k in keys] for a in allocs}
        rratio = {a: [results[k][a][1] / results[k]["pymalloc"][1] for k in keys] for a in allocs}
        geo = {a: (geomean(tratio[a]), geomean(rratio[a])) for a in allocs}
        others = [a for a in allocs if a != "pymalloc"]
        print(f"\n{'## ' if md else ''}pyperformance subset\n")
        noise = statistics.median(spreads[k]["pymalloc"] for k in keys)
        print("Time: pyperf's timing of the fixed loops, as a ratio to pymalloc (the pymalloc "
              "columns are absolute: timed s, process wall s, peak RSS MiB). Median over the "
              f"benchmarks of pymalloc's spread between rounds: {pct(noise, args.rounds)}.\n")
        rows = []
        for i, b in enumerate(benches):
            p = results[keys[i]]["pymalloc"]
            rows.append([b, str(pyperf_subset.loops(b, args.quick)), f"{p[0]:.3f}", f"{p[2]:.3f}"]
                        + [f"{tratio[a][i]:.3f}" for a in others])
        rows.append(["geometric mean", "", "", ""] + [f"{geo[a][0]:.3f}" for a in others])
        print(table(["benchmark", "loops", "pymalloc s", "process s"] + others, rows, md))
        print("\nPeak RSS as a ratio to pymalloc:\n")
        rows = [[b, f"{results[keys[i]]['pymalloc'][1] / 1024:.1f}"]
                + [f"{rratio[a][i]:.3f}" for a in others] for i, b in enumerate(benches)]
        rows.append(["geometric mean", ""] + [f"{geo[a][1]:.3f}" for a in others])
        print(table(["benchmark", "pymalloc MiB"] + others, rows, md))

    print(f"\n{'## ' if md else ''}Summary: time / pymalloc, peak RSS / pymalloc\n")
    cols = [w for w in workloads if w != "pyperformance"]
    headers = ["allocator", "kind"] + [f"{w} time" for w in cols] + [f"{w} RSS" for w in cols]
    if pp:
        headers += ["pyperf geomean time", "pyperf geomean RSS"]
    rows = []
    for a in allocs:
        row = [a, ALLOCATORS[a][0]]
        row += [f"{results[w][a][0] / results[w]['pymalloc'][0]:.3f}" for w in cols]
        row += [f"{results[w][a][1] / results[w]['pymalloc'][1]:.3f}" for w in cols]
        if pp:
            row += [f"{geo[a][0]:.3f}", f"{geo[a][1]:.3f}"]
        rows.append(row)
    print(table(headers, rows, md, ["l", "l"] + ["r"] * (len(headers) - 2)))


if __name__ == "__main__":
    main()
