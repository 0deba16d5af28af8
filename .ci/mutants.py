#!/usr/bin/env python3
"""Memory-ordering mutation check of the loom suite (tests/loom.rs).

Every ordering on the free-threaded path (the files of src/ft/) is
weakened, one at a time: Acquire, Release and AcqRel to Relaxed (AcqRel also to Acquire and to
Release alone), SeqCst to AcqRel, and each fence removed. For each mutant the loom models run,
fastest first, until one fails: the mutant is then *killed* by that model. A mutant no model
kills *survives*; papers/design.md argues each survivor (why the weaker ordering is still
correct, or what covers it instead). Orderings in code loom does not run (the thread-index
registry src/ft/registry.rs and the exit hook, which need pthread keys) are listed as
*not modelled* and not run.

Usage (from the repository root; restores every file it touches, also on Ctrl-C):
    .ci/mutants.py [--preemptions N] [--only SUBSTRING] [--markdown FILE] [--list]

The output (and the --markdown file) starts with a line naming the run: date, commit, cores and
load average (.ci/provenance), taken before any file is mutated, so a result kept in
papers/results/ is dated and tied to a commit.

A model that runs past --timeout seconds counts as killing the mutant (a hang is a failure).
Each mutant rebuilds the loom test binary (incremental, about half a minute on 2 cores); the
whole run takes about an hour with --preemptions 1 and longer with 2.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["src/ft/thread_cache.rs", "src/ft/central.rs", "src/ft/mod.rs", "src/ft/registry.rs"]
# Code loom does not compile (cfg(not(loom))): a whole file, and lines naming these words.
NOT_MODELLED_FILES = {"src/ft/registry.rs"}
NOT_MODELLED_WORDS = ["EXIT_HOOK", "fork_gate"]  # fork: outside loom
TARGET = os.path.join(ROOT, "target", "loom")
ENV = dict(os.environ, RUSTFLAGS="--cfg loom -C debug-assertions", CARGO_TARGET_DIR=TARGET,
           CARGO_TERM_COLOR="never")
# Fastest models first, so a killed mutant costs little (model c, the largest, runs last).
ORDER = [
    "remote_free_vs_owner_collecting", "remote_free_into_full_pool_vs_owner_allocating",
    "remote_free_with_a_cache_into_full_pool_vs_owner_allocating", "sweep_vs_remote_free",
    "abandonment_vs_remote_free", "batched_publication_vs_owner_collecting_or_detaching",
    "cache_slot_hand_over", "reused_pool_changes_class", "purge_vs_claim", "two_adopters",
    "three_freers_into_a_detached_pool", "two_cached_freers_into_a_detached_pool",
    "remote_free_vs_trim_vs_adopter", "adopter_vs_pushes", "release_of_a_64_pool_arena_vs_claim",
    "reclaimed_pool_carved_again", "concurrent_new_arenas", "stats_vs_arena_release_and_reuse",
    "release_undone_by_a_pin_vs_claim", "stats_vs_purge_and_reinit", "pool_claims_vs_arena_release",
]
WEAKER = {
    "Acquire": ["Relaxed"],
    "Release": ["Relaxed"],
    "AcqRel": ["Relaxed", "Acquire", "Release"],
    "SeqCst": ["AcqRel"],
}


def mutants():
    """Yields (id, file, line number, source line, kind, old text, new text, modelled)."""
    for f in FILES:
        lines = open(os.path.join(ROOT, f)).read().split("\n")
        for n, line in enumerate(lines, 1):
            code = line.split("//")[0]
            if not code.strip():
                continue
            modelled = f not in NOT_MODELLED_FILES and not any(w in code for w in NOT_MODELLED_WORDS)
            fm = re.search(r"fence\(Ordering::(\w+)\);", code)
            if fm:
                yield (f"{f}:{n}", f, n, line.strip(), "fence removed", fm.group(0), "", modelled)
                if fm.group(1) == "SeqCst":
                    yield (f"{f}:{n}", f, n, line.strip(), "fence SeqCst -> AcqRel", fm.group(0),
                           "fence(Ordering::AcqRel);", modelled)
                continue
            for k, m in enumerate(re.finditer(r"Ordering::(Acquire|Release|AcqRel|SeqCst)\b", code)):
                for w in WEAKER[m.group(1)]:
                    yield (f"{f}:{n}#{k}", f, n, line.strip(), f"{m.group(1)} -> {w}",
                           (m.start(), m.end()), f"Ordering::{w}", modelled)


def apply(f, n, old, new):
    path = os.path.join(ROOT, f)
    text = open(path).read()
    lines = text.split("\n")
    line = lines[n - 1]
    if isinstance(old, tuple):
        code_end = len(line.split("//")[0])
        a, b = old
        assert b <= code_end
        lines[n - 1] = line[:a] + new + line[b:]
    else:
        assert old in line, (f, n, old)
        lines[n - 1] = line.replace(old, new, 1)
    open(path, "w").write("\n".join(lines))
    return path, text


def build():
    r = subprocess.run(["cargo", "test", "--release", "--test", "loom", "--no-run",
                        "--message-format=short"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True)
    if r.returncode != 0:
        return None, r.stderr[-3000:]
    exe = re.findall(r"\((target/loom/release/deps/loom-[0-9a-f]+)\)", r.stderr)
    return (os.path.join(ROOT, exe[-1]) if exe else None), r.stderr[-3000:]


def run_models(exe, preemptions, timeout):
    env = dict(ENV, LOOM_MAX_PREEMPTIONS=str(preemptions))
    for model in ORDER:
        try:
            r = subprocess.run([exe, model, "--exact", "--test-threads=1"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return model, "timeout"
        if r.returncode != 0:
            why = re.findall(r"(Causality violation[^\n]*|panicked at [^\n]*\n[^\n]*|"
                             r"deadlock[^\n]*)", r.stdout + r.stderr)
            return model, (why[0].replace("\n", " ") if why else f"exit {r.returncode}")
    return None, ""


def provenance():
    """The run's header: date, commit, cores, load average (.ci/provenance), or why not."""
    r = subprocess.run([os.path.join(ROOT, ".ci", "provenance")], cwd=ROOT, capture_output=True,
                       text=True)
    if r.returncode != 0:
        sys.exit(f"mutants: .ci/provenance failed: {r.stderr.strip()}")
    return r.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preemptions", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model run")
    ap.add_argument("--only", help="run only mutants whose id, kind or source line contains one of "
                    "these ;-separated strings (=TEXT: the whole source line is TEXT)")
    ap.add_argument("--markdown", help="also write the table (markdown) to this file")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args()
    # A SIGTERM unwinds through the `finally` that restores the mutated file.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    only = [o for o in args.only.split(";") if o] if args.only else []
    # "=TEXT" matches a whole source line exactly.
    ms = [m for m in mutants()
          if not only or any(m[3] == o[1:] if o.startswith("=") else
                             (o in m[0] or o in m[4] or o in m[3]) for o in only)]
    if args.list:
        for m in ms:
            print(f"{m[0]:28} {m[4]:24} {'' if m[7] else '(not modelled) '}{m[3]}")
        return 0
    header = (f"# .ci/mutants.py run: {provenance()}; --preemptions {args.preemptions} "
              f"--timeout {args.timeout}" + (f" --only {args.only!r}" if args.only else ""))
    print(header, flush=True)
    rows = []
    t0 = time.time()
    for (mid, f, n, src, kind, old, new, modelled) in ms:
        if not modelled:
            rows.append((mid, kind, src, "not modelled", "-"))
            print(f"{mid} {kind}: not modelled", flush=True)
            continue
        path, saved = apply(f, n, old, new)
        try:
            exe, log = build()
            if exe is None:
                rows.append((mid, kind, src, "BUILD FAILED", log.strip().split("\n")[-1]))
                print(f"{mid} {kind}: build failed\n{log}", flush=True)
                continue
            killer, why = run_models(exe, args.preemptions, args.timeout)
        finally:
            open(path, "w").write(saved)
        verdict = f"killed by {killer}" if killer else "SURVIVED"
        rows.append((mid, kind, src, verdict, why))
        print(f"{mid} {kind}: {verdict} {why} [{time.time() - t0:.0f} s]", flush=True)
    survived = [r for r in rows if r[3] == "SURVIVED"]
    print(f"\n{len(rows)} mutants: {sum(r[3].startswith('killed') for r in rows)} killed, "
          f"{len(survived)} survived, {sum(r[3] == 'not modelled' for r in rows)} not modelled "
          f"(LOOM_MAX_PREEMPTIONS={args.preemptions}, {time.time() - t0:.0f} s)")
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(f"<!-- {header[2:]} -->\n")
            out.write("| mutant | weakening | source | verdict | first failure |\n"
                      "|---|---|---|---|---|\n")
            for mid, kind, src, verdict, why in rows:
                src = src.replace("|", "\\|")
                why = why.replace("|", "\\|")[:140]
                out.write(f"| `{mid}` | {kind} | `{src}` | {verdict} | {why} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
