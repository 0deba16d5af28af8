//! Helpers shared by integration tests (a module of each test that declares `mod common;`).

use ftmalloc::Allocator;
use std::alloc::Layout;
use std::sync::mpsc::Sender;

/// A debug-mode workload of one producer thread: `iters` allocations of 1..=400 bytes, each
/// filled; every third block is sent (in batches of 64) to a thread that frees it, the others
/// are freed here. Used to check that debug mode raises no false alarm across threads.
pub fn produce_and_hand_over(a: &Allocator, t: usize, iters: usize, tx: Sender<Vec<usize>>) {
    let mut keep = Vec::new();
    for i in 0..iters {
        let n = 1 + (i * 31 + t) % 400;
        let layout = Layout::from_size_align(n, 8).unwrap();
        // SAFETY: a non-zero layout; the block is freed below or by the receiver.
        let p = unsafe { a.alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: n bytes are ours.
        unsafe { std::ptr::write_bytes(p, 0x11, n) };
        if i % 3 == 0 {
            keep.push(p as usize);
            if keep.len() == 64 {
                tx.send(std::mem::take(&mut keep)).unwrap();
            }
        } else {
            // SAFETY: a live block, freed once.
            unsafe { a.free(p) };
        }
    }
    tx.send(keep).unwrap();
}
