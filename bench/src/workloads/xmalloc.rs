//! `xmalloc`: producer threads allocate, consumer threads free, batches through channels:
//! every free is remote (xmalloc-test).

use std::hint::black_box;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use crate::allocs::BenchAlloc;
use crate::timing::{timed, Outcome, Params};
use crate::workloads::{alloc_touch, read_first, Block, Blocks, SizeTable};

/// Blocks per batch handed from producer to consumer in `xmalloc`.
const XMALLOC_BATCH: u64 = 256;
/// Batches in flight per producer/consumer pair.
const XMALLOC_DEPTH: usize = 8;

/// A thread of `xmalloc`.
enum XmallocRole {
    Producer {
        to: SyncSender<Blocks>,
        empties: Receiver<Blocks>,
        sizes: SizeTable,
    },
    Consumer {
        from: Receiver<Blocks>,
        empties: Sender<Blocks>,
    },
}

/// `xmalloc`: `threads` producers allocate and touch blocks and send them in batches to their
/// consumer, which reads and frees them (every free is remote). Emptied batch vectors go back
/// to the producer, so the transfer allocates nothing in the steady state. Operations are the
/// producers' allocations; the clock stops when the consumers have freed everything.
pub fn xmalloc<A: BenchAlloc>(a: &A, p: &Params) -> Outcome {
    let mut states = Vec::with_capacity(2 * p.threads);
    for i in 0..p.threads {
        let (to, from) = mpsc::sync_channel(XMALLOC_DEPTH);
        let (back, empties) = mpsc::channel();
        states.push(XmallocRole::Producer {
            to,
            empties,
            sizes: SizeTable::new(p.seed_for(i as u64), 1, 512),
        });
        states.push(XmallocRole::Consumer {
            from,
            empties: back,
        });
    }
    let (elapsed, done) = timed(p.budget, states, |_, role, gate| match role {
        XmallocRole::Producer { to, empties, sizes } => {
            let mut done = 0u64;
            loop {
                let n = gate.next(done, XMALLOC_BATCH);
                if n == 0 {
                    return done;
                }
                let mut batch = empties
                    .try_recv()
                    .unwrap_or_else(|_| Blocks(Vec::with_capacity(XMALLOC_BATCH as usize)));
                for k in done..done + n {
                    let layout = sizes.get(k);
                    // SAFETY: table layouts have sizes >= 1 and alignment 8.
                    let ptr = unsafe { alloc_touch(a, layout, k) };
                    batch.0.push(Block { ptr, layout });
                }
                to.send(batch).expect("the consumer outlives its producer");
                done += n;
            }
        }
        XmallocRole::Consumer { from, empties } => {
            let mut sum = 0u64;
            while let Ok(mut batch) = from.recv() {
                for b in batch.0.drain(..) {
                    // SAFETY: the producer touched b and handed it over; it is live with
                    // b.layout and freed once, here.
                    unsafe {
                        sum = sum.wrapping_add(read_first(b.ptr, b.layout));
                        a.dealloc(b.ptr, b.layout);
                    }
                }
                // The producer may be gone; then the vector is simply dropped.
                let _ = empties.send(batch);
            }
            black_box(sum);
            0
        }
    });
    Outcome {
        ops: done.iter().sum(),
        elapsed,
    }
}
