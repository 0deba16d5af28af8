//! `stats()` read while other threads allocate is approximate, never a panic or a wrapped count
//! (issue 12, defect 2): pools are returned and re-prepared for a class with more blocks per
//! pool between a reader's loads of a header's class and its block count.

use ftmalloc::{Allocator, Config, Mode};
use std::alloc::Layout;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn stats_while_pools_change_class_are_approximate_never_a_panic() {
    // Small pools and arenas: pools change hands (and class) often.
    let a = Arc::new(Allocator::with_config(Mode::FreeThreaded, Config::new(1024, 4096)).unwrap());
    let g = *a.geometry();
    let big = Layout::from_size_align(g.small_limit, 16).unwrap();
    let small = Layout::from_size_align(16, 16).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (a, stop) = (a.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut tc = a.thread_cache().expect("a cache slot");
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: valid layouts; every block is freed at once by this handle.
                    unsafe {
                        let v: Vec<*mut u8> = (0..400).map(|_| tc.alloc(big)).collect();
                        v.into_iter().for_each(|p| tc.free(p));
                        let v: Vec<*mut u8> = (0..5600).map(|_| tc.alloc(small)).collect();
                        v.into_iter().for_each(|p| tc.free(p));
                    }
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (a, stop, calls) = (a.clone(), stop.clone(), calls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let s = a.stats();
                    calls.fetch_add(1, Ordering::Relaxed);
                    for (c, row) in s.classes.iter().enumerate() {
                        let cap = row.pools * g.blocks_per_pool(c);
                        assert!(
                            row.blocks_in_use <= cap && row.blocks_available <= cap,
                            "class {c}: {} in use, {} available in {} pools of {} blocks",
                            row.blocks_in_use,
                            row.blocks_available,
                            row.pools,
                            g.blocks_per_pool(c)
                        );
                    }
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) && !readers.iter().any(|r| r.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    for r in readers {
        r.join()
            .expect("stats() panicked or returned an impossible count");
    }
    assert!(calls.load(Ordering::Relaxed) > 0);
    assert_eq!(a.stats().blocks_in_use(), 0);
}
