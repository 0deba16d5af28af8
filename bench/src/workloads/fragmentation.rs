//! `fragmentation`: cycles of many small blocks, most freed at random, then larger blocks of
//! other size classes: the fragmentation pattern of long-running CPython (survivors pin
//! pools); its peak and retained RSS are the point.

use crate::allocs::BenchAlloc;
use crate::timing::{timed, Budget, Outcome, Params};
use crate::workloads::{alloc_touch, Block, Blocks, SizeTable};

/// Small blocks per cycle of `fragmentation` (the large ones are half as many).
const FRAG_CYCLE: usize = 65_536;

/// `fragmentation`: each thread runs cycles of: allocate C blocks of 1..=256 bytes; free 90%
/// of them, chosen at random (the survivors are scattered over every pool); allocate C/2
/// blocks of 257..=512 bytes (other size classes, which cannot reuse the holes); free all.
/// Peak RSS shows how much the holes cost; retained RSS after the run shows what the allocator
/// keeps.
pub fn fragmentation<A: BenchAlloc>(a: &A, p: &Params) -> Outcome {
    let cycle = match p.budget {
        Budget::Ops(n) => ((n * 2 / 3) as usize).clamp(16, FRAG_CYCLE),
        Budget::Time(_) => FRAG_CYCLE,
    };
    let states: Vec<(SizeTable, SizeTable, fastrand::Rng, Blocks, Blocks)> = (0..p.threads)
        .map(|i| {
            let i = i as u64;
            (
                SizeTable::new(p.seed_for(3 * i), 1, 256),
                SizeTable::new(p.seed_for(3 * i + 1), 257, 512),
                fastrand::Rng::with_seed(p.seed_for(3 * i + 2)),
                Blocks(Vec::with_capacity(cycle)),
                Blocks(Vec::with_capacity(cycle / 2)),
            )
        })
        .collect();
    let per_cycle = (cycle + cycle / 2) as u64;
    let (elapsed, done) = timed(
        p.budget,
        states,
        |_, (small, large, mut rng, mut first, mut second), gate| {
            let mut done = 0u64;
            while gate.next(done, per_cycle) > 0 {
                for k in done..done + cycle as u64 {
                    let layout = small.get(k);
                    // SAFETY: table layouts have sizes >= 1 and alignment 8.
                    let ptr = unsafe { alloc_touch(a, layout, k) };
                    first.0.push(Block { ptr, layout });
                }
                first.0.retain(|b| {
                    let keep = rng.u8(..10) == 0;
                    if !keep {
                        // SAFETY: live with b.layout; dropped from the list, so freed once.
                        unsafe { a.dealloc(b.ptr, b.layout) };
                    }
                    keep
                });
                for k in done..done + (cycle / 2) as u64 {
                    let layout = large.get(k);
                    // SAFETY: table layouts have sizes >= 1 and alignment 8.
                    let ptr = unsafe { alloc_touch(a, layout, k) };
                    second.0.push(Block { ptr, layout });
                }
                for b in first.0.drain(..).chain(second.0.drain(..)) {
                    // SAFETY: every listed block is live with its layout; freed once.
                    unsafe { a.dealloc(b.ptr, b.layout) };
                }
                done += per_cycle;
            }
            done
        },
    );
    Outcome {
        ops: done.iter().sum(),
        elapsed,
    }
}
