//! Free-threaded mode's central structures: the lock-free arena list and the abandoned-pool
//! lists.
//!
//! # The arena list
//! Arena descriptors live in a table (an anonymous mapping) that is never freed while the heap
//! lives, so no descriptor can be freed under a reader and no epoch scheme is needed; the slots
//! `0..hwm` form the central list that claimers scan. Each descriptor holds:
//! - `free`: one bit per pool, set when the pool is free in the arena (claimable);
//! - `base`: the arena's address, or `VACANT` (slot unused), `RESERVED` (a thread is mapping an
//!   arena for it) or `DYING` (a thread is releasing it);
//! - `inited`: one bit per pool whose header has been written once (lazy header init; the
//!   `szidx` shortcut needs the old header);
//! - `pins`: readers (statistics) that may read pool headers of this arena;
//! - `dirty` and `aged`: pools returned to the arena whose pages are still resident: `dirty`
//!   since the last maintenance pass, `aged` since the one before (see *Purge*).
//!
//! Protocol and invariants:
//! 1. **Claim** = compare-exchange clearing one set bit of `free` (acquire). Only the winner of
//!    a bit touches that pool; it reads `base` only *after* winning, and `base` cannot change
//!    while any bit is clear (release needs all bits set), so it reads the arena it claimed
//!    from. No ABA: a stale read of `free` can only make the compare-exchange fail.
//! 2. **Return** = `fetch_or` of the pool's bit (release), by the pool's last owner, after it
//!    wrote the pool header for the last time. The next claimer acquires it.
//! 3. **Release** is the single transition `free: ALL -> 0` (compare-exchange). Once it wins,
//!    no claimer can win any bit (all are clear), and no returner exists (all pools were free),
//!    so no thread touches the arena again except the releaser and pinned readers, which it
//!    excludes with a Dekker handshake of two `SeqCst` fences: the releaser stores
//!    `base = DYING`, fences, loads `pins`; a reader increments `pins`, fences, loads `base`
//!    (acquire). Whichever fence comes first in the single total order of `SeqCst` fences, the
//!    other side sees its store: either the releaser sees the pin and undoes the release, or the
//!    reader sees `DYING` (or a later value) and skips the arena. (Fences, not `SeqCst`
//!    accesses, because loom checks fences and treats `SeqCst` accesses as acquire/release.)
//!    A reader unpins with release after its last read and the releaser loads `pins` with
//!    acquire, so a pin it sees gone was dropped after the reads it protected. The releaser then
//!    clears the arena map entry, unmaps, and stores `base = VACANT` (release).
//! 4. At least one arena stays mapped: a releaser first decrements `mapped` only if it is above
//!    one, and restores it if the release transition then fails.
//! 5. **New arena**: a slot moves `VACANT -> RESERVED` by compare-exchange, so one thread maps
//!    into it; it registers the arena in the arena map, clears `inited`, stores `base`
//!    (release: a statistics reader that sees the new `base` sees `inited` cleared, so it never
//!    reads a header of the new arena before its claimer wrote it and set the bit), then
//!    publishes `free = ALL` minus the pool it keeps (release): claimers that win a bit see
//!    `base`. A header is written once per `inited` bit, and a reader reads it only after
//!    acquiring the bit. Pins do not stop a purge and a new claim of a pool (steps 6 and 1), so
//!    a reader may hold a stale bit while the header is written afresh: every header field a
//!    reader may read is written with an atomic store, on every initialisation
//!    ([`PoolHeader::init_fresh`]), so that is no data race (the reader's numbers are
//!    approximate then, never undefined; loom model (u)).
//!
//! 6. **Purge** gives a free pool's pages back to the OS (`madvise(MADV_DONTNEED)`, see
//!    [`os::purge`]) without a new state: the purger *claims* the pools it purges exactly as
//!    a claimer does (protocol step 1, one compare-exchange clearing all their bits), so no other
//!    thread can use them meanwhile; it purges them, clears their `inited` bits (their headers
//!    are now zero pages: the next claimer writes a fresh header), and *returns* them (protocol
//!    step 2, one `fetch_or` with release). A purge never touches a pool it has not claimed,
//!    whatever `dirty` and `aged` say, so stale bits (of a released and reused descriptor, or
//!    a pool claimed and returned since) cost at most an early purge, never a wrong one.
//! 7. **Decay**: a returned pool sets its `dirty` bit. A maintenance pass moves `dirty` into
//!    `aged` and purges the pools that were `aged` and are free, so a pool is purged after it
//!    has stayed free between one and two decay intervals. Passes run at most once per decay
//!    interval ([`Central::maintenance_due`], one compare-exchange elects the thread), from slow
//!    paths of the allocator: no background thread. With a decay of 0 a pool is purged as it
//!    is returned, before its bit is set. A pass also releases arenas whose pools are all free
//!    (a release undone by a statistics pin is retried there).
//!
//! 8. **Fork**: a child inherits the descriptors as the parent's other threads left them at
//!    the moment of `fork`, and those threads do not exist in the child. `pending` holds the
//!    address of an arena a thread is mapping (`RESERVED`) or unmapping (`DYING`) until that
//!    step has finished, so the child handler ([`Central::after_fork`]) completes or undoes it;
//!    it also drops the parent's statistics pins (their readers are gone), and counts `mapped`
//!    afresh from the descriptors, since a thread stopped between its change of `mapped` and
//!    the descriptor change it stands for (steps 4 and 5) leaves it off by one. The states a
//!    release (step 3) can be stopped in, and what the child makes of them
//!    (`a_child_repairs_a_release_cut_short_at_every_step` builds each):
//!    - `mapped` decremented, transition not tried (or lost, or undone up to `mapped`): the
//!      arena is as before, all pools free; the recount corrects `mapped`.
//!    - transition won, `pending` stored, `base` not yet `DYING` (or an undo that has restored
//!      `base` but not `free`): `base == pending`, `free == 0`: the child undoes the release
//!      (`free = ALL`). (`new_arena` between storing `base` and publishing `free` looks the
//!      same, and its pools are as free: the mapper that kept pool 0 is gone.)
//!    - `base == DYING` with `pending` set: the child finishes the release (unmap, `VACANT`);
//!      `pending` is cleared before the unmap, so `DYING` without it leaves the range mapped
//!      and forgotten rather than unmap what may be someone else's mapping by then.
//!    - transition won, `pending` not yet stored: `base` is the arena and `free == 0`, which is
//!      also the state of an arena whose every pool some thread claimed (every value of `free`
//!      is a legitimate set of claimed pools with 64 pools an arena, so no order of the steps
//!      tells the two apart). A fork never sees it: releases pass a **fork gate**
//!      (`fork_gate`): a release counts itself in before its transition and out after its last
//!      step, and gives up (the arena lives on) if a fork is being prepared; the prepare handler
//!      ([`Central::fork_prepare`]) closes the gate and waits for the releases counted in to
//!      finish, so the child sees no release in flight on another thread. This is the
//!      free-threaded mode's one wait, on the fork path only: a release (a few atomics and one
//!      `munmap`) never waits, and an allocation or free never meets the gate. A fork from a
//!      signal handler that interrupted its own thread's release does not wait for itself (a
//!      thread-local names the heap whose release the thread is in); that release then
//!      continues in the child as in the parent. The repairs above stay for the states the
//!      gate does not cover (the `mapped` change before the gate, a gated release that gave up).
//!
//! # Abandoned pools
//! One Treiber stack per size class of pools that have free blocks and no owner (pools of
//! exited threads, and full pools that a remote free made usable again). Pushes are
//! compare-exchange loops; the only removal takes the whole stack with one `swap`, so there is
//! no pop and no ABA. A pool is on at most one stack at a time: it is pushed only by the
//! thread that holds it without an owner (see `thread_cache`), and taken only by swapping.
//!
//! # Layout and contention
//! Each descriptor and each stack head sits in its own `CachePadded` slot, so threads working
//! on different arenas or classes never contend on one cache line; a failed compare-exchange
//! retries after `Backoff::spin` (bounded exponential spinning; no yield, no sleep, so every
//! path stays lock-free).

use crate::base::sync::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use crate::base::{os, stack};
use crate::layout::arena_map::ArenaMap;
use crate::layout::geometry::{Geometry, MAX_POOLS_PER_ARENA};
use crate::layout::pool::PoolHeader;
use crate::layout::size_class::NUM_CLASSES;
use crate::layout::stats::ArenaCounters;
use core::ptr;
use crossbeam_utils::{Backoff, CachePadded};

const VACANT: usize = 0;
const RESERVED: usize = 1;
const DYING: usize = 2;

/// `Central::fork_gate`'s flag: a fork's prepare handler has closed the fork gate.
const FORKING: usize = 1 << (usize::BITS - 1);

#[cfg(not(loom))]
std::thread_local! {
    /// The address of the `Central` whose release this thread is in (0: none), so that a fork
    /// from a signal handler that interrupted it does not wait for itself (protocol step 8).
    /// Const, no destructor.
    static IN_RELEASE: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// Descriptor slots in the table. Under loom the table is tiny and explicitly initialised.
#[cfg(not(loom))]
pub(crate) const MAX_ARENAS: usize = crate::layout::geometry::MAX_ARENAS;
#[cfg(loom)]
pub(crate) const MAX_ARENAS: usize = 4;

pub(crate) struct ArenaDesc {
    free: AtomicU64,
    base: AtomicUsize,
    inited: AtomicU64,
    pins: AtomicUsize,
    /// The arena being mapped into (`RESERVED`) or unmapped from (`DYING`) this slot, until that
    /// step has finished; 0 otherwise. Read only by the child handler after `fork` (protocol
    /// step 8), where no other thread runs, so a `core` atomic.
    pending: core::sync::atomic::AtomicUsize,
    /// Hints only (protocol step 6: a purge claims before it touches), so `core` atomics,
    /// outside the loom facade: loom need not interleave them.
    dirty: core::sync::atomic::AtomicU64,
    aged: core::sync::atomic::AtomicU64,
}

impl ArenaDesc {
    #[cfg_attr(not(loom), allow(dead_code))]
    fn new() -> ArenaDesc {
        ArenaDesc {
            free: AtomicU64::new(0),
            base: AtomicUsize::new(VACANT),
            inited: AtomicU64::new(0),
            pins: AtomicUsize::new(0),
            pending: core::sync::atomic::AtomicUsize::new(0),
            dirty: core::sync::atomic::AtomicU64::new(0),
            aged: core::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// The central structures of one free-threaded heap.
pub(crate) struct Central {
    geo: Geometry,
    all: u64,
    /// One descriptor per cache line pair (`CachePadded`): claimers and returners of pools in
    /// different arenas CAS different words, and must not contend on one line.
    descs: *mut CachePadded<ArenaDesc>,
    /// Slots ever used: claimers scan `0..hwm`.
    hwm: AtomicUsize,
    /// Arenas mapped now (kept >= 1 once the first arena exists).
    mapped: AtomicUsize,
    allocated_total: AtomicUsize,
    reclaimed: AtomicUsize,
    highwater: AtomicUsize,
    /// Decay interval in milliseconds (0: purge pools as they are returned).
    decay_ms: u64,
    /// Earliest time (`os::now_ms`) of the next maintenance pass. A rate limiter, not part of
    /// any protocol: plain `core` atomics, outside the loom facade, as the counters below.
    next_pass: core::sync::atomic::AtomicU64,
    pools_purged: core::sync::atomic::AtomicUsize,
    /// The fork gate (protocol step 8): releases in flight, plus [`FORKING`] while a fork's
    /// prepare handler holds new releases off. Fork is outside the loom models, so a `core`
    /// atomic.
    fork_gate: core::sync::atomic::AtomicUsize,
    /// Abandoned pools with free blocks, one stack per class.
    abandoned: [CachePadded<AtomicPtr<PoolHeader>>; NUM_CLASSES],
}

// SAFETY: `descs` points to a table owned by this value; all shared state is atomic, and pool
// memory is reached only under the claim protocol above.
unsafe impl Send for Central {}
// SAFETY: as above.
unsafe impl Sync for Central {}

fn table_bytes() -> usize {
    (MAX_ARENAS * core::mem::size_of::<CachePadded<ArenaDesc>>()).next_multiple_of(os::page_size())
}

impl Central {
    pub(crate) fn new(geo: Geometry, decay_ms: u64) -> Option<Central> {
        let descs = os::map(table_bytes()).cast::<CachePadded<ArenaDesc>>();
        if descs.is_null() {
            return None;
        }
        // Zero bytes are a valid `ArenaDesc` for core atomics (same layout as integers); loom
        // atomics must be constructed.
        #[cfg(loom)]
        for i in 0..MAX_ARENAS {
            // SAFETY: i < MAX_ARENAS, inside the fresh mapping.
            unsafe { ptr::write(descs.add(i), CachePadded::new(ArenaDesc::new())) };
        }
        let all = if geo.pools_per_arena == MAX_POOLS_PER_ARENA {
            u64::MAX
        } else {
            (1u64 << geo.pools_per_arena) - 1
        };
        Some(Central {
            geo,
            all,
            descs,
            hwm: AtomicUsize::new(0),
            mapped: AtomicUsize::new(0),
            allocated_total: AtomicUsize::new(0),
            reclaimed: AtomicUsize::new(0),
            highwater: AtomicUsize::new(0),
            decay_ms,
            next_pass: core::sync::atomic::AtomicU64::new(0),
            pools_purged: core::sync::atomic::AtomicUsize::new(0),
            fork_gate: core::sync::atomic::AtomicUsize::new(0),
            abandoned: core::array::from_fn(|_| CachePadded::new(AtomicPtr::new(ptr::null_mut()))),
        })
    }

    #[inline]
    fn desc(&self, i: usize) -> &ArenaDesc {
        debug_assert!(i < MAX_ARENAS);
        // SAFETY: i < MAX_ARENAS; the table lives as long as self and holds valid descriptors.
        unsafe { &*self.descs.add(i) }
    }

    /// Claims a free pool: from a mapped arena (lowest slot first) or from a new arena.
    /// Returns the pool with its header written once (fresh or as its last owner left it),
    /// or null when no arena can be mapped.
    pub(crate) fn claim_pool(&self, map: &ArenaMap) -> *mut PoolHeader {
        let hwm = self.hwm.load(Ordering::Acquire);
        for i in 0..hwm {
            let d = self.desc(i);
            let mut m = d.free.load(Ordering::Relaxed);
            let backoff = Backoff::new();
            while m != 0 {
                let bit = m.trailing_zeros();
                match d.free.compare_exchange_weak(
                    m,
                    m & !(1u64 << bit),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    // SAFETY: we won pool `bit` of arena `i` (protocol step 1).
                    Ok(_) => return unsafe { self.take_claimed(i, bit) },
                    Err(now) => {
                        m = now;
                        backoff.spin();
                    }
                }
            }
        }
        self.new_arena(map)
    }

    /// # Safety
    /// The caller must have won bit `bit` of descriptor `i`.
    unsafe fn take_claimed(&self, i: usize, bit: u32) -> *mut PoolHeader {
        let d = self.desc(i);
        // Stable while we hold a clear bit (protocol step 1).
        let base = d.base.load(Ordering::Relaxed);
        debug_assert!(base > DYING);
        crate::base::sync::track_mapping(base, false);
        let pool = (base + bit as usize * self.geo.pool_size) as *mut PoolHeader;
        if d.inited.load(Ordering::Relaxed) & (1u64 << bit) == 0 {
            // SAFETY: we own the pool; its memory is mapped and was never given a header.
            unsafe { PoolHeader::init_fresh(pool, i as u32) };
            // Release: a statistics reader that sees the bit sees the header.
            d.inited.fetch_or(1u64 << bit, Ordering::Release);
        }
        pool
    }

    #[cold]
    fn new_arena(&self, map: &ArenaMap) -> *mut PoolHeader {
        let mut slot = None;
        for i in 0..MAX_ARENAS {
            let base = &self.desc(i).base;
            if base.load(Ordering::Relaxed) == VACANT
                && base
                    .compare_exchange(VACANT, RESERVED, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                slot = Some(i);
                break;
            }
        }
        let Some(i) = slot else {
            return ptr::null_mut();
        };
        let d = self.desc(i);
        use core::sync::atomic::Ordering::Relaxed;
        let base = os::map_aligned(self.geo.arena_size, self.geo.arena_size);
        d.pending.store(base as usize, Relaxed);
        if base.is_null() || !map.insert(base as usize, i) {
            if !base.is_null() {
                d.pending.store(0, Relaxed);
                // SAFETY: never published.
                unsafe { os::unmap(base, self.geo.arena_size) };
            }
            d.base.store(VACANT, Ordering::Release);
            return ptr::null_mut();
        }
        d.inited.store(0, Ordering::Relaxed);
        d.dirty.store(0, Relaxed);
        d.aged.store(0, Relaxed);
        // Release: a statistics reader that sees `base` sees `inited` cleared (protocol step 5).
        d.base.store(base as usize, Ordering::Release);
        self.hwm.fetch_max(i + 1, Ordering::AcqRel);
        let now = self.mapped.fetch_add(1, Ordering::Relaxed) + 1;
        self.highwater.fetch_max(now, Ordering::Relaxed);
        self.allocated_total.fetch_add(1, Ordering::Relaxed);
        // Keep pool 0 for ourselves; publish the rest (protocol step 5).
        d.free.store(self.all & !1, Ordering::Release);
        d.pending.store(0, Relaxed);
        // SAFETY: pool 0's bit was never published, so we own it.
        unsafe { self.take_claimed(i, 0) }
    }

    /// Gives an empty pool back to its arena, releasing the arena if every pool is now free.
    ///
    /// # Safety
    /// `pool` must be a claimed pool of this heap with no block in use, no owner, no remote
    /// block, and on no list; the caller must not touch it afterwards.
    pub(crate) unsafe fn return_pool(&self, pool: *mut PoolHeader, map: &ArenaMap) {
        let base = self.geo.arena_of(pool as usize);
        // SAFETY: the caller holds the pool, so its header is ours to read.
        let i = unsafe { (*pool).arena_index } as usize;
        let bit = (pool as usize - base) / self.geo.pool_size;
        let d = self.desc(i);
        if self.decay_ms == 0 {
            // SAFETY: we hold the pool (caller's contract), so its pages are ours to purge.
            unsafe { self.purge_held(d, base, 1u64 << bit) };
        } else {
            d.dirty
                .fetch_or(1u64 << bit, core::sync::atomic::Ordering::Relaxed);
        }
        let before = d.free.fetch_or(1u64 << bit, Ordering::Release);
        if before | (1u64 << bit) == self.all {
            self.try_release(i, map);
        }
    }

    /// Purges the pools `bits` of the arena at `base` (descriptor `d`): their pages go back to
    /// the OS and their headers must be written afresh.
    ///
    /// # Safety
    /// The caller must hold every pool of `bits` (claimed, protocol step 6).
    unsafe fn purge_held(&self, d: &ArenaDesc, base: usize, bits: u64) {
        let mut rest = bits;
        while rest != 0 {
            // One madvise per run of adjacent pools.
            let start = rest.trailing_zeros();
            let run = (rest >> start).trailing_ones();
            let from = base + start as usize * self.geo.pool_size;
            let to = from + run as usize * self.geo.pool_size;
            // Whole pages only: pools smaller than a page (tests, models) share theirs.
            let page = os::page_size();
            let (from, to) = (from.next_multiple_of(page), to & !(page - 1));
            if from < to {
                // SAFETY: the pages lie inside the run's pools, which the caller holds, inside
                // a mapped arena.
                unsafe { os::purge(from as *mut u8, to - from) };
            }
            let mask = if run == u64::BITS {
                u64::MAX
            } else {
                ((1u64 << run) - 1) << start
            };
            rest &= !mask;
        }
        d.inited.fetch_and(!bits, Ordering::Relaxed);
        self.pools_purged.fetch_add(
            bits.count_ones() as usize,
            core::sync::atomic::Ordering::Relaxed,
        );
    }

    /// True when a maintenance pass is due, for exactly one caller per decay interval.
    #[inline]
    pub(crate) fn maintenance_due(&self) -> bool {
        if cfg!(loom) || self.decay_ms == 0 {
            // Loom has no clock (models call `trim`); decay 0 purges as pools come back.
            return false;
        }
        use core::sync::atomic::Ordering::Relaxed;
        let now = os::now_ms();
        let next = self.next_pass.load(Relaxed);
        now >= next
            && self
                .next_pass
                .compare_exchange(next, now + self.decay_ms, Relaxed, Relaxed)
                .is_ok()
    }

    /// A maintenance pass over every arena (protocol steps 6 and 7): purges the free pools that
    /// were returned before the previous pass (all free returned pools with `all`), and
    /// releases arenas whose pools are all free.
    pub(crate) fn purge(&self, map: &ArenaMap, all: bool) {
        let hwm = self.hwm.load(Ordering::Acquire);
        for i in 0..hwm {
            let d = self.desc(i);
            use core::sync::atomic::Ordering::Relaxed;
            let fresh = d.dirty.swap(0, Relaxed);
            let cand = if all {
                fresh | d.aged.swap(0, Relaxed)
            } else {
                d.aged.swap(fresh, Relaxed)
            };
            let mut m = d.free.load(Ordering::Relaxed);
            if cand != 0 {
                let backoff = Backoff::new();
                loop {
                    let take = m & cand;
                    if take == 0 {
                        break;
                    }
                    match d.free.compare_exchange_weak(
                        m,
                        m & !take,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => {
                            // Stable while we hold a clear bit (protocol step 1).
                            let base = d.base.load(Ordering::Relaxed);
                            debug_assert!(base > DYING);
                            // SAFETY: we claimed every pool of `take` just now.
                            unsafe { self.purge_held(d, base, take) };
                            m = d.free.fetch_or(take, Ordering::Release) | take;
                            break;
                        }
                        Err(now) => {
                            m = now;
                            backoff.spin();
                        }
                    }
                }
            }
            if m == self.all && d.base.load(Ordering::Relaxed) > DYING {
                self.try_release(i, map);
            }
        }
    }

    /// Releases arena `i` to the OS if every pool is free (protocol step 3), through the fork
    /// gate (step 8).
    #[cold]
    fn try_release(&self, i: usize, map: &ArenaMap) {
        // Keep one arena mapped (protocol step 4).
        if self
            .mapped
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n > 1).then(|| n - 1)
            })
            .is_err()
        {
            return;
        }
        // Through the fork gate (protocol step 8), or not at all while a fork is prepared.
        if !self.release_enter() {
            self.mapped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.release(i, map);
        self.release_exit();
    }

    /// Counts a release in at the fork gate (protocol step 8); false (counted out again) while
    /// a fork's prepare handler holds releases off.
    fn release_enter(&self) -> bool {
        // One read-modify-write both counts in and reads the flag, so a fork's prepare either
        // sees this release counted or this release sees the flag.
        if self.fork_gate.fetch_add(1, Ordering::SeqCst) & FORKING != 0 {
            self.fork_gate.fetch_sub(1, Ordering::Release);
            return false;
        }
        #[cfg(not(loom))]
        IN_RELEASE.with(|r| r.set(self as *const Central as usize));
        true
    }

    /// Counts a release out (after its last step).
    fn release_exit(&self) {
        #[cfg(not(loom))]
        IN_RELEASE.with(|r| r.set(0));
        // Release: the prepare handler that sees the count drop (acquire) sees every step.
        self.fork_gate.fetch_sub(1, Ordering::Release);
    }

    /// The prepare side of `fork` (protocol step 8): closes the fork gate and waits until no
    /// other thread's release is in flight, so the child inherits none half done. Reopened by
    /// [`Central::fork_parent`] in the parent and [`Central::after_fork`] in the child.
    pub(crate) fn fork_prepare(&self) {
        self.fork_gate.fetch_or(FORKING, Ordering::SeqCst);
        let own = usize::from(self.own_release());
        super::fork::wait_until(|| self.fork_gate.load(Ordering::Acquire) & !FORKING <= own);
    }

    /// The parent side of `fork`: reopens the fork gate.
    pub(crate) fn fork_parent(&self) {
        self.fork_gate.fetch_and(!FORKING, Ordering::Release);
    }

    /// Whether this thread is inside a release of this `Central` (a signal handler's fork).
    fn own_release(&self) -> bool {
        #[cfg(not(loom))]
        return IN_RELEASE.with(|r| r.get()) == self as *const Central as usize;
        #[cfg(loom)]
        false
    }

    /// Releases arena `i` if every pool is free and no statistics reader pins it (protocol
    /// step 3); `mapped` already counts it out, and it is counted back in if the release does
    /// not happen. Inside the fork gate.
    fn release(&self, i: usize, map: &ArenaMap) {
        let d = self.desc(i);
        // A fork from here until `pending` is stored would leave the child this arena with
        // every pool claimed (protocol step 8: a state it cannot tell from all pools in use);
        // the fork gate keeps forks out of the whole release.
        if d.free
            .compare_exchange(self.all, 0, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            // Someone claimed a pool first: the arena lives on.
            self.mapped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        use core::sync::atomic::Ordering::Relaxed;
        // Stable: every bit is clear, and we cleared them (protocol step 3).
        let base = d.base.load(Ordering::Relaxed);
        d.pending.store(base, Relaxed);
        d.base.store(DYING, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // Acquire: a reader that has unpinned (release) finished reading before we unmap.
        if d.pins.load(Ordering::Acquire) != 0 {
            // A statistics reader may be reading headers: undo (protocol step 3).
            d.base.store(base, Ordering::Release);
            d.free.store(self.all, Ordering::Release);
            d.pending.store(0, Relaxed);
            self.mapped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        map.remove(base);
        // From here on a fork child leaves the arena mapped rather than unmap a range that
        // may hold someone else's mapping by then (protocol step 8).
        d.pending.store(0, Relaxed);
        // SAFETY: we won the release transition; no thread can reach the arena any more.
        unsafe { os::unmap(base as *mut u8, self.geo.arena_size) };
        self.reclaimed.fetch_add(1, Ordering::Relaxed);
        d.base.store(VACANT, Ordering::Release);
    }

    /// Pushes an ownerless pool with free blocks onto the abandoned stack of `class`.
    ///
    /// # Safety
    /// The caller must hold `pool` without an owner, on no list, and not touch it afterwards.
    pub(crate) unsafe fn push_abandoned(&self, pool: *mut PoolHeader, class: usize) {
        let head = &self.abandoned[class];
        // SAFETY: the caller holds the pool, so its link is ours to write until the push lands.
        let link = unsafe { &(*pool).shared.next_abandoned };
        stack::push(
            head.load(Ordering::Relaxed),
            |h| {
                link.store(h, Ordering::Relaxed);
                pool
            },
            |h, new| head.compare_exchange_weak(h, new, Ordering::Release, Ordering::Relaxed),
        );
    }

    /// Takes every abandoned pool of `class` (a chain through `next_abandoned`), or null.
    #[inline]
    pub(crate) fn take_abandoned(&self, class: usize) -> *mut PoolHeader {
        let head = &self.abandoned[class];
        if head.load(Ordering::Relaxed).is_null() {
            return ptr::null_mut();
        }
        head.swap(ptr::null_mut(), Ordering::Acquire)
    }

    /// Pools purged since the heap was built.
    pub(crate) fn pools_purged(&self) -> usize {
        self.pools_purged
            .load(core::sync::atomic::Ordering::Relaxed)
    }

    /// Arena counters (relaxed reads: exact when no thread allocates).
    pub(crate) fn counters(&self) -> ArenaCounters {
        ArenaCounters {
            allocated_total: self.allocated_total.load(Ordering::Relaxed) as u64,
            reclaimed: self.reclaimed.load(Ordering::Relaxed) as u64,
            highwater: self.highwater.load(Ordering::Relaxed) as u64,
            current: self.mapped.load(Ordering::Relaxed) as u64,
        }
    }

    /// Calls `f(pool, claimed, dirty)` for every pool of every mapped arena, with the arena
    /// pinned so it cannot be unmapped meanwhile. `pool` is null for a pool whose header was
    /// never written (or was purged); otherwise `f` may read the header's atomic fields. `dirty`
    /// says a free pool's pages are still resident (returned, not purged yet).
    pub(crate) fn for_each_pool(&self, mut f: impl FnMut(*const PoolHeader, bool, bool)) {
        let hwm = self.hwm.load(Ordering::Acquire);
        for i in 0..hwm {
            let d = self.desc(i);
            d.pins.fetch_add(1, Ordering::Relaxed);
            // Protocol step 3: the reader's side of the handshake.
            fence(Ordering::SeqCst);
            let base = d.base.load(Ordering::Acquire);
            if base > DYING {
                crate::base::sync::track_mapping(base, false);
                let free = d.free.load(Ordering::Acquire);
                let inited = d.inited.load(Ordering::Acquire);
                let dirty = d.dirty.load(core::sync::atomic::Ordering::Relaxed)
                    | d.aged.load(core::sync::atomic::Ordering::Relaxed);
                for bit in 0..self.geo.pools_per_arena {
                    let pool = if inited & (1u64 << bit) != 0 {
                        (base + bit * self.geo.pool_size) as *const PoolHeader
                    } else {
                        ptr::null()
                    };
                    let claimed = free & (1u64 << bit) == 0;
                    f(pool, claimed, !claimed && dirty & (1u64 << bit) != 0);
                }
            }
            d.pins.fetch_sub(1, Ordering::Release);
        }
    }

    /// The child side of `fork` (protocol step 8): drops the parent's statistics pins, and
    /// finishes what the parent's other threads were doing to descriptors: an arena being
    /// mapped is unmapped and its slot freed, an arena being released is released, a release
    /// being undone is undone. Then counts the arenas mapped afresh (`mapped`), which a
    /// thread stopped between its change of `mapped` and the descriptor change it stands for
    /// left off by one. Runs in the child before it has a second thread.
    pub(crate) fn after_fork(&self, map: &ArenaMap) {
        use core::sync::atomic::Ordering::Relaxed;
        let mut mapped = 0;
        // Slots above `hwm` are vacant except those reserved by threads that had not raised
        // `hwm` yet (the lowest vacant slots when they looked): a margin of 64 covers them.
        for i in 0..MAX_ARENAS.min(self.hwm.load(Ordering::Relaxed) + 64) {
            let d = self.desc(i);
            d.pins.store(0, Ordering::Relaxed);
            let pending = d.pending.swap(0, Relaxed);
            let base = d.base.load(Ordering::Relaxed);
            match base {
                RESERVED => {
                    if pending != 0 {
                        map.remove(pending);
                        // SAFETY: mapped by the parent's thread for this slot and never
                        // published (its pools were never handed out).
                        unsafe { os::unmap(pending as *mut u8, self.geo.arena_size) };
                    }
                    d.base.store(VACANT, Ordering::Relaxed);
                }
                DYING => {
                    if pending != 0 {
                        // Released, not yet unmapped: no block of it is live.
                        map.remove(pending);
                        // SAFETY: the release transition was won; the range is still ours
                        // (`pending` is cleared before the unmap).
                        unsafe { os::unmap(pending as *mut u8, self.geo.arena_size) };
                        self.reclaimed.fetch_add(1, Ordering::Relaxed);
                    }
                    d.base.store(VACANT, Ordering::Relaxed);
                }
                b if b > DYING && pending == b && d.free.load(Ordering::Relaxed) == 0 => {
                    // A release being undone (or an arena mapped and not yet published):
                    // every pool is free; publish them.
                    d.free.store(self.all, Ordering::Relaxed);
                }
                _ => {}
            }
            mapped += usize::from(d.base.load(Ordering::Relaxed) > DYING);
        }
        self.mapped.store(mapped, Ordering::Relaxed);
        // The fork gate: open, counting only this thread's own release if a signal handler
        // forked from inside it (it goes on in the child); other threads' are gone.
        self.fork_gate
            .store(usize::from(self.own_release()), Relaxed);
    }

    /// Unmaps every arena and the table. Used when the heap is dropped.
    pub(crate) fn release_all(&mut self, map: &ArenaMap) {
        for i in 0..self.hwm.load(Ordering::Relaxed) {
            let base = self.desc(i).base.load(Ordering::Relaxed);
            if base > DYING {
                map.remove(base);
                // SAFETY: exclusive access; no block may be used after the heap is dropped.
                unsafe { os::unmap(base as *mut u8, self.geo.arena_size) };
            }
        }
        // SAFETY: the table was mapped in new with this size and is dead now.
        unsafe { os::unmap(self.descs.cast(), table_bytes()) };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::layout::config::Config;

    fn setup() -> (Central, ArenaMap, Geometry) {
        let geo = Config::PYMALLOC.geometry().unwrap();
        let map = ArenaMap::new(geo.arena_shift).unwrap();
        (Central::new(geo, 100).unwrap(), map, geo)
    }

    /// Claims every pool of the first two arenas and returns those of arena 1.
    fn two_arenas(c: &Central, map: &ArenaMap, geo: &Geometry) -> usize {
        let mut pools = Vec::new();
        for _ in 0..2 * geo.pools_per_arena {
            let p = c.claim_pool(map);
            assert!(!p.is_null());
            pools.push(p);
        }
        assert_eq!(c.counters().current, 2);
        let second = c.desc(1).base.load(Ordering::Relaxed);
        for p in pools {
            if geo.arena_of(p as usize) == second {
                // SAFETY: claimed above, empty, on no list.
                unsafe { c.return_pool(p, map) };
            }
        }
        second
    }

    /// Issue 12, defect 4: a statistics pin held by a parent thread at `fork` made its arena
    /// unreleasable in the child forever; the child handler drops it.
    #[test]
    fn a_child_releases_an_arena_its_parent_had_pinned() {
        let (mut c, map, geo) = setup();
        let d = c.desc(1);
        // A reader in the parent pinned arena 1 before it became free: the release is undone.
        d.pins.store(1, Ordering::Relaxed);
        let second = two_arenas(&c, &map, &geo);
        assert!(map.lookup(second).is_some());
        c.purge(&map, true);
        assert_eq!(c.counters().current, 2, "a pinned arena was released");
        // In the child, the reader does not exist.
        c.after_fork(&map);
        c.purge(&map, true);
        assert_eq!(
            c.counters().current,
            1,
            "the child never releases the arena"
        );
        assert!(map.lookup(second).is_none());
        c.release_all(&map);
    }

    /// Issue 21, defect 3: a fork must never come between a release's transition and its
    /// `pending` store (a state the child cannot repair). The fork gate: the prepare handler
    /// waits for a release in flight on another thread, a release refused while the gate is
    /// closed leaves its arena as it was, and the gate reopens in the parent and in the child.
    #[test]
    fn the_fork_gate_holds_forks_out_of_releases() {
        use std::sync::atomic::AtomicBool;
        use std::sync::mpsc;
        let (c, map, geo) = setup();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let prepared = AtomicBool::new(false);
        std::thread::scope(|s| {
            // A release in flight on another thread, stopped inside the gate.
            let c = &c;
            s.spawn(move || {
                assert!(c.release_enter());
                entered_tx.send(()).unwrap();
                let _ = go_rx.recv();
                c.release_exit();
            });
            entered_rx.recv().unwrap();
            // Moved in: dropped if an assertion below fails, so the release thread ends.
            let go = go_tx;
            let forker = s.spawn(|| {
                c.fork_prepare();
                prepared.store(true, Ordering::Relaxed);
            });
            // For 100 ms (a busy loop: the file is scanned for waits by tests/no_lock.rs).
            let until = std::time::Instant::now() + std::time::Duration::from_millis(100);
            while std::time::Instant::now() < until {
                assert!(
                    !prepared.load(Ordering::Relaxed),
                    "fork_prepare returned while another thread's release was in flight"
                );
            }
            go.send(()).unwrap();
            forker.join().unwrap();
        });
        assert!(prepared.load(Ordering::Relaxed));
        // The gate is closed: a release gives up and the arena stays, all pools free.
        let second = two_arenas(&c, &map, &geo);
        c.purge(&map, true);
        assert_eq!(
            c.counters().current,
            2,
            "an arena was released during a fork"
        );
        assert_eq!(c.desc(1).free.load(Ordering::Relaxed), c.all);
        // The parent reopens it: the arena is released by the next pass.
        c.fork_parent();
        c.purge(&map, true);
        assert_eq!(
            c.counters().current,
            1,
            "the gate stayed closed in the parent"
        );
        assert!(map.lookup(second).is_none());
        // The child reopens it too, counting no vanished thread's release.
        c.fork_prepare();
        assert!(!c.release_enter());
        c.after_fork(&map);
        assert!(c.release_enter(), "the gate stayed closed in the child");
        c.release_exit();
        assert_eq!(c.fork_gate.load(Ordering::Relaxed), 0);
        // A fork from inside this thread's own release (a signal handler) does not wait for
        // itself, and the child keeps counting that release.
        assert!(c.release_enter());
        c.fork_prepare();
        c.after_fork(&map);
        assert_eq!(c.fork_gate.load(Ordering::Relaxed), 1);
        c.release_exit();
        let mut c = c;
        c.release_all(&map);
    }

    /// What the child makes of an arena whose release was cut short by a `fork`.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Child {
        /// Released: its slot is vacant, the map forgets it (unmapped by the child or before).
        Released,
        /// Every pool free and claimable again; a maintenance pass releases it.
        Usable,
        /// Mapped and counted, its pools claimed by a thread the child does not have (as any
        /// pool a parent's other thread held): see protocol step 8.
        Kept,
    }

    /// Issue 21, defect 3: a `fork` at every step of `try_release` (and of its undo, when a
    /// statistics pin is seen) leaves a child whose descriptor `after_fork` finishes or undoes,
    /// and whose count of mapped arenas (`counters().current`) is the number it has. Each row
    /// is the state `try_release` has written when the fork comes, in its code's order.
    #[test]
    fn a_child_repairs_a_release_cut_short_at_every_step() {
        use core::sync::atomic::Ordering::Relaxed;
        type Step = fn(&Central, &ArenaMap, &ArenaDesc, usize);
        fn dec(c: &Central) {
            c.mapped.fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
        }
        let steps: [(&str, Step, Child); 10] = [
            (
                "`mapped` decremented, before the release transition",
                |c, _, _, _| dec(c),
                Child::Usable,
            ),
            (
                "`free: ALL -> 0` won, before `pending` is stored",
                |c, _, d, _| {
                    dec(c);
                    d.free.store(0, Relaxed);
                },
                Child::Kept,
            ),
            (
                "`pending` stored, before `base = DYING`",
                |c, _, d, b| {
                    dec(c);
                    d.free.store(0, Relaxed);
                    d.pending.store(b, Relaxed);
                },
                Child::Usable,
            ),
            (
                "`base = DYING`, before the pins are read",
                |c, _, d, b| {
                    dec(c);
                    d.free.store(0, Relaxed);
                    d.pending.store(b, Relaxed);
                    d.base.store(DYING, Relaxed);
                },
                Child::Released,
            ),
            (
                "undo: `base` restored, before `free`",
                |c, _, d, b| {
                    dec(c);
                    d.free.store(0, Relaxed);
                    d.pending.store(b, Relaxed);
                },
                Child::Usable,
            ),
            (
                "undo: `free` restored, before `pending` is cleared",
                |c, _, d, b| {
                    dec(c);
                    d.pending.store(b, Relaxed);
                },
                Child::Usable,
            ),
            (
                "undo: `pending` cleared, before `mapped` is restored",
                |c, _, _, _| dec(c),
                Child::Usable,
            ),
            (
                "the map forgets the arena, before `pending` is cleared",
                |c, map, d, b| {
                    dec(c);
                    d.free.store(0, Relaxed);
                    d.base.store(DYING, Relaxed);
                    d.pending.store(b, Relaxed);
                    map.remove(b);
                },
                Child::Released,
            ),
            (
                "`pending` cleared, before the unmap",
                |c, map, d, b| {
                    dec(c);
                    d.free.store(0, Relaxed);
                    d.base.store(DYING, Relaxed);
                    map.remove(b);
                },
                Child::Released,
            ),
            (
                "unmapped, before `base = VACANT`",
                |c, map, d, b| {
                    dec(c);
                    d.free.store(0, Relaxed);
                    d.base.store(DYING, Relaxed);
                    map.remove(b);
                    // SAFETY: the arena's pools are all free (two_arenas) and no one uses them.
                    unsafe { os::unmap(b as *mut u8, c.geo.arena_size) };
                    c.reclaimed.fetch_add(1, Relaxed);
                },
                Child::Released,
            ),
        ];
        for (what, step, want) in steps {
            let (mut c, map, geo) = setup();
            let d = c.desc(1);
            // (A pin keeps arena 1 mapped while its pools come back.)
            d.pins.store(1, Relaxed);
            let second = two_arenas(&c, &map, &geo);
            d.pins.store(0, Relaxed);
            assert_eq!(d.free.load(Relaxed), c.all, "{what}");
            step(&c, &map, d, second);
            // The range the child cannot know to be unmapped (its `pending` was cleared).
            let leaked = what.starts_with("`pending` cleared");
            c.after_fork(&map);
            let base = d.base.load(Relaxed);
            let counted = c.counters().current;
            match want {
                Child::Released => {
                    assert_eq!(base, VACANT, "{what}");
                    assert!(map.lookup(second).is_none(), "{what}");
                    assert_eq!(counted, 1, "{what}: arenas mapped after the child's repair");
                    if !leaked {
                        assert_eq!(c.counters().reclaimed, 1, "{what}");
                    }
                }
                Child::Usable => {
                    assert_eq!((base, d.free.load(Relaxed)), (second, c.all), "{what}");
                    assert_eq!(counted, 2, "{what}: arenas mapped after the child's repair");
                    // The child can release it: a maintenance pass does.
                    c.purge(&map, true);
                    assert_eq!(d.base.load(Relaxed), VACANT, "{what}: never released");
                    assert!(map.lookup(second).is_none(), "{what}");
                    assert_eq!(c.counters().current, 1, "{what}");
                }
                Child::Kept => {
                    assert_eq!((base, d.free.load(Relaxed)), (second, 0), "{what}");
                    assert!(map.lookup(second).is_some(), "{what}");
                    assert_eq!(counted, 2, "{what}: a mapped arena is not counted");
                }
            }
            if leaked {
                // SAFETY: mapped by two_arenas, forgotten by every structure: ours to unmap.
                unsafe { os::unmap(second as *mut u8, geo.arena_size) };
            }
            c.release_all(&map);
        }
    }

    /// Issue 12, defect 4: descriptors in the middle of a mapping, a release, or an undone
    /// release when the parent forked are finished or undone in the child.
    #[test]
    fn a_child_finishes_descriptors_left_in_flight() {
        let (mut c, map, geo) = setup();
        let d = c.desc(1);
        use core::sync::atomic::Ordering::Relaxed;
        // (A pin keeps arena 1 mapped while its pools come back.)
        d.pins.store(1, Relaxed);
        let second = two_arenas(&c, &map, &geo);
        d.pins.store(0, Relaxed);
        // A release that had won `free: ALL -> 0` and stored DYING (try_release's state just
        // before it unmaps).
        assert_eq!(d.free.swap(0, Relaxed), c.all);
        c.mapped.fetch_sub(1, Relaxed);
        d.pending.store(second, Relaxed);
        d.base.store(DYING, Relaxed);
        // A thread mapping an arena into slot 2 (mapped and registered, `base` not stored).
        let d2 = c.desc(2);
        d2.base.store(RESERVED, Relaxed);
        let third = os::map_aligned(geo.arena_size, geo.arena_size) as usize;
        assert!(map.insert(third, 2));
        d2.pending.store(third, Relaxed);
        c.after_fork(&map);
        assert_eq!(d.base.load(Relaxed), VACANT);
        assert_eq!(d2.base.load(Relaxed), VACANT);
        assert!(map.lookup(second).is_none() && map.lookup(third).is_none());
        assert_eq!(c.counters().reclaimed, 1);
        // Both slots are usable again: a new arena takes the lowest.
        let mut pools = Vec::new();
        for _ in 0..geo.pools_per_arena {
            pools.push(c.claim_pool(&map));
        }
        assert_eq!(c.counters().current, 2);
        assert_ne!(d.base.load(Relaxed), VACANT);
        // A release being undone (base restored, free not yet): the child frees the pools.
        let base = d.base.load(Relaxed);
        d.pins.store(1, Relaxed);
        for p in pools.drain(..) {
            // SAFETY: claimed above, empty.
            unsafe { c.return_pool(p, &map) };
        }
        assert_eq!(d.base.load(Relaxed), base, "a pinned arena was released");
        assert_eq!(d.free.swap(0, Relaxed), c.all);
        d.pending.store(base, Relaxed);
        c.after_fork(&map);
        assert_eq!(
            d.free.load(Relaxed),
            c.all,
            "pools of an undone release stay claimed"
        );
        c.release_all(&map);
    }
}
