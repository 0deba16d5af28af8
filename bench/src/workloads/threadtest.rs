//! `threadtest`: each thread allocates a batch of blocks, then frees the batch, repeatedly
//! (Hoard's threadtest).

use crate::allocs::BenchAlloc;
use crate::timing::{timed, Outcome, Params};
use crate::workloads::{alloc_touch, Block, Blocks, SizeTable};

/// Blocks per batch in `threadtest`.
const THREADTEST_BATCH: u64 = 1000;

/// `threadtest`: allocate a batch, free the batch, repeatedly.
pub fn threadtest<A: BenchAlloc>(a: &A, p: &Params) -> Outcome {
    let states: Vec<(SizeTable, Blocks)> = (0..p.threads)
        .map(|i| {
            (
                SizeTable::new(p.seed_for(i as u64), 1, 512),
                Blocks(Vec::with_capacity(THREADTEST_BATCH as usize)),
            )
        })
        .collect();
    let (elapsed, done) = timed(p.budget, states, |_, (sizes, mut live), gate| {
        let mut done = 0u64;
        loop {
            let n = gate.next(done, THREADTEST_BATCH);
            if n == 0 {
                return done;
            }
            for k in done..done + n {
                let layout = sizes.get(k);
                // SAFETY: table layouts have sizes >= 1 and alignment 8.
                let ptr = unsafe { alloc_touch(a, layout, k) };
                live.0.push(Block { ptr, layout });
            }
            for b in live.0.drain(..) {
                // SAFETY: b is live, allocated here with b.layout, freed once.
                unsafe { a.dealloc(b.ptr, b.layout) };
            }
            done += n;
        }
    });
    Outcome {
        ops: done.iter().sum(),
        elapsed,
    }
}
