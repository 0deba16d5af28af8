//! pymalloc's own algorithms, faithfully: the state GIL mode's lock guards.
//!
//! Everything here runs with the `GilHeap` lock held (`gil`); the lock stands for the GIL. The
//! structures are CPython's (`Objects/obmalloc.c`), in its words:
//! - `usedpools[class]`: the pools of a class that have at least one free block and at least one
//!   block in use, doubly linked, new pools inserted at the front. Full pools are on no list; a
//!   free into a full pool puts it back at the front.
//! - Each arena descriptor (`ArenaObject`) keeps the pools it has never carved
//!   (`pool_address` up to the arena end) and a singly linked `freepools` list of pools that
//!   were carved and became empty. `nfreepools` counts both.
//! - `usable_arenas`: the arenas with at least one free pool, doubly linked and sorted by
//!   `nfreepools` ascending, so new pools come from the fullest arena and nearly empty arenas
//!   get the chance to empty completely. `nfp2lasta[n]` is the last arena in that list with
//!   exactly `n` free pools, which makes re-positioning an arena after a pool is freed O(1).
//! - An arena whose pools are all free is unmapped, unless it is the last arena of
//!   `usable_arenas` (pymalloc keeps at most one such arena to avoid thrashing).
//! - Descriptors of unmapped arenas go on `unused_arena_objects` and are reused.
//!
//! Invariants (checked by `check_invariants` in tests):
//! - every arena on `usable_arenas` has `0 < nfreepools`, and the list is sorted ascending;
//! - `nfp2lasta[n]`, when set, is on the list, has `nfreepools == n`, and its successor (if any)
//!   has more; when unset, no arena on the list has `n` free pools;
//! - for each arena: `pools in use + nfreepools == ntotalpools`, where pools in use are the
//!   carved pools with `ref_count > 0`;
//! - a pool is on `usedpools[c]` iff it serves class `c`, `0 < ref_count` and it is not full.
//!

use crate::base::list::{self, Links};
use crate::base::os;
use crate::layout::arena_map::ArenaMap;
use crate::layout::geometry::{Geometry, MAX_ARENAS, MAX_POOLS_PER_ARENA};
use crate::layout::pool::PoolHeader;
use crate::layout::size_class::NUM_CLASSES;
use crate::layout::stats::{ArenaCounters, Stats};
use core::ptr;

/// `usable_arenas` is linked through `nextarena` / `prevarena`.
impl Links for ArenaObject {
    #[inline(always)]
    unsafe fn next(ao: *const ArenaObject) -> *mut ArenaObject {
        // SAFETY: forwarded contract.
        unsafe { (*ao).nextarena }
    }
    #[inline(always)]
    unsafe fn prev(ao: *const ArenaObject) -> *mut ArenaObject {
        // SAFETY: forwarded contract.
        unsafe { (*ao).prevarena }
    }
    #[inline(always)]
    unsafe fn set_next(ao: *mut ArenaObject, next: *mut ArenaObject) {
        // SAFETY: forwarded contract.
        unsafe { (*ao).nextarena = next }
    }
    #[inline(always)]
    unsafe fn set_prev(ao: *mut ArenaObject, prev: *mut ArenaObject) {
        // SAFETY: forwarded contract.
        unsafe { (*ao).prevarena = prev }
    }
}

/// pymalloc's `struct arena_object`.
#[repr(C)]
struct ArenaObject {
    /// Base address of the arena, or 0 when this descriptor is unused.
    address: usize,
    /// First pool never carved.
    pool_address: usize,
    nfreepools: u32,
    ntotalpools: u32,
    /// Carved pools that became empty, linked through `nextpool`.
    freepools: *mut PoolHeader,
    nextarena: *mut ArenaObject,
    prevarena: *mut ArenaObject,
}

/// The state guarded by the lock.
pub(crate) struct GilCore {
    pub(super) geo: Geometry,
    arenas: *mut ArenaObject,
    /// Descriptors ever handed out (the table's high-water mark).
    arenas_len: usize,
    unused_arena_objects: *mut ArenaObject,
    usable_arenas: *mut ArenaObject,
    nfp2lasta: [*mut ArenaObject; MAX_POOLS_PER_ARENA + 1],
    usedpools: [*mut PoolHeader; NUM_CLASSES],
    counters: ArenaCounters,
}

impl GilCore {
    /// An empty heap over arenas of `geo`; `None` when the descriptor table cannot be mapped
    /// (an anonymous mapping of `MAX_ARENAS` descriptors: only the touched pages cost memory).
    pub(crate) fn new(geo: Geometry) -> Option<GilCore> {
        let arenas =
            os::map(MAX_ARENAS * core::mem::size_of::<ArenaObject>()).cast::<ArenaObject>();
        if arenas.is_null() {
            return None;
        }
        Some(GilCore {
            geo,
            arenas,
            arenas_len: 0,
            unused_arena_objects: ptr::null_mut(),
            usable_arenas: ptr::null_mut(),
            nfp2lasta: [ptr::null_mut(); MAX_POOLS_PER_ARENA + 1],
            usedpools: [ptr::null_mut(); NUM_CLASSES],
            counters: ArenaCounters::default(),
        })
    }
}

impl GilCore {
    /// pymalloc_alloc: a block of `class`, or null when no arena can be mapped.
    #[inline(always)]
    pub(crate) fn alloc(&mut self, class: usize, map: &ArenaMap) -> *mut u8 {
        let pool = self.usedpools[class];
        if !pool.is_null() {
            // SAFETY: pools on usedpools are prepared, owned by this heap, and not full.
            unsafe {
                let b = PoolHeader::pop(pool, &self.geo);
                debug_assert!(!b.is_null());
                if PoolHeader::is_full(pool, &self.geo) {
                    self.unlink_used(pool, class);
                }
                return b;
            }
        }
        self.allocate_from_new_pool(class, map)
    }

    /// pymalloc_free for a block of one of our pools.
    ///
    /// # Safety
    /// `block` must be a block in use, handed out by this heap, in pool `pool`.
    #[inline(always)]
    pub(crate) unsafe fn free(&mut self, pool: *mut PoolHeader, block: *mut u8, map: &ArenaMap) {
        // SAFETY: per the contract, the pool is in use and ours; we hold the lock.
        unsafe {
            let was_full = PoolHeader::is_full(pool, &self.geo);
            PoolHeader::push(pool, block);
            let class = PoolHeader::class(pool) as usize;
            if PoolHeader::refs(pool) == 0 {
                if !was_full {
                    self.unlink_used(pool, class);
                }
                self.insert_to_freepool(pool, map);
            } else if was_full {
                self.link_used_front(pool, class);
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn allocate_from_new_pool(&mut self, class: usize, map: &ArenaMap) -> *mut u8 {
        if self.usable_arenas.is_null() {
            let ao = self.new_arena(map);
            if ao.is_null() {
                return ptr::null_mut();
            }
            self.usable_arenas = ao;
            // SAFETY: ao is a live descriptor we just initialised.
            unsafe {
                (*ao).nextarena = ptr::null_mut();
                (*ao).prevarena = ptr::null_mut();
                debug_assert!(self.nfp2lasta[(*ao).nfreepools as usize].is_null());
                self.nfp2lasta[(*ao).nfreepools as usize] = ao;
            }
        }
        let ua = self.usable_arenas;
        // SAFETY: usable_arenas is a live descriptor with nfreepools > 0; we hold the lock.
        unsafe {
            let nf = (*ua).nfreepools as usize;
            if self.nfp2lasta[nf] == ua {
                // It was the last arena with nf free pools; none is left with that count.
                self.nfp2lasta[nf] = ptr::null_mut();
            }
            if nf > 1 {
                // It is the head, so no arena has nf - 1 free pools yet.
                debug_assert!(self.nfp2lasta[nf - 1].is_null());
                self.nfp2lasta[nf - 1] = ua;
            }
            let pool = if !(*ua).freepools.is_null() {
                let pool = (*ua).freepools;
                (*ua).freepools = PoolHeader::next_pool(pool);
                pool
            } else {
                // Carve a pool never used before.
                let pool = (*ua).pool_address as *mut PoolHeader;
                let index = ua.offset_from(self.arenas) as u32;
                PoolHeader::init_fresh(pool, index);
                (*ua).pool_address += self.geo.pool_size;
                pool
            };
            (*ua).nfreepools -= 1;
            if (*ua).nfreepools == 0 {
                self.usable_arenas = (*ua).nextarena;
                if !self.usable_arenas.is_null() {
                    (*self.usable_arenas).prevarena = ptr::null_mut();
                }
            }
            PoolHeader::prepare(pool, class, &self.geo);
            let b = PoolHeader::pop(pool, &self.geo);
            debug_assert!(!b.is_null());
            // Geometry guarantees at least two blocks per pool, so a fresh pool is never full here.
            self.link_used_front(pool, class);
            b
        }
    }

    /// Maps an arena and gives it a descriptor (pymalloc's `new_arena`).
    #[cold]
    fn new_arena(&mut self, map: &ArenaMap) -> *mut ArenaObject {
        let ao = if !self.unused_arena_objects.is_null() {
            let ao = self.unused_arena_objects;
            // SAFETY: descriptors on the unused list are in the table and not in use.
            self.unused_arena_objects = unsafe { (*ao).nextarena };
            ao
        } else if self.arenas_len < MAX_ARENAS {
            // SAFETY: arenas_len < MAX_ARENAS, inside the table mapping.
            let ao = unsafe { self.arenas.add(self.arenas_len) };
            self.arenas_len += 1;
            ao
        } else {
            return ptr::null_mut();
        };
        let base = os::map_aligned(self.geo.arena_size, self.geo.arena_size);
        // SAFETY: ao is inside the table.
        let index = unsafe { ao.offset_from(self.arenas) } as usize;
        if base.is_null() || !map.insert(base as usize, index) {
            if !base.is_null() {
                // SAFETY: base was mapped above and never published.
                unsafe { os::unmap(base, self.geo.arena_size) };
            }
            // SAFETY: ao is a descriptor we own; put it back for later.
            unsafe { (*ao).nextarena = self.unused_arena_objects };
            self.unused_arena_objects = ao;
            return ptr::null_mut();
        }
        // SAFETY: ao is a descriptor we own.
        unsafe {
            ptr::write(
                ao,
                ArenaObject {
                    address: base as usize,
                    pool_address: base as usize,
                    nfreepools: self.geo.pools_per_arena as u32,
                    ntotalpools: self.geo.pools_per_arena as u32,
                    freepools: ptr::null_mut(),
                    nextarena: ptr::null_mut(),
                    prevarena: ptr::null_mut(),
                },
            );
        }
        self.counters.mapped();
        ao
    }

    /// pymalloc's `insert_to_freepool`: `pool` just became empty; give it back to its arena and
    /// keep `usable_arenas` sorted, unmapping the arena if all its pools are free.
    ///
    /// # Safety
    /// `pool` must be an empty pool of this heap that is on no used list.
    unsafe fn insert_to_freepool(&mut self, pool: *mut PoolHeader, map: &ArenaMap) {
        // SAFETY: the pool header and its arena descriptor are ours; we hold the lock.
        unsafe {
            let ao = self.arenas.add((*pool).arena_index as usize);
            PoolHeader::set_next_pool(pool, (*ao).freepools);
            (*ao).freepools = pool;
            let mut nf = (*ao).nfreepools as usize;
            // If ao is the rightmost arena with nf free pools, nfp2lasta[nf] moves left.
            let lastnf = self.nfp2lasta[nf];
            if lastnf == ao {
                let p = (*ao).prevarena;
                self.nfp2lasta[nf] = if !p.is_null() && (*p).nfreepools as usize == nf {
                    p
                } else {
                    ptr::null_mut()
                };
            }
            nf += 1;
            (*ao).nfreepools = nf as u32;

            // Case 1: every pool is free and another usable arena follows: unmap this one.
            if nf == (*ao).ntotalpools as usize && !(*ao).nextarena.is_null() {
                self.unlink_arena(ao);
                (*ao).nextarena = self.unused_arena_objects;
                self.unused_arena_objects = ao;
                map.remove((*ao).address);
                os::unmap((*ao).address as *mut u8, self.geo.arena_size);
                (*ao).address = 0;
                self.counters.unmapped();
                return;
            }
            // Case 2: the arena was full, so it is on no list; it has the fewest free pools
            // (one), so it goes to the front.
            if nf == 1 {
                (*ao).nextarena = self.usable_arenas;
                (*ao).prevarena = ptr::null_mut();
                if !self.usable_arenas.is_null() {
                    (*self.usable_arenas).prevarena = ao;
                }
                self.usable_arenas = ao;
                if self.nfp2lasta[1].is_null() {
                    self.nfp2lasta[1] = ao;
                }
                return;
            }
            if self.nfp2lasta[nf].is_null() {
                self.nfp2lasta[nf] = ao;
            }
            // Case 3: it was the rightmost with its old count, so it is still in order.
            if ao == lastnf {
                return;
            }
            // Case 4: move it right after the last arena with its old count.
            debug_assert!(!lastnf.is_null());
            self.unlink_arena(ao);
            (*ao).prevarena = lastnf;
            (*ao).nextarena = (*lastnf).nextarena;
            if !(*ao).nextarena.is_null() {
                (*(*ao).nextarena).prevarena = ao;
            }
            (*lastnf).nextarena = ao;
        }
    }

    /// # Safety
    /// `ao` must be on `usable_arenas`.
    unsafe fn unlink_arena(&mut self, ao: *mut ArenaObject) {
        // SAFETY: ao is on usable_arenas; it and its neighbours are live descriptors; we hold
        // the lock.
        unsafe { list::unlink(&mut self.usable_arenas, ao) };
    }

    /// # Safety
    /// `pool` must be a pool of this heap on no list.
    #[inline(always)]
    unsafe fn link_used_front(&mut self, pool: *mut PoolHeader, class: usize) {
        // SAFETY: pool (on no list) and the list's pools are pool headers of this heap; we
        // hold the lock.
        unsafe { list::push_front(&mut self.usedpools[class], pool) };
    }

    /// # Safety
    /// `pool` must be on `usedpools[class]`.
    #[inline(always)]
    unsafe fn unlink_used(&mut self, pool: *mut PoolHeader, class: usize) {
        // SAFETY: pool and its neighbours are pool headers on this list; we hold the lock.
        unsafe { list::unlink(&mut self.usedpools[class], pool) };
    }

    /// Fills `stats` from the arenas (pymalloc's `_PyObject_DebugMallocStats` walk).
    /// Allocates nothing: safe to call with the lock held.
    pub(crate) fn fill_stats(&self, stats: &mut Stats) {
        stats.counters = self.counters;
        for i in 0..self.arenas_len {
            // SAFETY: i < arenas_len: an initialised descriptor; we hold the lock.
            let ao = unsafe { &*self.arenas.add(i) };
            if ao.address == 0 {
                continue;
            }
            stats.unused_pools += ao.nfreepools as usize;
            let mut pool = ao.address;
            while pool < ao.pool_address {
                let p = pool as *const PoolHeader;
                // SAFETY: pools below pool_address were carved and have headers; we hold the
                // lock.
                let (refs, class) = unsafe { (PoolHeader::refs(p), PoolHeader::class(p)) };
                if refs > 0 {
                    stats.add_pool(class as usize, refs as usize, &self.geo);
                }
                pool += self.geo.pool_size;
            }
        }
    }

    /// Checks every invariant listed in the module docs; panics on the first broken one.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        // SAFETY: all pointers walked are live descriptors / pool headers; we hold the lock.
        unsafe {
            let mut ao = self.usable_arenas;
            let mut prev: *mut ArenaObject = ptr::null_mut();
            let mut last_nf = 0;
            let mut seen = [false; MAX_POOLS_PER_ARENA + 1];
            while !ao.is_null() {
                let nf = (*ao).nfreepools as usize;
                assert!(nf > 0, "usable arena with no free pool");
                assert!(nf >= last_nf, "usable_arenas not sorted");
                assert_eq!((*ao).prevarena, prev);
                let next = (*ao).nextarena;
                if next.is_null() || (*next).nfreepools as usize > nf {
                    assert_eq!(self.nfp2lasta[nf], ao, "nfp2lasta[{nf}] is not the last");
                }
                seen[nf] = true;
                last_nf = nf;
                prev = ao;
                ao = next;
            }
            for (n, &a) in self.nfp2lasta.iter().enumerate() {
                assert_eq!(
                    !a.is_null(),
                    seen[n],
                    "nfp2lasta[{n}] set without such arena"
                );
            }
            for i in 0..self.arenas_len {
                let ao = &*self.arenas.add(i);
                if ao.address == 0 {
                    continue;
                }
                let mut in_use = 0;
                let mut pool = ao.address;
                while pool < ao.pool_address {
                    if PoolHeader::refs(pool as *const PoolHeader) > 0 {
                        in_use += 1;
                    }
                    pool += self.geo.pool_size;
                }
                assert_eq!(in_use + ao.nfreepools, ao.ntotalpools);
            }
            for c in 0..NUM_CLASSES {
                let mut p = self.usedpools[c];
                while !p.is_null() {
                    assert_eq!(PoolHeader::class(p) as usize, c);
                    assert!(PoolHeader::refs(p) > 0);
                    assert!(!PoolHeader::is_full(p, &self.geo));
                    p = PoolHeader::next_pool(p);
                }
            }
        }
    }

    /// Unmaps every arena. Used when the heap is dropped.
    pub(crate) fn release_all(&mut self, map: &ArenaMap) {
        for i in 0..self.arenas_len {
            // SAFETY: i < arenas_len; exclusive access.
            let ao = unsafe { &mut *self.arenas.add(i) };
            if ao.address != 0 {
                map.remove(ao.address);
                // SAFETY: the arena is ours and no block of it may be used after drop.
                unsafe { os::unmap(ao.address as *mut u8, self.geo.arena_size) };
                ao.address = 0;
            }
        }
        // SAFETY: the table was mapped with this size in new.
        unsafe {
            os::unmap(
                self.arenas.cast(),
                MAX_ARENAS * core::mem::size_of::<ArenaObject>(),
            )
        };
        self.arenas = ptr::null_mut();
    }
}
