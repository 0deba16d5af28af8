//! The arena map: "is this address inside one of our arenas, and which one?" in O(1) for any
//! address, without reading memory that may be unmapped.
//!
//! Like CPython 3.10+'s `arena_map_root` radix tree, the map is keyed by the address bits above
//! the arena size. With 48-bit user addresses and 1 MiB arenas the key has 28 bits, split into a
//! root of `2^14` leaf pointers and leaves of `2^14` entries. Both are anonymous mappings: the
//! root is mapped when the allocator is built, a leaf when its first arena is registered; the
//! kernel backs only the pages that are touched, so the map costs a few pages in practice.
//!
//! An entry holds the arena's descriptor index plus one (zero: not ours). A lookup is two
//! acquire loads and never touches arena memory, so it is safe for foreign pointers, null,
//! and pointers into arenas that were unmapped.
//!
//! Invariants:
//! - an entry is set (release) before the arena's pools are handed to anyone, and cleared
//!   before the arena is unmapped, so a lookup of a live block always sees its arena;
//! - leaves are installed once with a compare-exchange and never freed before the map is
//!   dropped, so a reader holding a leaf pointer never reads freed memory.
//!
//! The map uses `core::sync::atomic` directly, not the `crate::base::sync` facade: its protocol is
//! publish-once per arena and its entries live in zero-filled mappings, which are valid
//! `core` atomics but not valid loom objects. Loom models order their arenas through the
//! arena descriptors, which do go through the facade.

use crate::base::os;
use crate::layout::geometry::ADDRESS_BITS;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

pub(crate) struct ArenaMap {
    root: *mut AtomicPtr<AtomicUsize>,
    arena_shift: u32,
    leaf_bits: u32,
    /// `(1 << leaf_bits) - 1`, kept so a lookup does not rebuild it.
    leaf_mask: usize,
    root_len: usize,
}

// SAFETY: all shared state is reached through atomics; the raw root pointer is immutable after
// construction and points to a mapping owned by the map.
unsafe impl Send for ArenaMap {}
// SAFETY: as above.
unsafe impl Sync for ArenaMap {}

impl ArenaMap {
    /// A map for arenas of `1 << arena_shift` bytes. Returns `None` if the root cannot be mapped.
    pub(crate) fn new(arena_shift: u32) -> Option<ArenaMap> {
        let key_bits = ADDRESS_BITS - arena_shift;
        let root_bits = key_bits / 2;
        let leaf_bits = key_bits - root_bits;
        let root_len = 1usize << root_bits;
        let bytes = round_to_page(root_len * core::mem::size_of::<usize>());
        let root = os::map(bytes).cast::<AtomicPtr<AtomicUsize>>();
        if root.is_null() {
            return None;
        }
        Some(ArenaMap {
            root,
            arena_shift,
            leaf_bits,
            leaf_mask: (1 << leaf_bits) - 1,
            root_len,
        })
    }

    #[inline(always)]
    fn split(&self, addr: usize) -> Option<(usize, usize)> {
        if addr >> ADDRESS_BITS != 0 {
            return None;
        }
        let key = addr >> self.arena_shift;
        Some((key >> self.leaf_bits, key & self.leaf_mask))
    }

    /// The descriptor index of the arena containing `addr`, if it is one of ours.
    #[inline(always)]
    pub(crate) fn lookup(&self, addr: usize) -> Option<usize> {
        let (hi, lo) = self.split(addr)?;
        // SAFETY: `split` of this map.
        unsafe { self.lookup_split(hi, lo) }
    }

    /// [`lookup`](Self::lookup) for a map known to be built for arenas of `1 << arena_shift`
    /// bytes, with `arena_shift` a constant where it is inlined: the split takes no load.
    ///
    /// # Safety
    /// The map was built with `ArenaMap::new(arena_shift)`.
    #[inline(always)]
    pub(crate) unsafe fn lookup_for_shift(&self, addr: usize, arena_shift: u32) -> Option<usize> {
        debug_assert_eq!(arena_shift, self.arena_shift);
        if addr >> ADDRESS_BITS != 0 {
            return None;
        }
        let key_bits = ADDRESS_BITS - arena_shift;
        let leaf_bits = key_bits - key_bits / 2;
        let key = addr >> arena_shift;
        // SAFETY: the same split as `new` and `split` make for this shift (the contract).
        unsafe { self.lookup_split(key >> leaf_bits, key & ((1 << leaf_bits) - 1)) }
    }

    /// # Safety
    /// `(hi, lo)` is this map's split of an address below `2^ADDRESS_BITS`.
    #[inline(always)]
    unsafe fn lookup_split(&self, hi: usize, lo: usize) -> Option<usize> {
        // SAFETY: hi < root_len because addr < 2^ADDRESS_BITS; the root mapping lives as long as self.
        let leaf = unsafe { (*self.root.add(hi)).load(Ordering::Acquire) };
        if leaf.is_null() {
            return None;
        }
        // SAFETY: lo < 2^leaf_bits, the leaf's length; leaves are never freed while self lives.
        let v = unsafe { (*leaf.add(lo)).load(Ordering::Acquire) };
        v.checked_sub(1)
    }

    /// Records that the arena at `base` (arena-aligned) has descriptor `index`.
    /// Returns false if a leaf could not be mapped.
    pub(crate) fn insert(&self, base: usize, index: usize) -> bool {
        let Some((hi, lo)) = self.split(base) else {
            return false;
        };
        // SAFETY: hi < root_len (see lookup).
        let slot = unsafe { &*self.root.add(hi) };
        let mut leaf = slot.load(Ordering::Acquire);
        if leaf.is_null() {
            let bytes = self.leaf_bytes();
            let fresh = os::map(bytes).cast::<AtomicUsize>();
            if fresh.is_null() {
                return false;
            }
            match slot.compare_exchange(
                core::ptr::null_mut(),
                fresh,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => leaf = fresh,
                Err(winner) => {
                    // SAFETY: `fresh` was never published; nobody else can see it.
                    unsafe { os::unmap(fresh.cast(), bytes) };
                    leaf = winner;
                }
            }
        }
        // SAFETY: lo is within the leaf; the leaf lives as long as self.
        unsafe { (*leaf.add(lo)).store(index + 1, Ordering::Release) };
        true
    }

    /// Forgets the arena at `base`. Must happen before the arena is unmapped.
    pub(crate) fn remove(&self, base: usize) {
        let Some((hi, lo)) = self.split(base) else {
            return;
        };
        // SAFETY: hi < root_len (see lookup).
        let leaf = unsafe { (*self.root.add(hi)).load(Ordering::Acquire) };
        if !leaf.is_null() {
            // SAFETY: lo is within the leaf; the leaf lives as long as self.
            unsafe { (*leaf.add(lo)).store(0, Ordering::Release) };
        }
    }

    fn leaf_bytes(&self) -> usize {
        round_to_page((1usize << self.leaf_bits) * core::mem::size_of::<usize>())
    }
}

fn round_to_page(n: usize) -> usize {
    n.next_multiple_of(os::page_size())
}

impl Drop for ArenaMap {
    fn drop(&mut self) {
        let leaf_bytes = self.leaf_bytes();
        for i in 0..self.root_len {
            // SAFETY: i < root_len; we have exclusive access in drop.
            let leaf = unsafe { (*self.root.add(i)).load(Ordering::Relaxed) };
            if !leaf.is_null() {
                // SAFETY: the leaf was mapped by insert with this size and is unreachable now.
                unsafe { os::unmap(leaf.cast(), leaf_bytes) };
            }
        }
        let root_bytes = round_to_page(self.root_len * core::mem::size_of::<usize>());
        // SAFETY: the root was mapped in new with this size; self is being dropped.
        unsafe { os::unmap(self.root.cast(), root_bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_of_any_address_are_safe_and_exact() {
        let m = ArenaMap::new(20).unwrap();
        let base = 0x7f12_3450_0000usize;
        assert_eq!(m.lookup(base), None);
        assert!(m.insert(base, 7));
        assert_eq!(m.lookup(base), Some(7));
        assert_eq!(m.lookup(base + (1 << 20) - 1), Some(7));
        assert_eq!(m.lookup(base + (1 << 20)), None);
        assert_eq!(m.lookup(base - 1), None);
        for wild in [0usize, 1, usize::MAX, 1 << 48, 0xdead_beef] {
            assert_eq!(m.lookup(wild), None);
        }
        m.remove(base);
        assert_eq!(m.lookup(base), None);
    }
}
