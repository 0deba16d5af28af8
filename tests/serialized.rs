//! GIL mode serialised by the caller (`SerializedAllocator`): the heap takes no lock
//! of its own, so these tests serialise every call with a `std::sync::Mutex`, as CPython's GIL
//! does for the `PyMem_*` domains.
//!
//! Several threads allocate, fill, hand over and free blocks under the caller's mutex; every
//! block's contents are checked when it is freed, and the heap ends with no block in use. A
//! single-threaded sequence gives the same statistics as the locked GIL heap (same algorithms).

use ftmalloc::{Allocator, Config, Mode, SerializedAllocator};
use std::alloc::Layout;
use std::sync::Mutex;

/// The byte every block at `addr` of `size` bytes is filled with.
fn pattern(addr: usize, size: usize) -> u8 {
    ((addr >> 4) ^ size ^ 0x5a) as u8
}

/// Checks `p`'s contents against its pattern.
///
/// # Safety
/// `p` is a live block of at least `size` bytes filled by `fill`.
unsafe fn check(p: *mut u8, size: usize) {
    let want = pattern(p as usize, size);
    for i in 0..size {
        // SAFETY: the contract: `size` readable bytes.
        let got = unsafe { p.add(i).read() };
        assert_eq!(got, want, "block {p:p} ({size} bytes) changed at byte {i}");
    }
}

/// Fills `p` with its pattern.
///
/// # Safety
/// `p` is a live block of at least `size` bytes.
unsafe fn fill(p: *mut u8, size: usize) {
    // SAFETY: the contract.
    unsafe { p.write_bytes(pattern(p as usize, size), size) };
}

/// The heap and the blocks waiting to be freed by another thread, all behind the caller's lock.
struct Shared {
    heap: SerializedAllocator,
    handed_over: Vec<(usize, usize)>,
}

#[test]
fn serialized_heap_reports_itself() {
    // SAFETY: nothing calls the heap but this thread.
    let heap = unsafe { SerializedAllocator::new(Config::PYMALLOC) }.unwrap();
    assert_eq!(heap.mode(), Mode::Gil);
    // The pooled limit: every request up to it is a block the heap owns, one above it is not.
    for debug in [false, true] {
        // SAFETY: as above.
        let heap = unsafe { SerializedAllocator::new(Config::PYMALLOC.with_debug(debug)) }.unwrap();
        let limit = heap.pooled_limit();
        assert_eq!(limit, if debug { 512 - 48 } else { 512 });
        for (size, pooled) in [(1, true), (limit, true), (limit + 1, false)] {
            let layout = Layout::from_size_align(size, 16).unwrap();
            // SAFETY: freed at once.
            unsafe {
                let p = heap.alloc(layout);
                assert_eq!(heap.owns(p), pooled, "size {size}, debug {debug}");
                heap.free(p);
            }
        }
    }
    // A bad configuration is refused as with_config refuses it.
    // SAFETY: as above.
    let err = unsafe { SerializedAllocator::new(Config::new(3000, 1 << 20)) }.unwrap_err();
    assert_eq!(err.reason, "pool_size must be a power of two");
}

#[test]
fn threads_under_the_callers_mutex() {
    // Tiny pools and arenas, so pools fill and empty and arenas come and go.
    let config = Config::new(1 << 12, 1 << 14);
    // SAFETY: every call on the heap below, its drop included, is made with `shared` locked
    // (the drop: the mutex is consumed by `into_inner` after every thread has joined).
    let heap = unsafe { SerializedAllocator::new(config) }.unwrap();
    let small = heap.geometry().small_limit;
    let shared = Mutex::new(Shared {
        heap,
        handed_over: Vec::new(),
    });
    const THREADS: usize = 4;
    const ROUNDS: usize = 3_000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let shared = &shared;
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t as u64 + 1);
                let mut mine: Vec<(usize, usize)> = Vec::new();
                for _ in 0..ROUNDS {
                    let mut g = shared.lock().unwrap();
                    let size = rng.usize(1..=small + 64);
                    let layout = Layout::from_size_align(size, 8).unwrap();
                    // SAFETY: the mutex is held (the constructor's contract).
                    let p = unsafe { g.heap.alloc(layout) };
                    assert!(!p.is_null());
                    // SAFETY: a fresh block of `size` bytes.
                    unsafe { fill(p, size) };
                    if rng.bool() {
                        g.handed_over.push((p as usize, size));
                    } else {
                        mine.push((p as usize, size));
                    }
                    // Free one of ours, or one another thread handed over.
                    let victim = if rng.bool() && !g.handed_over.is_empty() {
                        let i = rng.usize(..g.handed_over.len());
                        Some(g.handed_over.swap_remove(i))
                    } else if !mine.is_empty() && rng.u8(..) < 100 {
                        let i = rng.usize(..mine.len());
                        Some(mine.swap_remove(i))
                    } else {
                        None
                    };
                    if let Some((a, n)) = victim {
                        let q = a as *mut u8;
                        // SAFETY: a live block of `n` bytes we filled; the mutex is held.
                        unsafe {
                            check(q, n);
                            g.heap.free(q);
                        }
                    }
                }
                let g = shared.lock().unwrap();
                for (a, n) in mine {
                    // SAFETY: as above.
                    unsafe {
                        check(a as *mut u8, n);
                        g.heap.free(a as *mut u8);
                    }
                }
            });
        }
    });
    let mut shared = shared.into_inner().unwrap();
    for (a, n) in std::mem::take(&mut shared.handed_over) {
        // SAFETY: as above; no other thread is left.
        unsafe {
            check(a as *mut u8, n);
            shared.heap.free(a as *mut u8);
        }
    }
    // SAFETY: the threads are gone; this thread owns the heap (it made `shared` its own).
    let stats = unsafe { shared.heap.stats() };
    assert_eq!(stats.blocks_in_use(), 0, "{stats}");
    assert_eq!(stats.total(), stats.mapped_bytes(), "{stats}");
    // pymalloc keeps no empty arena beyond the one it holds on to.
    assert!(stats.counters.current <= 1, "{stats}");
    assert!(stats.counters.allocated_total > 1, "{stats}");
}

#[test]
fn same_algorithms_as_the_locked_gil_heap() {
    let config = Config::new(1 << 12, 1 << 14);
    let locked = Allocator::with_config(Mode::Gil, config).unwrap();
    // SAFETY: only this thread calls it.
    let serial = unsafe { SerializedAllocator::new(config) }.unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut live: Vec<(usize, usize)> = Vec::new();
    for step in 0..20_000 {
        if live.is_empty() || rng.u8(..) < 150 {
            let size = rng.usize(1..=locked.geometry().small_limit);
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: plain allocations, freed below.
            let (a, b) = unsafe { (locked.alloc(layout), serial.alloc(layout)) };
            assert!(!a.is_null() && !b.is_null());
            // Same algorithms: the same block offsets within their arenas.
            let mask = locked.geometry().arena_size - 1;
            assert_eq!(a as usize & mask, b as usize & mask, "step {step}");
            live.push((a as usize, b as usize));
        } else {
            let (a, b) = live.swap_remove(rng.usize(..live.len()));
            // SAFETY: live blocks of each heap.
            unsafe {
                locked.free(a as *mut u8);
                serial.free(b as *mut u8);
            }
        }
        if step % 1000 == 0 {
            // SAFETY: only this thread calls `serial`.
            let (x, y) = (locked.stats(), unsafe { serial.stats() });
            assert_eq!(x.classes, y.classes, "step {step}");
            assert_eq!(x.counters, y.counters, "step {step}");
        }
    }
    for (a, b) in live {
        // SAFETY: as above.
        unsafe {
            locked.free(a as *mut u8);
            serial.free(b as *mut u8);
        }
    }
    // SAFETY: as above.
    assert_eq!(unsafe { serial.stats() }.blocks_in_use(), 0);
}

/// `free_owned` on `$heap` (a serialised heap or an `Allocator`; `$stats` its snapshot): a
/// foreign pointer is refused and left alone, one of ours is freed.
macro_rules! check_free_owned {
    ($heap:expr, $stats:expr) => {{
        use std::alloc::{GlobalAlloc, System};
        let heap = $heap;
        let stats = $stats;
        let layout = Layout::from_size_align(64, 16).unwrap();
        // SAFETY: each pointer is freed once, by the allocator that made it; only this thread
        // calls the heap.
        unsafe {
            let ours = heap.alloc(layout);
            let foreign = System.alloc(layout);
            assert!(!foreign.is_null());
            fill(foreign, 64);
            assert!(!heap.free_owned(foreign), "a foreign pointer was taken");
            assert!(!heap.free_owned(std::ptr::null_mut()));
            check(foreign, 64); // untouched: still the caller's
            System.dealloc(foreign, layout);
            assert_eq!(stats(&heap).blocks_in_use(), 1);
            assert!(heap.free_owned(ours));
            assert_eq!(stats(&heap).blocks_in_use(), 0, "{:?}", heap.mode());
        }
    }};
}

#[test]
fn free_owned_frees_only_the_heaps_blocks() {
    // SAFETY: only this thread calls it.
    let serial = unsafe { SerializedAllocator::new(Config::PYMALLOC) }.unwrap();
    // SAFETY: (in the closure) only this thread calls it.
    check_free_owned!(serial, |h: &SerializedAllocator| unsafe { h.stats() });
    for mode in [Mode::Gil, Mode::FreeThreaded] {
        check_free_owned!(Allocator::new(mode), |h: &Allocator| h.stats());
    }
}
