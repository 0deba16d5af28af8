//! Free-threaded mode's thread caches: pools owned by one thread, remote frees through atomic
//! lists (published in batches), the owner's sweep that returns pools emptied by other threads,
//! and the hand-over of pools between threads.
//!
//! # Ownership
//! A claimed pool is in exactly one of these states:
//! - **owned**: `owner` holds the token (address) of one [`Cache`]; the pool is that cache's
//!   `current` pool for its class or on its `partial` list. Only the owner touches the owner
//!   line of the header (local free list, carve mark, `ref_count`, list links).
//! - **detached**: the owner found it full and gave it up: `owner == 0`, the remote word holds
//!   the `DETACHED` flag and, in its pointer bits, the token of the cache that detached it (its
//!   remote list is empty), and the pool is on no list.
//! - **abandoned**: `owner == 0`, it has free blocks, and it is on the central abandoned stack of
//!   its class (pools of exited threads, and detached pools made usable by a remote free).
//! - **handed over**: held by exactly one thread that is moving it between the states above
//!   (an adopter, a remote freer that cleared `DETACHED`, a thread returning it to its arena).
//!
//! # The remote word
//! `shared.remote` packs the head of the remote free list (bits 4..48), the number of blocks on
//! it (bits 48..64) and flags (bits 0..4; only `DETACHED`). Blocks are 16-aligned and user
//! addresses are below 2^48 (the arena map refuses others), so nothing overlaps.
//!
//! # Protocols and invariants
//! 1. **Owner alloc/free** use no read-modify-write and no lock: pop/push on the local list,
//!    bump the carve mark, `ref_count` by load and store.
//! 2. **Remote free** (the freeing thread is not the owner). A thread with a cache does not
//!    publish each block: it links it into a *batch* for that pool (a chain `head..tail` kept in
//!    one of the cache's [`BATCH_SLOTS`] slots, chosen by the pool's address), with no atomic
//!    operation. A batch is *published* when it holds [`BATCH_LIMIT`] blocks, when a block of
//!    another pool needs its slot, and at every slow moment of its cache (allocation slow path,
//!    sweep, trim, abandonment): so a block waits at most for a bounded number of its freeing
//!    thread's own operations, and a thread holds at most `BATCH_SLOTS * BATCH_LIMIT` unpublished
//!    blocks. A thread without a cache publishes each block at once (a batch of one), and so
//!    does a cache that is not certain to be flushed when it is given up (thread caches of
//!    heap instances other than the process-wide one: they have no exit hook).
//!    *Publishing* writes the tail's link, then compare-exchanges the remote word to
//!    (head, count + n, no flags) with acquire-release. If the old word had `DETACHED`, this
//!    thread cleared it and so *received* the pool (the acquire half synchronises with the
//!    detaching owner's release): if its cache is the one that
//!    detached the pool (the word names it), or allocates that class (has a `current` pool of
//!    it) and holds no spare pool of it (its `partial` list is empty), it takes the pool over (stores its own token in `owner`, collects, keeps it on its
//!    `partial` list, and sweeps two pools, protocol 8); otherwise it collects it and returns
//!    it to its arena if every block is free, or pushes it onto the abandoned stack of its
//!    class, where any thread that allocates the class adopts it. So a thread that only frees
//!    (a consumer) never accumulates other threads' pools. Exactly one publication clears `DETACHED`
//!    per detachment, so a full pool becomes reachable again exactly once, by exactly one thread.
//!    Blocks in a batch stay counted in the pool's `ref_count`, so the pool cannot be returned
//!    to its arena while a batch holds one of its blocks.
//! 3. **Collection**: the owner of a pool whose local list ran dry takes the whole remote list
//!    with one `swap(0)` (acquire) as its new local list and subtracts its count from
//!    `ref_count` (nothing is walked). Pools changing hands keep their remote list until then. A swap-all list has no
//!    ABA. Blocks on the remote list are still counted in `ref_count`, so
//!    `ref_count == remote count` means every block of the pool is free and none is in flight.
//! 4. **Detach**: the owner of a full pool stores `owner = 0` and compare-exchanges the remote
//!    word `0 -> token | DETACHED` (release). If the word was not 0, remote frees arrived: it restores
//!    `owner`, collects, and keeps allocating from the pool. Detaching never loses a block: a
//!    block published before the compare-exchange makes it fail; one published after sees
//!    `DETACHED`.
//! 5. **Abandon** (a cache is dropped: thread exit or a [`ThreadCache`](crate::ThreadCache)
//!    handle dropped): its batches are published, then each owned pool is returned to its arena
//!    if every block is free, pushed onto the abandoned stack (remote list and all) if it has a
//!    free block, or, if full, collected, or detached when nothing arrived. A remote free racing with this lands on the remote list, where the next
//!    owner collects it.
//! 6. **Adopt**: a cache that needs a pool of class `c` swaps the whole abandoned stack of `c`
//!    (acquire), takes ownership of every pool on it (stores `owner`; returns those whose blocks
//!    are all free but one) and keeps them on its `partial` list; two adopters at once get disjoint sets (one of them nothing).
//! 7. **Return**: an owned pool whose `ref_count` drops to 0 by a local free goes back to its
//!    arena (`central`), unless it is the cache's `current` pool for its class (kept, to avoid
//!    claiming and returning a pool on every alloc/free pair).
//! 8. **Sweep** (reachability of free space): a pool on a `partial` list whose last blocks were
//!    freed by other threads has `ref_count == remote count`; no local free brings it to 0, so
//!    protocol 7 never sees it. The owner therefore *sweeps*: it walks its partial lists with a
//!    cursor, [`SWEEP_BUDGET`] pools at a time, and returns every pool whose blocks are all free
//!    (it swaps the remote list away, resets the carve mark, and returns the pool: nothing is
//!    walked). It sweeps at each allocation slow path (before it adopts or claims a pool, so a
//!    cache never grows while it holds an empty pool it has not looked at), on every
//!    [`SWEEP_EVERY`]-th time its `current` pool empties, and fully on `trim`. Every pool that
//!    holds a free block is thus reachable by a path that allocates from it or returns it: its
//!    owner's allocation or sweep, a detached pool's receiver, an adopter, or `trim`.

use super::central::Central;
use crate::base::sync::{AtomicUsize, Ordering, UnsafeCell};
use crate::base::{list, stack};
use crate::layout::arena_map::ArenaMap;
use crate::layout::geometry::Geometry;
use crate::layout::geometry::ADDRESS_BITS;
use crate::layout::pool::{Block, PoolHeader};
use crate::layout::size_class::NUM_CLASSES;
use core::ptr;
use core::sync::atomic::{AtomicUsize as StatAtomic, Ordering::Relaxed};

/// Flag in the remote word: the pool was detached full; the next remote free must publish it.
pub(crate) const DETACHED: usize = 1;
const FLAGS: usize = 0xf;
const COUNT_SHIFT: u32 = ADDRESS_BITS;
const PTR_MASK: usize = ((1usize << COUNT_SHIFT) - 1) & !FLAGS;

/// Remote-free batch slots per cache (direct-mapped by pool address; a power of two).
pub(crate) const BATCH_SLOTS: usize = 8;
/// Blocks a batch gathers before it is published.
pub(crate) const BATCH_LIMIT: u32 = 32;
/// Partial pools one incremental sweep looks at.
pub(crate) const SWEEP_BUDGET: usize = 4;
/// A cache sweeps on every this many times its `current` pool empties (alloc/free pairs).
pub(crate) const SWEEP_EVERY: u32 = 64;

/// Blocks waiting on the remote list of a remote word.
#[inline(always)]
pub(crate) fn remote_count(word: usize) -> u32 {
    (word >> COUNT_SHIFT) as u32
}

#[derive(Clone, Copy)]
struct ClassCache {
    current: *mut PoolHeader,
    partial: *mut PoolHeader,
}

/// Blocks freed by this cache into one foreign pool, not yet published (protocol 2).
#[derive(Clone, Copy)]
struct Batch {
    /// The pool, or null for an empty slot.
    pool: *mut PoolHeader,
    head: *mut Block,
    tail: *mut Block,
    count: u32,
}

const NO_BATCH: Batch = Batch {
    pool: ptr::null_mut(),
    head: ptr::null_mut(),
    tail: ptr::null_mut(),
    count: 0,
};

/// One thread's (or one handle's) pools. Lives in the heap's cache table; its address is the
/// owner token written into the pools it owns (64-aligned, so a token fits the pointer bits of
/// a remote word). All-zero bytes are an empty cache.
#[repr(C, align(64))]
pub(crate) struct Cache {
    classes: [ClassCache; NUM_CLASSES],
    batches: [Batch; BATCH_SLOTS],
    /// Slots of `batches` that hold a batch.
    batched: u32,
    /// Pools on the `partial` lists.
    partials: usize,
    /// Sweep cursor: the class whose partial list is being swept, and the next pool of that
    /// list to look at (null: the list's head). `sweep_at` is always on that list or null.
    sweep_class: usize,
    sweep_at: *mut PoolHeader,
    /// Times `current` pools emptied since the last sweep.
    ticks: u32,
    /// Whether remote frees are batched (set when the slot is taken; protocol 2).
    batching: bool,
    /// Pools this cache owns.
    held: usize,
    /// Where `held` is published for statistics: the slot's counter (null for a cache on the
    /// stack, which statistics never see).
    held_out: *const StatAtomic,
}

/// A slot of the heap's cache table: the cache, touched only by the thread or handle that took
/// the slot, and beside it the words other threads read (`in_use` by threads taking a slot,
/// `held` by statistics). The cache sits in an `UnsafeCell`, so its owner's `&mut Cache` covers
/// only the cache, never a word another thread reads.
#[repr(C, align(64))]
pub(crate) struct CacheSlot {
    /// The cache; its address is the owner token (64-aligned: first field of the slot).
    cache: UnsafeCell<Cache>,
    /// 1 while a thread or handle uses this slot.
    pub(crate) in_use: AtomicUsize,
    /// Pools the cache owns (written by the owner, read by statistics).
    pub(crate) held: StatAtomic,
}

impl CacheSlot {
    #[cfg_attr(not(loom), allow(dead_code))]
    pub(crate) fn new() -> CacheSlot {
        CacheSlot {
            cache: UnsafeCell::new(Cache::new()),
            in_use: AtomicUsize::new(0),
            held: StatAtomic::new(0),
        }
    }

    /// The slot's cache, wired to publish its pool count in the slot.
    ///
    /// # Safety
    /// `slot` must be a slot of a live table, taken by the caller (`in_use` won), whose cache
    /// is empty.
    pub(crate) unsafe fn take(slot: *mut CacheSlot, batching: bool) -> *mut Cache {
        // SAFETY: per the contract the slot is ours; the cell's raw accessors keep the slot
        // pointer's provenance and make no reference. The cache is plain memory handed over
        // through `in_use` (see `crate::base::sync`): the write is tracked under loom.
        unsafe {
            UnsafeCell::with_mut_raw(&raw const (*slot).cache, |c| {
                (*c).held_out = &raw const (*slot).held;
                (*c).set_batching(batching);
                c
            })
        }
    }
}

/// What a cache needs from its heap.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) geo: &'a Geometry,
    pub(crate) central: &'a Central,
    pub(crate) map: &'a ArenaMap,
}

impl Cache {
    #[cfg_attr(not(loom), allow(dead_code))]
    pub(crate) fn new() -> Cache {
        Cache {
            classes: [ClassCache {
                current: ptr::null_mut(),
                partial: ptr::null_mut(),
            }; NUM_CLASSES],
            batches: [NO_BATCH; BATCH_SLOTS],
            batched: 0,
            partials: 0,
            sweep_class: 0,
            sweep_at: ptr::null_mut(),
            ticks: 0,
            batching: false,
            held: 0,
            held_out: ptr::null(),
        }
    }

    /// Sets whether this cache batches remote frees: only a cache certain to be flushed when
    /// it is given up (an explicit handle, a thread cache of the process-wide heap) may.
    pub(crate) fn set_batching(&mut self, batching: bool) {
        debug_assert_eq!(self.batched, 0);
        self.batching = batching;
    }

    #[inline(always)]
    fn token(&self) -> usize {
        self as *const Cache as usize
    }

    /// A block of `class`, or null when memory is exhausted. The fast path (protocol 1).
    #[inline(always)]
    pub(crate) fn alloc(&mut self, class: usize, cx: &Ctx<'_>) -> *mut u8 {
        self.alloc_lazy(class, cx.geo, || *cx)
    }

    /// The fast path alone: a block from the current pool of `class`, or null (nothing done).
    #[inline(always)]
    pub(crate) fn alloc_fast(&mut self, class: usize, geo: &Geometry) -> *mut u8 {
        debug_assert!(class < NUM_CLASSES);
        // SAFETY: class < NUM_CLASSES (a small request's class).
        let pool = unsafe { self.classes.get_unchecked(class) }.current;
        if pool.is_null() {
            return pool.cast();
        }
        // SAFETY: `current` is owned by this cache and prepared for `class`.
        unsafe { PoolHeader::pop(pool, geo) }
    }

    /// A free into an owned pool of `class`, as [`free_local`](Self::free_local) does it when
    /// that is cheap: the pool keeps a block in use, or it is the class's current pool (which
    /// stays, empty) and no housekeeping is due. False (nothing done) otherwise.
    ///
    /// # Safety
    /// As [`free_local`](Self::free_local); `class` is the pool's class and `refs` its
    /// reference count (the owner's own, so read just before by the caller).
    #[inline(always)]
    pub(crate) unsafe fn free_fast(
        &mut self,
        pool: *mut PoolHeader,
        block: *mut u8,
        class: usize,
        refs: u32,
    ) -> bool {
        debug_assert_eq!(refs, unsafe { PoolHeader::refs(pool) });
        // SAFETY: per the contract we own the pool and the block; class < NUM_CLASSES.
        unsafe {
            if refs <= 1 {
                // The last block: `pool_emptied`'s cheap case only.
                if self.classes.get_unchecked(class).current != pool
                    || self.ticks + 1 >= SWEEP_EVERY
                {
                    return false;
                }
                self.ticks += 1;
            }
            PoolHeader::push(pool, block);
        }
        true
    }

    /// [`alloc`](Self::alloc) with the heap's context built only on the slow path (`cx`), so
    /// the fast path keeps it in no memory.
    #[inline(always)]
    pub(crate) fn alloc_lazy<'a>(
        &mut self,
        class: usize,
        geo: &Geometry,
        cx: impl FnOnce() -> Ctx<'a>,
    ) -> *mut u8 {
        let pool = self.classes[class].current;
        if !pool.is_null() {
            // SAFETY: `current` is owned by this cache and prepared for `class`.
            let b = unsafe { PoolHeader::pop(pool, geo) };
            if !b.is_null() {
                return b;
            }
        }
        self.alloc_slow(class, &cx())
    }

    #[cold]
    #[inline(never)]
    fn alloc_slow(&mut self, class: usize, cx: &Ctx<'_>) -> *mut u8 {
        let token = self.token();
        let mut maintained = false;
        loop {
            let pool = self.classes[class].current;
            if !pool.is_null() {
                // SAFETY: `current` is owned by this cache (protocols 3 and 4).
                unsafe {
                    let b = PoolHeader::pop(pool, cx.geo);
                    if !b.is_null() {
                        return b;
                    }
                    if collect(pool) > 0 {
                        continue;
                    }
                    if detach(pool, token) {
                        self.classes[class].current = ptr::null_mut();
                        self.add_held(-1);
                    }
                }
                continue;
            }
            let p = self.pop_partial(class);
            if !p.is_null() {
                self.classes[class].current = p;
                continue;
            }
            if !maintained {
                // Before taking a pool from elsewhere: publish our batches (which may hand us
                // pools) and return the pools other threads emptied (protocols 2 and 8).
                maintained = true;
                self.maintain(cx);
                continue;
            }
            if self.adopt(class, cx) {
                continue;
            }
            let p = cx.central.claim_pool(cx.map);
            if p.is_null() {
                return ptr::null_mut();
            }
            // SAFETY: a claimed pool is ours alone; its header was written once.
            unsafe {
                PoolHeader::prepare(p, class, cx.geo);
                (*p).shared.owner.store(token, Ordering::Relaxed);
            }
            self.add_held(1);
            self.classes[class].current = p;
        }
    }

    /// The cache's slow-moment housekeeping: publish batches, sweep a few partial pools, and
    /// run the heap's periodic maintenance when it is due.
    #[cold]
    fn maintain(&mut self, cx: &Ctx<'_>) {
        self.flush_batches(cx);
        self.sweep(SWEEP_BUDGET, cx);
        if cx.central.maintenance_due() {
            maintenance(cx, false);
        }
    }

    /// True when this cache owns `pool`.
    ///
    /// # Safety
    /// `pool` must be a claimed pool header.
    #[inline(always)]
    pub(crate) unsafe fn owns(&self, pool: *const PoolHeader) -> bool {
        // SAFETY: claimed pools have an initialised shared line. Only this cache stores its own
        // token, and it clears it before giving a pool up, so equality means ownership.
        unsafe { (*pool).shared.owner.load(Ordering::Relaxed) == self.token() }
    }

    /// Frees a block of a pool this cache owns (protocols 1 and 7). The heap's context is built
    /// only when the pool empties (`cx`), so the fast path keeps it in no memory.
    ///
    /// # Safety
    /// `block` must be a live block of `pool`, and `self.owns(pool)`.
    #[inline(always)]
    pub(crate) unsafe fn free_local<'a>(
        &mut self,
        pool: *mut PoolHeader,
        block: *mut u8,
        cx: impl FnOnce() -> Ctx<'a>,
    ) {
        // SAFETY: per the contract we own the pool and the block.
        unsafe {
            PoolHeader::push(pool, block);
            if PoolHeader::refs(pool) == 0 {
                self.pool_emptied(pool, &cx());
            }
        }
    }

    #[cold]
    #[inline(never)]
    unsafe fn pool_emptied(&mut self, pool: *mut PoolHeader, cx: &Ctx<'_>) {
        // SAFETY: we own the pool (free_local's contract).
        unsafe {
            let class = PoolHeader::class(pool) as usize;
            if self.classes[class].current == pool {
                self.ticks += 1;
                if self.ticks >= SWEEP_EVERY {
                    self.tick_housekeeping(cx);
                }
                return;
            }
            self.unlink_partial(pool, class);
            self.give_back(pool, cx);
        }
    }

    /// Every [`SWEEP_EVERY`]-th emptying of a current pool: publish batches, sweep a little.
    /// Out of line, so that `pool_emptied` (run at every alloc/free pair) stays small.
    #[cold]
    #[inline(never)]
    fn tick_housekeeping(&mut self, cx: &Ctx<'_>) {
        self.ticks = 0;
        self.flush_batches(cx);
        self.sweep(SWEEP_BUDGET, cx);
    }

    /// Returns an owned pool with no block in use (and none in flight) to its arena.
    ///
    /// # Safety
    /// The cache owns `pool`, which is on none of its lists, and no block of it is in use.
    #[inline(never)]
    unsafe fn give_back(&mut self, pool: *mut PoolHeader, cx: &Ctx<'_>) {
        // SAFETY: per the contract the pool is ours to give.
        unsafe {
            (*pool).shared.owner.store(0, Ordering::Relaxed);
            self.add_held(-1);
            cx.central.return_pool(pool, cx.map);
        }
        // A pool return is a slow moment too: run the heap's maintenance if it is due.
        if cx.central.maintenance_due() {
            maintenance(cx, false);
        }
    }

    #[inline]
    fn add_held(&mut self, d: isize) {
        self.held = self.held.wrapping_add_signed(d);
        if !self.held_out.is_null() {
            // SAFETY: the slot outlives its cache; only the owner stores to this counter.
            unsafe { (*self.held_out).store(self.held, Relaxed) };
        }
    }

    /// Pools this cache owns.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Takes ownership of a pool handed over to us (protocols 2 and 6): collect its remote
    /// list, then keep it on the partial list, or return it to its arena if it is empty and
    /// `keep_empty` is false. True if it was kept.
    ///
    /// # Safety
    /// `pool` must be handed over to the caller (ownerless, on no list) and serve `class`.
    unsafe fn take_over(
        &mut self,
        pool: *mut PoolHeader,
        class: usize,
        keep_empty: bool,
        cx: &Ctx<'_>,
    ) -> bool {
        // SAFETY: per the contract the pool is ours to own. Its remote list is collected now
        // if the local list is empty (a received pool: it was full), so that our own frees can
        // bring `ref_count` to 0; otherwise it stays until the local list runs dry (collect
        // never walks a list).
        unsafe {
            (*pool).shared.owner.store(self.token(), Ordering::Relaxed);
            self.add_held(1);
            if PoolHeader::free(pool).is_null() {
                collect(pool);
            }
            if !keep_empty && reclaim_if_free(pool, cx.geo) {
                self.give_back(pool, cx);
                false
            } else {
                self.push_partial(pool, class);
                true
            }
        }
    }

    /// A detached pool handed to this cache by one of its publications (protocol 2); `former`
    /// is the token of the cache that detached it.
    ///
    /// # Safety
    /// The caller cleared `DETACHED` of `pool` (with an acquire-release exchange).
    unsafe fn receive(&mut self, pool: *mut PoolHeader, former: usize, cx: &Ctx<'_>) {
        // SAFETY: we hold the pool; its class is stable while it has live blocks.
        unsafe {
            let class = PoolHeader::class(pool) as usize;
            let cc = self.classes[class];
            if former == self.token() || (!cc.current.is_null() && cc.partial.is_null()) {
                self.take_over(pool, class, false, cx);
                // Every pool we take pays for a look at two we hold (protocol 8).
                self.sweep(2, cx);
            } else {
                // We do not allocate this class, or hold spare pools of it already: let a
                // thread that needs one adopt it.
                publish_received(pool, cx);
            }
        }
    }

    /// Takes the abandoned pools of `class` (protocol 6). True if one with a free block came.
    fn adopt(&mut self, class: usize, cx: &Ctx<'_>) -> bool {
        let mut p = cx.central.take_abandoned(class);
        let mut got = false;
        while !p.is_null() {
            // SAFETY: the swap gave us every pool of the chain; each is handed over to us.
            unsafe {
                let next = (*p).shared.next_abandoned.load(Ordering::Relaxed);
                // Keep the first pool even if empty (we need one); return other empty ones.
                got |= self.take_over(p, class, !got, cx);
                p = next;
            }
        }
        got
    }

    /// Frees a block of a pool this cache does not own (protocol 2): into the pool's batch.
    ///
    /// # Safety
    /// `block` must be a live block of the claimed pool `pool`, not used afterwards.
    #[inline]
    pub(crate) unsafe fn free_remote(
        &mut self,
        pool: *mut PoolHeader,
        block: *mut u8,
        cx: &Ctx<'_>,
    ) {
        let b = block.cast::<Block>();
        if !self.batching {
            // SAFETY: per the contract; a received pool is placed by this cache.
            unsafe {
                let former = publish(pool, b, b, 1);
                if former != 0 {
                    self.receive(pool, former, cx);
                }
            }
            return;
        }
        let slot = (pool as usize >> cx.geo.pool_shift) & (BATCH_SLOTS - 1);
        let batch = &mut self.batches[slot];
        if batch.pool == pool {
            // SAFETY: the block is ours until published; the batch's chain is ours.
            unsafe { Block::set_next(b, batch.head) };
            batch.head = b;
            batch.count += 1;
            if batch.count >= BATCH_LIMIT {
                self.flush(slot, cx);
            }
            return;
        }
        if !batch.pool.is_null() {
            self.flush(slot, cx);
        }
        // SAFETY: as above.
        unsafe { Block::set_next(b, ptr::null_mut()) };
        self.batches[slot] = Batch {
            pool,
            head: b,
            tail: b,
            count: 1,
        };
        self.batched += 1;
    }

    /// Publishes the batch in `slot` (protocol 2).
    #[cold]
    #[inline(never)]
    fn flush(&mut self, slot: usize, cx: &Ctx<'_>) {
        let b = core::mem::replace(&mut self.batches[slot], NO_BATCH);
        self.batched -= 1;
        // SAFETY: the batch's blocks are live blocks of the claimed pool `b.pool` that this
        // cache freed and nobody else holds; its chain runs from head to tail.
        unsafe {
            let former = publish(b.pool, b.head, b.tail, b.count);
            if former != 0 {
                self.receive(b.pool, former, cx);
            }
        }
    }

    /// Publishes every batch.
    pub(crate) fn flush_batches(&mut self, cx: &Ctx<'_>) {
        if self.batched == 0 {
            return;
        }
        for slot in 0..BATCH_SLOTS {
            if !self.batches[slot].pool.is_null() {
                self.flush(slot, cx);
            }
        }
    }

    /// Looks at up to `budget` partial pools from the sweep cursor and returns those whose
    /// blocks are all free (protocol 8). Returns the number of pools returned.
    pub(crate) fn sweep(&mut self, mut budget: usize, cx: &Ctx<'_>) -> usize {
        let mut returned = 0;
        while budget > 0 && self.partials > 0 {
            let p = if self.sweep_at.is_null() {
                self.classes[self.sweep_class].partial
            } else {
                self.sweep_at
            };
            if p.is_null() {
                // partials > 0: some list is not empty, so this ends within NUM_CLASSES steps.
                self.sweep_class = (self.sweep_class + 1) % NUM_CLASSES;
                continue;
            }
            budget -= 1;
            // SAFETY: p is on our partial list of `sweep_class`, so we own it.
            unsafe {
                let next = PoolHeader::next_pool(p);
                if next.is_null() {
                    self.sweep_class = (self.sweep_class + 1) % NUM_CLASSES;
                }
                self.sweep_at = next;
                if reclaim_if_free(p, cx.geo) {
                    let class = PoolHeader::class(p) as usize;
                    self.unlink_partial(p, class);
                    self.give_back(p, cx);
                    returned += 1;
                }
            }
        }
        returned
    }

    /// Publishes every batch and sweeps every partial pool once. Returns the pools returned.
    pub(crate) fn trim(&mut self, cx: &Ctx<'_>) -> usize {
        self.flush_batches(cx);
        let n = self.partials;
        self.sweep(n, cx)
    }

    /// Gives up every pool (protocol 5). The cache is empty afterwards.
    pub(crate) fn abandon_all(&mut self, cx: &Ctx<'_>) {
        self.flush_batches(cx);
        for class in 0..NUM_CLASSES {
            let cur = core::mem::replace(&mut self.classes[class].current, ptr::null_mut());
            if !cur.is_null() {
                // SAFETY: `current` is owned by this cache.
                unsafe { self.abandon_pool(cur, class, cx) };
            }
            loop {
                let p = self.pop_partial(class);
                if p.is_null() {
                    break;
                }
                // SAFETY: partial pools are owned by this cache.
                unsafe { self.abandon_pool(p, class, cx) };
            }
        }
        debug_assert_eq!(self.partials, 0);
        debug_assert_eq!(self.held(), 0);
        self.sweep_class = 0;
        self.sweep_at = ptr::null_mut();
        self.ticks = 0;
    }

    /// # Safety
    /// `pool` must be owned by this cache and on none of its lists.
    unsafe fn abandon_pool(&mut self, pool: *mut PoolHeader, class: usize, cx: &Ctx<'_>) {
        let token = self.token();
        // SAFETY: we own the pool until one of the hand-overs below.
        unsafe {
            loop {
                if reclaim_if_free(pool, cx.geo) {
                    self.give_back(pool, cx);
                    return;
                }
                if !PoolHeader::is_full(pool, cx.geo) {
                    // Its remote list goes with it; the adopter collects it.
                    (*pool).shared.owner.store(0, Ordering::Relaxed);
                    self.add_held(-1);
                    cx.central.push_abandoned(pool, class);
                    return;
                }
                // Full: the local list is empty, so collecting walks nothing.
                if collect(pool) > 0 {
                    continue;
                }
                if detach(pool, token) {
                    self.add_held(-1);
                    return;
                }
            }
        }
    }

    /// Pools this cache owns, counted on its lists.
    pub(crate) fn pool_count(&self) -> usize {
        let mut n = 0;
        for cc in &self.classes {
            n += usize::from(!cc.current.is_null());
            let mut p = cc.partial;
            while !p.is_null() {
                n += 1;
                // SAFETY: partial pools are owned by this cache and linked through nextpool.
                p = unsafe { PoolHeader::next_pool(p) };
            }
        }
        debug_assert_eq!(n, self.held());
        n
    }

    fn push_partial(&mut self, pool: *mut PoolHeader, class: usize) {
        // SAFETY: pool (on no list) and the list's pools are owned by this cache.
        unsafe { list::push_front(&mut self.classes[class].partial, pool) };
        self.partials += 1;
    }

    fn pop_partial(&mut self, class: usize) -> *mut PoolHeader {
        let p = self.classes[class].partial;
        if !p.is_null() {
            // SAFETY: p is on our partial list.
            unsafe { self.unlink_partial(p, class) };
        }
        p
    }

    /// # Safety
    /// `pool` must be on this cache's partial list of `class`.
    unsafe fn unlink_partial(&mut self, pool: *mut PoolHeader, class: usize) {
        // SAFETY: pool is on the list (the contract); it and its neighbours are ours.
        let next = unsafe { list::unlink(&mut self.classes[class].partial, pool) };
        if self.sweep_at == pool {
            // Keep the cursor on the list (null restarts it at the head).
            self.sweep_at = next;
        }
        self.partials -= 1;
    }
}

/// Publishes the chain `head..tail` of `n` blocks on `pool`'s remote list (protocol 2).
/// If this cleared `DETACHED`, i.e. the caller received the pool (and must place it), returns
/// the token of the cache that detached it; otherwise 0.
///
/// # Safety
/// The chain's blocks must be live blocks of the claimed pool `pool`, held by the caller and
/// linked from `head` to `tail`; none may be used afterwards.
#[inline]
unsafe fn publish(pool: *mut PoolHeader, head: *mut Block, tail: *mut Block, n: u32) -> usize {
    // SAFETY: the pool is claimed while it has a live block, so its shared line is valid.
    let remote = unsafe { &(*pool).shared.remote };
    // Many threads freeing into one pool (producer/consumer) contend here: `stack::push`
    // backs off between failed attempts (exponential spinning, never a yield or a sleep).
    let h = stack::push(
        remote.load(Ordering::Relaxed),
        |h| {
            // A detached word's pointer bits name the detaching cache; its list is empty.
            let link = if h & DETACHED != 0 { 0 } else { h & PTR_MASK };
            // SAFETY: we own the chain until the compare-exchange publishes it.
            unsafe { Block::set_next(tail, link as *mut Block) };
            head as usize | ((remote_count(h) as usize + n as usize) << COUNT_SHIFT)
        },
        // Release publishes the chain's links; acquire makes the detaching owner's header
        // writes visible if this exchange clears DETACHED (and costs nothing more on x86,
        // where the exchange is a full barrier; an acquire fence after a release exchange
        // would be equivalent, but ThreadSanitizer does not model fences).
        |h, new| remote.compare_exchange_weak(h, new, Ordering::AcqRel, Ordering::Relaxed),
    );
    if h & DETACHED != 0 {
        // We cleared DETACHED: the pool is handed over to us.
        h & PTR_MASK
    } else {
        0
    }
}

/// A received pool that no cache of ours will use: returned to its arena if every block is
/// free, otherwise pushed onto the abandoned stack of its class (protocol 2).
///
/// # Safety
/// The caller holds `pool` handed over (ownerless, on no list).
unsafe fn publish_received(pool: *mut PoolHeader, cx: &Ctx<'_>) {
    // SAFETY: we hold the pool.
    unsafe {
        if reclaim_if_free(pool, cx.geo) {
            cx.central.return_pool(pool, cx.map);
        } else {
            cx.central
                .push_abandoned(pool, PoolHeader::class(pool) as usize);
        }
    }
}

/// Frees a block of a pool the calling thread does not own and has no cache to batch in
/// (protocol 2, a batch of one).
///
/// # Safety
/// `block` must be a live block of the claimed pool `pool`, and not used afterwards.
pub(crate) unsafe fn remote_free_direct(pool: *mut PoolHeader, block: *mut u8, cx: &Ctx<'_>) {
    let b = block.cast::<Block>();
    // SAFETY: per the contract; a received pool is ours to place.
    unsafe {
        if publish(pool, b, b, 1) != 0 {
            publish_received(pool, cx);
        }
    }
}

/// Takes the remote list as the local one (protocol 3). Returns the number of blocks taken.
/// Called only when the local list is empty (a pool that ran dry), so nothing is walked.
///
/// # Safety
/// The caller must own `pool` (or hold it handed over), it must not be detached, and its local
/// free list must be empty.
#[inline]
pub(crate) unsafe fn collect(pool: *mut PoolHeader) -> u32 {
    // SAFETY: the caller owns the pool.
    unsafe {
        debug_assert!(
            PoolHeader::free(pool).is_null(),
            "collecting into a non-empty local list"
        );
        let remote = &(*pool).shared.remote;
        if remote.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let h = remote.swap(0, Ordering::Acquire);
        debug_assert_eq!(h & FLAGS, 0, "collecting a detached pool");
        let n = remote_count(h);
        PoolHeader::set_free(pool, (h & PTR_MASK) as *mut Block);
        PoolHeader::sub_ref(pool, n);
        n
    }
}

/// If every block of `pool` is free (`ref_count` equals the remote count), takes the remote
/// list away (acquire) and resets the pool to uncarved, so it can be returned without walking
/// any list (protocol 8). True if it did.
///
/// # Safety
/// The caller must own `pool`, which must not be detached.
unsafe fn reclaim_if_free(pool: *mut PoolHeader, geo: &Geometry) -> bool {
    // SAFETY: the caller owns the pool.
    unsafe {
        let remote = &(*pool).shared.remote;
        let refs = PoolHeader::refs(pool);
        if refs != remote_count(remote.load(Ordering::Relaxed)) {
            return false;
        }
        if refs != 0 {
            // No block is live, so no one else can publish: the list holds exactly `refs`.
            let h = remote.swap(0, Ordering::Acquire);
            debug_assert_eq!(remote_count(h), refs);
            PoolHeader::sub_ref(pool, refs);
        }
        PoolHeader::set_free(pool, ptr::null_mut());
        PoolHeader::set_next_offset(pool, geo.pool_overhead as u32);
        true
    }
}

/// The owner gives up a full pool (protocol 4). False if remote frees arrived first.
///
/// # Safety
/// The caller must own `pool`.
unsafe fn detach(pool: *mut PoolHeader, token: usize) -> bool {
    // SAFETY: the caller owns the pool.
    let shared = unsafe { &(*pool).shared };
    shared.owner.store(0, Ordering::Relaxed);
    match shared
        .remote
        .compare_exchange(0, token | DETACHED, Ordering::Release, Ordering::Relaxed)
    {
        Ok(_) => true,
        Err(_) => {
            shared.owner.store(token, Ordering::Relaxed);
            false
        }
    }
}

/// Returns every empty abandoned pool to its arena; pools with blocks in use go back on their
/// stack. Returns the number of pools returned.
pub(crate) fn trim_abandoned(cx: &Ctx<'_>) -> usize {
    let mut returned = 0;
    for class in 0..NUM_CLASSES {
        let mut p = cx.central.take_abandoned(class);
        while !p.is_null() {
            // SAFETY: the swap handed every pool of the chain over to us; we give each one
            // away exactly once (returned or pushed back) and do not touch it afterwards.
            unsafe {
                let next = (*p).shared.next_abandoned.load(Ordering::Relaxed);
                if reclaim_if_free(p, cx.geo) {
                    cx.central.return_pool(p, cx.map);
                    returned += 1;
                } else {
                    cx.central.push_abandoned(p, class);
                }
                p = next;
            }
        }
    }
    returned
}

/// The heap's periodic maintenance: empty abandoned pools back to their arenas, then the
/// arenas' free pools purged (all of them with `all`, else those free for a whole decay
/// interval) and arenas whose pools are all free released. Returns the pools returned.
pub(crate) fn maintenance(cx: &Ctx<'_>, all: bool) -> usize {
    let n = trim_abandoned(cx);
    cx.central.purge(cx.map, all);
    n
}
