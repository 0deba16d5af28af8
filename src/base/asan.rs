//! AddressSanitizer annotations of pool blocks, compiled in by the `asan` feature.
//!
//! ASan knows nothing of memory we `mmap`: without these annotations every byte of an arena is
//! "addressable" to it, so a use of a freed pool block goes unseen. With the feature (which
//! `.ci/sanitize address` and the `heap_model` fuzz target turn on; it links only in a build with
//! `-Zsanitizer=address`), outside debug mode:
//!
//! - a block handed out is unpoisoned whole (its size class);
//! - a block being freed is poisoned, except its first word, before it is published to any free
//!   list (the local list, a remote list, an abandoned pool), so the owner that takes it again
//!   and unpoisons it is ordered after the poisoning by the same release/acquire edge that
//!   hands the block over. The first word stays addressable because the free lists (and remote
//!   frees from other threads) write their links there;
//! - an arena is unpoisoned whole before it is unmapped, so the next mapping at that address
//!   does not inherit stale poison.
//!
//! Debug mode is left alone: its own fill and guard checks report those errors, with the
//! pool-level message `tests/detect.rs` expects. Without the feature every function here is an
//! empty inline function.

#[cfg(feature = "asan")]
extern "C" {
    fn __asan_poison_memory_region(addr: *const core::ffi::c_void, size: usize);
    fn __asan_unpoison_memory_region(addr: *const core::ffi::c_void, size: usize);
}

/// Marks `[addr, addr + len)` addressable.
#[inline(always)]
pub(crate) fn unpoison(addr: *const u8, len: usize) {
    #[cfg(feature = "asan")]
    // SAFETY: the ASan runtime (linked whenever the feature is on, see Cargo.toml) writes only its
    // shadow memory for the range; it reads and writes nothing inside `[addr, addr + len)`.
    unsafe {
        __asan_unpoison_memory_region(addr.cast(), len)
    };
    #[cfg(not(feature = "asan"))]
    let _ = (addr, len);
}

/// Marks a block of `size` bytes being freed unaddressable, except its first (link) word.
#[inline(always)]
pub(crate) fn poison_freed(block: *const u8, size: usize) {
    #[cfg(feature = "asan")]
    {
        let word = core::mem::size_of::<usize>();
        // SAFETY: `block` starts a pool block of `size >= 16` bytes (the smallest class), so
        // `block + word` stays inside it; the ASan runtime writes only its shadow memory.
        unsafe { __asan_poison_memory_region(block.add(word).cast(), size - word) };
    }
    #[cfg(not(feature = "asan"))]
    let _ = (block, size);
}
