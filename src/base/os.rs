//! The OS layer: aligned anonymous mappings, unmapping, purging, and a coarse clock.
//!
//! Nothing here allocates through an allocator; every function is a thin wrapper over
//! `mmap`/`munmap`, so the allocator can call it while holding its own state.

#[cfg(not(miri))]
use core::ptr;

/// Maps `size` bytes of zeroed, read-write anonymous memory aligned to `align`
/// (a power of two, at least the page size). Returns null when the OS refuses.
///
/// Over-maps by `align` and trims the unaligned head and tail, so no part of the
/// result is lost to alignment.
#[cfg(not(miri))]
pub(crate) fn map_aligned(size: usize, align: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two() && size.is_multiple_of(page_size()));
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
    // The mapping is written by its creator (loom: readers must come after; see `crate::base::sync`).
    crate::base::sync::track_mapping(aligned, true);
    aligned as *mut u8
}

/// Maps `size` bytes of zeroed, read-write anonymous memory. Returns null when the OS refuses.
#[cfg(not(miri))]
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
        crate::base::sync::track_mapping(p as usize, true);
        p.cast()
    }
}

/// Unmaps `[ptr, ptr + size)`.
///
/// # Safety
/// The range must have been mapped by [`map`] or [`map_aligned`] and nothing may touch it afterwards.
#[cfg(not(miri))]
pub(crate) unsafe fn unmap(ptr: *mut u8, size: usize) {
    // Stale poison must not outlive the mapping (see `asan`), nor loom's access history; the
    // unmapping itself is a write of the mapping (loom checks its readers came first).
    crate::base::asan::unpoison(ptr, size);
    crate::base::sync::track_mapping(ptr as usize, true);
    crate::base::sync::forget_plain(ptr as usize, size);
    // SAFETY: the caller guarantees the range is ours and dead.
    let rc = keep_errno(|| unsafe { libc::munmap(ptr.cast(), size) });
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
#[cfg(not(miri))]
pub(crate) unsafe fn purge(ptr: *mut u8, size: usize) {
    debug_assert!((ptr as usize).is_multiple_of(page_size()));
    // SAFETY: the caller guarantees the range is ours and dead; DONTNEED keeps it mapped.
    let rc = keep_errno(|| unsafe { libc::madvise(ptr.cast(), size, libc::MADV_DONTNEED) });
    debug_assert_eq!(rc, 0, "madvise failed");
}

/// Milliseconds of a monotonic clock (coarse: read from the vDSO, no system call).
#[cfg(not(miri))]
pub(crate) fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; the clock id is a constant Linux supports.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[cfg(miri)]
pub(crate) use miri_os::{map, map_aligned, now_ms, purge, unmap};

/// The OS layer under Miri, which runs the allocator's unsafe code with its aliasing and
/// data-race checks but cannot split or trim a mapping: ordinary zeroed allocations stand in for
/// mappings (aligned to their size when that is a power of two, as arenas are, else to a page),
/// a purge writes zeros, and the clock is `Instant`.
#[cfg(miri)]
mod miri_os {
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    fn layout(size: usize) -> Layout {
        let page = super::page_size();
        let align = if size.is_power_of_two() && size >= page {
            size
        } else {
            page
        };
        Layout::from_size_align(size, align).expect("a mapping's layout")
    }

    pub(crate) fn map_aligned(size: usize, align: usize) -> *mut u8 {
        let l = layout(size);
        assert!(
            l.align() >= align,
            "Miri's map_aligned: {size} bytes aligned to {align}"
        );
        // SAFETY: a non-zero size.
        unsafe { alloc_zeroed(l) }
    }

    pub(crate) fn map(size: usize) -> *mut u8 {
        // SAFETY: a non-zero size.
        unsafe { alloc_zeroed(layout(size)) }
    }

    /// # Safety
    /// As the real `unmap`.
    pub(crate) unsafe fn unmap(ptr: *mut u8, size: usize) {
        crate::base::sync::forget_plain(ptr as usize, size);
        // SAFETY: allocated by map or map_aligned with this size, so with this layout.
        unsafe { dealloc(ptr, layout(size)) };
    }

    /// # Safety
    /// As the real `purge`.
    pub(crate) unsafe fn purge(ptr: *mut u8, size: usize) {
        // SAFETY: the caller owns the range.
        unsafe { ptr.write_bytes(0, size) };
    }

    pub(crate) fn now_ms() -> u64 {
        use std::cell::UnsafeCell;
        use std::mem::MaybeUninit;
        use std::sync::atomic::{AtomicU8, Ordering};
        use std::time::Instant;
        /// The clock's origin, written once by the first caller.
        struct Origin(UnsafeCell<MaybeUninit<Instant>>);
        // SAFETY: written once, by the caller that moved STATE from 0 to 1, before STATE is 2
        // (release); read only after STATE is seen 2 (acquire).
        unsafe impl Sync for Origin {}
        static ORIGIN: Origin = Origin(UnsafeCell::new(MaybeUninit::uninit()));
        // 0: unset, 1: being written, 2: set. No caller waits for another (the free-threaded
        // path takes no lock, tests/no_lock.rs): one that comes while the origin is being
        // written reads the clock's start, 0 (the clock only paces maintenance passes).
        static STATE: AtomicU8 = AtomicU8::new(0);
        match STATE.load(Ordering::Acquire) {
            // SAFETY: set (see `Origin`).
            2 => unsafe { (*ORIGIN.0.get()).assume_init_ref() }
                .elapsed()
                .as_millis() as u64,
            0 if STATE
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok() =>
            {
                // SAFETY: we moved STATE from 0 to 1: no other thread touches ORIGIN yet.
                unsafe { (*ORIGIN.0.get()).write(Instant::now()) };
                STATE.store(2, Ordering::Release);
                0
            }
            _ => 0,
        }
    }
}

/// Runs `f`, a system call made on a `free` path, keeping the caller's `errno`: `free` must
/// not change it (glibc's own `free` keeps it since 2.33), and only the paths that enter the
/// kernel (`munmap`, `madvise`, GIL mode's futex) could, so the fast path never touches it.
#[inline]
pub(crate) fn keep_errno<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(not(miri))]
    {
        // SAFETY: __errno_location returns this thread's errno slot, valid while it lives.
        let slot = unsafe { libc::__errno_location() };
        // SAFETY: as above.
        let saved = unsafe { *slot };
        let r = f();
        // SAFETY: as above.
        unsafe { *slot = saved };
        r
    }
    #[cfg(miri)]
    f()
}

/// The OS page size (4096 where `sysconf` does not say).
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p <= 0 {
        4096
    } else {
        p as usize
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg_attr(miri, ignore)]
    fn keep_errno_keeps_it_across_a_failing_call() {
        // SAFETY: this thread's errno slot.
        let errno = || unsafe { *libc::__errno_location() };
        // An unaligned address: madvise fails with EINVAL.
        let bad = 3usize as *mut libc::c_void;
        // SAFETY: this thread's errno slot; madvise on a bad address only fails.
        unsafe { *libc::__errno_location() = 1234 };
        let rc = keep_errno(|| unsafe { libc::madvise(bad, 4096, libc::MADV_DONTNEED) });
        assert_eq!((rc, errno()), (-1, 1234));
        // SAFETY: as above.
        let rc = unsafe { libc::madvise(bad, 4096, libc::MADV_DONTNEED) };
        assert_eq!(
            (rc, errno()),
            (-1, libc::EINVAL),
            "the call itself sets errno"
        );
    }

    use super::*;

    #[test]
    // Checks the real mapping's trimming, which Miri's stand-in does not do.
    #[cfg_attr(miri, ignore)]
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
