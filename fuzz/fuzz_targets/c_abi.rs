//! `c_abi`: the C ABI of the drop-in library (`preload/`, linked here as an rlib), driven by
//! random sequences of `malloc` / `calloc` / `realloc` / `reallocarray` / `posix_memalign` /
//! `aligned_alloc` / `memalign` / `valloc` / `pvalloc` / `free` / `malloc_usable_size`, with
//! frees from a helper thread, against a model of the live blocks.
//!
//! The library's `#[no_mangle]` exports are the process's `malloc` in this binary, so libFuzzer
//! itself (and Rust's `System` allocator) runs on ftmalloc too. That rules out ASan's own
//! `malloc` interceptors: this target is built with `--sanitizer none` (see `.ci/fuzz`).
//!
//! Checked: results aligned as asked (16 for the `malloc` family, the page for `valloc`),
//! `malloc_usable_size >= size`, `calloc` memory zeroed, live blocks disjoint, contents (a
//! pattern derived from the block's id) intact at `free` and kept by `realloc`; the argument
//! rules: `calloc` / `reallocarray` overflow gives null and `ENOMEM` (leaving the block alone),
//! `realloc(p, 0)` frees and gives null, `posix_memalign` refuses a bad alignment with `EINVAL`
//! (leaving `*out` alone), `aligned_alloc` refuses a non-power-of-two with null and `EINVAL`,
//! impossible sizes give null and `ENOMEM`, and `free` preserves `errno`.
#![no_main]

use core::ffi::c_void;
use ftmalloc_c as c;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

const MAX_LIVE: usize = 1024;
/// Largest size actually allocated (bigger ones are impossible requests that must fail).
const MAX_REAL: usize = 1 << 20;
const MIN_ALIGN: usize = 16;

/// `realloc` sizes from isize::MAX - 14 to isize::MAX pass `size <= isize::MAX` but overflow when
/// rounded to 16 bytes; this target found that preload's `realloc` let them through to
/// `Allocator::realloc` (a violated `Layout` precondition). Fixed: such sizes now give null and
/// `ENOMEM`; the seed `corpus/c_abi/seed-realloc-rounding-bug` reaches them.
fn rounding_overflows(n: usize) -> bool {
    n <= isize::MAX as usize && n > isize::MAX as usize - (MIN_ALIGN - 1)
}

#[path = "../common/input.rs"]
mod input;
use input::Input;

impl Input<'_> {
    /// A size: mostly small, sometimes 0, above 512, up to 1 MiB, or impossibly large.
    fn size(&mut self) -> usize {
        let sel = self.u8();
        let n = self.u16() as usize;
        match sel % 32 {
            0 => 0,
            1..=4 => 513 + n % 3584,
            5 => 4096 + n * 15,
            6 => MAX_REAL - n,
            7 => usize::MAX - n,
            8 => isize::MAX as usize - n,
            _ => 1 + n % 512,
        }
    }
    /// An element count for `calloc` / `reallocarray`: mostly small, sometimes overflowing.
    fn count(&mut self) -> usize {
        match self.u8() % 16 {
            0 => 0,
            1 => usize::MAX / 2 + self.u8() as usize,
            2 => 1 << 40,
            k => k as usize * (1 + self.u8() as usize % 4),
        }
    }
    /// An alignment argument: powers of two (1 .. 1 MiB), sometimes not one.
    fn align(&mut self) -> usize {
        let b = self.u8();
        match b % 32 {
            0 => 0,
            1 => 24,
            2 => 48,
            3 => 3,
            4 => 1 << 12,
            5 => 1 << 20,
            6 => usize::MAX / 2 + 1,
            k => 1 << (k % 8),
        }
    }
}

fn errno() -> i32 {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(e: i32) {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

fn pattern(id: u64, i: usize) -> u8 {
    let h = (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
    h.wrapping_add((i as u8).wrapping_mul(13)) ^ (i >> 8) as u8
}

/// The bytes written and checked: the first 4 KiB of a block, beyond that every 61st byte and
/// the last 16 of every 4 KiB. A rule on the position alone, so that the bytes checked after a
/// `realloc` (of the shorter length) were all written (at the longer one).
fn touched(len: usize) -> impl Iterator<Item = usize> {
    let head = 0..len.min(4096);
    let pages = (4096..len).step_by(4096).flat_map(move |page| {
        let end = (page + 4096).min(len);
        let tail = (page + 4080).min(end);
        (page.next_multiple_of(61)..tail)
            .step_by(61)
            .chain(tail..end)
    });
    head.chain(pages)
}

fn fill(p: usize, len: usize, id: u64, from: usize) {
    for i in touched(len).filter(|&i| i >= from) {
        // SAFETY: callers pass a live block of at least `len` writable bytes.
        unsafe { *(p as *mut u8).add(i) = pattern(id, i) };
    }
}

fn check(p: usize, len: usize, id: u64, what: &str) {
    for i in touched(len) {
        // SAFETY: callers pass a live block of at least `len` readable bytes.
        let got = unsafe { *(p as *const u8).add(i) };
        assert_eq!(
            got,
            pattern(id, i),
            "{what}: byte {i} of block #{id} at {p:#x} changed while live"
        );
    }
}

#[derive(Clone, Copy)]
struct Block {
    ptr: usize,
    size: usize,
    id: u64,
}

#[derive(Default)]
struct Model {
    live: Vec<Block>,
    spans: BTreeMap<usize, usize>,
    next_id: u64,
}

impl Model {
    /// Records a fresh block of `size` bytes aligned to `align`, filling it with its pattern
    /// (after checking it is zeroed when `zeroed`).
    fn add(&mut self, p: *mut c_void, size: usize, align: usize, zeroed: bool) {
        assert!(!p.is_null(), "allocation of {size} bytes failed");
        let ptr = p as usize;
        assert_eq!(
            ptr % align,
            0,
            "{ptr:#x} ({size} bytes) not aligned to {align}"
        );
        // SAFETY: a live block from the library.
        let usable = unsafe { c::malloc_usable_size(p) };
        assert!(usable >= size, "malloc_usable_size {usable} < {size}");
        if zeroed {
            for i in touched(size) {
                // SAFETY: i < size of a fresh block.
                assert_eq!(unsafe { *(ptr as *const u8).add(i) }, 0, "calloc byte {i}");
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        fill(ptr, size, id, 0);
        self.insert(Block { ptr, size, id }, usable.max(1));
    }

    fn insert(&mut self, b: Block, extent: usize) {
        let end = b.ptr + extent;
        if let Some((&s, &e)) = self.spans.range(..end).next_back() {
            assert!(
                e <= b.ptr,
                "block {:#x}..{end:#x} overlaps live block {s:#x}..{e:#x}",
                b.ptr
            );
        }
        self.spans.insert(b.ptr, end);
        self.live.push(b);
    }

    fn take(&mut self, i: u16) -> Option<Block> {
        if self.live.is_empty() {
            return None;
        }
        let b = self.live.swap_remove(i as usize % self.live.len());
        self.spans.remove(&b.ptr);
        check(b.ptr, b.size, b.id, "free");
        Some(b)
    }
}

/// Frees `p` and checks `errno` is preserved.
fn free_checked(p: usize) {
    set_errno(12345);
    // SAFETY: callers pass a live block of the library, freed once.
    unsafe { c::free(p as *mut c_void) };
    assert_eq!(errno(), 12345, "free changed errno");
}

type Helper = (mpsc::SyncSender<usize>, Mutex<mpsc::Receiver<()>>);

/// A thread that frees what it is sent (remote frees into the main thread's pools), then acks.
fn helper() -> &'static Helper {
    static H: OnceLock<Helper> = OnceLock::new();
    H.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<usize>(0);
        let (ack_tx, ack_rx) = mpsc::sync_channel::<()>(1);
        std::thread::spawn(move || {
            for p in rx {
                free_checked(p);
                ack_tx.send(()).unwrap();
            }
        });
        (tx, Mutex::new(ack_rx))
    })
}

/// Expects an impossible request to have failed with `ENOMEM`.
fn expect_enomem(p: *mut c_void, what: &str) {
    assert!(p.is_null(), "{what} succeeded");
    assert_eq!(errno(), libc::ENOMEM, "{what}: errno");
}

fn run(data: &[u8]) {
    let mut input = Input(data);
    let mut m = Model::default();
    while !input.done() {
        set_errno(0);
        match input.u8() % 16 {
            0..=2 => {
                let size = input.size();
                // SAFETY: C semantics.
                let p = unsafe { c::malloc(size) };
                if size > MAX_REAL {
                    expect_enomem(p, "malloc of an impossible size");
                } else {
                    m.add(p, size, MIN_ALIGN, false);
                }
            }
            3 => {
                let (n, size) = (input.count(), input.size() % 4097);
                // SAFETY: C semantics.
                let p = unsafe { c::calloc(n, size) };
                match n.checked_mul(size) {
                    Some(t) if t <= MAX_REAL => m.add(p, t, MIN_ALIGN, true),
                    _ => expect_enomem(p, "calloc overflowing or impossible"),
                }
            }
            4 | 5 => {
                // realloc (size 0: frees and gives null), or reallocarray.
                let i = input.u16();
                let array = input.u8() % 4 == 0;
                let (n, size) = if array {
                    (input.count(), input.size() % 4097)
                } else {
                    (1, input.size())
                };
                let total = n.checked_mul(size);
                let Some(b) = m.take(i) else { continue };
                // SAFETY: a live block of the library.
                let q = unsafe {
                    if array {
                        c::reallocarray(b.ptr as *mut c_void, n, size)
                    } else {
                        c::realloc(b.ptr as *mut c_void, size)
                    }
                };
                match total {
                    Some(0) => assert!(q.is_null(), "realloc to 0 gave {q:p}"),
                    Some(t) if t <= MAX_REAL => {
                        assert!(!q.is_null(), "realloc to {t} failed");
                        check(q as usize, b.size.min(t), b.id, "contents kept by realloc");
                        // SAFETY: a live block.
                        let usable = unsafe { c::malloc_usable_size(q) };
                        assert!(usable >= t);
                        assert_eq!(q as usize % MIN_ALIGN, 0);
                        fill(q as usize, t, b.id, b.size.min(t));
                        let nb = Block {
                            ptr: q as usize,
                            size: t,
                            id: b.id,
                        };
                        m.insert(nb, usable.max(1));
                    }
                    _ => {
                        // Failed: null, ENOMEM, and the old block untouched and still live.
                        let what = if total.is_some_and(rounding_overflows) {
                            "realloc to a size that overflows when rounded to 16"
                        } else {
                            "realloc to an overflowing or impossible size"
                        };
                        expect_enomem(q, what);
                        check(b.ptr, b.size, b.id, "block after a failed realloc");
                        // SAFETY: still live.
                        let usable = unsafe { c::malloc_usable_size(b.ptr as *mut c_void) };
                        m.insert(b, usable.max(1));
                    }
                }
            }
            6 => {
                let (align, size) = (input.align(), input.size());
                let mut out = 0x5a5a as *mut c_void;
                // SAFETY: `out` is writable.
                let r = unsafe { c::posix_memalign(&mut out, align, size) };
                if !align.is_power_of_two() || align % core::mem::size_of::<usize>() != 0 {
                    assert_eq!(r, libc::EINVAL, "posix_memalign({align}, {size})");
                    assert_eq!(out as usize, 0x5a5a, "posix_memalign wrote *out on EINVAL");
                } else if size > MAX_REAL || align > MAX_REAL {
                    assert_eq!(r, libc::ENOMEM, "posix_memalign({align}, {size})");
                    assert_eq!(out as usize, 0x5a5a, "posix_memalign wrote *out on ENOMEM");
                } else {
                    assert_eq!(r, 0, "posix_memalign({align}, {size})");
                    m.add(out, size, align, false);
                }
            }
            7 => {
                let (align, size) = (input.align(), input.size());
                // SAFETY: C semantics.
                let p = unsafe { c::aligned_alloc(align, size) };
                if !align.is_power_of_two() {
                    assert!(p.is_null(), "aligned_alloc({align}, {size}) gave {p:p}");
                    assert_eq!(errno(), libc::EINVAL);
                } else if size > MAX_REAL || align > MAX_REAL {
                    expect_enomem(p, "aligned_alloc of an impossible size or alignment");
                } else {
                    m.add(p, size, align, false);
                }
            }
            8 => {
                let (align, size) = (input.align(), input.size());
                // SAFETY: C semantics.
                let p = unsafe { c::memalign(align, size) };
                match align.max(1).checked_next_power_of_two() {
                    None => {
                        assert!(p.is_null());
                        assert_eq!(errno(), libc::EINVAL);
                    }
                    Some(a) if size > MAX_REAL || a > MAX_REAL => {
                        expect_enomem(p, "memalign of an impossible size or alignment")
                    }
                    Some(a) => m.add(p, size, a, false),
                }
            }
            9 => {
                let size = input.size() % 20000;
                let pvalloc = input.u8() & 1 == 1;
                // SAFETY: C semantics.
                let p = unsafe {
                    if pvalloc {
                        c::pvalloc(size)
                    } else {
                        c::valloc(size)
                    }
                };
                let size = if pvalloc {
                    size.max(1).next_multiple_of(page())
                } else {
                    size
                };
                m.add(p, size, page(), false);
            }
            10..=12 => {
                if let Some(b) = m.take(input.u16()) {
                    free_checked(b.ptr);
                }
            }
            13 => {
                // Freed by another thread.
                if let Some(b) = m.take(input.u16()) {
                    let (tx, ack) = helper();
                    tx.send(b.ptr).unwrap();
                    ack.lock().unwrap().recv().unwrap();
                }
            }
            14 => {
                // free(NULL) and malloc_usable_size(NULL).
                free_checked(0);
                // SAFETY: null is allowed.
                assert_eq!(unsafe { c::malloc_usable_size(core::ptr::null_mut()) }, 0);
            }
            _ => {
                // realloc(NULL, n) allocates.
                let size = input.size() % 4097;
                // SAFETY: C semantics.
                let p = unsafe { c::realloc(core::ptr::null_mut(), size) };
                m.add(p, size, MIN_ALIGN, false);
            }
        }
        if m.live.len() > MAX_LIVE {
            let b = m.take(0).unwrap();
            free_checked(b.ptr);
        }
    }
    while let Some(b) = m.take(0) {
        free_checked(b.ptr);
    }
}

fuzz_target!(|data: &[u8]| run(data));
