//! The global shell: [`FtMalloc`], a `#[global_allocator]` over one static [`Allocator`] whose
//! mode comes from `FTMALLOC_MODE`, read once, at the first allocation.
//!
//! Start-up must not allocate (the first allocation is the one being served), so the
//! environment is read with `getenv`, errors are written with `write(2)` from a stack buffer,
//! and the static instance is built in place. Concurrent first callers wait (spin) while one
//! thread builds it; building only maps memory, so it is short.

use crate::{Allocator, Mode, Stats};
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::fmt::{self, Write as _};
use core::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

/// The global allocator type: `#[global_allocator] static A: ftmalloc::FtMalloc = ftmalloc::FtMalloc;`
///
/// Environment variables, read once at the first allocation:
/// - `FTMALLOC_MODE`: the mode of the process-wide heap ([`Mode::NAMES`]); unset or empty
///   means the default. Any other value aborts the process with a message naming it.
/// - `FTMALLOC_STATS`: `1` prints the heap's [`Stats`] to stderr at exit; `0` or unset does not.
/// - `FTMALLOC_DEBUG`: `1` turns debug mode on ([`Config::with_debug`](crate::Config::with_debug)).
/// - `FTMALLOC_DECAY_MS`: milliseconds a free pool keeps its pages before they go back to the
///   OS, `0` to `3600000` ([`Config::decay_ms`](crate::Config::decay_ms)); unset or empty means
///   [`Config::DEFAULT_DECAY_MS`](crate::Config::DEFAULT_DECAY_MS). Anything else aborts with
///   a message naming the value.
#[derive(Clone, Copy, Debug, Default)]
pub struct FtMalloc;

const UNINIT: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;

struct Instance(UnsafeCell<MaybeUninit<Allocator>>);
// SAFETY: the cell is written once, by the thread that moves STATE from UNINIT to BUSY, before
// STATE becomes READY (release); it is only read after observing READY (acquire).
unsafe impl Sync for Instance {}

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static INSTANCE: Instance = Instance(UnsafeCell::new(MaybeUninit::uninit()));

/// The mode used when `FTMALLOC_MODE` is unset or empty.
pub const DEFAULT_MODE: Mode = Mode::FreeThreaded;

impl FtMalloc {
    /// The process-wide heap behind `FtMalloc`, built on first use.
    #[inline(always)]
    pub fn instance() -> &'static Allocator {
        if STATE.load(Ordering::Acquire) == READY {
            // SAFETY: READY is stored (release) only after the instance was written.
            unsafe { (*INSTANCE.0.get()).assume_init_ref() }
        } else {
            init_slow()
        }
    }

    /// A snapshot of the process-wide heap.
    pub fn stats() -> Stats {
        FtMalloc::instance().stats()
    }
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
        let stats = match env_flag(c"FTMALLOC_STATS") {
            Ok(s) => s,
            Err(e) => die_fmt(e),
        };
        let debug = match env_flag(c"FTMALLOC_DEBUG") {
            Ok(d) => d,
            Err(e) => die_fmt(e),
        };
        let decay = match env_decay_ms() {
            Ok(d) => d,
            Err(e) => die_fmt(e),
        };
        let config = crate::Config::PYMALLOC
            .with_debug(debug)
            .with_decay_ms(decay);
        let mut heap = match Allocator::with_config(mode, config) {
            Ok(h) => h,
            Err(e) => die_fmt(e),
        };
        heap.set_process_heap();
        // SAFETY: we won the UNINIT -> BUSY race, so nobody else reads or writes the cell.
        unsafe { (*INSTANCE.0.get()).write(heap) };
        STATE.store(READY, Ordering::Release);
        // SAFETY: the handlers are valid extern "C" fns; registering may allocate through the
        // C library's own allocator, not this one.
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
        if stats {
            // SAFETY: print_stats is a valid extern "C" fn with no arguments.
            unsafe { libc::atexit(print_stats) };
        }
    } else {
        while STATE.load(Ordering::Acquire) != READY {
            std::thread::yield_now();
        }
    }
    // SAFETY: READY was observed with acquire (or stored by this thread).
    unsafe { (*INSTANCE.0.get()).assume_init_ref() }
}

/// A bad environment variable: its name, value, and what is accepted.
pub(crate) struct EnvError {
    name: &'static str,
    value: &'static [u8],
    accepted: &'static [&'static str],
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.value[..self.value.len().min(200)];
        write!(f, "ftmalloc: {}=\"", self.name)?;
        for &b in v {
            if b.is_ascii_graphic() || b == b' ' {
                f.write_char(b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        write!(f, "\" is not accepted; accepted values: ")?;
        for (i, a) in self.accepted.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(a)?;
        }
        f.write_str("\n")
    }
}

fn getenv(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: name is NUL-terminated; getenv returns null or a NUL-terminated string that lives
    // as long as the environment is not modified (we copy nothing and read it at once).
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        None
    } else {
        // SAFETY: p is a valid C string from the environment.
        Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes())
    }
}

/// Parses `FTMALLOC_MODE` without allocating.
pub(crate) fn env_mode() -> Result<Mode, EnvError> {
    match getenv(c"FTMALLOC_MODE") {
        None | Some(b"") => Ok(DEFAULT_MODE),
        Some(v) => core::str::from_utf8(v)
            .ok()
            .and_then(Mode::from_name)
            .ok_or(EnvError {
                name: "FTMALLOC_MODE",
                value: v,
                accepted: Mode::NAMES,
            }),
    }
}

/// Parses `FTMALLOC_DECAY_MS` (decimal milliseconds, at most one hour) without allocating.
pub(crate) fn env_decay_ms() -> Result<u64, EnvError> {
    let v = match getenv(c"FTMALLOC_DECAY_MS") {
        None | Some(b"") => return Ok(crate::Config::DEFAULT_DECAY_MS),
        Some(v) => v,
    };
    if v.len() <= 7 && v.iter().all(u8::is_ascii_digit) {
        let n = v.iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
        if n <= crate::Config::MAX_DECAY_MS {
            return Ok(n);
        }
    }
    Err(EnvError {
        name: "FTMALLOC_DECAY_MS",
        value: v,
        accepted: &["an integer from 0 to 3600000 (milliseconds)"],
    })
}

/// Parses a 0/1 flag variable without allocating.
pub(crate) fn env_flag(name: &'static core::ffi::CStr) -> Result<bool, EnvError> {
    match getenv(name) {
        None | Some(b"") | Some(b"0") => Ok(false),
        Some(b"1") => Ok(true),
        Some(v) => Err(EnvError {
            name: name.to_str().unwrap_or("?"),
            value: v,
            accepted: &["0", "1"],
        }),
    }
}

/// Writes formatted text to stderr through a stack buffer: no allocation.
pub(crate) struct StderrWriter {
    buf: [u8; 1024],
    len: usize,
}

impl StderrWriter {
    pub(crate) fn new() -> StderrWriter {
        StderrWriter {
            buf: [0; 1024],
            len: 0,
        }
    }

    pub(crate) fn flush(&mut self) {
        let mut off = 0;
        while off < self.len {
            // SAFETY: buf[off..len] is initialised memory we own.
            let n = unsafe { libc::write(2, self.buf[off..].as_ptr().cast(), self.len - off) };
            if n <= 0 {
                break;
            }
            off += n as usize;
        }
        self.len = 0;
    }
}

impl fmt::Write for StderrWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

/// Writes `msg` to stderr and aborts. Allocates nothing.
#[cold]
pub(crate) fn die(msg: &[u8]) -> ! {
    // SAFETY: msg is a valid buffer; write and abort have no other preconditions.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::abort()
    }
}

/// Formats `msg` to stderr and aborts. Allocates nothing.
#[cold]
pub(crate) fn die_fmt(msg: impl fmt::Display) -> ! {
    let mut w = StderrWriter::new();
    let _ = write!(w, "{msg}");
    w.flush();
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Runs `f` on the process-wide heap if it exists and is free-threaded (thread exit).
#[cfg(not(loom))]
pub(crate) fn thread_exit(f: impl FnOnce(&crate::ft::FtHeap, &crate::thread_cache::Ctx<'_>)) {
    if STATE.load(Ordering::Acquire) == READY {
        // SAFETY: READY observed with acquire.
        let a = unsafe { (*INSTANCE.0.get()).assume_init_ref() };
        a.with_ft(f);
    }
}

extern "C" fn fork_prepare() {
    FtMalloc::instance().fork_prepare();
}

extern "C" fn fork_parent() {
    FtMalloc::instance().fork_parent();
}

extern "C" fn fork_child() {
    FtMalloc::instance().fork_child();
}

extern "C" fn print_stats() {
    let s = FtMalloc::stats();
    let mut w = StderrWriter::new();
    let _ = write!(w, "{s}");
    w.flush();
}

// SAFETY: every method forwards to the static Allocator, which honours GlobalAlloc's contract
// (blocks are aligned to 16 and to layout.align(), live blocks never overlap).
unsafe impl GlobalAlloc for FtMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { FtMalloc::instance().alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { FtMalloc::instance().alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { FtMalloc::instance().dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { FtMalloc::instance().realloc(ptr, layout, new_size) }
    }
}
