//! Pools: 16 KiB runs of equal-size blocks, with their header at the pool start.
//!
//! A pool is found from any of its blocks by masking the address with the pool size
//! ([`Geometry::pool_of`]), exactly as pymalloc's `POOL_ADDR`. The header is split in two
//! cache lines: the *owner line* is touched only by the thread that owns the pool (free-threaded
//! mode) or under the lock (GIL mode), and the *shared line* holds the atomics that other
//! threads use (free-threaded mode only), so remote frees do not bounce the owner's line.
//!
//! Carving is lazy, as in pymalloc: blocks are handed out from the local LIFO free list, and
//! when it is empty from the `nextoffset` mark, which moves up one block at a time; memory past
//! the mark has never been touched. A pool that became empty and is reused for the same size
//! class keeps its free list and mark (pymalloc's `szidx` shortcut).
//!
//! Accounting equation of a pool in use, in blocks, at any moment its owner looks:
//! `ref_count + local free + (capacity - carved) == capacity`, where `carved` is
//! `(nextoffset - overhead) / size`. In free-threaded mode `ref_count` still counts blocks on
//! the remote list (they are handed back to the owner in bulk, see `thread_cache`), so
//! `blocks in use == ref_count - remote`.

use crate::base::list::Links;
use crate::base::sync::{AtomicPtr, AtomicUsize};
use crate::layout::geometry::Geometry;
use crate::layout::size_class::{class_size, is_multiple_of_class, ALIGNMENT, NUM_CLASSES};
use core::fmt;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// A free block: its first word links the free list.
#[repr(C)]
pub(crate) struct Block {
    pub(crate) next: *mut Block,
}

impl Block {
    /// The link of a free block.
    ///
    /// # Safety
    /// `b` must be a free block the caller holds (on a list it owns, or handed over to it).
    #[inline(always)]
    pub(crate) unsafe fn next(b: *const Block) -> *mut Block {
        // SAFETY: per the contract.
        unsafe { crate::base::sync::read_plain(&raw const (*b).next) }
    }

    /// Sets the link of a free block.
    ///
    /// # Safety
    /// `b` must be a block the caller holds and may write (at least 16 bytes).
    #[inline(always)]
    pub(crate) unsafe fn set_next(b: *mut Block, next: *mut Block) {
        // SAFETY: per the contract.
        unsafe { crate::base::sync::write_plain(&raw mut (*b).next, next) }
    }
}

/// `szidx` of a pool that has never been initialised for a class.
pub(crate) const NO_CLASS: u32 = u32::MAX;

/// The header at the start of every pool.
///
/// `ref_count`, `szidx` and `nextoffset` are written only by the owner (or under the lock), with
/// plain relaxed loads and stores (no read-modify-write, so the same instructions as plain
/// fields); they are atomics only so that [`Allocator::stats`](crate::Allocator::stats) and the
/// free check may read them while threads run without a data race. They are `core` atomics,
/// outside the loom facade; the owner's accesses (and those of `freeblock`, `nextpool`,
/// `prevpool` and free-block links) go through `crate::base::sync`'s plain-memory tracking, so loom
/// checks that the protocols hand them over. Every access goes through the accessors below,
/// which never make a reference to the whole header.
#[repr(C)]
pub(crate) struct PoolHeader {
    /// Blocks handed out by this pool and not yet returned to its local free list.
    pub(crate) ref_count: AtomicU32,
    /// Size class, or [`NO_CLASS`].
    pub(crate) szidx: AtomicU32,
    /// Index of the arena's descriptor.
    pub(crate) arena_index: u32,
    /// Offset of the first never-carved block.
    pub(crate) nextoffset: AtomicU32,
    /// Local LIFO free list.
    pub(crate) freeblock: *mut Block,
    /// List links: GIL mode's `usedpools` and arena free-pool lists; free-threaded mode's
    /// per-thread partial lists.
    pub(crate) nextpool: *mut PoolHeader,
    pub(crate) prevpool: *mut PoolHeader,
    /// Atomics shared with other threads (free-threaded mode).
    pub(crate) shared: PoolShared,
}

/// The shared line of a pool header. See `thread_cache` for the protocol.
#[repr(C, align(64))]
pub(crate) struct PoolShared {
    /// The owning thread cache's token, or 0 when the pool has no owner.
    pub(crate) owner: AtomicUsize,
    /// Head of the remote free list, with flag bits in the low 4 bits (blocks are 16-aligned).
    pub(crate) remote: AtomicUsize,
    /// Link in the central lists of abandoned pools.
    pub(crate) next_abandoned: AtomicPtr<PoolHeader>,
}

impl PoolHeader {
    /// Writes a fresh header for a pool that has never been carved, at `pool`: the first header
    /// of a new arena's pool, or a new header of a pool that was purged and claimed again.
    ///
    /// Initialisation is a write too: a statistics walk that loaded the pool's `inited` bit
    /// before a purge cleared it may still read the header while this runs (`central`, protocol
    /// steps 5 and 6; pins keep the arena mapped but do not stop a purge and a new claim). So
    /// every field another thread may read atomically (`szidx`, `ref_count`, `nextoffset`, the
    /// shared line's `owner`, `remote` and `next_abandoned`) is written with an atomic store,
    /// never with a plain write of the whole header or line; the reader then gets old or new
    /// values (approximate statistics), never a data race. The plain fields (`arena_index`,
    /// `freeblock`, the list links) are read only by the pool's holder.
    ///
    /// # Safety
    /// `pool` must point to at least a header's worth of writable memory owned by the caller
    /// (claimed: no other thread writes it), holding zero bytes (a fresh mapping or purged
    /// pages) or an earlier header.
    pub(crate) unsafe fn init_fresh(pool: *mut PoolHeader, arena_index: u32) {
        // SAFETY: the caller owns the memory, which holds valid atomics (zero bytes or an
        // earlier header; integers and atomics share a layout). Racy readers read only atomic
        // fields, written here with atomic stores; the rest are written field by field, with no
        // reference to the whole header.
        unsafe {
            (*pool).szidx.store(NO_CLASS, Relaxed);
            Self::set_refs(pool, 0);
            Self::set_next_offset(pool, 0);
            (&raw mut (*pool).arena_index).write(arena_index);
            Self::set_free(pool, ptr::null_mut());
            Self::set_next_pool(pool, ptr::null_mut());
            Self::set_prev_pool(pool, ptr::null_mut());
            Self::init_shared(&raw mut (*pool).shared);
        }
    }

    /// Resets the shared line of a header being (re-)initialised: every field with an atomic
    /// store (see [`init_fresh`](Self::init_fresh)).
    ///
    /// # Safety
    /// As [`init_fresh`](Self::init_fresh).
    unsafe fn init_shared(shared: *mut PoolShared) {
        // Under loom the atomics are objects of the execution: the first header at an address
        // must construct them. That constructing write is a plain write, recorded as one on the
        // shadow cells of `owner` and `remote` (whose racy readers record reads, see
        // `owner_racy`), so loom reports any reader it is not ordered with; only the pool's
        // first header (its `inited` bit never set before, so no reader) takes it.
        #[cfg(loom)]
        if !crate::base::sync::loom_built(shared as usize) {
            // SAFETY: the caller owns the memory; no loom object lives there yet.
            unsafe {
                crate::base::sync::track_plain(&raw const (*shared).owner, true);
                crate::base::sync::track_plain(&raw const (*shared).remote, true);
                shared.write(PoolShared {
                    owner: AtomicUsize::new(0),
                    remote: AtomicUsize::new(0),
                    next_abandoned: AtomicPtr::new(ptr::null_mut()),
                });
            }
            return;
        }
        // SAFETY: the caller owns the memory, which holds valid atomics; a field projection
        // each, no reference to the line. Relaxed: the claimer publishes the header with its
        // `inited` bit (release); a reader holding a stale bit needs no ordering, only no race.
        unsafe {
            (*shared).owner.store(0, Relaxed);
            (*shared).remote.store(0, Relaxed);
            (*shared).next_abandoned.store(ptr::null_mut(), Relaxed);
        }
    }

    /// The owner token of the shared line, read by any thread (statistics): approximate.
    /// Under loom the read is recorded on the field's shadow cell, so a plain write of the
    /// field (there is none but a first header's construction) racing it is reported.
    ///
    /// # Safety
    /// As [`refs_racy`](Self::refs_racy).
    #[inline(always)]
    pub(crate) unsafe fn owner_racy(pool: *const PoolHeader) -> usize {
        // SAFETY: per the contract; an atomic field, a projection (no reference to the header).
        unsafe {
            crate::base::sync::track_plain(&raw const (*pool).shared.owner, false);
            (*pool).shared.owner.load(Relaxed)
        }
    }

    /// The remote-list word of the shared line, read by any thread (statistics): approximate;
    /// recorded under loom as [`owner_racy`](Self::owner_racy) is.
    ///
    /// # Safety
    /// As [`refs_racy`](Self::refs_racy).
    #[inline(always)]
    pub(crate) unsafe fn remote_racy(pool: *const PoolHeader) -> usize {
        // SAFETY: per the contract; an atomic field, a projection (no reference to the header).
        unsafe {
            crate::base::sync::track_plain(&raw const (*pool).shared.remote, false);
            (*pool).shared.remote.load(Relaxed)
        }
    }

    /// Prepares an empty pool to serve `class`. Keeps the free list and carve mark when the
    /// pool served the same class before (pymalloc's `szidx` shortcut).
    ///
    /// # Safety
    /// `pool` must be a header written by [`init_fresh`](Self::init_fresh), with no block in use,
    /// owned by the caller.
    #[inline]
    pub(crate) unsafe fn prepare(pool: *mut PoolHeader, class: usize, geo: &Geometry) {
        // SAFETY: the caller owns the header.
        unsafe {
            debug_assert_eq!(Self::refs(pool), 0);
            if Self::class(pool) != class as u32 {
                (*pool).szidx.store(class as u32, Relaxed);
                Self::set_next_offset(pool, geo.pool_overhead as u32);
                Self::set_free(pool, ptr::null_mut());
            }
        }
    }

    /// Hands out one block, or null if the pool is full.
    ///
    /// # Safety
    /// `pool` must be a prepared pool owned by the caller (or guarded by the caller's lock).
    #[inline(always)]
    pub(crate) unsafe fn pop(pool: *mut PoolHeader, geo: &Geometry) -> *mut u8 {
        // SAFETY: the caller owns the header. Blocks on the local free list are free blocks of
        // this pool, whose first word is the link written by `push` or by a remote freer.
        unsafe {
            let b = Self::free(pool);
            if !b.is_null() {
                Self::set_free(pool, Block::next(b));
                Self::add_ref(pool, 1);
                // Handing a block out is a write of it (its user writes it next): under loom,
                // it must happen after every earlier access, the previous user's and the
                // freers' link writes (see `crate::base::sync`).
                crate::base::sync::track_plain(b, true);
                return b.cast();
            }
            let size = class_size(Self::class(pool) as usize) as u32;
            let next = Self::next_offset(pool);
            if (next + size) as usize <= geo.pool_size {
                Self::set_next_offset(pool, next + size);
                Self::add_ref(pool, 1);
                let b = (pool as usize + next as usize) as *mut u8;
                crate::base::sync::track_plain(b, true);
                return b;
            }
        }
        ptr::null_mut()
    }

    /// Returns a block to the local free list.
    ///
    /// # Safety
    /// `block` must be a block of `pool` that is in use, and `pool` must be owned by the caller
    /// (or guarded by the caller's lock).
    #[inline(always)]
    pub(crate) unsafe fn push(pool: *mut PoolHeader, block: *mut u8) {
        // SAFETY: the caller owns the header and the block, which is at least 16 bytes.
        unsafe {
            let b = block.cast::<Block>();
            Block::set_next(b, Self::free(pool));
            Self::set_free(pool, b);
            Self::sub_ref(pool, 1);
        }
    }

    // Field accessors. They take a raw pointer and touch only their field, never a reference
    // to the whole header: other threads use the shared line (and statistics read the
    // counters) while the owner writes its line, so a `&PoolHeader` or `&mut PoolHeader`
    // spanning both would be an aliasing violation. The owner's accessors go through
    // `crate::base::sync`'s plain-memory tracking, so loom checks that ownership hand-overs publish
    // them.

    /// `ref_count += n` by the owner (a load and a store, no read-modify-write).
    ///
    /// # Safety
    /// The caller owns `pool` (or holds the GIL-mode lock).
    #[inline(always)]
    pub(crate) unsafe fn add_ref(pool: *mut PoolHeader, n: u32) {
        // SAFETY: per the contract.
        unsafe { Self::set_refs(pool, Self::refs(pool) + n) }
    }

    /// `ref_count -= n` by the owner (a load and a store, no read-modify-write).
    ///
    /// # Safety
    /// As [`add_ref`](Self::add_ref).
    #[inline(always)]
    pub(crate) unsafe fn sub_ref(pool: *mut PoolHeader, n: u32) {
        // SAFETY: per the contract.
        unsafe { Self::set_refs(pool, Self::refs(pool) - n) }
    }

    /// The owner's view of `ref_count`.
    ///
    /// # Safety
    /// As [`add_ref`](Self::add_ref).
    #[inline(always)]
    pub(crate) unsafe fn refs(pool: *const PoolHeader) -> u32 {
        // SAFETY: per the contract; a field projection, no reference to the header.
        unsafe {
            crate::base::sync::track_plain(&raw const (*pool).ref_count, false);
            (*pool).ref_count.load(Relaxed)
        }
    }

    #[inline(always)]
    unsafe fn set_refs(pool: *mut PoolHeader, n: u32) {
        // SAFETY: the caller owns the pool.
        unsafe {
            crate::base::sync::track_plain(&raw const (*pool).ref_count, true);
            (*pool).ref_count.store(n, Relaxed)
        }
    }

    /// `ref_count` read by any thread (statistics, the free check): approximate while the
    /// owner runs, and not tracked by loom.
    ///
    /// # Safety
    /// `pool` must be a readable header (a claimed pool, or inside a mapped arena).
    #[inline(always)]
    pub(crate) unsafe fn refs_racy(pool: *const PoolHeader) -> u32 {
        // SAFETY: per the contract; an atomic field.
        unsafe { (*pool).ref_count.load(Relaxed) }
    }

    /// The size class (or [`NO_CLASS`]). Any thread may read it: it changes only while the
    /// pool has no live block, so a thread holding one of its blocks reads a stable value.
    ///
    /// # Safety
    /// `pool` must be a readable header.
    #[inline(always)]
    pub(crate) unsafe fn class(pool: *const PoolHeader) -> u32 {
        // SAFETY: per the contract; an atomic field.
        unsafe { (*pool).szidx.load(Relaxed) }
    }

    /// The carve mark, read by its owner.
    ///
    /// # Safety
    /// As [`add_ref`](Self::add_ref).
    #[inline(always)]
    pub(crate) unsafe fn next_offset(pool: *const PoolHeader) -> u32 {
        // SAFETY: per the contract.
        unsafe {
            crate::base::sync::track_plain(&raw const (*pool).nextoffset, false);
            (*pool).nextoffset.load(Relaxed)
        }
    }

    /// Sets the carve mark.
    ///
    /// # Safety
    /// As [`add_ref`](Self::add_ref).
    #[inline(always)]
    pub(crate) unsafe fn set_next_offset(pool: *mut PoolHeader, n: u32) {
        // SAFETY: per the contract.
        unsafe {
            crate::base::sync::track_plain(&raw const (*pool).nextoffset, true);
            (*pool).nextoffset.store(n, Relaxed)
        }
    }

    /// The carve mark read by any thread (statistics, the free check), untracked.
    ///
    /// # Safety
    /// As [`refs_racy`](Self::refs_racy).
    #[inline(always)]
    pub(crate) unsafe fn next_offset_racy(pool: *const PoolHeader) -> u32 {
        // SAFETY: per the contract; an atomic field.
        unsafe { (*pool).nextoffset.load(Relaxed) }
    }

    /// The head of the local free list.
    ///
    /// # Safety
    /// As [`add_ref`](Self::add_ref).
    #[inline(always)]
    pub(crate) unsafe fn free(pool: *const PoolHeader) -> *mut Block {
        // SAFETY: per the contract.
        unsafe { crate::base::sync::read_plain(&raw const (*pool).freeblock) }
    }

    /// Sets the head of the local free list.
    ///
    /// # Safety
    /// As [`add_ref`](Self::add_ref).
    #[inline(always)]
    pub(crate) unsafe fn set_free(pool: *mut PoolHeader, b: *mut Block) {
        // SAFETY: per the contract.
        unsafe { crate::base::sync::write_plain(&raw mut (*pool).freeblock, b) }
    }

    /// The next pool on the owner's list.
    ///
    /// # Safety
    /// As [`add_ref`](Self::add_ref).
    #[inline(always)]
    pub(crate) unsafe fn next_pool(pool: *const PoolHeader) -> *mut PoolHeader {
        // SAFETY: per the contract.
        unsafe { crate::base::sync::read_plain(&raw const (*pool).nextpool) }
    }

    /// The previous pool on the owner's list.
    ///
    /// # Safety
    /// As [`add_ref`](Self::add_ref).
    #[inline(always)]
    pub(crate) unsafe fn prev_pool(pool: *const PoolHeader) -> *mut PoolHeader {
        // SAFETY: per the contract.
        unsafe { crate::base::sync::read_plain(&raw const (*pool).prevpool) }
    }

    /// Sets the list links.
    ///
    /// # Safety
    /// As [`add_ref`](Self::add_ref).
    #[inline(always)]
    pub(crate) unsafe fn set_next_pool(pool: *mut PoolHeader, p: *mut PoolHeader) {
        // SAFETY: per the contract.
        unsafe { crate::base::sync::write_plain(&raw mut (*pool).nextpool, p) }
    }

    /// Sets the list links.
    ///
    /// # Safety
    /// As [`add_ref`](Self::add_ref).
    #[inline(always)]
    pub(crate) unsafe fn set_prev_pool(pool: *mut PoolHeader, p: *mut PoolHeader) {
        // SAFETY: per the contract.
        unsafe { crate::base::sync::write_plain(&raw mut (*pool).prevpool, p) }
    }

    /// True when neither the free list nor the carve mark can give a block.
    ///
    /// # Safety
    /// As for [`pop`](Self::pop).
    #[inline(always)]
    pub(crate) unsafe fn is_full(pool: *const PoolHeader, geo: &Geometry) -> bool {
        // SAFETY: the caller owns the header.
        unsafe {
            Self::free(pool).is_null()
                && Self::next_offset(pool) as usize + class_size(Self::class(pool) as usize)
                    > geo.pool_size
        }
    }

    /// The always-on block check: `block` is the start of a block already carved from `pool`,
    /// a pool in use. Reads only the header's atomic fields, each through its own projection,
    /// so it may run while other threads use the pool, on any address inside a mapped arena.
    /// `Ok((class, refs))` (the pool's size class and block reference count; a `refs` of 0
    /// means no block of the pool is live; the class is below `NUM_CLASSES`), or
    /// `Err((class, why))` naming the failed check.
    ///
    /// The block-start test is one subtraction, one compare against the carve mark and a
    /// multiple-of-class test without division ([`is_multiple_of_class`]).
    ///
    /// # Safety
    /// `pool` is a pool header inside a mapped arena (its memory is readable).
    #[inline(always)]
    pub(crate) unsafe fn check_block(
        pool: *const PoolHeader,
        block: usize,
        geo: &Geometry,
    ) -> Result<(u32, u32), (u32, Bad)> {
        // SAFETY: the header is readable (the contract); atomic fields only.
        let (refs, class, next) = unsafe {
            (
                Self::refs_racy(pool),
                Self::class(pool),
                Self::next_offset_racy(pool),
            )
        };
        // A header never written reads as zeros (fresh mapping): no carve mark. A class out of
        // range (NO_CLASS included) serves no blocks; checking it here also bounds the table
        // index of the multiple-of-class test below.
        if class as usize >= NUM_CLASSES || (next as usize) < geo.pool_overhead {
            return Err((class, Bad::PoolNotInUse));
        }
        let off = block.wrapping_sub(pool as usize + geo.pool_overhead);
        if off >= next as usize - geo.pool_overhead || !is_multiple_of_class(off, class as usize) {
            return Err((class, Bad::NotBlockStart));
        }
        Ok((class, refs))
    }

    /// [`check_block`](Self::check_block) for a pool the calling thread owns, which it
    /// prepared: the class is in range and the carve mark set, so only the block start and the
    /// reference count are tested. `Some((class, refs))` when `block` is the start of a carved
    /// block and a block of the pool is in use (`refs > 0`); `None` otherwise (the caller then takes the general
    /// path, whose `check_block` names the failure).
    ///
    /// # Safety
    /// `pool` is a prepared pool header owned by the calling thread's cache.
    #[inline(always)]
    pub(crate) unsafe fn check_owned_block(
        pool: *const PoolHeader,
        block: usize,
        geo: &Geometry,
    ) -> Option<(u32, u32)> {
        // SAFETY: the header is readable and ours (the contract); atomic fields only.
        let (refs, class, next) = unsafe {
            (
                Self::refs_racy(pool),
                Self::class(pool),
                Self::next_offset_racy(pool),
            )
        };
        debug_assert!((class as usize) < NUM_CLASSES && next as usize >= geo.pool_overhead);
        let off = block.wrapping_sub(pool as usize + geo.pool_overhead);
        // A prepared pool's class is below NUM_CLASSES (a power of two), so the mask changes
        // nothing; it lets the table index's bounds check fold away without a compare.
        const _: () = assert!(NUM_CLASSES.is_power_of_two());
        let start = off < next as usize - geo.pool_overhead
            && is_multiple_of_class(off, class as usize & (NUM_CLASSES - 1));
        (start && refs != 0).then_some((class, refs))
    }
}

/// Pools are linked through `nextpool` / `prevpool` (GIL mode's `usedpools`, a thread cache's
/// partial lists), read and written through the header's accessors.
impl Links for PoolHeader {
    #[inline(always)]
    unsafe fn next(pool: *const PoolHeader) -> *mut PoolHeader {
        // SAFETY: forwarded contract.
        unsafe { PoolHeader::next_pool(pool) }
    }
    #[inline(always)]
    unsafe fn prev(pool: *const PoolHeader) -> *mut PoolHeader {
        // SAFETY: forwarded contract.
        unsafe { PoolHeader::prev_pool(pool) }
    }
    #[inline(always)]
    unsafe fn set_next(pool: *mut PoolHeader, next: *mut PoolHeader) {
        // SAFETY: forwarded contract.
        unsafe { PoolHeader::set_next_pool(pool, next) }
    }
    #[inline(always)]
    unsafe fn set_prev(pool: *mut PoolHeader, prev: *mut PoolHeader) {
        // SAFETY: forwarded contract.
        unsafe { PoolHeader::set_prev_pool(pool, prev) }
    }
}

/// Why a pointer inside our arenas is refused (a byte: the fast path passes it to the cold
/// report without materialising a string).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Bad {
    /// The pool is not serving blocks (no class, no carve mark, or no live block).
    PoolNotInUse,
    /// The pointer is not the start of a carved block.
    NotBlockStart,
}

impl Bad {
    /// The reason in messages.
    fn text(self) -> &'static str {
        match self {
            Bad::PoolNotInUse => "the pool it points into is not in use",
            Bad::NotBlockStart => "not the start of a block",
        }
    }
}

/// What a pointer was handed to, for the messages that name a bad pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Free,
    Realloc,
    UsableSize,
}

impl Op {
    /// The operation's name in messages (`free`, `realloc`, `usable_size`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Free => "free",
            Op::Realloc => "realloc",
            Op::UsableSize => "usable_size",
        }
    }
}

/// Aborts on an invalid pointer handed to `op`, naming the pointer, its pool and size class
/// (allocates nothing): `ftmalloc: invalid free of 0x…: what (pool 0x…, size class N = S bytes)`.
#[cold]
#[inline(never)]
pub(crate) fn invalid_pointer(op: Op, ptr: usize, pool: usize, class: u32, why: Bad) -> ! {
    struct Msg(Op, usize, usize, u32, &'static str);
    impl fmt::Display for Msg {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "ftmalloc: invalid {} of {:#x}: {} (pool {:#x}, ",
                self.0.name(),
                self.1,
                self.4,
                self.2
            )?;
            if self.3 == NO_CLASS {
                writeln!(f, "no size class)")
            } else {
                writeln!(
                    f,
                    "size class {} = {} bytes)",
                    self.3,
                    class_size(self.3 as usize)
                )
            }
        }
    }
    crate::base::diag::die_fmt(Msg(op, ptr, pool, class, why.text()))
}

/// [`invalid_pointer`] for `free`: the call on the free path keeps four arguments, so the
/// inlined checks cost no extra register.
#[cold]
#[inline(never)]
pub(crate) fn invalid_free(ptr: usize, pool: usize, class: u32, why: Bad) -> ! {
    invalid_pointer(Op::Free, ptr, pool, class, why)
}

/// Aborts on an invalid pointer handed to `op` (see [`invalid_pointer`]); `op` is a constant
/// where this is inlined, so the match folds away.
#[inline(always)]
pub(crate) fn reject(op: Op, ptr: usize, pool: usize, class: u32, why: Bad) -> ! {
    match op {
        Op::Free => invalid_free(ptr, pool, class, why),
        _ => invalid_pointer(op, ptr, pool, class, why),
    }
}

/// Bytes at the start of every pool taken by its header, rounded up to [`ALIGNMENT`] (so every
/// block is 16-byte aligned).
pub(crate) const OVERHEAD: usize = core::mem::size_of::<PoolHeader>().next_multiple_of(ALIGNMENT);

const _: () = assert!(core::mem::size_of::<PoolHeader>().is_multiple_of(ALIGNMENT));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::config::Config;

    #[test]
    fn carving_is_lazy_lifo_and_keeps_the_free_list_on_reuse() {
        let geo = Config::PYMALLOC.geometry().unwrap();
        let mem = crate::base::os::map_aligned(geo.pool_size, geo.pool_size);
        let pool = mem.cast::<PoolHeader>();
        // SAFETY: `mem` is a fresh pool-aligned mapping we own exclusively.
        unsafe {
            PoolHeader::init_fresh(pool, 0);
            PoolHeader::prepare(pool, 3, &geo); // 64-byte blocks
            let cap = geo.blocks_per_pool(3);
            let mut blocks = Vec::new();
            loop {
                let b = PoolHeader::pop(pool, &geo);
                if b.is_null() {
                    break;
                }
                assert!(PoolHeader::check_block(pool, b as usize, &geo).is_ok());
                blocks.push(b);
            }
            assert_eq!(blocks.len(), cap);
            assert!(PoolHeader::is_full(pool, &geo));
            assert_eq!(blocks[0] as usize, mem as usize + geo.pool_overhead);
            assert_eq!(blocks[1] as usize - blocks[0] as usize, 64);
            assert_eq!(
                PoolHeader::check_block(pool, blocks[0] as usize + 8, &geo),
                Err((PoolHeader::class(pool), Bad::NotBlockStart))
            );
            assert!(PoolHeader::check_block(pool, mem as usize, &geo).is_err());
            let last = blocks.pop().unwrap();
            let prev = blocks.pop().unwrap();
            PoolHeader::push(pool, prev);
            PoolHeader::push(pool, last);
            assert_eq!(PoolHeader::pop(pool, &geo), last, "LIFO");
            PoolHeader::push(pool, last);
            for b in blocks.drain(..) {
                PoolHeader::push(pool, b);
            }
            assert_eq!(PoolHeader::refs(pool), 0);
            let mark = (*pool).nextoffset.load(Relaxed);
            let head = PoolHeader::free(pool).cast::<u8>();
            PoolHeader::prepare(pool, 3, &geo);
            assert_eq!(
                (*pool).nextoffset.load(Relaxed),
                mark,
                "same class keeps the carve mark"
            );
            assert_eq!(PoolHeader::pop(pool, &geo), head, "and the free list");
            PoolHeader::push(pool, head);
            PoolHeader::prepare(pool, 0, &geo);
            assert_eq!((*pool).nextoffset.load(Relaxed) as usize, geo.pool_overhead);
            crate::base::os::unmap(mem, geo.pool_size);
        }
    }
}
