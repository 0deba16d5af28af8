//! Stress tests of both modes: many threads, random sizes, cross-thread frees through
//! channels, every block filled with a pattern derived from its address and checked when
//! freed; afterwards nothing is in use and the arenas have gone back (one kept).
//!
//! `FTMALLOC_STRESS_OPS` sets the operations per thread (default 1,000,000, as the free-threaded
//! issue asks; CI uses the default).

use ftmalloc::{Allocator, Mode};
use std::alloc::Layout;
use std::sync::mpsc;
use std::sync::Barrier;

const THREADS: usize = 8;

fn ops() -> usize {
    match std::env::var("FTMALLOC_STRESS_OPS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("FTMALLOC_STRESS_OPS={v:?} is not a number of operations")),
        Err(_) => 1_000_000,
    }
}

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// 256 rows of 512 bytes: row `b` is the pattern of blocks whose address gives byte `b`.
fn patterns() -> Vec<[u8; 512]> {
    (0..256)
        .map(|b| {
            let mut row = [0u8; 512];
            for (i, x) in row.iter_mut().enumerate() {
                *x = (b as u8).wrapping_add(i as u8).rotate_left(3);
            }
            row
        })
        .collect()
}

fn pattern_of(addr: usize) -> usize {
    ((addr >> 4) ^ (addr >> 12)) & 0xff
}

/// Fills a fresh block.
///
/// # Safety
/// `p` must point to `size` writable bytes.
unsafe fn fill(p: *mut u8, size: usize, pats: &[[u8; 512]]) {
    // SAFETY: per the contract.
    unsafe { std::ptr::copy_nonoverlapping(pats[pattern_of(p as usize)].as_ptr(), p, size) };
}

/// Checks a block before it is freed.
///
/// # Safety
/// `p` must point to `size` readable bytes.
unsafe fn verify(p: *mut u8, size: usize, pats: &[[u8; 512]]) {
    // SAFETY: per the contract.
    let got = unsafe { std::slice::from_raw_parts(p, size) };
    assert!(
        got == &pats[pattern_of(p as usize)][..size],
        "block {p:p} ({size} bytes) was overwritten while live"
    );
}

fn stress(mode: Mode) {
    let a = Allocator::new(mode);
    let pats = patterns();
    let ops = ops();
    let barrier = Barrier::new(THREADS);
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| mpsc::channel::<Vec<(usize, usize)>>())
        .unzip();
    std::thread::scope(|s| {
        for (t, rx) in rxs.into_iter().enumerate() {
            let tx = txs[(t + 1) % THREADS].clone();
            let (a, pats, barrier) = (&a, &pats, &barrier);
            s.spawn(move || {
                let mut tc = a.thread_cache().expect("cache slot");
                let mut rng = fastrand::Rng::with_seed(
                    0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1234_5678),
                );
                let mut live: Vec<(usize, usize)> = Vec::new();
                let mut outbox = Vec::new();
                let free_remote = |tc: &mut ftmalloc::ThreadCache<'_>,
                                   batch: Vec<(usize, usize)>| {
                    for (p, size) in batch {
                        // SAFETY: a live block handed over by another thread; freed once here.
                        unsafe {
                            verify(p as *mut u8, size, pats);
                            tc.dealloc(p as *mut u8, lay(size));
                        }
                    }
                };
                barrier.wait();
                for _ in 0..ops {
                    let r = rng.u64(..);
                    if live.len() < 64 || (r & 1 == 0 && live.len() < 4096) {
                        let size = 1 + (r >> 8) as usize % 512;
                        // SAFETY: non-zero layout; the block is filled before anyone reads it.
                        let p = unsafe { tc.alloc(lay(size)) };
                        assert!(!p.is_null());
                        // SAFETY: fresh block of `size` bytes.
                        unsafe { fill(p, size, pats) };
                        live.push((p as usize, size));
                    } else {
                        let (p, size) = live.swap_remove((r >> 20) as usize % live.len());
                        if r & 2 == 0 {
                            outbox.push((p, size));
                            if outbox.len() == 64 {
                                tx.send(std::mem::take(&mut outbox)).unwrap();
                            }
                        } else {
                            // SAFETY: live block, freed once.
                            unsafe {
                                verify(p as *mut u8, size, pats);
                                tc.dealloc(p as *mut u8, lay(size));
                            }
                        }
                    }
                    if r & 0xff == 0 {
                        while let Ok(batch) = rx.try_recv() {
                            free_remote(&mut tc, batch);
                        }
                    }
                }
                // Hand over half of what is left too, free the rest, then drain the inbox.
                for (i, b) in live.drain(..).enumerate() {
                    if i % 2 == 0 {
                        outbox.push(b);
                    } else {
                        // SAFETY: live block, freed once.
                        unsafe {
                            verify(b.0 as *mut u8, b.1, pats);
                            tc.dealloc(b.0 as *mut u8, lay(b.1));
                        }
                    }
                }
                tx.send(outbox).unwrap();
                drop(tx);
                barrier.wait();
                // Every sender has sent its last batch; the ring's senders are dropped at scope
                // end, so drain what is queued now.
                while let Ok(batch) = rx.try_recv() {
                    free_remote(&mut tc, batch);
                }
                drop(tc);
            });
        }
        drop(txs);
    });
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0, "{s}");
    assert_eq!(s.total(), s.mapped_bytes());
    a.trim();
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0, "{s}");
    assert!(
        s.counters.current <= 1,
        "arenas left mapped after everything was freed:\n{s}"
    );
    assert_eq!(s.pools_in_use(), 0, "{s}");
}

#[test]
fn stress_free_threaded() {
    stress(Mode::FreeThreaded);
}

#[test]
fn stress_gil() {
    stress(Mode::Gil);
}

/// 2,000 short-lived threads allocate through the shared heap, hand half their blocks to a
/// survivor and exit. Thread caches are reused, arenas stay bounded, every block is reusable.
#[test]
fn thread_churn() {
    for &name in Mode::NAMES {
        let a = Allocator::new(Mode::from_name(name).unwrap());
        let pats = patterns();
        let (tx, rx) = mpsc::channel::<Vec<(usize, usize)>>();
        std::thread::scope(|s| {
            let survivor = s.spawn(|| {
                let mut n = 0;
                for batch in rx {
                    for (p, size) in batch {
                        // SAFETY: live block handed over by an exited thread; freed once.
                        unsafe {
                            verify(p as *mut u8, size, &pats);
                            a.dealloc(p as *mut u8, lay(size));
                        }
                        n += 1;
                    }
                }
                n
            });
            for wave in 0..20 {
                std::thread::scope(|w| {
                    for t in 0..100 {
                        let (a, pats, tx) = (&a, &pats, tx.clone());
                        w.spawn(move || {
                            let mut handed = Vec::new();
                            for i in 0..40 {
                                let size = 1 + (wave * 131 + t * 17 + i * 29) % 512;
                                // SAFETY: non-zero layout; filled at once.
                                let p = unsafe { a.alloc(lay(size)) };
                                // SAFETY: fresh block.
                                unsafe { fill(p, size, pats) };
                                if i % 2 == 0 {
                                    handed.push((p as usize, size));
                                } else {
                                    // SAFETY: live block, freed once by its owner.
                                    unsafe {
                                        verify(p, size, pats);
                                        a.dealloc(p, lay(size));
                                    }
                                }
                            }
                            tx.send(handed).unwrap();
                        });
                    }
                });
            }
            drop(tx);
            assert_eq!(survivor.join().unwrap(), 2_000 * 20);
        });
        let s = a.stats();
        assert_eq!(s.blocks_in_use(), 0, "{name}: {s}");
        // 100 threads at a time with at most 32 classes each is a bounded set of pools; a leak
        // per thread would need 2,000 threads' worth.
        assert!(
            s.counters.highwater <= 64,
            "{name}: arenas grew with thread count:\n{s}"
        );
        // Every block is reusable: allocate a full arena's worth of the largest class.
        let g = *a.geometry();
        let n = g.blocks_per_pool(g.num_classes - 1) * g.pools_per_arena;
        // SAFETY: allocated, then freed once each.
        let ps: Vec<_> = (0..n).map(|_| unsafe { a.alloc(lay(512)) }).collect();
        for p in ps {
            // SAFETY: live block.
            unsafe { a.dealloc(p, lay(512)) };
        }
        assert_eq!(a.stats().blocks_in_use(), 0);
    }
}
