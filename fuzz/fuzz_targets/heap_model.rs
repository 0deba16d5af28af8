//! `heap_model`: random sequences of `alloc` / `alloc_zeroed` / `dealloc` / `free` / `realloc`,
//! allocations and frees through a second `ThreadCache` handle (dropped and re-acquired, so its
//! pools are abandoned and adopted), cross-thread allocations and frees by a helper thread, and
//! `trim`, on a fresh `Allocator` per input, run against a model of the live blocks.
//!
//! Input: byte 0 picks the heap (bit 0: `Mode::Gil` / `Mode::FreeThreaded`; bit 1: pymalloc's
//! geometry / a tiny one, 2 KiB pools in 8 KiB arenas, where "pool full" and "arena empty" come
//! every few steps). Then one operation per opcode byte, with its arguments in the bytes after it.
//!
//! Checked: every block is non-null, aligned, `usable_size >= size`, disjoint from every other
//! live block, zeroed when asked, served from the pools exactly when it is small (1..=512 bytes,
//! alignment <= 16); its contents (a pattern derived from its id) are intact when it is freed or
//! reallocated; and after every `check` opcode and at the end, the statistics balance:
//! `blocks_in_use` equals the model's live small blocks and `total == mapped_bytes`; at the end,
//! with everything freed, nothing is in use.
#![no_main]

use ftmalloc::{Allocator, Config, Mode, ThreadCache};
use libfuzzer_sys::fuzz_target;
use std::alloc::Layout;
use std::collections::BTreeMap;
use std::sync::mpsc;

/// Most blocks live at once (keeps an input's memory and time bounded).
const MAX_LIVE: usize = 2048;

#[path = "../common/input.rs"]
mod input;
use input::Input;

impl Input<'_> {
    /// A request size: mostly small (1..=512), sometimes 0, sometimes above the small limit.
    fn size(&mut self) -> usize {
        let sel = self.u8();
        let n = self.u16() as usize;
        match sel % 16 {
            0 => 0,
            1 | 2 => 513 + n % 3584,
            3 => 513 + n * 2,
            _ => 1 + n % 512,
        }
    }
    /// A non-zero size for `realloc` (whose contract excludes zero).
    fn new_size(&mut self) -> usize {
        self.size().max(1)
    }
    /// An alignment: mostly 1..=16, sometimes 32 or 64.
    fn align(&mut self) -> usize {
        match self.u8() % 16 {
            14 => 32,
            15 => 64,
            k => 1 << (k % 5),
        }
    }
}

/// Expected byte `i` of the block with id `id`.
fn pattern(id: u64, i: usize) -> u8 {
    let h = (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8;
    h.wrapping_add((i as u8).wrapping_mul(7)) ^ (i >> 8) as u8
}

#[derive(Clone, Copy, Debug)]
struct Block {
    ptr: usize,
    layout: Layout,
    id: u64,
    /// Extent used for the overlap check (usable size, at least 1).
    extent: usize,
    /// Served from this heap's pools.
    small: bool,
}

/// The helper thread: requests in, answers out, its handle.
type Helper<'scope> = (
    mpsc::Sender<Req>,
    mpsc::Receiver<usize>,
    std::thread::ScopedJoinHandle<'scope, ()>,
);

/// Requests to the helper thread; each is answered before the next opcode runs.
enum Req {
    /// Allocate (the helper's own bound cache of the heap) and fill with the pattern of `id`.
    Alloc(Layout, u64),
    /// Check the pattern of `id` and free (a remote free in free-threaded mode).
    Free(usize, Layout, u64),
}

fn fill(ptr: usize, len: usize, id: u64, from: usize) {
    for i in from..len {
        // SAFETY: callers pass a live block of at least `len` writable bytes.
        unsafe { *(ptr as *mut u8).add(i) = pattern(id, i) };
    }
}

fn check(ptr: usize, len: usize, id: u64, what: &str) {
    for i in 0..len {
        // SAFETY: callers pass a live block of at least `len` readable bytes.
        let got = unsafe { *(ptr as *const u8).add(i) };
        assert_eq!(
            got,
            pattern(id, i),
            "{what}: byte {i} of block #{id} at {ptr:#x} changed while live"
        );
    }
}

struct Model<'a> {
    heap: &'a Allocator,
    live: Vec<Block>,
    /// start -> end of every live block's extent.
    spans: BTreeMap<usize, usize>,
    next_id: u64,
}

impl<'a> Model<'a> {
    fn is_small(&self, layout: Layout) -> bool {
        (1..=self.heap.geometry().small_limit).contains(&layout.size()) && layout.align() <= 16
    }

    /// Records a fresh block (already filled, or zeroed when `zeroed`), after the checks. It must
    /// come from the pools exactly when `small` (by default: when the request is small).
    fn add(&mut self, ptr: *mut u8, layout: Layout, id: u64, zeroed: bool, small: Option<bool>) {
        assert!(!ptr.is_null(), "allocation of {layout:?} failed");
        let p = ptr as usize;
        assert_eq!(p % layout.align(), 0, "{p:#x} not aligned for {layout:?}");
        let small = small.unwrap_or_else(|| self.is_small(layout));
        assert_eq!(
            self.heap.owns(ptr),
            small,
            "{p:#x} ({layout:?}) routed to the wrong allocator"
        );
        // SAFETY: a live block of this heap.
        let usable = unsafe { self.heap.usable_size(ptr) };
        assert!(usable >= layout.size(), "usable {usable} < {layout:?}");
        if zeroed {
            for i in 0..layout.size() {
                // SAFETY: i < size of a fresh block.
                assert_eq!(unsafe { *ptr.add(i) }, 0, "alloc_zeroed byte {i} not zero");
            }
            fill(p, layout.size(), id, 0);
        }
        let extent = usable.max(1);
        self.insert_span(p, p + extent);
        self.live.push(Block {
            ptr: p,
            layout,
            id,
            extent,
            small,
        });
    }

    fn insert_span(&mut self, start: usize, end: usize) {
        if let Some((&s, &e)) = self.spans.range(..end).next_back() {
            assert!(
                e <= start,
                "block {start:#x}..{end:#x} overlaps live block {s:#x}..{e:#x}"
            );
        }
        self.spans.insert(start, end);
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Removes live block `i % live` (checked), or None when nothing is live.
    fn take(&mut self, i: u16) -> Option<Block> {
        if self.live.is_empty() {
            return None;
        }
        let b = self.live.swap_remove(i as usize % self.live.len());
        self.spans.remove(&b.ptr);
        Some(b)
    }

    fn small_live(&self) -> usize {
        self.live.iter().filter(|b| b.small).count()
    }

    fn check_stats(&self, what: &str) {
        let s = self.heap.stats();
        assert_eq!(
            s.blocks_in_use(),
            self.small_live(),
            "{what}: blocks_in_use vs the model\n{s}"
        );
        assert_eq!(s.total(), s.mapped_bytes(), "{what}: total vs mapped\n{s}");
    }
}

fn alloc_via(heap: &Allocator, tc: Option<&mut ThreadCache<'_>>, layout: Layout) -> *mut u8 {
    // SAFETY: any layout is allowed (zero sizes go underneath).
    unsafe {
        match tc {
            Some(tc) => tc.alloc(layout),
            None => heap.alloc(layout),
        }
    }
}

fn run(data: &[u8]) {
    let mut input = Input(data);
    let head = input.u8();
    let mode = if head & 1 == 0 {
        Mode::Gil
    } else {
        Mode::FreeThreaded
    };
    let config = if head & 2 == 0 {
        Config::PYMALLOC
    } else {
        Config::new(2048, 8192)
    };
    let heap = Allocator::with_config(mode, config).expect("valid config");
    std::thread::scope(|s| {
        let heap = &heap;
        let mut m = Model {
            heap,
            live: Vec::new(),
            spans: BTreeMap::new(),
            next_id: 0,
        };
        let mut handle: Option<ThreadCache<'_>> = None;
        // The helper thread, started by the first cross-thread opcode.
        let mut helper: Option<Helper<'_>> = None;
        let mut ask = |req: Req| -> usize {
            let (tx, rx, _) = helper.get_or_insert_with(|| {
                let (tx, req_rx) = mpsc::channel::<Req>();
                let (ans_tx, rx) = mpsc::channel::<usize>();
                let handle = s.spawn(move || {
                    for req in req_rx {
                        let ans = match req {
                            Req::Alloc(layout, id) => {
                                // SAFETY: any layout is allowed.
                                let p = unsafe { heap.alloc(layout) };
                                if !p.is_null() {
                                    fill(p as usize, layout.size(), id, 0);
                                }
                                p as usize
                            }
                            Req::Free(p, layout, id) => {
                                check(p, layout.size(), id, "cross-thread free");
                                // SAFETY: a live block handed over by the main thread, freed once.
                                unsafe { heap.dealloc(p as *mut u8, layout) };
                                0
                            }
                        };
                        ans_tx.send(ans).unwrap();
                    }
                });
                (tx, rx, handle)
            });
            tx.send(req).unwrap();
            rx.recv().unwrap()
        };

        while !input.done() {
            match input.u8() % 16 {
                0..=2 => {
                    let (size, align) = (input.size(), input.align());
                    let layout = Layout::from_size_align(size, align).unwrap();
                    let p = alloc_via(heap, None, layout);
                    let id = m.new_id();
                    if !p.is_null() {
                        fill(p as usize, size, id, 0);
                    }
                    m.add(p, layout, id, false, None);
                }
                3 => {
                    let (size, align) = (input.size(), input.align());
                    let layout = Layout::from_size_align(size, align).unwrap();
                    // SAFETY: any layout is allowed.
                    let p = unsafe { heap.alloc_zeroed(layout) };
                    let id = m.new_id();
                    m.add(p, layout, id, true, None);
                }
                4 => {
                    // Through the second handle (acquired on demand).
                    let (size, align) = (input.size(), input.align());
                    let layout = Layout::from_size_align(size, align).unwrap();
                    if handle.is_none() {
                        handle = heap.thread_cache();
                    }
                    let p = alloc_via(heap, handle.as_mut(), layout);
                    let id = m.new_id();
                    if !p.is_null() {
                        fill(p as usize, size, id, 0);
                    }
                    m.add(p, layout, id, false, None);
                }
                5 | 6 => {
                    if let Some(b) = m.take(input.u16()) {
                        check(b.ptr, b.layout.size(), b.id, "dealloc");
                        // SAFETY: a live block of this heap, freed once.
                        unsafe { heap.dealloc(b.ptr as *mut u8, b.layout) };
                    }
                }
                7 => {
                    if let Some(b) = m.take(input.u16()) {
                        check(b.ptr, b.layout.size(), b.id, "free");
                        // SAFETY: a live block of this heap, freed once.
                        unsafe { heap.free(b.ptr as *mut u8) };
                    }
                }
                8 => {
                    // Free through the second handle (a remote free for blocks it does not own).
                    if let Some(b) = m.take(input.u16()) {
                        check(b.ptr, b.layout.size(), b.id, "free through the handle");
                        if handle.is_none() {
                            handle = heap.thread_cache();
                        }
                        // SAFETY: a live block of this heap, freed once.
                        unsafe {
                            match handle.as_mut() {
                                Some(h) => h.dealloc(b.ptr as *mut u8, b.layout),
                                None => heap.dealloc(b.ptr as *mut u8, b.layout),
                            }
                        }
                    }
                }
                9 | 10 => {
                    let i = input.u16();
                    let new_size = input.new_size();
                    if let Some(b) = m.take(i) {
                        let old = b.layout.size();
                        check(b.ptr, old, b.id, "realloc");
                        // SAFETY: a live block of this heap with its layout; new_size > 0 and
                        // small enough not to overflow when rounded to the alignment (<= 64).
                        let q = unsafe { heap.realloc(b.ptr as *mut u8, b.layout, new_size) };
                        assert!(!q.is_null(), "realloc to {new_size} failed");
                        let layout = Layout::from_size_align(new_size, b.layout.align()).unwrap();
                        check(
                            q as usize,
                            old.min(new_size),
                            b.id,
                            "contents kept by realloc",
                        );
                        fill(q as usize, new_size, b.id, old.min(new_size));
                        // A block of ours that stays in place keeps its (larger) class; one that
                        // moves goes where its new request belongs. A foreign block stays with
                        // the allocator underneath.
                        if q as usize == b.ptr && b.small {
                            let extent = b.extent;
                            m.insert_span(b.ptr, b.ptr + extent);
                            m.live.push(Block { layout, ..b });
                        } else {
                            let small = if b.small { None } else { Some(false) };
                            m.add(q, layout, b.id, false, small);
                        }
                    }
                }
                11 => {
                    // A block allocated by the helper thread (its own cache), freed later here.
                    let (size, align) = (input.size(), input.align());
                    let layout = Layout::from_size_align(size, align).unwrap();
                    let id = m.new_id();
                    let p = ask(Req::Alloc(layout, id)) as *mut u8;
                    m.add(p, layout, id, false, None);
                }
                12 | 13 => {
                    // Cross-thread free by the helper thread.
                    if let Some(b) = m.take(input.u16()) {
                        ask(Req::Free(b.ptr, b.layout, b.id));
                    }
                }
                14 => {
                    // Drop the handle (its pools are abandoned), or trim.
                    if handle.take().is_none() {
                        heap.trim();
                    }
                }
                _ => m.check_stats("check"),
            }
            assert!(m.live.len() <= MAX_LIVE + 1);
            if m.live.len() > MAX_LIVE {
                let b = m.take(0).unwrap();
                check(b.ptr, b.layout.size(), b.id, "free (live cap)");
                // SAFETY: a live block of this heap, freed once.
                unsafe { heap.dealloc(b.ptr as *mut u8, b.layout) };
            }
        }
        m.check_stats("end of input");
        while let Some(b) = m.take(0) {
            check(b.ptr, b.layout.size(), b.id, "final free");
            // SAFETY: a live block of this heap, freed once.
            unsafe { heap.dealloc(b.ptr as *mut u8, b.layout) };
        }
        drop(handle);
        // Dropping the sender ends the helper. Join it explicitly (pthread_join): a scope's
        // implicit join returns before the thread's thread-locals are destroyed, and libFuzzer's
        // leak check would then see std's channel context of the helper as leaked.
        if let Some((tx, rx, h)) = helper.take() {
            drop((tx, rx));
            h.join().unwrap();
        }
        heap.trim();
        m.check_stats("everything freed");
    });
}

fuzz_target!(|data: &[u8]| run(data));
