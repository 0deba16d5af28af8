"""``python -m ftmalloc run [--mode gil|ft] script.py args...``,
``python -m ftmalloc run [--mode gil|ft] -m module args...`` or
``python -m ftmalloc run [--mode gil|ft] -c code args...``.

Installs ftmalloc in this interpreter, sets FTMALLOC_PYTHON for child interpreters, then runs
the script, module or code as ``python script.py`` / ``python -m module`` / ``python -c code``
would: ``sys.argv``, the ``__main__`` module, ``sys.path[0]``, the messages and exit statuses
of a missing script (2) or module (1), a ``SystemExit``'s code, and an uncaught exception's
traceback (without this runner's frames) and status (1) are theirs. The mode defaults to
FTMALLOC_PYTHON when set, else "ft".
"""

import os
import runpy
import sys
import types

import ftmalloc

USAGE = """\
usage: python -m ftmalloc run [--mode gil|ft] script.py [args...]
       python -m ftmalloc run [--mode gil|ft] -m module [args...]
       python -m ftmalloc run [--mode gil|ft] -c code [args...]
       python -m ftmalloc stats      (install in FTMALLOC_PYTHON's mode or ft, print the table)
"""


def _usage(message):
    sys.stderr.write(f"ftmalloc: {message}\n{USAGE}")
    sys.exit(2)


def _check_mode(value, where):
    if value not in ftmalloc.MODES:
        _usage(f"{where} {value!r} is not accepted; accepted values: {', '.join(ftmalloc.MODES)}")
    return value


def _install(mode):
    current = ftmalloc.mode()
    if current is None:
        try:
            ftmalloc.install(mode)
        except Exception as e:  # noqa: BLE001 - reported with its message
            sys.stderr.write(f"ftmalloc: cannot install: {e}\n")
            sys.exit(2)
    elif current != mode:
        # The start-up hook installed FTMALLOC_PYTHON's mode; it cannot be changed now.
        _usage(
            f"--mode {mode} asked, but ftmalloc is already installed in mode {current} "
            f"(from {ftmalloc.ENV}={os.environ.get(ftmalloc.ENV, '')!r})"
        )
    os.environ[ftmalloc.ENV] = mode


def _program():
    """The name ``python`` gives itself in its messages (``argv[0]`` as typed)."""
    return (getattr(sys, "orig_argv", None) or [sys.executable])[0]


def _fresh_main():
    """A new, empty ``__main__`` module in ``sys.modules`` (this runner's own ``__main__``
    keeps its globals through its functions)."""
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    return main


def _run(args):
    env_mode = os.environ.get(ftmalloc.ENV, "")
    mode = _check_mode(env_mode, ftmalloc.ENV + "=") if env_mode else "ft"
    while args and args[0].startswith("--mode"):
        if args[0] == "--mode":
            if len(args) < 2:
                _usage("--mode needs a value")
            mode, args = _check_mode(args[1], "--mode"), args[2:]
        else:
            mode, args = _check_mode(args[0][len("--mode="):], "--mode"), args[1:]
    if not args:
        _usage("run needs a script, -m module or -c code")
    if args[0] == "-m":
        if len(args) < 2:
            _usage("-m needs a module name")
        module, rest = args[1], args[2:]
        _install(mode)
        # As `python -m`: sys.path[0] is the current directory (it already is: we were started
        # with -m); runpy's own entry for -m sets argv[0] to the module's file, and reports a
        # missing module as python does ("python: No module named x", status 1).
        sys.argv = [module, *rest]
        global _RUNPY_SHOWN
        _RUNPY_SHOWN = True
        _fresh_main()
        runpy._run_module_as_main(module, alter_argv=True)
    elif args[0] == "-c":
        if len(args) < 2:
            _usage("-c needs the code to run (as python: Argument expected for the -c option)")
        code, rest = args[1], args[2:]
        _install(mode)
        # As `python -c`: argv[0] is "-c", sys.path[0] is "", the code runs in __main__.
        sys.argv = ["-c", *rest]
        sys.path[0] = ""
        main = _fresh_main()
        compiled = compile(code, "<string>", "exec")
        # 3.13's `python -c` registers the code's source for tracebacks (pythonrun.c run_mod,
        # linecache._register_code); earlier versions print no source lines for "<string>".
        register = getattr(__import__("linecache"), "_register_code", None)
        if register is not None:
            register(compiled, code, "<string>")
        exec(compiled, main.__dict__)
    else:
        script, rest = args[0], args[1:]
        if script.startswith("-"):
            _usage(f"unknown option {script!r}; accepted: --mode, -m, -c")
        try:
            os.stat(script)
        except OSError as e:
            # As python: "python: can't open file '/abs/x.py': [Errno 2] ...", status 2.
            sys.stderr.write(
                f"{_program()}: can't open file {os.path.abspath(script)!r}: "
                f"[Errno {e.errno}] {e.strerror}\n"
            )
            sys.exit(2)
        _install(mode)
        sys.argv = [script, *rest]
        # As `python script.py`: sys.path[0] is the script's directory (or the directory or
        # zip file itself, which runpy runs as python does).
        sys.path[0] = (
            script if os.path.isdir(script) else os.path.dirname(os.path.abspath(script))
        )
        # As python, __file__ (and the traceback) name the script by its absolute path.
        runpy.run_path(os.path.abspath(script), run_name="__main__")


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    if command == "run":
        _run(args)
        return 0
    if command == "stats":
        env_mode = os.environ.get(ftmalloc.ENV, "")
        _install(_check_mode(env_mode, ftmalloc.ENV + "=") if env_mode else "ft")
        ftmalloc.print_stats(sys.stdout)
        return 0
    _usage(f"unknown command {command!r}; accepted commands: run, stats")


#: Whether python's traceback would show runpy's frames: it does for -m (python runs the
#: module through runpy itself), not for a script or -c.
_RUNPY_SHOWN = False


def _runner_frame(frame):
    """Whether a traceback frame is one python would not show: this runner's, or runpy's
    where python does not run through runpy."""
    return frame.f_globals is globals() or (
        frame.f_globals is runpy.__dict__ and not _RUNPY_SHOWN
    )


def _exit_as_python(exc):
    """An exception the program did not catch: printed as python prints it (its traceback
    without this runner's frames), then python's exit status: 1, or death by SIGINT for a
    KeyboardInterrupt."""
    tb = exc.__traceback__
    while tb is not None and _runner_frame(tb.tb_frame):
        tb = tb.tb_next
    if tb is None and isinstance(exc, ImportError):
        # runpy's own error (a directory or zip file without __main__): python's one line.
        sys.stderr.write(f"{_program()}: {exc}\n")
        sys.exit(1)
    # The default hook prints the exception's own __traceback__: trim that too.
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)
    if isinstance(exc, KeyboardInterrupt):
        import signal

        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    sys.exit(1)


if __name__ == "__main__":
    try:
        status = main(sys.argv[1:])
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - reported as python reports it
        _exit_as_python(e)
    sys.exit(status)
