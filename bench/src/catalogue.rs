//! The catalogue: every workload the harness and the criterion benches run, with its name,
//! its one-line description and the classic benchmark it follows, in [`WORKLOADS`].
//!
//! Adding a workload is one module of [`crate::workloads`] with one function generic over
//! [`BenchAlloc`](crate::allocs::BenchAlloc), and one entry here.

use crate::allocs::Heap;
use crate::timing::{Outcome, Params};
use crate::with_heap;
use crate::workloads::{cache_scratch, fragmentation, larson, pairs, pytrace, threadtest, xmalloc};

/// A workload of the catalogue.
#[derive(Debug)]
pub struct Workload {
    /// Name on the command line, in CSV and in file names.
    pub name: &'static str,
    /// One line on what each thread does.
    pub describe: &'static str,
    /// The classic benchmark it follows.
    pub classic: &'static str,
    /// What the thread count N of a cell (`--threads`) counts: the plots' x-axis label.
    pub threads: &'static str,
    /// Runs it on a heap; returns the operations done and the measured time.
    pub run: fn(&Heap, &Params) -> Outcome,
}

/// Every workload, in the order the default suite runs them. One entry per workload.
pub static WORKLOADS: &[Workload] = &[
    Workload {
        name: "pairs",
        describe: "each thread allocates and immediately frees, random sizes 1..=512",
        classic: "the malloc/free pair microbenchmark (the allocator's fast path)",
        threads: "N = worker threads",
        run: |h, p| with_heap!(h, a => pairs(a, p)),
    },
    Workload {
        name: "threadtest",
        describe: "each thread allocates a batch of 1000 blocks (1..=512 B), then frees them all",
        classic: "Hoard's threadtest (Berger et al., ASPLOS 2000)",
        threads: "N = worker threads",
        run: |h, p| with_heap!(h, a => threadtest(a, p)),
    },
    Workload {
        name: "larson",
        describe: "each thread replaces random blocks of a 1000-slot array; \
                   arrays pass to new threads 10 times, so blocks die on other threads",
        classic: "Larson & Krishnan's server benchmark (ISMM 1998)",
        threads: "N = worker threads",
        run: |h, p| with_heap!(h, a => larson(a, p)),
    },
    Workload {
        name: "xmalloc",
        describe: "N producer threads allocate (1..=512 B), N consumer threads free, \
                   batches of 256 through channels: every free is remote",
        classic: "xmalloc-test (Lever & Boreham, 2000)",
        threads: "N = producer threads (plus N consumer threads: 2N threads in all)",
        run: |h, p| with_heap!(h, a => xmalloc(a, p)),
    },
    Workload {
        name: "cache-scratch",
        describe: "the main thread allocates one 8-byte object per thread; each thread frees \
                   it, then allocates 8 B, writes it 64 times, frees, repeatedly",
        classic: "Hoard's cache-scratch (passive false sharing)",
        threads: "N = worker threads (plus the main thread, which allocates their first objects)",
        run: |h, p| with_heap!(h, a => cache_scratch(a, p)),
    },
    Workload {
        name: "pytrace",
        describe: "replays a recorded CPython allocation trace (bench/pytrace): sizes, lifetimes \
                   and the thread that frees each object, trace threads spread over N threads",
        classic: "trace-driven replay of a real CPython run (PYTHONMALLOC=malloc)",
        threads: "N = replaying threads (the trace's threads spread over them)",
        run: |h, p| with_heap!(h, a => pytrace(a, p)),
    },
    Workload {
        name: "fragmentation",
        describe: "cycles of 64Ki blocks of 1..=256 B, 90% freed scattered, then 32Ki blocks of \
                   257..=512 B; watch peak and retained RSS",
        classic: "the fragmentation pattern of long-running CPython (survivors pin pools)",
        threads: "N = worker threads",
        run: |h, p| with_heap!(h, a => fragmentation(a, p)),
    },
];

/// The workload called `name`, if any.
pub fn find(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocs::AllocName;
    use crate::timing::Budget;
    use std::time::Duration;

    #[test]
    fn names_are_unique_and_found() {
        for (i, w) in WORKLOADS.iter().enumerate() {
            assert!(std::ptr::eq(find(w.name).unwrap(), w));
            assert!(WORKLOADS[..i].iter().all(|v| v.name != w.name));
        }
        assert!(find("nope").is_none());
    }

    #[test]
    fn every_workload_runs_on_every_allocator() {
        for name in AllocName::ALL {
            let heap = name.instantiate();
            for w in WORKLOADS {
                let p = Params {
                    threads: 2,
                    budget: Budget::Ops(600),
                    seed: 7,
                };
                let out = (w.run)(&heap, &p);
                assert!(out.ops >= 1200, "{} on {}: {:?}", w.name, name.name(), out);
                assert!(out.elapsed > Duration::ZERO);
            }
            if let Heap::Gil(h) | Heap::Ft(h) = &heap {
                assert_eq!(h.stats().blocks_in_use(), 0, "{} leaked", name.name());
            }
        }
    }

    #[test]
    fn time_budget_stops() {
        let heap = AllocName::System.instantiate();
        let p = Params {
            threads: 2,
            budget: Budget::Time(Duration::from_millis(20)),
            seed: 1,
        };
        let out = (find("xmalloc").unwrap().run)(&heap, &p);
        assert!(out.ops > 0);
        assert!(out.elapsed >= Duration::from_millis(20));
        assert!(out.elapsed < Duration::from_secs(5));
    }
}
