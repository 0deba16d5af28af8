//! The live-block model shared by the model-based property test (`tests/model.rs`, through
//! `tests/common`) and the fuzz target `heap_model` (`fuzz/fuzz_targets/heap_model.rs`, which
//! includes this file with `#[path]`): the blocks a sequence of calls has left live, each with
//! its expected contents (a pattern derived from its id), and the checks every block and the
//! heap's statistics must pass. Only `ftmalloc` and `std`: the fuzz crate has nothing else.
#![allow(dead_code)]

use ftmalloc::Allocator;
use std::alloc::Layout;
use std::collections::BTreeMap;

/// Expected byte `i` of the block with id `id`.
pub fn pattern(id: u64, i: usize) -> u8 {
    let h = (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
    h.wrapping_add((i as u8).wrapping_mul(7)) ^ (i >> 8) as u8
}

/// Writes the pattern of `id` into bytes `from..to` of the block at `ptr`.
///
/// # Safety
/// `ptr` is a live block of at least `to` writable bytes.
pub unsafe fn fill(ptr: usize, from: usize, to: usize, id: u64) {
    for i in from..to {
        // SAFETY: i < to, inside the live block (the contract).
        unsafe { *(ptr as *mut u8).add(i) = pattern(id, i) };
    }
}

/// Checks bytes `0..len` of the block at `ptr` against the pattern of `id`.
///
/// # Safety
/// `ptr` is a live block of at least `len` readable bytes.
pub unsafe fn check(ptr: usize, len: usize, id: u64, what: &str) {
    for i in 0..len {
        // SAFETY: i < len, inside the live block (the contract).
        let got = unsafe { *(ptr as *const u8).add(i) };
        assert_eq!(
            got,
            pattern(id, i),
            "{what}: byte {i} of block #{id} at {ptr:#x} changed while live"
        );
    }
}

/// A live block of the model.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    /// Its address.
    pub ptr: usize,
    /// The layout it was last requested (or reallocated) with.
    pub layout: Layout,
    /// Its id: its contents are the pattern of this id.
    pub id: u64,
    /// The bytes it covers (its usable size when recorded, at least 1): the overlap check's
    /// extent, and for a pool block the usable size it must keep while live.
    pub extent: usize,
    /// Served from the heap's pools.
    pub small: bool,
}

/// The live blocks of one heap.
pub struct Live<'a> {
    /// The heap under test.
    pub heap: &'a Allocator,
    /// Names the heap in failure messages.
    pub what: String,
    /// The live blocks, in no particular order.
    pub blocks: Vec<Block>,
    /// start -> end of every live block's extent.
    spans: BTreeMap<usize, usize>,
    next_id: u64,
}

impl<'a> Live<'a> {
    /// No block live yet.
    pub fn new(heap: &'a Allocator, what: String) -> Live<'a> {
        Live {
            heap,
            what,
            blocks: Vec::new(),
            spans: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// A fresh block id (never 0).
    pub fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Blocks live.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// No block live.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Is a request of `layout` served from the pools (1..=small_limit bytes, alignment <= 16)?
    pub fn is_small(&self, layout: Layout) -> bool {
        (1..=self.heap.geometry().small_limit).contains(&layout.size()) && layout.align() <= 16
    }

    /// Checks a block just returned for `layout` (non-null, aligned, from the pools exactly
    /// when `small`, by default when the request is small; `usable_size >= size`; disjoint
    /// from every live block) and records it with id `id`. Contents are the caller's.
    pub fn add(&mut self, ptr: *mut u8, layout: Layout, id: u64, small: Option<bool>) -> Block {
        let what = &self.what;
        assert!(!ptr.is_null(), "{what}: {layout:?} returned null");
        let p = ptr as usize;
        assert_eq!(
            p % layout.align(),
            0,
            "{what}: {p:#x} misaligned for {layout:?}"
        );
        let small = small.unwrap_or_else(|| self.is_small(layout));
        assert_eq!(
            self.heap.owns(ptr),
            small,
            "{what}: {p:#x} for {layout:?} routed to the wrong allocator"
        );
        // SAFETY: a live block of this heap (or of the allocator underneath, through it).
        let usable = unsafe { self.heap.usable_size(ptr) };
        assert!(
            usable >= layout.size(),
            "{what}: usable_size {usable} < requested {layout:?}"
        );
        let b = Block {
            ptr: p,
            layout,
            id,
            extent: usable.max(1),
            small,
        };
        self.push(b);
        b
    }

    /// Records `b` (a block that stays live, as after a `realloc` in place), checking that it
    /// overlaps no live block.
    pub fn push(&mut self, b: Block) {
        let (start, end) = (b.ptr, b.ptr + b.extent);
        if let Some((&s, &e)) = self.spans.range(..end).next_back() {
            assert!(
                e <= start,
                "{}: block #{} [{start:#x}, {end:#x}) overlaps a live block [{s:#x}, {e:#x})",
                self.what,
                b.id
            );
        }
        self.spans.insert(start, end);
        self.blocks.push(b);
    }

    /// Removes and returns live block `i % len`, or `None` when nothing is live.
    pub fn take(&mut self, i: usize) -> Option<Block> {
        if self.blocks.is_empty() {
            return None;
        }
        let b = self.blocks.swap_remove(i % self.blocks.len());
        self.spans.remove(&b.ptr);
        Some(b)
    }

    /// Live blocks served from the pools.
    pub fn small_live(&self) -> usize {
        self.blocks.iter().filter(|b| b.small).count()
    }

    /// Every live block still answers as recorded: `usable_size >= size`, aligned, owned by
    /// the heap exactly when small, and a pool block 16-aligned with its usable size unchanged.
    pub fn check_blocks(&self) {
        let what = &self.what;
        for b in &self.blocks {
            // SAFETY: b is live and came from this heap (or the allocator underneath).
            let usable = unsafe { self.heap.usable_size(b.ptr as *mut u8) };
            assert!(
                usable >= b.layout.size(),
                "{what}: usable_size {usable} < requested {:?}",
                b.layout
            );
            assert_eq!(b.ptr % b.layout.align(), 0, "{what}");
            assert_eq!(self.heap.owns(b.ptr as *const u8), b.small, "{what}: {b:?}");
            if b.small {
                assert_eq!(b.ptr % 16, 0, "{what}: pool block not 16-aligned");
                assert_eq!(usable, b.extent, "{what}: usable_size of {:?}", b.layout);
            }
        }
    }

    /// The heap's statistics balance (`total == mapped_bytes`) and count the model's live
    /// pool blocks.
    pub fn check_stats(&self, when: &str) {
        let s = self.heap.stats();
        assert_eq!(
            s.blocks_in_use(),
            self.small_live(),
            "{} ({when}): stats count {} blocks in use, the model {}:\n{s}",
            self.what,
            s.blocks_in_use(),
            self.small_live()
        );
        assert_eq!(
            s.total(),
            s.mapped_bytes(),
            "{} ({when}): stats do not balance:\n{s}",
            self.what
        );
    }
}
