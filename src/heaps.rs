//! The registry of live heaps: every [`Allocator`](crate::Allocator), the process-wide heap
//! and every instance, is in it from its construction to its drop. Two things walk it: the
//! thread-exit hook (a thread's caches of every free-threaded heap are handed back when it
//! exits) and the `pthread_atfork` handlers (each GIL-mode heap's lock is taken in `prepare` and
//! released in `parent` and `child`; each free-threaded heap is repaired in the child).
//!
//! # Structure
//! Slots in chunks: a static first chunk of [`CHUNK`] slots, more chunks mapped (never unmapped)
//! and linked when it fills. A slot holds a pointer to a heap (null: vacant), a count of walkers
//! inside it (`users`) and a count of forks whose `prepare` handled its heap (`forks`).
//!
//! # Invariants
//! 1. A heap is at a fixed address while it is registered (`heap::Inner` lives in its own
//!    mapping or in the process shell's static), fully built before its pointer is stored, and
//!    destroyed only after [`unregister`] has returned.
//! 2. The registry lock (`LOCK`, recursive, a spin lock that yields) is taken only to register,
//!    to unregister, and by a fork from `prepare` to `parent`/`child`. So the set of registered
//!    heaps cannot change during a fork (except by the forking thread itself, which `forks`
//!    covers), and a heap dropped concurrently with a fork is either out of the registry before
//!    `prepare` walks it or waits for the fork to end before it is unregistered.
//! 3. The thread-exit walk takes no lock. It pins a slot (`users += 1`, SeqCst), then loads the
//!    slot's heap (SeqCst); [`unregister`] stores null (SeqCst) and then waits until `users` is 0.
//!    By the SeqCst total order, either the walker sees null, or the unregistering thread sees
//!    the pin and waits for the walker to leave: no walker is inside a heap being destroyed. A
//!    slot reused by a new heap while a walker holds its pin is fine: the walker then finds the
//!    new heap, which is fully built (invariant 1), and whose own drop waits for the pin.
//! 4. Nothing here allocates through a heap: chunks come from `mmap`, and the handlers and the
//!    walk use only atomics, a const thread-local without destructor and the heaps' own fork and
//!    exit entries, which do not allocate through ftmalloc.
//! 5. GIL-mode locks are taken in `prepare` in slot order, one heap after the other, by the one
//!    thread that holds the registry lock; no thread holds one heap's lock while it waits for
//!    another's or for the registry lock (a heap's critical sections call no user code and no
//!    other heap), so the order cannot deadlock.
//! 6. In the child only the forking thread exists: pins of the parent's other threads are
//!    reset to 0 (a drop in the child would otherwise wait for them forever).
//!
//! The hooks (the thread registry's exit hook and `pthread_atfork`) are installed when the
//! first heap is registered; the code they run stays mapped even after a `dlclose` (the thread
//! registry pins its object, `ft::registry`).

use crate::base::os;
use crate::heap::Inner;
use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// Slots per chunk.
const CHUNK: usize = 256;

struct Slot {
    /// The registered heap; null when the slot is vacant.
    heap: AtomicPtr<Inner>,
    /// Thread-exit walkers inside this slot's heap (invariant 3).
    users: AtomicUsize,
    /// Forks whose `prepare` handled this slot's heap and whose `parent`/`child` has not yet.
    /// Written only with the registry lock held.
    forks: AtomicUsize,
}

struct Chunk {
    slots: [Slot; CHUNK],
    /// The next chunk (null: none yet); set once, with the registry lock held, never cleared.
    next: AtomicPtr<Chunk>,
}

#[allow(clippy::declare_interior_mutable_const)]
const VACANT: Slot = Slot {
    heap: AtomicPtr::new(ptr::null_mut()),
    users: AtomicUsize::new(0),
    forks: AtomicUsize::new(0),
};

static FIRST: Chunk = Chunk {
    slots: [VACANT; CHUNK],
    next: AtomicPtr::new(ptr::null_mut()),
};

/// Slots ever used, plus one past the highest (walkers stop there).
static HWM: AtomicUsize = AtomicUsize::new(0);

/// The registry lock's holder (an address unique to its thread; 0: free).
static OWNER: AtomicUsize = AtomicUsize::new(0);
/// The holder's nesting depth (read and written only by the holder).
static DEPTH: AtomicUsize = AtomicUsize::new(0);

/// Whether the hooks are installed.
static HOOKED: AtomicBool = AtomicBool::new(false);

std::thread_local! {
    /// Its address identifies the thread to the registry lock. Const, no destructor.
    static ME: Cell<u8> = const { Cell::new(0) };
}

fn me() -> usize {
    ME.with(|m| m as *const Cell<u8> as usize)
}

/// Takes the registry lock (recursive: a signal handler of the holder may fork).
fn lock() {
    let id = me();
    if OWNER.load(Ordering::Relaxed) == id {
        DEPTH.fetch_add(1, Ordering::Relaxed);
        return;
    }
    while OWNER
        .compare_exchange_weak(0, id, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        // Held by a fork (which may wait for a GIL-mode heap's lock) or a short registration.
        std::thread::yield_now();
    }
    DEPTH.store(1, Ordering::Relaxed);
}

fn unlock() {
    debug_assert_eq!(OWNER.load(Ordering::Relaxed), me());
    if DEPTH.fetch_sub(1, Ordering::Relaxed) == 1 {
        OWNER.store(0, Ordering::Release);
    }
}

/// The slot with index `i`, if its chunk exists.
fn slot(i: usize) -> Option<&'static Slot> {
    let mut c: &'static Chunk = &FIRST;
    for _ in 0..i / CHUNK {
        let next = c.next.load(Ordering::Acquire);
        if next.is_null() {
            return None;
        }
        // SAFETY: chunks are mapped, initialised before they are linked (release, read with
        // acquire) and never unmapped.
        c = unsafe { &*next };
    }
    Some(&c.slots[i % CHUNK])
}

/// Calls `f` with each slot below the high-water mark, in index order.
fn for_each(mut f: impl FnMut(&'static Slot)) {
    let hwm = HWM.load(Ordering::Acquire);
    let mut c: &'static Chunk = &FIRST;
    let mut i = 0;
    while i < hwm {
        f(&c.slots[i % CHUNK]);
        i += 1;
        if i % CHUNK == 0 && i < hwm {
            let next = c.next.load(Ordering::Acquire);
            if next.is_null() {
                return;
            }
            // SAFETY: as in `slot`.
            c = unsafe { &*next };
        }
    }
}

/// Enters `heap` (fully built, at its fixed address) in the registry; returns its slot.
/// Installs the hooks with the first heap.
pub(crate) fn register(heap: *mut Inner) -> usize {
    install_hooks();
    lock();
    let mut i = 0;
    let index = loop {
        match slot(i) {
            Some(s) => {
                if s.heap.load(Ordering::Relaxed).is_null() {
                    s.forks.store(0, Ordering::Relaxed);
                    s.heap.store(heap, Ordering::SeqCst);
                    break i;
                }
                i += 1;
            }
            None => {
                // Every slot is taken: link a new chunk (zero bytes are vacant slots).
                let bytes = core::mem::size_of::<Chunk>().next_multiple_of(os::page_size());
                let c = os::map(bytes).cast::<Chunk>();
                if c.is_null() {
                    crate::base::diag::die(
                        b"ftmalloc: cannot map the registry of heaps (mmap failed)\n",
                    );
                }
                let mut last: &'static Chunk = &FIRST;
                loop {
                    let next = last.next.load(Ordering::Acquire);
                    if next.is_null() {
                        break;
                    }
                    // SAFETY: as in `slot`.
                    last = unsafe { &*next };
                }
                last.next.store(c, Ordering::Release);
            }
        }
    };
    HWM.fetch_max(index + 1, Ordering::Release);
    unlock();
    index
}

/// Takes the heap in slot `index` (from [`register`]) out of the registry and waits until no
/// thread-exit walker is inside it (invariant 3); waits for a fork in progress first
/// (invariant 2).
pub(crate) fn unregister(index: usize) {
    let Some(s) = slot(index) else {
        debug_assert!(false, "unregister of a slot never registered");
        return;
    };
    lock();
    s.heap.store(ptr::null_mut(), Ordering::SeqCst);
    unlock();
    while s.users.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
}

fn install_hooks() {
    if HOOKED.load(Ordering::Acquire) || HOOKED.swap(true, Ordering::AcqRel) {
        return;
    }
    crate::ft::set_thread_exit_hook(thread_exit);
    // Miri cannot fork (nor emulate `pthread_atfork`).
    if !cfg!(miri) {
        // SAFETY: the handlers are valid extern "C" fns that stay mapped (module docs);
        // registering may allocate through the C library's allocator or this one (not while
        // walking).
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    }
}

/// The thread registry's exit hook: thread `tid` is exiting; each free-threaded heap abandons
/// its cache of the thread (invariant 3 keeps a concurrent drop out).
fn thread_exit(tid: usize) {
    for_each(|s| {
        s.users.fetch_add(1, Ordering::SeqCst);
        let h = s.heap.load(Ordering::SeqCst);
        if !h.is_null() {
            // SAFETY: registered and pinned: the heap stays built until we unpin.
            unsafe { (*h).thread_exit(tid) };
        }
        s.users.fetch_sub(1, Ordering::Release);
    });
}

extern "C" fn fork_prepare() {
    lock();
    crate::gil::fork_begin();
    for_each(|s| {
        let h = s.heap.load(Ordering::Relaxed);
        if !h.is_null() {
            // SAFETY: registered, and it stays so while we hold the lock (invariant 2).
            unsafe { (*h).fork_prepare() };
            s.forks.fetch_add(1, Ordering::Relaxed);
        }
    });
}

extern "C" fn fork_parent() {
    for_each(|s| {
        let h = s.heap.load(Ordering::Relaxed);
        if !h.is_null() && s.forks.load(Ordering::Relaxed) != 0 {
            s.forks.fetch_sub(1, Ordering::Relaxed);
            // SAFETY: as in fork_prepare, which handled this heap.
            unsafe { (*h).fork_parent() };
        }
    });
    crate::gil::fork_end();
    unlock();
}

extern "C" fn fork_child() {
    for_each(|s| {
        s.users.store(0, Ordering::Relaxed);
        let h = s.heap.load(Ordering::Relaxed);
        if !h.is_null() && s.forks.load(Ordering::Relaxed) != 0 {
            s.forks.fetch_sub(1, Ordering::Relaxed);
            // SAFETY: as in fork_parent.
            unsafe { (*h).fork_child() };
        }
    });
    crate::gil::fork_end();
    unlock();
}
