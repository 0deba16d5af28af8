//! Free-threaded mode's heap: the central structures, a table of thread caches, and the binding
//! of threads to caches.
//!
//! # Binding threads to caches
//! - Every heap has an `id` (never reused) and a table of [`Cache`] slots (an anonymous mapping,
//!   never freed while the heap lives; a slot is taken by compare-exchange of `in_use`).
//! - Every thread that allocates through a heap gets a small global thread index (`tid`, reused
//!   after the thread exits) and, per heap, a cache slot recorded in the heap's `by_tid` table.
//! - A const-initialised thread-local memo `(heap id, cache)` without destructor makes the fast
//!   path two thread-local loads and a compare. It starts at an empty sentinel (heap id 0, which
//!   no heap has), so the first call of a thread takes the slow path, which binds the thread.
//!   Beside it the slot keeps the thread's cache of the process-wide heap alone (null until the
//!   thread binds to it, and again from its exit): that heap's fast paths read only this word.
//! - A `pthread_key` destructor, registered on the slow path, runs at thread exit: it turns the
//!   memo to `DEAD` (later allocations of the dying thread take a cache-less path: a temporary
//!   cache, abandoned after one block), calls the exit hook, which walks the registry of live
//!   heaps (`heaps`) and abandons the thread's cache of every free-threaded heap, the
//!   process-wide one ([`FtMalloc`](crate::FtMalloc)) and instances alike, and frees the `tid`.
//! - Frees of the process-wide heap bind a thread that has no cache yet (its remote frees are
//!   then batched, and flushed at its exit); frees of other instances never bind (their
//!   thread caches publish each remote free at once, as they did when only the process-wide
//!   heap's caches were handed back at thread exit).
//!
//! Nothing on the exit path allocates through ftmalloc (see the `exit` module).

pub(crate) mod central;
mod fork;
#[cfg(not(loom))]
mod registry;
pub(crate) mod thread_cache;

use crate::base::os;
use crate::base::sync::Ordering;
use crate::layout::arena_map::ArenaMap;
use crate::layout::config::Config;
use crate::layout::geometry::Geometry;
use crate::layout::pool::PoolHeader;
use crate::layout::stats::Stats;
use crate::layout::{Arenas, Front, Mode};
use central::Central;
use core::ptr;
use thread_cache::{remote_count, Cache, CacheSlot, Ctx, DETACHED};

/// Cache slots per heap (threads and handles alive at once).
#[cfg(not(loom))]
pub(crate) const MAX_CACHES: usize = 1 << 14;
#[cfg(loom)]
pub(crate) const MAX_CACHES: usize = 8;

/// Threads alive at once, process-wide.
const MAX_THREADS: usize = 1 << 14;

/// The process-wide heap's id (fixed, so its fast paths compare the memo with a constant).
const PROCESS_HEAP_ID: usize = 1;

/// Ids of other heaps: from 2, never reused.
static NEXT_HEAP_ID: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(2);

/// Memo heap id of a thread whose thread-locals are being destroyed.
#[cfg(not(loom))]
const DEAD: usize = usize::MAX;
/// Memo heap id while a thread is being bound (guards against re-entrant allocation).
#[cfg(not(loom))]
const BINDING: usize = usize::MAX - 1;

/// The thread's binding: the heap id it is bound to and its cache there.
#[derive(Clone, Copy)]
#[repr(C)]
struct Memo {
    heap: usize,
    cache: *mut Cache,
}

/// The thread's memo slot: the last heap it was bound to (`memo`), and apart from it its cache
/// of the process-wide heap (null until bound, and again from thread exit), which the process
/// heap's fast paths read alone: one load and a null test, and binding a thread to an
/// instance never evicts it.
#[repr(C)]
struct MemoSlot {
    memo: Memo,
    process: *mut Cache,
}

/// The memo, one per thread, read on every allocation and free: on x86-64 Linux a TLS slot of
/// the initial-exec model (`memo_slot`), elsewhere (and under loom and Miri) a `thread_local!`.
///
/// Why not `thread_local!` everywhere: in a shared object (the drop-in `libftmalloc.so`, or a
/// Python extension) Rust gives thread-locals the general-dynamic model, a call to
/// `__tls_get_addr` of about 11 instructions per access. The initial-exec model reads the slot's
/// offset from the GOT and adds the thread pointer (`fs:0`): two instructions. Its cost is a
/// static TLS slot of 24 bytes: a library loaded with `dlopen` takes it from glibc's surplus
/// (hundreds of bytes), as many system libraries' own initial-exec slots do.
mod memo {
    use super::{Cache, Memo, MemoSlot};

    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(loom), not(miri)))]
    mod slot {
        use super::MemoSlot;

        // 24 zero bytes in the thread-local BSS: heap id 0 (no heap has it), no cache, no
        // process-heap cache. Hidden: not exported from the shared object.
        core::arch::global_asm!(
            ".pushsection .tbss,\"awT\",@nobits",
            ".p2align 4",
            ".globl __ftmalloc_memo",
            ".hidden __ftmalloc_memo",
            ".type __ftmalloc_memo,@object",
            ".size __ftmalloc_memo,24",
            "__ftmalloc_memo:",
            ".zero 24",
            ".popsection",
        );

        /// This thread's memo slot.
        #[inline(always)]
        pub(super) fn get() -> *mut MemoSlot {
            let p: *mut MemoSlot;
            // SAFETY: the initial-exec sequence: the slot's offset from the thread pointer (a
            // GOT entry the dynamic linker fills) plus the thread pointer (`fs:0` holds it on
            // x86-64 Linux). Reads nothing that changes while the thread lives.
            unsafe {
                core::arch::asm!(
                    "mov {p}, qword ptr fs:[0]",
                    "add {p}, qword ptr [rip + __ftmalloc_memo@GOTTPOFF]",
                    p = out(reg) p,
                    options(pure, nomem, nostack),
                );
            }
            p
        }
    }

    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(loom), not(miri))))]
    mod slot {
        use super::{Memo, MemoSlot};
        use core::cell::UnsafeCell;

        crate::base::sync::ft_thread_local! {
            static MEMO: UnsafeCell<MemoSlot> = UnsafeCell::new(MemoSlot {
                memo: Memo { heap: 0, cache: core::ptr::null_mut() },
                process: core::ptr::null_mut(),
            });
        }

        /// This thread's memo slot.
        #[inline(always)]
        pub(super) fn get() -> *mut MemoSlot {
            MEMO.with(|m| m.get())
        }
    }

    /// This thread's memo.
    #[inline(always)]
    pub(super) fn get() -> Memo {
        // SAFETY: the slot is this thread's, valid while it lives, and never referenced.
        unsafe { (&raw const (*slot::get()).memo).read() }
    }

    /// Sets this thread's memo.
    #[inline(always)]
    #[cfg_attr(loom, allow(dead_code))]
    pub(super) fn set(m: Memo) {
        // SAFETY: as in `get`.
        unsafe { (&raw mut (*slot::get()).memo).write(m) }
    }

    /// This thread's cache of the process-wide heap, or null (not bound, or exiting).
    #[inline(always)]
    pub(super) fn process() -> *mut Cache {
        // SAFETY: as in `get`.
        unsafe { (&raw const (*slot::get()).process).read() }
    }

    /// Sets this thread's cache of the process-wide heap.
    #[inline(always)]
    #[cfg_attr(loom, allow(dead_code))]
    pub(super) fn set_process(c: *mut Cache) {
        // SAFETY: as in `get`.
        unsafe { (&raw mut (*slot::get()).process).write(c) }
    }
}

/// The thread-exit hook (a `fn(usize)`, 0 while none is set): called with the exiting thread's
/// index, it walks the registry of live heaps (`heaps`), which this module does not know.
#[cfg(not(loom))]
static EXIT_HOOK: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Installs the thread-exit hook (see `EXIT_HOOK`).
#[cfg(not(loom))]
pub(crate) fn set_thread_exit_hook(hook: fn(usize)) {
    EXIT_HOOK.store(hook as usize, core::sync::atomic::Ordering::Release);
}

/// Thread `tid` is exiting (called by the registry's destructor): later allocations of this
/// thread take the cache-less path, and the hook abandons its cache of every live heap.
#[cfg(not(loom))]
fn thread_exiting(tid: usize) {
    memo::set(Memo {
        heap: DEAD,
        cache: ptr::null_mut(),
    });
    memo::set_process(ptr::null_mut());
    let hook = EXIT_HOOK.load(core::sync::atomic::Ordering::Acquire);
    if hook != 0 {
        // SAFETY: EXIT_HOOK only ever holds 0 or a `fn(usize)` stored by set_thread_exit_hook.
        let hook: fn(usize) = unsafe { core::mem::transmute::<usize, fn(usize)>(hook) };
        hook(tid);
    }
}

/// The fast free into a pool the cache `c` (null: none) owns, when that is cheap
/// (`Cache::free_fast`); false (nothing done) on any miss. Ownership is tested first: a pool
/// the cache owns was prepared by it (a class in range, a carve mark), so the block check then
/// tests only the block's start and the pool's reference count.
///
/// # Safety
/// `c` is null or the calling thread's own cache; `pool` is the header of `block`'s pool in a
/// mapped arena of the heap; `block` is live or invalid (an invalid one misses); `geo` is the
/// heap's geometry.
#[inline(always)]
unsafe fn free_into_owned(
    c: *mut Cache,
    pool: *mut PoolHeader,
    block: *mut u8,
    geo: &Geometry,
) -> bool {
    // SAFETY: a cache is used by its thread only; `pool` is a header in a mapped arena, so
    // `owns` may read its owner word; an owned pool is prepared (thread_cache: the owner stores
    // its token after preparing), which `check_owned_block` requires; a checked block with
    // refs > 0 is live by the contract.
    unsafe {
        if c.is_null() || !(*c).owns(pool) {
            return false;
        }
        match PoolHeader::check_owned_block(pool, block as usize, geo) {
            Some((class, refs)) => (*c).free_fast(pool, block, class as usize, refs),
            None => false,
        }
    }
}

pub(crate) struct FtHeap {
    id: usize,
    /// True for the process-wide heap ([`FtMalloc`](crate::FtMalloc)), whose thread caches are
    /// abandoned at thread exit: only caches that are certain to be flushed at their end batch
    /// remote frees (these and explicit handles; see `thread_cache`, protocol 2).
    process_heap: bool,
    pub(crate) central: Central,
    caches: *mut CacheSlot,
    by_tid: *mut *mut Cache,
}

// SAFETY: the tables are owned by the heap; cache slots are used by one thread at a time
// (taken by compare-exchange), by_tid entries only by the thread holding that tid.
unsafe impl Send for FtHeap {}
// SAFETY: as above.
unsafe impl Sync for FtHeap {}

fn caches_bytes() -> usize {
    (MAX_CACHES * core::mem::size_of::<CacheSlot>()).next_multiple_of(os::page_size())
}

fn by_tid_bytes() -> usize {
    (MAX_THREADS * core::mem::size_of::<usize>()).next_multiple_of(os::page_size())
}

impl FtHeap {
    pub(crate) fn new(geo: Geometry, decay_ms: u64) -> Option<FtHeap> {
        let central = Central::new(geo, decay_ms)?;
        let caches = os::map(caches_bytes()).cast::<CacheSlot>();
        let by_tid = os::map(by_tid_bytes()).cast::<*mut Cache>();
        if caches.is_null() || by_tid.is_null() {
            return None;
        }
        // Zero bytes are a valid empty slot with core atomics; loom's must be constructed.
        #[cfg(loom)]
        for i in 0..MAX_CACHES {
            // SAFETY: i < MAX_CACHES, inside the fresh mapping.
            unsafe { ptr::write(caches.add(i), CacheSlot::new()) };
        }
        Some(FtHeap {
            id: NEXT_HEAP_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
            process_heap: false,
            central,
            caches,
            by_tid,
        })
    }

    #[inline(always)]
    pub(crate) fn ctx<'a>(&'a self, arenas: &'a Arenas) -> Ctx<'a> {
        Ctx {
            geo: &arenas.geo,
            central: &self.central,
            map: &arenas.map,
        }
    }

    /// Takes a free cache slot, or null when all are in use. `batching`: whether the cache
    /// may hold remote frees in batches (only if it is certain to be flushed when given up).
    pub(crate) fn acquire_cache(&self, batching: bool) -> *mut Cache {
        for i in 0..MAX_CACHES {
            // SAFETY: i < MAX_CACHES; slots hold valid caches.
            let slot = unsafe { self.caches.add(i) };
            // SAFETY: as above; a field projection, no reference to the cache.
            let in_use = unsafe { &(*slot).in_use };
            if in_use.load(Ordering::Relaxed) == 0
                && in_use
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                // SAFETY: we hold the slot now, and a released slot's cache is empty.
                return unsafe { CacheSlot::take(slot, batching) };
            }
        }
        ptr::null_mut()
    }

    /// Abandons a cache's pools and frees its slot.
    ///
    /// # Safety
    /// `cache` must be a slot of this heap acquired by the caller and not used afterwards.
    pub(crate) unsafe fn release_cache(&self, cache: *mut Cache, cx: &Ctx<'_>) {
        // The cache is the first field of its slot (repr(C)): the slot's index from its address,
        // and the slot pointer from the table (which has the provenance of the whole table).
        let i = (cache as usize - self.caches as usize) / core::mem::size_of::<CacheSlot>();
        debug_assert!(i < MAX_CACHES);
        // SAFETY: the caller holds the slot exclusively; i < MAX_CACHES.
        unsafe {
            (*cache).abandon_all(cx);
            // The last write of this owner; the next taker's is ordered after it by `in_use`.
            crate::base::sync::track_plain(cache, true);
            (*self.caches.add(i)).in_use.store(0, Ordering::Release);
        }
    }

    /// The calling thread's cache for this heap, or null if it cannot have one (its
    /// thread-locals are gone, or no slot is left).
    #[inline(always)]
    pub(crate) fn local_cache(&self) -> *mut Cache {
        let m = memo::get();
        if m.heap == self.id {
            m.cache
        } else {
            self.bind_slow()
        }
    }

    /// The cache a remote free by the calling thread may batch in: its bound cache; binding
    /// it first in the process-wide heap (whose caches are flushed at thread exit).
    #[inline]
    pub(crate) fn cache_for_remote_free(&self) -> *mut Cache {
        if self.process_heap {
            self.local_cache()
        } else {
            self.bound_cache()
        }
    }

    /// A free into a pool the calling thread does not own: batched in the thread's cache
    /// (binding the thread to one if it has none yet), or published at once without one.
    ///
    /// # Safety
    /// `block` is a live block of `pool`; `cache` null or the caller's own cache.
    #[inline(never)]
    unsafe fn free_remote(
        &self,
        pool: *mut PoolHeader,
        block: *mut u8,
        cache: *mut Cache,
        cx: &Ctx<'_>,
    ) {
        let c = if cache.is_null() {
            self.cache_for_remote_free()
        } else {
            cache
        };
        // SAFETY: forwarded contract; a non-null cache is the calling thread's own.
        unsafe {
            if c.is_null() {
                thread_cache::remote_free_direct(pool, block, cx);
            } else {
                (*c).free_remote(pool, block, cx);
            }
        }
    }

    /// The calling thread's cache if it is already bound; never binds (used by frees).
    #[inline(always)]
    pub(crate) fn bound_cache(&self) -> *mut Cache {
        let m = memo::get();
        if m.heap == self.id {
            m.cache
        } else {
            ptr::null_mut()
        }
    }

    /// [`bound_cache`](Self::bound_cache) of the process-wide heap (its fast paths): the memo
    /// slot's own field for it, set when the thread binds and cleared at its exit.
    #[inline(always)]
    fn bound_cache_of_process_heap(&self) -> *mut Cache {
        debug_assert!(self.process_heap && self.id == PROCESS_HEAP_ID);
        memo::process()
    }

    #[cold]
    #[inline(never)]
    fn bind_slow(&self) -> *mut Cache {
        #[cfg(loom)]
        {
            ptr::null_mut()
        }
        #[cfg(not(loom))]
        {
            let prev = memo::get();
            if prev.heap == DEAD || prev.heap == BINDING {
                return ptr::null_mut();
            }
            // While binding, a nested allocation (from pthread_setspecific) takes the
            // cache-less path instead of recursing.
            memo::set(Memo {
                heap: BINDING,
                cache: ptr::null_mut(),
            });
            let Some(tid) = registry::current_tid() else {
                memo::set(prev);
                return ptr::null_mut();
            };
            // SAFETY: tid < MAX_THREADS; only the thread holding tid touches this entry, and
            // the tid registry's release/acquire orders it against the previous holder.
            let entry = unsafe { &mut *self.by_tid.add(tid) };
            if entry.is_null() {
                *entry = self.acquire_cache(self.process_heap);
                if entry.is_null() {
                    memo::set(prev);
                    return ptr::null_mut();
                }
            }
            let cache = *entry;
            memo::set(Memo {
                heap: self.id,
                cache,
            });
            if self.process_heap {
                memo::set_process(cache);
            }
            cache
        }
    }

    /// Allocation without a bound cache: a temporary cache for one block.
    #[cold]
    #[inline(never)]
    pub(crate) fn alloc_cacheless(&self, class: usize, cx: &Ctx<'_>) -> *mut u8 {
        let c = self.acquire_cache(false);
        if c.is_null() {
            // Every slot is taken (16,384 threads or handles alive): a cache on the stack for
            // this one block. Running out of slots costs speed, never an allocation.
            let mut tmp = Cache::new();
            let b = tmp.alloc(class, cx);
            tmp.abandon_all(cx);
            return b;
        }
        // SAFETY: we hold slot c exclusively until release_cache.
        unsafe {
            let b = (*c).alloc(class, cx);
            self.release_cache(c, cx);
            b
        }
    }

    /// The child side of `fork` (see `central`, protocol step 8).
    ///
    /// What the child inherits from the parent's other threads, which do not exist in it: their
    /// caches stay bound to their thread indices, so the pools those caches held (and the
    /// indices) are never used again in the child; a thread's work in flight at the moment of
    /// `fork` is lost with it: at most one pool being claimed, handed over or returned, one
    /// collected remote list (of a pool its cache holds), and one abandoned chain being
    /// walked. None of this grows in the child afterwards. Descriptors in flight and the
    /// statistics pins are repaired here (`Central::after_fork`).
    pub(crate) fn after_fork(&self, cx: &Ctx<'_>) {
        self.central.after_fork(cx.map);
    }

    /// Abandons the cache bound to `tid`, if any (thread exit).
    #[cfg_attr(loom, allow(dead_code))]
    fn abandon_tid(&self, tid: usize, cx: &Ctx<'_>) {
        // SAFETY: tid < MAX_THREADS and is held by the exiting thread.
        let entry = unsafe { &mut *self.by_tid.add(tid) };
        let c = core::mem::replace(entry, ptr::null_mut());
        if !c.is_null() {
            // SAFETY: the slot was acquired for this tid and is used by no one else.
            unsafe { self.release_cache(c, cx) };
        }
    }

    /// Gives memory back now: the calling thread's cache (if it has one) publishes its batches
    /// and sweeps every partial pool, empty abandoned pools return to their arenas, every free
    /// pool is purged and arenas whose pools are all free are released. Returns the number of
    /// pools returned to arenas.
    pub(crate) fn trim_all(&self, cx: &Ctx<'_>) -> usize {
        let c = self.bound_cache();
        let mut n = 0;
        if !c.is_null() {
            // SAFETY: a bound cache is used by the calling thread only.
            n += unsafe { (*c).trim(cx) };
        }
        n + thread_cache::maintenance(cx, true)
    }

    /// Fills `stats` by walking every pool of every mapped arena (arenas pinned meanwhile).
    pub(crate) fn walk_stats(&self, stats: &mut Stats, geo: &Geometry) {
        stats.counters = self.central.counters();
        stats.pools_purged = self.central.pools_purged() as u64;
        self.central.for_each_pool(|pool, claimed, dirty| {
            if !claimed {
                stats.unused_pools += 1;
                stats.dirty_pools += usize::from(dirty);
                return;
            }
            if pool.is_null() {
                // Claimed a moment ago, header not written yet.
                stats.unused_pools += 1;
                return;
            }
            // SAFETY: the arena is pinned and the header was written (for_each_pool's contract);
            // we read only atomic fields, each through its own projection (no reference to the
            // header, whose plain fields the owner writes meanwhile). Our `inited` bit may be
            // stale: the pool may be purged, claimed and given a fresh header while we read,
            // and `init_fresh` writes every field read here with an atomic store, so that is
            // no data race (DESIGN.md section 7), only approximate numbers.
            let (class, next, word, refs, owner) = unsafe {
                (
                    PoolHeader::class(pool),
                    PoolHeader::next_offset_racy(pool),
                    PoolHeader::remote_racy(pool),
                    PoolHeader::refs_racy(pool),
                    PoolHeader::owner_racy(pool),
                )
            };
            // A header being purged under a claim reads as zeros: no carve mark.
            if class == crate::layout::pool::NO_CLASS || (next as usize) < geo.pool_overhead {
                stats.unused_pools += 1;
                return;
            }
            let in_use = refs.saturating_sub(remote_count(word));
            stats.add_pool(class as usize, in_use as usize, geo);
            if owner != 0 {
                stats.cached_pools += 1;
            } else if word & DETACHED == 0 {
                stats.abandoned_pools += 1;
            }
        });
        for i in 0..MAX_CACHES {
            // SAFETY: i < MAX_CACHES; `in_use` and `held` are atomics beside the cache (no
            // reference to the cache, which its owner holds as `&mut`).
            let (in_use, held) = unsafe {
                let slot = self.caches.add(i);
                (
                    (*slot).in_use.load(Ordering::Relaxed),
                    (*slot).held.load(core::sync::atomic::Ordering::Relaxed),
                )
            };
            if in_use != 0 {
                stats.thread_caches += 1;
                stats.max_cached_pools = stats.max_cached_pools.max(held);
            }
        }
    }

    /// Unmaps everything. Used when the heap is dropped.
    pub(crate) fn unmap_all(&mut self, map: &ArenaMap) {
        self.central.release_all(map);
        // SAFETY: the tables were mapped in new with these sizes; the heap is being dropped.
        unsafe {
            os::unmap(self.caches.cast(), caches_bytes());
            os::unmap(self.by_tid.cast(), by_tid_bytes());
        }
    }
}

impl Front for FtHeap {
    const MODE: Mode = Mode::FreeThreaded;
    /// A handle's cache slot; null: the calling thread's own cache (bound on first use).
    type Local = *mut Cache;
    const NO_LOCAL: *mut Cache = ptr::null_mut();

    fn build(geo: Geometry, config: &Config) -> Option<FtHeap> {
        FtHeap::new(geo, config.decay_ms)
    }

    #[inline(always)]
    unsafe fn alloc(&self, class: usize, cache: *mut Cache, arenas: &Arenas) -> *mut u8 {
        let c = if cache.is_null() {
            self.local_cache()
        } else {
            cache
        };
        if c.is_null() {
            self.alloc_cacheless(class, &self.ctx(arenas))
        } else {
            // SAFETY: a bound cache or a handle's cache is used by this thread only.
            unsafe { (*c).alloc_lazy(class, &arenas.geo, || self.ctx(arenas)) }
        }
    }

    /// The bound cache's current pool of `class`, popped; null on any miss (no bound cache,
    /// no current pool, or an empty one).
    #[inline(always)]
    fn alloc_fast(&self, class: usize, geo: &Geometry, _arenas: &Arenas) -> *mut u8 {
        let c = self.bound_cache_of_process_heap();
        if c.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: a bound cache is used by the calling thread only.
        unsafe { (*c).alloc_fast(class, geo) }
    }

    /// A free into a pool the bound cache owns, when that is cheap (`Cache::free_fast`); false
    /// on any miss. Ownership is tested first: a pool the calling thread's cache owns was
    /// prepared by it (a class in range, a carve mark), so the block check then tests only
    /// the block's start and the pool's reference count.
    #[inline(always)]
    unsafe fn free_fast(
        &self,
        pool: *mut PoolHeader,
        block: *mut u8,
        geo: &Geometry,
        _arenas: &Arenas,
    ) -> bool {
        // SAFETY: the process heap's bound cache is the calling thread's own; the rest is the
        // trait's contract.
        unsafe { free_into_owned(self.bound_cache_of_process_heap(), pool, block, geo) }
    }

    /// As `free_fast`, for any heap: the caller's cache, or the thread's bound cache of this
    /// heap.
    #[inline(always)]
    unsafe fn free_owned(
        &self,
        pool: *mut PoolHeader,
        block: *mut u8,
        geo: &Geometry,
        cache: *mut Cache,
        _arenas: &Arenas,
    ) -> bool {
        let c = if cache.is_null() {
            self.bound_cache()
        } else {
            cache
        };
        // SAFETY: a non-null `cache` is the caller's own (the trait's contract), a bound cache
        // the calling thread's; the rest is the trait's contract.
        unsafe { free_into_owned(c, pool, block, geo) }
    }

    #[inline(always)]
    unsafe fn free(
        &self,
        pool: *mut PoolHeader,
        block: *mut u8,
        cache: *mut Cache,
        arenas: &Arenas,
    ) {
        let c = if cache.is_null() {
            self.bound_cache()
        } else {
            cache
        };
        // SAFETY: the trait's contract; a non-null cache is the caller's own.
        unsafe {
            if !c.is_null() && (*c).owns(pool) {
                (*c).free_local(pool, block, || self.ctx(arenas));
            } else {
                self.free_remote(pool, block, c, &self.ctx(arenas));
            }
        }
    }

    /// Publishes the calling thread's own batched remote frees first, so a block a thread
    /// freed is never reported in use to that thread.
    fn fill_stats(&self, stats: &mut Stats, arenas: &Arenas) {
        let c = self.bound_cache();
        if !c.is_null() {
            // SAFETY: a bound cache is used by the calling thread only.
            unsafe { (*c).flush_batches(&self.ctx(arenas)) };
        }
        self.walk_stats(stats, &arenas.geo);
    }

    fn trim(&self, arenas: &Arenas) -> usize {
        self.trim_all(&self.ctx(arenas))
    }

    fn new_local(&self) -> Option<*mut Cache> {
        let c = self.acquire_cache(true);
        (!c.is_null()).then_some(c)
    }

    unsafe fn flush_local(&self, cache: *mut Cache, arenas: &Arenas) {
        // SAFETY: the slot is the caller's (the trait's contract).
        unsafe { (*cache).flush_batches(&self.ctx(arenas)) };
    }

    unsafe fn trim_local(&self, cache: *mut Cache, arenas: &Arenas) -> usize {
        let cx = self.ctx(arenas);
        // SAFETY: the slot is the caller's (the trait's contract).
        let n = unsafe { (*cache).trim(&cx) };
        n + thread_cache::maintenance(&cx, true)
    }

    unsafe fn local_pools(&self, cache: *mut Cache) -> usize {
        // SAFETY: the slot is the caller's (the trait's contract).
        unsafe { (*cache).pool_count() }
    }

    unsafe fn drop_local(&self, cache: *mut Cache, arenas: &Arenas) {
        // SAFETY: the slot is the caller's and dies with its handle.
        unsafe { self.release_cache(cache, &self.ctx(arenas)) };
    }

    fn set_process_heap(&mut self) {
        self.process_heap = true;
        // Before any thread binds to it (the trait's contract), so no memo holds the old id.
        self.id = PROCESS_HEAP_ID;
    }

    /// No lock to hold; the central structure's fork gate keeps arena releases out of the
    /// fork (`Central::fork_prepare`).
    fn fork_prepare(&self, _arenas: &Arenas) {
        self.central.fork_prepare();
    }

    fn fork_parent(&self, _arenas: &Arenas) {
        self.central.fork_parent();
    }

    fn fork_child(&self, arenas: &Arenas) {
        self.after_fork(&self.ctx(arenas));
    }

    fn thread_exit(&self, tid: usize, arenas: &Arenas) {
        let cx = self.ctx(arenas);
        self.abandon_tid(tid, &cx);
        // Pools this and earlier exited threads left ownerless may be empty by now: the
        // periodic pass returns them (not every exit: a pass swaps the abandoned stacks out
        // for a moment, and adopters then would claim fresh pools).
        if cx.central.maintenance_due() {
            thread_cache::maintenance(&cx, false);
        }
    }

    fn release_all(&mut self, arenas: &Arenas) {
        self.unmap_all(&arenas.map);
    }

    #[cfg(test)]
    fn check_invariants(&self, arenas: &Arenas) {
        let mut s = Stats::empty(Mode::FreeThreaded, &arenas.geo);
        Front::fill_stats(self, &mut s, arenas);
        assert_eq!(s.total(), s.mapped_bytes());
    }
}
