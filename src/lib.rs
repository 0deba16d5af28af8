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
mod config;
mod gil;
mod global;
mod large;
mod os;
mod pool;
pub mod size_class;
mod stats;
mod sync;

pub use config::{Config, ConfigError, Geometry};
pub use global::FtMalloc;
pub use stats::{ArenaCounters, ClassStats, Stats};

use arena_map::ArenaMap;
use core::alloc::Layout;
use core::fmt;
use core::ptr;
use gil::GilHeap;
use pool::PoolHeader;
use size_class::{class_size, size_to_class, ALIGNMENT};

/// Which concurrency design an [`Allocator`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// pymalloc's algorithms behind one global lock.
    Gil,
}

impl Mode {
    /// The names accepted by [`Mode::from_name`] (and by `FTMALLOC_MODE`).
    pub const NAMES: &'static [&'static str] = &["gil"];

    /// The mode called `name` (`"gil"`), if any.
    pub fn from_name(name: &str) -> Option<Mode> {
        match name {
            "gil" => Some(Mode::Gil),
            _ => None,
        }
    }

    /// The short name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Gil => "gil",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

enum Front {
    Gil(GilHeap),
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
        };
        Ok(Allocator { geo, map, front })
    }

    /// The mode this heap was built with.
    pub fn mode(&self) -> Mode {
        match self.front {
            Front::Gil(_) => Mode::Gil,
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
            class_size(unsafe { (*pool).szidx } as usize)
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
    /// As [`GlobalAlloc::realloc`](core::alloc::GlobalAlloc::realloc) for this heap.
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
        }
        s
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        match &self.front {
            Front::Gil(h) => h.lock().check_invariants(),
        }
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        match &mut self.front {
            Front::Gil(h) => h.lock().release_all(&self.map),
        }
    }
}

#[cfg(test)]
mod tests;
