//! Prints the statistics table of each mode after a short mixed workload, as CPython's
//! `sys._debugmallocstats()` would.
//!
//! `cargo run --release --example stats`

use ftmalloc::{Allocator, Mode};
use std::alloc::Layout;

fn main() {
    for &name in Mode::NAMES {
        let heap = Allocator::new(Mode::from_name(name).expect("a mode of Mode::NAMES"));
        let mut live = Vec::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for i in 0..200_000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let layout = Layout::from_size_align(1 + (x % 512) as usize, 8).expect("valid layout");
            // SAFETY: non-zero layout; every block is freed once below or stays live.
            let p = unsafe { heap.alloc(layout) };
            live.push((p, layout));
            if i % 3 != 0 {
                let (p, l) = live.swap_remove((x >> 32) as usize % live.len());
                // SAFETY: a live block with its layout, freed once.
                unsafe { heap.dealloc(p, l) };
            }
        }
        println!("{}", heap.stats());
        for (p, l) in live {
            // SAFETY: live blocks, freed once.
            unsafe { heap.dealloc(p, l) };
        }
    }
}
