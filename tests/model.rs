//! Model-based property test of the `Allocator` API in every mode: random sequences of
//! `alloc` / `alloc_zeroed` / `dealloc` / `free` / `realloc` are run against a model of the live
//! blocks and their expected contents, on pymalloc's geometry and on a tiny one (2 KiB pools,
//! 4 pools per arena) where "pool full" and "arena empty" come every few steps.
//!
//! After every step: live blocks are disjoint (over their usable size), aligned, sized
//! (`usable_size >= requested`), routed as documented (pools serve exactly the requests of
//! 1..=small_limit bytes aligned to at most 16), zeroed when asked, and the statistics balance
//! (`total == mapped_bytes`, `blocks_in_use` == live blocks the heap `owns`). Contents are a
//! pattern derived from each block's id, checked whenever a block is freed or reallocated.
//!
//! `PROPTEST_CASES` overrides the number of cases (default 48, about 10 s in debug).

mod common;

use common::live::{self, Live};
use common::modes;
use ftmalloc::{Allocator, Config, Mode};
use proptest::prelude::*;
use std::alloc::Layout;

/// One step of a sequence. `block` picks a live block (modulo their number; with none live the
/// step is skipped).
#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align: usize,
    },
    AllocZeroed {
        size: usize,
        align: usize,
    },
    /// `dealloc` with the layout (`with_layout`) or `free` without it.
    Free {
        block: usize,
        with_layout: bool,
    },
    Realloc {
        block: usize,
        new_size: usize,
    },
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => 1..=512usize,
        1 => Just(0usize),
        3 => 513..=4096usize,
    ]
}

/// Sizes for `realloc`, whose contract (as `GlobalAlloc::realloc`) excludes zero.
fn new_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => 1..=512usize,
        3 => 513..=4096usize,
    ]
}

fn align() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => (0..=4u32).prop_map(|s| 1usize << s),
        1 => (5..=6u32).prop_map(|s| 1usize << s),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (size(), align()).prop_map(|(size, align)| Op::Alloc { size, align }),
        2 => (size(), align()).prop_map(|(size, align)| Op::AllocZeroed { size, align }),
        7 => (any::<usize>(), any::<bool>())
            .prop_map(|(block, with_layout)| Op::Free { block, with_layout }),
        4 => (any::<usize>(), new_size()).prop_map(|(block, new_size)| Op::Realloc { block, new_size }),
    ]
}

/// The model: the live blocks (`common::live`, shared with the fuzz target `heap_model`).
struct Model<'a> {
    live: Live<'a>,
}

/// The usable size of a pool block serving a request of `size` bytes (pymalloc's classes).
fn class_size(size: usize) -> usize {
    size.div_ceil(16) * 16
}

impl Model<'_> {
    fn alloc(&mut self, size: usize, align: usize, zeroed: bool) {
        let a = self.live.heap;
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a valid layout (zero size is allowed by Allocator::alloc); freed later.
        let p = unsafe {
            if zeroed {
                a.alloc_zeroed(layout)
            } else {
                a.alloc(layout)
            }
        };
        let id = self.live.new_id();
        let b = self.live.add(p, layout, id, None);
        if b.small {
            assert_eq!(
                b.extent,
                class_size(size),
                "{}: usable_size of {layout:?}",
                self.live.what
            );
        }
        if zeroed {
            // SAFETY: p is a fresh block of `size` readable bytes.
            let bytes = unsafe { std::slice::from_raw_parts(p, size) };
            assert!(
                bytes.iter().all(|&x| x == 0),
                "{}: alloc_zeroed({layout:?}) at {p:p} is not zeroed",
                self.live.what
            );
        }
        // SAFETY: p is a live block of `size` writable bytes.
        unsafe { live::fill(b.ptr, 0, size, id) };
    }

    fn free(&mut self, i: usize, with_layout: bool) {
        let a = self.live.heap;
        let b = self.live.take(i).expect("a live block");
        // SAFETY: b is live, of b.layout.size() readable bytes.
        unsafe { live::check(b.ptr, b.layout.size(), b.id, &self.live.what) };
        let p = b.ptr as *mut u8;
        // SAFETY: b is live and came from this heap with this layout.
        unsafe {
            if with_layout {
                a.dealloc(p, b.layout);
            } else {
                a.free(p);
            }
        }
    }

    fn realloc(&mut self, i: usize, new_size: usize) {
        let a = self.live.heap;
        let old = self.live.take(i).expect("a live block");
        let (p, layout) = (old.ptr as *mut u8, old.layout);
        // SAFETY: old is live, of layout.size() readable bytes.
        unsafe { live::check(old.ptr, layout.size(), old.id, &self.live.what) };
        // SAFETY: p is a live block of this heap.
        let old_usable = unsafe { a.usable_size(p) };
        // SAFETY: p is live with `layout` and is not used again (the model keeps q); new_size
        // is non-zero and, rounded up to the alignment, far from overflowing.
        let q = unsafe { a.realloc(p, layout, new_size) };
        let new_layout = Layout::from_size_align(new_size, layout.align()).unwrap();
        let what = &self.live.what;
        assert!(!q.is_null(), "{what}: realloc to {new_size} failed");
        let b = if old.small {
            // pymalloc keeps a block in place while the new size fits and is above 3/4 of it;
            // otherwise the new block is routed as a fresh request would be.
            let in_place = new_size <= old_usable && 4 * new_size > 3 * old_usable;
            if in_place {
                assert_eq!(q, p, "{what}: realloc {old_usable} -> {new_size} moved");
                // It keeps its class (and extent).
                let b = live::Block {
                    layout: new_layout,
                    ..old
                };
                self.live.push(b);
                b
            } else {
                let b = self.live.add(q, new_layout, old.id, None);
                if b.small {
                    assert_eq!(b.extent, class_size(new_size), "{}", self.live.what);
                }
                b
            }
        } else {
            // A foreign block stays with the allocator underneath.
            self.live.add(q, new_layout, old.id, Some(false))
        };
        let kept = layout.size().min(new_size);
        // SAFETY: b is live, of new_size bytes; its first `kept` bytes were copied.
        unsafe {
            live::check(b.ptr, kept, b.id, &self.live.what);
            live::fill(b.ptr, kept, new_size, b.id);
        }
    }

    /// Everything that must hold between steps.
    fn check(&self) {
        self.live.check_blocks();
        self.live.check_stats("step");
        let c = self.live.heap.stats().counters;
        let what = &self.live.what;
        assert_eq!(c.allocated_total - c.reclaimed, c.current, "{what}: {c:?}");
        assert!(c.current <= c.highwater, "{what}: {c:?}");
    }
}

fn run(mode: Mode, config: Config, ops: &[Op]) -> ftmalloc::Stats {
    let a = Allocator::with_config(mode, config).unwrap();
    let mut m = Model {
        live: Live::new(&a, format!("{mode} mode, {config:?}")),
    };
    for op in ops {
        match op {
            Op::Alloc { size, align } => m.alloc(*size, *align, false),
            Op::AllocZeroed { size, align } => m.alloc(*size, *align, true),
            Op::Free { block, with_layout } if !m.live.is_empty() => m.free(*block, *with_layout),
            Op::Realloc { block, new_size } if !m.live.is_empty() => m.realloc(*block, *new_size),
            Op::Free { .. } | Op::Realloc { .. } => {}
        }
        m.check();
    }
    while !m.live.is_empty() {
        m.free(m.live.len() - 1, true);
    }
    m.check();
    let s = a.stats();
    assert_eq!(
        s.blocks_in_use(),
        0,
        "{}: blocks left in use:\n{s}",
        m.live.what
    );
    // Every arena whose pools are all free is released, except one (pymalloc's rule). Thread
    // caches keep the current pool of each class they served (none in GIL mode), so each
    // arena mapped beyond one must hold such a pool.
    assert!(
        s.cached_pools <= s.num_classes * s.thread_caches,
        "{}: caches hold more than a pool per class:\n{s}",
        m.live.what
    );
    assert!(
        s.counters.current as usize <= 1 + s.cached_pools + s.abandoned_pools,
        "{}: empty arenas kept:\n{s}",
        m.live.what
    );
    s
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

/// 2 KiB pools (three 512-byte blocks each), 4 pools per arena.
const TINY: Config = Config::new(2048, 8192);

proptest! {
    // No regression file: a failure prints its minimal sequence, which can be pasted into a
    // plain test.
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_mode_matches_the_model(ops in prop::collection::vec(op(), 1..400)) {
        for mode in modes() {
            run(mode, Config::PYMALLOC, &ops);
            run(mode, TINY, &ops);
        }
    }
}

/// Long runs of allocations then frees on the tiny geometry: many pools fill and many arenas
/// empty (the random mix above keeps few blocks live at once).
#[test]
fn fill_then_drain_tiny_arenas() {
    for mode in modes() {
        let mut ops = Vec::new();
        for round in 0..4usize {
            for i in 0..300usize {
                let size = 1 + (i * 37 + round * 101) % 512;
                ops.push(Op::Alloc { size, align: 8 });
            }
            for i in 0..250usize {
                ops.push(Op::Free {
                    block: i * 7919 + round,
                    with_layout: i % 2 == 0,
                });
            }
        }
        let s = run(mode, TINY, &ops);
        assert!(
            s.counters.highwater >= 3 && s.counters.reclaimed >= 1,
            "{mode} mode: the sequence should map several arenas and release some:\n{s}"
        );
    }
}
