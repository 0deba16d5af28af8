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

#[cfg(all(test, not(loom)))]
mod tests {
    use core::ptr;
    use core::sync::atomic::{AtomicPtr, Ordering};

    #[test]
    fn pushes_from_threads_are_all_taken_once() {
        // Blocks linked through their first word, as GIL mode's deferred frees are.
        const PER: usize = if cfg!(miri) { 50 } else { 2_000 };
        let head = AtomicPtr::<usize>::new(ptr::null_mut());
        let mut nodes: Vec<Box<[usize; 2]>> = (0..4 * PER).map(|i| Box::new([0, i])).collect();
        let addrs: Vec<usize> = nodes.iter_mut().map(|b| b.as_mut_ptr() as usize).collect();
        std::thread::scope(|s| {
            for chunk in addrs.chunks(PER) {
                let head = &head;
                s.spawn(move || {
                    for &a in chunk {
                        let node = a as *mut usize;
                        let old = super::push(
                            head.load(Ordering::Relaxed),
                            |h| {
                                // SAFETY: the node is this thread's until the push lands.
                                unsafe { node.write(h as usize) };
                                node
                            },
                            |h, new| {
                                head.compare_exchange_weak(
                                    h,
                                    new,
                                    Ordering::Release,
                                    Ordering::Relaxed,
                                )
                            },
                        );
                        assert_ne!(old, node);
                    }
                });
            }
        });
        let mut seen = vec![false; 4 * PER];
        let mut n = head.swap(ptr::null_mut(), Ordering::Acquire);
        while !n.is_null() {
            // SAFETY: every node is a live box whose first word links the next.
            let (next, id) = unsafe { (n.read() as *mut usize, n.add(1).read()) };
            assert!(!seen[id], "node {id} taken twice");
            seen[id] = true;
            n = next;
        }
        assert!(seen.iter().all(|&s| s), "a pushed node was lost");
        drop(nodes);
    }
}
