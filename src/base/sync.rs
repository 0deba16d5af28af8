//! The synchronisation facade: every atomic, `UnsafeCell` and thread-local of the
//! free-threaded mode comes from here, so that `--cfg loom` swaps them all for loom's
//! model-checked versions (sharded-slab's `src/sync.rs` and tokio's `src/loom/` do the same).
//!
//! Normal builds re-export `core`/`std`; loom builds re-export `loom`. The GIL mode's one lock
//! and the arena map (see its module docs) are deliberately outside the facade.
//!
//! # Plain memory the protocols publish
//! The protocols hand over more than atomics: a remote freer writes a free block's link and the
//! owner reads it after collecting the remote list; a pool's new owner reads the header fields
//! (`freeblock`, `nextpool`, `ref_count`, `nextoffset`) its previous owner wrote. Those are plain
//! memory inside mappings (blocks and headers are not Rust objects loom could construct), so
//! every access to them goes through [`read_plain`] / [`write_plain`] (or the pool header's
//! accessors built on them). Normally they are a plain read or write. Under loom each also
//! touches a `loom::cell::UnsafeCell` kept for that address (a shadow cell: `with` for a read,
//! `with_mut` for a write), so loom checks that every read of plain memory happens after the
//! write it reads and every write after the accesses it overwrites: it reports "Causality
//! violation" where a weakened ordering leaves such an access unsynchronised. Models call
//! [`loom_shadow_reset`] at the start of every execution (`tests/loom.rs` does, in `model`).

#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use core::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Declares a thread-local: const-initialised `std::thread_local!` normally, `loom::thread_local!`
/// under loom (which has no const form).
#[cfg(not(loom))]
#[allow(unused_macros)] // x86-64 Linux keeps its one hot thread-local in an initial-exec slot
macro_rules! ft_thread_local {
    (static $name:ident: $t:ty = $e:expr;) => {
        std::thread_local!(static $name: $t = const { $e });
    };
}
#[cfg(loom)]
macro_rules! ft_thread_local {
    (static $name:ident: $t:ty = $e:expr;) => {
        loom::thread_local!(static $name: $t = $e);
    };
}
#[allow(unused_imports)]
pub(crate) use ft_thread_local;

/// Reads plain memory that a protocol publishes (see the module docs).
///
/// # Safety
/// As [`core::ptr::read`].
#[inline(always)]
pub(crate) unsafe fn read_plain<T: Copy>(p: *const T) -> T {
    #[cfg(loom)]
    shadow::access(p as usize, false);
    // SAFETY: forwarded contract.
    unsafe { p.read() }
}

/// Writes plain memory that a protocol publishes (see the module docs).
///
/// # Safety
/// As [`core::ptr::write`].
#[inline(always)]
pub(crate) unsafe fn write_plain<T: Copy>(p: *mut T, v: T) {
    #[cfg(loom)]
    shadow::access(p as usize, true);
    // SAFETY: forwarded contract.
    unsafe { p.write(v) }
}

/// An `UnsafeCell` for plain shared fields, whose hand-overs loom can see.
///
/// Normally it is `core::cell::UnsafeCell`. [`with_mut_raw`](Self::with_mut_raw) runs a closure
/// on the contents and, under loom, records the write on the address's shadow cell (as
/// [`write_plain`] does), so a field handed from one thread to another through this cell is
/// checked for the ordering that publishes it. [`get_raw`](Self::get_raw) is the untracked
/// pointer, for an owner's long-lived use after a tracked hand-over.
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

impl<T> UnsafeCell<T> {
    /// A cell holding `v`.
    #[cfg_attr(not(loom), allow(dead_code))]
    pub(crate) const fn new(v: T) -> UnsafeCell<T> {
        UnsafeCell(core::cell::UnsafeCell::new(v))
    }

    /// The contents' address, without a reference to the cell (the pointer keeps `this`'s
    /// provenance) and untracked.
    #[inline(always)]
    pub(crate) const fn get_raw(this: *const UnsafeCell<T>) -> *mut T {
        core::cell::UnsafeCell::raw_get(this.cast::<core::cell::UnsafeCell<T>>())
    }

    /// Runs `f` on the contents as a write that hands them over (tracked under loom).
    ///
    /// # Safety
    /// `this` points to a live cell whose contents no other thread uses during `f`.
    #[inline(always)]
    pub(crate) unsafe fn with_mut_raw<R>(
        this: *const UnsafeCell<T>,
        f: impl FnOnce(*mut T) -> R,
    ) -> R {
        let p = Self::get_raw(this);
        track_plain(p, true);
        f(p)
    }
}

/// Records an access to plain memory written or read through an atomic type for another
/// reason (the header fields statistics read racily: `ref_count`, `nextoffset`). A no-op
/// outside loom.
#[inline(always)]
pub(crate) fn track_plain<T>(_p: *const T, _write: bool) {
    #[cfg(loom)]
    shadow::access(_p as usize, _write);
}

/// Records a use of the arena mapped at `base` (a write: unmapping it), so that loom checks that
/// every reader of an arena's memory (a claimer, a statistics walk) is ordered before the
/// arena is unmapped. The cell's key is `base + 1`, an address no tracked field has. A no-op
/// outside loom.
#[inline(always)]
pub(crate) fn track_mapping(_base: usize, _write: bool) {
    #[cfg(loom)]
    shadow::access(_base + 1, _write);
}

/// Forgets the shadow cells of `[addr, addr + len)`: the range is unmapped, and whatever is
/// mapped there next is new memory (the kernel orders a `munmap` before an `mmap` that reuses
/// its addresses, which loom cannot see). A no-op outside loom.
#[inline(always)]
pub(crate) fn forget_plain(_addr: usize, _len: usize) {
    #[cfg(loom)]
    {
        shadow::CELLS.with(|m| {
            m.borrow_mut()
                .retain(|&a, _| a < _addr || a >= _addr + _len)
        });
        shadow::BUILT.with(|m| m.borrow_mut().retain(|&a| a < _addr || a >= _addr + _len));
    }
}

/// Under loom, whether loom atomics were already constructed at `addr` in this execution (and
/// the range not unmapped since); records that they are now. Loom atomics are objects of the
/// execution, not bytes: memory that never held one (a fresh mapping's zeros) must be given one
/// by a constructing write before its first atomic access, where a normal build's zero bytes
/// already are valid atomics.
#[cfg(loom)]
pub(crate) fn loom_built(addr: usize) -> bool {
    shadow::BUILT.with(|m| !m.borrow_mut().insert(addr))
}

/// Forgets every shadow cell: call at the start of every loom execution (the cells of the last
/// one belong to a finished execution).
#[cfg(loom)]
#[doc(hidden)]
pub fn loom_shadow_reset() {
    shadow::CELLS.with(|m| m.borrow_mut().clear());
    shadow::BUILT.with(|m| m.borrow_mut().clear());
}

#[cfg(loom)]
mod shadow {
    use std::cell::RefCell;
    use std::collections::{HashMap, HashSet};

    std::thread_local! {
        // Loom runs every thread of a model on the test's OS thread (as coroutines), so one
        // OS-thread-local table serves them all. A loom `UnsafeCell` has no destructor that
        // touches the execution, so clearing the table between executions is sound.
        pub(super) static CELLS: RefCell<HashMap<usize, loom::cell::UnsafeCell<()>>> =
            RefCell::new(HashMap::new());
        // Addresses where loom atomics were constructed in this execution (see `loom_built`).
        pub(super) static BUILT: RefCell<HashSet<usize>> = RefCell::new(HashSet::new());
    }

    #[track_caller]
    pub(super) fn access(addr: usize, write: bool) {
        CELLS.with(|m| {
            let mut m = m.borrow_mut();
            // A cell created at its first access records that access's causality: the same
            // check loom makes for a cell constructed there.
            let cell = m
                .entry(addr)
                .or_insert_with(|| loom::cell::UnsafeCell::new(()));
            if write {
                cell.with_mut(|_| ());
            } else {
                cell.with(|_| ());
            }
        });
    }
}
