//! The synchronisation facade: every atomic, `UnsafeCell` and thread-local of the
//! free-threaded mode comes from here, so that `--cfg loom` swaps them all for loom's
//! model-checked versions (sharded-slab's `src/sync.rs` and tokio's `src/loom/` do the same).
//!
//! Normal builds re-export `core`/`std`; loom builds re-export `loom`. The GIL mode's one lock
//! and the arena map (see its module docs) are deliberately outside the facade.

#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use core::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Declares a thread-local: const-initialised `std::thread_local!` normally, `loom::thread_local!`
/// under loom (which has no const form).
#[cfg(not(loom))]
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
pub(crate) use ft_thread_local;
