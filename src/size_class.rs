//! Size classes: pymalloc's 32 classes of 16-byte steps.
//!
//! A request of `n` bytes (1..=512) is served from class `(n - 1) / 16`, whose blocks are
//! `(class + 1) * 16` bytes. Requests of 0 bytes, above the geometry's small limit or with an
//! alignment above 16 are not served from pools.

/// Alignment of every block (and the step between classes).
pub const ALIGNMENT: usize = 16;
/// Largest request served from pools with pymalloc's geometry.
pub const MAX_SMALL_REQUEST: usize = 512;
/// Number of size classes with pymalloc's geometry.
pub const NUM_CLASSES: usize = MAX_SMALL_REQUEST / ALIGNMENT;

/// Class of a request of `size` bytes, `1 <= size <= 512`.
#[inline(always)]
pub const fn size_to_class(size: usize) -> usize {
    (size - 1) >> 4
}

/// Block size of `class`.
#[inline(always)]
pub const fn class_size(class: usize) -> usize {
    (class + 1) << 4
}

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
}
