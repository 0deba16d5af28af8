"""Runs one benchmark program in a child of bench/pytrace/cpython_bench.py, after checking that
the allocator that child is meant to measure is the one in place, so that a start-up hook that
silently did nothing (or a preload that did not load) cannot produce a number.

Usage: PY child.py SPEC_JSON SCRIPT [ARGS...]     SPEC_JSON: {"label", "inproc", "preload",
"pythonmalloc", "known_libs"}: inproc "gil" | "ft" | null (ftmalloc must be CPython's MEM/OBJ
allocator in that mode, or must not be), preload: the one library of known_libs that must be
mapped (null: none of them), pythonmalloc: the PYTHONMALLOC value (null: unset).

On success it prints `cpython_bench-check ok LABEL inproc=MODE preload=LIB` to stderr and runs
SCRIPT as __main__ with sys.argv = [SCRIPT, ARGS...]; on a mismatch it exits with status 3 and a
message naming what it found. For an in-process mode it then checks that ftmalloc.stats() shows
arenas allocated (the heap served the program) and prints `cpython_bench-check served LABEL ...`. When the interpreter has the ftmalloc package it is imported in
every child (pymalloc and drop-in ones too), so every child maps the same code.
"""
import json
import os
import runpy
import sys

# ftmalloc.mode()'s answer for "not installed" and for each mode (normalised to lower case).
INACTIVE = {None, False, "", "none", "off", "pymalloc"}
MODE_NAMES = {"gil": {"gil"}, "ft": {"ft", "free-threaded", "freethreaded", "free_threaded"}}


def mapped_libs():
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


def check(spec):
    problems = []
    pm = os.environ.get("PYTHONMALLOC")
    if pm != spec["pythonmalloc"]:
        problems.append(f"PYTHONMALLOC is {pm!r}, expected {spec['pythonmalloc']!r}")
    maps = mapped_libs()
    for lib in spec["known_libs"]:
        is_mapped = lib in maps or os.path.realpath(lib) in maps
        if is_mapped != (lib == spec["preload"]):
            problems.append(f"{lib} is {'' if is_mapped else 'not '}mapped")
    try:
        import ftmalloc
    except ImportError as e:
        ftmalloc, why = None, e
    mode = None
    if ftmalloc is not None:
        if not callable(getattr(ftmalloc, "mode", None)):
            problems.append(f"{ftmalloc.__file__} has no ftmalloc.mode() to check the allocator")
        else:
            mode = ftmalloc.mode()
    norm = mode.lower() if isinstance(mode, str) else mode
    want = spec["inproc"]
    if want is None:
        if norm not in INACTIVE:
            problems.append(f"ftmalloc.mode() is {mode!r}: ftmalloc is active, expected inactive")
    elif ftmalloc is None:
        problems.append(f"import ftmalloc failed ({why}): in-process {want} cannot be active")
    elif norm not in MODE_NAMES[want]:
        problems.append(f"ftmalloc.mode() is {mode!r}, expected {want!r} "
                        f"(FTMALLOC_PYTHON={os.environ.get('FTMALLOC_PYTHON')!r})")
    if problems:
        sys.stderr.write(f"cpython_bench-check FAILED {spec['label']}: " + "; ".join(problems) + "\n")
        sys.exit(3)
    sys.stderr.write(f"cpython_bench-check ok {spec['label']} inproc={mode} "
                     f"preload={spec['preload']}\n")
    return ftmalloc if want else None


def check_served(spec, ftmalloc):
    """After the program: the in-process heap must have served it (arenas were allocated)."""
    stats = ftmalloc.stats()
    arenas = stats.get("arenas_allocated_total") if isinstance(stats, dict) else None
    if not arenas:
        sys.stderr.write(f"cpython_bench-check FAILED {spec['label']}: after the program "
                         f"ftmalloc.stats() shows no arena allocated ({stats!r:.200})\n")
        sys.stderr.flush()
        os._exit(3)
    sys.stderr.write(f"cpython_bench-check served {spec['label']} arenas={arenas} "
                     f"blocks_in_use={stats.get('blocks_in_use')}\n")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    spec = json.loads(sys.argv[1])
    ftmalloc = check(spec)
    script = sys.argv[2]
    sys.argv = sys.argv[2:]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        if ftmalloc is not None:
            check_served(spec, ftmalloc)


if __name__ == "__main__":
    main()
