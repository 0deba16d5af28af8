//! The facade: [`Allocator`] and [`ThreadCache`], generic over the two front-ends.
//!
//! Everything that is the same in both modes lives here, once: routing a request (small ones to
//! the front-end by size class, everything else and every foreign pointer to the allocator
//! underneath), the always-on invalid-pointer checks on `free`/`realloc`/`usable_size`, debug
//! mode, `realloc`'s in-place rule and the statistics envelope. What differs is behind the
//! [`Front`] trait (`layout`), implemented by `gil::GilHeap` and `ft::FtHeap` in their folders.
//!
//! [`Heap<F>`] is one heap monomorphised over its front-end. [`Allocator`], the public type whose
//! mode is chosen at run time, is a handle to an enum of the two (`Inner`, at a fixed address,
//! entered in the registry of live heaps, `heaps`), and [`dispatch!`] is the one place that
//! matches on it (a second arm for handles, [`ThreadCache`]).

use crate::base::{asan, diag};
use crate::ft::FtHeap;
use crate::gil::{GilHeap, SerialGilHeap};
use crate::layout::arena_map::ArenaMap;
use crate::layout::config::{Config, ConfigError, PYMALLOC_GEOMETRY};
use crate::layout::geometry::Geometry;
use crate::layout::pool::{invalid_free, invalid_pointer, reject, Bad, Op, PoolHeader};
use crate::layout::size_class::{class_size, size_to_class, ALIGNMENT};
use crate::layout::stats::Stats;
use crate::layout::{debug, large, Arenas, Front, Mode};
use core::alloc::Layout;
use core::fmt;
use core::ptr;

#[cold]
fn out_of_address_space() -> ! {
    diag::die(b"ftmalloc: cannot map the allocator's tables (mmap failed)\n")
}

/// One heap monomorphised over its front-end: the arenas it owns, the front-end and the debug
/// flag. Every method of [`Allocator`] is one of these behind [`dispatch!`].
pub(crate) struct Heap<F: Front> {
    arenas: Arenas,
    front: F,
    /// Debug mode (see `layout::debug`).
    debug: bool,
}

impl<F: Front> Heap<F> {
    /// A new heap for `config` (validated).
    fn with_config(config: Config) -> Result<Heap<F>, ConfigError> {
        let geo = config.geometry()?;
        let map = ArenaMap::new(geo.arena_shift).unwrap_or_else(|| out_of_address_space());
        let front = F::build(geo, &config).unwrap_or_else(|| out_of_address_space());
        Ok(Heap {
            arenas: Arenas { geo, map },
            front,
            debug: config.debug,
        })
    }

    /// See [`Allocator::owns`].
    #[inline]
    pub(crate) fn owns(&self, ptr: *const u8) -> bool {
        self.arenas.map.lookup(ptr as usize).is_some()
    }

    /// Whether `layout` is served from pools (1 to `small_limit` bytes, alignment <= 16).
    #[inline(always)]
    pub(crate) fn is_small(&self, layout: Layout) -> bool {
        layout.size().wrapping_sub(1) < self.arenas.geo.small_limit && layout.align() <= ALIGNMENT
    }

    /// A block of `class` from the front-end: in free-threaded mode from the handle's cache
    /// (`local`) or the calling thread's own; in GIL mode from the locked heap.
    ///
    /// # Safety
    /// `local` is `NO_LOCAL` or the calling handle's own.
    #[inline(always)]
    unsafe fn small_alloc(&self, class: usize, local: F::Local) -> *mut u8 {
        // SAFETY: per the contract.
        let p = unsafe { self.front.alloc(class, local, &self.arenas) };
        if cfg!(feature = "asan") && !self.debug && !p.is_null() {
            asan::unpoison(p, class_size(class));
        }
        p
    }

    /// Frees a checked block of ours (see [`checked_block`](Self::checked_block)).
    ///
    /// # Safety
    /// `block` must be a live block of `pool`; `local` `NO_LOCAL` or the caller's own.
    #[inline(always)]
    unsafe fn small_free(&self, pool: *mut PoolHeader, block: *mut u8, local: F::Local) {
        if cfg!(feature = "asan") && !self.debug {
            // SAFETY: a checked block of `pool`, whose header is readable (atomic field).
            let size = class_size(unsafe { PoolHeader::class(pool) } as usize);
            asan::poison_freed(block, size);
        }
        // SAFETY: per the contract.
        unsafe { self.front.free(pool, block, local, &self.arenas) }
    }

    /// For a pointer inside our arenas: its pool and block, after the checks that are always on
    /// (the pool is in use, the pointer is a carved block start) and, in debug mode, the debug
    /// checks. Aborts with a message naming the pointer on failure. `None` for other pointers.
    ///
    /// # Safety
    /// `ptr` must be live, from this heap or the allocator underneath (the checks catch many
    /// violations of this for pointers inside our arenas, but not all).
    #[inline(always)]
    unsafe fn checked_block(
        &self,
        ptr: *mut u8,
        debug: bool,
    ) -> Option<(*mut PoolHeader, *mut u8)> {
        self.arenas.map.lookup(ptr as usize)?;
        // SAFETY: the map knows ptr.
        let (pool, block, class, refs) = unsafe { self.locate(ptr, Op::Free, debug) };
        if debug {
            // SAFETY: `locate` checked that `block` is a carved block start of a pool that
            // served `class`, inside the arena the map vouches for. (Checked before `refs`, so
            // a double free is named as such.)
            unsafe { debug::on_free(block, class_size(class as usize), pool as usize) };
        }
        if refs == 0 {
            invalid_free(ptr as usize, pool as usize, class, Bad::PoolNotInUse);
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
    unsafe fn locate(
        &self,
        ptr: *mut u8,
        op: Op,
        debug: bool,
    ) -> (*mut PoolHeader, *mut u8, u32, u32) {
        let user = ptr as usize;
        // The pool is the one holding `ptr` itself, which the map vouches for. In debug mode the
        // block starts `debug::HEADER` bytes before it, possibly in the previous pool or outside
        // the arena (a pointer to a pool's start); a real debug block lies in the same pool as
        // its user pointer (blocks are at least `debug::OVERHEAD` bytes), and the offset check
        // below rejects a block start before the pool's first block.
        let pool = self.arenas.geo.pool_of(user) as *mut PoolHeader;
        let block = if debug { debug::inner_of(ptr) } else { ptr };
        // SAFETY: the arena is mapped (the map knows `ptr`, the contract, and `ptr` lies in this
        // pool), so its pool headers are readable.
        match unsafe { PoolHeader::check_block(pool, block as usize, &self.arenas.geo) } {
            Ok((class, refs)) => (pool, block, class, refs),
            Err((class, why)) => reject(op, user, pool as usize, class, why),
        }
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
        let (pool, block, class, refs) = unsafe { self.locate(ptr, op, true) };
        // SAFETY: `locate` checked that `block` is a carved block start of a pool that served
        // `class`, inside the arena the map vouches for.
        let n = unsafe { debug::check_live(block, class_size(class as usize), pool as usize, op) };
        if refs == 0 {
            invalid_pointer(op, ptr as usize, pool as usize, class, Bad::PoolNotInUse);
        }
        n
    }

    /// See [`Allocator::alloc`].
    #[inline]
    pub(crate) unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.alloc_with(layout, F::NO_LOCAL) }
    }

    /// # Safety
    /// As [`alloc`](Self::alloc); `local` `NO_LOCAL` or the caller's own.
    #[inline(always)]
    unsafe fn alloc_with(&self, layout: Layout, local: F::Local) -> *mut u8 {
        if self.debug {
            // SAFETY: forwarded contract.
            return unsafe { self.debug_alloc(layout, local, false) };
        }
        // SAFETY: forwarded contract; debug mode is off.
        unsafe { self.alloc_plain(layout, local) }
    }

    /// Allocation outside debug mode: a pool block for a small `layout`, else the allocator
    /// underneath.
    ///
    /// # Safety
    /// As [`alloc_with`](Self::alloc_with); debug mode is off.
    #[inline(always)]
    unsafe fn alloc_plain(&self, layout: Layout, local: F::Local) -> *mut u8 {
        if self.is_small(layout) {
            // SAFETY: `local` is NO_LOCAL or the handle's own (the contract).
            unsafe { self.small_alloc(size_to_class(layout.size()), local) }
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
    unsafe fn debug_alloc(&self, layout: Layout, local: F::Local, zeroed: bool) -> *mut u8 {
        let n = layout.size().max(1);
        if layout.align() > ALIGNMENT || n + debug::OVERHEAD > self.arenas.geo.small_limit {
            return if zeroed {
                large::alloc_zeroed(layout.size(), layout.align())
            } else {
                large::alloc(layout.size(), layout.align())
            };
        }
        let class = size_to_class(n + debug::OVERHEAD);
        // SAFETY: `local` is NO_LOCAL or the handle's own (the contract).
        let inner = unsafe { self.small_alloc(class, local) };
        if inner.is_null() {
            return inner;
        }
        if self.arenas.map.lookup(inner as usize).is_none() {
            // The allocator underneath served it: GIL mode while a fork holds the lock
            // (DESIGN.md section 7), or a signal handler's request while its own thread does.
            // No debug header: the arena map does not know the block, so its free, realloc
            // and usable size go underneath, unchanged pointer and all.
            if zeroed {
                // SAFETY: a fresh block of at least class_size(class) >= n bytes.
                unsafe { ptr::write_bytes(inner, 0, n) };
            }
            return inner;
        }
        let pool = self.arenas.geo.pool_of(inner as usize);
        // SAFETY: a fresh block of class_size(class) >= n + OVERHEAD bytes.
        unsafe { debug::on_alloc(inner, class_size(class), pool, n, zeroed) }
    }

    /// See [`Allocator::alloc_zeroed`].
    #[inline]
    pub(crate) unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.debug {
            // SAFETY: forwarded contract.
            return unsafe { self.debug_alloc(layout, F::NO_LOCAL, true) };
        }
        if self.is_small(layout) {
            // SAFETY: NO_LOCAL.
            let p = unsafe { self.small_alloc(size_to_class(layout.size()), F::NO_LOCAL) };
            if !p.is_null() {
                // SAFETY: p is a fresh block of at least layout.size() bytes.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
            }
            p
        } else {
            large::alloc_zeroed(layout.size(), layout.align())
        }
    }

    /// See [`Allocator::free`].
    #[inline]
    pub(crate) unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: forwarded contract.
        unsafe { self.free_with(ptr, F::NO_LOCAL) }
    }

    /// # Safety
    /// As [`free`](Self::free); `local` `NO_LOCAL` or the caller's own.
    #[inline(always)]
    unsafe fn free_with(&self, ptr: *mut u8, local: F::Local) {
        // SAFETY: forwarded contract.
        unsafe { self.free_routed::<true>(ptr, local) };
    }

    /// Frees `ptr` and returns true when the arena map knows it. Any other pointer: with
    /// `UNDERNEATH`, freed by the allocator underneath (true); without, left alone (false).
    /// One map lookup, then (debug mode off) the front's check-once free of a pool the
    /// caller's cache owns, then the general free.
    ///
    /// # Safety
    /// As [`free_with`](Self::free_with).
    #[inline(always)]
    unsafe fn free_routed<const UNDERNEATH: bool>(&self, ptr: *mut u8, local: F::Local) -> bool {
        if self.arenas.map.lookup(ptr as usize).is_none() {
            if UNDERNEATH && !ptr.is_null() {
                // SAFETY: not ours, so by contract it belongs to the allocator underneath.
                unsafe { large::free(ptr) };
            }
            return UNDERNEATH;
        }
        if !self.debug && !cfg!(feature = "asan") {
            let geo = &self.arenas.geo;
            let pool = geo.pool_of(ptr as usize) as *mut PoolHeader;
            // SAFETY: the map knows ptr, so `pool` is its pool's header in a mapped arena of
            // ours; `local` as the contract says; the front checks the block or misses.
            if unsafe { self.front.free_owned(pool, ptr, geo, local, &self.arenas) } {
                return true;
            }
        }
        // SAFETY: ours (the map knows it), by contract live: the general free checks it
        // (aborting with a message on a bad one) and frees it, or defers it during a fork.
        unsafe { self.free_as(ptr, local, self.debug) };
        true
    }

    /// The process-wide heap's free when it knows debug mode is off (`global`: the mode and
    /// the debug flag are read once, at start): the debug branches fold away.
    ///
    /// # Safety
    /// As [`free`](Self::free); debug mode is off.
    #[inline(always)]
    pub(crate) unsafe fn free_nodebug(&self, ptr: *mut u8) {
        debug_assert!(!self.debug);
        // SAFETY: forwarded contract.
        unsafe { self.free_as(ptr, F::NO_LOCAL, false) }
    }

    /// The process-wide heap's allocation when it knows debug mode is off (as
    /// [`free_nodebug`](Self::free_nodebug)).
    ///
    /// # Safety
    /// As [`alloc`](Self::alloc); debug mode is off.
    #[inline(always)]
    pub(crate) unsafe fn alloc_nodebug(&self, layout: Layout) -> *mut u8 {
        debug_assert!(!self.debug);
        // SAFETY: forwarded contract; NO_LOCAL.
        unsafe { self.alloc_plain(layout, F::NO_LOCAL) }
    }

    /// The fast path of the process-wide heap's C `malloc` (debug mode off, pymalloc's
    /// geometry): a block of `size` bytes at alignment 16 from the calling thread's own state,
    /// or null when it misses (nothing done: the caller then takes its general path). Any
    /// `size` is accepted: no `Layout` is made for one the fast path does not serve (a C
    /// caller's size may exceed what a `Layout` can hold).
    ///
    /// # Safety
    /// The heap's geometry is pymalloc's (`PYMALLOC_GEOMETRY`).
    #[inline(always)]
    pub(crate) unsafe fn try_alloc_fast(&self, size: usize) -> *mut u8 {
        let geo = self.fast_geometry();
        if cfg!(feature = "asan") || size.wrapping_sub(1) >= geo.small_limit {
            return ptr::null_mut();
        }
        // 1 <= size <= small limit, alignment 16 (ALIGNMENT): what a pool block gives.
        self.front
            .alloc_fast(size_to_class(size), geo, &self.arenas)
    }

    /// The geometry for the fast paths: the process-wide heap's is always pymalloc's, a
    /// constant, so inlined fast paths see its sizes and shifts as immediates (their callers
    /// guarantee it: the `# Safety` of `try_alloc_fast` and `try_free_fast`).
    #[inline(always)]
    fn fast_geometry(&self) -> &'static Geometry {
        debug_assert_eq!(self.arenas.geo, PYMALLOC_GEOMETRY);
        &PYMALLOC_GEOMETRY
    }

    /// The fast path of the process-wide heap's `free` (debug mode off): true when `ptr` was
    /// freed, false when it misses (nothing done: the caller then takes
    /// [`free_nodebug`](Self::free_nodebug), which also makes the checks' reports).
    ///
    /// # Safety
    /// As [`free`](Self::free); debug mode is off; the heap's geometry is pymalloc's
    /// (`PYMALLOC_GEOMETRY`).
    #[inline(always)]
    pub(crate) unsafe fn try_free_fast(&self, ptr: *mut u8) -> bool {
        let geo = self.fast_geometry();
        // SAFETY: the map was built for this geometry's arenas (`fast_geometry`).
        let known = unsafe {
            self.arenas
                .map
                .lookup_for_shift(ptr as usize, geo.arena_shift)
        };
        if cfg!(feature = "asan") || known.is_none() {
            return false;
        }
        let pool = geo.pool_of(ptr as usize) as *mut PoolHeader;
        // SAFETY: the map knows ptr, so its arena (ours) is mapped and `pool` its header; the
        // front checks the block (or misses) before it frees it.
        unsafe { self.front.free_fast(pool, ptr, geo, &self.arenas) }
    }

    /// # Safety
    /// As [`free_with`](Self::free_with); `debug` is this heap's flag (or a constant equal to it).
    #[inline(always)]
    unsafe fn free_as(&self, ptr: *mut u8, local: F::Local, debug: bool) {
        // SAFETY: forwarded contract.
        if let Some((pool, block)) = unsafe { self.checked_block(ptr, debug) } {
            // SAFETY: a checked live block of ours.
            unsafe { self.small_free(pool, block, local) }
        } else if !ptr.is_null() {
            // SAFETY: not ours, so by contract it belongs to the allocator underneath.
            unsafe { large::free(ptr) }
        }
    }

    /// See [`Allocator::pooled_limit`].
    fn pooled_limit(&self) -> usize {
        let limit = self.arenas.geo.small_limit;
        if self.debug {
            limit.saturating_sub(debug::OVERHEAD)
        } else {
            limit
        }
    }

    /// See [`Allocator::free_owned`].
    #[inline(always)]
    pub(crate) unsafe fn free_owned(&self, ptr: *mut u8) -> bool {
        // SAFETY: forwarded contract; NO_LOCAL.
        unsafe { self.free_routed::<false>(ptr, F::NO_LOCAL) }
    }

    /// See [`Allocator::usable_size`].
    pub(crate) unsafe fn usable_size(&self, ptr: *const u8) -> usize {
        if self.arenas.map.lookup(ptr as usize).is_some() {
            if self.debug {
                // SAFETY: forwarded contract; the map knows ptr.
                return unsafe { self.debug_requested(ptr as *mut u8, Op::UsableSize) };
            }
            let pool = self.arenas.geo.pool_of(ptr as usize) as *const PoolHeader;
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

    /// See [`Allocator::realloc`].
    pub(crate) unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size rounded to align does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if self.arenas.map.lookup(ptr as usize).is_some() {
            if self.debug {
                // SAFETY: forwarded contract; the map knows ptr.
                let n = unsafe { self.debug_requested(ptr, Op::Realloc) };
                // SAFETY: a checked live block with n requested bytes; the free in move_to
                // checks it again.
                return unsafe { self.move_to(ptr, new_layout, n.min(new_size)) };
            }
            // The checks `free` makes, named as realloc's (an interior pointer, a pool not in
            // use), before any byte is copied.
            // SAFETY: the arena map knows ptr (tested above), so its pool header is mapped and
            // `locate` may read it; `locate` itself reports a pointer that is not a live block.
            let (pool, _, class, refs) = unsafe { self.locate(ptr, Op::Realloc, false) };
            if refs == 0 {
                invalid_pointer(
                    Op::Realloc,
                    ptr as usize,
                    pool as usize,
                    class,
                    Bad::PoolNotInUse,
                );
            }
            let size = class_size(class as usize);
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

    fn mode(&self) -> Mode {
        F::MODE
    }

    fn stats(&self) -> Stats {
        let mut s = Stats::empty(F::MODE, &self.arenas.geo);
        self.front.fill_stats(&mut s, &self.arenas);
        s
    }
}

impl<F: Front> Drop for Heap<F> {
    fn drop(&mut self) {
        self.front.release_all(&self.arenas);
    }
}

/// The one match over the two front-ends: `dispatch!(&allocator.inner, h => expr)` evaluates
/// `expr` with `h` bound to the [`Heap`] of the allocator's mode.
macro_rules! dispatch {
    ($inner:expr, $h:ident => $e:expr) => {
        match $inner {
            Inner::Gil($h) => $e,
            Inner::Ft($h) => $e,
        }
    };
}

/// A heap of either mode. It lives at a fixed address for its whole life (an instance's own
/// mapping, or the process shell's static), because the registry of live heaps (`heaps`), which
/// the thread-exit hook and the `fork` handlers walk, points at it.
// The variants are large and unequal, but a heap is built once and lives long; boxing the
// larger one would allocate, which the global allocator cannot do while it starts.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Inner {
    Gil(Heap<GilHeap>),
    Ft(Heap<FtHeap>),
}

/// An independent ftmalloc heap. Two instances share nothing.
///
/// Small requests (1..=512 bytes, alignment <= 16) are served from its pools; everything else,
/// and every pointer its arena map does not know, goes to the C library's allocator.
///
/// Every live heap, instances included, is in the process's registry of heaps: at `fork` the
/// handlers take each GIL-mode heap's lock (so the child never finds one held by a thread it does
/// not have) and repair each free-threaded heap in the child; at a thread's exit its caches of
/// every free-threaded heap are handed back (their pools become adoptable at once). The value
/// itself is a handle: the heap lives in a mapping of its own, unmapped when it is dropped.
pub struct Allocator {
    /// The heap, at a fixed address: an instance's own mapping (`owned`), or the process
    /// shell's static, which is never dropped.
    inner: core::ptr::NonNull<Inner>,
    /// The heap's slot in the registry of live heaps (an instance's; none under loom, which has
    /// no registry, nor for the process-wide heap's handle, which is never dropped).
    #[cfg_attr(loom, allow(dead_code))]
    slot: usize,
    /// True when `inner` is this value's own mapping, unmapped on drop.
    owned: bool,
}

// SAFETY: an Allocator is a unique handle to its heap (the mapping it owns, or the process
// shell's static heap); `Heap<F>` is Send and Sync for both fronts (all shared state is atomic
// or behind the GIL-mode lock).
unsafe impl Send for Allocator {}
// SAFETY: as above.
unsafe impl Sync for Allocator {}

/// Bytes of an instance's own mapping.
fn inner_bytes() -> usize {
    core::mem::size_of::<Inner>().next_multiple_of(crate::base::os::page_size())
}

impl Inner {
    /// A new heap of `mode` for `config` (validated), not yet at its fixed address.
    pub(crate) fn build(mode: Mode, config: Config) -> Result<Inner, ConfigError> {
        Ok(match mode {
            Mode::Gil => Inner::Gil(Heap::with_config(config)?),
            Mode::FreeThreaded => Inner::Ft(Heap::with_config(config)?),
        })
    }

    /// Marks this heap as the process-wide one (its thread caches may batch remote frees; see
    /// `ft`). Before it is registered or used.
    pub(crate) fn set_process_heap(&mut self) {
        dispatch!(self, h => h.front.set_process_heap())
    }

    /// The geometry this heap was built with.
    pub(crate) fn geometry(&self) -> &Geometry {
        dispatch!(self, h => &h.arenas.geo)
    }

    /// `pthread_atfork` prepare handler (walked by `heaps`): GIL mode takes its lock (`gil`,
    /// the fork protocol); free-threaded mode has nothing to hold.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn fork_prepare(&self) {
        dispatch!(self, h => h.front.fork_prepare(&h.arenas))
    }

    /// `pthread_atfork` parent handler: releases what the prepare handler took.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn fork_parent(&self) {
        dispatch!(self, h => h.front.fork_parent(&h.arenas))
    }

    /// `pthread_atfork` child handler: releases what the prepare handler took; free-threaded
    /// mode repairs what the parent's other threads left in flight (`ft`, `after_fork`).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn fork_child(&self) {
        dispatch!(self, h => h.front.fork_child(&h.arenas))
    }

    /// Thread `tid` is exiting (walked by `heaps` from the thread registry's exit hook):
    /// free-threaded mode abandons the thread's cache of this heap.
    #[cfg(not(loom))]
    pub(crate) fn thread_exit(&self, tid: usize) {
        dispatch!(self, h => h.front.thread_exit(tid, &h.arenas))
    }

    /// The GIL-mode heap inside.
    ///
    /// # Safety
    /// The mode is [`Mode::Gil`].
    #[inline(always)]
    pub(crate) unsafe fn as_gil_unchecked(&self) -> &Heap<GilHeap> {
        match self {
            Inner::Gil(h) => h,
            // SAFETY: the caller promises the mode is GIL, so this arm is never taken.
            Inner::Ft(_) => unsafe { core::hint::unreachable_unchecked() },
        }
    }

    /// The free-threaded heap inside.
    ///
    /// # Safety
    /// The mode is [`Mode::FreeThreaded`].
    #[inline(always)]
    pub(crate) unsafe fn as_ft_unchecked(&self) -> &Heap<FtHeap> {
        match self {
            Inner::Ft(h) => h,
            // SAFETY: the caller promises the mode is free-threaded, so this arm is never taken.
            Inner::Gil(_) => unsafe { core::hint::unreachable_unchecked() },
        }
    }
}

/// Enters the process-wide heap (in the process shell's static, never dropped) in the registry
/// of live heaps, with the thread-exit hook and the `pthread_atfork` handlers if it is the first
/// heap. Called once, by the shell, after the heap is ready.
#[cfg(not(loom))]
pub(crate) fn register_process_heap(inner: &'static Inner) {
    crate::heaps::register(inner as *const Inner as *mut Inner);
}

impl Drop for Allocator {
    fn drop(&mut self) {
        if !self.owned {
            // The process-wide heap's handle (never dropped in practice): nothing of ours.
            return;
        }
        // Out of the registry first: once `unregister` returns, no walker (thread exit, fork
        // handler) can reach the heap any more, and none is still inside it.
        #[cfg(not(loom))]
        crate::heaps::unregister(self.slot);
        // SAFETY: the mapping holds the heap, written in `with_config`, and nothing else
        // reaches it now (`&mut self`, and out of the registry); it is dropped once, then
        // unmapped with the size it was mapped with.
        unsafe {
            ptr::drop_in_place(self.inner.as_ptr());
            crate::base::os::unmap(self.inner.as_ptr().cast(), inner_bytes());
        }
    }
}

impl fmt::Debug for Allocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocator")
            .field("mode", &self.mode())
            .field("geometry", self.geometry())
            .finish()
    }
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
        let inner = Inner::build(mode, config)?;
        const { assert!(core::mem::align_of::<Inner>() <= 4096) };
        let mem = crate::base::os::map(inner_bytes()).cast::<Inner>();
        let Some(mem) = core::ptr::NonNull::new(mem) else {
            out_of_address_space()
        };
        // SAFETY: a fresh mapping of at least size_of::<Inner>() bytes, page-aligned (enough
        // for Inner, checked above).
        unsafe { mem.as_ptr().write(inner) };
        #[cfg(not(loom))]
        let slot = crate::heaps::register(mem.as_ptr());
        #[cfg(loom)]
        let slot = usize::MAX;
        Ok(Allocator {
            inner: mem,
            slot,
            owned: true,
        })
    }

    /// The handle of the process-wide heap, which the process shell built in its static (and
    /// marked with `set_process_heap`). Never dropped. Not registered yet: the shell calls
    /// [`register_process_heap`] once the heap is ready, because registering the first heap
    /// installs the hooks, and `pthread_atfork` may allocate (in the drop-in library, from this
    /// very heap).
    pub(crate) fn process(inner: &'static Inner) -> Allocator {
        Allocator {
            inner: core::ptr::NonNull::from(inner),
            slot: usize::MAX,
            owned: false,
        }
    }

    /// The heap.
    #[inline(always)]
    fn inner(&self) -> &Inner {
        // SAFETY: the heap lives at this address until the handle is dropped (its own mapping)
        // or forever (the process shell's static).
        unsafe { self.inner.as_ref() }
    }

    /// The mode this heap was built with.
    pub fn mode(&self) -> Mode {
        dispatch!(self.inner(), h => h.mode())
    }

    /// The geometry this heap was built with.
    pub fn geometry(&self) -> &Geometry {
        dispatch!(self.inner(), h => &h.arenas.geo)
    }

    /// The largest request (alignment <= 16) served from this heap's pools: the geometry's
    /// `small_limit`, less debug mode's header and guards when debug mode is on. Larger
    /// requests go to the allocator underneath, and so does a zero-size one outside debug
    /// mode; a wrapper that sends only requests of 1 to this many bytes here gets blocks that
    /// [`owns`](Self::owns) recognises.
    pub fn pooled_limit(&self) -> usize {
        dispatch!(self.inner(), h => h.pooled_limit())
    }

    /// True when `ptr` lies inside one of this heap's arenas. Safe for any address.
    #[inline]
    pub fn owns(&self, ptr: *const u8) -> bool {
        dispatch!(self.inner(), h => h.owns(ptr))
    }

    /// Allocates a block for `layout`; null when memory is exhausted.
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`](core::alloc::GlobalAlloc::alloc), except that a zero size is
    /// allowed (it is served by the allocator underneath; in debug mode by a pool block for 1
    /// byte).
    #[inline(always)]
    pub unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        dispatch!(self.inner(), h => unsafe { h.alloc(layout) })
    }

    /// Allocates a zeroed block for `layout`; null when memory is exhausted.
    ///
    /// # Safety
    /// As [`alloc`](Self::alloc).
    #[inline]
    pub unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        dispatch!(self.inner(), h => unsafe { h.alloc_zeroed(layout) })
    }

    /// Bytes usable at `ptr`: the block size for our blocks (the requested size in debug mode),
    /// the C library's figure otherwise. In debug mode a pointer inside our arenas gets the
    /// checks `free` makes (block start, pool in use, double free, guards) and aborts with a
    /// message naming it when one fails.
    ///
    /// # Safety
    /// `ptr` must be live and come from this heap (or the C library's allocator).
    pub unsafe fn usable_size(&self, ptr: *const u8) -> usize {
        // SAFETY: forwarded contract.
        dispatch!(self.inner(), h => unsafe { h.usable_size(ptr) })
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
        // SAFETY: forwarded contract.
        dispatch!(self.inner(), h => unsafe { h.realloc(ptr, layout, new_size) })
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
        dispatch!(self.inner(), h => unsafe { h.free(ptr) })
    }

    /// Frees `ptr` and returns true when it lies inside this heap's arenas (with the checks
    /// [`free`](Self::free) makes); returns false, touching nothing, for any other pointer,
    /// which the caller frees where it came from. For a wrapper over another allocator: one
    /// arena-map lookup instead of [`owns`](Self::owns) and then `free`.
    ///
    /// # Safety
    /// A pointer inside our arenas must be live and come from this heap's `alloc` family.
    #[inline(always)]
    pub unsafe fn free_owned(&self, ptr: *mut u8) -> bool {
        // SAFETY: forwarded contract.
        dispatch!(self.inner(), h => unsafe { h.free_owned(ptr) })
    }

    /// Frees a block allocated with `layout` (routed by the arena map, as [`free`](Self::free)).
    ///
    /// # Safety
    /// As [`GlobalAlloc::dealloc`](core::alloc::GlobalAlloc::dealloc) for this heap.
    #[inline]
    pub unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: forwarded contract.
        dispatch!(self.inner(), h => unsafe { h.free(ptr) })
    }

    /// A snapshot of the heap. In GIL mode it is taken under the lock, without allocating.
    ///
    /// In free-threaded mode it is read while other threads run, so it is approximate then
    /// (exact when no thread allocates). The calling thread's own batched remote frees are
    /// published first, so a block a thread freed is never reported in use to that thread;
    /// other threads' batches (at most `8 * 32` blocks each, see
    /// [`ThreadCache::flush`]) count as in use until published.
    pub fn stats(&self) -> Stats {
        dispatch!(self.inner(), h => h.stats())
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
        dispatch!(self.inner(), h => h.front.trim(&h.arenas))
    }

    /// An explicit thread cache: a handle that owns pools of this heap, for one thread at a
    /// time (tests, loom models, benchmarks). Dropping it abandons its pools to the heap, as a
    /// thread exit does. In GIL mode the handle simply forwards to the locked heap.
    ///
    /// Returns `None` when the heap's cache table is full.
    pub fn thread_cache(&self) -> Option<ThreadCache<'_>> {
        let local = match self.inner() {
            Inner::Gil(h) => Local::Gil(h, h.front.new_local()?),
            Inner::Ft(h) => Local::Ft(h, h.front.new_local()?),
        };
        Some(ThreadCache { heap: self, local })
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        dispatch!(self.inner(), h => h.front.check_invariants(&h.arenas))
    }
}

/// A GIL-mode heap with no lock of its own: pymalloc's algorithms, serialised by the caller's
/// lock, as `obmalloc.c` runs under CPython's GIL (built by the unsafe
/// [`SerializedAllocator::new`]). Every call takes [`Allocator`]'s paths for [`Mode::Gil`]
/// except that no lock is taken or released.
///
/// It is a type of its own, not a third kind of [`Allocator`], so that `Allocator`'s paths
/// (one match over two modes) stay as they are: a third variant cost the instance paths 3 to 8
/// instructions per call under `.ci/count`, over their budgets.
pub struct SerializedAllocator {
    heap: Heap<SerialGilHeap>,
}

impl fmt::Debug for SerializedAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerializedAllocator")
            .field("geometry", self.geometry())
            .finish()
    }
}

impl SerializedAllocator {
    /// A new GIL-mode heap serialised by its caller. Refuses `config` as
    /// [`Allocator::with_config`] does.
    ///
    /// # Safety
    /// The caller serialises every call on the returned heap: `alloc`, `alloc_zeroed`,
    /// `realloc`, `free`, `free_owned`, `dealloc`, `usable_size`, `stats` and the drop. No two
    /// of them may run at once, from any threads, and each must happen before the next (a
    /// `Mutex` held across each call does both; so does CPython's GIL held across each call of
    /// the `PYMEM_DOMAIN_MEM` and `PYMEM_DOMAIN_OBJ` allocators, on a GIL build with one GIL per
    /// process). Only `mode`, `geometry`, `owns` and `pooled_limit` may be called without it.
    /// The heap has no `fork` protocol: a `fork` while another thread is inside a call is the
    /// caller's lock's business.
    pub unsafe fn new(config: Config) -> Result<SerializedAllocator, ConfigError> {
        // The only place a `SerialGilHeap` is built: the caller's contract above is what its
        // lock-free guard relies on (`gil`, *Serialised by the caller*).
        Ok(SerializedAllocator {
            heap: Heap::with_config(config)?,
        })
    }

    /// [`Mode::Gil`]: pymalloc's algorithms.
    pub fn mode(&self) -> Mode {
        self.heap.mode()
    }

    /// The geometry this heap was built with.
    pub fn geometry(&self) -> &Geometry {
        &self.heap.arenas.geo
    }

    /// As [`Allocator::pooled_limit`].
    pub fn pooled_limit(&self) -> usize {
        self.heap.pooled_limit()
    }

    /// As [`Allocator::owns`] (safe for any address, without the caller's lock).
    #[inline]
    pub fn owns(&self, ptr: *const u8) -> bool {
        self.heap.owns(ptr)
    }

    /// As [`Allocator::alloc`].
    ///
    /// # Safety
    /// As [`Allocator::alloc`], with the caller's lock held (see [`new`](Self::new)).
    #[inline]
    pub unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.heap.alloc(layout) }
    }

    /// As [`Allocator::alloc_zeroed`].
    ///
    /// # Safety
    /// As [`alloc`](Self::alloc).
    #[inline]
    pub unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.heap.alloc_zeroed(layout) }
    }

    /// As [`Allocator::usable_size`].
    ///
    /// # Safety
    /// As [`Allocator::usable_size`], with the caller's lock held.
    pub unsafe fn usable_size(&self, ptr: *const u8) -> usize {
        // SAFETY: forwarded contract.
        unsafe { self.heap.usable_size(ptr) }
    }

    /// As [`Allocator::realloc`].
    ///
    /// # Safety
    /// As [`Allocator::realloc`], with the caller's lock held.
    pub unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.heap.realloc(ptr, layout, new_size) }
    }

    /// As [`Allocator::free`].
    ///
    /// # Safety
    /// As [`Allocator::free`], with the caller's lock held.
    #[inline]
    pub unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: forwarded contract.
        unsafe { self.heap.free(ptr) }
    }

    /// As [`Allocator::free_owned`].
    ///
    /// # Safety
    /// As [`Allocator::free_owned`], with the caller's lock held.
    #[inline]
    pub unsafe fn free_owned(&self, ptr: *mut u8) -> bool {
        // SAFETY: forwarded contract.
        unsafe { self.heap.free_owned(ptr) }
    }

    /// As [`Allocator::dealloc`].
    ///
    /// # Safety
    /// As [`Allocator::dealloc`], with the caller's lock held.
    #[inline]
    pub unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.heap.free(ptr) }
    }

    /// A snapshot of the heap, as [`Allocator::stats`] takes it in GIL mode (without
    /// allocating).
    ///
    /// # Safety
    /// The caller's lock is held (see [`new`](Self::new)): without it the snapshot races with
    /// allocations.
    pub unsafe fn stats(&self) -> Stats {
        self.heap.stats()
    }
}

/// A handle's heap and its state in that heap's front-end.
#[derive(Clone, Copy)]
enum Local<'a> {
    Gil(&'a Heap<GilHeap>, <GilHeap as Front>::Local),
    Ft(&'a Heap<FtHeap>, <FtHeap as Front>::Local),
}

/// [`dispatch!`]'s arm for handles: `dispatch_local!(handle, h, l => expr)` binds the heap `h`
/// and the handle's state `l`.
macro_rules! dispatch_local {
    ($tc:expr, $h:ident, $l:ident => $e:expr) => {
        match $tc.local {
            Local::Gil($h, $l) => $e,
            Local::Ft($h, $l) => $e,
        }
    };
}

/// An explicit thread cache of an [`Allocator`] (see [`Allocator::thread_cache`]).
///
/// It may move between threads but is used by one at a time (`&mut self`). Blocks it allocates
/// may be freed anywhere (through the heap, another handle, or this one); blocks of other
/// caches freed through it are remote frees.
pub struct ThreadCache<'a> {
    heap: &'a Allocator,
    local: Local<'a>,
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
        // SAFETY: forwarded contract; the handle's state is ours (&mut self).
        dispatch_local!(self, h, l => unsafe { h.alloc_with(layout, l) })
    }

    /// Frees `ptr` (any block of the heap, or a foreign pointer, as [`Allocator::free`]).
    ///
    /// # Safety
    /// As [`Allocator::free`].
    #[inline]
    pub unsafe fn free(&mut self, ptr: *mut u8) {
        // SAFETY: forwarded contract; the handle's state is ours (&mut self).
        dispatch_local!(self, h, l => unsafe { h.free_with(ptr, l) })
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
        // SAFETY: the handle's state is ours (&mut self) and live until drop.
        dispatch_local!(self, h, l => unsafe { h.front.flush_local(l, &h.arenas) })
    }

    /// Gives memory back now, as [`Allocator::trim`] does, with this cache as the caller's:
    /// its batched remote frees are published and its pools whose blocks were all freed
    /// return to their arenas. Returns the number of pools returned to arenas.
    pub fn trim(&mut self) -> usize {
        // SAFETY: as in flush.
        dispatch_local!(self, h, l => unsafe { h.front.trim_local(l, &h.arenas) })
    }

    /// Pools this cache owns now (0 in GIL mode).
    pub fn pools(&self) -> usize {
        // SAFETY: as in flush.
        dispatch_local!(self, h, l => unsafe { h.front.local_pools(l) })
    }
}

impl Drop for ThreadCache<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle's state is ours and dies with the handle.
        dispatch_local!(self, h, l => unsafe { h.front.drop_local(l, &h.arenas) })
    }
}
