//! The global shell: [`FtMalloc`], a `#[global_allocator]` over one static [`Allocator`] whose
//! mode comes from `FTMALLOC_MODE`, read once, at the first allocation.
//!
//! Start-up must not allocate (the first allocation is the one being served), so the
//! environment is read with `getenv`, errors are written with `write(2)` from a stack buffer,
//! and the static instance is built in place. Concurrent first callers wait (spin) while one
//! thread builds it; building only maps memory, so it is short.

use crate::base::diag::{die_fmt, path_with_pid, Bytes, Errno, StderrWriter, PATH_MAX};
use crate::base::env;
use crate::ft::FtHeap;
use crate::gil::GilHeap;
use crate::heap::{Allocator, Heap, Inner};
use crate::layout::config::{Config, PYMALLOC_GEOMETRY};
use crate::layout::stats::Stats;
use crate::layout::Mode;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::fmt::Write as _;
use core::mem::MaybeUninit;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};

/// The global allocator type: `#[global_allocator] static A: ftmalloc::FtMalloc = ftmalloc::FtMalloc;`
///
/// Environment variables, read once at the first allocation:
/// - `FTMALLOC_MODE`: the mode of the process-wide heap ([`Mode::NAMES`]); unset or empty
///   means the default. Any other value aborts the process with a message naming it.
/// - `FTMALLOC_STATS`: `1` prints the heap's [`Stats`] at exit to stderr (a descriptor
///   duplicated from stderr when the heap is built, so a program that closes stderr before it
///   exits still reports); a path containing `/` appends the report to that file instead
///   (`%p` in it is replaced by the process id at exit; created if missing); `0`, empty or
///   unset prints nothing. Anything else aborts with a message naming the value. The report
///   starts with a line naming the process (pid and program name).
/// - `FTMALLOC_DEBUG`: `1` turns debug mode on ([`Config::with_debug`](crate::Config::with_debug)).
/// - `FTMALLOC_DECAY_MS`: milliseconds a free pool keeps its pages before they go back to the
///   OS, `0` to `3600000` ([`Config::decay_ms`](crate::Config::decay_ms)); unset or empty means
///   [`Config::DEFAULT_DECAY_MS`](crate::Config::DEFAULT_DECAY_MS). Anything else aborts with
///   a message naming the value.
#[derive(Clone, Copy, Debug, Default)]
pub struct FtMalloc;

const UNINIT: u8 = 0;
const BUSY: u8 = 1;
/// Built; any mode.
const READY: u8 = 2;
/// Built, free-threaded, debug mode off, pymalloc's geometry: the fast path's one check selects
/// the monomorphic free-threaded heap (mode and debug flag are read once, at start).
const READY_FT: u8 = 3;
/// Built, GIL mode, debug mode off: the second check of the fast path.
const READY_GIL: u8 = 4;

/// Set before the heap is built by a caller that wants every call on the general paths (the
/// drop-in library while it records a trace): the heap then never enters a fast state.
static GENERAL_ONLY: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

struct Instance<T>(UnsafeCell<MaybeUninit<T>>);
// SAFETY: the cells are written once, by the thread that moves STATE from UNINIT to BUSY,
// before STATE becomes READY (release); they are only read after observing READY (acquire).
unsafe impl<T> Sync for Instance<T> {}

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
/// The process-wide heap itself, at a fixed address (the registry of heaps points at it). The
/// fast paths reach it here directly, without the handle's pointer.
static HEAP: Instance<Inner> = Instance(UnsafeCell::new(MaybeUninit::uninit()));
/// Its handle (`FtMalloc::instance`), pointing at `HEAP`; never dropped.
static INSTANCE: Instance<Allocator> = Instance(UnsafeCell::new(MaybeUninit::uninit()));

/// The mode used when `FTMALLOC_MODE` is unset or empty.
pub const DEFAULT_MODE: Mode = Mode::FreeThreaded;

impl FtMalloc {
    /// The process-wide heap behind `FtMalloc`, built on first use.
    #[inline(always)]
    pub fn instance() -> &'static Allocator {
        if STATE.load(Ordering::Acquire) >= READY {
            // SAFETY: every READY state is stored (release) only after the instance was written.
            unsafe { (*INSTANCE.0.get()).assume_init_ref() }
        } else {
            init_slow()
        }
    }

    /// The process-wide heap's free-threaded heap, when it is built in that mode without debug
    /// mode: one load and one compare.
    #[inline(always)]
    fn fast_ft() -> Option<&'static Heap<FtHeap>> {
        if STATE.load(Ordering::Acquire) == READY_FT {
            // SAFETY: READY_FT is stored (release) only after a free-threaded instance was
            // written, and the instance never changes.
            Some(unsafe { (*HEAP.0.get()).assume_init_ref().as_ft_unchecked() })
        } else {
            None
        }
    }

    /// The process-wide heap, monomorphic, when it is built without debug mode (the mode and
    /// the debug flag are read once, at start): one load and one or two compares, then code
    /// with the mode's dispatch and the debug branches folded away.
    #[inline(always)]
    fn fast() -> Fast {
        let s = STATE.load(Ordering::Acquire);
        // The free-threaded test first: it is the design under study, and the default.
        if s == READY_FT {
            // SAFETY: as in `fast_ft`.
            Fast::Ft(unsafe { (*HEAP.0.get()).assume_init_ref().as_ft_unchecked() })
        } else if s == READY_GIL {
            // SAFETY: as above, for GIL mode.
            Fast::Gil(unsafe { (*HEAP.0.get()).assume_init_ref().as_gil_unchecked() })
        } else {
            Fast::No
        }
    }

    /// C `malloc` of 1 to 512 bytes (alignment 16) on the free-threaded fast path, for the
    /// drop-in library: null when it misses (the heap is not built yet, not free-threaded, in
    /// debug mode, `size` is not small, or the thread's current pool of the class has no
    /// block); then the caller takes its general path ([`malloc_general`](Self::malloc_general)).
    #[doc(hidden)]
    #[inline(always)]
    pub fn malloc_fast(size: usize) -> *mut u8 {
        match FtMalloc::fast_ft() {
            // SAFETY: READY_FT promises pymalloc's geometry; `try_alloc_fast` checks the size
            // (any value) before it serves it.
            Some(h) => unsafe { h.try_alloc_fast(size) },
            None => core::ptr::null_mut(),
        }
    }

    /// C `free` on the fast path, for the drop-in library: true when `ptr` was freed, false
    /// when it misses (nothing done; the caller takes its general path).
    ///
    /// # Safety
    /// As [`Allocator::free`] on the process-wide heap.
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn free_fast(ptr: *mut u8) -> bool {
        match FtMalloc::fast_ft() {
            // SAFETY: the contract; debug mode is off and the geometry pymalloc's (READY_FT).
            Some(h) => unsafe { h.try_free_fast(ptr) },
            None => false,
        }
    }

    /// GIL mode's fast path of C `malloc` (1 to 512 bytes, alignment 16): when the process-wide
    /// heap is in GIL mode without debug mode and its lock is free at once, the whole
    /// allocation (lock, pymalloc's allocation, unlock) with pymalloc's geometry as a constant;
    /// null when it misses. For the drop-in library's general entry (the free-threaded test in
    /// `malloc` has failed by then), so it adds nothing to the free-threaded fast path.
    #[doc(hidden)]
    #[inline(always)]
    pub fn malloc_fast_gil(size: usize) -> *mut u8 {
        if STATE.load(Ordering::Acquire) == READY_GIL {
            // SAFETY: READY_GIL is stored (release) only after a GIL-mode instance with
            // pymalloc's geometry was written; `try_alloc_fast` checks the size (any value)
            // before it serves it.
            unsafe {
                let h = (*HEAP.0.get()).assume_init_ref().as_gil_unchecked();
                h.try_alloc_fast(size)
            }
        } else {
            core::ptr::null_mut()
        }
    }

    /// GIL mode's fast path of C `free` (see [`malloc_fast_gil`](Self::malloc_fast_gil)):
    /// true when `ptr` was freed, false when it misses (nothing done).
    ///
    /// # Safety
    /// As [`Allocator::free`] on the process-wide heap.
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn free_fast_gil(ptr: *mut u8) -> bool {
        if STATE.load(Ordering::Acquire) == READY_GIL {
            // SAFETY: as in `malloc_fast_gil`; the contract.
            unsafe {
                let h = (*HEAP.0.get()).assume_init_ref().as_gil_unchecked();
                h.try_free_fast(ptr)
            }
        } else {
            false
        }
    }

    /// C `malloc` on the process-wide heap past the free-threaded fast path: GIL mode's fast
    /// path (inline here, so that the free-threaded `__rust_alloc` does not carry it), then
    /// [`malloc_slow`](Self::malloc_slow) by a tail call. Null when memory is exhausted.
    #[doc(hidden)]
    #[inline(never)]
    pub fn malloc_general(layout: Layout) -> *mut u8 {
        if layout.align() <= 16 {
            let p = FtMalloc::malloc_fast_gil(layout.size());
            if !p.is_null() {
                return p;
            }
        }
        FtMalloc::malloc_slow(layout)
    }

    /// C `malloc` on the process-wide heap past both fast paths: the mode's general path
    /// (monomorphic where the state byte allows), null when memory is exhausted.
    #[doc(hidden)]
    #[inline(never)]
    pub fn malloc_slow(layout: Layout) -> *mut u8 {
        // SAFETY (every arm): a valid layout; debug mode is off in the fast arms.
        match FtMalloc::fast() {
            Fast::Ft(h) => unsafe { h.alloc_nodebug(layout) },
            Fast::Gil(h) => unsafe { h.alloc_nodebug(layout) },
            Fast::No => unsafe { FtMalloc::instance().alloc(layout) },
        }
    }

    /// C `free` on the process-wide heap past the free-threaded fast path: GIL mode's fast
    /// path, then [`free_slow`](Self::free_slow) (as [`malloc_general`](Self::malloc_general)).
    ///
    /// # Safety
    /// As [`Allocator::free`] on the process-wide heap.
    #[doc(hidden)]
    #[inline(never)]
    pub unsafe fn free_general(ptr: *mut u8) {
        // SAFETY: the contract.
        unsafe {
            if !FtMalloc::free_fast_gil(ptr) {
                FtMalloc::free_slow(ptr);
            }
        }
    }

    /// C `free` on the process-wide heap past both fast paths.
    ///
    /// # Safety
    /// As [`Allocator::free`] on the process-wide heap.
    #[doc(hidden)]
    #[inline(never)]
    pub unsafe fn free_slow(ptr: *mut u8) {
        // SAFETY (every arm): the contract; debug mode is off in the fast arms.
        match FtMalloc::fast() {
            Fast::Ft(h) => unsafe { h.free_nodebug(ptr) },
            Fast::Gil(h) => unsafe { h.free_nodebug(ptr) },
            Fast::No => unsafe { FtMalloc::instance().free(ptr) },
        }
    }

    /// Makes the process-wide heap take its general paths only: `malloc_fast` and `free_fast`
    /// then always miss. For the drop-in library's trace, which records on the general paths.
    /// Takes effect only when called before the heap is built.
    #[doc(hidden)]
    pub fn general_paths_only() {
        GENERAL_ONLY.store(true, Ordering::Relaxed);
    }

    /// A snapshot of the process-wide heap.
    pub fn stats() -> Stats {
        FtMalloc::instance().stats()
    }
}

/// The process-wide heap's front, when the fast path may take it.
enum Fast {
    Ft(&'static Heap<FtHeap>),
    Gil(&'static Heap<GilHeap>),
    No,
}

#[cold]
#[inline(never)]
fn init_slow() -> &'static Allocator {
    if STATE
        .compare_exchange(UNINIT, BUSY, Ordering::Acquire, Ordering::Acquire)
        .is_ok()
    {
        let mode = match env_mode() {
            Ok(m) => m,
            Err(e) => die_fmt(e),
        };
        let stats = match env_stats() {
            Ok(s) => s,
            Err(e) => die_fmt(e),
        };
        let debug = match env::flag(c"FTMALLOC_DEBUG") {
            Ok(d) => d,
            Err(e) => die_fmt(e),
        };
        let decay = match env_decay_ms() {
            Ok(d) => d,
            Err(e) => die_fmt(e),
        };
        // glibc's allocator underneath sets itself up on its first use, and that set-up is not
        // thread-safe (DESIGN.md section 7): bring it up now, at the process heap's first use,
        // which is the process's first allocation for the drop-in library (whose constructor
        // also builds the heap at load time, single-threaded). `malloc` of any size runs
        // glibc's `ptmalloc_init` (and this thread's tcache set-up); it calls nothing of ours
        // (the drop-in's allocator underneath is glibc's internal entry points).
        let p = crate::layout::large::alloc(1, 16);
        if !p.is_null() {
            // SAFETY: a live block of the allocator underneath, just allocated.
            unsafe { crate::layout::large::free(p) };
        }
        let config = Config::PYMALLOC.with_debug(debug).with_decay_ms(decay);
        let mut heap = match Inner::build(mode, config) {
            Ok(h) => h,
            Err(e) => die_fmt(e),
        };
        heap.set_process_heap();
        // The fast states promise pymalloc's geometry too (`Heap::try_alloc_fast`).
        let pymalloc = *heap.geometry() == PYMALLOC_GEOMETRY;
        // SAFETY: we won the UNINIT -> BUSY race, so nobody else reads or writes the cells;
        // the heap, written once, stays in its static for the rest of the process.
        let heap: &'static Inner = unsafe {
            let heap: &'static Inner = (*HEAP.0.get()).write(heap);
            (*INSTANCE.0.get()).write(Allocator::process(heap));
            heap
        };
        stats_target_set(stats);
        let general = debug || !pymalloc || GENERAL_ONLY.load(Ordering::Relaxed);
        let ready = match (mode, general) {
            (Mode::FreeThreaded, false) => READY_FT,
            (Mode::Gil, false) => READY_GIL,
            (_, true) => READY,
        };
        STATE.store(ready, Ordering::Release);
        // Fork and thread exit: the heap joins the registry of live heaps, whose handlers
        // (`heaps`: `pthread_atfork`, installed with the first heap, and the thread-exit hook)
        // walk it with the instances. After READY: installing them may allocate.
        #[cfg(not(loom))]
        crate::heap::register_process_heap(heap);
        #[cfg(loom)]
        let _ = heap;
        if !matches!(stats, StatsTo::Off) {
            // SAFETY: print_stats is a valid extern "C" fn with no arguments.
            unsafe { libc::atexit(print_stats) };
        }
    } else {
        while STATE.load(Ordering::Acquire) < READY {
            std::thread::yield_now();
        }
    }
    // SAFETY: READY was observed with acquire (or stored by this thread).
    unsafe { (*INSTANCE.0.get()).assume_init_ref() }
}

/// The process-wide heap's mode from `FTMALLOC_MODE` (unset or empty: [`DEFAULT_MODE`]).
fn env_mode() -> Result<Mode, env::EnvError> {
    Ok(match env::choice(c"FTMALLOC_MODE", Mode::NAMES)? {
        None => DEFAULT_MODE,
        Some(i) => Mode::from_name(Mode::NAMES[i]).unwrap_or(DEFAULT_MODE),
    })
}

/// `FTMALLOC_DECAY_MS` (unset or empty: [`Config::DEFAULT_DECAY_MS`]).
fn env_decay_ms() -> Result<u64, env::EnvError> {
    Ok(env::integer(
        c"FTMALLOC_DECAY_MS",
        Config::MAX_DECAY_MS,
        &["an integer from 0 to 3600000 (milliseconds)"],
    )?
    .unwrap_or(Config::DEFAULT_DECAY_MS))
}

// Fork and thread exit: the process-wide heap is in the registry of heaps like every instance,
// and the handlers there (`heaps`: `pthread_atfork`, the thread-exit hook) walk it with them.

/// Where `FTMALLOC_STATS` sends the report at exit.
#[derive(Clone, Copy)]
enum StatsTo {
    Off,
    /// Stderr, through a descriptor duplicated from it when the heap is built.
    Stderr,
    /// Appended to the file at this path (`%p`: the process id at exit).
    File(&'static [u8]),
}

/// `FTMALLOC_STATS`: `0`, `1` or a path containing `/`; unset or empty is off.
fn env_stats() -> Result<StatsTo, env::EnvError> {
    const NAME: &core::ffi::CStr = c"FTMALLOC_STATS";
    Ok(match env::getenv(NAME) {
        None | Some(b"") | Some(b"0") => StatsTo::Off,
        Some(b"1") => StatsTo::Stderr,
        Some(v) if v.contains(&b'/') && v.len() < PATH_MAX => StatsTo::File(v),
        Some(v) => {
            return Err(env::error(
                NAME,
                v,
                &[
                    "0",
                    "1 (stderr)",
                    "a file path containing '/' (at most 4095 bytes; %p: the process id)",
                ],
            ))
        }
    })
}

/// The report's descriptor for [`StatsTo::Stderr`]: a duplicate of stderr made when the heap
/// was built (close-on-exec), or -1 (then stderr itself).
static STATS_FD: AtomicI32 = AtomicI32::new(-1);
/// The length of the path in `STATS_PATH` for [`StatsTo::File`]; 0 for stderr.
static STATS_PATH_LEN: AtomicUsize = AtomicUsize::new(0);

struct StatsPath(UnsafeCell<[u8; PATH_MAX]>);
// SAFETY: written once, by the thread that builds the process heap, before STATE becomes READY
// (release); read only by `print_stats` after `FtMalloc::stats` observed READY (acquire).
unsafe impl Sync for StatsPath {}
/// `FTMALLOC_STATS`'s path (with `%p`), copied when the heap is built: the program may change
/// its environment before it exits.
static STATS_PATH: StatsPath = StatsPath(UnsafeCell::new([0; PATH_MAX]));

/// Records where the report goes (the heap's builder, before STATE becomes READY).
fn stats_target_set(to: StatsTo) {
    match to {
        StatsTo::Off => {}
        StatsTo::Stderr => {
            // SAFETY: fcntl on any descriptor is defined; it fails (-1) when stderr is closed.
            let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
            STATS_FD.store(fd, Ordering::Relaxed);
        }
        StatsTo::File(path) => {
            // SAFETY: the builder is the only accessor until STATE becomes READY (StatsPath).
            let buf = unsafe { &mut *STATS_PATH.0.get() };
            // env_stats accepted it only shorter than PATH_MAX.
            buf[..path.len()].copy_from_slice(path);
            STATS_PATH_LEN.store(path.len(), Ordering::Relaxed);
        }
    }
}

extern "C" {
    /// glibc: the program's name (the last component of `argv[0]`).
    static program_invocation_short_name: *const core::ffi::c_char;
}

/// The process, for the report's header: `pid 1234 (ls)`.
struct ProcessName(u32);

impl core::fmt::Display for ProcessName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // SAFETY: glibc sets the pointer before any user code runs; a program may point it
        // elsewhere, but always at a C string (or leave it null).
        let name = unsafe { program_invocation_short_name };
        let name: &[u8] = if name.is_null() {
            b"?"
        } else {
            // SAFETY: a NUL-terminated string (above).
            unsafe { core::ffi::CStr::from_ptr(name) }.to_bytes()
        };
        write!(
            f,
            "pid {} ({})",
            self.0,
            Bytes(&name[..name.len().min(200)])
        )
    }
}

extern "C" fn print_stats() {
    let s = FtMalloc::stats();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let len = STATS_PATH_LEN.load(Ordering::Relaxed);
    let (fd, close) = if len == 0 {
        match STATS_FD.load(Ordering::Relaxed) {
            -1 => (2, false),
            fd => (fd, false),
        }
    } else {
        // SAFETY: written before READY, which `FtMalloc::stats` observed (StatsPath).
        let raw = unsafe { &(&*STATS_PATH.0.get())[..len] };
        let mut path = [0u8; PATH_MAX];
        let Some(n) = path_with_pid(raw, pid, &mut path) else {
            let mut w = StderrWriter::new();
            let _ = writeln!(
                w,
                "ftmalloc: FTMALLOC_STATS: cannot write the statistics of {} to \"{}\": the path with %p replaced is longer than 4095 bytes",
                ProcessName(pid),
                Bytes(raw)
            );
            w.flush();
            return;
        };
        // SAFETY: `path` is NUL-terminated (path_with_pid).
        let fd = unsafe {
            libc::open(
                path.as_ptr().cast(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            let e = Errno::last();
            let mut w = StderrWriter::new();
            let _ = writeln!(
                w,
                "ftmalloc: FTMALLOC_STATS: cannot write the statistics of {} to \"{}\": {e}",
                ProcessName(pid),
                Bytes(&path[..n])
            );
            w.flush();
            return;
        }
        (fd, true)
    };
    let mut w = StderrWriter::to_fd(fd);
    let _ = write!(
        w,
        "ftmalloc: statistics at exit of {}\n{s}",
        ProcessName(pid)
    );
    w.flush();
    if close {
        // SAFETY: our own descriptor, opened above.
        unsafe { libc::close(fd) };
    }
}

// SAFETY: every method forwards to the static Allocator, which honours GlobalAlloc's contract
// (blocks are aligned to 16 and to layout.align(), live blocks never overlap).
unsafe impl GlobalAlloc for FtMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // The free-threaded fast path, inline and calling nothing; the rest out of line.
        if layout.align() <= 16 {
            let p = FtMalloc::malloc_fast(layout.size());
            if !p.is_null() {
                return p;
            }
        }
        FtMalloc::malloc_general(layout)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { FtMalloc::instance().alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: forwarded contract (the fast path, then the rest out of line).
        unsafe {
            if !FtMalloc::free_fast(ptr) {
                FtMalloc::free_general(ptr);
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { FtMalloc::instance().realloc(ptr, layout, new_size) }
    }
}
