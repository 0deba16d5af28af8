//! The OS layer: aligned anonymous mappings, unmapping, purging, and a coarse clock.
//!
//! Nothing here allocates through an allocator; every function is a thin wrapper over
//! `mmap`/`munmap`, so the allocator can call it while holding its own state.

use core::ptr;

/// Maps `size` bytes of zeroed, read-write anonymous memory aligned to `align`
/// (a power of two, at least the page size). Returns null when the OS refuses.
///
/// Over-maps by `align` and trims the unaligned head and tail, so no part of the
/// result is lost to alignment.
pub(crate) fn map_aligned(size: usize, align: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two() && size % crate::config::page_size() == 0);
    let Some(total) = size.checked_add(align) else {
        return ptr::null_mut();
    };
    let raw = map(total);
    if raw.is_null() {
        return raw;
    }
    let start = raw as usize;
    let aligned = (start + align - 1) & !(align - 1);
    let head = aligned - start;
    let tail = total - head - size;
    // SAFETY: [start, start + head) and [aligned + size, start + total) lie inside the mapping
    // just made and are not handed out; unmapping them leaves [aligned, aligned + size) mapped.
    unsafe {
        if head > 0 {
            libc::munmap(raw.cast(), head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    aligned as *mut u8
}

/// Maps `size` bytes of zeroed, read-write anonymous memory. Returns null when the OS refuses.
pub(crate) fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with a null hint touches no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

/// Unmaps `[ptr, ptr + size)`.
///
/// # Safety
/// The range must have been mapped by [`map`] or [`map_aligned`] and nothing may touch it afterwards.
pub(crate) unsafe fn unmap(ptr: *mut u8, size: usize) {
    // Stale poison must not outlive the mapping (see `asan`).
    crate::asan::unpoison(ptr, size);
    // SAFETY: the caller guarantees the range is ours and dead.
    let rc = unsafe { libc::munmap(ptr.cast(), size) };
    debug_assert_eq!(rc, 0, "munmap failed");
}

/// Gives the pages of `[ptr, ptr + size)` back to the OS; the range stays mapped and reads as
/// zeros afterwards.
///
/// `MADV_DONTNEED`, not `MADV_FREE`: the pages leave the resident set at once, so what a user
/// measures (RSS) follows the live set, and a later touch finds zeros, which the caller relies
/// on (a purged pool's header reads as never written). `MADV_FREE` would make the page faults
/// of reuse cheaper, but the decay interval already keeps purges rare, and its pages stay in
/// RSS until the kernel is short of memory, which hides from users what was given back.
///
/// # Safety
/// The range must lie inside a mapping made by [`map`] or [`map_aligned`], page-aligned, and
/// hold nothing anyone will read as data again.
pub(crate) unsafe fn purge(ptr: *mut u8, size: usize) {
    debug_assert!(ptr as usize % crate::config::page_size() == 0);
    // SAFETY: the caller guarantees the range is ours and dead; DONTNEED keeps it mapped.
    let rc = unsafe { libc::madvise(ptr.cast(), size, libc::MADV_DONTNEED) };
    debug_assert_eq!(rc, 0, "madvise failed");
}

/// Milliseconds of a monotonic clock (coarse: read from the vDSO, no system call).
pub(crate) fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; the clock id is a constant Linux supports.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_mappings_are_aligned_zeroed_and_writable() {
        for &align in &[1usize << 16, 1 << 20] {
            let p = map_aligned(1 << 16, align);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            // SAFETY: p maps 64 KiB of read-write memory that we own.
            unsafe {
                assert_eq!(*p.add(12345), 0);
                *p.add(65535) = 7;
                unmap(p, 1 << 16);
            }
        }
    }
}
