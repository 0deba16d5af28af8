"""``python -m ftmalloc run [--mode gil|ft] script.py args...`` or
``python -m ftmalloc run [--mode gil|ft] -m module args...``.

Installs ftmalloc in this interpreter, sets FTMALLOC_PYTHON for child interpreters, then runs
the script or module as ``python script.py`` / ``python -m module`` would: ``sys.argv``, the
``__main__`` module, ``sys.path[0]`` and the exit status are theirs. The mode defaults to
FTMALLOC_PYTHON when set, else "ft".
"""

import os
import runpy
import sys

import ftmalloc

USAGE = """\
usage: python -m ftmalloc run [--mode gil|ft] script.py [args...]
       python -m ftmalloc run [--mode gil|ft] -m module [args...]
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
        _usage("run needs a script or -m module")
    if args[0] == "-m":
        if len(args) < 2:
            _usage("-m needs a module name")
        module, rest = args[1], args[2:]
        _install(mode)
        # As `python -m`: sys.path[0] is the current directory (it already is: we were started
        # with -m), argv[0] becomes the module's file.
        sys.argv = [module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, rest = args[0], args[1:]
        if args[0].startswith("-"):
            _usage(f"unknown option {args[0]!r}; accepted: --mode, -m")
        _install(mode)
        sys.argv = [script, *rest]
        # As `python script.py`: sys.path[0] is the script's directory.
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")


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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
