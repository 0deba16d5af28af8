"""Tests of the ftmalloc package: install changes the interpreter for good, so every check runs
in a child interpreter (``sys.executable``) and the parent checks what it reports."""

import os
import signal
import subprocess
import sys
import textwrap

import sysconfig

import pytest

#: A free-threaded build (3.13t, Py_GIL_DISABLED): no GIL, and its GC walks mimalloc's heaps.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
#: The skip-marks, by interpreter kind only, each named.
needs_free_threaded = pytest.mark.skipif(
    not FREE_THREADED, reason="needs a free-threaded build of CPython (Py_GIL_DISABLED)")
needs_gil_build = pytest.mark.skipif(
    FREE_THREADED, reason="needs a GIL build of CPython (mode gil; the OBJ domain is served)")

#: Tests that check objects the heap served (the OBJ domain: owns(id(obj)), object blocks'
#: debug checks, stats counting objects): a free-threaded build leaves that domain to mimalloc.
checks_objects_served = pytest.mark.skipif(
    FREE_THREADED, reason="checks objects served by the heap (the OBJ domain), which a "
    "free-threaded build leaves to mimalloc")

MODES = ["gil", "ft"]
#: MODES as test parameters: mode "gil" needs a GIL build.
MODE_PARAMS = [pytest.param("gil", marks=needs_gil_build), "ft"]
# The allocator install wraps: pymalloc (the default), or pymalloc behind CPython's debug hooks,
# which abort on a pointer they did not hand out (so a block of ours, or glibc's, sent to the
# wrapped allocator is caught), or plain malloc.
# Under the debug hooks (debug, malloc_debug) ftmalloc serves underneath them.
# A free-threaded build accepts only its mimalloc (plain and behind the hooks).
WRAPPED = (["mimalloc", "debug", "mimalloc_debug"] if FREE_THREADED
           else ["pymalloc", "debug", "malloc", "malloc_debug"])
# served(): whether a fresh PyMem_Malloc block (the MEM domain, served on both kinds of build)
# is the heap's.
SERVED = """
    import ctypes as _ctypes, ftmalloc as _ftmalloc
    _api = _ctypes.pythonapi
    _api.PyMem_Malloc.restype = _ctypes.c_void_p
    _api.PyMem_Malloc.argtypes = [_ctypes.c_size_t]
    _api.PyMem_Free.argtypes = [_ctypes.c_void_p]
    def served():
        p = _api.PyMem_Malloc(48)
        try:
            return _ftmalloc.owns(p)
        finally:
            _api.PyMem_Free(p)
"""


def run(code, env=None, args=(), cwd=None, timeout=120):
    """Runs ``code`` in a fresh interpreter with none of ftmalloc's variables but ``env``."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("FTMALLOC_")}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)] if code is not None
        else [sys.executable, *args],
        env=e, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def ok(r):
    assert r.returncode == 0, f"status {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    return r.stdout


def test_nothing_installed_without_install():
    out = ok(run("""
        import ftmalloc
        print(ftmalloc.mode(), ftmalloc.stats(), ftmalloc.owns(id([1, 2])))
    """))
    assert out.split() == ["None", "None", "False"]


@pytest.mark.parametrize("wrapped", WRAPPED)
@pytest.mark.parametrize("mode", MODE_PARAMS)
@checks_objects_served
def test_objects_before_and_after_install(mode, wrapped):
    out = ok(run(f"""
        import ftmalloc
        before_list = [str(i) * 3 for i in range(20000)]
        before_dict = {{i: str(i) for i in range(5000)}}
        before_big = [bytes([i % 256]) * 100_000 for i in range(20)]
        assert not ftmalloc.owns(id(before_list[-1]))
        ftmalloc.install({mode!r})
        assert ftmalloc.mode() == {mode!r}, ftmalloc.mode()
        after_list = [str(i) * 3 for i in range(20000)]
        after_dict = {{i: [i] for i in range(5000)}}
        after_big = [bytes([i % 256]) * 100_000 for i in range(20)]
        # Small objects made now are the heap's; large ones and older ones are not.
        assert ftmalloc.owns(id(after_list[-1])) and ftmalloc.owns(id(after_dict[4999]))
        assert not ftmalloc.owns(id(before_list[-1]))
        assert not ftmalloc.owns(id(after_big[0]))
        # Old objects survive, and are freed by the allocator that made them.
        assert before_list[12345] == "123451234512345"
        assert before_dict[4321] == "4321"
        assert all(b == bytes([i % 256]) * 100_000 for i, b in enumerate(before_big))
        del before_list, before_dict, before_big
        in_use = ftmalloc.stats()["blocks_in_use"]
        assert in_use > 25000, in_use
        assert after_list[777] == "777777777" and after_dict[42] == [42]
        del after_list, after_dict, after_big
        import gc; gc.collect()
        left = ftmalloc.stats()["blocks_in_use"]
        assert left < in_use - 25000, (left, in_use)
        print("done")
    """, env={"PYTHONMALLOC": wrapped}))
    assert out.strip() == "done"


@pytest.mark.parametrize("wrapped", WRAPPED)
@pytest.mark.parametrize("mode", MODE_PARAMS)
@checks_objects_served
def test_realloc_across_the_boundary_through_the_c_api(mode, wrapped):
    ok(run(f"""
        import ctypes, ftmalloc
        api = ctypes.pythonapi
        for name in ("PyMem_Malloc", "PyObject_Malloc"):
            getattr(api, name).restype = ctypes.c_void_p
            getattr(api, name).argtypes = [ctypes.c_size_t]
        for name in ("PyMem_Calloc", "PyObject_Calloc"):
            getattr(api, name).restype = ctypes.c_void_p
            getattr(api, name).argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        for name in ("PyMem_Realloc", "PyObject_Realloc"):
            getattr(api, name).restype = ctypes.c_void_p
            getattr(api, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        for name in ("PyMem_Free", "PyObject_Free"):
            getattr(api, name).argtypes = [ctypes.c_void_p]
        old = api.PyMem_Malloc(100)          # the wrapped allocator's
        ctypes.memset(old, 0x11, 100)
        ftmalloc.install({mode!r})
        owns = ftmalloc.owns
        # Under the debug hooks, 0 bytes is their header's 24: a pooled request.
        hooks = ftmalloc.under_debug_hooks()
        for d in ("PyMem", "PyObject"):
            malloc, calloc = getattr(api, d + "_Malloc"), getattr(api, d + "_Calloc")
            realloc, free = getattr(api, d + "_Realloc"), getattr(api, d + "_Free")
            p = malloc(200)
            assert owns(p), hex(p)
            ctypes.memset(p, 0x5a, 200)
            p = realloc(p, 400)                  # ours -> ours
            assert owns(p) and ctypes.string_at(p, 200) == b"\\x5a" * 200
            q = realloc(p, 5000)                 # ours -> the wrapped allocator
            assert not owns(q) and ctypes.string_at(q, 400)[:200] == b"\\x5a" * 200
            q = realloc(q, 64)                   # foreign stays foreign
            assert not owns(q) and ctypes.string_at(q, 64) == b"\\x5a" * 64
            free(q)
            z = realloc(malloc(32), 0)           # ours -> 0 bytes: the wrapped allocator's
            assert z and owns(z) == hooks
            free(z)
            assert owns(malloc(0) or 1) == hooks
            big = malloc(513)
            assert big and not owns(big)
            free(big)
            c = calloc(16, 20)
            assert owns(c) and ctypes.string_at(c, 320) == b"\\0" * 320
            free(c)
            c = calloc(1000, 1000)
            assert c and not owns(c) and ctypes.string_at(c, 1000) == b"\\0" * 1000
            free(c)
            free(None)
        assert ctypes.string_at(old, 100) == b"\\x11" * 100
        old = api.PyMem_Realloc(old, 300)    # made before install: still the wrapped one's
        assert not owns(old) and ctypes.string_at(old, 100) == b"\\x11" * 100
        api.PyMem_Free(old)
    """, env={"PYTHONMALLOC": wrapped}))


@pytest.mark.parametrize("wrapped", WRAPPED)
@pytest.mark.parametrize("mode", MODE_PARAMS)
@checks_objects_served
def test_growing_objects_across_the_boundary(mode, wrapped):
    out = ok(run(f"""
        import ctypes, ftmalloc
        ftmalloc.install({mode!r})
        def buffer(ba):
            return ctypes.addressof(ctypes.c_char.from_buffer(ba))
        ba = bytearray(b"ab")
        assert ftmalloc.owns(buffer(ba))
        moved_out = False
        for i in range(3000):
            ba += bytes([i % 251])
            moved_out |= not ftmalloc.owns(buffer(ba))
        assert moved_out and not ftmalloc.owns(buffer(ba))
        assert ba[:2] == b"ab" and all(ba[2 + i] == i % 251 for i in range(3000))
        del ba[40:]                         # shrink back below the limit
        assert ba[:2] == b"ab" and len(ba) == 40
        lists = []
        for n in range(0, 2000, 7):
            l = []
            for i in range(n):
                l.append(i)
            assert l == list(range(n))
            lists.append(l)
        s = "-".join(str(i) for i in range(10000))
        assert s.split("-") == [str(i) for i in range(10000)]
        parts = [("x" * (i % 600)) for i in range(2000)]
        joined = "".join(parts)
        assert len(joined) == sum(len(p) for p in parts)
        print(len(lists))
    """, env={"PYTHONMALLOC": wrapped}))
    assert out.strip() == str(len(range(0, 2000, 7)))


@pytest.mark.parametrize("mode", MODE_PARAMS)
@checks_objects_served
def test_threads_allocate_and_hand_objects_over(mode):
    out = ok(run(f"""
        import ftmalloc, queue, threading
        ftmalloc.install({mode!r})
        owns = ftmalloc.owns
        q = queue.Queue(maxsize=200)
        N, THREADS = 4000, 4
        errors = []
        def producer(t):
            for i in range(N):
                q.put((t, i, [t] * (i % 40), {{"k": str(i) * (i % 9)}}, "s" * (i % 700),
                       10**30 + i))
            q.put(None)
        def consumer():
            done = 0
            while done < THREADS:
                item = q.get()
                if item is None:
                    done += 1
                    continue
                t, i, l, d, s, big = item
                if l != [t] * (i % 40) or d != {{"k": str(i) * (i % 9)}} or s != "s" * (i % 700):
                    errors.append((t, i))
                # Made by another thread, from the heap. (Only objects no free list or cache
                # can hand back: lists, dicts, tuples and 1-character strings may be objects
                # made before install; strings above the pooled limit are the wrapped
                # allocator's.)
                if not owns(id(big)) or big != 10**30 + i:
                    errors.append(("int not the heap's", t, i))
                if len(d["k"]) > 1 and not owns(id(d["k"])):
                    errors.append(("dict value not the heap's", t, i))
                if 1 < len(s) < 400 and not owns(id(s)):
                    errors.append(("string not the heap's", t, i, len(s)))
                if len(s) > 600 and owns(id(s)):
                    errors.append(("large string the heap's", t, i, len(s)))
        def churn(t):
            keep = []
            for i in range(20000):
                keep.append((i, str(i)))
                if len(keep) > 500:
                    keep = keep[250:]
            if keep[-1] != (19999, "19999"):
                errors.append(("churn", t))
        threads = [threading.Thread(target=producer, args=(t,)) for t in range(THREADS)]
        threads += [threading.Thread(target=consumer)]
        threads += [threading.Thread(target=churn, args=(t,)) for t in range(2)]
        for th in threads: th.start()
        for th in threads: th.join()
        assert not errors, errors[:10]
        print(ftmalloc.stats()["mode"])
    """))
    assert out.split() == [mode]


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_stats(mode):
    out = ok(run(f"""
        import io, ftmalloc
        ftmalloc.install({mode!r})
        keep = [{{i: i}} for i in range(10000)]  # dict keys objects: the MEM domain
        s = ftmalloc.stats()
        assert s["mode"] == {mode!r}, s["mode"]
        assert s["small_limit"] == 512 and s["pool_size"] == 16384 and s["arena_size"] == 1 << 20
        assert s["classes"], s
        assert s["blocks_in_use"] >= 10000 and s["arenas_current"] >= 1
        assert sum(r["blocks_in_use"] for r in s["classes"]) == s["blocks_in_use"]
        assert s["total"] == s["mapped_bytes"], (s["total"], s["mapped_bytes"])
        f = io.StringIO()
        ftmalloc.print_stats(f)
        text = f.getvalue()
        assert text.startswith("ftmalloc (%s mode)" % {mode!r}), text[:80]
        assert "# bytes in allocated blocks" in text
        print("ok")
    """))
    assert out.strip() == "ok"


def test_print_stats_before_install_raises():
    r = run("import ftmalloc; ftmalloc.print_stats()")
    assert r.returncode == 1 and "not installed" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "arg, exc, words",
    [
        ('"bogus"', "ValueError", ['"bogus" is not accepted', '"gil", "ft"']),
        ('"GIL"', "ValueError", ['"GIL" is not accepted']),
        ("3", "TypeError", ["not int (3)", "'gil', 'ft'"]),
    ],
)
def test_bad_mode(arg, exc, words):
    out = ok(run(f"""
        import ftmalloc
        try:
            ftmalloc.install({arg})
        except {exc} as e:
            print(e)
        else:
            raise SystemExit("no exception")
        print(ftmalloc.mode())
    """))
    for w in words:
        assert w in out, out
    assert out.splitlines()[-1] == "None"


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_second_install_refused(mode):
    out = ok(run(f"""
        import ftmalloc
        ftmalloc.install({mode!r})
        for again in ("gil", "ft"):
            try:
                ftmalloc.install(again)
            except RuntimeError as e:
                print(e)
            else:
                raise SystemExit("second install accepted")
        print(ftmalloc.mode())
    """))
    assert out.count(f'already installed in this process (mode "{mode}")') == 2, out
    assert out.splitlines()[-1] == mode


def test_tracemalloc_refused_and_nothing_left_half_installed():
    out = ok(run("""
        import ftmalloc, tracemalloc
        tracemalloc.start()
        try:
            ftmalloc.install("ft")
        except RuntimeError as e:
            print(e)
        else:
            raise SystemExit("install under tracemalloc accepted")
        assert ftmalloc.mode() is None and ftmalloc.stats() is None
        x = [str(i) for i in range(1000)]
        tracemalloc.stop()
        del x
        ftmalloc.install("ft")           # possible once tracing stopped
        tracemalloc.start()              # and tracemalloc may wrap ftmalloc afterwards
        y = [str(i) for i in range(1000)]
        assert tracemalloc.get_traced_memory()[0] > 0
        tracemalloc.stop()
        if "obj" in ftmalloc.domains():
            assert ftmalloc.owns(id(y[-1]))
        else:                            # a free-threaded build: the MEM domain only
            keys = [{i: i} for i in range(100)]  # dict keys objects: PyMem_Malloc
            assert ftmalloc.stats()["blocks_in_use"] >= 100
        print(ftmalloc.mode())
    """))
    assert "while tracemalloc is tracing" in out, out
    assert out.splitlines()[-1] == "ft"


def test_bad_ftmalloc_debug_refused():
    out = ok(run("""
        import ftmalloc
        try:
            ftmalloc.install("ft")
        except ValueError as e:
            print(e)
        print(ftmalloc.mode())
    """, env={"FTMALLOC_DEBUG": "yes"}))
    assert 'FTMALLOC_DEBUG="yes" is not accepted; accepted values: 1' in out, out
    assert out.splitlines()[-1] == "None"


@pytest.mark.parametrize("value", ["bogus", "GIL", "1"])
def test_bad_ftmalloc_python_stops_start_up(value):
    r = run("print('started')", env={"FTMALLOC_PYTHON": value})
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "started" not in r.stdout
    assert f"FTMALLOC_PYTHON={value!r} is not accepted; accepted values: gil, ft" in r.stderr


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_ftmalloc_python_installs_at_start_up_and_in_children(mode, tmp_path):
    # A script file: multiprocessing's spawned child imports the parent's __main__ from it.
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import ftmalloc, multiprocessing, subprocess, sys
        def child_mode(q):
            import ftmalloc
            q.put(ftmalloc.mode())
        if __name__ == "__main__":
            print(ftmalloc.mode())
            print(subprocess.run([sys.executable, "-c", "import ftmalloc; print(ftmalloc.mode())"],
                                 capture_output=True, text=True).stdout.strip())
            ctx = multiprocessing.get_context("spawn")
            q = ctx.Queue()
            p = ctx.Process(target=child_mode, args=(q,))
            p.start(); print(q.get(timeout=60)); p.join()
    """))
    out = ok(run(None, args=[str(script)], env={"FTMALLOC_PYTHON": mode}))
    assert out.split() == [mode] * 3, out


def test_empty_ftmalloc_python_is_off():
    out = ok(run("import ftmalloc; print(ftmalloc.mode())", env={"FTMALLOC_PYTHON": ""}))
    assert out.strip() == "None"


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_regrtest_workers_run_on_ftmalloc(mode, tmp_path):
    (tmp_path / "test_ftmalloc_worker.py").write_text(textwrap.dedent(SERVED) + textwrap.dedent(f"""
        import os, unittest, ftmalloc
        class T(unittest.TestCase):
            def test_installed_in_worker(self):
                self.assertEqual(ftmalloc.mode(), {mode!r})
                self.assertTrue(served())
                self.assertNotEqual(os.getpid(), int(os.environ["PARENT_PID"]))
    """))
    r = run(None, env={"FTMALLOC_PYTHON": mode, "PARENT_PID": "0"},
            args=["-c", "import os, sys, runpy; os.environ['PARENT_PID'] = str(os.getpid()); "
                  "sys.argv = ['test', '--testdir', sys.argv[1], '-j2', 'test_ftmalloc_worker']; "
                  "runpy.run_module('test', run_name='__main__', alter_sys=True)",
                  str(tmp_path)])
    ok(r)
    assert "Result: SUCCESS" in r.stdout and "Total tests: run=1" in r.stdout, r.stdout


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_run_script(mode, tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import os, subprocess, sys, ftmalloc
        print(__name__, sys.argv, sys.path[0] == os.path.dirname(os.path.abspath(__file__)))
        print(ftmalloc.mode(), os.environ["FTMALLOC_PYTHON"])
        print(subprocess.run([sys.executable, "-c", "import ftmalloc; print(ftmalloc.mode())"],
                             capture_output=True, text=True).stdout.strip())
        sys.exit(7)
    """))
    r = run(None, args=["-m", "ftmalloc", "run", "--mode", mode, str(script), "a", "--mode", "b"],
            cwd="/")
    assert r.returncode == 7, (r.returncode, r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert lines[0] == f"__main__ {[str(script), 'a', '--mode', 'b']!r} True", lines
    assert lines[1] == f"{mode} {mode}" and lines[2] == mode, lines


def test_run_script_exception_exits_1(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("raise KeyError('boom')\n")
    r = run(None, args=["-m", "ftmalloc", "run", str(script)])
    assert r.returncode == 1 and "KeyError: 'boom'" in r.stderr, r.stderr


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_run_module(mode, tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(textwrap.dedent("""
        import sys, ftmalloc
        print(__name__, sys.argv[0].endswith("__main__.py"), sys.argv[1:], ftmalloc.mode())
        raise SystemExit(int(sys.argv[1]))
    """))
    r = run(None, args=["-m", "ftmalloc", "run", f"--mode={mode}", "-m", "mypkg", "3", "x"],
            cwd=tmp_path)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.split(None, 2)[:2] == ["__main__", "True"], r.stdout
    assert r.stdout.strip().endswith(f"['3', 'x'] {mode}"), r.stdout


@needs_gil_build
def test_run_default_mode_follows_the_environment(tmp_path):
    script = tmp_path / "m.py"
    script.write_text("import ftmalloc; print(ftmalloc.mode())\n")
    assert ok(run(None, args=["-m", "ftmalloc", "run", str(script)])).strip() == "ft"
    out = ok(run(None, args=["-m", "ftmalloc", "run", str(script)],
                 env={"FTMALLOC_PYTHON": "gil"}))
    assert out.strip() == "gil"
    r = run(None, args=["-m", "ftmalloc", "run", "--mode", "ft", str(script)],
            env={"FTMALLOC_PYTHON": "gil"})
    assert r.returncode == 2 and "already installed in mode gil" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", "--mode", "bogus", "x.py"], "--mode 'bogus' is not accepted; accepted values: gil, ft"),
        (["run", "--mode"], "--mode needs a value"),
        (["run"], "run needs a script, -m module or -c code"),
        (["run", "-c"], "-c needs the code to run"),
        (["run", "-m"], "-m needs a module name"),
        (["run", "-x", "y"], "unknown option '-x'; accepted: --mode, -m, -c"),
        (["frobnicate"], "unknown command 'frobnicate'; accepted commands: run, stats"),
    ],
)
def test_run_bad_arguments(args, words):
    r = run(None, args=["-m", "ftmalloc", *args])
    assert r.returncode == 2 and words in r.stderr, (r.returncode, r.stderr)


@pytest.mark.parametrize("mode", MODE_PARAMS)
@pytest.mark.parametrize("domain", ["PyMem", pytest.param("PyObject", marks=checks_objects_served)])
def test_debug_mode_double_free_aborts_naming_the_pointer(mode, domain):
    r = run(f"""
        import ctypes, sys, ftmalloc
        api = ctypes.pythonapi
        api.{domain}_Malloc.restype = ctypes.c_void_p
        api.{domain}_Malloc.argtypes = [ctypes.c_size_t]
        api.{domain}_Free.argtypes = [ctypes.c_void_p]
        ftmalloc.install({mode!r})
        assert ftmalloc.debug() is True
        p = api.{domain}_Malloc(40)
        assert ftmalloc.owns(p)
        print(hex(p), flush=True)
        api.{domain}_Free(p)
        api.{domain}_Free(p)
        print("survived", flush=True)
    """, env={"FTMALLOC_DEBUG": "1"})
    assert r.returncode == -signal.SIGABRT, (r.returncode, r.stdout, r.stderr)
    p = r.stdout.split()[0]
    assert "survived" not in r.stdout
    assert f"ftmalloc debug: double free at {p}" in r.stderr, r.stderr


@pytest.mark.parametrize("wrapped", WRAPPED)
@pytest.mark.parametrize("mode", MODE_PARAMS)
@checks_objects_served
def test_debug_mode_runs_python_code(mode, wrapped):
    out = ok(run(f"""
        import ftmalloc
        ftmalloc.install({mode!r})
        # Objects of every size around the pooled limit (512 less debug mode's overhead).
        blobs = [bytes(n) for n in range(300, 700)] * 3
        blobs += [bytearray(n) for n in range(300, 700)]
        for b in blobs[-400:]:
            b += b"z" * 7
        del blobs
        d = {{str(i): [i] * (i % 50) for i in range(20000)}}
        ba = bytearray()
        for i in range(1000): ba += b"y" * 3
        assert len(ba) == 3000 and d["19999"] == [19999] * 49
        print(ftmalloc.debug(), ftmalloc.stats()["blocks_in_use"] > 20000)
    """, env={"FTMALLOC_DEBUG": "1", "PYTHONMALLOC": wrapped}))
    assert out.split() == ["True", "True"]


# --- CPython's debug hooks (PYTHONMALLOC=debug, -X dev): ftmalloc serves underneath them.

_HOOKED = "mimalloc_debug" if FREE_THREADED else "malloc_debug"
DEBUG_HOOKS = [({"PYTHONMALLOC": "debug"}, ()), ({"PYTHONMALLOC": _HOOKED}, ()),
               ({}, ("-X", "dev"))]
DEBUG_IDS = ["PYTHONMALLOC=debug", f"PYTHONMALLOC={_HOOKED}", "-X dev"]


@pytest.mark.parametrize("env, args", DEBUG_HOOKS, ids=DEBUG_IDS)
@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_debug_hooks_check_the_heaps_blocks(mode, env, args):
    # A buffer overflow by one byte past a 16-byte PyMem_Malloc block: the hooks' trailing
    # guard bytes catch it at free, so the block must have passed through them.
    r = run(SERVED + f"""
    import _testcapi, ftmalloc
    ftmalloc.install({mode!r})
    assert ftmalloc.under_debug_hooks() is True
    assert served()
    print("installed", flush=True)
    _testcapi.pymem_buffer_overflow()
    print("survived", flush=True)
    """, env=env, args=args)
    assert r.returncode == -signal.SIGABRT, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.split() == ["installed"], r.stdout
    assert "bad trailing pad byte" in r.stderr, r.stderr


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_debug_hooks_catch_api_misuse_on_the_heaps_blocks(mode):
    # PyMem_Malloc'ed, PyMem_RawFree'd: the hooks' API id says so.
    r = run(f"""
        import _testcapi, ftmalloc
        ftmalloc.install({mode!r})
        print("installed", flush=True)
        _testcapi.pymem_api_misuse()
        print("survived", flush=True)
    """, env={"PYTHONMALLOC": "debug"})
    assert r.returncode == -signal.SIGABRT, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.split() == ["installed"], r.stdout
    assert "bad ID: Allocated using API 'm', verified using API 'r'" in r.stderr, r.stderr


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_no_debug_hooks_without_the_setting(mode):
    out = ok(run(f"""
        import ftmalloc
        ftmalloc.install({mode!r})
        print(ftmalloc.under_debug_hooks())
    """))
    assert out.strip() == "False"


@pytest.mark.parametrize("env, args, setting", [
    ({"PYTHONMALLOC": "debug"}, (), "PYTHONMALLOC=debug"),
    ({}, ("-X", "dev"), "-X dev"),
], ids=["PYTHONMALLOC=debug", "-X dev"])
def test_debug_hooks_wrapped_by_another_allocator_refused(env, args, setting):
    # _testcapi.set_nomemory wraps every domain's allocator (failing nothing this early):
    # the hooks are then below another allocator, where ftmalloc cannot get under them.
    out = ok(run("""
        import _testcapi, ftmalloc
        _testcapi.set_nomemory(10**9, 0)
        try:
            ftmalloc.install("ft")
        except RuntimeError as e:
            print(e)
        else:
            raise SystemExit("installed over hooks it would bypass")
        _testcapi.remove_mem_hooks()
        assert ftmalloc.mode() is None
        ftmalloc.install("ft")          # the hooks on top again: underneath them
        print(ftmalloc.under_debug_hooks())
    """, env=env, args=args))
    assert f"cannot install under {setting}" in out, out
    assert "would bypass their checks" in out, out
    assert out.splitlines()[-1] == "True", out


@pytest.mark.parametrize("mode", MODE_PARAMS)
@pytest.mark.parametrize("wrapped", WRAPPED)
def test_raw_domain_left_alone(mode, wrapped):
    out = ok(run(f"""
        import ctypes, ftmalloc
        class Alloc(ctypes.Structure):
            _fields_ = [(n, ctypes.c_void_p) for n in ("ctx", "malloc", "calloc", "realloc", "free")]
        api = ctypes.pythonapi
        api.PyMem_GetAllocator.argtypes = [ctypes.c_int, ctypes.POINTER(Alloc)]
        api.PyMem_RawMalloc.restype = ctypes.c_void_p
        api.PyMem_RawMalloc.argtypes = [ctypes.c_size_t]
        api.PyMem_RawFree.argtypes = [ctypes.c_void_p]
        RAW, MEM = 0, 1
        def get(domain):
            a = Alloc()
            api.PyMem_GetAllocator(domain, ctypes.byref(a))
            return tuple(getattr(a, n) for n, _ in Alloc._fields_)
        raw, mem = get(RAW), get(MEM)
        ftmalloc.install({mode!r})
        assert get(RAW) == raw, (get(RAW), raw)
        # MEM changed, or (under the debug hooks) what is under its hooks did.
        assert get(MEM) != mem or ftmalloc.under_debug_hooks()
        ps = [api.PyMem_RawMalloc(n) for n in (1, 16, 100, 512)]
        assert all(ps) and not any(ftmalloc.owns(p) for p in ps), [hex(p) for p in ps]
        for p in ps:
            api.PyMem_RawFree(p)
        print("ok")
    """, env={"PYTHONMALLOC": wrapped}))
    assert out.strip() == "ok"


# --- tracemalloc at start-up, sys._debugmallocstats(), the environment.

@pytest.mark.parametrize("env, args, frames", [
    ({"PYTHONTRACEMALLOC": "5"}, (), 5),
    ({}, ("-X", "tracemalloc=3"), 3),
    ({"PYTHONTRACEMALLOC": "1", "PYTHONMALLOC": "debug"}, (), 1),
], ids=["PYTHONTRACEMALLOC=5", "-X tracemalloc=3", "PYTHONTRACEMALLOC=1+debug"])
@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_tracemalloc_at_start_up(mode, env, args, frames):
    line = SERVED.count("\n") + 3  # of `x = ...` below
    out = ok(run(SERVED + f"""
    import ftmalloc, tracemalloc
    x = [str(i) * 3 for i in range(1000)]
    tb = tracemalloc.get_object_traceback(x[-1])
    print(ftmalloc.mode(), tracemalloc.is_tracing(), tracemalloc.get_traceback_limit(),
          tb is not None and tb[0].lineno == {line}, served())
    tracemalloc.stop()
    print(served())
    """, env={"FTMALLOC_PYTHON": mode, **env}, args=args))
    assert out.split() == [mode, "True", str(frames), "True", "True", "True"], out


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_debugmallocstats_shows_the_heap(mode):
    r = run("""
        import sys
        sys._debugmallocstats()
        try:
            sys._debugmallocstats(True)
        except TypeError:
            print("TypeError")
    """, env={"FTMALLOC_PYTHON": mode})
    assert ok(r).strip() == "TypeError"
    err = r.stderr
    assert err.startswith(f"ftmalloc ({mode} mode)\nSmall block threshold = 512"), err[:200]
    assert "# bytes in allocated blocks" in err, err
    # CPython's own rows (free lists) follow.
    assert "free PyDictObjects" in err, err


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_ftmalloc_stats_at_exit(mode):
    r = run("x = [str(i) for i in range(5000)]; print('done')",
            env={"FTMALLOC_PYTHON": mode, "FTMALLOC_STATS": "1"})
    assert ok(r).strip() == "done"
    head = r.stderr.splitlines()[:2]
    assert head[0].startswith("ftmalloc: the Python package's heap, pid "), r.stderr
    assert head[0].endswith(", at exit:") and head[1] == f"ftmalloc ({mode} mode)", r.stderr
    assert "# bytes in allocated blocks" in r.stderr
    r = run("print('done')", env={"FTMALLOC_PYTHON": mode, "FTMALLOC_STATS": "0"})
    assert ok(r).strip() == "done" and r.stderr == "", r.stderr


@pytest.mark.parametrize("decay, purged", [("0", True), ("3600000", False)])
def test_ftmalloc_decay_ms(decay, purged):
    # Free-threaded mode: 0 gives a free pool's pages back as it is freed; an hour keeps them.
    out = ok(run("""
        import gc, time, ftmalloc
        ftmalloc.install("ft")
        keep = [[str(i)] * 3 for i in range(200000)]
        del keep
        gc.collect()
        time.sleep(0.3)
        churn = [[str(i)] for i in range(20000)]
        del churn
        print(ftmalloc.stats()["pools_purged"])
    """, env={"FTMALLOC_DECAY_MS": decay}))
    assert (int(out) > 0) == purged, out


@pytest.mark.parametrize("var, value, accepted", [
    ("FTMALLOC_STATS", "yes", "1 (on), 0 or empty (off)"),
    ("FTMALLOC_DECAY_MS", "10s", "an integer from 0 to 3600000 (milliseconds)"),
    ("FTMALLOC_DECAY_MS", "3600001", "an integer from 0 to 3600000 (milliseconds)"),
    ("FTMALLOC_MODE", "bogus", "ft, gil"),
])
def test_bad_environment_refused(var, value, accepted):
    out = ok(run("""
        import ftmalloc
        try:
            ftmalloc.install("ft")
        except ValueError as e:
            print(e)
        print(ftmalloc.mode())
    """, env={var: value}))
    assert f'{var}="{value}" is not accepted; accepted values: {accepted}' in out, out
    assert out.splitlines()[-1] == "None"


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_ftmalloc_mode_contradicting_ftmalloc_python_refused(mode):
    other = "gil" if mode == "ft" else "ft"
    r = run("print('started')", env={"FTMALLOC_PYTHON": mode, "FTMALLOC_MODE": other})
    assert r.returncode == 2 and "started" not in r.stdout, (r.returncode, r.stdout)
    assert f"FTMALLOC_PYTHON={mode}" in r.stderr and f'FTMALLOC_MODE="{other}"' in r.stderr, \
        r.stderr
    out = ok(run("import ftmalloc; print(ftmalloc.mode())",
                 env={"FTMALLOC_PYTHON": mode, "FTMALLOC_MODE": mode}))
    assert out.strip() == mode


# --- The start-up hook and python's own switches.

def test_dash_S_skips_the_start_up_hook():
    # A bad value stops start-up when the hook runs; -S does not run it.
    r = run("import sys; print('ftmalloc' in sys.modules)", env={"FTMALLOC_PYTHON": "bogus"},
            args=["-S"])
    assert ok(r).strip() == "False" and r.stderr == "", r.stderr
    r = run("print('started')", env={"FTMALLOC_PYTHON": "bogus"})
    assert r.returncode == 2


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_dash_I_runs_the_start_up_hook(mode):
    out = ok(run("import ftmalloc; print(ftmalloc.mode())", env={"FTMALLOC_PYTHON": mode},
                 args=["-I"]))
    assert out.strip() == mode


# --- python -m ftmalloc run behaves as python.

def python_and_run(args, cwd):
    """The same command line run by python and by ``python -m ftmalloc run``."""
    return (run(None, args=args, cwd=cwd),
            run(None, args=["-m", "ftmalloc", "run", *args], cwd=cwd))


def test_run_missing_script_as_python(tmp_path):
    py, ft = python_and_run(["missing.py", "a"], tmp_path)
    assert py.returncode == ft.returncode == 2, (py.returncode, ft.returncode, ft.stderr)
    assert ft.stderr == py.stderr, (py.stderr, ft.stderr)
    assert f"can't open file '{tmp_path / 'missing.py'}': [Errno 2]" in ft.stderr


def test_run_missing_module_as_python(tmp_path):
    py, ft = python_and_run(["-m", "no_such_module_x", "a"], tmp_path)
    assert py.returncode == ft.returncode == 1, (py.returncode, ft.returncode, ft.stderr)
    assert ft.stderr == py.stderr and "No module named no_such_module_x" in ft.stderr, \
        (py.stderr, ft.stderr)


def test_run_directory_without_main_as_python(tmp_path):
    (tmp_path / "d").mkdir()
    py, ft = python_and_run(["d"], tmp_path)
    assert py.returncode == ft.returncode == 1, (py.returncode, ft.returncode, ft.stderr)
    assert ft.stderr == py.stderr and "can't find '__main__' module" in ft.stderr, \
        (py.stderr, ft.stderr)


@pytest.mark.parametrize("code, status", [
    ("raise SystemExit(5)", 5),
    ("raise SystemExit('bye')", 1),
    ("import sys; sys.exit()", 0),
    ("def f():\n    1/0\nf()", 1),
    ("raise KeyboardInterrupt", 130),
])
def test_run_c_as_python(code, status, tmp_path):
    body = "import sys, os\nprint(__name__, sys.argv, repr(sys.path[0]), flush=True)\n" + code
    py, ft = python_and_run(["-c", body, "a", "-x"], tmp_path)
    want = -signal.SIGINT if status == 130 else status
    assert py.returncode == ft.returncode == want, (py.returncode, ft.returncode, ft.stderr)
    assert ft.stdout == py.stdout == "__main__ ['-c', 'a', '-x'] ''\n", (py.stdout, ft.stdout)
    assert ft.stderr == py.stderr, (py.stderr, ft.stderr)


def test_run_script_traceback_as_python(tmp_path):
    (tmp_path / "boom.py").write_text("import sys\ndef f():\n    raise KeyError(sys.argv[1])\nf()\n")
    py, ft = python_and_run(["boom.py", "k"], tmp_path)
    assert py.returncode == ft.returncode == 1
    assert ft.stderr == py.stderr, (py.stderr, ft.stderr)
    assert "runpy" not in ft.stderr and "ftmalloc" not in ft.stderr


def test_run_module_traceback_as_python(tmp_path):
    (tmp_path / "boomm.py").write_text("raise ValueError('m')\n")
    py, ft = python_and_run(["-m", "boomm"], tmp_path)
    assert py.returncode == ft.returncode == 1
    assert ft.stderr == py.stderr, (py.stderr, ft.stderr)


# --- Free-threaded builds (issue 22, "A defect first"): the MEM domain only -----------------

#: The domains install serves by default on this interpreter.
DEFAULT_DOMAINS = ["mem"] if FREE_THREADED else ["mem", "obj"]
#: The modes this interpreter accepts.
OK_MODES = ["ft"] if FREE_THREADED else MODES

# Two-object cycles made with the collector off; gc.collect() then counts what it found.
CYCLES = """
    import gc
    class Node:
        pass
    def cycles(n):
        gc.disable()
        gc.collect()
        for _ in range(n):
            a, b = Node(), Node()
            a.other, b.other = b, a
        del a, b
        found = gc.collect()
        gc.enable()
        return found
"""


@pytest.mark.parametrize("mode", OK_MODES)
def test_gc_finds_every_cycle(mode):
    # On 3.13t the OBJ domain served by ftmalloc hid every object from the GC (it walks
    # mimalloc's heaps): 0 found instead of 40000 (two objects per cycle).
    out = ok(run(CYCLES + f"""
    import ftmalloc
    without = cycles(20000)
    ftmalloc.install({mode!r})
    with_ = cycles(20000)
    print(without, with_)
    """))
    without, with_ = map(int, out.split())
    assert without >= 40000, out
    assert with_ == without, out


def test_gc_finds_every_cycle_with_the_start_up_hook():
    out = ok(run(CYCLES + """
    import ftmalloc
    print(ftmalloc.mode(), cycles(20000))
    """, env={"FTMALLOC_PYTHON": "ft"}))
    mode, found = out.split()
    assert mode == "ft" and int(found) >= 40000, out


# Blocks of each domain through the C-API (ctypes.pythonapi calls with a thread state attached).
CAPI = """
    import ctypes
    api = ctypes.pythonapi
    for f in ("PyMem_Malloc", "PyObject_Malloc"):
        getattr(api, f).restype = ctypes.c_void_p
        getattr(api, f).argtypes = [ctypes.c_size_t]
    for f in ("PyMem_Free", "PyObject_Free"):
        getattr(api, f).restype = None
        getattr(api, f).argtypes = [ctypes.c_void_p]
"""


def test_domains_served_by_default():
    out = ok(run(CAPI + """
    import ftmalloc
    print(ftmalloc.domains())
    ftmalloc.install()
    print(ftmalloc.domains())
    m, o = api.PyMem_Malloc(64), api.PyObject_Malloc(64)
    objs = [str(i) * 3 for i in range(1000)]
    print(ftmalloc.owns(m), ftmalloc.owns(o), sum(map(ftmalloc.owns, map(id, objs))))
    api.PyMem_Free(m); api.PyObject_Free(o)
    """))
    lines = out.splitlines()
    assert lines[0] == "None" and lines[1] == repr(DEFAULT_DOMAINS), out
    mem, obj, objs = lines[2].split()
    assert mem == "True", out
    # The OBJ domain is the heap's on a GIL build, left to mimalloc on a free-threaded one.
    assert obj == str(not FREE_THREADED) and (int(objs) == 0) == FREE_THREADED, out


@needs_free_threaded
def test_start_up_hook_serves_the_mem_domain_only_on_free_threaded_builds():
    out = ok(run(CAPI + """
    import ftmalloc
    m = api.PyMem_Malloc(100)
    print(ftmalloc.mode(), ftmalloc.domains(), ftmalloc.owns(m), ftmalloc.owns(id(str(m))))
    """, env={"FTMALLOC_PYTHON": "ft"}))
    assert out.split() == ["ft", "['mem']", "True", "False"], out


@needs_free_threaded
@pytest.mark.parametrize("domains", [["mem", "obj"], ["obj"]])
def test_obj_domain_refused_on_free_threaded_builds(domains):
    out = ok(run(f"""
        import ftmalloc, sys
        try:
            ftmalloc.install("ft", {domains!r})
        except RuntimeError as e:
            print(e)
        else:
            raise SystemExit("OBJ domain accepted")
        print(ftmalloc.mode(), ftmalloc.domains())
        print(sys.version.split()[0])
    """))
    message, state, version = out.splitlines()
    for w in ["OBJ domain", "PyObject_Malloc", "free-threaded", version, "Py_GIL_DISABLED",
              "garbage collector", "mimalloc"]:
        assert w in message, out
    assert state == "None None", out


@needs_gil_build
def test_mem_domain_only_on_request():
    out = ok(run(CAPI + """
    import ftmalloc
    ftmalloc.install("gil", ["mem"])
    m, o = api.PyMem_Malloc(64), api.PyObject_Malloc(64)
    print(ftmalloc.domains(), ftmalloc.owns(m), ftmalloc.owns(o), ftmalloc.owns(id(str(m))))
    api.PyMem_Free(m); api.PyObject_Free(o)
    """))
    assert out.split() == ["['mem']", "True", "False", "False"], out


@pytest.mark.parametrize(
    "arg, exc, words",
    [
        ('["heap"]', "ValueError", ['domain "heap" is not accepted', '"mem"', '"obj"']),
        ('[]', "ValueError", ["domains is empty"]),
        ('["mem", "mem"]', "ValueError", ['"mem" is named twice']),
        ('"mem"', "TypeError", ["must be a list of str"]),
    ],
)
def test_bad_domains(arg, exc, words):
    out = ok(run(f"""
        import ftmalloc
        try:
            ftmalloc.install("ft", {arg})
        except {exc} as e:
            print(e)
        else:
            raise SystemExit("no exception")
        print(ftmalloc.mode())
    """))
    for w in words:
        assert w in out, out
    assert out.splitlines()[-1] == "None"


@needs_free_threaded
def test_install_refused_while_threads_run_on_free_threaded_builds():
    out = ok(run("""
        import ftmalloc, threading
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        try:
            ftmalloc.install("ft")
        except RuntimeError as e:
            print(e)
        else:
            raise SystemExit("installed beside a running thread")
        stop.set(); t.join()
        print(ftmalloc.mode())
        ftmalloc.install("ft")
        print(ftmalloc.mode())
    """))
    lines = out.splitlines()
    assert "while 1 other thread(s) run" in lines[0] and "PyMem_SetAllocator" in lines[0], out
    assert lines[1:] == ["None", "ft"], out


@pytest.mark.parametrize("mode", OK_MODES)
def test_threads_allocate_through_pymem_concurrently(mode):
    # Without a GIL (3.13t) the MEM domain is called in parallel: the heap's thread caches
    # serve it. Each thread's blocks keep their bytes while the others allocate and free.
    out = ok(run(CAPI + f"""
    import ftmalloc, threading
    ftmalloc.install({mode!r})
    THREADS, ROUNDS = 6, 300
    errors = []
    start = threading.Barrier(THREADS)
    def work(t):
        start.wait()
        lists = []
        for r in range(ROUNDS):
            blocks = []
            for size in range(8, 513, 24):
                p = api.PyMem_Malloc(size)
                if not ftmalloc.owns(p):
                    errors.append(("not the heap's", t, size))
                ctypes.memset(p, t + 1, size)
                blocks.append((p, size))
            for p, size in blocks:
                if ctypes.string_at(p, size) != bytes([t + 1]) * size:
                    errors.append(("overwritten", t, r, size))
                api.PyMem_Free(p)
            # List item arrays grow through PyMem_Realloc.
            lists.append([t] * (r % 50))
            lists[-1].extend(range(r % 30))
            if len(lists) > 40:
                del lists[:20]
    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads: th.start()
    for th in threads: th.join()
    assert not errors, errors[:10]
    print(ftmalloc.stats()["mode"])
    """))
    assert out.split() == [mode], out
