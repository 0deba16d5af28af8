//! Loom models of the free-threaded mode's lock-free protocols, one per protocol, on tiny
//! pools (4 blocks) and arenas (4 pools).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom`
//! (`.ci/loom` does this). Loom allocates, so these models never use ftmalloc as the global
//! allocator; they drive `Allocator` instances and their `ThreadCache` handles.
#![cfg(loom)]

use ftmalloc::{Allocator, Config, Mode, ThreadCache};
use loom::thread;
use std::alloc::Layout;
use std::collections::HashSet;
use std::sync::Arc;

/// Stack of every model thread: loom's default (32 KiB) is too small for the allocator's
/// paths with debug assertions on.
const STACK: usize = 1 << 20;

/// Spawns a model thread with a [`STACK`]-sized stack.
fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new().stack_size(STACK).spawn(f).unwrap()
}

/// Runs `f` under loom (in a model thread with a [`STACK`]-sized stack) and reports how many
/// interleavings were explored.
fn model<F: Fn() + Sync + Send + 'static>(name: &str, f: F) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let f = Arc::new(f);
    // Model (q) sets up 64 pools before its threads start: more branches than loom's default
    // bound of 1,000 (a safeguard against spin loops, which the allocator has none of).
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 20_000;
    builder.check(move || {
        // The shadow cells through which loom sees plain memory (free-block links, pool
        // header fields) belong to one execution: start each with none (see `crate::sync`).
        ftmalloc::loom_shadow_reset();
        r.fetch_add(1, Ordering::Relaxed);
        let f = f.clone();
        spawn(move || f()).join().unwrap();
    });
    eprintln!(
        "loom model {name}: {} interleavings explored",
        runs.load(Ordering::Relaxed)
    );
}

/// A heap whose pools hold exactly 4 blocks of `size` and whose arenas hold 4 pools.
fn tiny_heap() -> (Arc<Allocator>, Layout) {
    let a = Allocator::with_config(Mode::FreeThreaded, Config::new(1024, 4096)).unwrap();
    let g = *a.geometry();
    let size = (g.pool_size - g.pool_overhead) / 4 / 16 * 16;
    assert_eq!(g.blocks_per_pool(size / 16 - 1), 4);
    (Arc::new(a), Layout::from_size_align(size, 16).unwrap())
}

/// A handle whose borrow is detached from the `Arc`, so it can move into a loom thread.
///
/// # Safety
/// The caller must keep a clone of `a` alive until the handle is dropped.
unsafe fn detached_handle(a: &Arc<Allocator>) -> ThreadCache<'static> {
    // SAFETY: the caller keeps the allocator alive for the handle's lifetime.
    let a: &'static Allocator = unsafe { &*Arc::as_ptr(a) };
    a.thread_cache().unwrap()
}

/// Checks the accounting equation and that `live` blocks are distinct and ours.
fn check(a: &Allocator, live: &[usize]) {
    let set: HashSet<usize> = live.iter().copied().collect();
    assert_eq!(set.len(), live.len(), "a block was handed out twice");
    assert!(live.iter().all(|&p| a.owns(p as *const u8)));
    let s = a.stats();
    assert_eq!(
        s.blocks_in_use(),
        live.len(),
        "blocks lost or double-counted:\n{s}"
    );
    assert_eq!(s.total(), s.mapped_bytes());
}

/// Frees everything, then checks that nothing is in use and at most one arena stays mapped
/// once a cache adopts and returns the ownerless pools.
fn drain(a: &Allocator, live: Vec<usize>, l: Layout) {
    for p in live {
        // SAFETY: each live block is freed once.
        unsafe { a.free(p as *mut u8) };
    }
    check(a, &[]);
    let mut tc = a.thread_cache().unwrap();
    // SAFETY: allocated and freed at once.
    unsafe {
        let p = tc.alloc(l);
        tc.free(p);
    }
    drop(tc);
    check(a, &[]);
    let arenas = a.stats().counters.current;
    assert!(
        arenas <= 1,
        "{arenas} arenas still mapped with nothing in use"
    );
}

/// (a) Remote frees race with the owner collecting its remote list.
#[test]
fn remote_free_vs_owner_collecting() {
    model("a: remote free vs owner collecting", || {
        let (a, l) = tiny_heap();
        let mut owner = a.thread_cache().unwrap();
        // SAFETY: blocks are live until freed once.
        let blocks: Vec<usize> = (0..4).map(|_| unsafe { owner.alloc(l) } as usize).collect();
        let remote = [blocks[0], blocks[1]];
        let a2 = a.clone();
        let t = spawn(move || {
            for p in remote {
                // SAFETY: freed once, by this thread (a remote free).
                unsafe { a2.free(p as *mut u8) };
            }
        });
        // The pool is full: this allocation collects whatever arrived, or detaches the pool.
        // SAFETY: fresh block.
        let extra = unsafe { owner.alloc(l) } as usize;
        t.join().unwrap();
        // `extra` may be one of the remotely freed blocks (collected) or a block of a new pool.
        let mut live = vec![blocks[2], blocks[3], extra];
        check(&a, &live);
        // Every remotely freed block is reachable again: a few more allocations bring back
        // both (from the owner's pools or, if the pool was detached, by adoption).
        let mut got: HashSet<usize> = [extra].into_iter().collect();
        for _ in 0..6 {
            if remote.iter().all(|r| got.contains(r)) {
                break;
            }
            // SAFETY: fresh block.
            let p = unsafe { owner.alloc(l) } as usize;
            got.insert(p);
            live.push(p);
        }
        assert!(
            remote.iter().all(|r| got.contains(r)),
            "a remote free was lost"
        );
        check(&a, &live);
        drop(owner);
        drain(&a, live, l);
    });
}

/// Fills the first arena: four caches (returned, to be kept alive) hold one pool each, with one
/// live block each (returned).
fn fill_first_arena(a: &Allocator, l: Layout) -> (Vec<ThreadCache<'_>>, Vec<usize>) {
    let mut keep = Vec::new();
    let mut live = Vec::new();
    for _ in 0..4 {
        let mut tc = a.thread_cache().unwrap();
        // SAFETY: fresh block.
        live.push(unsafe { tc.alloc(l) } as usize);
        keep.push(tc);
    }
    (keep, live)
}

/// Allocates the 4 blocks of one pool through `owner`, leaving that pool full.
fn fill_one_pool(owner: &mut ThreadCache<'_>, l: Layout) -> Vec<usize> {
    // SAFETY: blocks are live until freed once.
    (0..4).map(|_| unsafe { owner.alloc(l) } as usize).collect()
}

/// Asserts that each of a model's outcomes occurred in some interleaving (or the model proves
/// nothing about the one that did not): `(counter, what the interleaving did)` pairs.
fn assert_outcomes(outcomes: &[(&std::sync::atomic::AtomicUsize, &str)]) {
    for (count, what) in outcomes {
        assert!(
            count.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "no interleaving {what}"
        );
    }
}

/// (b) A remote free into a full pool races with its owner allocating (and detaching it).
#[test]
fn remote_free_into_full_pool_vs_owner_allocating() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Both outcomes must be explored, or the model proves nothing.
    static COLLECTED: AtomicUsize = AtomicUsize::new(0);
    static PUBLISHED: AtomicUsize = AtomicUsize::new(0);
    model(
        "b: remote free into a full pool vs owner allocating",
        || {
            let (a, l) = tiny_heap();
            let mut owner = a.thread_cache().unwrap();
            let blocks = fill_one_pool(&mut owner, l);
            let freed = blocks[2];
            let a2 = a.clone();
            let t = spawn(move || {
                // SAFETY: freed once (a remote free into a full pool).
                unsafe { a2.free(freed as *mut u8) };
            });
            // SAFETY: fresh block.
            let extra = unsafe { owner.alloc(l) } as usize;
            t.join().unwrap();
            let s = a.stats();
            // Either the owner collected the block, or the pool was detached and the remote free
            // published it on the abandoned list. Never neither.
            assert!(
                extra == freed || s.abandoned_pools == 1,
                "the freed block is unreachable:\n{s}"
            );
            let mut live = vec![blocks[0], blocks[1], blocks[3], extra];
            check(&a, &live);
            if extra == freed {
                COLLECTED.fetch_add(1, Ordering::Relaxed);
            } else {
                PUBLISHED.fetch_add(1, Ordering::Relaxed);
                // Another cache adopts the published pool and gets the block back.
                let mut other = a.thread_cache().unwrap();
                // SAFETY: fresh block.
                let p = unsafe { other.alloc(l) } as usize;
                assert_eq!(p, freed);
                live.push(p);
                drop(other);
            }
            check(&a, &live);
            drop(owner);
            drain(&a, live, l);
        },
    );
    assert_outcomes(&[
        (&COLLECTED, "collected the block"),
        (&PUBLISHED, "published the pool"),
    ]);
}

/// (f) As (b), but the remote freer has a cache of its own that allocates the class: its free
/// goes into a batch, and when the batch's publication clears `DETACHED` it receives the pool
/// and takes it over into that cache instead of publishing it.
#[test]
fn remote_free_with_a_cache_into_full_pool_vs_owner_allocating() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Both outcomes must be explored, or the model proves nothing.
    static COLLECTED: AtomicUsize = AtomicUsize::new(0);
    static TAKEN_OVER: AtomicUsize = AtomicUsize::new(0);
    model(
        "f: remote free with a cache into a full pool vs owner allocating",
        || {
            let (a, l) = tiny_heap();
            let mut owner = a.thread_cache().unwrap();
            let blocks = fill_one_pool(&mut owner, l);
            let freed = blocks[2];
            // SAFETY: `a` outlives the handle: it is joined back and dropped below.
            let mut freer = unsafe { detached_handle(&a) };
            // The freer allocates this class too (it has a current pool of its own).
            // SAFETY: fresh block, freed in `drain`.
            let mine = unsafe { freer.alloc(l) } as usize;
            let t = spawn(move || {
                // SAFETY: freed once, through a cache that does not own the pool; the batch
                // of one is published by the flush.
                unsafe { freer.free(freed as *mut u8) };
                freer.flush();
                freer
            });
            // SAFETY: fresh block.
            let extra = unsafe { owner.alloc(l) } as usize;
            let mut freer = t.join().unwrap();
            let mut live = vec![blocks[0], blocks[1], blocks[3], extra, mine];
            check(&a, &live);
            // Nothing is published: the pool went back to its owner or over to the freer.
            assert_eq!(a.stats().abandoned_pools, 0);
            if extra == freed {
                COLLECTED.fetch_add(1, Ordering::Relaxed);
                assert_eq!(freer.pools(), 1, "the freer took a pool it did not receive");
            } else {
                TAKEN_OVER.fetch_add(1, Ordering::Relaxed);
                // The freer received the detached pool: it owns it and gets the block back
                // once its own pool's three other blocks are handed out.
                assert_eq!(
                    freer.pools(),
                    2,
                    "the received pool is lost:\n{}",
                    a.stats()
                );
                // SAFETY: fresh blocks.
                let got: Vec<usize> = (0..4).map(|_| unsafe { freer.alloc(l) } as usize).collect();
                assert!(got.contains(&freed), "the freed block was lost");
                live.extend(got);
            }
            check(&a, &live);
            drop(freer);
            drop(owner);
            drain(&a, live, l);
        },
    );
    assert_outcomes(&[
        (&COLLECTED, "collected the block"),
        (&TAKEN_OVER, "handed the pool to the freer"),
    ]);
}

/// (g) A batch of two remote frees, published with one compare-exchange by a cache that does
/// not allocate the class, races with the owner of the full pool allocating: the owner collects
/// both blocks, or detaches the pool and the publication receives it and, as the receiver does
/// not allocate the class, pushes it onto the abandoned stack, where another cache adopts it.
#[test]
fn batched_publication_vs_owner_collecting_or_detaching() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COLLECTED: AtomicUsize = AtomicUsize::new(0);
    static PUBLISHED: AtomicUsize = AtomicUsize::new(0);
    model(
        "g: batched publication vs owner collecting or detaching",
        || {
            let (a, l) = tiny_heap();
            let mut owner = a.thread_cache().unwrap();
            let blocks = fill_one_pool(&mut owner, l);
            let freed = [blocks[1], blocks[2]];
            // SAFETY: `a` outlives the handle: it is joined back and dropped below.
            let mut freer = unsafe { detached_handle(&a) };
            let t = spawn(move || {
                // SAFETY: each freed once; both wait in one batch until the flush publishes it.
                unsafe {
                    freer.free(freed[0] as *mut u8);
                    freer.free(freed[1] as *mut u8);
                }
                freer.flush();
                freer
            });
            // SAFETY: fresh block.
            let extra = unsafe { owner.alloc(l) } as usize;
            let freer = t.join().unwrap();
            assert_eq!(
                freer.pools(),
                0,
                "a cache that does not allocate the class kept a pool"
            );
            drop(freer);
            let mut live = vec![blocks[0], blocks[3], extra];
            check(&a, &live);
            let s = a.stats();
            if freed.contains(&extra) {
                COLLECTED.fetch_add(1, Ordering::Relaxed);
                assert_eq!(s.abandoned_pools, 0, "{s}");
                // The other block came with the same collection.
                // SAFETY: fresh block.
                let p = unsafe { owner.alloc(l) } as usize;
                assert!(freed.contains(&p) && p != extra);
                live.push(p);
            } else {
                PUBLISHED.fetch_add(1, Ordering::Relaxed);
                assert_eq!(
                    s.abandoned_pools, 1,
                    "the received pool is unreachable:\n{s}"
                );
                let mut other = a.thread_cache().unwrap();
                // SAFETY: fresh blocks.
                let got: Vec<usize> = (0..2).map(|_| unsafe { other.alloc(l) } as usize).collect();
                assert!(
                    freed.iter().all(|f| got.contains(f)),
                    "a batched block was lost"
                );
                live.extend(got);
                drop(other);
            }
            check(&a, &live);
            drop(owner);
            drain(&a, live, l);
        },
    );
    assert_outcomes(&[
        (&COLLECTED, "collected the batch"),
        (&PUBLISHED, "published the pool"),
    ]);
}

/// (h) A purge (`trim`: claim every free returned pool, give its pages back, clear its header
/// bit, return it) races with a cache claiming a pool and writing a block: no pool is used by
/// both, and a pool claimed after its purge gets a fresh header.
#[test]
fn purge_vs_claim() {
    model("h: purge vs claim", || {
        let (a, l) = tiny_heap();
        // Two pools of the first arena become free and dirty (returned, not purged); a third
        // keeps a block so the arena stays mapped.
        let mut tc = a.thread_cache().unwrap();
        // SAFETY: blocks are live until freed once.
        let blocks: Vec<usize> = (0..9).map(|_| unsafe { tc.alloc(l) } as usize).collect();
        let kept = blocks[8];
        for &p in &blocks[..8] {
            // SAFETY: freed once, by the owner: the two full pools return to the arena.
            unsafe { tc.free(p as *mut u8) };
        }
        drop(tc);
        assert!(a.stats().dirty_pools >= 2, "{}", a.stats());
        let a1 = a.clone();
        let purger = spawn(move || {
            a1.trim();
        });
        let a2 = a.clone();
        let claimer = spawn(move || {
            let mut tc = a2.thread_cache().unwrap();
            // SAFETY: fresh block; written whole to prove it is ours and mapped.
            let p = unsafe { tc.alloc(l) };
            assert!(!p.is_null());
            // SAFETY: p is a fresh block of l.size() bytes.
            unsafe { p.write_bytes(0x5A, l.size()) };
            drop(tc);
            p as usize
        });
        purger.join().unwrap();
        let p = claimer.join().unwrap();
        // SAFETY: p is live.
        assert_eq!(unsafe { *(p as *const u8) }, 0x5A);
        let live = vec![kept, p];
        check(&a, &live);
        drain(&a, live, l);
    });
}

/// A handle owning two pools: the current one, holding `extra`, and a partial one whose only
/// live block is `last` (the other three freed). Returns `(handle, extra, last)`.
///
/// # Safety
/// As [`detached_handle`]: the caller keeps `a` alive until the handle is dropped.
unsafe fn partial_pool_with_one_live_block(
    a: &Arc<Allocator>,
    l: Layout,
) -> (ThreadCache<'static>, usize, usize) {
    // SAFETY: forwarded contract.
    let mut owner = unsafe { detached_handle(a) };
    let blocks = fill_one_pool(&mut owner, l);
    // SAFETY: fresh block: the full pool is detached, a second pool becomes current.
    let extra = unsafe { owner.alloc(l) } as usize;
    // SAFETY: each freed once. The first free receives the detached pool back (its word names
    // this cache); the next two are local frees.
    unsafe {
        owner.free(blocks[0] as *mut u8);
        owner.flush();
        owner.free(blocks[1] as *mut u8);
        owner.free(blocks[2] as *mut u8);
    }
    assert_eq!(owner.pools(), 2);
    (owner, extra, blocks[3])
}

/// (i) The owner sweeps its partial pools while another thread frees the last live block of
/// one of them: the pool is returned to its arena exactly once, by this sweep or the next.
#[test]
fn sweep_vs_remote_free() {
    model("i: sweep vs remote free", || {
        let (a, l) = tiny_heap();
        // SAFETY: `a` outlives the handle: it is joined back and dropped below.
        let (mut owner, extra, last) = unsafe { partial_pool_with_one_live_block(&a, l) };
        let a1 = a.clone();
        let freer = spawn(move || {
            // SAFETY: freed once, remotely.
            unsafe { a1.free(last as *mut u8) };
        });
        let owner = spawn(move || {
            owner.trim();
            owner
        });
        freer.join().unwrap();
        let mut owner = owner.join().unwrap();
        owner.trim();
        assert_eq!(
            owner.pools(),
            1,
            "a pool emptied remotely stayed with its owner"
        );
        let live = vec![extra];
        check(&a, &live);
        drop(owner);
        drain(&a, live, l);
    });
}

/// (c) Two threads claim pools while the arena they would claim from is being released.
#[test]
fn pool_claims_vs_arena_release() {
    model("c: pool claims vs arena release", || {
        let (a, l) = tiny_heap();
        // Fill the first arena's 4 pools, one per cache, so it stays mapped and full.
        let (keep, mut live) = fill_first_arena(&a, l);
        // A fifth cache opens a second arena; its last pool goes back from another thread.
        // SAFETY: a1, moved into the releaser with r, outlives r.
        let mut r = unsafe { detached_handle(&a) };
        // SAFETY: fresh block.
        let rb = unsafe { r.alloc(l) } as usize;
        assert_eq!(a.stats().counters.current, 2);
        let a1 = a.clone();
        let releaser = spawn(move || {
            // SAFETY: r's block, freed once; dropping r returns its empty pool and may
            // release the arena.
            unsafe { r.free(rb as *mut u8) };
            drop(r);
            drop(a1);
        });
        let claimers: Vec<_> = (0..2)
            .map(|_| {
                let a = a.clone();
                spawn(move || {
                    let mut tc = a.thread_cache().unwrap();
                    // SAFETY: fresh block; written to prove its memory is mapped.
                    let p = unsafe { tc.alloc(l) };
                    assert!(!p.is_null());
                    // SAFETY: p is a fresh block of l.size() bytes.
                    unsafe { p.write_bytes(0xAB, l.size()) };
                    let p = p as usize;
                    drop(tc);
                    p
                })
            })
            .collect();
        releaser.join().unwrap();
        for c in claimers {
            let p = c.join().unwrap();
            assert!(a.owns(p as *const u8), "claimed from an unmapped arena");
            // SAFETY: p is live; its arena must still be mapped.
            assert_eq!(unsafe { *(p as *const u8) }, 0xAB);
            live.push(p);
        }
        check(&a, &live);
        assert!(a.stats().counters.current <= 3);
        drop(keep);
        drain(&a, live, l);
    });
}

/// (d) A thread exits (its cache is abandoned) while another frees one of its blocks.
#[test]
fn abandonment_vs_remote_free() {
    for fill in [3usize, 4] {
        // 3 blocks: the pool is abandoned with free space; 4: it is detached full.
        model(
            &format!("d: abandonment vs remote free ({fill} blocks)"),
            move || {
                let (a, l) = tiny_heap();
                // SAFETY: a1, moved into the exiting thread with tc, outlives tc.
                let mut tc = unsafe { detached_handle(&a) };
                // SAFETY: blocks are live until freed once.
                let blocks: Vec<usize> =
                    (0..fill).map(|_| unsafe { tc.alloc(l) } as usize).collect();
                let freed = blocks[0];
                let a1 = a.clone();
                let a2 = a.clone();
                let exiting = spawn(move || {
                    drop(tc);
                    drop(a1);
                });
                let freer = spawn(move || {
                    // SAFETY: freed once.
                    unsafe { a2.free(freed as *mut u8) };
                });
                exiting.join().unwrap();
                freer.join().unwrap();
                let mut live: Vec<usize> = blocks[1..].to_vec();
                check(&a, &live);
                // The pool is reachable: a new cache gets the freed block back.
                let mut other = a.thread_cache().unwrap();
                let mut got = Vec::new();
                for _ in 0..(4 - fill + 1) {
                    // SAFETY: fresh block.
                    got.push(unsafe { other.alloc(l) } as usize);
                }
                assert!(got.contains(&freed), "the freed block was lost");
                live.extend(got);
                check(&a, &live);
                drop(other);
                drain(&a, live, l);
            },
        );
    }
}

/// (e) Two threads adopt abandoned pools at once.
#[test]
fn two_adopters() {
    model("e: two adopters", || {
        let (a, l) = tiny_heap();
        let mut tc = a.thread_cache().unwrap();
        // Two pools: one with 1 block in use, one with 2; both abandoned when tc drops.
        // SAFETY: blocks are live until freed once.
        let blocks: Vec<usize> = (0..6).map(|_| unsafe { tc.alloc(l) } as usize).collect();
        for &p in &blocks[1..4] {
            // SAFETY: freed once, by the owner.
            unsafe { tc.free(p as *mut u8) };
        }
        drop(tc);
        let mut live = vec![blocks[0], blocks[4], blocks[5]];
        check(&a, &live);
        let adopters: Vec<_> = (0..2)
            .map(|_| {
                let a = a.clone();
                spawn(move || {
                    let mut tc = a.thread_cache().unwrap();
                    // SAFETY: fresh blocks.
                    let got: Vec<usize> = (0..2).map(|_| unsafe { tc.alloc(l) } as usize).collect();
                    drop(tc);
                    got
                })
            })
            .collect();
        for t in adopters {
            live.extend(t.join().unwrap());
        }
        check(&a, &live);
        drain(&a, live, l);
    });
}

/// Layout of `n` bytes (16-aligned).
fn lay(n: usize) -> Layout {
    Layout::from_size_align(n, 16).unwrap()
}

/// (j) Statistics read while an arena is released and its descriptor reused for a new arena
/// (the release handshake, `central` protocol steps 3 and 5): the reader never reads a pool
/// header that was not written, nor one being written.
#[test]
fn stats_vs_arena_release_and_reuse() {
    model("j: stats vs arena release and reuse", || {
        let (a, _) = tiny_heap();
        // Arena 0: four pools of four classes, held throughout.
        let mut keep = a.thread_cache().unwrap();
        // SAFETY: fresh blocks, freed at the end.
        let held: Vec<usize> = [32, 48, 64, 80]
            .iter()
            .map(|&n| unsafe { keep.alloc(lay(n)) } as usize)
            .collect();
        // Arena 1 (descriptor slot 1): one pool of 224-byte blocks.
        // SAFETY: a2, moved into the releaser with r, outlives r.
        let mut r = unsafe { detached_handle(&a) };
        // SAFETY: fresh block.
        let rb = unsafe { r.alloc(lay(224)) } as usize;
        assert_eq!(a.stats().counters.current, 2);
        let a1 = a.clone();
        let reader = spawn(move || {
            let s = a1.stats();
            // No pool ever served 16-byte blocks: such a row would be a header read before
            // (or while) it was written.
            assert_eq!(s.classes[0].pools, 0, "an unwritten header was read:\n{s}");
        });
        let a2 = a.clone();
        let releaser = spawn(move || {
            // SAFETY: r's block, freed once: its pool goes back and arena 1 is released.
            unsafe { r.free(rb as *mut u8) };
            drop(r);
            // Arena 0 is full: a new arena takes the freed descriptor slot.
            let mut n = a2.thread_cache().unwrap();
            // SAFETY: allocated and freed at once.
            unsafe {
                let p = n.alloc(lay(96));
                n.free(p);
            }
            drop(n);
        });
        reader.join().unwrap();
        releaser.join().unwrap();
        check(&a, &held);
        for p in held {
            // SAFETY: freed once.
            unsafe { keep.free(p as *mut u8) };
        }
        drop(keep);
        check(&a, &[]);
    });
}

/// (k) A full pool detached by its owner; the owner (with its cache) and two cache-less
/// threads free one block each at once: exactly one of them receives the pool.
#[test]
fn three_freers_into_a_detached_pool() {
    model("k: three freers into a detached pool", || {
        let (a, l) = tiny_heap();
        let mut owner = a.thread_cache().unwrap();
        let blocks = fill_one_pool(&mut owner, l);
        // The pool is full: this allocation detaches it and claims another.
        // SAFETY: fresh block.
        let extra = unsafe { owner.alloc(l) } as usize;
        assert_eq!(owner.pools(), 1);
        let freers: Vec<_> = [blocks[0], blocks[1]]
            .into_iter()
            .map(|p| {
                let a = a.clone();
                // SAFETY: freed once (a cache-less remote free).
                spawn(move || unsafe { a.free(p as *mut u8) })
            })
            .collect();
        // SAFETY: freed once, by the detaching owner: into its batch (a handle batches remote
        // frees), published by the flush, racing the other two publications.
        unsafe { owner.free(blocks[2] as *mut u8) };
        owner.flush();
        for t in freers {
            t.join().unwrap();
        }
        let s = a.stats();
        let kept = owner.pools() == 2;
        let published = s.abandoned_pools == 1;
        assert!(
            kept ^ published,
            "the pool was received {} times:\n{s}",
            kept as u8 + published as u8
        );
        let mut live = vec![blocks[3], extra];
        check(&a, &live);
        // The three freed blocks come back (the owner's list, or by adoption).
        let mut got = HashSet::new();
        for _ in 0..6 {
            // SAFETY: fresh block.
            let p = unsafe { owner.alloc(l) } as usize;
            got.insert(p);
            live.push(p);
        }
        assert!(
            blocks[..3].iter().all(|b| got.contains(b)),
            "a freed block was lost"
        );
        check(&a, &live);
        drop(owner);
        drain(&a, live, l);
    });
}

/// (l) Two freers, each with its own cache, race into one detached pool: exactly one takes it.
#[test]
fn two_cached_freers_into_a_detached_pool() {
    model("l: two cached freers into a detached pool", || {
        let (a, l) = tiny_heap();
        let mut owner = a.thread_cache().unwrap();
        let blocks = fill_one_pool(&mut owner, l);
        // SAFETY: fresh block (detaches the full pool).
        let extra = unsafe { owner.alloc(l) } as usize;
        let freers: Vec<_> = [blocks[0], blocks[1]]
            .into_iter()
            .map(|p| {
                // SAFETY: `a`, moved into the thread, outlives the handle.
                let mut h = unsafe { detached_handle(&a) };
                let a = a.clone();
                spawn(move || {
                    // SAFETY: freed once, into this handle's batch; flushing publishes it.
                    unsafe { h.free(p as *mut u8) };
                    h.flush();
                    let n = h.pools();
                    drop(h);
                    drop(a);
                    n
                })
            })
            .collect();
        let taken: usize = freers.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(taken <= 1, "the pool was taken over {taken} times");
        let live = vec![blocks[2], blocks[3], extra];
        check(&a, &live);
        drop(owner);
        drain(&a, live, l);
    });
}

/// (m) An abandoned pool with a free block: a remote free into it, a `trim()` (which takes the
/// abandoned stacks and returns or pushes back every pool), and an adopter, all at once.
#[test]
fn remote_free_vs_trim_vs_adopter() {
    model("m: remote free vs trim vs adopter", || {
        let (a, l) = tiny_heap();
        let mut x = a.thread_cache().unwrap();
        // SAFETY: fresh blocks.
        let blocks: Vec<usize> = (0..3).map(|_| unsafe { x.alloc(l) } as usize).collect();
        drop(x); // abandoned with one never-carved block
        assert_eq!(a.stats().abandoned_pools, 1);
        let freed = blocks[0];
        let a1 = a.clone();
        // SAFETY: freed once.
        let freer = spawn(move || unsafe { a1.free(freed as *mut u8) });
        let a2 = a.clone();
        let trimmer = spawn(move || {
            a2.trim();
        });
        let mut y = a.thread_cache().unwrap();
        // SAFETY: fresh block.
        let p = unsafe { y.alloc(l) } as usize;
        freer.join().unwrap();
        trimmer.join().unwrap();
        let mut live = vec![blocks[1], blocks[2], p];
        check(&a, &live);
        // The freed block is reachable again (after y uses up a fresh pool it claimed while
        // trim held the abandoned stack, if it did).
        let mut got = vec![p];
        for _ in 0..6 {
            if got.contains(&freed) {
                break;
            }
            // SAFETY: fresh block.
            let q = unsafe { y.alloc(l) } as usize;
            got.push(q);
            live.push(q);
        }
        assert!(got.contains(&freed), "the remote-freed block was lost");
        check(&a, &live);
        drop(y);
        drain(&a, live, l);
    });
}

/// (n) An adopter takes the abandoned stack of a class while two exiting caches push pools
/// onto it.
#[test]
fn adopter_vs_pushes() {
    model("n: adopter vs pushes", || {
        let (a, l) = tiny_heap();
        let mut live = Vec::new();
        let exiting: Vec<_> = (0..2)
            .map(|_| {
                // SAFETY: `a`, moved into the thread, outlives the handle.
                let mut h = unsafe { detached_handle(&a) };
                // SAFETY: fresh block: the pool has three free blocks when abandoned.
                live.push(unsafe { h.alloc(l) } as usize);
                let a = a.clone();
                spawn(move || {
                    drop(h);
                    drop(a);
                })
            })
            .collect();
        let mut y = a.thread_cache().unwrap();
        // SAFETY: fresh block (adopts if a pool was pushed already, else claims).
        live.push(unsafe { y.alloc(l) } as usize);
        for t in exiting {
            t.join().unwrap();
        }
        check(&a, &live);
        // Every pushed pool is adoptable: 6 more blocks fit in the three pools now in play.
        for _ in 0..6 {
            // SAFETY: fresh block.
            live.push(unsafe { y.alloc(l) } as usize);
        }
        check(&a, &live);
        assert!(
            a.stats().counters.current <= 2,
            "pushed pools were lost:\n{}",
            a.stats()
        );
        drop(y);
        drain(&a, live, l);
    });
}

/// (o) Two threads find every arena full and map new arenas at once (descriptor slots taken by
/// compare-exchange, `central` protocol step 5).
#[test]
fn concurrent_new_arenas() {
    model("o: concurrent new arenas", || {
        let (a, l) = tiny_heap();
        let (keep, mut live) = fill_first_arena(&a, l);
        let claimers: Vec<_> = (0..2)
            .map(|_| {
                let a = a.clone();
                spawn(move || {
                    let mut tc = a.thread_cache().unwrap();
                    // SAFETY: fresh block, written to prove its memory is ours and mapped.
                    let p = unsafe { tc.alloc(l) };
                    assert!(!p.is_null());
                    // SAFETY: as above.
                    unsafe { p.write_bytes(0x5A, l.size()) };
                    let p = p as usize;
                    drop(tc);
                    p
                })
            })
            .collect();
        for c in claimers {
            let p = c.join().unwrap();
            // SAFETY: live block written by its claimer.
            assert_eq!(unsafe { *(p as *const u8) }, 0x5A);
            live.push(p);
        }
        check(&a, &live);
        assert!(a.stats().counters.current <= 3);
        drop(keep);
        drain(&a, live, l);
    });
}

/// (p) A pool returned empty by one thread is claimed by another for a different class (its
/// header re-prepared: carve mark, free list, class), while the first allocates again.
#[test]
fn reused_pool_changes_class() {
    static SAME_POOL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static OTHER_POOL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    model("p: a reused pool changes class", || {
        let (a, l) = tiny_heap();
        // Arena 0: three pools held by `keep`, the fourth by `x`.
        let mut keep = a.thread_cache().unwrap();
        // SAFETY: fresh blocks of three classes (one pool each).
        let held: Vec<usize> = [32, 48, 64]
            .iter()
            .map(|&n| unsafe { keep.alloc(lay(n)) } as usize)
            .collect();
        // SAFETY: `a`, moved into the thread, outlives the handle.
        let mut x = unsafe { detached_handle(&a) };
        // SAFETY: fresh block.
        let xb = unsafe { x.alloc(l) } as usize;
        let xpool = xb & !(a.geometry().pool_size - 1);
        let a1 = a.clone();
        let returner = spawn(move || {
            // SAFETY: freed once; dropping x returns the now empty pool to arena 0.
            unsafe { x.free(xb as *mut u8) };
            drop(x);
            drop(a1);
        });
        let a2 = a.clone();
        let claimer = spawn(move || {
            let mut y = a2.thread_cache().unwrap();
            // SAFETY: fresh 16-byte blocks; written and checked.
            let ps: Vec<usize> = (0..3)
                .map(|_| unsafe { y.alloc(lay(16)) } as usize)
                .collect();
            for (i, &p) in ps.iter().enumerate() {
                // SAFETY: live block of 16 bytes.
                unsafe { (p as *mut u8).write_bytes(i as u8 + 1, 16) };
            }
            drop(y);
            ps
        });
        returner.join().unwrap();
        let ps = claimer.join().unwrap();
        for (i, &p) in ps.iter().enumerate() {
            // SAFETY: live, written by the claimer.
            assert_eq!(unsafe { *(p as *const u8) }, i as u8 + 1, "blocks overlap");
        }
        if ps
            .iter()
            .any(|&p| p & !(a.geometry().pool_size - 1) == xpool)
        {
            SAME_POOL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            OTHER_POOL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut live = held.clone();
        live.extend(&ps);
        check(&a, &live);
        drop(keep);
        for p in live {
            // SAFETY: freed once.
            unsafe { a.free(p as *mut u8) };
        }
        check(&a, &[]);
    });
    assert_outcomes(&[
        (&SAME_POOL, "reused the returned pool for the new class"),
        (&OTHER_POOL, "claimed another pool"),
    ]);
}

/// (q) Arenas of 64 pools (the bitmap's every bit in use, `ALL == u64::MAX`): the last pool of
/// an arena comes back (and the arena is released) while another thread claims a pool.
#[test]
fn release_of_a_64_pool_arena_vs_claim() {
    model("q: release of a 64-pool arena vs claim", || {
        let a = Arc::new(
            Allocator::with_config(Mode::FreeThreaded, Config::new(1024, 64 * 1024)).unwrap(),
        );
        let g = *a.geometry();
        assert_eq!(g.pools_per_arena, 64);
        // Blocks of the largest class: two per pool.
        let big = lay(g.small_limit);
        assert_eq!(g.blocks_per_pool(g.small_limit / 16 - 1), 2);
        // SAFETY: `a`, moved into the thread, outlives the handle.
        let mut h = unsafe { detached_handle(&a) };
        // SAFETY: fresh blocks: 128 blocks fill the 64 pools of arena 0.
        let blocks: Vec<usize> = (0..128).map(|_| unsafe { h.alloc(big) } as usize).collect();
        // A second arena, so the first may be released.
        let mut k = a.thread_cache().unwrap();
        // SAFETY: fresh block.
        let kb = unsafe { k.alloc(big) } as usize;
        assert_eq!(a.stats().counters.current, 2);
        // Every pool of arena 0 but the last comes back.
        for &p in &blocks[..126] {
            // SAFETY: freed once.
            unsafe { h.free(p as *mut u8) };
        }
        let last = [blocks[126], blocks[127]];
        let a1 = a.clone();
        let returner = spawn(move || {
            for p in last {
                // SAFETY: freed once.
                unsafe { h.free(p as *mut u8) };
            }
            drop(h); // the last pool goes back: every bit set, the arena may be released
            drop(a1);
        });
        let a2 = a.clone();
        let claimer = spawn(move || {
            let mut c = a2.thread_cache().unwrap();
            // SAFETY: fresh block, written to prove its memory is mapped.
            let p = unsafe { c.alloc(lay(16)) };
            // SAFETY: as above.
            unsafe { p.write_bytes(0x77, 16) };
            drop(c);
            p as usize
        });
        returner.join().unwrap();
        let p = claimer.join().unwrap();
        assert!(a.owns(p as *const u8), "claimed from a released arena");
        // SAFETY: live block.
        assert_eq!(unsafe { *(p as *const u8) }, 0x77);
        check(&a, &[kb, p]);
        drop(k);
        for q in [kb, p] {
            // SAFETY: freed once.
            unsafe { a.free(q as *mut u8) };
        }
        check(&a, &[]);
    });
}

/// (r) A thread gives up its cache slot (its pools abandoned) while another takes a slot: the
/// slot's cache is handed over through `in_use` (release, then acquire), as at thread exit and
/// binding.
#[test]
fn cache_slot_hand_over() {
    model("r: cache slot hand-over", || {
        let (a, l) = tiny_heap();
        // SAFETY: `a`, moved into the thread, outlives the handle.
        let mut x = unsafe { detached_handle(&a) };
        // SAFETY: fresh block.
        let xb = unsafe { x.alloc(l) } as usize;
        let a1 = a.clone();
        let leaver = spawn(move || {
            drop(x);
            drop(a1);
        });
        let a2 = a.clone();
        let taker = spawn(move || {
            let mut y = a2.thread_cache().unwrap();
            // SAFETY: fresh blocks.
            let ps: Vec<usize> = (0..2).map(|_| unsafe { y.alloc(l) } as usize).collect();
            drop(y);
            ps
        });
        leaver.join().unwrap();
        let mut live = taker.join().unwrap();
        live.push(xb);
        check(&a, &live);
        drain(&a, live, l);
    });
}

/// (s) As (i), but the owner carves the reclaimed pool again at once, while the freer may still
/// be running: the blocks it hands out (the remotely freed one included) must be ordered after
/// the remote free (the sweep's `swap` acquires the freer's publication; nothing else does).
#[test]
fn reclaimed_pool_carved_again() {
    model("s: reclaimed pool carved again", || {
        let (a, l) = tiny_heap();
        // SAFETY: `a` outlives the handle: it is joined back and dropped below.
        let (mut owner, extra, last) = unsafe { partial_pool_with_one_live_block(&a, l) };
        let a1 = a.clone();
        let freer = spawn(move || {
            // SAFETY: freed once, remotely.
            unsafe { a1.free(last as *mut u8) };
        });
        let owner = spawn(move || {
            owner.trim();
            // Seven blocks: the three left in the current pool, then four from the first
            // pool, the reclaimed one if the sweep returned it (carved from the start).
            // SAFETY: fresh blocks, freed at once.
            let got: Vec<usize> = (0..7).map(|_| unsafe { owner.alloc(l) } as usize).collect();
            for &p in &got {
                // SAFETY: freed once.
                unsafe { owner.free(p as *mut u8) };
            }
            // Frees into pools the handle does not own wait in its batches: publish them.
            owner.flush();
            (owner, got)
        });
        freer.join().unwrap();
        let (owner, got) = owner.join().unwrap();
        assert_eq!(
            got.iter().collect::<HashSet<_>>().len(),
            7,
            "a block was handed out twice"
        );
        let live = vec![extra];
        check(&a, &live);
        drop(owner);
        drain(&a, live, l);
    });
}

/// (t) A statistics reader pins an arena its last pool is being returned to: the release is
/// undone (`free` restored to every pool, release) while another thread claims a pool, which
/// must then see the arena's `base`, not `DYING`.
#[test]
fn release_undone_by_a_pin_vs_claim() {
    model("t: release undone by a pin vs claim", || {
        let (a, l) = tiny_heap();
        let (keep, mut live) = fill_first_arena(&a, l);
        // Arena 1: one pool, one block, given back by the releaser.
        // SAFETY: `a`, moved into the releaser, outlives the handle.
        let mut r = unsafe { detached_handle(&a) };
        // SAFETY: fresh block.
        let rb = unsafe { r.alloc(l) } as usize;
        let a1 = a.clone();
        let reader = spawn(move || {
            let s = a1.stats();
            assert!(s.counters.current <= 3, "{s}");
        });
        let a2 = a.clone();
        let releaser = spawn(move || {
            // SAFETY: freed once; the drop returns the pool and may release arena 1.
            unsafe { r.free(rb as *mut u8) };
            drop(r);
            drop(a2);
        });
        let mut c = a.thread_cache().unwrap();
        // SAFETY: fresh block, written to prove its memory is mapped.
        let p = unsafe { c.alloc(l) };
        assert!(!p.is_null());
        // SAFETY: as above.
        unsafe { p.write_bytes(0x3C, l.size()) };
        reader.join().unwrap();
        releaser.join().unwrap();
        live.push(p as usize);
        check(&a, &live);
        drop(c);
        drop(keep);
        drain(&a, live, l);
    });
}

/// (u) A statistics walk races a purge, a new claim and a fresh header of one pool (issue 21,
/// defect 1): the walk loads the arena's `inited` and `free` bits while the pool is claimed and
/// initialised, then reads its header (`shared.owner`, `shared.remote`) while its owner frees
/// its block and drops its cache (the pool returns to its arena), `trim` purges it (clearing
/// its `inited` bit) and a new cache's claim writes its header again
/// (`PoolHeader::init_fresh`). The walk's bit is stale then, so every field it reads
/// must be written with an atomic store: the racy reads are recorded on the fields' shadow
/// cells, and a plain write of the shared line (as `init_fresh` did before the fix) is reported
/// as a causality violation.
#[test]
fn stats_vs_purge_and_reinit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The new claim must re-initialise the purged pool, or the model proves nothing.
    static REINIT: AtomicUsize = AtomicUsize::new(0);
    model("u: stats vs purge and re-initialisation", || {
        let (a, l) = tiny_heap();
        // Pool 0 of the first arena: claimed, its header written, one live block.
        // SAFETY: `a`, moved into the worker, outlives the handle.
        let mut w = unsafe { detached_handle(&a) };
        // SAFETY: fresh block.
        let p = unsafe { w.alloc(l) } as usize;
        let purged = a.stats().pools_purged;
        let a1 = a.clone();
        let reader = spawn(move || {
            let s = a1.stats();
            assert!(s.blocks_in_use() <= 1, "{s}");
        });
        let a2 = a.clone();
        let worker = spawn(move || {
            // SAFETY: freed once, by its owner: the pool is empty.
            unsafe { w.free(p as *mut u8) };
            // The handle's drop returns the empty pool to its arena; `trim` purges it (clears
            // its `inited` bit).
            drop(w);
            a2.trim();
            // A new cache claims the lowest free pool: the purged one, given a fresh header.
            let mut n = a2.thread_cache().unwrap();
            // SAFETY: fresh block, freed at once.
            let again = unsafe {
                let q = n.alloc(l);
                n.free(q);
                a2.geometry().pool_of(q as usize) == a2.geometry().pool_of(p)
            };
            drop(n);
            again
        });
        reader.join().unwrap();
        if worker.join().unwrap() && a.stats().pools_purged > purged {
            REINIT.fetch_add(1, Ordering::Relaxed);
        }
        drain(&a, Vec::new(), l);
    });
    assert_outcomes(&[(&REINIT, "re-initialised the purged pool")]);
}
