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
use std::sync::mpsc;

/// Most blocks live at once (keeps an input's memory and time bounded).
const MAX_LIVE: usize = 2048;

#[path = "../common/input.rs"]
mod input;
use input::Input;

/// The live-block model, shared with `tests/model.rs`.
#[path = "../../tests/common/live.rs"]
mod live;
use live::{check, fill, Block, Live};

/// `Live::add`, filling a fresh block with its pattern (or checking it is zeroed and then
/// filling it, when `zeroed`) after the checks.
fn add(m: &mut Live<'_>, p: *mut u8, layout: Layout, id: u64, zeroed: bool, small: Option<bool>) {
    let b = m.add(p, layout, id, small);
    if zeroed {
        for i in 0..layout.size() {
            // SAFETY: i < size of a fresh block.
            assert_eq!(unsafe { *p.add(i) }, 0, "alloc_zeroed byte {i} not zero");
        }
        // SAFETY: a live block of layout.size() writable bytes.
        unsafe { fill(b.ptr, 0, layout.size(), id) };
    }
}

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
        let mut m = Live::new(heap, format!("{mode} mode, {config:?}"));
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
                                    // SAFETY: a fresh block of layout.size() bytes.
                                    unsafe { fill(p as usize, 0, layout.size(), id) };
                                }
                                p as usize
                            }
                            Req::Free(p, layout, id) => {
                                // SAFETY: a live block of layout.size() bytes.
                                unsafe { check(p, layout.size(), id, "cross-thread free") };
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
                        // SAFETY: a fresh block of `size` bytes.
                        unsafe { fill(p as usize, 0, size, id) };
                    }
                    add(&mut m, p, layout, id, false, None);
                }
                3 => {
                    let (size, align) = (input.size(), input.align());
                    let layout = Layout::from_size_align(size, align).unwrap();
                    // SAFETY: any layout is allowed.
                    let p = unsafe { heap.alloc_zeroed(layout) };
                    let id = m.new_id();
                    add(&mut m, p, layout, id, true, None);
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
                        // SAFETY: a fresh block of `size` bytes.
                        unsafe { fill(p as usize, 0, size, id) };
                    }
                    add(&mut m, p, layout, id, false, None);
                }
                5 | 6 => {
                    if let Some(b) = m.take(input.u16().into()) {
                        // SAFETY: a live block of its layout's size.
                        unsafe { check(b.ptr, b.layout.size(), b.id, "dealloc") };
                        // SAFETY: a live block of this heap, freed once.
                        unsafe { heap.dealloc(b.ptr as *mut u8, b.layout) };
                    }
                }
                7 => {
                    if let Some(b) = m.take(input.u16().into()) {
                        // SAFETY: a live block of its layout's size.
                        unsafe { check(b.ptr, b.layout.size(), b.id, "free") };
                        // SAFETY: a live block of this heap, freed once.
                        unsafe { heap.free(b.ptr as *mut u8) };
                    }
                }
                8 => {
                    // Free through the second handle (a remote free for blocks it does not own).
                    if let Some(b) = m.take(input.u16().into()) {
                        // SAFETY: a live block of its layout's size.
                        unsafe { check(b.ptr, b.layout.size(), b.id, "free through the handle") };
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
                    if let Some(b) = m.take(i.into()) {
                        let old = b.layout.size();
                        // SAFETY: a live block of `old` bytes.
                        unsafe { check(b.ptr, old, b.id, "realloc") };
                        // SAFETY: a live block of this heap with its layout; new_size > 0 and
                        // small enough not to overflow when rounded to the alignment (<= 64).
                        let q = unsafe { heap.realloc(b.ptr as *mut u8, b.layout, new_size) };
                        assert!(!q.is_null(), "realloc to {new_size} failed");
                        let layout = Layout::from_size_align(new_size, b.layout.align()).unwrap();
                        let kept = old.min(new_size);
                        // SAFETY: q is live with new_size bytes; its first `kept` were copied.
                        unsafe {
                            check(q as usize, kept, b.id, "contents kept by realloc");
                            fill(q as usize, kept, new_size, b.id);
                        }
                        // A block of ours that stays in place keeps its (larger) class; one that
                        // moves goes where its new request belongs. A foreign block stays with
                        // the allocator underneath.
                        if q as usize == b.ptr && b.small {
                            m.push(Block { layout, ..b });
                        } else {
                            let small = if b.small { None } else { Some(false) };
                            add(&mut m, q, layout, b.id, false, small);
                        }
                    }
                }
                11 => {
                    // A block allocated by the helper thread (its own cache), freed later here.
                    let (size, align) = (input.size(), input.align());
                    let layout = Layout::from_size_align(size, align).unwrap();
                    let id = m.new_id();
                    let p = ask(Req::Alloc(layout, id)) as *mut u8;
                    add(&mut m, p, layout, id, false, None);
                }
                12 | 13 => {
                    // Cross-thread free by the helper thread.
                    if let Some(b) = m.take(input.u16().into()) {
                        ask(Req::Free(b.ptr, b.layout, b.id));
                    }
                }
                14 => {
                    // Drop the handle (its pools are abandoned), or trim.
                    if handle.take().is_none() {
                        heap.trim();
                    }
                }
                _ => {
                    // The handle's batched remote frees count as in use until published
                    // (`ThreadCache::flush`'s contract); the model has them freed already.
                    if let Some(h) = handle.as_mut() {
                        h.flush();
                    }
                    m.check_stats("check")
                }
            }
            assert!(m.len() <= MAX_LIVE + 1);
            if m.len() > MAX_LIVE {
                let b = m.take(0).unwrap();
                // SAFETY: a live block of its layout's size.
                unsafe { check(b.ptr, b.layout.size(), b.id, "free (live cap)") };
                // SAFETY: a live block of this heap, freed once.
                unsafe { heap.dealloc(b.ptr as *mut u8, b.layout) };
            }
        }
        if let Some(h) = handle.as_mut() {
            h.flush();
        }
        m.check_stats("end of input");
        while let Some(b) = m.take(0) {
            // SAFETY: a live block of its layout's size.
            unsafe { check(b.ptr, b.layout.size(), b.id, "final free") };
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
