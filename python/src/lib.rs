//! `ftmalloc._ftmalloc`: ftmalloc as CPython's allocator for the `PYMEM_DOMAIN_MEM` and
//! `PYMEM_DOMAIN_OBJ` domains, installed with `PyMem_SetAllocator` into a running interpreter.
//!
//! # What `install` wraps
//! The C-API's rule for an allocator set after start-up is that it wraps the one it replaces:
//! memory handed out before stays the old allocator's. So each domain gets a `Wrapped`
//! context holding the heap and the domain's previous allocator, and four functions that route
//! by size and by owner:
//! - `malloc`/`calloc` of 1 to `pooled_limit()` bytes (512, less debug mode's
//!   overhead): the heap; of 0 bytes or more than that: the wrapped allocator;
//! - `free` of a pointer the heap owns (its arena map answers, `free_owned`): the heap;
//!   any other pointer: the wrapped allocator, so objects made before `install` stay valid;
//! - `realloc` of a foreign pointer: the wrapped allocator's `realloc`, whatever the size; of
//!   one of ours to a pooled size: the heap's `realloc`; of one of ours to 0 bytes or above
//!   the pooled limit: the wrapped `malloc`, a copy, then the heap's `free`.
//!
//! The raw domain is left alone (it is called without the GIL, and CPython's own start-up
//! memory lives there).
//!
//! # Free-threaded CPython (3.13t, `Py_GIL_DISABLED`)
//! There `install` wraps the MEM domain only and leaves the OBJ domain to mimalloc, and refuses
//! to wrap it when asked (`domains=["obj"]`), naming the domain, the build and why: the
//! free-threaded GC finds objects by walking mimalloc's heaps (gc_free_threading.c:245-292),
//! so objects ftmalloc served would never be collected. `domains()` says what is served. The
//! MEM domain is served by the free-threaded heap, called in parallel by threads with no GIL.
//!
//! # Under CPython's debug hooks
//! With `PYTHONMALLOC=debug` (or `-X dev`, or a debug build) the domains' allocators are the
//! debug hooks, which wrap the real ones. `install` does not wrap the hooks (requests it served
//! would skip their checks): it wraps the allocators underneath them and puts the hooks back on
//! top with `PyMem_SetupDebugHooks()` (see `Hooks`), or refuses, naming the setting, where
//! another allocator wraps the hooks.
//!
//! # The environment
//! `install` reads `FTMALLOC_DEBUG`, `FTMALLOC_STATS` (statistics on stderr at exit) and
//! `FTMALLOC_DECAY_MS` for the package's heap, and refuses an `FTMALLOC_MODE` that names
//! another mode than the one asked; a bad value is refused naming it and the accepted ones.
//!
//! # No uninstall
//! Once installed, blocks of the heap live in every corner of the interpreter. Putting the
//! previous allocators back would send those blocks to an allocator that does not own them, so
//! there is no uninstall: the heap and the two contexts are leaked, and live as long as the
//! process.
//!
//! # The two modes
//! `"ft"`: a free-threaded heap (`Mode::FreeThreaded`), as it runs anywhere else. `"gil"`: a
//! GIL-mode heap serialised by its caller ([`SerializedAllocator`]): the MEM and
//! OBJ domains are called only with the GIL held (CPython 3.11 and later, GIL builds), so the
//! GIL is the heap's lock, as it is pymalloc's. Statistics are read with the GIL held too.
//! This assumes one GIL per process: sub-interpreters with a GIL of their own (CPython 3.12's
//! `own_gil`) would call the heap under different locks, so such programs need `"ft"`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use ftmalloc::{Allocator, Config, Mode, SerializedAllocator, Stats};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi::{PyMemAllocatorDomain, PyMemAllocatorEx, PyMem_GetAllocator, PyMem_SetAllocator};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::alloc::Layout;
use std::ffi::c_void;
use std::sync::OnceLock;

/// Alignment of every block handed to CPython (pymalloc's, on 64-bit).
const ALIGN: usize = 16;

/// The functions of a `PyMemAllocatorEx`.
type MallocFn = extern "C" fn(*mut c_void, usize) -> *mut c_void;
type CallocFn = extern "C" fn(*mut c_void, usize, usize) -> *mut c_void;
type ReallocFn = extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void;
type FreeFn = extern "C" fn(*mut c_void, *mut c_void);

/// What the four functions need of a heap: [`Allocator`] (`"ft"`) or [`SerializedAllocator`]
/// (`"gil"`, serialised by the GIL). Each method is the type's own.
trait Backing: Send + Sync + 'static {
    /// See `Allocator::owns`.
    fn owns(&self, ptr: *const u8) -> bool;
    /// See `Allocator::pooled_limit`.
    fn pooled_limit(&self) -> usize;
    /// See `Allocator::alloc`.
    ///
    /// # Safety
    /// As the type's own method; for a `SerializedAllocator`, with the GIL held.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8;
    /// See `Allocator::alloc_zeroed`.
    ///
    /// # Safety
    /// As `alloc`.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8;
    /// See `Allocator::realloc`.
    ///
    /// # Safety
    /// As `alloc`.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8;
    /// See `Allocator::usable_size`.
    ///
    /// # Safety
    /// As `alloc`.
    unsafe fn usable_size(&self, ptr: *const u8) -> usize;
    /// See `Allocator::free`.
    ///
    /// # Safety
    /// As `alloc`.
    unsafe fn free(&self, ptr: *mut u8);
    /// See `Allocator::free_owned`.
    ///
    /// # Safety
    /// As `alloc`.
    unsafe fn free_owned(&self, ptr: *mut u8) -> bool;
    /// See `Allocator::stats`.
    ///
    /// # Safety
    /// As `alloc`.
    unsafe fn stats(&self) -> Stats;
}

/// Implements [`Backing`] for a heap type by forwarding to its own methods; `$stats` reads
/// its statistics.
macro_rules! backing {
    ($t:ty, |$h:ident| $stats:expr) => {
        impl Backing for $t {
            #[inline(always)]
            fn owns(&self, ptr: *const u8) -> bool {
                <$t>::owns(self, ptr)
            }
            #[inline(always)]
            fn pooled_limit(&self) -> usize {
                <$t>::pooled_limit(self)
            }
            #[inline(always)]
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                // SAFETY: forwarded contract.
                unsafe { <$t>::alloc(self, layout) }
            }
            #[inline(always)]
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                // SAFETY: forwarded contract.
                unsafe { <$t>::alloc_zeroed(self, layout) }
            }
            #[inline(always)]
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                // SAFETY: forwarded contract.
                unsafe { <$t>::realloc(self, ptr, layout, new_size) }
            }
            #[inline(always)]
            unsafe fn usable_size(&self, ptr: *const u8) -> usize {
                // SAFETY: forwarded contract.
                unsafe { <$t>::usable_size(self, ptr) }
            }
            #[inline(always)]
            unsafe fn free(&self, ptr: *mut u8) {
                // SAFETY: forwarded contract.
                unsafe { <$t>::free(self, ptr) }
            }
            #[inline(always)]
            unsafe fn free_owned(&self, ptr: *mut u8) -> bool {
                // SAFETY: forwarded contract.
                unsafe { <$t>::free_owned(self, ptr) }
            }
            unsafe fn stats(&self) -> Stats {
                let $h = self;
                $stats
            }
        }
    };
}

backing!(Allocator, |h| h.stats());
// SAFETY: (in `stats`) the trait's contract: the GIL is held.
backing!(SerializedAllocator, |h| unsafe { h.stats() });

/// One domain's context: the heap and the allocator it wraps.
struct Wrapped<H: Backing> {
    heap: &'static H,
    /// Requests of 1 to `limit` bytes go to the heap (`pooled_limit`).
    limit: usize,
    /// The wrapped allocator's context and functions (all present: checked by `install`).
    ctx: *mut c_void,
    malloc: MallocFn,
    calloc: CallocFn,
    realloc: ReallocFn,
    free: FreeFn,
}

/// What `install` set up, for `mode` and `stats`.
struct Installed {
    heap: &'static dyn Backing,
    mode: &'static str,
    debug: bool,
    /// Whether the heap serves underneath CPython's debug hooks.
    under_debug_hooks: bool,
    /// The domains the heap serves.
    domains: Domains,
}

/// Which of the MEM and OBJ domains `install` wraps (at least one).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Domains {
    /// `PYMEM_DOMAIN_MEM` (`PyMem_Malloc`).
    mem: bool,
    /// `PYMEM_DOMAIN_OBJ` (`PyObject_Malloc`).
    obj: bool,
}

impl Domains {
    /// The accepted names, as `install` and `domains()` spell them.
    const ACCEPTED: &'static str = "\"mem\" (PyMem_Malloc), \"obj\" (PyObject_Malloc)";

    /// The names of the domains served, in order.
    fn names(self) -> Vec<&'static str> {
        [("mem", self.mem), ("obj", self.obj)]
            .into_iter()
            .filter_map(|(n, on)| on.then_some(n))
            .collect()
    }
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Whether `size` bytes go to the heap.
#[inline(always)]
fn pooled<H: Backing>(w: &Wrapped<H>, size: usize) -> bool {
    size.wrapping_sub(1) < w.limit
}

/// The layout of a pooled request of `size` bytes.
#[inline(always)]
fn layout(size: usize) -> Layout {
    // SAFETY: ALIGN is a power of two and `size` (at most the pooled limit, 512) is far from
    // overflowing when rounded up to it.
    unsafe { Layout::from_size_align_unchecked(size, ALIGN) }
}

/// The context CPython passes back to the four functions.
///
/// # Safety
/// `ctx` is the `ctx` of an allocator `install` set: a leaked, never freed `Wrapped`.
#[inline(always)]
unsafe fn wrapped<'a, H: Backing>(ctx: *mut c_void) -> &'a Wrapped<H> {
    // SAFETY: the contract.
    unsafe { &*(ctx as *const Wrapped<H>) }
}

/// The domains' `malloc`: pooled sizes from the heap, others from the wrapped allocator.
extern "C" fn ft_malloc<H: Backing>(ctx: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: CPython passes the context `install` set with this function.
    let w = unsafe { wrapped::<H>(ctx) };
    if pooled(w, size) {
        // SAFETY: a valid layout; a GIL-mode heap exists only on a GIL build, where CPython
        // calls this domain with the GIL held, which serialises it (`install` built it for
        // that); the free-threaded heap (any build) may be called in parallel.
        unsafe { w.heap.alloc(layout(size)).cast() }
    } else {
        (w.malloc)(w.ctx, size)
    }
}

/// The domains' `calloc`: as `ft_malloc`, for `nelem * elsize` zeroed bytes.
extern "C" fn ft_calloc<H: Backing>(ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    // SAFETY: as in ft_malloc.
    let w = unsafe { wrapped::<H>(ctx) };
    match nelem.checked_mul(elsize) {
        // SAFETY: as in ft_malloc.
        Some(size) if pooled(w, size) => unsafe { w.heap.alloc_zeroed(layout(size)).cast() },
        // Too large, zero or overflowing: the wrapped allocator decides.
        _ => (w.calloc)(w.ctx, nelem, elsize),
    }
}

/// The domains' `realloc`: by owner, then by size (see the module docs).
extern "C" fn ft_realloc<H: Backing>(
    ctx: *mut c_void,
    ptr: *mut c_void,
    size: usize,
) -> *mut c_void {
    // SAFETY: as in ft_malloc.
    let w = unsafe { wrapped::<H>(ctx) };
    if ptr.is_null() {
        return ft_malloc::<H>(ctx, size);
    }
    if !w.heap.owns(ptr.cast()) {
        // Made before install, or too large for the heap: the wrapped allocator's.
        return (w.realloc)(w.ctx, ptr, size);
    }
    if pooled(w, size) {
        // SAFETY: `ptr` is a live block of the heap (CPython passes live pointers of this
        // domain, and the arena map says ours); `size` is not zero; serialised as in ft_malloc.
        return unsafe { w.heap.realloc(ptr.cast(), layout(1), size).cast() };
    }
    // Ours, growing past the pooled limit (or shrinking to 0): the wrapped allocator takes it.
    // SAFETY: as above (in debug mode this checks the block, as free would).
    let old = unsafe { w.heap.usable_size(ptr.cast()) };
    let new = (w.malloc)(w.ctx, size);
    if new.is_null() {
        return new;
    }
    // SAFETY: `old` bytes are readable at `ptr`, `new` has room for `size`; distinct blocks.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), new.cast::<u8>(), old.min(size));
        w.heap.free(ptr.cast());
    }
    new
}

/// The domains' `free`: the heap's blocks to the heap, any other pointer to the wrapped
/// allocator.
extern "C" fn ft_free<H: Backing>(ctx: *mut c_void, ptr: *mut c_void) {
    // SAFETY: as in ft_malloc.
    let w = unsafe { wrapped::<H>(ctx) };
    // SAFETY: a pointer of this domain inside the heap's arenas is one the heap handed out (a
    // bad one aborts with a message naming it); serialised as in ft_malloc.
    if !unsafe { w.heap.free_owned(ptr.cast()) } {
        (w.free)(w.ctx, ptr)
    }
}

/// The allocator of `domain` now.
fn current(domain: PyMemAllocatorDomain) -> PyMemAllocatorEx {
    let mut a = PyMemAllocatorEx {
        ctx: std::ptr::null_mut(),
        malloc: None,
        calloc: None,
        realloc: None,
        free: None,
    };
    // SAFETY: `a` is a valid PyMemAllocatorEx to fill; the GIL is held (our callers are
    // Python functions).
    unsafe { PyMem_GetAllocator(domain, &mut a) };
    a
}

/// A context for `domain`'s current allocator `a`, or why it cannot be wrapped.
fn wrap<H: Backing>(
    name: &str,
    a: &PyMemAllocatorEx,
    heap: &'static H,
) -> Result<Wrapped<H>, String> {
    let (Some(malloc), Some(calloc), Some(realloc), Some(free)) =
        (a.malloc, a.calloc, a.realloc, a.free)
    else {
        return Err(format!(
            "the {name} domain's current allocator lacks a function; ftmalloc wraps only a \
             complete allocator"
        ));
    };
    if malloc as usize == ft_malloc::<Allocator> as MallocFn as usize
        || malloc as usize == ft_malloc::<SerializedAllocator> as MallocFn as usize
    {
        return Err(format!(
            "the {name} domain is already served by ftmalloc (another copy of the extension?)"
        ));
    }
    Ok(Wrapped {
        heap,
        limit: heap.pooled_limit(),
        ctx: a.ctx,
        malloc,
        calloc,
        realloc,
        free,
    })
}

/// A variable of the environment: `None` when unset or empty; an error naming the value and
/// `accepted` when it is not valid Unicode.
fn env_value(name: &str, accepted: &str) -> PyResult<Option<String>> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => match v.into_string() {
            Ok(s) => Ok(Some(s)),
            Err(v) => Err(not_accepted(name, &v.to_string_lossy(), accepted)),
        },
    }
}

/// The error for `name=value`, naming what is accepted.
fn not_accepted(name: &str, value: &str, accepted: &str) -> PyErr {
    PyValueError::new_err(format!(
        "{name}={value:?} is not accepted; accepted values: {accepted}"
    ))
}

/// A flag (`FTMALLOC_DEBUG`, `FTMALLOC_STATS`): `1` on; `0`, empty or unset off; anything
/// else refused.
fn env_flag(name: &str) -> PyResult<bool> {
    const ACCEPTED: &str = "1 (on), 0 or empty (off)";
    match env_value(name, ACCEPTED)?.as_deref() {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(v) => Err(not_accepted(name, v, ACCEPTED)),
    }
}

/// `FTMALLOC_DECAY_MS`: decimal digits, 0 to `Config::MAX_DECAY_MS`; unset or empty means
/// `Config::DEFAULT_DECAY_MS` (the process heap's rule).
fn env_decay_ms() -> PyResult<u64> {
    const NAME: &str = "FTMALLOC_DECAY_MS";
    const ACCEPTED: &str = "an integer from 0 to 3600000 (milliseconds), or empty (100)";
    let Some(v) = env_value(NAME, ACCEPTED)? else {
        return Ok(Config::DEFAULT_DECAY_MS);
    };
    match v.parse::<u64>() {
        Ok(n)
            if v.len() <= 18
                && v.bytes().all(|b| b.is_ascii_digit())
                && n <= Config::MAX_DECAY_MS =>
        {
            Ok(n)
        }
        _ => Err(not_accepted(NAME, &v, ACCEPTED)),
    }
}

/// `FTMALLOC_MODE` against the mode `install` was asked for: unset or empty says nothing; a
/// mode that differs is a contradiction, refused naming both; anything else is refused.
fn env_mode_agrees(asked: &str) -> PyResult<()> {
    const NAME: &str = "FTMALLOC_MODE";
    let accepted = Mode::NAMES.join(", ");
    match env_value(NAME, &accepted)? {
        None => Ok(()),
        Some(v) if v == asked => Ok(()),
        Some(v) if Mode::NAMES.contains(&v.as_str()) => Err(PyValueError::new_err(format!(
            "{NAME}={v:?} contradicts the mode asked of install, {asked:?} (FTMALLOC_PYTHON \
             or --mode); unset {NAME} or make the two agree"
        ))),
        Some(v) => Err(not_accepted(NAME, &v, &accepted)),
    }
}

/// `install`'s `domains`: a non-empty list of `"mem"` and `"obj"`, each at most once.
fn parse_domains(names: &[String]) -> PyResult<Domains> {
    let mut d = Domains {
        mem: false,
        obj: false,
    };
    for name in names {
        let slot = match name.as_str() {
            "mem" => &mut d.mem,
            "obj" => &mut d.obj,
            other => {
                return Err(PyValueError::new_err(format!(
                    "ftmalloc: domain {other:?} is not accepted; accepted values: {}",
                    Domains::ACCEPTED
                )))
            }
        };
        if std::mem::replace(slot, true) {
            return Err(PyValueError::new_err(format!(
                "ftmalloc: domain {name:?} is named twice in domains={names:?}"
            )));
        }
    }
    if !(d.mem || d.obj) {
        return Err(PyValueError::new_err(format!(
            "ftmalloc: domains is empty; name at least one of {}",
            Domains::ACCEPTED
        )));
    }
    Ok(d)
}

/// On a free-threaded build: refuses while other threads may call the domains.
/// `PyMem_SetAllocator` copies the new allocator over the old with plain stores and no
/// stop-the-world (3.13.15 obmalloc.c:912-917), and nothing serialises the callers, so a
/// thread could call a half-replaced allocator (the new `malloc` with the old, null context).
/// Counted: threads started through `_thread` (and so `threading`) in this interpreter, and
/// other interpreters (`_interpreters`, when a program imported it). pyo3 extensions load in
/// the main interpreter only, so `install` runs there.
fn others_running(py: Python<'_>) -> PyResult<()> {
    const WHY: &str = "PyMem_SetAllocator swaps a domain's functions without stopping other \
        threads, and without a GIL they could call a half-replaced allocator; install before \
        starting threads (FTMALLOC_PYTHON installs at start-up)";
    let threads: usize = PyModule::import(py, "_thread")?
        .call_method0("_count")?
        .extract()?;
    if threads > 0 {
        return Err(PyRuntimeError::new_err(format!(
            "ftmalloc cannot install on a free-threaded build of CPython while {threads} other \
             thread(s) run: {WHY}"
        )));
    }
    let modules = PyModule::import(py, "sys")?.getattr("modules")?;
    for name in ["_interpreters", "_xxsubinterpreters"] {
        if let Some(m) = modules.get_item(name).ok().filter(|m| !m.is_none()) {
            let n = m.call_method0("list_all")?.len()?;
            if n > 1 {
                return Err(PyRuntimeError::new_err(format!(
                    "ftmalloc cannot install on a free-threaded build of CPython while {n} \
                     interpreters exist: {WHY}"
                )));
            }
        }
    }
    Ok(())
}

/// What the environment asks of the package's heap (read by `install`).
struct Settings {
    /// `FTMALLOC_DEBUG`.
    debug: bool,
    /// `FTMALLOC_STATS`: print the heap's statistics to stderr at exit.
    stats_at_exit: bool,
    /// `FTMALLOC_DECAY_MS`.
    decay_ms: u64,
}

/// Makes ftmalloc the allocator of the MEM and OBJ domains of this process (or of the
/// `domains` named: `"mem"`, `"obj"`), in `mode` (`"gil"` or `"ft"`).
///
/// On a free-threaded build (`Py_GIL_DISABLED`) only the MEM domain is served (the default
/// there), and asking for the OBJ domain is refused: the free-threaded GC finds objects by
/// walking mimalloc's heaps, so objects ftmalloc served would be invisible to it (issue 22).
/// The MEM domain needs no grace period from the allocator there: memory that lock-free
/// readers may still read (list item arrays, dict keys and values) is freed through
/// `_PyMem_FreeDelayed`, which calls `PyMem_Free` only after a QSBR grace period
/// (3.13.15: listobject.c:72, dictobject.c:854, 905, obmalloc.c:1130-1245), and mimalloc's own
/// MEM heap has no `page_use_qsbr` (pystate.c:3111-3115). Without a GIL the domain is called
/// in parallel, which the free-threaded heap (`"ft"`, thread caches) serves; `"gil"` is
/// refused there. `PyMem_SetAllocator` swaps a domain's functions with plain stores, so on a
/// free-threaded build `install` is also refused while other threads run. Once per process; refused while tracemalloc traces (its hooks would be
/// wrapped, and stopping it would put back allocators that do not own our blocks). Reads
/// `FTMALLOC_DEBUG`, `FTMALLOC_STATS`, `FTMALLOC_DECAY_MS` and `FTMALLOC_MODE` (which must
/// agree with `mode` when set). Under CPython's debug hooks the heap serves underneath them
/// (see [`Hooks`]). Nothing is changed when it raises.
#[pyfunction]
#[pyo3(signature = (mode, domains = None))]
fn install(py: Python<'_>, mode: &str, domains: Option<Vec<String>>) -> PyResult<()> {
    let (mode, mode_name) = match mode {
        "gil" => (Mode::Gil, "gil"),
        "ft" => (Mode::FreeThreaded, "ft"),
        other => {
            return Err(PyValueError::new_err(format!(
                "ftmalloc: mode {other:?} is not accepted; accepted values: \"gil\", \"ft\""
            )))
        }
    };
    if let Some(i) = INSTALLED.get() {
        return Err(PyRuntimeError::new_err(format!(
            "ftmalloc is already installed in this process (mode {:?}); it can be installed \
             once, and never uninstalled",
            i.mode
        )));
    }
    // `sys.abiflags` has a `t` on a free-threaded build (Py_GIL_DISABLED); read from `sys`,
    // which is always loaded, so GIL mode's start-up imports nothing that ft mode's does not.
    let sys = PyModule::import(py, "sys")?;
    let free_threaded = sys.getattr("abiflags")?.extract::<String>()?.contains('t');
    if mode == Mode::Gil && free_threaded {
        // A free-threaded build calls these domains without a GIL: nothing would serialise a
        // GIL-mode heap.
        return Err(PyRuntimeError::new_err(
            "ftmalloc: mode \"gil\" needs a GIL build of CPython (this one is free-threaded, \
             Py_GIL_DISABLED); accepted here: \"ft\"",
        ));
    }
    let domains = match domains {
        None => Domains {
            mem: true,
            obj: !free_threaded,
        },
        Some(names) => parse_domains(&names)?,
    };
    if domains.obj && free_threaded {
        let version = sys.getattr("version")?.extract::<String>()?;
        let version = version.split_whitespace().next().unwrap_or("?").to_string();
        return Err(PyRuntimeError::new_err(format!(
            "ftmalloc: the OBJ domain (PyObject_Malloc) cannot be served on this free-threaded \
             build of CPython ({version}, Py_GIL_DISABLED): its garbage collector finds objects \
             by walking mimalloc's heaps, so objects ftmalloc served would be invisible to it \
             (their cycles never collected) and lock-free readers need their memory kept by \
             size class; ftmalloc serves the MEM domain here and leaves the OBJ domain to \
             mimalloc (install(mode) or domains=[\"mem\"]; issue 22 part 2 lifts this)"
        )));
    }
    if free_threaded {
        others_running(py)?;
    }
    env_mode_agrees(mode_name)?;
    let settings = Settings {
        debug: env_flag("FTMALLOC_DEBUG")?,
        stats_at_exit: env_flag("FTMALLOC_STATS")?,
        decay_ms: env_decay_ms()?,
    };
    // `_tracemalloc` (built in) rather than `tracemalloc`, which imports some thirty modules
    // (pickle's C accelerator among them) into every interpreter the start-up hook serves.
    let tracing = PyModule::import(py, "_tracemalloc")?
        .call_method0("is_tracing")?
        .is_truthy()?;
    if tracing {
        return Err(PyRuntimeError::new_err(
            "ftmalloc cannot be installed while tracemalloc is tracing (tracemalloc.stop() \
             would put back allocators that do not own ftmalloc's blocks); install ftmalloc \
             first, then start tracemalloc",
        ));
    }
    let hooks = Hooks::find(&sys)?;
    let config = Config::PYMALLOC
        .with_debug(settings.debug)
        .with_decay_ms(settings.decay_ms);
    let refused = |e: ftmalloc::ConfigError| PyRuntimeError::new_err(e.to_string());
    match mode {
        // SAFETY: the heap serves only the MEM and OBJ domains, which CPython calls with the
        // GIL held (the C-API's rule since 3.6; CPython 3.11 and later, GIL builds, checked
        // above; the debug hooks check it); `stats` reads it with the GIL held, and the exit
        // report after the interpreter is finalised, when no thread holds the GIL any more;
        // it is never dropped. The GIL serialises every call.
        Mode::Gil => install_heap(
            unsafe { SerializedAllocator::new(config) }.map_err(refused)?,
            mode_name,
            &settings,
            hooks,
            domains,
        ),
        Mode::FreeThreaded => install_heap(
            Allocator::with_config(Mode::FreeThreaded, config).map_err(refused)?,
            mode_name,
            &settings,
            hooks,
            domains,
        ),
    }
}

/// CPython's debug hooks' context for one domain (`debug_alloc_api_t` in `Objects/obmalloc.c`,
/// the same from 3.6 to 3.13): the domain's API id (`'r'`, `'m'`, `'o'`) and the allocator the
/// hooks wrap. The three contexts are consecutive in one static struct (`_PyMem_Debug`).
#[repr(C)]
struct DebugApi {
    api_id: std::ffi::c_char,
    alloc: PyMemAllocatorEx,
}

/// Where CPython's debug hooks (`PYTHONMALLOC=debug`, `-X dev`, a debug build) stand when
/// `install` runs.
///
/// The hooks are one wrapper per domain, whose context ([`DebugApi`]) holds the allocator
/// underneath. `PyMem_SetupDebugHooks()` wraps a domain again unless the domain's allocator is
/// already the hooks, and stores the domain's current allocator in that context. So ftmalloc
/// serves underneath the hooks: it wraps the allocator the hooks wrapped (read from their
/// context), becomes the MEM and OBJ domains' allocator, and `PyMem_SetupDebugHooks()` puts the
/// hooks back on top of it (the raw domain, still hooked, is left alone). Every request then
/// passes the hooks' checks (guard bytes, API ids, the GIL) before it reaches ftmalloc, and a
/// block made before `install` keeps its header: the hooks strip it, ftmalloc does not own what
/// is left, and the allocator underneath frees it.
enum Hooks {
    /// No debug hooks: ftmalloc wraps the domains' allocators as they are.
    Off,
    /// The hooks are the MEM, OBJ and raw domains' allocators: ftmalloc goes underneath.
    On {
        /// The MEM and OBJ domains' hook contexts.
        mem: *mut DebugApi,
        obj: *mut DebugApi,
    },
}

impl Hooks {
    /// Finds the debug hooks on the domains. Refuses (naming the setting) when the
    /// interpreter runs with the hooks but they are not the domains' allocators as CPython set
    /// them (another allocator wraps them): ftmalloc would then bypass their checks.
    fn find(sys: &Bound<'_, PyModule>) -> PyResult<Hooks> {
        let (raw, mem, obj) = (
            current(PyMemAllocatorDomain::PYMEM_DOMAIN_RAW),
            current(PyMemAllocatorDomain::PYMEM_DOMAIN_MEM),
            current(PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ),
        );
        let size = std::mem::size_of::<DebugApi>();
        // The hooks' shape: one `malloc` for MEM and OBJ, and the three contexts consecutive
        // in `_PyMem_Debug` (raw, mem, obj). No other allocator CPython sets has a context.
        let shaped = !mem.ctx.is_null()
            && mem.malloc.map(|f| f as usize) == obj.malloc.map(|f| f as usize)
            && raw.ctx as usize == (mem.ctx as usize).wrapping_sub(size)
            && obj.ctx as usize == (mem.ctx as usize).wrapping_add(size);
        if shaped {
            let (r, m, o) = (
                raw.ctx.cast::<DebugApi>(),
                mem.ctx.cast::<DebugApi>(),
                obj.ctx.cast::<DebugApi>(),
            );
            // SAFETY: three consecutive contexts of the right size, of which the MEM and OBJ
            // domains share their functions, are `_PyMem_Debug`'s (a static of libpython);
            // reading them with the GIL held races with no writer (only
            // `PyMem_SetupDebugHooks` writes them, with the GIL held).
            let ids = unsafe { ((*r).api_id as u8, (*m).api_id as u8, (*o).api_id as u8) };
            if ids == (b'r', b'm', b'o') {
                return Ok(Hooks::On { mem: m, obj: o });
            }
        }
        // Not the hooks on top: does the interpreter run with them (somewhere below)?
        let flags = sys.getattr("flags")?;
        let dev_mode = flags.getattr("dev_mode")?.is_truthy()?;
        let ignore_env = flags.getattr("ignore_environment")?.is_truthy()?;
        let pythonmalloc = std::env::var("PYTHONMALLOC").unwrap_or_default();
        let setting = if sys.hasattr("gettotalrefcount")? {
            Some("a debug build of CPython (Py_DEBUG)".to_string())
        } else if !ignore_env && pythonmalloc.ends_with("debug") {
            Some(format!("PYTHONMALLOC={pythonmalloc}"))
        } else if dev_mode && (ignore_env || pythonmalloc.is_empty()) {
            Some("-X dev (or PYTHONDEVMODE=1)".to_string())
        } else {
            None
        };
        match setting {
            None => Ok(Hooks::Off),
            Some(setting) => Err(PyRuntimeError::new_err(format!(
                "ftmalloc cannot install under {setting}: CPython's debug hooks are on, but \
                 another allocator wraps them, so ftmalloc cannot serve underneath them and \
                 would bypass their checks; run without {setting}, or install ftmalloc before \
                 that allocator"
            ))),
        }
    }
}

/// `install`'s second half: wraps both domains' allocators (or, under the debug hooks, the
/// allocators underneath them) around `heap` (leaked), or changes nothing and says why.
fn install_heap<H: Backing>(
    heap: H,
    mode_name: &'static str,
    settings: &Settings,
    hooks: Hooks,
    domains: Domains,
) -> PyResult<()> {
    let (mem, obj) = match hooks {
        Hooks::Off => (
            current(PyMemAllocatorDomain::PYMEM_DOMAIN_MEM),
            current(PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ),
        ),
        // SAFETY: `Hooks::find` found the contexts (see there); the GIL is held.
        Hooks::On { mem, obj } => unsafe { (copy_alloc(&(*mem).alloc), copy_alloc(&(*obj).alloc)) },
    };
    let (mem_before, obj_before) = (copy_alloc(&mem), copy_alloc(&obj));
    // Everything that can fail is checked before anything is leaked or set.
    let heap: &'static H = Box::leak(Box::new(heap));
    let (wmem, wobj) = match (wrap("MEM", &mem, heap), wrap("OBJ", &obj, heap)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            // SAFETY: leaked just above and handed to no one.
            drop(unsafe { Box::from_raw(heap as *const H as *mut H) });
            return Err(PyRuntimeError::new_err(format!(
                "ftmalloc cannot install: {e}"
            )));
        }
    };
    let hooked = matches!(hooks, Hooks::On { .. });
    if INSTALLED
        .set(Installed {
            heap,
            mode: mode_name,
            debug: settings.debug,
            under_debug_hooks: hooked,
            domains,
        })
        .is_err()
    {
        // Unreachable with the GIL held (checked by `install`), kept for the invariant.
        return Err(PyRuntimeError::new_err("ftmalloc is already installed"));
    }
    let top = (
        current(PyMemAllocatorDomain::PYMEM_DOMAIN_MEM),
        current(PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ),
    );
    for (domain, w, on) in [
        (PyMemAllocatorDomain::PYMEM_DOMAIN_MEM, wmem, domains.mem),
        (PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ, wobj, domains.obj),
    ] {
        if !on {
            continue;
        }
        let mut a = PyMemAllocatorEx {
            ctx: Box::into_raw(Box::new(w)).cast(),
            malloc: Some(ft_malloc::<H>),
            calloc: Some(ft_calloc::<H>),
            realloc: Some(ft_realloc::<H>),
            free: Some(ft_free::<H>),
        };
        // SAFETY: a complete allocator whose context is leaked (lives for ever); the GIL is
        // held, so no call of this domain runs while it is replaced (nor until the hooks are
        // back on top, below: nothing here calls into the interpreter). Blocks the previous
        // allocator handed out reach it through the context.
        unsafe { PyMem_SetAllocator(domain, &mut a) };
    }
    if let Hooks::On { mem, obj } = hooks {
        // SAFETY: the GIL is held; the raw domain is still the hooks, so this wraps the MEM
        // and OBJ domains (now ftmalloc) only, storing ftmalloc in their hook contexts.
        unsafe { pyo3::ffi::PyMem_SetupDebugHooks() };
        let now = (
            current(PyMemAllocatorDomain::PYMEM_DOMAIN_MEM),
            current(PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ),
        );
        // SAFETY: as in `Hooks::find`.
        let under = unsafe { ((*mem).alloc.malloc, (*obj).alloc.malloc) };
        let ours = Some(ft_malloc::<H> as MallocFn as usize);
        // A domain not served keeps the allocator the hooks wrapped before.
        let want = |on: bool, before: &PyMemAllocatorEx| {
            if on {
                ours
            } else {
                before.malloc.map(|f| f as usize)
            }
        };
        let (m, o) = (under.0.map(|f| f as usize), under.1.map(|f| f as usize));
        if !(same(&now.0, &top.0)
            && same(&now.1, &top.1)
            && m == want(domains.mem, &mem_before)
            && o == want(domains.obj, &obj_before))
        {
            // The domains are neither as they were nor as intended; blocks of both kinds are
            // live, so no state is safe to go back to.
            eprintln!(
                "ftmalloc: PyMem_SetupDebugHooks() did not put CPython's debug hooks back on top \
                 of ftmalloc (this CPython's obmalloc.c differs from the one ftmalloc knows)"
            );
            std::process::abort();
        }
    }
    if settings.stats_at_exit {
        // SAFETY: a valid extern "C" fn with no arguments.
        if unsafe { atexit(print_stats_at_exit) } != 0 {
            eprintln!("ftmalloc: FTMALLOC_STATS=1: atexit() refused the exit report");
        }
    }
    Ok(())
}

extern "C" {
    /// The C library's `atexit`.
    fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
}

/// `FTMALLOC_STATS=1`: the heap's statistics on stderr when the process exits (after the
/// interpreter is finalised, so no thread holds the GIL or calls the heap).
extern "C" fn print_stats_at_exit() {
    use std::io::Write;
    if let Some(s) = snapshot() {
        let text = format!(
            "ftmalloc: the Python package's heap, pid {}, at exit:\n{s}",
            std::process::id()
        );
        // Nothing to do if stderr is closed.
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

/// A copy of an allocator (the type is not `Clone`).
fn copy_alloc(a: &PyMemAllocatorEx) -> PyMemAllocatorEx {
    PyMemAllocatorEx {
        ctx: a.ctx,
        malloc: a.malloc,
        calloc: a.calloc,
        realloc: a.realloc,
        free: a.free,
    }
}

/// Whether two allocators are the same (context and functions).
fn same(a: &PyMemAllocatorEx, b: &PyMemAllocatorEx) -> bool {
    a.ctx == b.ctx
        && a.malloc.map(|f| f as usize) == b.malloc.map(|f| f as usize)
        && a.calloc.map(|f| f as usize) == b.calloc.map(|f| f as usize)
        && a.realloc.map(|f| f as usize) == b.realloc.map(|f| f as usize)
        && a.free.map(|f| f as usize) == b.free.map(|f| f as usize)
}

/// The installed mode (`"gil"` or `"ft"`), or `None` before `install`.
#[pyfunction]
fn mode() -> Option<&'static str> {
    INSTALLED.get().map(|i| i.mode)
}

/// Whether the installed heap runs in debug mode (`FTMALLOC_DEBUG=1` at install); `None`
/// before `install`.
#[pyfunction]
fn debug() -> Option<bool> {
    INSTALLED.get().map(|i| i.debug)
}

/// Whether the installed heap serves underneath CPython's debug hooks (`PYTHONMALLOC=debug`,
/// `-X dev`, a debug build), so their checks apply to its blocks; `None` before `install`.
#[pyfunction]
fn under_debug_hooks() -> Option<bool> {
    INSTALLED.get().map(|i| i.under_debug_hooks)
}

/// The domains the installed heap serves (`["mem", "obj"]`; `["mem"]` on a free-threaded
/// build), or `None` before `install`.
#[pyfunction]
fn domains() -> Option<Vec<&'static str>> {
    INSTALLED.get().map(|i| i.domains.names())
}

/// Whether `address` lies inside the installed heap's arenas (its arena map answers; safe for
/// any address): `id(obj)` of an object the heap serves says true. False before `install`.
#[pyfunction]
fn owns(address: usize) -> bool {
    INSTALLED
        .get()
        .is_some_and(|i| i.heap.owns(address as *const u8))
}

/// A snapshot of the installed heap, or `None` before `install`.
fn snapshot() -> Option<Stats> {
    // A GIL-mode heap exists only on a GIL build, where the GIL is held (a Python function)
    // and serialises it; the free-threaded heap's snapshot runs beside allocating threads.
    // The snapshot allocates nothing, so no allocation of ours re-enters the heap meanwhile.
    // SAFETY: the trait's contract: for a serialised heap, the GIL is held (see above).
    INSTALLED.get().map(|i| unsafe { i.heap.stats() })
}

/// The installed heap's statistics as a dict (see `ftmalloc.Stats` in Rust): geometry, one
/// row per size class in use, arena counters, derived byte counts and, in free-threaded mode,
/// the thread-cache counts. `None` before `install`.
#[pyfunction]
fn stats(py: Python<'_>) -> PyResult<Option<Bound<'_, PyDict>>> {
    let Some(s) = snapshot() else {
        return Ok(None);
    };
    let d = PyDict::new(py);
    d.set_item("mode", s.mode.name())?;
    d.set_item("pool_size", s.pool_size)?;
    d.set_item("arena_size", s.arena_size)?;
    d.set_item("pool_overhead", s.pool_overhead)?;
    d.set_item("small_limit", s.small_limit)?;
    d.set_item("num_classes", s.num_classes)?;
    let rows = PyList::empty(py);
    for (class, row) in s.classes[..s.num_classes].iter().enumerate() {
        if row.pools == 0 {
            continue;
        }
        let r = PyDict::new(py);
        r.set_item("class", class)?;
        r.set_item("size", row.size)?;
        r.set_item("pools", row.pools)?;
        r.set_item("blocks_in_use", row.blocks_in_use)?;
        r.set_item("blocks_available", row.blocks_available)?;
        rows.append(r)?;
    }
    d.set_item("classes", rows)?;
    d.set_item("arenas_allocated_total", s.counters.allocated_total)?;
    d.set_item("arenas_reclaimed", s.counters.reclaimed)?;
    d.set_item("arenas_highwater", s.counters.highwater)?;
    d.set_item("arenas_current", s.counters.current)?;
    d.set_item("unused_pools", s.unused_pools)?;
    d.set_item("pools_in_use", s.pools_in_use())?;
    d.set_item("blocks_in_use", s.blocks_in_use())?;
    d.set_item("bytes_in_allocated_blocks", s.bytes_in_allocated_blocks())?;
    d.set_item("bytes_in_available_blocks", s.bytes_in_available_blocks())?;
    d.set_item("bytes_in_unused_pools", s.bytes_in_unused_pools())?;
    d.set_item("bytes_lost_to_pool_headers", s.bytes_lost_to_pool_headers())?;
    d.set_item("bytes_lost_to_quantization", s.bytes_lost_to_quantization())?;
    d.set_item("total", s.total())?;
    d.set_item("mapped_bytes", s.mapped_bytes())?;
    d.set_item("thread_caches", s.thread_caches)?;
    d.set_item("cached_pools", s.cached_pools)?;
    d.set_item("abandoned_pools", s.abandoned_pools)?;
    d.set_item("max_cached_pools", s.max_cached_pools)?;
    d.set_item("dirty_pools", s.dirty_pools)?;
    d.set_item("pools_purged", s.pools_purged)?;
    Ok(Some(d))
}

/// The installed heap's statistics as `sys._debugmallocstats()` prints pymalloc's, or `None`
/// before `install`.
#[pyfunction]
fn stats_text() -> Option<String> {
    snapshot().map(|s| s.to_string())
}

/// The Rust half of the `ftmalloc` package (see the module docs).
///
/// `gil_used = false` (the module does not need the GIL of a free-threaded build): its one
/// piece of state is `INSTALLED`, a `OnceLock`; `mode`, `debug`, `under_debug_hooks`,
/// `domains` and `owns` only read it (and the arena map, safe for any address); `stats` and
/// `stats_text` read a free-threaded heap, whose `stats` runs beside allocating threads (a
/// `SerializedAllocator`, which needs the GIL, is only built on GIL builds: `install` refuses
/// "gil" on a free-threaded one); `install` refuses there while other threads run. The four
/// allocator functions call only the free-threaded heap (thread caches) and the wrapped
/// allocator there.
#[pymodule(gil_used = false)]
fn _ftmalloc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(install, m)?)?;
    m.add_function(wrap_pyfunction!(mode, m)?)?;
    m.add_function(wrap_pyfunction!(debug, m)?)?;
    m.add_function(wrap_pyfunction!(owns, m)?)?;
    m.add_function(wrap_pyfunction!(domains, m)?)?;
    m.add_function(wrap_pyfunction!(under_debug_hooks, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(stats_text, m)?)?;
    Ok(())
}
