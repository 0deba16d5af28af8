//! ftmalloc as a drop-in `malloc`: build with `cargo build --release -p ftmalloc-preload` and run
//! any dynamically linked program with `LD_PRELOAD=target/release/libftmalloc.so`.
//!
//! Every export forwards to the process-wide heap ([`FtMalloc::instance`]), whose mode comes
//! from `FTMALLOC_MODE` (`ft` by default, or `gil`), and whose statistics are printed at exit
//! with `FTMALLOC_STATS=1`. Requests above 512 bytes or aligned above 16 go to glibc's own
//! allocator through its internal entry points (`__libc_malloc` and friends; never `dlsym` on
//! the allocation path), and pointers the arena map does not know — allocated before the library
//! loaded, or by that fallback — are sent back there.
//!
//! Living inside libc:
//! - start-up allocates nothing of its own: the first `malloc`, or else the library's
//!   constructor, builds the heap from `mmap`ed memory and brings up glibc's allocator
//!   underneath (one `__libc_malloc` and `__libc_free`) while the process is single-threaded;
//! - thread exit runs through a `pthread_key` destructor created early (low index, so
//!   `pthread_setspecific` allocates nothing), and a thread being bound that re-enters takes a
//!   cache-less path;
//! - `pthread_atfork` handlers are installed when the heap is built;
//! - every export is `extern "C"`, so a panic cannot unwind into C: Rust aborts the process.
#![deny(unsafe_op_in_unsafe_fn)]

mod trace;

use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr;
use ftmalloc_core::FtMalloc;

const MIN_ALIGN: usize = 16;

/// Starts this library before the process-wide heap's first use: glibc's internal entry
/// points become the allocator underneath, and the trace (if asked for) is opened.
#[inline(always)]
fn ensure_started() {
    static STARTED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if !STARTED.load(core::sync::atomic::Ordering::Relaxed) {
        start();
    }
    #[cold]
    fn start() {
        static ONCE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
        if !ONCE.swap(true, core::sync::atomic::Ordering::AcqRel) {
            // SAFETY: before any allocation of the process-wide heap (this runs first), and
            // `malloc` is interposed by this very library, so glibc's internal entry points are
            // the allocator underneath.
            unsafe { ftmalloc_core::use_glibc_internal_allocator() };
            trace::init();
            if trace::on() {
                // Every call is recorded on the general paths: no fast state.
                FtMalloc::general_paths_only();
            }
            STARTED.store(true, core::sync::atomic::Ordering::Release);
        }
    }
}

/// The library's constructor (`.init_array`): builds the process-wide heap at load time, while
/// the process is single-threaded (a preloaded library's constructors run before the
/// program's), if no allocation has built it yet. Building it brings up glibc's allocator
/// underneath, whose set-up is not thread-safe (DESIGN.md section 7): left to the first request
/// above 512 bytes, it could run in several threads at once.
extern "C" fn at_load() {
    heap();
}

#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

/// The process-wide heap, this library started.
#[inline(always)]
fn heap() -> &'static ftmalloc_core::Allocator {
    ensure_started();
    FtMalloc::instance()
}

fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// Allocates `size` bytes aligned to `align` (a power of two), setting errno on failure.
#[inline(always)]
fn alloc_aligned(size: usize, align: usize) -> *mut c_void {
    let Ok(layout) = Layout::from_size_align(size, align.max(1)) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    ensure_started();
    // A valid layout; zero sizes are allowed by Allocator::alloc.
    let p = FtMalloc::malloc_slow(layout);
    if p.is_null() {
        set_errno(libc::ENOMEM);
    } else if trace::on() {
        trace::record(trace::ALLOC, p as usize, size);
    }
    p.cast()
}

/// `malloc(3)`.
///
/// # Safety
/// C semantics.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // The fast path (it calls nothing, so this function saves no registers on it): the heap
    // is built (so this library started it), free-threaded, not in debug mode, no trace is
    // recorded (`general_paths_only`), and the thread's current pool of the class has a block.
    // Anything else takes the general path, out of line.
    let p = FtMalloc::malloc_fast(size);
    if !p.is_null() {
        return p.cast();
    }
    malloc_general(size)
}

/// `malloc` past the fast path. `extern "C"`, as `malloc` is, so the call from `malloc` is a
/// tail call (a jump; the fast path keeps no stack frame).
#[inline(never)]
extern "C" fn malloc_general(size: usize) -> *mut c_void {
    // GIL mode's fast path first (the whole allocation when the lock is free at once).
    let p = FtMalloc::malloc_fast_gil(size);
    if !p.is_null() {
        return p.cast();
    }
    alloc_aligned(size, MIN_ALIGN)
}

/// `free(3)`; preserves `errno` without touching it: the only paths that could change it are
/// system calls on slow paths, which keep it themselves (`munmap`, `madvise` and GIL mode's
/// futex), and glibc's `free` for foreign pointers, which keeps it (glibc 2.33 and later).
///
/// # Safety
/// `p` must be null or a live pointer from this library or from glibc's allocator.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // The fast path (see `malloc`): a block of a pool the thread's cache owns, not its last.
    // SAFETY: per the contract.
    if unsafe { FtMalloc::free_fast(p.cast()) } {
        return;
    }
    // SAFETY: per the contract.
    unsafe { free_general(p) }
}

/// `free` past the fast path (`extern "C"` for a tail call, as `malloc_general`).
///
/// # Safety
/// As `free`.
#[inline(never)]
unsafe extern "C" fn free_general(p: *mut c_void) {
    // GIL mode's fast path first (see `malloc_general`).
    // SAFETY: per the contract.
    if unsafe { FtMalloc::free_fast_gil(p.cast()) } {
        return;
    }
    if p.is_null() {
        return;
    }
    if trace::on() {
        trace::record(trace::FREE, p as usize, 0);
    }
    ensure_started();
    // SAFETY: per the contract; the arena map routes foreign pointers to glibc.
    unsafe { FtMalloc::free_slow(p.cast()) };
}

/// `calloc(3)`: an overflowing `n * size` gives null and `ENOMEM`.
///
/// # Safety
/// C semantics.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    let Ok(layout) = Layout::from_size_align(total, MIN_ALIGN) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    // SAFETY: a valid layout.
    let p = unsafe { heap().alloc_zeroed(layout) };
    if p.is_null() {
        set_errno(libc::ENOMEM);
    } else if trace::on() {
        trace::record(trace::ALLOC, p as usize, total);
    }
    p.cast()
}

/// `realloc(3)`, as glibc does it: a null pointer allocates; size 0 frees and returns null.
///
/// # Safety
/// `p` must be null or a live pointer from this library or from glibc's allocator.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return alloc_aligned(size, MIN_ALIGN);
    }
    if size == 0 {
        // SAFETY: per the contract.
        unsafe { free(p) };
        return ptr::null_mut();
    }
    // The new size, rounded up to the alignment, must not exceed isize::MAX
    // (`Allocator::realloc`'s contract, as `GlobalAlloc::realloc`'s): `size <= isize::MAX`
    // alone lets isize::MAX - 14 ..= isize::MAX through (found by fuzz/ c_abi).
    let Ok(layout) = Layout::from_size_align(size, MIN_ALIGN) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    // C knows no old layout. At alignment 16 `Allocator::realloc` uses only the layout's
    // alignment and finds the old size from the pointer (its documented relaxation), so the new
    // layout stands in. No usable-size query first: in debug mode the checks of a bad pointer
    // then run in realloc and name it as realloc's.
    // SAFETY: p is live (contract); the new size is non-zero and in range.
    let q = unsafe { heap().realloc(p.cast(), layout, size) };
    if q.is_null() {
        set_errno(libc::ENOMEM);
    } else if trace::on() {
        if q == p.cast() {
            // In place: the object ends and a new one of the new size begins at the same id.
            trace::record(trace::FREE, p as usize, 0);
            trace::record(trace::ALLOC, q as usize, size);
        } else {
            // A move: the new block exists before the old one is freed.
            trace::record(trace::ALLOC, q as usize, size);
            trace::record(trace::FREE, p as usize, 0);
        }
    }
    q.cast()
}

/// `reallocarray(3)`: an overflowing `n * size` gives null and `ENOMEM`, leaving `p` alone.
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `posix_memalign(3)`: `EINVAL` unless `align` is a power of two multiple of `sizeof(void *)`.
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let p = alloc_aligned(size, align);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: per the contract.
    unsafe { *out = p };
    0
}

/// `aligned_alloc(3)`: `EINVAL` (and null) unless `align` is a power of two.
///
/// # Safety
/// C semantics.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    alloc_aligned(size, align)
}

/// `memalign(3)`: like glibc, an alignment that is not a power of two is rounded up to one.
///
/// # Safety
/// C semantics.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    let Some(align) = align.max(1).checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    alloc_aligned(size, align)
}

/// `valloc(3)`: page-aligned.
///
/// # Safety
/// C semantics.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc_aligned(size, page_size())
}

/// `pvalloc(3)`: page-aligned, size rounded up to whole pages.
///
/// # Safety
/// C semantics.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let ps = page_size();
    let Some(rounded) = size.max(1).checked_next_multiple_of(ps) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    alloc_aligned(rounded, ps)
}

/// `malloc_usable_size(3)`.
///
/// # Safety
/// `p` must be null or a live pointer from this library or from glibc's allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: per the contract; null gives 0.
    unsafe { heap().usable_size(p.cast()) }
}
