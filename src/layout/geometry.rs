//! The numbers of the shared layout, from a few shifts in one place.
//!
//! Every bound one module relies on and another enforces is derived here, and the compile-time
//! assertions at the end check that they fit together:
//! - [`ADDRESS_BITS`]: user-space pointers fit in the low 48 bits (x86-64, 4-level paging).
//!   The arena map covers that range; the free-threaded remote-list word packs a block count in
//!   the [`TAG_BITS`] above it; debug mode tags its headers with the block size there.
//! - [`MAX_BLOCKS_PER_POOL`]: the largest count that fits those tag bits.
//! - [`MAX_POOL_SHIFT`]: pools of at most 64 KiB, so a block offset fits the 16 bits of the
//!   division-free block check (`size_class::is_multiple_of_class`), and a pool's blocks fit
//!   the count.
//! - [`MAX_POOLS_PER_ARENA`]: 64, one bit per pool in a `u64` (the free-threaded free-pool
//!   bitmap; GIL mode's `nfp2lasta` has one entry per count, 0..=64).
//! - [`MAX_ARENAS`]: descriptor table length of either mode (64 GiB of small objects with
//!   1 MiB arenas).
//! - [`PYMALLOC_POOL_SHIFT`], [`PYMALLOC_ARENA_SHIFT`]: pymalloc's 16 KiB pools and 1 MiB arenas.
//!
//! A [`Geometry`] is the validated, derived form of one heap's `Config` (`layout::config`).

use crate::layout::size_class::{class_size, ALIGNMENT, MAX_SMALL_REQUEST, NUM_CLASSES};

/// Address bits of a user-space pointer: addresses at or above `2^ADDRESS_BITS` are never ours.
pub(crate) const ADDRESS_BITS: u32 = 48;
/// Bits of a pointer-sized word above the address bits (packed counts and tags).
pub(crate) const TAG_BITS: u32 = usize::BITS - ADDRESS_BITS;
/// Most blocks a pool may hold: a count of them fits [`TAG_BITS`].
pub(crate) const MAX_BLOCKS_PER_POOL: usize = (1 << TAG_BITS) - 1;
/// `log2` of the largest pool (64 KiB).
pub(crate) const MAX_POOL_SHIFT: u32 = 16;
/// `log2` of the most pools in an arena.
pub(crate) const MAX_POOLS_SHIFT: u32 = 6;
/// Most pools in an arena (64).
pub(crate) const MAX_POOLS_PER_ARENA: usize = 1 << MAX_POOLS_SHIFT;
/// `log2` of the most arenas a heap maps at once.
pub(crate) const MAX_ARENAS_SHIFT: u32 = 16;
/// Most arenas a heap maps at once (the length of either mode's descriptor table).
pub(crate) const MAX_ARENAS: usize = 1 << MAX_ARENAS_SHIFT;
/// `log2` of pymalloc's pool size (16 KiB).
pub(crate) const PYMALLOC_POOL_SHIFT: u32 = 14;
/// `log2` of pymalloc's arena size (1 MiB).
pub(crate) const PYMALLOC_ARENA_SHIFT: u32 = 20;

/// The validated numbers of a [`Config`](crate::Config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per pool.
    pub pool_size: usize,
    /// `log2(pool_size)`.
    pub pool_shift: u32,
    /// Bytes per arena.
    pub arena_size: usize,
    /// `log2(arena_size)`.
    pub arena_shift: u32,
    /// Pools per arena (at most 64).
    pub pools_per_arena: usize,
    /// Bytes of each pool taken by its header.
    pub pool_overhead: usize,
    /// Largest request (in bytes) served from pools; larger ones go to the system allocator.
    pub small_limit: usize,
    /// Size classes in use: `small_limit / 16` (32 with pymalloc's numbers).
    pub num_classes: usize,
}

impl Geometry {
    /// Blocks of class `class` that fit in one pool.
    #[inline]
    pub fn blocks_per_pool(&self, class: usize) -> usize {
        (self.pool_size - self.pool_overhead) / class_size(class)
    }

    /// The pool that contains `addr` (masking, as pymalloc's `POOL_ADDR`).
    #[inline(always)]
    pub fn pool_of(&self, addr: usize) -> usize {
        addr & !(self.pool_size - 1)
    }

    /// The arena that contains `addr`.
    #[inline(always)]
    pub fn arena_of(&self, addr: usize) -> usize {
        addr & !(self.arena_size - 1)
    }
}

const _: () = {
    assert!(NUM_CLASSES * ALIGNMENT == MAX_SMALL_REQUEST);
    // The free-pool bitmap is one u64 per arena.
    assert!(MAX_POOLS_PER_ARENA == u64::BITS as usize);
    // pymalloc's geometry is a valid one.
    assert!(PYMALLOC_POOL_SHIFT <= MAX_POOL_SHIFT);
    assert!(PYMALLOC_ARENA_SHIFT - PYMALLOC_POOL_SHIFT <= MAX_POOLS_SHIFT);
    // Every pool's blocks can be counted in the tag bits.
    assert!((1 << MAX_POOL_SHIFT) / ALIGNMENT <= MAX_BLOCKS_PER_POOL);
    // Block offsets inside a pool fit the 16 bits of the division-free check.
    assert!(MAX_POOL_SHIFT <= 16);
    // The most arenas of the largest kind pymalloc maps fit in the address space.
    assert!(MAX_ARENAS_SHIFT + PYMALLOC_ARENA_SHIFT <= ADDRESS_BITS);
};
