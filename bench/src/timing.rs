//! The timing harness: what a run is given ([`Params`], [`Budget`]) and what it measures
//! ([`Outcome`]), and [`timed`], which runs the worker threads between two barriers so that
//! thread creation and exit are not measured, with the [`Gate`] that tells workers when to
//! stop.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

/// How much work each thread does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// This many operations per (allocating) thread.
    Ops(u64),
    /// Run for this long.
    Time(Duration),
}

impl Budget {
    /// The budget of one of `parts` equal phases.
    pub(crate) fn split(self, parts: u32) -> Budget {
        match self {
            Budget::Ops(n) => Budget::Ops(n.div_ceil(u64::from(parts)).max(1)),
            Budget::Time(d) => Budget::Time(d / parts),
        }
    }
}

/// Parameters of one run.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Worker threads (xmalloc runs this many producers and as many consumers).
    pub threads: usize,
    /// Work per thread.
    pub budget: Budget,
    /// Seed of the per-thread random generators.
    pub seed: u64,
}

impl Params {
    /// The seed of random stream `stream` (one per thread, table or phase) of this run.
    pub(crate) fn seed_for(&self, stream: u64) -> u64 {
        self.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// What a run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Operations (allocations, each freed) done by all threads together.
    pub ops: u64,
    /// Time between the start and end barriers (summed over phases).
    pub elapsed: Duration,
}

/// Tells workers how much to do next: a fixed number of operations, or until the main thread
/// says stop.
pub struct Gate {
    stop: AtomicBool,
    limit: Option<u64>,
}

impl Gate {
    fn new(budget: Budget) -> Gate {
        Gate {
            stop: AtomicBool::new(false),
            limit: match budget {
                Budget::Ops(n) => Some(n),
                Budget::Time(_) => None,
            },
        }
    }

    /// How many operations to do next, having done `done` (at most `chunk`); 0 means stop.
    #[inline]
    pub fn next(&self, done: u64, chunk: u64) -> u64 {
        match self.limit {
            Some(limit) => chunk.min(limit.saturating_sub(done)),
            None if self.stop.load(Ordering::Relaxed) => 0,
            None => chunk,
        }
    }
}

/// Operations between two looks at the gate in the tight loops.
pub(crate) const CHUNK: u64 = 256;

/// Runs `work(i, states[i], gate)` on `states.len()` new threads, all released at once by a
/// barrier; returns the time from their release to the moment the last one finished, and
/// their results. With a time budget, the gate closes when the time is up. Threads are joined
/// (their thread-local destructors have run) before this returns.
pub fn timed<S, R, F>(budget: Budget, states: Vec<S>, work: F) -> (Duration, Vec<R>)
where
    S: Send,
    R: Send,
    F: Fn(usize, S, &Gate) -> R + Sync,
{
    let n = states.len();
    let start = Barrier::new(n + 1);
    let end = Barrier::new(n + 1);
    let gate = Gate::new(budget);
    thread::scope(|s| {
        let handles: Vec<_> = states
            .into_iter()
            .enumerate()
            .map(|(i, state)| {
                let (start, end, gate, work) = (&start, &end, &gate, &work);
                s.spawn(move || {
                    start.wait();
                    // A panicking worker still reaches the end barrier; the panic goes on at
                    // the join below.
                    let r = panic::catch_unwind(AssertUnwindSafe(|| work(i, state, gate)));
                    end.wait();
                    r
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        if let Budget::Time(d) = budget {
            thread::sleep(d);
            gate.stop.store(true, Ordering::Relaxed);
        }
        end.wait();
        let elapsed = t0.elapsed();
        let results = handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(Ok(r)) => r,
                Ok(Err(p)) | Err(p) => panic::resume_unwind(p),
            })
            .collect();
        (elapsed, results)
    })
}
