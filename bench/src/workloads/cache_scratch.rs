//! `cache-scratch`: passive false sharing (Hoard's cache-scratch): workers free objects the
//! main thread allocated side by side, then allocate and write objects of the same size.

use std::alloc::Layout;

use crate::allocs::BenchAlloc;
use crate::timing::{timed, Outcome, Params};
use crate::workloads::{alloc_touch, Block, Blocks};

/// Bytes per object in `cache-scratch`.
const SCRATCH_SIZE: usize = 8;
/// Writes to each object in `cache-scratch`.
const SCRATCH_WRITES: u64 = 64;

/// `cache-scratch`: the spawning thread allocates one small object per worker (adjacent, so
/// in shared cache lines); each worker frees its object, then allocates, writes and frees an
/// object of the same size repeatedly. An allocator that hands a worker memory freed by another
/// (the main thread's neighbours) makes the workers write to shared cache lines.
pub fn cache_scratch<A: BenchAlloc>(a: &A, p: &Params) -> Outcome {
    let layout = Layout::from_size_align(SCRATCH_SIZE, 8).expect("small layout");
    let firsts: Vec<Blocks> = (0..p.threads)
        .map(|i| {
            // SAFETY: 8 bytes, alignment 8.
            let ptr = unsafe { alloc_touch(a, layout, i as u64) };
            Blocks(vec![Block { ptr, layout }])
        })
        .collect();
    let (elapsed, done) = timed(p.budget, firsts, |_, first, gate| {
        for b in first.0 {
            // SAFETY: allocated by the spawning thread with this layout, freed once, here.
            unsafe { a.dealloc(b.ptr, b.layout) };
        }
        let mut done = 0u64;
        loop {
            let n = gate.next(done, 16);
            if n == 0 {
                return done;
            }
            for _ in 0..n {
                // SAFETY: 8 bytes, alignment 8; the writes stay in the block; freed once.
                unsafe {
                    let q = alloc_touch(a, layout, 0) as *mut u64;
                    for w in 0..SCRATCH_WRITES {
                        q.write_volatile(w);
                    }
                    a.dealloc(q as *mut u8, layout);
                }
            }
            done += n;
        }
    });
    Outcome {
        ops: done.iter().sum(),
        elapsed,
    }
}
