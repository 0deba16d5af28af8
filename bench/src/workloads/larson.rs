//! `larson`: threads replace random blocks of per-thread arrays that pass to new threads, so
//! blocks die on threads other than their allocator's (Larson & Krishnan's server benchmark).

use std::time::Duration;

use crate::allocs::BenchAlloc;
use crate::timing::{timed, Outcome, Params, CHUNK};
use crate::workloads::{alloc_touch, Block, Blocks, SizeTable};

/// Live blocks per thread in `larson`.
const LARSON_SLOTS: usize = 1000;
/// Times the arrays pass to new threads in `larson`.
const LARSON_GENERATIONS: u32 = 10;

/// `larson`: replace random blocks of a per-thread array; after each of 10 generations the
/// threads exit and the arrays go to new threads (rotated by one), so blocks allocated by one
/// thread are freed by another. The arrays are filled by the spawning thread before timing,
/// as Larson's warm-up does; time is summed over the generations.
pub fn larson<A: BenchAlloc>(a: &A, p: &Params) -> Outcome {
    let fill = SizeTable::new(p.seed_for(u64::MAX), 1, 512);
    let mut arrays: Vec<Blocks> = (0..p.threads)
        .map(|i| {
            Blocks(
                (0..LARSON_SLOTS)
                    .map(|k| {
                        let layout = fill.get((i * LARSON_SLOTS + k) as u64);
                        // SAFETY: table layouts have sizes >= 1 and alignment 8.
                        let ptr = unsafe { alloc_touch(a, layout, k as u64) };
                        Block { ptr, layout }
                    })
                    .collect(),
            )
        })
        .collect();
    let mut total = Outcome {
        ops: 0,
        elapsed: Duration::ZERO,
    };
    for g in 0..LARSON_GENERATIONS {
        let states: Vec<(Blocks, SizeTable, fastrand::Rng)> = arrays
            .drain(..)
            .enumerate()
            .map(|(i, blocks)| {
                let stream = u64::from(g) * 1024 + i as u64;
                (
                    blocks,
                    SizeTable::new(p.seed_for(stream), 1, 512),
                    fastrand::Rng::with_seed(p.seed_for(!stream)),
                )
            })
            .collect();
        let budget = p.budget.split(LARSON_GENERATIONS);
        let (elapsed, results) = timed(budget, states, |_, (mut live, sizes, mut rng), gate| {
            let mut done = 0u64;
            loop {
                let n = gate.next(done, CHUNK);
                if n == 0 {
                    return (live, done);
                }
                for k in done..done + n {
                    let b = &mut live.0[rng.usize(..LARSON_SLOTS)];
                    let layout = sizes.get(k);
                    // SAFETY: b is live with b.layout and is replaced at once; table layouts
                    // have sizes >= 1 and alignment 8.
                    unsafe {
                        a.dealloc(b.ptr, b.layout);
                        b.ptr = alloc_touch(a, layout, k);
                    }
                    b.layout = layout;
                }
                done += n;
            }
        });
        total.elapsed += elapsed;
        for (live, done) in results {
            total.ops += done;
            arrays.push(live);
        }
        arrays.rotate_left(1);
    }
    for live in arrays {
        for b in live.0 {
            // SAFETY: every block of the arrays is live with its layout; freed once.
            unsafe { a.dealloc(b.ptr, b.layout) };
        }
    }
    total
}
