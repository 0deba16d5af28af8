//! Debug mode (`FTMALLOC_DEBUG=1`, or [`Config::with_debug`](crate::Config::with_debug)): the
//! checks CPython's `PYTHONMALLOC=debug` hooks make, on pool blocks of both modes.
//!
//! A request of `n` bytes takes a block of at least `n + 48` bytes, laid out as
//!
//! ```text
//! inner +0   link word (the free list's, when the block is free)
//!       +8   tag: inner ^ size ^ ALIVE while allocated, inner ^ size ^ FREED once freed
//!       +16  n, the requested size
//!       +24  8 guard bytes 0xFD                    (a write before the start lands here)
//!       +32  the user's n bytes: 0xCD when fresh, 0xDD once freed
//!       +32+n guard bytes 0xFD up to the block end (at least 16)
//! ```
//!
//! so the user pointer stays 16-aligned. Detected, each with an abort naming the pointer, its
//! size class, its pool and what is wrong: a double free (tag says freed), a write before the
//! start (guard or tag damaged) or past the end (tail guard damaged), checked at free, realloc
//! and usable size; a pointer that is not a block start (by the always-on check, which
//! `Heap::locate` (`heap`) makes before any of these headers is read: the header of a pointer near
//! a pool's start would lie outside the pool, even outside the arena); and a write to freed
//! memory, seen when the block is handed out again (its 0xDD fill damaged). The tag mixes in
//! the block address and size, so stale bytes of a pool's earlier size class (whose first
//! block has the same address) are not mistaken for a freed block of this one.
//!
//! A zero-size request takes a block for 1 byte (its usable size is 1, not 0). A zeroed request
//! (`calloc`, `alloc_zeroed`) gets zeros, not the 0xCD fill, in its user bytes.
//!
//! Requests that do not fit a pool block with the overhead go to the allocator underneath
//! unchanged (glibc's own checks apply there); zeroed ones through its `calloc`, so a large
//! zeroed request gets fresh pages that nothing touches.

use crate::base::diag::die_fmt;
use crate::layout::geometry::ADDRESS_BITS;
use crate::layout::pool::Op;
use crate::layout::size_class::{size_to_class, ALIGNMENT};
use core::fmt;
use core::mem::size_of;
use core::ptr;

/// Offset of the tag word (after the free list's link word).
const TAG_AT: usize = size_of::<usize>();
/// Offset of the requested size.
const SIZE_AT: usize = TAG_AT + size_of::<usize>();
/// Offset of the front guard bytes.
const GUARD_AT: usize = SIZE_AT + size_of::<usize>();
/// Front guard bytes.
const GUARD_LEN: usize = 8;
/// Bytes before the user's data.
pub(crate) const HEADER: usize = GUARD_AT + GUARD_LEN;
/// Bytes added to every request (header plus the minimum tail guard).
pub(crate) const OVERHEAD: usize = HEADER + ALIGNMENT;

// The user pointer stays aligned, and the layout is the one drawn above.
const _: () = assert!(HEADER.is_multiple_of(ALIGNMENT) && HEADER == 32 && OVERHEAD == 48);

/// The tag's address-and-size part: the block size sits in the tag bits above the address.
#[inline(always)]
fn tag_base(inner: *mut u8, block: usize) -> usize {
    inner as usize ^ (block << ADDRESS_BITS)
}

const FRESH: u8 = 0xCD;
const DEAD: u8 = 0xDD;
const GUARD: u8 = 0xFD;
const ALIVE_TAG: usize = 0xFDFD_FDFD_A11C_E000;
const FREED_TAG: usize = 0xDDDD_DDDD_F7EE_D000;

struct Report {
    user: usize,
    inner: usize,
    block: usize,
    pool: usize,
    what: &'static str,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ftmalloc debug: {} at {:#x} (size class {} = {} bytes, block {:#x}, pool {:#x})",
            self.what,
            self.user,
            size_to_class(self.block),
            self.block,
            self.inner,
            self.pool
        )
    }
}

#[cold]
#[inline(never)]
fn fail(user: usize, inner: usize, block: usize, pool: usize, what: &'static str) -> ! {
    die_fmt(Report {
        user,
        inner,
        block,
        pool,
        what,
    })
}

fn all(p: *const u8, len: usize, byte: u8) -> bool {
    // SAFETY: callers pass ranges inside one block they hold.
    unsafe { core::slice::from_raw_parts(p, len) }
        .iter()
        .all(|&b| b == byte)
}

/// Prepares a fresh block of `block` bytes for a request of `n` bytes; returns the user pointer.
/// The user's bytes are filled with 0xCD, or zeroed when `zeroed`.
///
/// # Safety
/// `inner` must be a block of `block >= n + OVERHEAD` bytes just handed out to the caller.
pub(crate) unsafe fn on_alloc(
    inner: *mut u8,
    block: usize,
    pool: usize,
    n: usize,
    zeroed: bool,
) -> *mut u8 {
    let i = tag_base(inner, block);
    // SAFETY: the whole block is ours.
    unsafe {
        let tag = inner.add(TAG_AT).cast::<usize>();
        if tag.read() == i ^ FREED_TAG && !all(inner.add(HEADER), block - HEADER, DEAD) {
            fail(
                inner as usize + HEADER,
                inner as usize,
                block,
                pool,
                "write to freed memory (seen when the block was handed out again)",
            );
        }
        tag.write(i ^ ALIVE_TAG);
        inner.add(SIZE_AT).cast::<usize>().write(n);
        ptr::write_bytes(inner.add(GUARD_AT), GUARD, GUARD_LEN);
        ptr::write_bytes(inner.add(HEADER), if zeroed { 0 } else { FRESH }, n);
        ptr::write_bytes(inner.add(HEADER + n), GUARD, block - HEADER - n);
        inner.add(HEADER)
    }
}

/// The block start of a user pointer, or the pointer itself when it cannot be one of ours.
pub(crate) fn inner_of(user: *mut u8) -> *mut u8 {
    user.wrapping_sub(HEADER)
}

/// Checks a block handed to `op` (freed, reallocated or asked its usable size) and returns
/// the requested size.
///
/// # Safety
/// `inner` must be a carved block start of `block` bytes in one of our mapped arenas.
pub(crate) unsafe fn check_live(inner: *mut u8, block: usize, pool: usize, op: Op) -> usize {
    let i = tag_base(inner, block);
    let user = inner as usize + HEADER;
    // SAFETY: the block is inside a mapped arena (caller's contract), so readable.
    unsafe {
        let tag = inner.add(TAG_AT).cast::<usize>().read();
        if tag == i ^ FREED_TAG {
            let what = match op {
                Op::Free => "double free",
                Op::Realloc => "realloc of a freed block",
                Op::UsableSize => "usable_size of a freed block",
            };
            fail(user, inner as usize, block, pool, what);
        }
        if tag != i ^ ALIVE_TAG || !all(inner.add(GUARD_AT), GUARD_LEN, GUARD) {
            fail(
                user,
                inner as usize,
                block,
                pool,
                "write before the start of the block (guard bytes damaged)",
            );
        }
        let n = inner.add(SIZE_AT).cast::<usize>().read();
        if n > block - OVERHEAD {
            fail(
                user,
                inner as usize,
                block,
                pool,
                "write before the start of the block (size damaged)",
            );
        }
        if !all(inner.add(HEADER + n), block - HEADER - n, GUARD) {
            fail(
                user,
                inner as usize,
                block,
                pool,
                "write past the end of the block (guard bytes damaged)",
            );
        }
        n
    }
}

/// Checks a block being freed, fills it with 0xDD and marks it freed.
///
/// # Safety
/// As [`check_live`].
pub(crate) unsafe fn on_free(inner: *mut u8, block: usize, pool: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        check_live(inner, block, pool, Op::Free);
        inner
            .add(TAG_AT)
            .cast::<usize>()
            .write(tag_base(inner, block) ^ FREED_TAG);
        ptr::write_bytes(inner.add(HEADER), DEAD, block - HEADER);
    }
}
