//! Pointer routing, in every mode: what the arena map claims (`owns`), and how `free`,
//! `usable_size` and `realloc` treat pointers that are not blocks of our pools (the C library's,
//! large and over-aligned blocks, null), and blocks of another instance.

mod common;

use common::modes;
use ftmalloc::{Allocator, Config};
use std::alloc::Layout;

/// Fills `len` bytes at `p` with a pattern seeded by `seed`.
///
/// # Safety
/// `p` must point to `len` writable bytes.
unsafe fn fill(p: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: i < len, per the contract.
        unsafe { *p.add(i) = seed.wrapping_add(i as u8).wrapping_mul(3) };
    }
}

/// Checks what `fill` wrote.
///
/// # Safety
/// `p` must point to `len` readable bytes.
unsafe fn check(p: *const u8, len: usize, seed: u8, what: &str) {
    for i in 0..len {
        // SAFETY: i < len, per the contract.
        let got = unsafe { *p.add(i) };
        assert_eq!(
            got,
            seed.wrapping_add(i as u8).wrapping_mul(3),
            "{what}: byte {i}"
        );
    }
}

#[test]
fn c_library_pointers_go_back_underneath() {
    for mode in modes() {
        let a = Allocator::new(mode);
        // SAFETY: every pointer is a live pointer of the C library's allocator when handed to
        // `a`, which routes it back there; none is used after it is freed or reallocated.
        unsafe {
            let p = libc::malloc(100).cast::<u8>();
            assert!(!p.is_null() && !a.owns(p));
            assert_eq!(a.usable_size(p), libc::malloc_usable_size(p.cast()));
            fill(p, 100, 1);
            let q = a.realloc(p, Layout::from_size_align(100, 1).unwrap(), 10_000);
            assert!(!q.is_null() && !a.owns(q), "{mode}: grown libc block");
            check(q, 100, 1, "libc block grown");
            let r = a.realloc(q, Layout::from_size_align(10_000, 1).unwrap(), 8);
            assert!(
                !a.owns(r),
                "{mode}: a libc block shrunk to a small size stays libc's"
            );
            check(r, 8, 1, "libc block shrunk");
            assert_eq!(a.usable_size(r), libc::malloc_usable_size(r.cast()));
            a.free(r);

            let z = libc::calloc(10, 10).cast::<u8>();
            assert!(!a.owns(z));
            a.dealloc(z, Layout::from_size_align(100, 1).unwrap());

            let mut m = std::ptr::null_mut();
            assert_eq!(libc::posix_memalign(&mut m, 256, 300), 0);
            let m = m.cast::<u8>();
            fill(m, 300, 2);
            let n = a.realloc(m, Layout::from_size_align(300, 256).unwrap(), 5000);
            assert_eq!(
                n as usize % 256,
                0,
                "{mode}: over-aligned realloc lost its alignment"
            );
            check(n, 300, 2, "memaligned block grown");
            a.free(n);
        }
        let s = a.stats();
        assert_eq!(
            s.counters.allocated_total, 0,
            "{mode}: foreign pointers mapped arenas"
        );
        assert_eq!(s.blocks_in_use(), 0);
    }
}

#[test]
fn null_is_not_ours_and_frees_to_nothing() {
    for mode in modes() {
        let a = Allocator::new(mode);
        // SAFETY: a live block; freed below.
        let keep = unsafe { a.alloc(Layout::new::<u64>()) };
        let before = a.stats();
        assert!(!a.owns(std::ptr::null()));
        // SAFETY: `free` and `usable_size` accept null (documented: null is nobody's block).
        unsafe {
            a.free(std::ptr::null_mut());
            assert_eq!(a.usable_size(std::ptr::null()), 0);
        }
        let after = a.stats();
        assert_eq!(before.blocks_in_use(), after.blocks_in_use());
        assert_eq!(before.counters, after.counters);
        // SAFETY: keep is live, allocated with this layout.
        unsafe { a.dealloc(keep, Layout::new::<u64>()) };
    }
}

#[test]
fn large_and_overaligned_blocks_stay_underneath() {
    let layouts = [
        (513, 8),
        (4096, 16),
        (1 << 20, 16),
        (64, 32),
        (100, 64),
        (1, 128),
        (512, 4096),
        (300_000, 4096),
    ];
    for mode in modes() {
        let a = Allocator::new(mode);
        let mut live = Vec::new();
        for (k, &(size, align)) in layouts.iter().enumerate() {
            let l = Layout::from_size_align(size, align).unwrap();
            let seed = k as u8;
            // SAFETY: valid layouts; every block is freed below, none used after.
            unsafe {
                let z = a.alloc_zeroed(l);
                assert!(!z.is_null() && !a.owns(z), "{mode}: {l:?}");
                assert_eq!(z as usize % align, 0, "{mode}: {l:?} zeroed misaligned");
                assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                assert!(a.usable_size(z) >= size);
                a.free(z);

                let p = a.alloc(l);
                assert!(!p.is_null() && !a.owns(p), "{mode}: {l:?} came from a pool");
                assert_eq!(p as usize % align, 0, "{mode}: {l:?} misaligned");
                assert!(a.usable_size(p) >= size, "{mode}: {l:?}");
                fill(p, size, seed);
                // Grow, then shrink to a size pools would serve: alignment and contents stay,
                // and the block stays with the allocator underneath.
                let q = a.realloc(p, l, 3 * size);
                assert!(
                    !q.is_null() && !a.owns(q) && (q as usize).is_multiple_of(align),
                    "{mode}: {l:?}"
                );
                check(q, size, seed, "grown");
                fill(q.add(size), 2 * size, seed);
                let small = 16.min(size);
                let r = a.realloc(q, Layout::from_size_align(3 * size, align).unwrap(), small);
                assert!(
                    !r.is_null() && !a.owns(r) && (r as usize).is_multiple_of(align),
                    "{mode}: {l:?}"
                );
                check(r, small, seed, "shrunk");
                assert!(a.usable_size(r) >= small);
                live.push((r, Layout::from_size_align(small, align).unwrap(), seed));
            }
        }
        // Interleave pool blocks, so that `free` without a layout has both kinds to route.
        for i in 0..200usize {
            let l = Layout::from_size_align(1 + i % 512, 8).unwrap();
            // SAFETY: a valid layout; freed below.
            let p = unsafe { a.alloc(l) };
            assert!(a.owns(p));
            // SAFETY: p holds l.size() bytes.
            unsafe { fill(p, l.size(), i as u8) };
            live.push((p, l, i as u8));
        }
        assert_eq!(a.stats().blocks_in_use(), 200);
        for (i, (p, l, seed)) in live.into_iter().enumerate().rev() {
            // SAFETY: p is live with layout l; routed by the arena map (half without layout).
            unsafe {
                check(p, l.size(), seed, "before free");
                if i % 2 == 0 {
                    a.free(p);
                } else {
                    a.dealloc(p, l);
                }
            }
        }
        let s = a.stats();
        assert_eq!(s.blocks_in_use(), 0, "{mode}:\n{s}");
        assert_eq!(s.total(), s.mapped_bytes());
    }
}

#[test]
fn blocks_of_another_instance_are_not_ours() {
    for ma in modes() {
        for mb in modes() {
            for config in [Config::PYMALLOC, Config::new(2048, 8192)] {
                let a = Allocator::with_config(ma, config).unwrap();
                let b = Allocator::with_config(mb, config).unwrap();
                let mut pa = Vec::new();
                let mut pb = Vec::new();
                for i in 0..2000usize {
                    let l = Layout::from_size_align(1 + (i * 37) % 512, 8).unwrap();
                    // SAFETY: valid layouts; each block freed to its own heap below.
                    unsafe {
                        pa.push((a.alloc(l), l));
                        pb.push((b.alloc(l), l));
                    }
                }
                for (&(p, _), &(q, _)) in pa.iter().zip(&pb) {
                    assert!(a.owns(p) && !b.owns(p), "{ma}/{mb}: {p:p} claimed by b");
                    assert!(b.owns(q) && !a.owns(q), "{ma}/{mb}: {q:p} claimed by a");
                }
                for (p, l) in pb {
                    // SAFETY: a live block of b with this layout.
                    unsafe { b.dealloc(p, l) };
                }
                drop(b);
                // a is untouched by b's frees and its release of every arena.
                assert_eq!(a.stats().blocks_in_use(), 2000, "{ma}/{mb}");
                for (p, l) in pa {
                    assert!(a.owns(p));
                    // SAFETY: a live block of a with this layout.
                    unsafe { a.dealloc(p, l) };
                }
                assert_eq!(a.stats().blocks_in_use(), 0);
            }
        }
    }
}

static STATIC_WORD: u64 = 0x5eed;
static STATIC_PAGE: [u8; 4096] = [0; 4096];

#[test]
fn owns_is_false_outside_our_arenas() {
    for mode in modes() {
        for config in [Config::PYMALLOC, Config::new(2048, 8192)] {
            let a = Allocator::with_config(mode, config).unwrap();
            let l = Layout::from_size_align(48, 8).unwrap();
            // SAFETY: a valid layout; freed at the end.
            let p = unsafe { a.alloc(l) };
            assert_eq!(a.stats().counters.current, 1, "{mode}: one arena mapped");
            let g = *a.geometry();
            let base = g.arena_of(p as usize);
            let end = base + g.arena_size;
            let what = format!("{mode} mode, {config:?}");

            for (addr, name) in [
                (base, "arena start"),
                (base + g.pool_size, "a pool not carved yet"),
                (base + g.arena_size / 2, "arena middle"),
                (end - 1, "last byte of the arena"),
            ] {
                assert!(a.owns(addr as *const u8), "{what}: {name} {addr:#x}");
            }

            let stack_word = 0u64;
            let heap = Box::new(0u64);
            // SAFETY: a live libc block, freed right after the checks.
            let c = unsafe { libc::malloc(32) };
            let not_ours = [
                (base - 1, "byte before the arena"),
                (end, "byte after the arena"),
                (base.wrapping_sub(g.arena_size), "arena before"),
                (end + g.arena_size - 1, "arena after"),
                (&stack_word as *const u64 as usize, "stack"),
                (&STATIC_WORD as *const u64 as usize, "static"),
                (STATIC_PAGE.as_ptr() as usize + 4095, "static array"),
                (
                    owns_is_false_outside_our_arenas as *const () as usize,
                    "code",
                ),
                (&*heap as *const u64 as usize, "Box (system allocator)"),
                (c as usize, "libc malloc"),
                (0, "null"),
                (16, "first page"),
                ((1 << 47) - 16, "top of the user half"),
                (1 << 47, "2^47"),
                (1 << 48, "2^48"),
                ((1 << 48) + (p as usize), "our block plus 2^48"),
                (1 << 63, "2^63"),
                (usize::MAX - 15, "usize::MAX - 15"),
                (usize::MAX, "usize::MAX"),
            ];
            for (addr, name) in not_ours {
                assert!(!a.owns(addr as *const u8), "{what}: {name} {addr:#x}");
            }
            // SAFETY: c from libc::malloc; p live with layout l.
            unsafe {
                libc::free(c);
                a.dealloc(p, l);
            }
        }
    }
}
