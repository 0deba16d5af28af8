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

use common::modes;
use ftmalloc::{Allocator, Config, Mode};
use proptest::prelude::*;
use std::alloc::Layout;
use std::collections::BTreeMap;

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

/// Expected byte `i` of the block with id `id`.
fn pattern(id: u64, i: usize) -> u8 {
    let h = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56;
    (h as u8).wrapping_add((i as u8).wrapping_mul(7)) ^ (i >> 8) as u8
}

/// A live block of the model.
struct Block {
    ptr: *mut u8,
    layout: Layout,
    id: u64,
    /// `usable_size` expected of a pool block: the class of the request, or the old block's
    /// after a `realloc` in place.
    class_size: usize,
}

struct Model<'a> {
    a: &'a Allocator,
    what: String,
    live: Vec<Block>,
    next_id: u64,
}

impl Model<'_> {
    /// Fills bytes `from..to` of `b` with its pattern.
    fn fill(&self, b: &Block, from: usize, to: usize) {
        for i in from..to {
            // SAFETY: i < layout.size() of a live block, which is writable.
            unsafe { *b.ptr.add(i) = pattern(b.id, i) };
        }
    }

    /// Checks bytes `0..len` of `b` against its pattern.
    fn check_contents(&self, b: &Block, len: usize) {
        for i in 0..len {
            // SAFETY: i < layout.size() of a live block, which is readable.
            let got = unsafe { *b.ptr.add(i) };
            assert_eq!(
                got,
                pattern(b.id, i),
                "{}: byte {i} of block #{} at {:p} ({:?}) changed while live",
                self.what,
                b.id,
                b.ptr,
                b.layout
            );
        }
    }

    /// Is a block of `layout` expected to come from a pool?
    fn small(&self, layout: Layout) -> bool {
        (1..=self.a.geometry().small_limit).contains(&layout.size()) && layout.align() <= 16
    }

    fn check_fresh(&self, p: *mut u8, layout: Layout) {
        assert!(!p.is_null(), "{}: {layout:?} returned null", self.what);
        assert_eq!(
            p as usize % layout.align(),
            0,
            "{}: {p:p} misaligned for {layout:?}",
            self.what
        );
        assert_eq!(
            self.a.owns(p),
            self.small(layout),
            "{}: {p:p} for {layout:?} routed to the wrong allocator",
            self.what
        );
    }

    fn alloc(&mut self, size: usize, align: usize, zeroed: bool) {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a valid layout (zero size is allowed by Allocator::alloc); freed later.
        let p = unsafe {
            if zeroed {
                self.a.alloc_zeroed(layout)
            } else {
                self.a.alloc(layout)
            }
        };
        self.check_fresh(p, layout);
        if zeroed {
            // SAFETY: p is a fresh block of `size` readable bytes.
            let bytes = unsafe { std::slice::from_raw_parts(p, size) };
            assert!(
                bytes.iter().all(|&x| x == 0),
                "{}: alloc_zeroed({layout:?}) at {p:p} is not zeroed",
                self.what
            );
        }
        let b = Block {
            ptr: p,
            layout,
            id: self.next_id,
            class_size: size.div_ceil(16) * 16,
        };
        self.next_id += 1;
        self.fill(&b, 0, size);
        self.live.push(b);
    }

    fn free(&mut self, i: usize, with_layout: bool) {
        let b = self.live.swap_remove(i);
        self.check_contents(&b, b.layout.size());
        // SAFETY: b is live and came from this heap with this layout.
        unsafe {
            if with_layout {
                self.a.dealloc(b.ptr, b.layout);
            } else {
                self.a.free(b.ptr);
            }
        }
    }

    fn realloc(&mut self, i: usize, new_size: usize) {
        let old = &self.live[i];
        let (p, layout, id) = (old.ptr, old.layout, old.id);
        self.check_contents(old, layout.size());
        let (was_ours, class_size) = (self.a.owns(p), old.class_size);
        // SAFETY: p is a live block of this heap.
        let old_usable = unsafe { self.a.usable_size(p) };
        // SAFETY: p is live with `layout` and is not used again (the model keeps q); new_size
        // is non-zero and, rounded up to the alignment, far from overflowing.
        let q = unsafe { self.a.realloc(p, layout, new_size) };
        let new_layout = Layout::from_size_align(new_size, layout.align()).unwrap();
        assert!(!q.is_null(), "{}: realloc to {new_size} failed", self.what);
        assert_eq!(
            q as usize % layout.align(),
            0,
            "{}: realloc misaligned",
            self.what
        );
        if was_ours {
            // pymalloc keeps a block in place while the new size fits and is above 3/4 of it;
            // otherwise the new block is routed as a fresh request would be.
            let in_place = new_size <= old_usable && 4 * new_size > 3 * old_usable;
            if in_place {
                assert_eq!(
                    q, p,
                    "{}: realloc {old_usable} -> {new_size} moved",
                    self.what
                );
            } else {
                assert_eq!(self.a.owns(q), self.small(new_layout), "{}", self.what);
            }
        } else {
            assert!(!self.a.owns(q), "{}: a foreign block came home", self.what);
        }
        let b = Block {
            ptr: q,
            layout: new_layout,
            id,
            class_size: if q == p && was_ours {
                class_size
            } else {
                new_size.div_ceil(16) * 16
            },
        };
        let kept = layout.size().min(new_size);
        self.check_contents(&b, kept);
        self.fill(&b, kept, new_size);
        self.live[i] = b;
    }

    /// Everything that must hold between steps.
    fn check(&self) {
        let mut ranges: BTreeMap<usize, (usize, u64)> = BTreeMap::new();
        let mut ours = 0;
        for b in &self.live {
            let start = b.ptr as usize;
            // SAFETY: b is live and came from this heap (or the C library through it).
            let usable = unsafe { self.a.usable_size(b.ptr) };
            assert!(
                usable >= b.layout.size(),
                "{}: usable_size {usable} < requested {:?}",
                self.what,
                b.layout
            );
            assert_eq!(start % b.layout.align(), 0, "{}", self.what);
            if self.a.owns(b.ptr) {
                ours += 1;
                assert!(
                    self.small(b.layout),
                    "{}: {:?} in a pool",
                    self.what,
                    b.layout
                );
                assert_eq!(start % 16, 0, "{}: pool block not 16-aligned", self.what);
                assert_eq!(
                    usable, b.class_size,
                    "{}: usable_size of {:?}",
                    self.what, b.layout
                );
            }
            let end = start + usable.max(1);
            if let Some((&s, &(e, id))) = ranges.range(..end).next_back() {
                assert!(
                    e <= start || s >= end,
                    "{}: block #{} [{start:#x}, {end:#x}) overlaps block #{id} [{s:#x}, {e:#x})",
                    self.what,
                    b.id
                );
            }
            if let Some((&s, &(_, id))) = ranges.range(start..).next() {
                assert!(s >= end, "{}: block #{} overlaps #{id}", self.what, b.id);
            }
            ranges.insert(start, (end, b.id));
        }
        let s = self.a.stats();
        assert_eq!(
            s.total(),
            s.mapped_bytes(),
            "{}: stats do not balance:\n{s}",
            self.what
        );
        assert_eq!(
            s.blocks_in_use(),
            ours,
            "{}: stats count {} blocks in use, the model {ours}:\n{s}",
            self.what,
            s.blocks_in_use()
        );
        let c = s.counters;
        assert_eq!(
            c.allocated_total - c.reclaimed,
            c.current,
            "{}: {c:?}",
            self.what
        );
        assert!(c.current <= c.highwater, "{}: {c:?}", self.what);
    }
}

fn run(mode: Mode, config: Config, ops: &[Op]) -> ftmalloc::Stats {
    let a = Allocator::with_config(mode, config).unwrap();
    let mut m = Model {
        a: &a,
        what: format!("{mode} mode, {config:?}"),
        live: Vec::new(),
        next_id: 1,
    };
    for op in ops {
        match op {
            Op::Alloc { size, align } => m.alloc(*size, *align, false),
            Op::AllocZeroed { size, align } => m.alloc(*size, *align, true),
            Op::Free { block, with_layout } if !m.live.is_empty() => {
                let i = block % m.live.len();
                m.free(i, *with_layout)
            }
            Op::Realloc { block, new_size } if !m.live.is_empty() => {
                let i = block % m.live.len();
                m.realloc(i, *new_size)
            }
            Op::Free { .. } | Op::Realloc { .. } => {}
        }
        m.check();
    }
    while !m.live.is_empty() {
        m.free(m.live.len() - 1, true);
    }
    m.check();
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0, "{}: blocks left in use:\n{s}", m.what);
    // Every arena whose pools are all free is released, except one (pymalloc's rule). Thread
    // caches keep the current pool of each class they served (none in GIL mode), so each
    // arena mapped beyond one must hold such a pool.
    assert!(
        s.cached_pools <= s.num_classes * s.thread_caches,
        "{}: caches hold more than a pool per class:\n{s}",
        m.what
    );
    assert!(
        s.counters.current as usize <= 1 + s.cached_pools + s.abandoned_pools,
        "{}: empty arenas kept:\n{s}",
        m.what
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
