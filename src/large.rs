//! The general-purpose allocator underneath: requests of 0 bytes, above the small limit, or
//! aligned above 16 bytes, and every pointer the arena map does not know.
//!
//! This is the C library's `malloc` family (pymalloc's "special purpose allocator on top of a
//! general purpose malloc"). Calling it directly, rather than `std::alloc::System`, lets
//! [`Allocator::free`](crate::Allocator::free) release a foreign pointer without its layout.

use crate::size_class::ALIGNMENT;
use core::ptr;

/// `size` bytes aligned to `align`, or null.
#[inline]
pub(crate) fn alloc(size: usize, align: usize) -> *mut u8 {
    if align <= ALIGNMENT {
        // SAFETY: malloc has no preconditions; glibc aligns to 16 on 64-bit.
        unsafe { libc::malloc(size).cast() }
    } else {
        let mut p = ptr::null_mut();
        // SAFETY: align is a power of two and a multiple of the pointer size (Layout guarantees
        // a power of two; it is > 16 here).
        let rc = unsafe { libc::posix_memalign(&mut p, align, size) };
        if rc == 0 {
            p.cast()
        } else {
            ptr::null_mut()
        }
    }
}

/// Zeroed `size` bytes aligned to `align`, or null.
#[inline]
pub(crate) fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    if align <= ALIGNMENT {
        // SAFETY: calloc has no preconditions.
        unsafe { libc::calloc(1, size).cast() }
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
    unsafe { libc::free(p.cast()) }
}

/// Resizes a pointer of the allocator underneath (alignment <= 16).
///
/// # Safety
/// As for [`free`].
#[inline]
pub(crate) unsafe fn realloc(p: *mut u8, new_size: usize) -> *mut u8 {
    // SAFETY: per the contract.
    unsafe { libc::realloc(p.cast(), new_size).cast() }
}

/// Usable size of a pointer of the allocator underneath.
///
/// # Safety
/// As for [`free`].
#[inline]
pub(crate) unsafe fn usable_size(p: *const u8) -> usize {
    // SAFETY: per the contract.
    unsafe { libc::malloc_usable_size(p as *mut libc::c_void) }
}
