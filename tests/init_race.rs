//! A statistics walk races the re-initialisation of a pool header (issue 21, defect 1).
//!
//! `stats()` pins an arena, loads the arena's `inited` bits once, then reads each initialised
//! pool's header fields with atomic loads (`shared.owner`, `shared.remote`, the counters).
//! Pins keep the arena mapped; they do not stop another thread from purging one of its free
//! pools (which clears the pool's `inited` bit), claiming it again and writing a fresh header
//! (`PoolHeader::init_fresh`) while the walk still holds the stale bit. Every field the walk
//! reads must therefore be written with atomic stores on (re-)initialisation too (DESIGN.md
//! section 7, "Initialisation is a write too"); a plain write of the header's shared line is a
//! data race, undefined behaviour reachable from safe code.
//!
//! On x86-64 the race does no visible harm, so these tests fail only where the race is
//! detected: under ThreadSanitizer, which `.ci/sanitize thread` runs them with (it runs every
//! integration test), and which reported the plain write within seconds on the old code.
//! Elsewhere they check that the walk ran and that pools really were purged and
//! re-initialised meanwhile (without that the race would not be exercised). The loom model
//! `stats_vs_purge_and_reinit` (tests/loom.rs) checks the same interleaving exhaustively.

use ftmalloc::{Allocator, Config, Mode};
use std::alloc::Layout;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the workers and the reader run.
const RUN: Duration = Duration::from_secs(3);

/// Pools purged (and so re-initialised by their next claim) that a run must reach, or it did
/// not exercise the race.
const MIN_PURGED: u64 = 100;

/// Two workers allocate and free one pool's worth of largest-class blocks at a time on small
/// pools (1 KiB; 4 per arena), calling `trim()` after each round when `trim` is set, while a
/// third thread calls `stats()` in a loop. Returns `(stats calls, pools purged)`.
fn race(config: Config, trim: bool) -> (u64, u64) {
    let a = Arc::new(Allocator::with_config(Mode::FreeThreaded, config).unwrap());
    let g = *a.geometry();
    let big = Layout::from_size_align(g.small_limit, 16).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (a, stop) = (a.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut tc = a.thread_cache().expect("a cache slot");
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: a valid layout; every block is freed once, at once, by this
                    // handle.
                    unsafe {
                        let v: Vec<*mut u8> = (0..64).map(|_| tc.alloc(big)).collect();
                        assert!(v.iter().all(|p| !p.is_null()), "out of memory");
                        v.into_iter().for_each(|p| tc.free(p));
                    }
                    if trim {
                        tc.trim();
                    }
                }
            })
        })
        .collect();
    let reader = {
        let (a, stop) = (a.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(a.stats());
                n += 1;
            }
            n
        })
    };
    let t0 = Instant::now();
    while t0.elapsed() < RUN {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let calls = reader.join().unwrap();
    (calls, a.stats().pools_purged)
}

/// Decay 0: every pool returned to its arena is purged at once, so every claim of it
/// re-initialises its header.
#[test]
fn stats_vs_reinit_after_purge_on_return() {
    let (calls, purged) = race(Config::new(1024, 4096).with_decay_ms(0), false);
    eprintln!("stats calls: {calls}, pools purged: {purged}");
    assert!(calls > 0, "the reader never ran");
    assert!(
        purged >= MIN_PURGED,
        "only {purged} pools purged: the race was not exercised"
    );
}

/// The default decay, with `trim()` after every round: the purge is `trim`'s maintenance
/// pass, which claims the free pools, purges them and returns them.
#[test]
fn stats_vs_reinit_after_trim() {
    let (calls, purged) = race(Config::new(1024, 4096), true);
    eprintln!("stats calls: {calls}, pools purged: {purged}");
    assert!(calls > 0, "the reader never ran");
    assert!(
        purged >= MIN_PURGED,
        "only {purged} pools purged: the race was not exercised"
    );
}
