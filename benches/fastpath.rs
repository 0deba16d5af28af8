//! Criterion benches: ftmalloc (GIL and free-threaded modes) against the system allocator,
//! mimalloc and jemalloc, every allocator in the same group.
//!
//! - `pair/<size>`: one thread, allocate and free one block of 16, 64, 256 or 512 bytes;
//! - `batch/1000x64`: one thread, allocate 1000 blocks of 64 bytes, then free them;
//! - `ring/1024`: one thread keeps 1024 blocks; each step frees the oldest and allocates one of
//!   a pseudo-random size in 16..=512 (the program `.ci/count` counts, `bench/count/ring.c`);
//! - `pairs/all-classes`: each step allocates `16 + (i*16) % 512` bytes, writes and frees it
//!   (`bench/count/pairs.c`); these two also on the process-wide heap in free-threaded mode
//!   (`ft-process`: `FtMalloc`, whose fast paths `Allocator` instances do not take);
//! - `mt/<workload>`: the comparison harness's multithreaded workloads (`bench/src`), 2 threads,
//!   timed with `iter_custom` from the workload's own barriers (thread creation excluded).
//!
//! `cargo bench --bench fastpath` (a few minutes on 2 cores); `cargo bench --bench fastpath --
//! mt/` runs one family. The bench belongs to the harness package (`bench/Cargo.toml`) and
//! runs the workloads of its library, `ftmalloc_bench`, so the numbers agree with
//! `cargo run --release`.

use std::alloc::{handle_alloc_error, Layout};
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use ftmalloc_bench::allocs::{AllocName, BenchAlloc, Heap};
use ftmalloc_bench::catalogue::WORKLOADS;
use ftmalloc_bench::timing::{Budget, Params};
use ftmalloc_bench::with_heap;

/// One instance of every allocator.
fn heaps() -> Vec<(AllocName, Heap)> {
    AllocName::ALL
        .into_iter()
        .map(|a| (a, a.instantiate()))
        .collect()
}

/// Allocates a block for `layout` (size >= 8, alignment 8) and writes its first word.
///
/// # Safety
/// `layout` has a size of at least 8 and an alignment of 8.
#[inline(always)]
unsafe fn alloc_touch<A: BenchAlloc>(a: &A, layout: Layout) -> *mut u8 {
    // SAFETY: non-zero size (caller's contract).
    let p = unsafe { a.alloc(layout) };
    if p.is_null() {
        handle_alloc_error(layout);
    }
    // SAFETY: a fresh block of at least 8 bytes, aligned to 8.
    unsafe { p.cast::<u64>().write(1) };
    black_box(p)
}

fn pair<A: BenchAlloc>(a: &A, layout: Layout) {
    // SAFETY: the layouts used have sizes >= 8 and alignment 8; the block is freed once.
    unsafe {
        let p = alloc_touch(a, layout);
        a.dealloc(p, layout);
    }
}

fn batch<A: BenchAlloc>(a: &A, layout: Layout, live: &mut Vec<*mut u8>) {
    for _ in 0..live.capacity() {
        // SAFETY: as in `pair`.
        live.push(unsafe { alloc_touch(a, layout) });
    }
    for p in live.drain(..) {
        // SAFETY: every pointer was allocated above with `layout` and is freed once.
        unsafe { a.dealloc(p, layout) };
    }
}

/// One step of `ring/1024`: frees the oldest block and allocates a new one (16..=512 bytes,
/// from an xorshift over `x`, as `bench/count/ring.c`).
fn ring_step<A: BenchAlloc>(a: &A, ring: &mut [(*mut u8, usize)], i: &mut usize, x: &mut u32) {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    let size = 16 + (*x % 32) as usize * 16;
    let slot = &mut ring[*i & (ring.len() - 1)];
    *i += 1;
    if !slot.0.is_null() {
        // SAFETY: allocated below with this size and alignment 8, freed once.
        unsafe { a.dealloc(slot.0, Layout::from_size_align_unchecked(slot.1, 8)) };
    }
    // SAFETY: size >= 16, alignment 8.
    let p = unsafe { alloc_touch(a, Layout::from_size_align_unchecked(size, 8)) };
    *slot = (p, size);
}

/// Frees what a ring still holds.
fn ring_drain<A: BenchAlloc>(a: &A, ring: &mut [(*mut u8, usize)]) {
    for slot in ring.iter_mut() {
        if !slot.0.is_null() {
            // SAFETY: live blocks allocated by `ring_step` with these layouts.
            unsafe { a.dealloc(slot.0, Layout::from_size_align_unchecked(slot.1, 8)) };
            slot.0 = std::ptr::null_mut();
        }
    }
}

fn fast_path(c: &mut Criterion) {
    let heaps = heaps();
    for size in [16usize, 64, 256, 512] {
        let layout = Layout::from_size_align(size, 8).expect("small layout");
        let mut g = c.benchmark_group(format!("pair/{size}"));
        g.throughput(Throughput::Elements(1));
        for (name, heap) in &heaps {
            g.bench_function(
                name.name(),
                |b| with_heap!(heap, a => b.iter(|| pair(a, layout))),
            );
        }
        g.finish();
    }

    // The ring and the pairs also on the process-wide heap in free-threaded mode (`FtMalloc`,
    // the heap `#[global_allocator]` and the drop-in use), whose fast paths instances do not
    // take: the cell `ft-process`. (One mode per process: the bench builds it in ft mode.)
    let mut named: Vec<(String, &Heap)> = heaps
        .iter()
        .map(|(n, h)| (n.name().to_string(), h))
        .collect();
    let process = AllocName::Ft.instantiate_process_wide();
    if let Some(h) = &process {
        named.push(("ft-process".to_string(), h));
    }

    let mut g = c.benchmark_group("ring/1024");
    g.throughput(Throughput::Elements(1));
    for (name, heap) in &named {
        let heap = *heap;
        let mut ring = vec![(std::ptr::null_mut::<u8>(), 0usize); 1024];
        let (mut i, mut x) = (0usize, 12345u32);
        g.bench_function(
            name.as_str(),
            |b| with_heap!(heap, a => b.iter(|| ring_step(a, &mut ring, &mut i, &mut x))),
        );
        with_heap!(heap, a => ring_drain(a, &mut ring));
    }
    g.finish();

    let mut g = c.benchmark_group("pairs/all-classes");
    g.throughput(Throughput::Elements(1));
    for (name, heap) in &named {
        let heap = *heap;
        let mut i = 0usize;
        g.bench_function(name.as_str(), |b| {
            with_heap!(heap, a => b.iter(|| {
                i = i.wrapping_add(1);
                let layout = Layout::from_size_align(16 + (i * 16) % 512, 8).expect("small");
                pair(a, layout)
            }))
        });
    }
    g.finish();

    let layout = Layout::from_size_align(64, 8).expect("small layout");
    let mut g = c.benchmark_group("batch/1000x64");
    g.throughput(Throughput::Elements(1000));
    for (name, heap) in &heaps {
        let mut live = Vec::with_capacity(1000);
        g.bench_function(
            name.name(),
            |b| with_heap!(heap, a => b.iter(|| batch(a, layout, &mut live))),
        );
    }
    g.finish();
}

/// Worker threads of the multithreaded benches.
const MT_THREADS: usize = 2;
/// Operations per thread and iteration of the multithreaded benches.
const MT_OPS: u64 = 20_000;

fn multithreaded(c: &mut Criterion) {
    let heaps = heaps();
    let params = Params {
        threads: MT_THREADS,
        budget: Budget::Ops(MT_OPS),
        seed: 0x5EED,
    };
    for w in WORKLOADS {
        let mut g = c.benchmark_group(format!("mt/{}", w.name));
        // The operations of one iteration, from a run outside the measurement (it also warms
        // the heap up).
        let ops = (w.run)(&heaps[0].1, &params).ops;
        g.throughput(Throughput::Elements(ops));
        for (name, heap) in &heaps {
            g.bench_function(BenchmarkId::new(name.name(), MT_THREADS), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| (w.run)(heap, &params).elapsed)
                        .sum::<Duration>()
                })
            });
        }
        g.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = fast_path, multithreaded
}
criterion_main!(benches);
