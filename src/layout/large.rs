//! The general-purpose allocator underneath: requests of 0 bytes, above the small limit, or
//! aligned above 16 bytes, and every pointer the arena map does not know.
//!
//! This is the C library's `malloc` family (pymalloc's "special purpose allocator on top of a
//! general purpose malloc"). Calling it directly, rather than `std::alloc::System`, lets
//! [`Allocator::free`](crate::Allocator::free) release a foreign pointer without its layout.

use crate::layout::size_class::ALIGNMENT;
use core::ptr;

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// True once the C-ABI library asked for glibc's internal entry points.
static INTERNAL: AtomicBool = AtomicBool::new(false);

/// Makes the allocator underneath glibc's own `__libc_malloc` family instead of `malloc`.
///
/// For the C-ABI library (`preload/`), where `malloc` itself is ftmalloc: it calls this before
/// its first allocation. A Rust program keeps the default (`malloc`), which is the same allocator
/// reached through its public names.
///
/// # Safety
/// It changes how every pointer the arena map does not know is freed, reallocated and sized
/// from then on. The caller must call it before any allocation of any ftmalloc heap (so no
/// pointer the allocator underneath handed out is later given to the other family), and only
/// where the `__libc_*` entry points and the public `malloc` family are distinct allocators
/// that must not be mixed, i.e. where `malloc` is interposed by ftmalloc itself.
#[doc(hidden)]
pub unsafe fn use_glibc_internal_allocator() {
    INTERNAL.store(true, Ordering::Release);
}

#[inline(always)]
fn internal() -> bool {
    INTERNAL.load(Ordering::Relaxed)
}

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
}

static USABLE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

/// The C library's allocator, through its public or internal names.
mod sys {
    use super::*;

    /// One family of entry points of the C library's allocator.
    pub(super) struct Family {
        pub(super) malloc: unsafe extern "C" fn(usize) -> *mut c_void,
        pub(super) calloc: unsafe extern "C" fn(usize, usize) -> *mut c_void,
        /// Contract: the pointer is live in this family.
        pub(super) realloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
        /// Contract: the pointer is live in this family.
        pub(super) free: unsafe extern "C" fn(*mut c_void),
        /// Contract: the alignment is a power of two multiple of the pointer size.
        pub(super) memalign: unsafe extern "C" fn(usize, usize) -> *mut c_void,
    }

    /// `posix_memalign` in `memalign`'s shape: null on failure.
    unsafe extern "C" fn public_memalign(align: usize, size: usize) -> *mut c_void {
        let mut p = ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer; the alignment is the caller's contract.
        if unsafe { libc::posix_memalign(&mut p, align, size) } == 0 {
            p
        } else {
            ptr::null_mut()
        }
    }

    static PUBLIC: Family = Family {
        malloc: libc::malloc,
        calloc: libc::calloc,
        realloc: libc::realloc,
        free: libc::free,
        memalign: public_memalign,
    };

    static GLIBC_INTERNAL: Family = Family {
        malloc: __libc_malloc,
        calloc: __libc_calloc,
        realloc: __libc_realloc,
        free: __libc_free,
        memalign: __libc_memalign,
    };

    /// The family in use (see [`use_glibc_internal_allocator`]).
    #[inline(always)]
    pub(super) fn family() -> &'static Family {
        if internal() {
            &GLIBC_INTERNAL
        } else {
            &PUBLIC
        }
    }

    /// glibc's `malloc_usable_size`. With internal names it is found with `dlsym(RTLD_NEXT)` on
    /// first use (glibc exports no internal name for it); `dlsym` may allocate, but by then the
    /// allocator is running.
    ///
    /// # Safety
    /// `p` live in the C library's allocator.
    pub(super) unsafe fn malloc_usable_size(p: *mut c_void) -> usize {
        if !internal() {
            // SAFETY: per the contract.
            return unsafe { libc::malloc_usable_size(p) };
        }
        let mut f = USABLE.load(Ordering::Acquire);
        if f.is_null() {
            // SAFETY: the name is NUL-terminated; RTLD_NEXT finds the definition after ours.
            f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"malloc_usable_size".as_ptr()) };
            if f.is_null() {
                return 0;
            }
            USABLE.store(f, Ordering::Release);
        }
        // SAFETY: f is glibc's malloc_usable_size, whose signature this is.
        let f: unsafe extern "C" fn(*mut c_void) -> usize = unsafe { core::mem::transmute(f) };
        // SAFETY: per the contract.
        unsafe { f(p) }
    }
}

/// `size` bytes aligned to `align`, or null.
#[inline]
pub(crate) fn alloc(size: usize, align: usize) -> *mut u8 {
    if align <= ALIGNMENT {
        // SAFETY: malloc has no preconditions; glibc aligns to 16 on 64-bit.
        unsafe { (sys::family().malloc)(size).cast() }
    } else {
        // SAFETY: align is a power of two (Layout guarantees it) above 16, so a multiple of the
        // pointer size.
        unsafe { (sys::family().memalign)(align, size).cast() }
    }
}

/// Zeroed `size` bytes aligned to `align`, or null.
#[inline]
pub(crate) fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    if align <= ALIGNMENT {
        // SAFETY: calloc has no preconditions.
        unsafe { (sys::family().calloc)(1, size).cast() }
    } else {
        let p = alloc(size, align);
        if !p.is_null() {
            // SAFETY: p points to `size` writable bytes.
            unsafe { ptr::write_bytes(p, 0, size) };
        }
        p
    }
}

/// Frees a pointer of the allocator underneath.
///
/// # Safety
/// `p` must come from this module's functions (or the C library's malloc) and be live.
#[inline]
pub(crate) unsafe fn free(p: *mut u8) {
    // SAFETY: per the contract.
    unsafe { (sys::family().free)(p.cast()) }
}

/// Resizes a pointer of the allocator underneath (alignment <= 16).
///
/// # Safety
/// As for [`free`].
#[inline]
pub(crate) unsafe fn realloc(p: *mut u8, new_size: usize) -> *mut u8 {
    // SAFETY: per the contract.
    unsafe { (sys::family().realloc)(p.cast(), new_size).cast() }
}

/// Usable size of a pointer of the allocator underneath.
///
/// # Safety
/// As for [`free`].
#[inline]
pub(crate) unsafe fn usable_size(p: *const u8) -> usize {
    // SAFETY: per the contract.
    unsafe { sys::malloc_usable_size(p as *mut libc::c_void) }
}
