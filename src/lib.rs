//! # ftmalloc: a lock-free, thread-cached pymalloc
//!
//! CPython's small-object allocator, pymalloc, serves requests of at most 512 bytes from blocks
//! of 32 size classes, carved from 16 KiB pools, carved from 1 MiB arenas, all guarded by the
//! GIL. ftmalloc keeps that layout and offers two concurrency designs over it, chosen per
//! instance with [`Mode`]:
//!
//! - [`Mode::Gil`]: pymalloc's own algorithms behind one global lock (the baseline);
//! - [`Mode::FreeThreaded`]: per-thread caches that own pools, atomic remote-free lists, and a
//!   lock-free central arena list; no lock on any path.
//!
//! ```
//! use ftmalloc::{Allocator, Mode};
//! use std::alloc::Layout;
//!
//! let a = Allocator::new(Mode::Gil);
//! let layout = Layout::from_size_align(40, 8).unwrap();
//! unsafe {
//!     let p = a.alloc(layout);
//!     assert!(!p.is_null() && a.owns(p));
//!     assert_eq!(a.usable_size(p), 48);
//!     a.dealloc(p, layout);
//! }
//! assert_eq!(a.stats().blocks_in_use(), 0);
//! ```
//!
//! As the global allocator (mode from `FTMALLOC_MODE`, see [`FtMalloc`]):
//!
//! ```no_run
//! #[global_allocator]
//! static A: ftmalloc::FtMalloc = ftmalloc::FtMalloc;
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod arena_map;
mod central;
mod config;
mod ft;
mod gil;
mod global;
mod large;
mod os;
mod pool;
pub mod size_class;
mod stats;
mod sync;
mod thread_cache;

pub use config::{Config, ConfigError, Geometry};
pub use global::{FtMalloc, DEFAULT_MODE};
pub use large::use_glibc_internal_allocator;
pub use stats::{ArenaCounters, ClassStats, Stats};

use arena_map::ArenaMap;
use core::alloc::Layout;
use core::fmt;
use core::ptr;
use ft::FtHeap;
use gil::GilHeap;
use pool::PoolHeader;
use size_class::{class_size, size_to_class, ALIGNMENT};
use thread_cache::Cache;
#[cfg(not(loom))]
use thread_cache::Ctx;

/// Which concurrency design an [`Allocator`] uses.
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

// The variants are large and unequal, but an Allocator is built once and lives long; boxing
// the larger one would allocate, which the global allocator cannot do while it starts.
#[allow(clippy::large_enum_variant)]
enum Front {
    Gil(GilHeap),
    Ft(FtHeap),
}

/// An independent ftmalloc heap. Two instances share nothing.
///
/// Small requests (1..=512 bytes, alignment <= 16) are served from its pools; everything else,
/// and every pointer its arena map does not know, goes to the C library's allocator.
pub struct Allocator {
    geo: Geometry,
    map: ArenaMap,
    front: Front,
}

impl fmt::Debug for Allocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocator")
            .field("mode", &self.mode())
            .field("geometry", &self.geo)
            .finish()
    }
}

#[cold]
fn out_of_address_space() -> ! {
    global::die(b"ftmalloc: cannot map the allocator's tables (mmap failed)\n")
}

impl Allocator {
    /// A new heap with pymalloc's geometry. Aborts if the OS refuses the few pages of tables
    /// the heap maps up front.
    pub fn new(mode: Mode) -> Allocator {
        match Allocator::with_config(mode, Config::PYMALLOC) {
            Ok(a) => a,
            Err(_) => out_of_address_space(),
        }
    }

    /// A new heap with another geometry (tests and models use tiny pools and arenas).
    pub fn with_config(mode: Mode, config: Config) -> Result<Allocator, ConfigError> {
        let geo = config.geometry()?;
        let map = ArenaMap::new(geo.arena_shift).unwrap_or_else(|| out_of_address_space());
        let front = match mode {
            Mode::Gil => Front::Gil(GilHeap::new(geo).unwrap_or_else(|| out_of_address_space())),
            Mode::FreeThreaded => {
                Front::Ft(FtHeap::new(geo).unwrap_or_else(|| out_of_address_space()))
            }
        };
        Ok(Allocator { geo, map, front })
    }

    /// The mode this heap was built with.
    pub fn mode(&self) -> Mode {
        match self.front {
            Front::Gil(_) => Mode::Gil,
            Front::Ft(_) => Mode::FreeThreaded,
        }
    }

    /// The geometry this heap was built with.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// True when `ptr` lies inside one of this heap's arenas. Safe for any address.
    #[inline]
    pub fn owns(&self, ptr: *const u8) -> bool {
        self.map.lookup(ptr as usize).is_some()
    }

    #[inline(always)]
    fn is_small(&self, layout: Layout) -> bool {
        layout.size().wrapping_sub(1) < self.geo.small_limit && layout.align() <= ALIGNMENT
    }

    /// Allocates a block for `layout`; null when memory is exhausted.
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`](core::alloc::GlobalAlloc::alloc), except that a zero size is
    /// allowed (it is served by the allocator underneath).
    #[inline]
    pub unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.is_small(layout) {
            let class = size_to_class(layout.size());
            match &self.front {
                Front::Gil(h) => h.lock().alloc(class, &self.map),
                Front::Ft(h) => {
                    let cx = h.ctx(&self.geo, &self.map);
                    let c = h.local_cache();
                    if c.is_null() {
                        h.alloc_cacheless(class, &cx)
                    } else {
                        // SAFETY: the bound cache is used by this thread only.
                        unsafe { (*c).alloc(class, &cx) }
                    }
                }
            }
        } else {
            large::alloc(layout.size(), layout.align())
        }
    }

    /// Allocates a zeroed block for `layout`; null when memory is exhausted.
    ///
    /// # Safety
    /// As [`alloc`](Self::alloc).
    #[inline]
    pub unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.is_small(layout) {
            // SAFETY: forwarded contract.
            let p = unsafe { self.alloc(layout) };
            if !p.is_null() {
                // SAFETY: p is a fresh block of at least layout.size() bytes.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
            }
            p
        } else {
            large::alloc_zeroed(layout.size(), layout.align())
        }
    }

    /// Frees `ptr`, routed by the arena map: blocks of our pools go back to their pool, any
    /// other pointer to the allocator underneath.
    ///
    /// # Safety
    /// `ptr` must be live and come from this heap's `alloc` family (or, for a pointer outside our
    /// arenas, from the C library's allocator).
    #[inline]
    pub unsafe fn free(&self, ptr: *mut u8) {
        if self.map.lookup(ptr as usize).is_some() {
            let pool = self.geo.pool_of(ptr as usize) as *mut PoolHeader;
            // SAFETY: the pool header of an address inside our arenas is initialised when the
            // address is a live block, which the contract promises.
            debug_assert!(unsafe { PoolHeader::is_block_start(pool, ptr as usize, &self.geo) });
            match &self.front {
                // SAFETY: the map says ptr is in one of our arenas; by contract it is a live block.
                Front::Gil(h) => unsafe { h.lock().free(pool, ptr, &self.map) },
                // SAFETY: as above.
                Front::Ft(h) => unsafe { h.free(pool, ptr, &h.ctx(&self.geo, &self.map)) },
            }
        } else if !ptr.is_null() {
            // SAFETY: not ours, so by contract it belongs to the allocator underneath.
            unsafe { large::free(ptr) }
        }
    }

    /// Frees a block allocated with `layout` (routed by the arena map, as [`free`](Self::free)).
    ///
    /// # Safety
    /// As [`GlobalAlloc::dealloc`](core::alloc::GlobalAlloc::dealloc) for this heap.
    #[inline]
    pub unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.free(ptr) }
    }

    /// Bytes usable at `ptr`: the block size for our blocks, the C library's figure otherwise.
    ///
    /// # Safety
    /// `ptr` must be live and come from this heap (or the C library's allocator).
    pub unsafe fn usable_size(&self, ptr: *const u8) -> usize {
        if self.map.lookup(ptr as usize).is_some() {
            let pool = self.geo.pool_of(ptr as usize) as *const PoolHeader;
            // SAFETY: ptr is a live block of ours, so its pool header is initialised and its
            // class does not change while the block is live.
            class_size(unsafe { (*pool).class() } as usize)
        } else if ptr.is_null() {
            0
        } else {
            // SAFETY: by contract a live pointer of the allocator underneath.
            unsafe { large::usable_size(ptr) }
        }
    }

    /// Resizes `ptr` to `new_size` bytes, following pymalloc: a block of ours stays in place
    /// while the new size fits it and is above 3/4 of it; otherwise a new block is allocated,
    /// the contents copied and the old block freed. Foreign pointers stay with the allocator
    /// underneath. Returns null (leaving `ptr` untouched) when memory is exhausted.
    ///
    /// # Safety
    /// As [`GlobalAlloc::realloc`](core::alloc::GlobalAlloc::realloc) for this heap; in
    /// particular `new_size` must not be zero (the C ABI's `realloc(p, 0)` frees instead).
    pub unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size rounded to align does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if self.map.lookup(ptr as usize).is_some() {
            // SAFETY: ptr is a live block of ours.
            let size = unsafe { self.usable_size(ptr) };
            if new_size <= size && 4 * new_size > 3 * size {
                return ptr;
            }
            // SAFETY: forwarded contract; the copy stays inside both blocks.
            unsafe { self.move_to(ptr, new_layout, size.min(new_size)) }
        } else if layout.align() <= ALIGNMENT {
            // SAFETY: a live pointer of the allocator underneath, alignment it honours.
            unsafe { large::realloc(ptr, new_size) }
        } else {
            // Over-aligned foreign block: stays underneath, moved by hand.
            let new = large::alloc(new_size, layout.align());
            if !new.is_null() {
                // SAFETY: both regions hold at least the copied bytes; ptr is live and foreign.
                unsafe {
                    ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    large::free(ptr);
                }
            }
            new
        }
    }

    /// Allocates for `layout`, copies `copy` bytes from `ptr`, frees `ptr`.
    ///
    /// # Safety
    /// `ptr` live, `copy` bytes readable at it and at most `layout.size()`.
    unsafe fn move_to(&self, ptr: *mut u8, layout: Layout, copy: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let new = unsafe { self.alloc(layout) };
        if !new.is_null() {
            // SAFETY: both regions hold at least `copy` bytes and are distinct blocks.
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, copy);
                self.free(ptr);
            }
        }
        new
    }

    /// A snapshot of the heap. In GIL mode it is taken under the lock, without allocating.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::empty(self.mode(), &self.geo);
        match &self.front {
            Front::Gil(h) => h.lock().fill_stats(&mut s),
            Front::Ft(h) => h.fill_stats(&mut s, &self.geo),
        }
        s
    }

    /// Gives memory back: in free-threaded mode, every pool left without an owner (by exited
    /// threads or dropped handles) whose blocks have all been freed since returns to its arena,
    /// and arenas whose pools are all free are unmapped (one is kept). GIL mode returns pools
    /// and arenas eagerly, so there it does nothing. Returns the number of pools returned.
    /// Lock-free; safe to call at any time from any thread.
    pub fn trim(&self) -> usize {
        match &self.front {
            Front::Gil(_) => 0,
            Front::Ft(h) => h.trim(&h.ctx(&self.geo, &self.map)),
        }
    }

    /// An explicit thread cache: a handle that owns pools of this heap, for one thread at a
    /// time (tests, loom models, benchmarks). Dropping it abandons its pools to the heap, as a
    /// thread exit does. In GIL mode the handle simply forwards to the locked heap.
    ///
    /// Returns `None` when the heap's cache table is full.
    pub fn thread_cache(&self) -> Option<ThreadCache<'_>> {
        let cache = match &self.front {
            Front::Gil(_) => ptr::null_mut(),
            Front::Ft(h) => {
                let c = h.acquire_cache();
                if c.is_null() {
                    return None;
                }
                c
            }
        };
        Some(ThreadCache { heap: self, cache })
    }

    /// Runs `f` with the free-threaded heap, if this is one.
    #[cfg(not(loom))]
    fn with_ft(&self, f: impl FnOnce(&FtHeap, &Ctx<'_>)) {
        if let Front::Ft(h) = &self.front {
            f(h, &h.ctx(&self.geo, &self.map));
        }
    }

    /// The GIL-mode lock, for `fork`: None in free-threaded mode.
    fn fork_lock(&'static self) -> Option<std::sync::MutexGuard<'static, gil::GilCore>> {
        match &self.front {
            Front::Gil(h) => Some(h.lock()),
            Front::Ft(_) => None,
        }
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        match &self.front {
            Front::Gil(h) => h.lock().check_invariants(),
            Front::Ft(_) => {
                let s = self.stats();
                assert_eq!(s.total(), s.mapped_bytes());
            }
        }
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        match &mut self.front {
            Front::Gil(h) => h.lock().release_all(&self.map),
            Front::Ft(h) => h.release_all(&self.map),
        }
    }
}

/// An explicit thread cache of an [`Allocator`] (see [`Allocator::thread_cache`]).
///
/// It may move between threads but is used by one at a time (`&mut self`). Blocks it allocates
/// may be freed anywhere (through the heap, another handle, or this one); blocks of other
/// caches freed through it are remote frees.
pub struct ThreadCache<'a> {
    heap: &'a Allocator,
    /// Null in GIL mode.
    cache: *mut Cache,
}

// SAFETY: the cache slot is used only through &mut self, so by one thread at a time; pools it
// owns are touched by other threads only through their atomics.
unsafe impl Send for ThreadCache<'_> {}

impl fmt::Debug for ThreadCache<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadCache")
            .field("mode", &self.heap.mode())
            .finish()
    }
}

impl ThreadCache<'_> {
    /// The heap this cache belongs to.
    pub fn heap(&self) -> &Allocator {
        self.heap
    }

    /// Allocates for `layout` from this cache; null when memory is exhausted.
    ///
    /// # Safety
    /// As [`Allocator::alloc`].
    #[inline]
    pub unsafe fn alloc(&mut self, layout: Layout) -> *mut u8 {
        let h = self.heap;
        if h.is_small(layout) {
            if let Front::Ft(ft) = &h.front {
                // SAFETY: the slot is ours (acquired in thread_cache, used through &mut self).
                return unsafe {
                    (*self.cache).alloc(size_to_class(layout.size()), &ft.ctx(&h.geo, &h.map))
                };
            }
        }
        // SAFETY: forwarded contract.
        unsafe { h.alloc(layout) }
    }

    /// Frees `ptr` (any block of the heap, or a foreign pointer, as [`Allocator::free`]).
    ///
    /// # Safety
    /// As [`Allocator::free`].
    #[inline]
    pub unsafe fn free(&mut self, ptr: *mut u8) {
        let h = self.heap;
        if let Front::Ft(ft) = &h.front {
            if h.map.lookup(ptr as usize).is_some() {
                let pool = h.geo.pool_of(ptr as usize) as *mut PoolHeader;
                let cx = ft.ctx(&h.geo, &h.map);
                // SAFETY: ptr is a live block of ours (contract), so its pool is claimed; the
                // slot is ours.
                unsafe {
                    if (*self.cache).owns(pool) {
                        (*self.cache).free_local(pool, ptr, &cx);
                    } else {
                        thread_cache::remote_free(pool, ptr, self.cache, &cx);
                    }
                }
                return;
            }
        }
        // SAFETY: forwarded contract.
        unsafe { h.free(ptr) }
    }

    /// Frees a block allocated with `layout` (as [`free`](Self::free)).
    ///
    /// # Safety
    /// As [`Allocator::dealloc`].
    #[inline]
    pub unsafe fn dealloc(&mut self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.free(ptr) }
    }

    /// Pools this cache owns now (0 in GIL mode).
    pub fn pools(&self) -> usize {
        if self.cache.is_null() {
            0
        } else {
            // SAFETY: the slot is ours.
            unsafe { (*self.cache).pool_count() }
        }
    }
}

impl Drop for ThreadCache<'_> {
    fn drop(&mut self) {
        if let Front::Ft(ft) = &self.heap.front {
            // SAFETY: the slot is ours and dies with the handle.
            unsafe { ft.release_cache(self.cache, &ft.ctx(&self.heap.geo, &self.heap.map)) };
        }
    }
}

#[cfg(test)]
mod tests;
