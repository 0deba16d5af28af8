//! Unit tests of [`Allocator`] across modules (layout, GIL algorithms, routing, stats).

use super::*;
use crate::size_class::class_size;
use core::ptr;
use std::alloc::Layout;
use std::collections::HashSet;

fn lay(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn tiny() -> Config {
    // Pools of 2 KiB (a few blocks of the large classes), arenas of 4 pools.
    Config::new(2048, 8192)
}

#[test]
fn blocks_are_aligned_distinct_and_sized_by_class() {
    let a = Allocator::new(Mode::Gil);
    let mut seen = HashSet::new();
    let mut ptrs = Vec::new();
    for size in 1..=512 {
        // SAFETY: non-zero layout; freed below.
        let p = unsafe { a.alloc(lay(size)) };
        assert!(!p.is_null());
        assert_eq!(p as usize % 16, 0);
        assert!(a.owns(p));
        // SAFETY: p is live.
        assert_eq!(unsafe { a.usable_size(p) }, size.div_ceil(16) * 16);
        assert!(seen.insert(p as usize));
        ptrs.push((p, size));
    }
    a.check_invariants();
    for (p, size) in ptrs {
        // SAFETY: p is live, allocated with this layout.
        unsafe { a.dealloc(p, lay(size)) };
    }
    a.check_invariants();
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0);
    assert_eq!(s.total(), s.mapped_bytes());
}

#[test]
fn large_zero_and_overaligned_requests_go_underneath() {
    let a = Allocator::new(Mode::Gil);
    let cases = [
        Layout::from_size_align(513, 8).unwrap(),
        Layout::from_size_align(0, 1).unwrap(),
        Layout::from_size_align(64, 64).unwrap(),
        Layout::from_size_align(100_000, 4096).unwrap(),
    ];
    for l in cases {
        // SAFETY: valid layouts; freed below.
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null());
        assert!(!a.owns(p), "{l:?} must not come from a pool");
        assert_eq!(p as usize % l.align(), 0);
        // SAFETY: p is live.
        unsafe { a.dealloc(p, l) };
    }
    assert_eq!(a.stats().counters.allocated_total, 0);
}

#[test]
fn foreign_pointers_are_routed_to_the_system_allocator() {
    let a = Allocator::new(Mode::Gil);
    // SAFETY: plain malloc; handed to `free`, which routes it back to libc.
    unsafe {
        let p = libc::malloc(24).cast::<u8>();
        assert!(!a.owns(p));
        assert!(a.usable_size(p) >= 24);
        a.free(p);
        a.free(ptr::null_mut());
    }
    // A pointer of another instance is not ours either.
    let b = Allocator::new(Mode::Gil);
    // SAFETY: allocated from b, freed to b.
    unsafe {
        let p = b.alloc(lay(32));
        assert!(b.owns(p) && !a.owns(p));
        b.dealloc(p, lay(32));
    }
}

#[test]
fn realloc_follows_pymalloc() {
    let a = Allocator::new(Mode::Gil);
    // SAFETY: every pointer used is live; layouts match.
    unsafe {
        let p = a.alloc(lay(100)); // 112-byte block
        for i in 0..100 {
            *p.add(i) = i as u8;
        }
        // 85..=112 stay in place (above 3/4 of 112 = 84).
        assert_eq!(a.realloc(p, lay(100), 112), p);
        assert_eq!(a.realloc(p, lay(112), 85), p);
        let q = a.realloc(p, lay(85), 84);
        assert_ne!(q, p, "at 3/4 or below the block moves");
        assert_eq!(a.usable_size(q), 96);
        for i in 0..84 {
            assert_eq!(*q.add(i), i as u8);
        }
        let r = a.realloc(q, lay(84), 5000);
        assert!(!a.owns(r));
        for i in 0..84 {
            assert_eq!(*r.add(i), i as u8);
        }
        let s = a.realloc(r, lay(5000), 10000);
        for i in 0..84 {
            assert_eq!(*s.add(i), i as u8);
        }
        // A foreign pointer shrunk to a small size stays foreign.
        let t = a.realloc(s, lay(10000), 16);
        assert!(!a.owns(t));
        assert_eq!(*t.add(15), 15);
        a.dealloc(t, lay(16));
    }
    assert_eq!(a.stats().blocks_in_use(), 0);
}

#[test]
fn full_pools_leave_and_rejoin_usedpools() {
    let a = Allocator::with_config(Mode::Gil, tiny()).unwrap();
    let g = *a.geometry();
    let class = g.num_classes - 1;
    let size = class_size(class);
    let per_pool = g.blocks_per_pool(class);
    // SAFETY: blocks are live until freed once.
    unsafe {
        let ps: Vec<_> = (0..per_pool * 3).map(|_| a.alloc(lay(size))).collect();
        a.check_invariants();
        assert_eq!(a.stats().classes[class].pools, 3);
        // Free one block from the first (full) pool: it rejoins usedpools at the front, so the
        // next allocation reuses that block.
        a.dealloc(ps[0], lay(size));
        a.check_invariants();
        assert_eq!(a.alloc(lay(size)), ps[0]);
        for &p in &ps {
            a.dealloc(p, lay(size));
            a.check_invariants();
        }
    }
}

#[test]
fn arenas_stay_sorted_and_empty_ones_are_released_but_one() {
    let a = Allocator::with_config(Mode::Gil, tiny()).unwrap();
    let g = *a.geometry();
    let size = class_size(g.num_classes - 1);
    let per_arena = g.blocks_per_pool(g.num_classes - 1) * g.pools_per_arena;
    let mut blocks: Vec<*mut u8> = Vec::new();
    // SAFETY: blocks are live until freed once.
    unsafe {
        for _ in 0..per_arena * 5 {
            blocks.push(a.alloc(lay(size)));
        }
        assert_eq!(a.stats().counters.current, 5);
        a.check_invariants();
        // Free in a scattered order, checking the sorted list and nfp2lasta after every step.
        let mut order: Vec<usize> = (0..blocks.len()).collect();
        fastrand::Rng::with_seed(12345).shuffle(&mut order);
        for i in order {
            a.dealloc(blocks[i], lay(size));
            a.check_invariants();
            let s = a.stats();
            assert_eq!(s.total(), s.mapped_bytes());
        }
    }
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0);
    assert_eq!(
        s.counters.current, 1,
        "pymalloc keeps exactly one empty arena"
    );
    assert_eq!(s.counters.reclaimed, 4);
    assert_eq!(s.counters.highwater, 5);
}

#[test]
fn most_full_arena_serves_first() {
    let a = Allocator::with_config(Mode::Gil, tiny()).unwrap();
    let g = *a.geometry();
    let class = g.num_classes - 1;
    let size = class_size(class);
    let per_pool = g.blocks_per_pool(class);
    // SAFETY: blocks are live until freed once.
    unsafe {
        // Two arenas, full.
        let n = per_pool * g.pools_per_arena * 2;
        let blocks: Vec<_> = (0..n).map(|_| a.alloc(lay(size))).collect();
        let arena_of = |p: *mut u8| g.arena_of(p as usize);
        let (a0, a1) = (arena_of(blocks[0]), arena_of(blocks[n - 1]));
        assert_ne!(a0, a1);
        // Empty two pools of a0 and one pool of a1: a1 has fewer free pools, so it is used first.
        let mut freed = 0;
        for &p in blocks.iter() {
            if arena_of(p) == a0 && freed < per_pool * 2 {
                a.dealloc(p, lay(size));
                freed += 1;
            }
        }
        let mut freed1 = 0;
        for &p in blocks.iter().rev() {
            if arena_of(p) == a1 && freed1 < per_pool {
                a.dealloc(p, lay(size));
                freed1 += 1;
            }
        }
        a.check_invariants();
        let q = a.alloc(lay(16));
        assert_eq!(
            arena_of(q),
            a1,
            "allocation must come from the fullest arena"
        );
        a.dealloc(q, lay(16));
    }
}

#[test]
fn stats_display_balances() {
    let a = Allocator::new(Mode::Gil);
    // SAFETY: blocks freed below.
    let ps: Vec<_> = (1..=300).map(|i| unsafe { a.alloc(lay(i)) }).collect();
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 300);
    assert_eq!(s.total(), s.mapped_bytes());
    let text = s.to_string();
    assert!(
        text.contains("# arenas allocated current         =                     1"),
        "{text}"
    );
    assert!(
        text.contains("Total                              =             1,048,576"),
        "{text}"
    );
    for (i, p) in ps.into_iter().enumerate() {
        // SAFETY: live block with this layout.
        unsafe { a.dealloc(p, lay(i + 1)) };
    }
}

// ---- free-threaded mode ----

fn ft_tiny() -> Allocator {
    Allocator::with_config(Mode::FreeThreaded, tiny()).unwrap()
}

#[test]
fn every_mode_serves_and_balances() {
    for &name in Mode::NAMES {
        let a = Allocator::new(Mode::from_name(name).unwrap());
        let mut ps = Vec::new();
        for size in 1..=512 {
            // SAFETY: freed below.
            let p = unsafe { a.alloc(lay(size)) };
            assert!(a.owns(p) && (p as usize).is_multiple_of(16));
            // SAFETY: p is a fresh block of `size` bytes.
            unsafe { ptr::write_bytes(p, size as u8, size) };
            ps.push((p, size));
        }
        let s = a.stats();
        assert_eq!(s.blocks_in_use(), 512, "{name}");
        assert_eq!(s.total(), s.mapped_bytes(), "{name}");
        for (p, size) in ps {
            // SAFETY: live block with this layout.
            unsafe {
                assert_eq!(*p.add(size - 1), size as u8);
                a.dealloc(p, lay(size));
            }
        }
        let s = a.stats();
        assert_eq!(s.blocks_in_use(), 0, "{name}");
        assert_eq!(s.total(), s.mapped_bytes(), "{name}");
    }
}

#[test]
fn ft_remote_frees_come_back_to_the_owner() {
    let a = Allocator::new(Mode::FreeThreaded);
    let size = 16;
    let mut tc = a.thread_cache().unwrap();
    // SAFETY: blocks are live until freed once.
    unsafe {
        // Ten blocks of the owner's current pool (far from full).
        let blocks: Vec<usize> = (0..10).map(|_| tc.alloc(lay(size)) as usize).collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                for &b in &blocks {
                    a.free(b as *mut u8); // this thread owns nothing: remote frees
                }
            });
        });
        assert_eq!(a.stats().blocks_in_use(), 0);
        // The owner collects them when its pool runs dry: filling the pool's capacity again
        // reuses exactly those blocks, with no second pool.
        let cap = a.geometry().blocks_per_pool(0);
        let again: Vec<usize> = (0..cap).map(|_| tc.alloc(lay(size)) as usize).collect();
        let set: HashSet<usize> = again.iter().copied().collect();
        assert!(blocks.iter().all(|b| set.contains(b)));
        assert_eq!(a.stats().classes[0].pools, 1);
        for b in again {
            tc.free(b as *mut u8);
        }
    }
}

#[test]
fn ft_full_pool_made_usable_by_a_remote_free_is_adopted() {
    let a = ft_tiny();
    let g = *a.geometry();
    let class = g.num_classes - 1;
    let size = class_size(class);
    let per_pool = g.blocks_per_pool(class);
    let mut owner = a.thread_cache().unwrap();
    // SAFETY: blocks are live until freed once.
    unsafe {
        // Fill one pool and ask for one more block: the owner detaches the full pool.
        let first: Vec<usize> = (0..per_pool)
            .map(|_| owner.alloc(lay(size)) as usize)
            .collect();
        let extra = owner.alloc(lay(size));
        assert_ne!(g.pool_of(extra as usize), g.pool_of(first[0]));
        assert_eq!(a.stats().abandoned_pools, 0);
        // A remote free into the detached full pool publishes it on the abandoned list.
        std::thread::scope(|s| {
            s.spawn(|| a.free(first[1] as *mut u8));
        });
        assert_eq!(a.stats().abandoned_pools, 1);
        // Another cache adopts it and gets the freed block back.
        let mut other = a.thread_cache().unwrap();
        assert_eq!(other.alloc(lay(size)) as usize, first[1]);
        assert_eq!(a.stats().abandoned_pools, 0);
        other.free(first[1] as *mut u8);
        for &b in &first {
            if b != first[1] {
                owner.free(b as *mut u8);
            }
        }
        owner.free(extra);
        // The owner's frees into the adopted pool wait in its batch until published.
        assert_eq!(a.stats().blocks_in_use(), per_pool - 1);
        owner.flush();
    }
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0);
    assert_eq!(s.total(), s.mapped_bytes());
}

#[test]
fn ft_abandoned_pools_are_adopted_and_arenas_released() {
    let a = ft_tiny();
    let g = *a.geometry();
    let class = g.num_classes - 1;
    let size = class_size(class);
    let n = g.blocks_per_pool(class) * g.pools_per_arena * 3;
    let blocks: Vec<usize> = {
        let mut tc = a.thread_cache().unwrap();
        // SAFETY: blocks stay live until freed below.
        (0..n)
            .map(|_| unsafe { tc.alloc(lay(size)) } as usize)
            .collect()
        // tc dropped: its pools are abandoned (or detached when full).
    };
    assert_eq!(a.stats().counters.current, 3);
    assert_eq!(a.stats().thread_caches, 0);
    // Free from another thread (no cache there): every free is remote.
    std::thread::scope(|s| {
        s.spawn(|| {
            for &b in &blocks {
                // SAFETY: each block freed once.
                unsafe { a.free(b as *mut u8) };
            }
        });
    });
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0);
    // The pools are ownerless until someone adopts them; a new cache adopting all of them
    // returns the empty ones to their arenas, and the arenas go back to the OS but one.
    let mut tc = a.thread_cache().unwrap();
    // SAFETY: freed at once.
    unsafe {
        let p = tc.alloc(lay(size));
        tc.free(p);
    }
    drop(tc);
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0);
    assert!(s.counters.current <= 1, "{s}");
    assert_eq!(s.total(), s.mapped_bytes());
}

#[test]
fn ft_threads_share_an_instance() {
    let a = Allocator::new(Mode::FreeThreaded);
    std::thread::scope(|s| {
        for t in 0..4 {
            let a = &a;
            s.spawn(move || {
                let mut live = Vec::new();
                for i in 0..20_000usize {
                    let size = 1 + (i * 7 + t * 13) % 512;
                    // SAFETY: freed below.
                    let p = unsafe { a.alloc(lay(size)) };
                    // SAFETY: fresh block of `size` bytes.
                    unsafe { *p = (i % 251) as u8 };
                    live.push((p as usize, size, (i % 251) as u8));
                    if live.len() > 100 {
                        let (p, size, v) = live.swap_remove(i % 100);
                        // SAFETY: live block.
                        unsafe {
                            assert_eq!(*(p as *mut u8), v);
                            a.dealloc(p as *mut u8, lay(size));
                        }
                    }
                }
                for (p, size, _) in live {
                    // SAFETY: live block.
                    unsafe { a.dealloc(p as *mut u8, lay(size)) };
                }
            });
        }
    });
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0, "{s}");
    assert_eq!(s.total(), s.mapped_bytes());
}

/// Issue 12, defect 5: an owner allocating and freeing, a remote freer and a statistics reader
/// on the same pools at once. Under Miri (`cargo +nightly miri test --lib
/// owner_remote_freer_and_stats`, see README) its aliasing model checks that no reference to a
/// pool header or to a cache is live while another thread uses the same memory: the pool
/// header's accessors and the cache slot's layout are what make that hold.
#[test]
fn owner_remote_freer_and_stats_share_pools_without_aliasing() {
    let a = Allocator::with_config(Mode::FreeThreaded, Config::new(1024, 4096)).unwrap();
    let l = lay(48);
    let mut tc = a.thread_cache().unwrap();
    // SAFETY: fresh blocks, each freed once below.
    let blocks: Vec<usize> = (0..24).map(|_| unsafe { tc.alloc(l) } as usize).collect();
    let (mine, theirs) = blocks.split_at(12);
    std::thread::scope(|s| {
        s.spawn(|| {
            for &p in theirs {
                // SAFETY: a live block of `a`, freed once (a remote free).
                unsafe { a.free(p as *mut u8) };
            }
        });
        s.spawn(|| {
            for _ in 0..2 {
                let st = a.stats();
                // Read while the others run, the count is approximate (`Allocator::stats`): the
                // pools are read one after another, so a block freed in a pool already read and
                // another allocated in one not read yet both count (the owner holds at most one
                // such `q` at a time), and a pool read while its owner collects remote frees may
                // count them twice (`ref_count` before the owner's subtraction, the remote word
                // after its swap; each remote free is collected once). So it stays below 24 live
                // blocks, plus 1, plus the 12 remote frees.
                assert!(
                    st.blocks_in_use() <= blocks.len() + 1 + theirs.len(),
                    "{st}"
                );
            }
        });
        for &p in mine {
            // SAFETY: live blocks of this handle's heap, each freed once; q is fresh.
            unsafe {
                tc.free(p as *mut u8);
                let q = tc.alloc(l);
                tc.free(q);
            }
        }
    });
    drop(tc);
    assert_eq!(a.stats().blocks_in_use(), 0);
}

/// The largest pools accepted (64 KiB) serve and take back every block, in both modes: block
/// offsets reach the top of the 16 bits the block check handles (`layout::geometry`). Before
/// the geometry capped pools at 64 KiB, a 128 KiB pool was accepted and the free of its first
/// block past 64 KiB aborted as "not the start of a block".
#[test]
fn the_largest_pools_check_every_block() {
    for mode in [Mode::Gil, Mode::FreeThreaded] {
        let a = Allocator::with_config(mode, Config::new(64 << 10, 1 << 20)).unwrap();
        for size in [16, 48, 512] {
            let per_pool = a.geometry().blocks_per_pool(size / 16 - 1);
            // SAFETY: fresh blocks, each freed once below.
            let ps: Vec<_> = (0..per_pool * 2 + 1)
                .map(|_| unsafe { a.alloc(lay(size)) })
                .collect();
            assert!(ps.iter().all(|p| !p.is_null()));
            for p in ps {
                // SAFETY: live blocks of `a`.
                unsafe { a.dealloc(p, lay(size)) };
            }
        }
        assert_eq!(a.stats().blocks_in_use(), 0);
        let e = Allocator::with_config(mode, Config::new(128 << 10, 1 << 20)).unwrap_err();
        assert!(e.reason.contains("64 KiB"), "{e}");
    }
}
