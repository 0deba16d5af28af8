//! The ring of `bench/count/ring.c` through `#[global_allocator]`: 1024 live objects; each step
//! frees the oldest and allocates a new one of a pseudo-random size in 16..=512 (16-byte steps).
//! `.ci/count` runs it under callgrind and divides the instructions inside `ring_alloc` and
//! `ring_dealloc` (never inlined, so the allocator's code is counted wherever the compiler puts
//! it; each adds a jump) by their calls (two step counts, so start-up and exit cancel).
//!
//! With a second argument `instance`, the same ring runs on an `Allocator` instance (mode from
//! `FTMALLOC_MODE`, default free-threaded) through `inst_alloc` / `inst_dealloc`: the general
//! path that instances take (the Python package's heap is one).
//!
//! `cargo run --release --example ring -- 1000000 [instance]`

use std::alloc::{alloc, dealloc, Layout};

use ftmalloc::{Allocator, Mode};

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

/// `Allocator::alloc` on an instance, never inlined (the counted unit).
///
/// # Safety
/// As `Allocator::alloc`.
#[inline(never)]
unsafe fn inst_alloc(a: &Allocator, layout: Layout) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { a.alloc(layout) }
}

/// `Allocator::dealloc` on an instance, never inlined (the counted unit).
///
/// # Safety
/// As `Allocator::dealloc`.
#[inline(never)]
unsafe fn inst_dealloc(a: &Allocator, p: *mut u8, layout: Layout) {
    // SAFETY: forwarded contract.
    unsafe { a.dealloc(p, layout) }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let steps: usize = args
        .next()
        .map(|s| s.parse().expect("steps: a whole number"))
        .unwrap_or(1_000_000);
    match args.next().as_deref() {
        None => ring(steps),
        Some("instance") => {
            let mode = match std::env::var("FTMALLOC_MODE") {
                Ok(m) if !m.is_empty() => Mode::from_name(&m).unwrap_or_else(|| {
                    panic!("FTMALLOC_MODE={m:?}: accepted: {}", Mode::NAMES.join(", "))
                }),
                _ => Mode::FreeThreaded,
            };
            instance_ring(steps, &Allocator::new(mode));
        }
        Some(other) => panic!("second argument {other:?}: accepted: instance"),
    }
}

/// The ring on an instance.
fn instance_ring(steps: usize, a: &Allocator) {
    run(
        steps,
        // SAFETY: a non-zero size, alignment 8.
        |l| unsafe { inst_alloc(a, l) },
        // SAFETY: a live block of `a` allocated with this layout, freed once.
        |p, l| unsafe { inst_dealloc(a, p, l) },
    );
}

/// The ring through `#[global_allocator]`.
fn ring(steps: usize) {
    run(
        steps,
        // SAFETY: a non-zero size, alignment 8.
        |l| unsafe { ring_alloc(l) },
        // SAFETY: a live block allocated with this layout, freed once.
        |p, l| unsafe { ring_dealloc(p, l) },
    );
}

/// The ring itself: `alloc` and `dealloc` are the counted units (never inlined), called with
/// sizes of 16..=512 and alignment 8; the blocks left at the end are freed with `dealloc` too.
fn run(steps: usize, alloc: impl Fn(Layout) -> *mut u8, dealloc: impl Fn(*mut u8, Layout)) {
    let mut ring = [(std::ptr::null_mut::<u8>(), 0usize); 1024];
    let mut x: u32 = 12345;
    for i in 0..steps {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let size = 16 + (x % 32) as usize * 16;
        let slot = &mut ring[i & 1023];
        if !slot.0.is_null() {
            // SAFETY: a valid layout (a non-zero size, alignment 8).
            dealloc(slot.0, unsafe {
                Layout::from_size_align_unchecked(slot.1, 8)
            });
        }
        // SAFETY: as above.
        let p = alloc(unsafe { Layout::from_size_align_unchecked(size, 8) });
        assert!(!p.is_null());
        // SAFETY: a fresh block of `size` bytes.
        unsafe { p.write(1) };
        *slot = (p, size);
    }
    for (p, size) in ring {
        if !p.is_null() {
            // SAFETY: as above.
            dealloc(p, unsafe { Layout::from_size_align_unchecked(size, 8) });
        }
    }
}
