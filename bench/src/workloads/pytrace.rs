//! `pytrace`: replays the recorded CPython allocation trace ([`crate::trace`]) with the sizes,
//! lifetimes and freeing threads of the recording.

use std::alloc::Layout;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;

use crate::allocs::BenchAlloc;
use crate::timing::{timed, Budget, Outcome, Params};
use crate::trace::{self, TraceEvent};
use crate::workloads::{alloc_touch, read_first};

/// `pytrace`: replays the recorded CPython trace, pass after pass until the budget is spent.
/// Each slot has a state word `2 * generation + live`; an allocation waits until its slot's
/// previous incarnation was freed, a free until its incarnation was allocated, so sizes,
/// lifetimes and the freeing thread are those of the recording. An operation is one allocation.
pub fn pytrace<A: BenchAlloc>(a: &A, p: &Params) -> Outcome {
    use std::sync::atomic::{AtomicPtr, AtomicU64};
    let trace = trace::load(p.threads);
    let slots: Vec<(AtomicU64, AtomicPtr<u8>)> = (0..trace.allocs_per_slot.len())
        .map(|_| (AtomicU64::new(0), AtomicPtr::new(std::ptr::null_mut())))
        .collect();
    let layout = |size: u32| Layout::from_size_align(size.max(1) as usize, 8).expect("trace size");
    let pass_gate = Barrier::new(p.threads);
    let go_on = AtomicBool::new(true);
    let allocs = trace.allocs;
    let passes_for_ops = match p.budget {
        Budget::Ops(n) => Some(n.div_ceil(allocs.max(1)).max(1)),
        Budget::Time(_) => None,
    };
    let states: Vec<&Vec<TraceEvent>> = trace.per_thread.iter().collect();
    let (elapsed, done) = timed(p.budget, states, |_, events, gate| {
        let mut pass = 0u64;
        let mut done = 0u64;
        loop {
            for ev in events {
                let (state, ptr) = &slots[ev.obj as usize];
                let base = pass * u64::from(trace.allocs_per_slot[ev.obj as usize]);
                let generation = base + u64::from(ev.generation);
                let l = layout(ev.size);
                if ev.alloc {
                    while state.load(Ordering::Acquire) != 2 * generation {
                        thread::yield_now();
                    }
                    // SAFETY: non-zero size; the block is freed once, by the free event of
                    // this generation.
                    let b = unsafe { alloc_touch(a, l, generation) };
                    ptr.store(b, Ordering::Relaxed);
                    state.store(2 * generation + 1, Ordering::Release);
                    done += 1;
                } else {
                    while state.load(Ordering::Acquire) != 2 * generation + 1 {
                        thread::yield_now();
                    }
                    let b = ptr.load(Ordering::Relaxed);
                    // SAFETY: b is the live block of this generation, allocated with l; freed
                    // once, here.
                    unsafe {
                        black_box(read_first(b, l));
                        a.dealloc(b, l);
                    }
                    state.store(2 * generation + 2, Ordering::Release);
                }
            }
            pass += 1;
            // Every thread agrees on whether another pass runs.
            if pass_gate.wait().is_leader() {
                let more = match passes_for_ops {
                    Some(n) => pass < n,
                    None => gate.next(0, 1) > 0,
                };
                go_on.store(more, Ordering::Relaxed);
            }
            pass_gate.wait();
            if !go_on.load(Ordering::Relaxed) {
                return done;
            }
        }
    });
    Outcome {
        ops: done.iter().sum(),
        elapsed,
    }
}
