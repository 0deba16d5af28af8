//! The allocators under comparison, behind one trait so that workload code is written once and
//! monomorphised per allocator (no `dyn` on the hot path).
//!
//! Owns the [`BenchAlloc`] trait, the [`AllocName`] list of allocators, the [`Heap`] that holds
//! one instance, and the [`with_heap!`](crate::with_heap) macro that dispatches on it.

use std::alloc::{GlobalAlloc, Layout, System};

use ftmalloc::{Allocator, FtMalloc, Mode};
use mimalloc::MiMalloc;
use tikv_jemallocator::Jemalloc;

/// An allocator a workload can run on: the `GlobalAlloc` contract, called as plain methods.
pub trait BenchAlloc: Sync {
    /// Allocates a block for `layout` (size > 0); null when memory is exhausted.
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`]: `layout` has a non-zero size.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8;

    /// Frees a block.
    ///
    /// # Safety
    /// As [`GlobalAlloc::dealloc`]: `ptr` is live, came from `alloc` of this allocator with the
    /// same `layout`.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout);
}

impl BenchAlloc for Allocator {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract (non-zero size); ftmalloc accepts any layout.
        unsafe { Allocator::alloc(self, layout) }
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract: ptr is a live block of this heap.
        unsafe { Allocator::dealloc(self, ptr, layout) }
    }
}

/// Implements [`BenchAlloc`] for `GlobalAlloc` types by forwarding.
macro_rules! via_global_alloc {
    ($($t:ty),*) => {$(
        impl BenchAlloc for $t {
            #[inline(always)]
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                // SAFETY: forwarded contract (non-zero size).
                unsafe { GlobalAlloc::alloc(self, layout) }
            }

            #[inline(always)]
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: forwarded contract: ptr came from this allocator with this layout.
                unsafe { GlobalAlloc::dealloc(self, ptr, layout) }
            }
        }
    )*};
}

via_global_alloc!(System, MiMalloc, Jemalloc, FtMalloc);

/// The allocators the harness knows, in the order tables and plots show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AllocName {
    /// ftmalloc, `Mode::Gil`: pymalloc under one lock.
    Gil,
    /// ftmalloc, free-threaded mode (`Mode::FreeThreaded`).
    Ft,
    /// The C library's allocator (`std::alloc::System`).
    System,
    /// mimalloc (`mimalloc::MiMalloc`).
    Mimalloc,
    /// jemalloc (`tikv_jemallocator::Jemalloc`).
    Jemalloc,
}

impl AllocName {
    /// Every allocator, in display order.
    pub const ALL: [AllocName; 5] = [
        AllocName::Gil,
        AllocName::Ft,
        AllocName::System,
        AllocName::Mimalloc,
        AllocName::Jemalloc,
    ];

    /// The name used on the command line, in CSV and in legends.
    pub fn name(self) -> &'static str {
        match self {
            AllocName::Gil => "gil",
            AllocName::Ft => "ft",
            AllocName::System => "system",
            AllocName::Mimalloc => "mimalloc",
            AllocName::Jemalloc => "jemalloc",
        }
    }

    /// The allocator called `name`, if any.
    pub fn from_name(name: &str) -> Option<AllocName> {
        AllocName::ALL.into_iter().find(|a| a.name() == name)
    }

    /// One line on what it is.
    pub fn describe(self) -> &'static str {
        match self {
            AllocName::Gil => "ftmalloc, GIL mode: pymalloc's algorithms under one lock",
            AllocName::Ft => "ftmalloc, free-threaded mode: thread caches, lock-free",
            AllocName::System => "the C library's malloc (std::alloc::System)",
            AllocName::Mimalloc => "mimalloc (mimalloc::MiMalloc)",
            AllocName::Jemalloc => "jemalloc (tikv_jemallocator::Jemalloc)",
        }
    }

    /// The allocator as a program gets it, for a process that runs one cell: for ftmalloc the
    /// process-wide heap behind `FtMalloc` (its threads bind to caches through the
    /// thread-local, batch their remote frees, and give their caches up at thread exit), in
    /// the mode set here through `FTMALLOC_MODE` before its first use; the others as
    /// [`instantiate`](Self::instantiate). `None` when the process-wide heap was already built
    /// in another mode.
    pub fn instantiate_process_wide(self) -> Option<Heap> {
        let mode = match self {
            AllocName::Gil => Mode::Gil,
            AllocName::Ft => Mode::FreeThreaded,
            _ => return Some(self.instantiate()),
        };
        // The caller is single-threaded here (the harness child, before any worker starts).
        std::env::set_var("FTMALLOC_MODE", mode.name());
        (FtMalloc::instance().mode() == mode).then_some(Heap::ProcessWide(FtMalloc))
    }

    /// A fresh instance (for ftmalloc, a heap of its own).
    pub fn instantiate(self) -> Heap {
        match self {
            AllocName::Gil => Heap::Gil(Allocator::new(Mode::Gil)),
            AllocName::Ft => Heap::Ft(Allocator::new(Mode::FreeThreaded)),
            AllocName::System => Heap::System(System),
            AllocName::Mimalloc => Heap::Mimalloc(MiMalloc),
            AllocName::Jemalloc => Heap::Jemalloc(Jemalloc),
        }
    }
}

/// One allocator instance of each kind. Workloads are generic over [`BenchAlloc`]; the
/// [`with_heap!`](crate::with_heap) macro picks the concrete type once per run, outside the timed loops.
pub enum Heap {
    /// ftmalloc in GIL mode.
    Gil(Allocator),
    /// ftmalloc in free-threaded mode.
    Ft(Allocator),
    /// `std::alloc::System`.
    System(System),
    /// mimalloc.
    Mimalloc(MiMalloc),
    /// jemalloc.
    Jemalloc(Jemalloc),
    /// ftmalloc's process-wide heap, in either mode.
    ProcessWide(FtMalloc),
}

/// `with_heap!(heap, a => expr)` evaluates `expr` with `a` bound to the concrete allocator
/// inside `heap` (a `&`[`Heap`](crate::allocs::Heap)), so `expr` is monomorphised once per
/// allocator type.
#[macro_export]
macro_rules! with_heap {
    ($heap:expr, $a:ident => $body:expr) => {
        match $heap {
            $crate::allocs::Heap::Gil($a) | $crate::allocs::Heap::Ft($a) => $body,
            $crate::allocs::Heap::System($a) => $body,
            $crate::allocs::Heap::Mimalloc($a) => $body,
            $crate::allocs::Heap::Jemalloc($a) => $body,
            $crate::allocs::Heap::ProcessWide($a) => $body,
        }
    };
}
