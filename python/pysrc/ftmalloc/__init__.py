"""ftmalloc inside CPython: ftmalloc's heap as the allocator of the MEM and OBJ domains.

``install(mode)`` wraps the running interpreter's ``PyMem_*`` and ``PyObject_*`` allocators
(``PyMem_SetAllocator``): requests of 1 to 512 bytes go to an ftmalloc heap, larger ones (and
size 0) to the allocator that was there; pointers the heap does not own (objects made before
``install``, large blocks) go back to that allocator. The raw domain is left as it is.

Modes: ``"gil"`` runs pymalloc's algorithms with no lock of their own, serialised by the GIL
(as ``obmalloc.c`` is; this assumes one GIL per process, so sub-interpreters with a GIL of
their own, 3.12's ``own_gil``, need "ft"); ``"ft"`` runs the free-threaded heap (thread
caches, no lock).

On a free-threaded build (3.13t, ``Py_GIL_DISABLED``) only the MEM domain (``PyMem_Malloc``)
is served, by the "ft" heap; the OBJ domain stays mimalloc's (its GC finds objects by walking
mimalloc's heaps), and ``install(domains=["mem", "obj"])`` is refused there, saying why.
``domains()`` names what is served.

There is no uninstall: blocks of the heap must never reach the wrapped allocator.
``install`` refuses a second call, an unknown mode, a bad ``FTMALLOC_DEBUG``,
``FTMALLOC_STATS`` or ``FTMALLOC_DECAY_MS``, an ``FTMALLOC_MODE`` that names another mode, and
a running tracemalloc, and changes nothing when it raises. Under CPython's debug hooks
(``PYTHONMALLOC=debug``, ``-X dev``) the heap serves underneath them, so their checks apply
to its blocks. Once installed, ``sys._debugmallocstats()`` prints the heap's table first, where
pymalloc's would be.

Start-up without editing a program: ``python -m ftmalloc run [--mode M] script.py args...``
``... run [--mode M] -m module args...`` or ``... run [--mode M] -c code args...``, or ``FTMALLOC_PYTHON=gil|ft`` in the environment
(read at start-up by the ``ftmalloc-startup.pth`` hook, so child interpreters get it too).
"""

import os as _os
import sys

from ftmalloc import _ftmalloc

__all__ = [
    "MODES", "ENV", "install", "mode", "domains", "debug", "under_debug_hooks", "owns", "stats",
    "print_stats",
]

#: The accepted modes.
MODES = ("gil", "ft")
#: The environment variable the start-up hook reads.
ENV = "FTMALLOC_PYTHON"


def install(mode="ft", domains=None):
    """Make ftmalloc the allocator of the MEM and OBJ domains, in ``mode`` ("gil" or "ft").

    ``domains``: the domains to serve, a list of "mem" (PyMem_Malloc) and "obj"
    (PyObject_Malloc); by default both, and "mem" only on a free-threaded build, where "obj"
    is refused (the free-threaded GC walks mimalloc's heaps to find objects) and so is an
    install while other threads run. ``domains()`` says what was installed.

    Reads FTMALLOC_DEBUG (debug mode), FTMALLOC_STATS (statistics on stderr at exit),
    FTMALLOC_DECAY_MS (free-threaded mode's page decay) and FTMALLOC_MODE (must agree with
    ``mode`` when set). Raises ValueError for an unknown mode, a bad value of one of those or a
    contradicting FTMALLOC_MODE, RuntimeError when ftmalloc is already installed, tracemalloc is
    tracing, or CPython's debug hooks are on but wrapped by another allocator; nothing is
    changed then.
    """
    if not isinstance(mode, str):
        raise TypeError(
            f"ftmalloc: mode must be a str, not {type(mode).__name__} ({mode!r}); "
            f"accepted values: {', '.join(repr(m) for m in MODES)}"
        )
    if domains is not None:
        if isinstance(domains, str) or not all(isinstance(d, str) for d in domains):
            raise TypeError(
                f"ftmalloc: domains must be a list of str, not {domains!r}; "
                "accepted values: 'mem', 'obj'"
            )
        domains = list(domains)
    _ftmalloc.install(mode, domains)
    _wrap_debugmallocstats()


def _wrap_debugmallocstats():
    """``sys._debugmallocstats()`` prints pymalloc's table only while pymalloc serves the
    object domain; once ftmalloc does, the heap's table takes its place (to the C stderr,
    file descriptor 2, as CPython writes), followed by CPython's own rows (free lists)."""
    original = getattr(sys, "_debugmallocstats", None)
    if original is None:
        return

    def _debugmallocstats():
        text = _ftmalloc.stats_text()
        if text is not None:
            sys.stderr.flush()
            data = (text + "\n").encode()
            while data:
                data = data[_os.write(2, data):]
        original()

    _debugmallocstats.__doc__ = original.__doc__
    sys._debugmallocstats = _debugmallocstats


def mode():
    """The installed mode ("gil" or "ft"), or None when ftmalloc is not installed."""
    return _ftmalloc.mode()


def domains():
    """The domains the installed heap serves: ["mem", "obj"], or ["mem"] on a free-threaded
    build (the OBJ domain stays mimalloc's there); None before install."""
    return _ftmalloc.domains()


def debug():
    """Whether the installed heap runs in debug mode (FTMALLOC_DEBUG=1); None before install."""
    return _ftmalloc.debug()


def under_debug_hooks():
    """Whether the installed heap serves underneath CPython's debug hooks (PYTHONMALLOC=debug,
    -X dev, a debug build), so their checks apply to its blocks; None before install."""
    return _ftmalloc.under_debug_hooks()


def owns(address):
    """Whether ``address`` (an int, e.g. ``id(obj)``) lies inside the installed heap's arenas:
    True for objects the heap serves, False for others and before install."""
    return _ftmalloc.owns(address)


def stats():
    """The installed heap's statistics as a dict, or None when ftmalloc is not installed.

    Keys: the geometry (pool_size, arena_size, pool_overhead, small_limit, num_classes),
    ``classes`` (one dict per size class in use: class, size, pools, blocks_in_use,
    blocks_available), the arena counters (arenas_allocated_total, arenas_reclaimed,
    arenas_highwater, arenas_current), derived counts (pools_in_use, blocks_in_use, the bytes_*
    rows of sys._debugmallocstats(), total, mapped_bytes) and the free-threaded counts
    (thread_caches, cached_pools, abandoned_pools, max_cached_pools, dirty_pools,
    pools_purged; 0 in GIL mode).
    """
    return _ftmalloc.stats()


def print_stats(file=None):
    """Print the installed heap's statistics as sys._debugmallocstats() prints pymalloc's
    (to sys.stderr by default). Raises RuntimeError when ftmalloc is not installed."""
    text = _ftmalloc.stats_text()
    if text is None:
        raise RuntimeError("ftmalloc is not installed; call ftmalloc.install() first")
    print(text, end="", file=sys.stderr if file is None else file)
