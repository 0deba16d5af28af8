//! `pairs`: each thread allocates, touches and frees one block at a time, random sizes
//! 1..=512 (the malloc/free pair microbenchmark: the allocator's fast path).

use crate::allocs::BenchAlloc;
use crate::timing::{timed, Outcome, Params, CHUNK};
use crate::workloads::{alloc_touch, SizeTable};

/// `pairs`: allocate, touch, free, at once; random sizes 1..=512.
pub fn pairs<A: BenchAlloc>(a: &A, p: &Params) -> Outcome {
    let tables: Vec<SizeTable> = (0..p.threads)
        .map(|i| SizeTable::new(p.seed_for(i as u64), 1, 512))
        .collect();
    let (elapsed, done) = timed(p.budget, tables, |_, sizes, gate| {
        let mut done = 0u64;
        loop {
            let n = gate.next(done, CHUNK);
            if n == 0 {
                return done;
            }
            for k in done..done + n {
                let l = sizes.get(k);
                // SAFETY: table layouts have sizes >= 1 and alignment 8; the block is freed
                // once, with its layout.
                unsafe {
                    let q = alloc_touch(a, l, k);
                    a.dealloc(q, l);
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
