//! Size classes: pymalloc's 32 classes of 16-byte steps.
//!
//! A request of `n` bytes (1..=512) is served from class `(n - 1) / 16`, whose blocks are
//! `(class + 1) * 16` bytes. Requests of 0 bytes, above the geometry's small limit or with an
//! alignment above 16 are not served from pools.

/// `log2` of [`ALIGNMENT`].
pub const ALIGNMENT_SHIFT: u32 = 4;
/// Alignment of every block (and the step between classes).
pub const ALIGNMENT: usize = 1 << ALIGNMENT_SHIFT;
/// Largest request served from pools with pymalloc's geometry.
pub const MAX_SMALL_REQUEST: usize = 512;
/// Number of size classes with pymalloc's geometry.
pub const NUM_CLASSES: usize = MAX_SMALL_REQUEST / ALIGNMENT;

/// Class of a request of `size` bytes, `1 <= size <= 512`.
#[inline(always)]
pub const fn size_to_class(size: usize) -> usize {
    (size - 1) >> ALIGNMENT_SHIFT
}

/// Block size of `class`.
#[inline(always)]
pub const fn class_size(class: usize) -> usize {
    (class + 1) << ALIGNMENT_SHIFT
}

/// `ceil(2^32 / class_size(c))` for each class: division by a class size as a multiply.
const RECIPROCALS: [u64; NUM_CLASSES] = {
    let mut r = [0u64; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        r[c] = (1u64 << 32).div_ceil(class_size(c) as u64);
        c += 1;
    }
    r
};

/// True when `off` (below 2^16) is a multiple of the block size of `class`, without dividing:
/// `floor(off * ceil(2^32 / s) / 2^32)` is `floor(off / s)` for such offsets, because the
/// rounding error (below `off / 2^32 < 2^-16`) never reaches the gap to the next integer (at
/// least `1 / s >= 2^-9`). False for every offset of 2^16 or more, with no test of its own:
/// `q` is computed from the low 16 bits, so `q * s <= off mod 2^16 < 2^16 <= off`.
#[inline(always)]
pub(crate) fn is_multiple_of_class(off: usize, class: usize) -> bool {
    // Callers check `class < NUM_CLASSES` first (`PoolHeader::check_block`), so the index's
    // bounds check folds away where this is inlined.
    let q = ((off as u64 & (OFFSET_LIMIT - 1)) * RECIPROCALS[class]) >> 32;
    q * class_size(class) as u64 == off as u64
}

/// Offsets [`is_multiple_of_class`] answers for: below 2^16 (pools are at most 64 KiB,
/// `geometry::MAX_POOL_SHIFT`, which asserts this bound).
const OFFSET_LIMIT: u64 = 1 << 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_fits_its_class_and_no_smaller_one() {
        for n in 1..=MAX_SMALL_REQUEST {
            let c = size_to_class(n);
            assert!(c < NUM_CLASSES);
            assert!(class_size(c) >= n);
            assert!(c == 0 || class_size(c - 1) < n);
        }
        assert_eq!(class_size(NUM_CLASSES - 1), 512);
    }

    #[test]
    fn multiples_by_reciprocal_match_division() {
        for c in 0..NUM_CLASSES {
            for off in 0..0x10000 {
                assert_eq!(
                    is_multiple_of_class(off, c),
                    off % class_size(c) == 0,
                    "{off} {c}"
                );
            }
            // Offsets of 2^16 and more are never accepted (no range test: see the docs).
            for off in (0x10000..0x30000)
                .step_by(16)
                .chain([usize::MAX & !15, 1 << 40])
            {
                assert!(!is_multiple_of_class(off, c), "{off:#x} {c}");
            }
        }
    }
}
