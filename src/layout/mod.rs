//! The layout both modes share, knowing no front-end: size classes, the geometry every derived
//! number comes from, the pool header and its block check, the arena map, the allocator
//! underneath, the debug block format and the statistics snapshot.
//!
//! It also holds the seam between the facade and the two front-ends: [`Mode`], the [`Arenas`] a
//! heap's front-end works in, and the [`Front`] trait that `gil::GilHeap` and `ft::FtHeap`
//! implement in their own folders. The facade (`heap`) dispatches over it in one place, and a
//! heap can be monomorphised over it.

pub(crate) mod arena_map;
pub(crate) mod config;
pub(crate) mod debug;
pub(crate) mod geometry;
pub(crate) mod large;
pub(crate) mod pool;
pub mod size_class;
pub(crate) mod stats;

use arena_map::ArenaMap;
use config::Config;
use core::fmt;
use geometry::Geometry;
use pool::PoolHeader;
use stats::Stats;

/// Which concurrency design an [`Allocator`](crate::Allocator) uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// pymalloc's algorithms behind one global lock.
    Gil,
    /// Thread caches over a lock-free central arena list; no lock on any path.
    FreeThreaded,
}

impl Mode {
    /// The names accepted by [`Mode::from_name`] (and by `FTMALLOC_MODE`).
    pub const NAMES: &'static [&'static str] = &["ft", "gil"];

    /// The mode called `name` (`"ft"` or `"gil"`), if any.
    pub fn from_name(name: &str) -> Option<Mode> {
        match name {
            "gil" => Some(Mode::Gil),
            "ft" => Some(Mode::FreeThreaded),
            _ => None,
        }
    }

    /// The short name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Gil => "gil",
            Mode::FreeThreaded => "ft",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a heap's front-end allocates in: its geometry and the map of its mapped arenas. Owned
/// by the facade's heap, lent to every front-end call.
pub(crate) struct Arenas {
    /// The validated sizes.
    pub(crate) geo: Geometry,
    /// Which arenas are mapped (and so which pointers are this heap's).
    pub(crate) map: ArenaMap,
}

/// A concurrency design over the shared layout: what the facade needs from a front-end.
///
/// Blocks reach a front-end already classified (a size class for `alloc`) or already checked
/// (a live block of a pool in use for `free`): the facade owns the request routing, the
/// always-on pointer checks and debug mode, the same for both designs.
///
/// `Local` is the state a thread keeps in the front-end: the free-threaded mode's thread cache
/// (a raw slot pointer; `NO_LOCAL` is null and means "the calling thread's own"), nothing in GIL
/// mode. Explicit handles ([`ThreadCache`](crate::ThreadCache)) pass theirs; the global paths
/// pass `NO_LOCAL`.
pub(crate) trait Front: Sized {
    /// The mode this front-end implements.
    const MODE: Mode;
    /// A thread's own state in this front-end.
    type Local: Copy;
    /// "No handle": the calling thread's own state, found by the front-end.
    const NO_LOCAL: Self::Local;

    /// A new, empty front-end over arenas of `geo`; `None` when its tables cannot be mapped.
    fn build(geo: Geometry, config: &Config) -> Option<Self>;

    /// A block of size class `class`, or null when memory is exhausted.
    ///
    /// # Safety
    /// `local` is `NO_LOCAL` or a handle's state held by the calling thread.
    unsafe fn alloc(&self, class: usize, local: Self::Local, arenas: &Arenas) -> *mut u8;

    /// Frees `block`, a live block of `pool`.
    ///
    /// # Safety
    /// `block` is a live block of `pool` (checked by the facade); `local` as for `alloc`.
    unsafe fn free(
        &self,
        pool: *mut PoolHeader,
        block: *mut u8,
        local: Self::Local,
        arenas: &Arenas,
    );

    /// The process-wide heap's fast path of `alloc` for the calling thread: a block of `class`,
    /// or null when it misses (nothing done; the caller then takes `alloc`). `geo` is the
    /// heap's geometry (a constant where the caller knows it). Only for a front marked by
    /// `set_process_heap`. The free-threaded front's calls nothing, so the code it is inlined
    /// into (`malloc`) needs no saved registers; GIL mode's takes the lock only if it is free at
    /// once and then makes the whole allocation (it is inlined into the general path's entry).
    #[inline(always)]
    fn alloc_fast(&self, _class: usize, _geo: &Geometry, _arenas: &Arenas) -> *mut u8 {
        core::ptr::null_mut()
    }

    /// The process-wide heap's fast path of `free` for `block`, an address inside a mapped
    /// arena of this heap, whose pool header is `pool`: true when done, false when it misses
    /// (nothing done; the caller then takes the general path, which makes every check and
    /// reports a failed one). The front makes the always-on block check itself
    /// ([`PoolHeader::check_owned_block`]), after any test that lets it check less. Only for
    /// a front marked by `set_process_heap`; `geo` as for `alloc_fast`.
    ///
    /// # Safety
    /// As `free` for the pointer (live, or invalid: then it must miss); `pool` is the pool
    /// header of `block` in a mapped arena of this heap.
    #[inline(always)]
    unsafe fn free_fast(
        &self,
        _pool: *mut PoolHeader,
        _block: *mut u8,
        _geo: &Geometry,
        _arenas: &Arenas,
    ) -> bool {
        false
    }

    /// Any heap's fast path of `free` (debug mode off): as `free_fast`, for the caller's `local`
    /// (`NO_LOCAL`: the calling thread's own state) and the heap's geometry `geo`. True when
    /// done; false when it misses (nothing done; the caller takes the general path).
    ///
    /// # Safety
    /// As `free_fast`; `local` as for `free`.
    #[inline(always)]
    unsafe fn free_owned(
        &self,
        _pool: *mut PoolHeader,
        _block: *mut u8,
        _geo: &Geometry,
        _local: Self::Local,
        _arenas: &Arenas,
    ) -> bool {
        false
    }

    /// Fills the per-class rows and counters of `stats`.
    fn fill_stats(&self, stats: &mut Stats, arenas: &Arenas);

    /// Gives memory back now (see `Allocator::trim`); the number of pools returned to arenas.
    fn trim(&self, arenas: &Arenas) -> usize;

    /// A new handle's state; `None` when the front-end has no room for one.
    fn new_local(&self) -> Option<Self::Local>;

    /// Publishes what a handle holds back (batched remote frees).
    ///
    /// # Safety
    /// `local` came from `new_local`, is held by the caller and not yet dropped.
    unsafe fn flush_local(&self, local: Self::Local, arenas: &Arenas);

    /// As `trim`, with `local` as the caller's state.
    ///
    /// # Safety
    /// As `flush_local`.
    unsafe fn trim_local(&self, local: Self::Local, arenas: &Arenas) -> usize;

    /// Pools a handle owns.
    ///
    /// # Safety
    /// As `flush_local`.
    unsafe fn local_pools(&self, local: Self::Local) -> usize;

    /// Gives up a handle's state (its pools are abandoned to the heap).
    ///
    /// # Safety
    /// As `flush_local`; `local` is not used afterwards.
    unsafe fn drop_local(&self, local: Self::Local, arenas: &Arenas);

    /// Marks this front-end as the process-wide heap's (before any thread uses it).
    fn set_process_heap(&mut self);

    /// `pthread_atfork` prepare handler of a heap (every live heap's, walked by `heaps`).
    fn fork_prepare(&self, arenas: &Arenas);
    /// `pthread_atfork` parent handler.
    fn fork_parent(&self, arenas: &Arenas);
    /// `pthread_atfork` child handler.
    fn fork_child(&self, arenas: &Arenas);

    /// Thread `tid` of the process-wide heap is exiting (free-threaded thread-exit hook).
    #[cfg_attr(loom, allow(dead_code))]
    fn thread_exit(&self, tid: usize, arenas: &Arenas);

    /// Unmaps everything (the heap is being dropped).
    fn release_all(&mut self, arenas: &Arenas);

    /// Asserts the front-end's internal invariants (tests).
    #[cfg(test)]
    fn check_invariants(&self, arenas: &Arenas);
}
