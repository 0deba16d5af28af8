//! Free-threaded mode's thread caches: pools owned by one thread, remote frees through atomic
//! lists, and the hand-over of pools between threads.
//!
//! # Ownership
//! A claimed pool is in exactly one of these states:
//! - **owned**: `owner` holds the token (address) of one [`Cache`]; the pool is that cache's
//!   `current` pool for its class or on its `partial` list. Only the owner touches the owner
//!   line of the header (local free list, carve mark, `ref_count`, list links).
//! - **detached**: the owner found it full and gave it up: `owner == 0`, the remote word holds
//!   exactly the `DETACHED` flag, and the pool is on no list.
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
//! 2. **Remote free** (the freeing thread is not the owner): write the block's link, then
//!    compare-exchange the remote word to (block, count + 1, no flags) with release. If the old
//!    word had `DETACHED`, this thread cleared it and so *received* the pool (acquire fence):
//!    if it has a cache of this heap it takes the pool over (stores its own token in `owner`,
//!    collects, and keeps it on its `partial` list), otherwise it pushes it onto the abandoned
//!    stack of its class. Exactly one remote free clears `DETACHED` per detachment, so a full
//!    pool becomes reachable again exactly once, by exactly one thread.
//! 3. **Collection**: the owner takes the whole remote list with one `swap(0)` (acquire), splices
//!    it into its local list and subtracts its count from `ref_count`. A swap-all list has no
//!    ABA. Blocks on the remote list are still counted in `ref_count`, so
//!    `ref_count == 0` means every block of the pool is free and none is in flight.
//! 4. **Detach**: the owner of a full pool stores `owner = 0` and compare-exchanges the remote
//!    word `0 -> DETACHED` (release). If the word was not 0, remote frees arrived: it restores
//!    `owner`, collects, and keeps allocating from the pool. Detaching never loses a block: a
//!    block pushed before the compare-exchange makes it fail; one pushed after sees `DETACHED`.
//! 5. **Abandon** (a cache is dropped: thread exit or a [`ThreadCache`](crate::ThreadCache)
//!    handle dropped): each owned pool is collected, then returned to its arena if empty,
//!    pushed onto the abandoned stack if it has a free block, or detached if full. A remote free
//!    racing with this lands on the remote list, where the next owner collects it.
//! 6. **Adopt**: a cache that needs a pool of class `c` swaps the whole abandoned stack of `c`
//!    (acquire), takes ownership of every pool on it (stores `owner`, then collects) and keeps
//!    them on its `partial` list; two adopters at once get disjoint sets (one of them nothing).
//! 7. **Return**: an owned pool whose `ref_count` drops to 0 by a local free goes back to its
//!    arena (`central`), unless it is the cache's `current` pool for its class (kept, to avoid
//!    claiming and returning a pool on every alloc/free pair).

use crate::arena_map::ArenaMap;
use crate::central::Central;
use crate::config::Geometry;
use crate::pool::{Block, PoolHeader};
use crate::size_class::NUM_CLASSES;
use crate::sync::{fence, AtomicUsize, Ordering};
use core::ptr;
use crossbeam_utils::Backoff;

/// Flag in the remote word: the pool was detached full; the next remote free must publish it.
pub(crate) const DETACHED: usize = 1;
const FLAGS: usize = 0xf;
const COUNT_SHIFT: u32 = 48;
const PTR_MASK: usize = ((1usize << COUNT_SHIFT) - 1) & !FLAGS;

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

/// One thread's (or one handle's) pools. Lives in the heap's cache table; its address is the
/// owner token written into the pools it owns.
#[repr(C)]
pub(crate) struct Cache {
    classes: [ClassCache; NUM_CLASSES],
    /// 1 while a thread or handle uses this slot.
    pub(crate) in_use: AtomicUsize,
}

/// What a cache needs from its heap.
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
            in_use: AtomicUsize::new(0),
        }
    }

    #[inline(always)]
    fn token(&self) -> usize {
        self as *const Cache as usize
    }

    /// A block of `class`, or null when memory is exhausted. The fast path (protocol 1).
    #[inline(always)]
    pub(crate) fn alloc(&mut self, class: usize, cx: &Ctx<'_>) -> *mut u8 {
        let pool = self.classes[class].current;
        if !pool.is_null() {
            // SAFETY: `current` is owned by this cache and prepared for `class`.
            let b = unsafe { PoolHeader::pop(pool, cx.geo) };
            if !b.is_null() {
                return b;
            }
        }
        self.alloc_slow(class, cx)
    }

    #[cold]
    #[inline(never)]
    fn alloc_slow(&mut self, class: usize, cx: &Ctx<'_>) -> *mut u8 {
        let token = self.token();
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
                    }
                }
                continue;
            }
            let p = self.pop_partial(class);
            if !p.is_null() {
                self.classes[class].current = p;
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
            self.classes[class].current = p;
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

    /// Frees a block of a pool this cache owns (protocols 1 and 7).
    ///
    /// # Safety
    /// `block` must be a live block of `pool`, and `self.owns(pool)`.
    #[inline(always)]
    pub(crate) unsafe fn free_local(
        &mut self,
        pool: *mut PoolHeader,
        block: *mut u8,
        cx: &Ctx<'_>,
    ) {
        // SAFETY: per the contract we own the pool and the block.
        unsafe {
            PoolHeader::push(pool, block);
            if (*pool).refs() == 0 {
                self.pool_emptied(pool, cx);
            }
        }
    }

    #[cold]
    #[inline(never)]
    unsafe fn pool_emptied(&mut self, pool: *mut PoolHeader, cx: &Ctx<'_>) {
        // SAFETY: we own the pool (free_local's contract).
        unsafe {
            let class = (*pool).class() as usize;
            if self.classes[class].current == pool {
                return;
            }
            self.unlink_partial(pool, class);
            (*pool).shared.owner.store(0, Ordering::Relaxed);
            cx.central.return_pool(pool, cx.map);
        }
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
        // SAFETY: per the contract the pool is ours to own.
        unsafe {
            (*pool).shared.owner.store(self.token(), Ordering::Relaxed);
            collect(pool);
            if (*pool).refs() == 0 && !keep_empty {
                (*pool).shared.owner.store(0, Ordering::Relaxed);
                cx.central.return_pool(pool, cx.map);
                false
            } else {
                self.push_partial(pool, class);
                true
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

    /// Gives up every pool (protocol 5). The cache is empty afterwards.
    pub(crate) fn abandon_all(&mut self, cx: &Ctx<'_>) {
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
    }

    /// # Safety
    /// `pool` must be owned by this cache and on none of its lists.
    unsafe fn abandon_pool(&mut self, pool: *mut PoolHeader, class: usize, cx: &Ctx<'_>) {
        let token = self.token();
        // SAFETY: we own the pool until one of the hand-overs below.
        unsafe {
            loop {
                collect(pool);
                if (*pool).refs() == 0 {
                    (*pool).shared.owner.store(0, Ordering::Relaxed);
                    cx.central.return_pool(pool, cx.map);
                    return;
                }
                if !PoolHeader::is_full(pool, cx.geo) {
                    (*pool).shared.owner.store(0, Ordering::Relaxed);
                    cx.central.push_abandoned(pool, class);
                    return;
                }
                if detach(pool, token) {
                    return;
                }
            }
        }
    }

    /// Pools this cache owns.
    pub(crate) fn pool_count(&self) -> usize {
        let mut n = 0;
        for cc in &self.classes {
            n += usize::from(!cc.current.is_null());
            let mut p = cc.partial;
            while !p.is_null() {
                n += 1;
                // SAFETY: partial pools are owned by this cache and linked through nextpool.
                p = unsafe { (*p).nextpool };
            }
        }
        n
    }

    fn push_partial(&mut self, pool: *mut PoolHeader, class: usize) {
        let head = self.classes[class].partial;
        // SAFETY: pool and head are owned by this cache.
        unsafe {
            (*pool).nextpool = head;
            (*pool).prevpool = ptr::null_mut();
            if !head.is_null() {
                (*head).prevpool = pool;
            }
        }
        self.classes[class].partial = pool;
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
        // SAFETY: pool and its neighbours are owned by this cache.
        unsafe {
            let (prev, next) = ((*pool).prevpool, (*pool).nextpool);
            if prev.is_null() {
                debug_assert_eq!(self.classes[class].partial, pool);
                self.classes[class].partial = next;
            } else {
                (*prev).nextpool = next;
            }
            if !next.is_null() {
                (*next).prevpool = prev;
            }
        }
    }
}

/// Frees a block of a pool the calling thread does not own (protocol 2). `cache` is the
/// calling thread's cache of this heap, or null if it has none.
///
/// # Safety
/// `block` must be a live block of the claimed pool `pool`, and not used afterwards; `cache`
/// must be null or a cache used only by the calling thread.
pub(crate) unsafe fn remote_free(
    pool: *mut PoolHeader,
    block: *mut u8,
    cache: *mut Cache,
    cx: &Ctx<'_>,
) {
    // SAFETY: the pool is claimed while it has a live block, so its shared line is valid.
    let remote = unsafe { &(*pool).shared.remote };
    let b = block.cast::<Block>();
    let mut h = remote.load(Ordering::Relaxed);
    // Many threads freeing into one pool (producer/consumer) contend here: back off between
    // failed attempts (exponential spinning, never a yield or a sleep).
    let backoff = Backoff::new();
    loop {
        // SAFETY: we own the block until the compare-exchange publishes it.
        unsafe { (*b).next = (h & PTR_MASK) as *mut Block };
        let new = b as usize | (((h >> COUNT_SHIFT) + 1) << COUNT_SHIFT);
        match remote.compare_exchange_weak(h, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(now) => {
                h = now;
                backoff.spin();
            }
        }
    }
    if h & DETACHED != 0 {
        // We cleared DETACHED: the pool is handed over to us. Synchronise with the detaching
        // owner's release so its header writes are visible, then adopt or publish it.
        fence(Ordering::Acquire);
        // SAFETY: we hold the pool; its class is stable; a non-null cache is ours alone.
        unsafe {
            let class = (*pool).class() as usize;
            if cache.is_null() {
                cx.central.push_abandoned(pool, class);
            } else {
                (*cache).take_over(pool, class, false, cx);
            }
        }
    }
}

/// Takes the remote list into the local one (protocol 3). Returns the number of blocks taken.
///
/// # Safety
/// The caller must own `pool` (or hold it handed over), and it must not be detached.
#[inline]
pub(crate) unsafe fn collect(pool: *mut PoolHeader) -> u32 {
    // SAFETY: the caller owns the pool.
    unsafe {
        let remote = &(*pool).shared.remote;
        if remote.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let h = remote.swap(0, Ordering::Acquire);
        debug_assert_eq!(h & FLAGS, 0, "collecting a detached pool");
        let n = remote_count(h);
        let head = (h & PTR_MASK) as *mut Block;
        if n == 0 {
            return 0;
        }
        let p = &mut *pool;
        if !p.freeblock.is_null() {
            // Append the local list after the remote one's tail.
            let mut tail = head;
            while !(*tail).next.is_null() {
                tail = (*tail).next;
            }
            (*tail).next = p.freeblock;
        }
        p.freeblock = head;
        p.sub_ref(n);
        n
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
        .compare_exchange(0, DETACHED, Ordering::Release, Ordering::Relaxed)
    {
        Ok(_) => true,
        Err(_) => {
            shared.owner.store(token, Ordering::Relaxed);
            false
        }
    }
}
