//! The take-all Treiber stack, written once: pushes are a compare-exchange loop, removal takes
//! the whole stack with one `swap` (so there is no pop, and no ABA: a node is never removed
//! while another thread may be reading its link to compare-exchange past it).
//!
//! The stacks in the crate differ in their word (a plain pointer, or a pointer with a count
//! and flags packed in: the pool's remote list) and in where a node keeps its link (an atomic
//! header field, or a free block's first word), so [`push`] takes both as closures and keeps
//! only what they share: the retry loop and its back-off.
//!
//! Orderings (each caller's `exchange` states them): a push's successful compare-exchange is a
//! `Release` (it publishes the node's link and whatever the pusher wrote before), and the
//! take-all `swap` is an `Acquire` (it sees every link of the chain it takes).
//!
//! Back-off: [`crossbeam_utils::Backoff::spin`] after a failed compare-exchange (bounded
//! exponential spinning; never a yield or a sleep, so the loop stays lock-free: a failure means
//! another thread's operation succeeded).

use crossbeam_utils::Backoff;

/// Pushes onto a take-all stack whose head word is `current` (as last loaded): `link(word)`
/// writes the new node's link for the head `word` and returns the new head word;
/// `exchange(word, new)` is the head's weak compare-exchange. Retries, with back-off, until an
/// exchange succeeds; returns the head word it replaced.
#[inline(always)]
pub(crate) fn push<W: Copy>(
    mut current: W,
    mut link: impl FnMut(W) -> W,
    mut exchange: impl FnMut(W, W) -> Result<W, W>,
) -> W {
    let backoff = Backoff::new();
    loop {
        let new = link(current);
        match exchange(current, new) {
            Ok(_) => return current,
            Err(now) => {
                current = now;
                backoff.spin();
            }
        }
    }
}
