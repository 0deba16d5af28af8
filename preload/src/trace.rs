//! `FTMALLOC_TRACE=path`: a compact binary trace of every allocation and free, for replay by
//! the harness's `pytrace` workload.
//!
//! Format (little endian): a 16-byte header `b"FTMTRC01"` + `u64` event count, then 16-byte
//! events `{ id: u64, size: u32, thread: u16, op: u8, _pad: u8 }`: `op` 0 = allocation of `size`
//! bytes returning object `id` (its address), 1 = free of `id` (size 0). A `realloc` that moves
//! is recorded as the allocation of the new block then the free of the old one; one that stays
//! in place as a free and an allocation of the same id. `thread` numbers threads in the order
//! they first allocate or free (0 = the first).
//!
//! Recording allocates nothing and takes no lock: events go into a shared file mapping at an
//! offset taken with `fetch_add`; the file is truncated to its length at exit. `%p` in the path
//! is replaced by the process id; a forked child stops recording.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicUsize, Ordering};
use ftmalloc_core::diag::{die_fmt, path_with_pid, Bytes, Errno, PATH_MAX};

/// Alloc event.
pub(crate) const ALLOC: u8 = 0;
/// Free event.
pub(crate) const FREE: u8 = 1;

const MAGIC: &[u8; 8] = b"FTMTRC01";
const HEADER: usize = 16;
const EVENT: usize = 16;
/// Virtual size of the mapping: room for 2^30 events; the file stays sparse.
const CAPACITY: usize = 16 << 30;

static ON: AtomicBool = AtomicBool::new(false);
static BASE: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static NEXT: AtomicUsize = AtomicUsize::new(0);
static FD: AtomicUsize = AtomicUsize::new(0);
static THREADS: AtomicU16 = AtomicU16::new(0);

std::thread_local! {
    /// This thread's trace number plus one (0: not numbered yet).
    static THREAD: Cell<u16> = const { Cell::new(0) };
}

/// True while recording.
#[inline(always)]
pub(crate) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Starts recording if `FTMALLOC_TRACE` is set. Called once, from the first allocation.
pub(crate) fn init() {
    // SAFETY: the name is NUL-terminated.
    let p = unsafe { libc::getenv(c"FTMALLOC_TRACE".as_ptr()) };
    if p.is_null() {
        return;
    }
    // SAFETY: getenv returned a C string.
    let raw = unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes();
    if raw.is_empty() {
        return;
    }
    // The path in a stack buffer, %p replaced by the pid.
    let mut path = [0u8; PATH_MAX];
    // SAFETY: getpid has no preconditions.
    let Some(n) = path_with_pid(raw, unsafe { libc::getpid() } as u32, &mut path) else {
        fail(
            "use",
            raw,
            "the path (with %p replaced) is longer than 4095 bytes",
        );
    };
    let path = &path[..n + 1];
    let shown = &path[..n];
    // SAFETY: path is NUL-terminated (zero-filled past n).
    let fd = unsafe {
        libc::open(
            path.as_ptr().cast(),
            libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        fail("create", shown, Errno::last());
    }
    // SAFETY: fd is an open file.
    if unsafe { libc::ftruncate(fd, CAPACITY as libc::off_t) } != 0 {
        fail("size (ftruncate to 16 GiB, sparse)", shown, Errno::last());
    }
    // SAFETY: fd is an open file of CAPACITY bytes; a fresh shared mapping of it.
    let base = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            CAPACITY,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            fd,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        fail("map", shown, Errno::last());
    }
    let base = base.cast::<u8>();
    // SAFETY: the mapping is at least HEADER bytes.
    unsafe { core::ptr::copy_nonoverlapping(MAGIC.as_ptr(), base, 8) };
    BASE.store(base, Ordering::Release);
    FD.store(fd as usize, Ordering::Relaxed);
    NEXT.store(0, Ordering::Relaxed);
    // SAFETY: finish is a valid extern "C" fn; the child handler stops recording after fork.
    unsafe {
        libc::atexit(finish);
        libc::pthread_atfork(None, None, Some(stop_in_child));
    }
    ON.store(true, Ordering::Release);
}

/// Aborts with a message naming the trace file and why it cannot be used.
#[cold]
fn fail(what: &str, path: &[u8], why: impl core::fmt::Display) -> ! {
    struct Msg<'a, W>(&'a str, &'a [u8], W);
    impl<W: core::fmt::Display> core::fmt::Display for Msg<'_, W> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            writeln!(
                f,
                "ftmalloc: FTMALLOC_TRACE: cannot {} the trace file \"{}\": {}",
                self.0,
                Bytes(self.1),
                self.2
            )
        }
    }
    die_fmt(Msg(what, path, why))
}

extern "C" fn stop_in_child() {
    ON.store(false, Ordering::Relaxed);
}

fn thread_number() -> u16 {
    THREAD
        .try_with(|t| {
            let v = t.get();
            if v != 0 {
                return v - 1;
            }
            let n = THREADS.fetch_add(1, Ordering::Relaxed);
            t.set(n + 1);
            n
        })
        .unwrap_or(u16::MAX)
}

/// Records one event.
#[inline(never)]
pub(crate) fn record(op: u8, id: usize, size: usize) {
    let base = BASE.load(Ordering::Acquire);
    if base.is_null() {
        return;
    }
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    let off = HEADER + i * EVENT;
    if off + EVENT > CAPACITY {
        return;
    }
    let mut ev = [0u8; EVENT];
    ev[0..8].copy_from_slice(&(id as u64).to_le_bytes());
    ev[8..12].copy_from_slice(&(size.min(u32::MAX as usize) as u32).to_le_bytes());
    ev[12..14].copy_from_slice(&thread_number().to_le_bytes());
    ev[14] = op;
    // SAFETY: off + EVENT <= CAPACITY, inside the mapping; each index is written by one thread.
    unsafe { core::ptr::copy_nonoverlapping(ev.as_ptr(), base.add(off), EVENT) };
}

extern "C" fn finish() {
    if !ON.swap(false, Ordering::AcqRel) {
        return;
    }
    let n = NEXT
        .load(Ordering::Acquire)
        .min((CAPACITY - HEADER) / EVENT);
    let base = BASE.load(Ordering::Acquire);
    // SAFETY: the header lies inside the mapping; fd is the trace file.
    unsafe {
        core::ptr::copy_nonoverlapping((n as u64).to_le_bytes().as_ptr(), base.add(8), 8);
        let fd = FD.load(Ordering::Relaxed) as i32;
        libc::msync(base.cast(), HEADER + n * EVENT, libc::MS_SYNC);
        libc::ftruncate(fd, (HEADER + n * EVENT) as libc::off_t);
        libc::close(fd);
    }
}
