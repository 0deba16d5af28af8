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

/// Issue 12, defect 6: once every cache slot is taken (16,384 threads or handles alive), an
/// allocation still succeeds (on a cache built for the one call), from a thread that has a
/// cache and from one that never had.
#[test]
fn allocations_succeed_when_every_cache_slot_is_taken() {
    let a = Arc::new(Allocator::new(Mode::FreeThreaded));
    let mut handles = Vec::new();
    while let Some(h) = a.thread_cache() {
        handles.push(h);
    }
    assert_eq!(handles.len(), 1 << 14, "cache slots per heap");
    let mut blocks = Vec::new();
    for size in [16, 100, 512] {
        // SAFETY: a valid layout; every block is freed below.
        let p = unsafe { a.alloc(lay(size)) };
        assert!(
            !p.is_null(),
            "alloc({size}) with every slot taken returned null"
        );
        fill(p, size);
        blocks.push((p as usize, size));
    }
    let a2 = a.clone();
    let from_thread = std::thread::spawn(move || {
        (0..200)
            .map(|i| {
                // SAFETY: a valid layout.
                let p = unsafe { a2.alloc(lay(16 + i % 400)) };
                assert!(!p.is_null(), "alloc on a new thread with every slot taken");
                fill(p, 16 + i % 400);
                (p as usize, 16 + i % 400)
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    blocks.extend(from_thread);
    drop(handles);
    for (p, size) in blocks {
        verify(p as *mut u8, size);
        // SAFETY: a live block of this heap.
        unsafe { a.free(p as *mut u8) };
    }
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0, "{s}");
}

/// Issue 12, defect 6, with threads: 16,400 threads alive at once (more than the 16,384 thread
/// indices and cache slots) each allocate, and none gets null. Raw pthreads with 64 KiB stacks:
/// Rust's threads also map an alternate signal stack each, and 16,400 of them would exceed the
/// kernel's default limit of 65,530 mappings per process.
#[test]
fn allocations_succeed_with_more_threads_alive_than_slots() {
    const THREADS: usize = (1 << 14) + 16;
    struct Shared {
        heap: Allocator,
        barrier: std::sync::Barrier,
        started: std::sync::atomic::AtomicUsize,
        nulls: std::sync::atomic::AtomicUsize,
    }
    extern "C" fn run(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` points to the Shared below, which outlives every thread (joined).
        let sh = unsafe { &*(arg as *const Shared) };
        let i = sh
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let size = 16 + (i % 32) * 16;
        // SAFETY: a valid layout.
        let p = unsafe { sh.heap.alloc(lay(size)) };
        if p.is_null() {
            sh.nulls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // Stay alive until every thread has allocated.
        sh.barrier.wait();
        if !p.is_null() {
            fill(p, size);
            verify(p, size);
            // SAFETY: a live block of this heap.
            unsafe { sh.heap.free(p) };
        }
        std::ptr::null_mut()
    }
    let sh = Shared {
        heap: Allocator::new(Mode::FreeThreaded),
        barrier: std::sync::Barrier::new(THREADS),
        started: std::sync::atomic::AtomicUsize::new(0),
        nulls: std::sync::atomic::AtomicUsize::new(0),
    };
    let mut ids = Vec::with_capacity(THREADS);
    // SAFETY: plain pthread calls on valid out-pointers; `sh` outlives every thread (all joined
    // below before it is dropped).
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_attr_init(&mut attr), 0);
        assert_eq!(libc::pthread_attr_setstacksize(&mut attr, 64 << 10), 0);
        for n in 0..THREADS {
            let mut t: libc::pthread_t = 0;
            let rc = libc::pthread_create(&mut t, &attr, run, &sh as *const Shared as *mut _);
            assert_eq!(
                rc, 0,
                "pthread_create #{n} failed ({rc}): raise the thread limits"
            );
            ids.push(t);
        }
        libc::pthread_attr_destroy(&mut attr);
        for t in ids {
            assert_eq!(libc::pthread_join(t, std::ptr::null_mut()), 0);
        }
    }
    let nulls = sh.nulls.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(nulls, 0, "{nulls} of {THREADS} allocations returned null");
}
