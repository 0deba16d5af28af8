"""The start-up hook: installs ftmalloc in the mode FTMALLOC_PYTHON names.

Imported by ``ftmalloc-startup.pth`` (site-packages) when FTMALLOC_PYTHON is set and not
empty, so every interpreter started with it (regrtest workers, multiprocessing children,
subprocesses) runs on ftmalloc. A bad value, or an install that fails, stops the interpreter
at start-up with a message on stderr and exit status 2: a run believed to be on ftmalloc must
not silently run on pymalloc. (``python -S`` skips site-packages' .pth files, so the hook;
``-I`` does not.)

tracemalloc started at start-up (``PYTHONTRACEMALLOC=N``, ``-X tracemalloc=N``) is already
tracing when the hook runs, and ftmalloc cannot install under it: the hook stops it, installs,
and starts it again with the same frame limit (what was allocated before is no longer traced).
"""

import os
import sys

import ftmalloc


def _fail(message):
    sys.stderr.write(f"ftmalloc: {message}\n")
    sys.stderr.flush()
    # An exception here would be printed and ignored by site.py; exit instead.
    os._exit(2)


def _start():
    value = os.environ.get(ftmalloc.ENV, "")
    if not value:
        return
    if value not in ftmalloc.MODES:
        _fail(
            f"{ftmalloc.ENV}={value!r} is not accepted; accepted values: "
            f"{', '.join(ftmalloc.MODES)} (or unset or empty: off)"
        )
    if ftmalloc.mode() is not None:
        return
    import _tracemalloc

    frames = _tracemalloc.get_traceback_limit() if _tracemalloc.is_tracing() else 0
    if frames:
        _tracemalloc.stop()
    try:
        ftmalloc.install(value)
    except Exception as e:  # noqa: BLE001 - any failure stops start-up, with its message
        _fail(f"{ftmalloc.ENV}={value}: cannot install: {e}")
    if frames:
        _tracemalloc.start(frames)


_start()
