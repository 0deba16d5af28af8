//! Heap instances (`Allocator::new`) get the process-wide heap's guarantees at `fork` and at
//! thread exit (issue 21, items 4 and 5): the registry of live heaps (`src/heaps.rs`) that the
//! `pthread_atfork` handlers and the thread-exit hook walk.
//!
//! This binary keeps the C library's allocator as its global allocator, so the instances are
//! the only heaps in the registry.

mod common;

use common::rss;
use ftmalloc::{Allocator, Config, Mode};
use std::alloc::Layout;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One test at a time: the soak measures this process's resident memory, and the fork tests
/// fork it.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sizes spread over the size classes.
const SIZES: [usize; 6] = [8, 24, 64, 136, 300, 512];

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Allocates and frees a few blocks of every size from `a`; false if an allocation failed.
fn use_heap(a: &Allocator, rounds: usize) -> bool {
    let mut blocks = [std::ptr::null_mut::<u8>(); SIZES.len()];
    for r in 0..rounds {
        for (i, &size) in SIZES.iter().enumerate() {
            let size = size.min(a.pooled_limit());
            // SAFETY: a valid layout; each block is freed once, by its heap.
            unsafe {
                let p = a.alloc(layout(size));
                if p.is_null() {
                    return false;
                }
                p.write_bytes(r as u8, size);
                if !blocks[i].is_null() {
                    a.free(blocks[i]);
                }
                blocks[i] = p;
            }
        }
    }
    for p in blocks {
        // SAFETY: live blocks of `a`, freed once.
        unsafe { a.free(p) };
    }
    true
}

/// Every kind of instance: both modes, with and without debug mode.
fn instances() -> Vec<Allocator> {
    let mut v = Vec::new();
    for mode in [Mode::Gil, Mode::FreeThreaded] {
        for debug in [false, true] {
            v.push(Allocator::with_config(mode, Config::PYMALLOC.with_debug(debug)).unwrap());
        }
    }
    v
}

/// Forks while other threads hammer every instance (so a GIL-mode instance's lock is often held
/// at the moment of `fork`); each child allocates and frees from every instance and exits 0.
/// A child that hangs is killed by its alarm (10 s) and fails the test. Before the registry,
/// the child found a GIL-mode instance's lock held by a thread it does not have, and hung.
#[test]
fn fork_while_threads_hold_instance_locks() {
    let _serial = serial();
    let heaps = Arc::new(instances());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..heaps.len())
        .map(|i| {
            let (heaps, stop) = (heaps.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert!(use_heap(&heaps[i], 50));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    for round in 0..40 {
        // SAFETY: the child only calls the heaps' functions (which the fork handlers made
        // consistent), `alarm` and `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: plain syscalls in the child.
            unsafe { libc::alarm(10) };
            // Blocks the parent's threads held at the fork stay in use in the child; the
            // child's own are all freed again.
            let ok = heaps.iter().all(|a| {
                let before = a.stats().blocks_in_use();
                use_heap(a, 20) && a.stats().blocks_in_use() == before
            });
            // SAFETY: leaves the child at once, running nothing of the parent's.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: our child; a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "fork {round}: child failed (status {status:#x}; signal 14 = its alarm: it hung)"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    for a in heaps.iter() {
        assert_eq!(a.stats().blocks_in_use(), 0);
    }
}

/// Instances are created and dropped while other threads fork and threads exit: a drop that
/// races a fork or a thread's exit walk waits for it (and the walk never reaches a dropped heap).
#[test]
fn drop_races_fork_and_thread_exit() {
    let _serial = serial();
    let stop = Arc::new(AtomicBool::new(false));
    let forker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut forks = 0;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: the child only exits.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: leaves the child at once.
                    unsafe { libc::_exit(0) };
                }
                let mut status = 0;
                // SAFETY: our child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status));
                forks += 1;
            }
            forks
        })
    };
    let churners: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..150 {
                    let mode = if (i + t) % 2 == 0 {
                        Mode::FreeThreaded
                    } else {
                        Mode::Gil
                    };
                    let a = Arc::new(Allocator::new(mode));
                    // Short-lived threads bound to the instance exit while it may be dropped.
                    let b = a.clone();
                    let h = std::thread::spawn(move || assert!(use_heap(&b, 3)));
                    assert!(use_heap(&a, 3));
                    h.join().unwrap();
                    drop(a);
                }
            })
        })
        .collect();
    for c in churners {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(forker.join().unwrap() > 0);
}

/// One soak run on a fresh free-threaded instance: `waves` waves of 16 short-lived threads,
/// each of which allocates 400 blocks, keeps 100 of them in a shared ring of 2,000 live blocks
/// (replacing, and freeing, the oldest) and frees the rest. Returns (peak resident memory
/// growth during the run, the heap's statistics after every thread exited).
fn soak(waves: usize) -> (usize, ftmalloc::Stats) {
    struct Ring(Vec<usize>, usize);
    // Free pools are purged as they are returned (no decay), so resident memory follows the
    // pools in use at once.
    let config = Config::PYMALLOC.with_decay_ms(0);
    let a = Arc::new(Allocator::with_config(Mode::FreeThreaded, config).unwrap());
    let ring = Arc::new(Mutex::new(Ring(vec![0; 2000], 0)));
    let base = rss();
    let peak = Arc::new(AtomicUsize::new(0));
    for w in 0..waves {
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (a, ring) = (a.clone(), ring.clone());
                std::thread::spawn(move || {
                    // On the stack: the C library's allocator (this binary's global one) keeps
                    // per-thread arenas whose growth would blur the measurement.
                    let mut mine = [0usize; 400];
                    for (i, m) in mine.iter_mut().enumerate() {
                        let size = SIZES[(i + t + w) % SIZES.len()];
                        // SAFETY: a valid layout.
                        let p = unsafe { a.alloc(layout(size)) };
                        assert!(!p.is_null());
                        *m = p as usize;
                    }
                    let mut r = ring.lock().unwrap();
                    for (i, p) in mine.into_iter().enumerate() {
                        let old = if i % 4 == 0 {
                            let slot = r.1 % 2000;
                            r.1 += 1;
                            std::mem::replace(&mut r.0[slot], p)
                        } else {
                            p
                        };
                        if old != 0 {
                            // SAFETY: a live block of `a`, freed once.
                            unsafe { a.free(old as *mut u8) };
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        peak.fetch_max(rss().saturating_sub(base), Ordering::Relaxed);
    }
    let stats = a.stats();
    let r = ring.lock().unwrap();
    for &p in &r.0 {
        if p != 0 {
            // SAFETY: live blocks of `a`, each freed once.
            unsafe { a.free(p as *mut u8) };
        }
    }
    (peak.load(Ordering::Relaxed), stats)
}

/// Threads bound to an instance hand their caches back when they exit, as the process-wide
/// heap's do: after every short-lived thread is gone no cache holds a pool, and 10x the threads
/// created (the same live set) costs no more resident memory than 1x (within 1.2x, and 1 MiB for
/// the noise of a process whose other tests run at the same time). Before the exit walk, the
/// exited threads' caches kept their pools (`cached_pools` > 0 with no thread left: 49 pools in
/// 3 caches). Resident memory did not grow with the work even then, because a new thread
/// inherits the caches of the exited thread whose index it reuses; what was lost is the pools
/// of threads that are not replaced (a burst of threads, then fewer).
#[test]
fn exited_threads_hand_back_instance_caches() {
    let _serial = serial();
    // A first run warms up what is not the heap's (thread stacks the C library caches, its
    // arenas for the spawning machinery).
    soak(4);
    let (rss1, s1) = soak(4);
    let (rss10, s10) = soak(40);
    eprintln!(
        "soak: 1x: rss +{} KiB, pools in use {}, cached {} in {} caches; 10x: rss +{} KiB, \
         pools in use {}, cached {} in {} caches",
        rss1 / 1024,
        s1.pools_in_use(),
        s1.cached_pools,
        s1.thread_caches,
        rss10 / 1024,
        s10.pools_in_use(),
        s10.cached_pools,
        s10.thread_caches
    );
    for s in [&s1, &s10] {
        assert_eq!(s.thread_caches, 0, "caches of exited threads: {s}");
        assert_eq!(
            s.cached_pools, 0,
            "pools held by caches of exited threads: {s}"
        );
    }
    assert!(
        // The ring's blocks are spread over pools as the threads happened to interleave: a
        // dozen pools either way is noise; growth with the work would be hundreds.
        s10.pools_in_use() as f64 <= 1.2 * s1.pools_in_use() as f64 + 16.0,
        "pools in use: 1x {}, 10x {}",
        s1.pools_in_use(),
        s10.pools_in_use()
    );
    // Under a sanitizer (`.ci/sanitize` sets FTMALLOC_SANITIZER) resident memory includes the
    // sanitizer's own per-thread state, which grows with the threads created: the caches and
    // pools above are the check there.
    if std::env::var_os("FTMALLOC_SANITIZER").is_none() {
        assert!(
            rss10 as f64 <= 1.2 * rss1 as f64 + 1048576.0,
            "resident growth: 1x {rss1}, 10x {rss10}"
        );
    }
}
