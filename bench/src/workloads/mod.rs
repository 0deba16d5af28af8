//! The workloads: classic multithreaded allocator benchmarks, written once, generic over
//! [`BenchAlloc`], one module each, and the helpers they share (random size tables, blocks
//! handed between threads, touching a fresh block). [`crate::catalogue`] lists them.
//!
//! Every workload runs its threads in [`timed`](crate::timing::timed): they wait on a barrier
//! and the clock starts when all are released, and stops at a second barrier once all have
//! finished, so thread creation and exit are not measured. An *operation* is one allocation,
//! always paired with one free (by the same thread or another, as the workload says). Every
//! allocated block is written (at least its first word) so no allocator can hand out untouched
//! memory. Everything a workload allocates is freed before it returns.

use std::alloc::{handle_alloc_error, Layout};
use std::hint::black_box;

use crate::allocs::BenchAlloc;

mod cache_scratch;
mod fragmentation;
mod larson;
mod pairs;
mod pytrace;
mod threadtest;
mod xmalloc;

pub use cache_scratch::cache_scratch;
pub use fragmentation::fragmentation;
pub use larson::larson;
pub use pairs::pairs;
pub use pytrace::pytrace;
pub use threadtest::threadtest;
pub use xmalloc::xmalloc;

/// Precomputed random layouts (sizes uniform in `lo..=hi`, alignment 8), so the timed loops
/// pay an indexed load instead of a random draw.
pub struct SizeTable(Vec<Layout>);

impl SizeTable {
    const LEN: usize = 4096;

    /// A table of random sizes in `lo..=hi` (`1 <= lo <= hi`), the same for the same `seed`.
    pub fn new(seed: u64, lo: usize, hi: usize) -> SizeTable {
        assert!(1 <= lo && lo <= hi);
        let mut rng = fastrand::Rng::with_seed(seed);
        SizeTable(
            (0..Self::LEN)
                .map(|_| Layout::from_size_align(rng.usize(lo..=hi), 8).expect("small layout"))
                .collect(),
        )
    }

    /// The `k`-th layout (the table repeats every 4096 entries).
    #[inline(always)]
    pub fn get(&self, k: u64) -> Layout {
        self.0[k as usize & (Self::LEN - 1)]
    }
}

/// A live block and the layout it was allocated with.
struct Block {
    ptr: *mut u8,
    layout: Layout,
}

/// Blocks handed between threads.
struct Blocks(Vec<Block>);

// SAFETY: a block is owned by whoever holds its `Block`; it is used by one thread at a time
// and the allocators under test accept frees from any thread.
unsafe impl Send for Blocks {}

/// Writes the first word of a block (the first byte of blocks under 8 bytes).
///
/// # Safety
/// `p` is a live block of at least `layout.size()` bytes, aligned to `layout.align()` (>= 8
/// when the size is >= 8).
#[inline(always)]
unsafe fn touch(p: *mut u8, layout: Layout, v: u64) {
    if layout.size() >= 8 {
        // SAFETY: at least 8 bytes, aligned to 8 (caller's contract).
        unsafe { (p as *mut u64).write(v) }
    } else {
        // SAFETY: at least 1 byte.
        unsafe { p.write(v as u8) }
    }
}

/// Reads what [`touch`] wrote.
///
/// # Safety
/// As [`touch`], and the block was touched.
#[inline(always)]
unsafe fn read_first(p: *const u8, layout: Layout) -> u64 {
    if layout.size() >= 8 {
        // SAFETY: at least 8 initialised bytes, aligned to 8 (caller's contract).
        unsafe { (p as *const u64).read() }
    } else {
        // SAFETY: at least 1 initialised byte.
        u64::from(unsafe { p.read() })
    }
}

/// Allocates `layout` from `a` and touches the block; aborts through `handle_alloc_error` on
/// exhaustion.
///
/// # Safety
/// `layout` has a non-zero size and an alignment of at least 8 when its size is >= 8.
#[inline(always)]
unsafe fn alloc_touch<A: BenchAlloc>(a: &A, layout: Layout, v: u64) -> *mut u8 {
    // SAFETY: non-zero size (caller's contract).
    let p = unsafe { a.alloc(layout) };
    if p.is_null() {
        handle_alloc_error(layout);
    }
    // SAFETY: p is a fresh block for layout.
    unsafe { touch(p, layout, v) };
    // The write must happen: the block escapes.
    black_box(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stay_in_range_and_follow_the_seed() {
        let t = SizeTable::new(3, 257, 512);
        assert!((0..4096).all(|k| (257..=512).contains(&t.get(k).size())));
        let sizes = |seed| {
            let t = SizeTable::new(seed, 1, 512);
            (0..4096).map(|k| t.get(k).size()).collect::<Vec<_>>()
        };
        assert_eq!(sizes(9), sizes(9));
        assert_ne!(sizes(9), sizes(10));
    }
}
