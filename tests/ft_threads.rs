//! Free-threaded mode only: thread churn and debug mode with cross-thread frees.
//!
//! `tests/stress.rs::thread_churn` and `tests/detect.rs::debug_mode_raises_no_false_alarm` run
//! these scenarios in both modes in one test, and `.ci/sanitize thread` has to skip them: without
//! `-Zbuild-std` the GIL mode's `std::sync::Mutex` is invisible to ThreadSanitizer, which then
//! reports every GIL-mode hand-over of a block between threads. These are their free-threaded
//! halves, so TSan still checks them (thread exit, cache inheritance, remote frees, debug-mode
//! fill patterns written on one thread and checked on another). Threads are joined with
//! `JoinHandle::join` (`pthread_join`, which TSan sees) rather than scopes.

mod common;

use ftmalloc::{Allocator, Config, Mode};
use std::alloc::Layout;
use std::sync::{mpsc, Arc};

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn byte_of(p: usize, i: usize) -> u8 {
    ((p >> 4) as u8).wrapping_add(i as u8)
}

/// Fills `size` bytes at `p` with a pattern derived from the address.
fn fill(p: *mut u8, size: usize) {
    for i in 0..size {
        // SAFETY: callers pass a live block of `size` bytes.
        unsafe { *p.add(i) = byte_of(p as usize, i) };
    }
}

fn verify(p: *mut u8, size: usize) {
    for i in 0..size {
        // SAFETY: callers pass a live block of `size` bytes.
        let got = unsafe { *p.add(i) };
        assert_eq!(
            got,
            byte_of(p as usize, i),
            "block {p:p} ({size} B) overwritten"
        );
    }
}

/// Waves of short-lived threads allocate, free half their blocks and hand the other half to a
/// survivor thread, which frees them after their owners exited.
#[test]
fn ft_thread_churn_hands_blocks_to_a_survivor() {
    let a = Arc::new(Allocator::new(Mode::FreeThreaded));
    let (tx, rx) = mpsc::channel::<Vec<(usize, usize)>>();
    let survivor = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || {
            let mut n = 0;
            for batch in rx {
                for (p, size) in batch {
                    verify(p as *mut u8, size);
                    // SAFETY: a live block handed over by an exited thread; freed once.
                    unsafe { a.dealloc(p as *mut u8, lay(size)) };
                    n += 1;
                }
            }
            n
        })
    };
    const WAVES: usize = 10;
    const THREADS: usize = 32;
    for wave in 0..WAVES {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (a, tx) = (Arc::clone(&a), tx.clone());
                std::thread::spawn(move || {
                    let mut handed = Vec::new();
                    for i in 0..40 {
                        let size = 1 + (wave * 131 + t * 17 + i * 29) % 512;
                        // SAFETY: non-zero layout.
                        let p = unsafe { a.alloc(lay(size)) };
                        assert!(!p.is_null());
                        fill(p, size);
                        if i % 2 == 0 {
                            handed.push((p as usize, size));
                        } else {
                            verify(p, size);
                            // SAFETY: a live block, freed once by its owner.
                            unsafe { a.dealloc(p, lay(size)) };
                        }
                    }
                    tx.send(handed).unwrap();
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    }
    drop(tx);
    assert_eq!(survivor.join().unwrap(), WAVES * THREADS * 20);
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0, "{s}");
    assert_eq!(s.total(), s.mapped_bytes(), "{s}");
}

/// Debug mode: blocks filled on one thread, freed (and their guards and fill checked) on
/// another; no false alarm.
#[test]
fn ft_debug_mode_cross_thread_frees() {
    let a = Arc::new(
        Allocator::with_config(Mode::FreeThreaded, Config::PYMALLOC.with_debug(true)).unwrap(),
    );
    let (tx, rx) = mpsc::channel::<Vec<usize>>();
    let freer = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || {
            for batch in rx {
                for p in batch {
                    // SAFETY: live blocks handed over, freed once.
                    unsafe { a.free(p as *mut u8) };
                }
            }
        })
    };
    let producers: Vec<_> = (0..3)
        .map(|t| {
            let (a, tx) = (Arc::clone(&a), tx.clone());
            std::thread::spawn(move || common::produce_and_hand_over(&a, t, 5_000, tx))
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().unwrap();
    }
    freer.join().unwrap();
    assert_eq!(a.stats().blocks_in_use(), 0);
}
