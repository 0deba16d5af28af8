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

// The layers, bottom to top: `base` (what everything needs), `layout` (what both modes share,
// and the `Front` seam), the front-ends `gil` and `ft` side by side, the facade `heap`, the
// process shell `global`. No module imports one above it and `gil` and `ft` never import each
// other (tests/layers.rs checks both).
mod base;
mod ft;
mod gil;
mod global;
mod heap;
#[cfg(not(loom))]
mod heaps;
mod layout;

pub use base::diag;
#[cfg(loom)]
#[doc(hidden)]
pub use base::sync::loom_shadow_reset;
pub use global::{FtMalloc, DEFAULT_MODE};
pub use heap::{Allocator, SerializedAllocator, ThreadCache};
pub use layout::config::{Config, ConfigError};
pub use layout::geometry::Geometry;
pub use layout::large::use_glibc_internal_allocator;
pub use layout::size_class;
pub use layout::stats::{ArenaCounters, ClassStats, Stats};
pub use layout::Mode;

#[cfg(test)]
mod tests;
