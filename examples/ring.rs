//! The ring of `bench/count/ring.c` through `#[global_allocator]`: 1024 live objects; each step
//! frees the oldest and allocates a new one of a pseudo-random size in 16..=512 (16-byte steps).
//! `.ci/count` runs it under callgrind and divides the instructions inside `ring_alloc` and
//! `ring_dealloc` (never inlined, so the allocator's code is counted wherever the compiler puts
//! it; each adds a jump) by their calls (two step counts, so start-up and exit cancel).
//!
//! `cargo run --release --example ring -- 1000000`

use std::alloc::{alloc, dealloc, Layout};

#[global_allocator]
static A: ftmalloc::FtMalloc = ftmalloc::FtMalloc;

/// `std::alloc::alloc`, never inlined (the counted unit).
///
/// # Safety
/// As `std::alloc::alloc`.
#[inline(never)]
unsafe fn ring_alloc(layout: Layout) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { alloc(layout) }
}

/// `std::alloc::dealloc`, never inlined (the counted unit).
///
/// # Safety
/// As `std::alloc::dealloc`.
#[inline(never)]
unsafe fn ring_dealloc(p: *mut u8, layout: Layout) {
    // SAFETY: forwarded contract.
    unsafe { dealloc(p, layout) }
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("steps: a whole number"))
        .unwrap_or(1_000_000);
    let mut ring = [(std::ptr::null_mut::<u8>(), 0usize); 1024];
    let mut x: u32 = 12345;
    for i in 0..steps {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let size = 16 + (x % 32) as usize * 16;
        let slot = &mut ring[i & 1023];
        if !slot.0.is_null() {
            // SAFETY: allocated below with this layout, freed once.
            unsafe { ring_dealloc(slot.0, Layout::from_size_align_unchecked(slot.1, 8)) };
        }
        // SAFETY: a non-zero size, alignment 8.
        let p = unsafe { ring_alloc(Layout::from_size_align_unchecked(size, 8)) };
        assert!(!p.is_null());
        // SAFETY: a fresh block of `size` bytes.
        unsafe { p.write(1) };
        *slot = (p, size);
    }
    for (p, size) in ring {
        if !p.is_null() {
            // SAFETY: live blocks allocated with these layouts.
            unsafe { dealloc(p, Layout::from_size_align_unchecked(size, 8)) };
        }
    }
}
