"""Tests of the ftmalloc package: install changes the interpreter for good, so every check runs
in a child interpreter (``sys.executable``) and the parent checks what it reports."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

MODES = ["gil", "ft"]
# The allocator install wraps: pymalloc (the default), or pymalloc behind CPython's debug hooks,
# which abort on a pointer they did not hand out (so a block of ours, or glibc's, sent to the
# wrapped allocator is caught), or plain malloc.
WRAPPED = ["pymalloc", "debug", "malloc"]


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
@pytest.mark.parametrize("mode", MODES)
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
@pytest.mark.parametrize("mode", MODES)
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
            assert z and not owns(z)
            free(z)
            assert not owns(malloc(0) or 1)
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
@pytest.mark.parametrize("mode", MODES)
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


@pytest.mark.parametrize("mode", MODES)
def test_threads_allocate_and_hand_objects_over(mode):
    out = ok(run(f"""
        import ftmalloc, queue, threading
        ftmalloc.install({mode!r})
        q = queue.Queue(maxsize=200)
        N, THREADS = 4000, 4
        errors = []
        def producer(t):
            for i in range(N):
                q.put((t, i, [t] * (i % 40), {{"k": str(i) * (i % 9)}}, "s" * (i % 700)))
            q.put(None)
        def consumer():
            done = 0
            while done < THREADS:
                item = q.get()
                if item is None:
                    done += 1
                    continue
                t, i, l, d, s = item
                if l != [t] * (i % 40) or d != {{"k": str(i) * (i % 9)}} or s != "s" * (i % 700):
                    errors.append((t, i))
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
        s = ftmalloc.stats()
        print(s["mode"], s["blocks_in_use"] > 0)
    """))
    assert out.split() == [mode, "True"]


@pytest.mark.parametrize("mode", MODES)
def test_stats(mode):
    out = ok(run(f"""
        import io, ftmalloc
        ftmalloc.install({mode!r})
        keep = [str(i) for i in range(10000)]
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


@pytest.mark.parametrize("mode", MODES)
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
        assert ftmalloc.owns(id(y[-1]))
        print(ftmalloc.mode())
    """))
    assert "while tracemalloc is tracing" in out, out
    assert out.splitlines()[-1] == "ft"


def test_bad_ftmalloc_debug_refused():
    out = ok(run("""
        import ftmalloc
        try:
            ftmalloc.install("gil")
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


@pytest.mark.parametrize("mode", MODES)
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


@pytest.mark.parametrize("mode", MODES)
def test_regrtest_workers_run_on_ftmalloc(mode, tmp_path):
    (tmp_path / "test_ftmalloc_worker.py").write_text(textwrap.dedent(f"""
        import os, unittest, ftmalloc
        class T(unittest.TestCase):
            def test_installed_in_worker(self):
                self.assertEqual(ftmalloc.mode(), {mode!r})
                self.assertTrue(ftmalloc.owns(id([1, 2, 3])))
                self.assertNotEqual(os.getpid(), int(os.environ["PARENT_PID"]))
    """))
    r = run(None, env={"FTMALLOC_PYTHON": mode, "PARENT_PID": "0"},
            args=["-c", "import os, sys, runpy; os.environ['PARENT_PID'] = str(os.getpid()); "
                  "sys.argv = ['test', '--testdir', sys.argv[1], '-j2', 'test_ftmalloc_worker']; "
                  "runpy.run_module('test', run_name='__main__', alter_sys=True)",
                  str(tmp_path)])
    ok(r)
    assert "Result: SUCCESS" in r.stdout and "Total tests: run=1" in r.stdout, r.stdout


@pytest.mark.parametrize("mode", MODES)
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


@pytest.mark.parametrize("mode", MODES)
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
        (["run"], "run needs a script or -m module"),
        (["run", "-m"], "-m needs a module name"),
        (["run", "-x", "y"], "unknown option '-x'"),
        (["frobnicate"], "unknown command 'frobnicate'; accepted commands: run, stats"),
    ],
)
def test_run_bad_arguments(args, words):
    r = run(None, args=["-m", "ftmalloc", *args])
    assert r.returncode == 2 and words in r.stderr, (r.returncode, r.stderr)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("domain", ["PyMem", "PyObject"])
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
@pytest.mark.parametrize("mode", MODES)
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
