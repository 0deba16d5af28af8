//! The free-threaded mode's one wait: `fork`'s prepare handler waiting until no arena release
//! is in flight on another thread (the fork gate, `central`'s protocol step 8). Nothing else
//! calls it: no allocation, free or statistics walk reaches this file, which is why
//! `tests/no_lock.rs` names it as off the free-threaded path.

use crossbeam_utils::Backoff;

/// Spins, then yields, until `done()` holds (a release is a few atomics and one `munmap`).
/// For `fork`'s prepare handler only.
pub(crate) fn wait_until(mut done: impl FnMut() -> bool) {
    let backoff = Backoff::new();
    while !done() {
        backoff.snooze();
    }
}
