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
mod asan;
mod central;
mod config;
mod debug;
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
#[cfg(loom)]
#[doc(hidden)]
pub use sync::loom_shadow_reset;

use arena_map::ArenaMap;
use core::alloc::Layout;
use core::fmt;
use core::ptr;
use ft::FtHeap;
use gil::GilHeap;
use pool::PoolHeader;
use size_class::{class_size, size_to_class, ALIGNMENT};
use thread_cache::Cache;
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
    /// Debug mode (see the `debug` module).
    debug: bool,
}

impl fmt::Debug for Allocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocator")
            .field("mode", &self.mode())
            .field("geometry", &self.geo)
            .finish()
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
fn invalid_pointer(op: Op, ptr: usize, pool: usize, class: u32, what: &'static str) -> ! {
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
            if self.3 == pool::NO_CLASS {
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
    global::die_fmt(Msg(op, ptr, pool, class, what))
}

/// [`invalid_pointer`] for `free`: the call on the free path keeps four arguments, so the
/// inlined checks cost no extra register.
#[cold]
#[inline(never)]
fn invalid_free(ptr: usize, pool: usize, class: u32, what: &'static str) -> ! {
    invalid_pointer(Op::Free, ptr, pool, class, what)
}

/// Aborts on an invalid pointer handed to `op` (see [`invalid_pointer`]); `op` is a constant
/// where this is inlined, so the match folds away.
#[inline(always)]
fn reject(op: Op, ptr: usize, pool: usize, class: u32, what: &'static str) -> ! {
    match op {
        Op::Free => invalid_free(ptr, pool, class, what),
        _ => invalid_pointer(op, ptr, pool, class, what),
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
            Mode::FreeThreaded => Front::Ft(
                FtHeap::new(geo, config.decay_ms).unwrap_or_else(|| out_of_address_space()),
            ),
        };
        Ok(Allocator {
            geo,
            map,
            front,
            debug: config.debug,
        })
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

    /// A block of `class` from the calling thread's cache (`cache`, or the thread's own cache
    /// of this heap when null) or, in GIL mode, from the locked heap.
    #[inline(always)]
    fn small_alloc(&self, class: usize, cache: *mut Cache) -> *mut u8 {
        let p = self.small_alloc_raw(class, cache);
        if cfg!(feature = "asan") && !self.debug && !p.is_null() {
            asan::unpoison(p, class_size(class));
        }
        p
    }

    #[inline(always)]
    fn small_alloc_raw(&self, class: usize, cache: *mut Cache) -> *mut u8 {
        match &self.front {
            Front::Gil(h) => match h.lock(&self.map) {
                Some(mut g) => g.alloc(class, &self.map),
                // A fork holds the lock (gil.rs, fork protocol step 2): the allocator
                // underneath serves the request, and a free finds it foreign.
                None => large::alloc(class_size(class), ALIGNMENT),
            },
            Front::Ft(h) => {
                let cx = h.ctx(&self.geo, &self.map);
                let c = if cache.is_null() {
                    h.local_cache()
                } else {
                    cache
                };
                if c.is_null() {
                    h.alloc_cacheless(class, &cx)
                } else {
                    // SAFETY: a bound cache or a handle's cache is used by this thread only.
                    unsafe { (*c).alloc(class, &cx) }
                }
            }
        }
    }

    /// Frees a checked block of ours (see [`checked_block`](Self::checked_block)).
    ///
    /// # Safety
    /// `block` must be a live block of `pool`; `cache` null or the caller's own cache.
    #[inline(always)]
    unsafe fn small_free(&self, pool: *mut PoolHeader, block: *mut u8, cache: *mut Cache) {
        if cfg!(feature = "asan") && !self.debug {
            // SAFETY: a checked block of `pool`, whose header is readable (atomic field).
            let size = class_size(unsafe { PoolHeader::class(pool) } as usize);
            asan::poison_freed(block, size);
        }
        match &self.front {
            // SAFETY: per the contract.
            Front::Gil(h) => match h.lock(&self.map) {
                // SAFETY: per the contract.
                Some(mut g) => unsafe { g.free(pool, block, &self.map) },
                // SAFETY: per the contract (a fork holds the lock: gil.rs, fork protocol).
                None => unsafe { h.free_deferred(block, &self.map) },
            },
            Front::Ft(h) => {
                let cx = h.ctx(&self.geo, &self.map);
                let c = if cache.is_null() {
                    h.bound_cache()
                } else {
                    cache
                };
                // SAFETY: per the contract; a non-null cache is the caller's own.
                unsafe {
                    if !c.is_null() && (*c).owns(pool) {
                        (*c).free_local(pool, block, &cx);
                    } else {
                        Self::ft_free_remote(h, pool, block, c, &cx);
                    }
                }
            }
        }
    }

    /// A free into a pool the calling thread does not own: batched in the thread's cache
    /// (binding the thread to one if it has none yet), or published at once without one.
    ///
    /// # Safety
    /// As [`small_free`](Self::small_free).
    #[inline(never)]
    unsafe fn ft_free_remote(
        h: &FtHeap,
        pool: *mut PoolHeader,
        block: *mut u8,
        cache: *mut Cache,
        cx: &Ctx<'_>,
    ) {
        let c = if cache.is_null() {
            h.cache_for_remote_free()
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

    /// For a pointer inside our arenas: its pool and block, after the checks that are always on
    /// (the pool is in use, the pointer is a carved block start) and, in debug mode, the debug
    /// checks. Aborts with a message naming the pointer on failure. `None` for other pointers.
    ///
    /// # Safety
    /// `ptr` must be live, from this heap or the allocator underneath (the checks catch many
    /// violations of this for pointers inside our arenas, but not all).
    #[inline(always)]
    unsafe fn checked_block(&self, ptr: *mut u8) -> Option<(*mut PoolHeader, *mut u8)> {
        self.map.lookup(ptr as usize)?;
        // SAFETY: the map knows ptr.
        let (pool, block, class, refs) = unsafe { self.locate(ptr, Op::Free) };
        if self.debug {
            // SAFETY: `locate` checked that `block` is a carved block start of a pool that
            // served `class`, inside the arena the map vouches for. (Checked before `refs`, so
            // a double free is named as such.)
            unsafe { debug::on_free(block, class_size(class as usize), pool as usize) };
        }
        if refs == 0 {
            invalid_free(
                ptr as usize,
                pool as usize,
                class,
                "the pool it points into is not in use",
            );
        }
        Some((pool, block))
    }

    /// The pool, block start, size class and pool reference count of `ptr`, a pointer the arena
    /// map knows, after the checks that read nothing but the pool header: the pool has a size
    /// class and a carve mark, and the block start (`ptr`, or in debug mode the debug header
    /// before it) is a carved block of that class. Aborts with a message naming the pointer and
    /// `op` otherwise. Reads no block memory, so any pointer inside our arenas will do.
    ///
    /// # Safety
    /// The arena map knows `ptr` (its arena is mapped).
    #[inline(always)]
    unsafe fn locate(&self, ptr: *mut u8, op: Op) -> (*mut PoolHeader, *mut u8, u32, u32) {
        let user = ptr as usize;
        // The pool is the one holding `ptr` itself, which the map vouches for. In debug mode the
        // block starts `debug::HEADER` bytes before it, possibly in the previous pool or outside
        // the arena (a pointer to a pool's start); a real debug block lies in the same pool as
        // its user pointer (blocks are at least `debug::OVERHEAD` bytes), and the offset check
        // below rejects a block start before the pool's first block.
        let pool = self.geo.pool_of(user) as *mut PoolHeader;
        let block = if self.debug {
            debug::inner_of(ptr)
        } else {
            ptr
        };
        // SAFETY: the arena is mapped (the map knows `ptr`, the contract, and `ptr` lies in this
        // pool), so its pool headers are readable; only atomic fields are read, each through its
        // own projection.
        let (refs, class, next) = unsafe {
            (
                PoolHeader::refs_racy(pool),
                PoolHeader::class(pool),
                PoolHeader::next_offset_racy(pool),
            )
        };
        // A header never written reads as zeros (fresh mapping): no carve mark.
        if class == pool::NO_CLASS || (next as usize) < self.geo.pool_overhead {
            reject(
                op,
                user,
                pool as usize,
                class,
                "the pool it points into is not in use",
            );
        }
        let off = (block as usize).wrapping_sub(pool as usize + self.geo.pool_overhead);
        if off >= next as usize - self.geo.pool_overhead
            || !size_class::is_multiple_of_class(off, class as usize)
        {
            reject(op, user, pool as usize, class, "not the start of a block");
        }
        (pool, block, class, refs)
    }

    /// Debug mode: the requested size of `ptr`, a pointer the arena map knows, handed to `op`
    /// (`realloc` or `usable_size`), after the checks `free` makes (block start, pool in use,
    /// header, guards), without freeing it. Aborts with a message naming the pointer otherwise.
    ///
    /// # Safety
    /// As [`checked_block`](Self::checked_block); the map knows `ptr`.
    #[cold]
    #[inline(never)]
    unsafe fn debug_requested(&self, ptr: *mut u8, op: Op) -> usize {
        // SAFETY: the map knows ptr (the contract).
        let (pool, block, class, refs) = unsafe { self.locate(ptr, op) };
        // SAFETY: `locate` checked that `block` is a carved block start of a pool that served
        // `class`, inside the arena the map vouches for.
        let n = unsafe { debug::check_live(block, class_size(class as usize), pool as usize, op) };
        if refs == 0 {
            invalid_pointer(
                op,
                ptr as usize,
                pool as usize,
                class,
                "the pool it points into is not in use",
            );
        }
        n
    }

    /// Allocates a block for `layout`; null when memory is exhausted.
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`](core::alloc::GlobalAlloc::alloc), except that a zero size is
    /// allowed (it is served by the allocator underneath; in debug mode by a pool block for 1
    /// byte).
    #[inline]
    pub unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.alloc_with(layout, ptr::null_mut()) }
    }

    /// # Safety
    /// As [`alloc`](Self::alloc); `cache` null or the caller's own cache.
    #[inline(always)]
    unsafe fn alloc_with(&self, layout: Layout, cache: *mut Cache) -> *mut u8 {
        if self.debug {
            // SAFETY: forwarded contract.
            return unsafe { self.debug_alloc(layout, cache, false) };
        }
        if self.is_small(layout) {
            self.small_alloc(size_to_class(layout.size()), cache)
        } else {
            large::alloc(layout.size(), layout.align())
        }
    }

    /// Debug mode's allocation: a pool block with the debug header and guards (a zero-size
    /// request is served as 1 byte, so its usable size is not 0), or, for requests that do not
    /// fit a pool block with the overhead, the allocator underneath unchanged. `zeroed`: the
    /// user's bytes are zero (not the 0xCD fill), and a request underneath gets the C library's
    /// zeroed memory (`calloc`: fresh pages for a large request, none of them touched).
    ///
    /// # Safety
    /// As [`alloc_with`](Self::alloc_with).
    #[cold]
    #[inline(never)]
    unsafe fn debug_alloc(&self, layout: Layout, cache: *mut Cache, zeroed: bool) -> *mut u8 {
        let n = layout.size().max(1);
        if layout.align() > ALIGNMENT || n + debug::OVERHEAD > self.geo.small_limit {
            return if zeroed {
                large::alloc_zeroed(layout.size(), layout.align())
            } else {
                large::alloc(layout.size(), layout.align())
            };
        }
        let class = size_to_class(n + debug::OVERHEAD);
        let inner = self.small_alloc(class, cache);
        if inner.is_null() {
            return inner;
        }
        let pool = self.geo.pool_of(inner as usize);
        // SAFETY: a fresh block of class_size(class) >= n + OVERHEAD bytes.
        unsafe { debug::on_alloc(inner, class_size(class), pool, n, zeroed) }
    }

    /// Allocates a zeroed block for `layout`; null when memory is exhausted.
    ///
    /// # Safety
    /// As [`alloc`](Self::alloc).
    #[inline]
    pub unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.debug {
            // SAFETY: forwarded contract.
            return unsafe { self.debug_alloc(layout, ptr::null_mut(), true) };
        }
        if self.is_small(layout) {
            let p = self.small_alloc(size_to_class(layout.size()), ptr::null_mut());
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
    /// other pointer to the allocator underneath. A pointer inside our arenas that is not a
    /// block start, or points into a pool not in use, aborts the process with a message naming
    /// it (always on); debug mode checks more (see [`Config::with_debug`]).
    ///
    /// # Safety
    /// `ptr` must be live and come from this heap's `alloc` family (or, for a pointer outside our
    /// arenas, from the C library's allocator).
    #[inline]
    pub unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: forwarded contract.
        unsafe { self.free_with(ptr, ptr::null_mut()) }
    }

    /// # Safety
    /// As [`free`](Self::free); `cache` null or the caller's own cache.
    #[inline(always)]
    unsafe fn free_with(&self, ptr: *mut u8, cache: *mut Cache) {
        // SAFETY: forwarded contract.
        if let Some((pool, block)) = unsafe { self.checked_block(ptr) } {
            // SAFETY: a checked live block of ours.
            unsafe { self.small_free(pool, block, cache) }
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

    /// Bytes usable at `ptr`: the block size for our blocks (the requested size in debug mode),
    /// the C library's figure otherwise. In debug mode a pointer inside our arenas gets the
    /// checks `free` makes (block start, pool in use, double free, guards) and aborts with a
    /// message naming it when one fails.
    ///
    /// # Safety
    /// `ptr` must be live and come from this heap (or the C library's allocator).
    pub unsafe fn usable_size(&self, ptr: *const u8) -> usize {
        if self.map.lookup(ptr as usize).is_some() {
            if self.debug {
                // SAFETY: forwarded contract; the map knows ptr.
                return unsafe { self.debug_requested(ptr as *mut u8, Op::UsableSize) };
            }
            let pool = self.geo.pool_of(ptr as usize) as *const PoolHeader;
            // SAFETY: ptr is a live block of ours, so its pool header is initialised and its
            // class does not change while the block is live.
            class_size(unsafe { PoolHeader::class(pool) } as usize)
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
    /// underneath. Returns null (leaving `ptr` untouched) when memory is exhausted. In debug
    /// mode a block of ours is checked before anything is allocated or copied (the checks of
    /// `free`; a bad pointer aborts with a message naming it) and always moves.
    ///
    /// # Safety
    /// As [`GlobalAlloc::realloc`](core::alloc::GlobalAlloc::realloc) for this heap; in
    /// particular `new_size` must not be zero (the C ABI's `realloc(p, 0)` frees instead).
    /// One relaxation: when `layout.align()` is at most 16, only the alignment is used (the old
    /// size is found from the pointer), so a caller that knows no layout (C's `realloc`) may
    /// pass any size in `layout`.
    pub unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size rounded to align does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if self.map.lookup(ptr as usize).is_some() {
            if self.debug {
                // SAFETY: forwarded contract; the map knows ptr.
                let n = unsafe { self.debug_requested(ptr, Op::Realloc) };
                // SAFETY: a checked live block with n requested bytes; the free in move_to
                // checks it again.
                return unsafe { self.move_to(ptr, new_layout, n.min(new_size)) };
            }
            // SAFETY: ptr is a live block of ours.
            let size = unsafe { self.usable_size(ptr) };
            if new_size <= size && 4 * new_size > 3 * size {
                return ptr;
            }
            // SAFETY: forwarded contract; the copy stays inside both blocks (the free in
            // move_to runs the always-on checks).
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
    ///
    /// In free-threaded mode it is read while other threads run, so it is approximate then
    /// (exact when no thread allocates). The calling thread's own batched remote frees are
    /// published first, so a block a thread freed is never reported in use to that thread;
    /// other threads' batches (at most `8 * 32` blocks each, see
    /// [`ThreadCache::flush`]) count as in use until published.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::empty(self.mode(), &self.geo);
        match &self.front {
            Front::Gil(h) => h.lock_wait(&self.map).fill_stats(&mut s),
            Front::Ft(h) => {
                let c = h.bound_cache();
                if !c.is_null() {
                    // SAFETY: a bound cache is used by the calling thread only.
                    unsafe { (*c).flush_batches(&h.ctx(&self.geo, &self.map)) };
                }
                h.fill_stats(&mut s, &self.geo)
            }
        }
        s
    }

    /// Gives memory back now. In free-threaded mode: the calling thread's own cache publishes
    /// its batched remote frees and returns its pools whose blocks were all freed (by any
    /// thread); every pool left without an owner (by exited threads or dropped handles) whose
    /// blocks are all free returns to its arena; every free pool's pages go back to the OS
    /// (`madvise`) without waiting for the decay interval; and arenas whose pools are all free
    /// are unmapped (one is kept). GIL mode returns pools and arenas eagerly, as pymalloc does,
    /// so there it does nothing. Returns the number of pools returned to arenas.
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
                let c = h.acquire_cache(true);
                if c.is_null() {
                    return None;
                }
                c
            }
        };
        Some(ThreadCache { heap: self, cache })
    }

    /// Marks this heap as the process-wide one (see `FtHeap::set_process_heap`).
    pub(crate) fn set_process_heap(&mut self) {
        if let Front::Ft(h) = &mut self.front {
            h.set_process_heap();
        }
    }

    /// Runs `f` with the free-threaded heap, if this is one.
    #[cfg(not(loom))]
    fn with_ft(&self, f: impl FnOnce(&FtHeap, &Ctx<'_>)) {
        if let Front::Ft(h) = &self.front {
            f(h, &h.ctx(&self.geo, &self.map));
        }
    }

    /// `pthread_atfork` prepare handler of the process-wide heap: GIL mode takes its lock
    /// (gil.rs, the fork protocol); free-threaded mode has nothing to hold.
    fn fork_prepare(&self) {
        if let Front::Gil(h) = &self.front {
            h.fork_prepare(&self.map);
        }
    }

    /// `pthread_atfork` parent handler: releases what the prepare handler took.
    fn fork_parent(&self) {
        if let Front::Gil(h) = &self.front {
            h.fork_parent(&self.map);
        }
    }

    /// `pthread_atfork` child handler: releases what the prepare handler took; free-threaded
    /// mode repairs what the parent's other threads left in flight (see `FtHeap::after_fork`).
    fn fork_child(&self) {
        match &self.front {
            Front::Gil(h) => h.fork_child(&self.map),
            Front::Ft(h) => h.after_fork(&h.ctx(&self.geo, &self.map)),
        }
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        match &self.front {
            Front::Gil(h) => h.lock_wait(&self.map).check_invariants(),
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
            Front::Gil(h) => h.lock_wait(&self.map).release_all(&self.map),
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
        // SAFETY: forwarded contract; the cache (null in GIL mode) is ours.
        unsafe { self.heap.alloc_with(layout, self.cache) }
    }

    /// Frees `ptr` (any block of the heap, or a foreign pointer, as [`Allocator::free`]).
    ///
    /// # Safety
    /// As [`Allocator::free`].
    #[inline]
    pub unsafe fn free(&mut self, ptr: *mut u8) {
        // SAFETY: forwarded contract; the cache (null in GIL mode) is ours.
        unsafe { self.heap.free_with(ptr, self.cache) }
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

    /// Publishes the remote frees this cache holds in batches (blocks it freed into pools it
    /// does not own). They are published anyway when a batch fills, on this cache's next slow
    /// path, by [`trim`](Self::trim) and when the handle is dropped; until then
    /// [`Allocator::stats`] counts them as in use.
    pub fn flush(&mut self) {
        if let Front::Ft(h) = &self.heap.front {
            // SAFETY: the slot is ours (&mut self).
            unsafe { (*self.cache).flush_batches(&h.ctx(&self.heap.geo, &self.heap.map)) };
        }
    }

    /// Gives memory back now, as [`Allocator::trim`] does, with this cache as the caller's:
    /// its batched remote frees are published and its pools whose blocks were all freed
    /// return to their arenas. Returns the number of pools returned to arenas.
    pub fn trim(&mut self) -> usize {
        match &self.heap.front {
            Front::Gil(_) => 0,
            Front::Ft(h) => {
                let cx = h.ctx(&self.heap.geo, &self.heap.map);
                // SAFETY: the slot is ours (&mut self).
                let n = unsafe { (*self.cache).trim(&cx) };
                n + thread_cache::maintenance(&cx, true)
            }
        }
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
