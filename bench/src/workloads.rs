//! The workloads: classic multithreaded allocator benchmarks, written once, generic over
//! [`BenchAlloc`], and listed in [`WORKLOADS`].
//!
//! Every workload spawns its threads first; they wait on a [`Barrier`] and the clock starts when
//! all are released, and stops at a second barrier once all have finished, so thread creation
//! and exit are not measured. An *operation* is one allocation, always paired with one free
//! (by the same thread or another, as the workload says). Every allocated block is written
//! (at least its first word) so no allocator can hand out untouched memory. Everything a
//! workload allocates is freed before it returns.
//!
//! This file is shared with the criterion benches of the root crate (`benches/fastpath.rs`
//! includes it with `#[path]`, together with `allocs.rs`).
//!
//! Adding a workload is one function generic over [`BenchAlloc`] and one entry in
//! [`WORKLOADS`].

use std::alloc::{handle_alloc_error, Layout};
use std::hint::black_box;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crate::allocs::{with_heap, BenchAlloc, Heap};

/// A workload of the registry.
#[derive(Debug)]
pub struct Workload {
    /// Name on the command line, in CSV and in file names.
    pub name: &'static str,
    /// One line on what each thread does.
    pub describe: &'static str,
    /// The classic benchmark it follows.
    pub classic: &'static str,
    /// Runs it on a heap; returns the operations done and the measured time.
    pub run: fn(&Heap, &Params) -> Outcome,
}

/// Every workload, in the order the default suite runs them. One entry per workload.
pub static WORKLOADS: &[Workload] = &[
    Workload {
        name: "pairs",
        describe: "each thread allocates and immediately frees, random sizes 1..=512",
        classic: "the malloc/free pair microbenchmark (the allocator's fast path)",
        run: |h, p| with_heap!(h, a => pairs(a, p)),
    },
    Workload {
        name: "threadtest",
        describe: "each thread allocates a batch of 1000 blocks (1..=512 B), then frees them all",
        classic: "Hoard's threadtest (Berger et al., ASPLOS 2000)",
        run: |h, p| with_heap!(h, a => threadtest(a, p)),
    },
    Workload {
        name: "larson",
        describe: "each thread replaces random blocks of a 1000-slot array; \
                   arrays pass to new threads 10 times, so blocks die on other threads",
        classic: "Larson & Krishnan's server benchmark (ISMM 1998)",
        run: |h, p| with_heap!(h, a => larson(a, p)),
    },
    Workload {
        name: "xmalloc",
        describe: "N producer threads allocate (1..=512 B), N consumer threads free, \
                   batches of 256 through channels: every free is remote",
        classic: "xmalloc-test (Lever & Boreham, 2000)",
        run: |h, p| with_heap!(h, a => xmalloc(a, p)),
    },
    Workload {
        name: "cache-scratch",
        describe: "the main thread allocates one 8-byte object per thread; each thread frees \
                   it, then allocates 8 B, writes it 64 times, frees, repeatedly",
        classic: "Hoard's cache-scratch (passive false sharing)",
        run: |h, p| with_heap!(h, a => cache_scratch(a, p)),
    },
    Workload {
        name: "pytrace",
        describe: "replays a recorded CPython allocation trace (bench/pytrace): sizes, lifetimes \
                   and the thread that frees each object, trace threads spread over N threads",
        classic: "trace-driven replay of a real CPython run (PYTHONMALLOC=malloc)",
        run: |h, p| with_heap!(h, a => pytrace(a, p)),
    },
    Workload {
        name: "fragmentation",
        describe: "cycles of 64Ki blocks of 1..=256 B, 90% freed scattered, then 32Ki blocks of \
                   257..=512 B; watch peak and retained RSS",
        classic: "the fragmentation pattern of long-running CPython (survivors pin pools)",
        run: |h, p| with_heap!(h, a => fragmentation(a, p)),
    },
];

/// The workload called `name`, if any.
pub fn find(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

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
    fn split(self, parts: u32) -> Budget {
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
    fn seed_for(&self, stream: u64) -> u64 {
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

/// xorshift64: cheap, per thread.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded by a splitmix64 scramble of `seed` (never zero).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (multiply-shift, no division).
    #[inline(always)]
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// Precomputed random layouts (sizes uniform in `lo..=hi`, alignment 8), so the timed loops
/// pay an indexed load instead of a random draw.
pub struct SizeTable(Vec<Layout>);

impl SizeTable {
    const LEN: usize = 4096;

    /// A table of random sizes in `lo..=hi` (`1 <= lo <= hi`).
    pub fn new(seed: u64, lo: usize, hi: usize) -> SizeTable {
        assert!(1 <= lo && lo <= hi);
        let mut rng = Rng::new(seed);
        SizeTable(
            (0..Self::LEN)
                .map(|_| {
                    let size = lo + rng.below(hi - lo + 1);
                    Layout::from_size_align(size, 8).expect("small layout")
                })
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
    fn next(&self, done: u64, chunk: u64) -> u64 {
        match self.limit {
            Some(limit) => chunk.min(limit.saturating_sub(done)),
            None if self.stop.load(Ordering::Relaxed) => 0,
            None => chunk,
        }
    }
}

/// Operations between two looks at the gate in the tight loops.
const CHUNK: u64 = 256;

/// Runs `work(i, states[i], gate)` on `states.len()` new threads, all released at once by a
/// barrier; returns the time from their release to the moment the last one finished, and
/// their results. With a time budget, the gate closes when the time is up. Threads are joined
/// (their thread-local destructors have run) before this returns.
fn timed<S, R, F>(budget: Budget, states: Vec<S>, work: F) -> (Duration, Vec<R>)
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
        let states: Vec<(Blocks, SizeTable, Rng)> = arrays
            .drain(..)
            .enumerate()
            .map(|(i, blocks)| {
                let stream = u64::from(g) * 1024 + i as u64;
                (
                    blocks,
                    SizeTable::new(p.seed_for(stream), 1, 512),
                    Rng::new(p.seed_for(!stream)),
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
                    let b = &mut live.0[rng.below(LARSON_SLOTS)];
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
    let states: Vec<(SizeTable, SizeTable, Rng, Blocks, Blocks)> = (0..p.threads)
        .map(|i| {
            let i = i as u64;
            (
                SizeTable::new(p.seed_for(3 * i), 1, 256),
                SizeTable::new(p.seed_for(3 * i + 1), 257, 512),
                Rng::new(p.seed_for(3 * i + 2)),
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
                    let keep = rng.below(10) == 0;
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

/// The recorded CPython trace (`bench/pytrace/record.sh` regenerates it; format in
/// `bench/pytrace/convert.py`).
static PYTRACE_GZ: &[u8] = include_bytes!("../pytrace/pytrace.bin.gz");

/// One event of a replay thread: allocate or free object `obj` (generation `generation` of its
/// slot within one pass) of `size` bytes.
#[derive(Clone, Copy, Debug)]
struct TraceEvent {
    obj: u32,
    alloc: bool,
    size: u32,
    generation: u32,
}

/// A trace parsed for replay on `threads` threads.
struct Trace {
    /// Per replay thread, its events in the trace's global order.
    per_thread: Vec<Vec<TraceEvent>>,
    /// Allocations of each slot in one pass.
    allocs_per_slot: Vec<u32>,
    /// Allocations in one pass.
    allocs: u64,
}

fn read_varint(data: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = data[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// Decompresses and parses the trace; trace thread `t` replays on thread `t % threads`, and
/// each replay thread keeps the global order of its events, so a replay thread only ever waits
/// for events earlier in that order (no deadlock). Objects still live at the end of the trace
/// are freed by replay thread 0 at the end of each pass.
fn load_trace(threads: usize) -> Trace {
    use std::io::Read;
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(PYTRACE_GZ)
        .read_to_end(&mut data)
        .expect("the embedded pytrace trace is valid gzip");
    assert_eq!(&data[..8], b"FTMPYT01", "not a pytrace trace");
    let slots = u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
    let events = u64::from_le_bytes(data[16..24].try_into().unwrap());
    let mut per_thread = vec![Vec::new(); threads.max(1)];
    let mut allocs_per_slot = vec![0u32; slots];
    let mut live_size = vec![0u32; slots];
    let mut live = vec![false; slots];
    let mut allocs = 0u64;
    let mut at = 24;
    for _ in 0..events {
        let head = data[at];
        at += 1;
        let thread = usize::from(head & 0x7f) % per_thread.len();
        let alloc = head & 0x80 == 0;
        let size = if alloc {
            read_varint(&data, &mut at) as u32
        } else {
            0
        };
        let obj = read_varint(&data, &mut at) as u32;
        let o = obj as usize;
        if alloc {
            let generation = allocs_per_slot[o];
            allocs_per_slot[o] += 1;
            live[o] = true;
            live_size[o] = size;
            allocs += 1;
            per_thread[thread].push(TraceEvent {
                obj,
                alloc,
                size,
                generation,
            });
        } else {
            live[o] = false;
            per_thread[thread].push(TraceEvent {
                obj,
                alloc,
                size: live_size[o],
                generation: allocs_per_slot[o] - 1,
            });
        }
    }
    for o in 0..slots {
        if live[o] {
            per_thread[0].push(TraceEvent {
                obj: o as u32,
                alloc: false,
                size: live_size[o],
                generation: allocs_per_slot[o] - 1,
            });
        }
    }
    Trace {
        per_thread,
        allocs_per_slot,
        allocs,
    }
}

/// `pytrace`: replays the recorded CPython trace, pass after pass until the budget is spent.
/// Each slot has a state word `2 * generation + live`; an allocation waits until its slot's
/// previous incarnation was freed, a free until its incarnation was allocated, so sizes,
/// lifetimes and the freeing thread are those of the recording. An operation is one allocation.
pub fn pytrace<A: BenchAlloc>(a: &A, p: &Params) -> Outcome {
    use std::sync::atomic::{AtomicPtr, AtomicU64};
    let trace = load_trace(p.threads);
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
