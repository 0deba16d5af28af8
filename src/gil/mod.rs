//! GIL mode: pymalloc's algorithms (`pymalloc`) behind one global lock, the GIL's stand-in.
//!
//! [`GilHeap`] is the lock, the fork protocol and the `Front` implementation; [`GilCore`]
//! (`pymalloc.rs`) is pymalloc's state and algorithms, reached only through a [`GilGuard`].
//!
//! # The lock, and `fork`
//! The lock is a futex word (`state`: `LOCKED`, `WAITERS`, `DEFERRED` bits and a count of
//! forks in progress, `FORKING`): an
//! uncontended acquire is one compare-exchange `0 -> LOCKED`, an uncontended release one
//! compare-exchange `LOCKED -> 0`; contended threads sleep on the word (Drepper's three-state
//! mutex). It is hand-written, not `std::sync::Mutex`, for one reason: `fork`.
//!
//! The child of a multi-threaded process must not inherit the heap in the middle of another
//! thread's update, so the `fork` prepare handler takes the lock and the parent and child
//! handlers release it (glibc does the same for its arenas). Holding it across `fork` must not
//! deadlock, and glibc runs the prepare handlers *before* it takes stdio's list lock: a thread
//! holding a `FILE` lock (in `getline`) that waits for the heap lock, a thread holding the list
//! lock (in `fflush(NULL)`) that waits for that `FILE`, and the forking thread that holds the
//! heap lock and waits for the list lock would wait for each other forever. So while a fork is
//! in progress (protocol):
//! 1. The prepare handler counts itself in the high bits of `state` (`FORKING`: forks in
//!    progress; glibc runs the prepare handlers of concurrent forks concurrently) and wakes
//!    every sleeper *before* it takes the lock (it waits for the current holder, whose
//!    critical section never waits for anything, or for another forker's fork to finish).
//! 2. A thread that finds the lock taken and `FORKING` set does not wait: an allocation is
//!    served by the allocator underneath ([`large`](crate::layout::large), exactly as a request above
//!    the small limit, and freed the same way: the arena map does not know it), and a free
//!    pushes the block on the `deferred` stack (a Treiber stack through the block's first word,
//!    one compare-exchange, take-all removal only) and then sets `DEFERRED`. A sleeper woken by
//!    step 1 re-checks and does the same. The forking thread's own allocations in `pthread_atfork`
//!    handlers (which glibc runs after ours) take this path too, so they cannot deadlock on the
//!    lock their thread holds.
//! 3. Releasing the lock with `DEFERRED` set first takes the deferred stack and frees its blocks
//!    (with the lock held), so a deferred block is freed by the next release. A pusher that finds
//!    the lock free and no fork in progress takes and releases it itself.
//! 4. The parent handler uncounts its fork and releases the lock (step 3 drains); the child
//!    handler resets the count to its own thread's forks in progress (the parent's other
//!    forkers do not exist in the child) and releases the lock.
//!    In the child, a free that was in flight in another thread is lost (at most one block
//!    per thread); the heap itself is consistent because the forking thread held the lock.
//! 5. A single-threaded process (glibc's `__libc_single_threaded`) takes no lock at `fork`: no
//!    other thread can be inside the heap, and a `fork` from a signal handler that interrupted
//!    this thread's own allocation would otherwise wait for itself. (A multi-threaded process
//!    that forks from a signal handler interrupting an allocation is not supported, as with
//!    glibc's own malloc.) Nested forks (from a signal handler during `fork`) are counted, and
//!    only the level that took the lock releases it.
//!
//! # A holder that does not come back
//! A signal handler that allocates while its thread holds the lock (it interrupted that
//! thread's own allocation) would wait for itself forever: POSIX leaves `malloc` in a signal
//! handler undefined, but glibc survives it. A waiter that finds the lock held by its own
//! thread serves its request without the heap, as during a fork (protocol step 2: an
//! allocation from the allocator underneath, a free deferred to the holder's release). Who
//! holds the lock is known only on the slow path: the uncontended acquire stays one
//! compare-exchange of a constant (storing the holder there would add instructions to every
//! call, over `.ci/count`'s budgets), and a slow acquire stores its thread in `holder`, which
//! its release (always the slow one: it leaves `WAITERS` set) clears. So a waiter (not
//! `lock_wait`'s) that finds
//! - `holder` its own thread: gives up at once;
//! - another thread: waits, however long;
//! - 0 (the lock was taken on the fast path): judges by progress. It has set `WAITERS`, so
//!   every release from then on takes the slow release, which counts itself in `releases`;
//!   after `STALL_MS` with no release it gives up, and gives up again at once while that same
//!   holder keeps the lock. A fast-path holder merely descheduled that long costs the same:
//!   some requests served underneath, never a wrong result. (At 10 ms this happened under
//!   load in `tests/global_gil.rs`; 200 ms is far above any critical section.)
//!
//! The lock and the fork protocol are outside the loom facade (loom has no futex); they are
//! tested by `tests/c/fork_orders.c` under the drop-in and `tests/global_fork.rs`.
//!
//! # Serialised by the caller
//! [`SerialGilHeap`] (`GilHeap<true>`) is built only by
//! [`SerializedAllocator::new`](crate::SerializedAllocator::new), whose caller
//! promised that every call on it is serialised by a lock of the caller's own (CPython's GIL,
//! for the `PyMem_*` domains that are only called with it held). Its [`GilHeap::lock`] and
//! [`GilHeap::lock_wait`] hand out the guard without touching `state`, and dropping the guard
//! releases nothing: pymalloc's algorithms run under the caller's lock, as `obmalloc.c` runs
//! under the GIL. Such a heap is never the process-wide one, so the fork protocol above never
//! runs on it (`fork` safety is the caller's lock's business, as it is CPython's).
//!
//! It is a type parameter, not a field, so that the locked heap's paths stay exactly as they
//! were: a run-time flag tested on every lock and release cost the process-wide heap 6 to 13
//! instructions per call under `.ci/count`, more than its budgets allow.

mod pymalloc;

use crate::base::{os, stack};
use crate::layout::arena_map::ArenaMap;
use crate::layout::config::Config;
use crate::layout::geometry::Geometry;
use crate::layout::large;
use crate::layout::pool::PoolHeader;
use crate::layout::size_class::{class_size, ALIGNMENT};
use crate::layout::stats::Stats;
use crate::layout::{Arenas, Front, Mode};
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
pub(crate) use pymalloc::GilCore;

/// GIL mode's heap: [`GilCore`] behind one lock (see the module docs: *The lock, and `fork`*),
/// or, with `SERIAL`, behind the caller's lock (*Serialised by the caller*).
pub(crate) struct GilHeap<const SERIAL: bool = false> {
    state: AtomicU32,
    /// Releases made on the slow path (with `WAITERS` set), counted there only: a waiter that
    /// sees it unchanged for [`STALL_MS`] knows the holder made no progress (*A holder that
    /// does not come back*).
    releases: AtomicU32,
    /// The holder's thread (`pthread_self`) while the lock was taken on the slow path, else 0
    /// (taken on the fast path, which stores nothing, or free): written after a slow acquire,
    /// cleared by the slow release, which every slow acquire's release takes (it leaves
    /// `WAITERS` set). Read by waiters only (*A holder that does not come back*).
    holder: AtomicUsize,
    /// Blocks freed while a fork held the lock (protocol step 2), linked through their first word.
    deferred: AtomicPtr<u8>,
    core: UnsafeCell<GilCore>,
}

/// GIL mode serialised by its caller (module docs: *Serialised by the caller*).
pub(crate) type SerialGilHeap = GilHeap<true>;

const LOCKED: u32 = 1;
/// Some thread may sleep on the word (set conservatively by every contended acquirer).
const WAITERS: u32 = 2;
const DEFERRED: u32 = 4;
/// The bits above count the forks in progress (their prepare ran, their parent or child
/// handler has not): a fork is in progress while any is set.
const FORK_ONE: u32 = 8;
const FORKING: u32 = !(FORK_ONE - 1);

/// Milliseconds a waiter sleeps without any release of the lock before it serves its request
/// without the heap (module docs, *A holder that does not come back*).
const STALL_MS: u64 = 200;

std::thread_local! {
    /// The lock's `releases` count (plus one; 0: none) when this thread last gave up waiting
    /// (*A holder that does not come back*): while it is unchanged and the lock held, the same
    /// holder still has it, and this thread gives up again at once. (One heap per process
    /// reaches the slow path from a signal handler in practice, the process heap; another heap
    /// at worst waits its `STALL_MS` once more.)
    static GAVE_UP_AT: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
    /// This thread's forks in progress (nesting depth, from a signal handler during `fork`) and
    /// one bit per depth: whether that level takes the locks (`fork_begin`). One level per
    /// fork, shared by every GIL-mode heap the registry of heaps walks.
    static FORK_LEVELS: core::cell::Cell<(u32, u64)> = const { core::cell::Cell::new((0, 0)) };
}

// SAFETY: the raw pointers in GilCore point into mappings owned by the heap and are only
// dereferenced with the lock held.
unsafe impl Send for GilCore {}
// SAFETY: `core` is reached only through a `GilGuard`, which exists only while the lock is held
// (or, for a `SerialGilHeap`, while the caller's own lock is held: the contract of
// `SerializedAllocator::new`, its only constructor); every other field is atomic.
unsafe impl<const SERIAL: bool> Sync for GilHeap<SERIAL> {}
// SAFETY: as above; the heap owns its mappings.
unsafe impl<const SERIAL: bool> Send for GilHeap<SERIAL> {}

/// The lock held (or the caller's, for a heap serialised by its caller): derefs to the
/// [`GilCore`]; releasing frees deferred blocks first.
pub(crate) struct GilGuard<'a, const SERIAL: bool = false> {
    heap: &'a GilHeap<SERIAL>,
    map: &'a ArenaMap,
}

impl<const SERIAL: bool> Deref for GilGuard<'_, SERIAL> {
    type Target = GilCore;
    #[inline(always)]
    fn deref(&self) -> &GilCore {
        // SAFETY: a guard exists only while its thread holds the lock (or the caller's lock
        // serialises the heap).
        unsafe { &*self.heap.core.get() }
    }
}

impl<const SERIAL: bool> DerefMut for GilGuard<'_, SERIAL> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut GilCore {
        // SAFETY: as in deref; the lock makes this the only reference.
        unsafe { &mut *self.heap.core.get() }
    }
}

impl<const SERIAL: bool> Drop for GilGuard<'_, SERIAL> {
    #[inline(always)]
    fn drop(&mut self) {
        if SERIAL {
            // The caller's lock serialises this heap: there is nothing of ours to release.
            return;
        }
        if self
            .heap
            .state
            .compare_exchange(LOCKED, 0, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            self.heap.unlock_slow(self.map);
        }
    }
}

extern "C" {
    /// glibc (2.32 and later): non-zero while the process has never had a second thread.
    static __libc_single_threaded: core::ffi::c_char;
}

impl<const SERIAL: bool> GilHeap<SERIAL> {
    pub(crate) fn new(geo: Geometry) -> Option<GilHeap<SERIAL>> {
        Some(GilHeap {
            state: AtomicU32::new(0),
            releases: AtomicU32::new(0),
            holder: AtomicUsize::new(0),
            deferred: AtomicPtr::new(ptr::null_mut()),
            core: UnsafeCell::new(GilCore::new(geo)?),
        })
    }

    /// Takes the lock (the GIL) for an allocation or a free; `None` while a fork holds it
    /// (protocol step 2: serve the request without the heap).
    #[inline(always)]
    pub(crate) fn lock<'a>(&'a self, map: &'a ArenaMap) -> Option<GilGuard<'a, SERIAL>> {
        // The uncontended case (and a serialised heap) is `try_lock`'s.
        match self.try_lock(map) {
            Some(g) => Some(g),
            None => self.lock_slow(map, false),
        }
    }

    /// Takes the lock only if it is free at once (one compare-exchange): the fast paths, which
    /// leave every other case (a holder, sleepers, a fork) to [`lock`](Self::lock).
    #[inline(always)]
    fn try_lock<'a>(&'a self, map: &'a ArenaMap) -> Option<GilGuard<'a, SERIAL>> {
        if SERIAL {
            // The caller holds its own lock across this call (the constructor's contract).
            return Some(GilGuard { heap: self, map });
        }
        // Not `bool::then_some`: it would build a guard either way, and dropping the unused
        // one would release a lock another thread holds.
        if self
            .state
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(GilGuard { heap: self, map })
        } else {
            None
        }
    }

    /// The always-on block check, then the whole free under the lock (`WAIT`: `lock`, an
    /// instance's free; otherwise `try_lock`, the process heap's fast path); false (nothing
    /// done) when the check fails (the general path reports it) or no guard is had.
    ///
    /// # Safety
    /// `pool` is the header of `block`'s pool in a mapped arena of this heap; `block` is live
    /// or invalid (then the check fails); `geo` is the heap's geometry.
    #[inline(always)]
    unsafe fn free_checked<const WAIT: bool>(
        &self,
        pool: *mut PoolHeader,
        block: *mut u8,
        geo: &Geometry,
        arenas: &Arenas,
    ) -> bool {
        // SAFETY: `pool` is a header in a mapped arena of ours (the contract).
        let checked = unsafe { PoolHeader::check_block(pool, block as usize, geo) };
        if !matches!(checked, Ok((_, refs)) if refs != 0) {
            return false;
        }
        let guard = if WAIT {
            self.lock(&arenas.map)
        } else {
            self.try_lock(&arenas.map)
        };
        let Some(mut g) = guard else {
            return false;
        };
        // SAFETY: a checked block of a pool in use: live by the contract.
        unsafe { g.free(pool, block, &arenas.map) };
        true
    }

    /// Takes the lock, waiting through a fork (statistics, checks, drop: never called from
    /// `pthread_atfork` handlers).
    pub(crate) fn lock_wait<'a>(&'a self, map: &'a ArenaMap) -> GilGuard<'a, SERIAL> {
        if SERIAL {
            // As in `lock`: the caller's lock is held.
            return GilGuard { heap: self, map };
        }
        loop {
            if let Some(g) = self.lock_slow(map, true) {
                return g;
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn lock_slow<'a>(
        &'a self,
        map: &'a ArenaMap,
        through_fork: bool,
    ) -> Option<GilGuard<'a, SERIAL>> {
        // The slow releases seen and since when (ms), while the lock stays held.
        let mut seen: Option<(u32, u64)> = None;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & LOCKED == 0 {
                // Acquired from the slow path: others may sleep, so keep WAITERS (mutex3).
                if self
                    .state
                    .compare_exchange_weak(
                        s,
                        s | LOCKED | WAITERS,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    self.holder.store(this_thread(), Ordering::Relaxed);
                    return Some(GilGuard { heap: self, map });
                }
                continue;
            }
            if s & FORKING != 0 && !through_fork {
                return None;
            }
            if s & WAITERS == 0
                && self
                    .state
                    .compare_exchange_weak(s, s | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            // WAITERS is set: the holder's release takes the slow path and counts itself.
            let holder = self.holder.load(Ordering::Relaxed);
            let wait_ms = if through_fork {
                None
            } else if holder == this_thread() {
                // This thread holds the lock (taken on the slow path): a signal handler
                // interrupted its critical section. Waiting would be forever.
                return None;
            } else if holder != 0 {
                // Another thread holds it and will release it: wait, however long.
                seen = None;
                None
            } else {
                // The holder took the fast path: unknown; judge by progress.
                let r = self.releases.load(Ordering::Acquire);
                if GAVE_UP_AT.with(|g| g.get()) == r.wrapping_add(1) {
                    // The holder this thread gave up on still holds the lock.
                    return None;
                }
                let now = os::now_ms();
                let since = match seen {
                    Some((r0, t)) if r0 == r => t,
                    _ => {
                        seen = Some((r, now));
                        now
                    }
                };
                let waited = now.saturating_sub(since);
                if waited >= STALL_MS {
                    // No release for STALL_MS: the holder is this very thread (a signal
                    // handler interrupted its critical section) or a stalled thread. Serve
                    // the request without the heap, as during a fork.
                    GAVE_UP_AT.with(|g| g.set(r.wrapping_add(1)));
                    return None;
                }
                Some(STALL_MS - waited)
            };
            // Returns at once if the word changed (released, or FORKING set meanwhile).
            futex_wait(&self.state, s | WAITERS, wait_ms);
        }
    }

    #[cold]
    #[inline(never)]
    fn unlock_slow(&self, map: &ArenaMap) {
        // Before the release: a waiter must not take a later holder for this one.
        self.holder.store(0, Ordering::Relaxed);
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & DEFERRED != 0 {
                self.state.fetch_and(!DEFERRED, Ordering::Relaxed);
                let mut b = self.deferred.swap(ptr::null_mut(), Ordering::Acquire);
                // SAFETY: we hold the lock; the chain was taken whole, so its blocks (live
                // blocks of ours whose owners freed them, protocol step 2) are ours to free.
                let core = unsafe { &mut *self.core.get() };
                while !b.is_null() {
                    // SAFETY: each pushed block's first word links the next (written before the
                    // push's release, read after our acquire).
                    let next = unsafe { b.cast::<*mut u8>().read() };
                    let pool = core.geo.pool_of(b as usize) as *mut PoolHeader;
                    // SAFETY: a checked live block of ours (the free path checked it).
                    unsafe { core.free(pool, b, map) };
                    b = next;
                }
                continue;
            }
            if self
                .state
                .compare_exchange_weak(
                    s,
                    s & !(LOCKED | WAITERS),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                if s & WAITERS != 0 {
                    // Progress, for waiters that time their wait (`lock_slow`).
                    self.releases.fetch_add(1, Ordering::Release);
                    futex_wake(&self.state, 1);
                }
                return;
            }
        }
    }

    /// Frees `block` of `pool` while a fork holds the lock (protocol steps 2 and 3).
    ///
    /// # Safety
    /// `block` must be a checked live block of this heap, not used afterwards.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn free_deferred(&self, block: *mut u8, map: &ArenaMap) {
        stack::push(
            self.deferred.load(Ordering::Relaxed),
            |h| {
                // SAFETY: the block is ours until the push lands; blocks are at least 16 bytes.
                unsafe { block.cast::<*mut u8>().write(h) };
                block
            },
            |h, new| {
                self.deferred
                    .compare_exchange_weak(h, new, Ordering::Release, Ordering::Relaxed)
            },
        );
        let s = self.state.fetch_or(DEFERRED, Ordering::Release);
        if s & (LOCKED | FORKING) == 0 {
            // Nobody will release the lock soon: drain ourselves (step 3).
            drop(self.lock(map));
        }
    }

    /// `pthread_atfork` prepare handler (protocol steps 1 and 5), inside the fork level that
    /// [`fork_begin`] opened. Several threads may fork at once (glibc runs their prepare
    /// handlers concurrently): each counts itself in `state`, and they take the lock one after
    /// the other.
    pub(crate) fn lock_for_fork(&self, map: &ArenaMap) {
        self.state.fetch_add(FORK_ONE, Ordering::SeqCst);
        if current_level_takes() {
            // Sleepers re-check and fall back instead of waiting (step 2).
            futex_wake(&self.state, i32::MAX);
            core::mem::forget(self.lock_wait(map));
        }
    }

    /// `pthread_atfork` parent handler (protocol step 4), before [`fork_end`].
    pub(crate) fn unlock_in_parent(&self, map: &ArenaMap) {
        self.state.fetch_sub(FORK_ONE, Ordering::SeqCst);
        if current_level_takes() {
            // Releases the lock the prepare handler took, draining deferred frees.
            drop(GilGuard { heap: self, map });
        }
    }

    /// `pthread_atfork` child handler (protocol step 4), before [`fork_end`]. The child's only
    /// thread is the one that forked: forks in progress in other threads of the parent, and
    /// their sleepers, are gone; this thread's outer levels (a fork from a signal handler
    /// during `fork`) still count.
    pub(crate) fn unlock_in_child(&self, map: &ArenaMap) {
        let (depth, _) = FORK_LEVELS.with(|l| l.get());
        let outer = depth.saturating_sub(1);
        let s = self.state.load(Ordering::Relaxed);
        self.state.store(
            (s & (LOCKED | DEFERRED)) | (outer * FORK_ONE),
            Ordering::Relaxed,
        );
        // The state lost WAITERS, so the release below may take the fast one, which would
        // leave this thread named as the holder.
        self.holder.store(0, Ordering::Relaxed);
        if current_level_takes() {
            drop(GilGuard { heap: self, map });
        }
    }
}

/// Opens a fork level of the calling thread (the registry of heaps calls it once per `fork`,
/// before the prepare handlers of all heaps): whether this fork takes the GIL-mode locks
/// (protocol step 5: not in a single-threaded process) is decided once, for every heap.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn fork_begin() {
    let (depth, held) = FORK_LEVELS.with(|l| l.get());
    // SAFETY: a byte glibc exports; it only goes from non-zero to zero, when a second
    // thread is created, which cannot happen while this thread runs the prepare handler
    // of a single-threaded process.
    let single = unsafe { ptr::read_volatile(&raw const __libc_single_threaded) } != 0;
    let bit = u64::from(!single) << (depth % 64);
    FORK_LEVELS.with(|l| l.set((depth + 1, held | bit)));
}

/// Closes the calling thread's innermost fork level (after the parent or child handlers of
/// all heaps).
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn fork_end() {
    let (depth, held) = FORK_LEVELS.with(|l| l.get());
    debug_assert!(depth > 0, "fork handler without prepare");
    let depth = depth.saturating_sub(1);
    let bit = 1u64 << (depth % 64);
    FORK_LEVELS.with(|l| l.set((depth, held & !bit)));
}

/// Whether the calling thread's innermost fork level takes the locks (see [`fork_begin`]).
fn current_level_takes() -> bool {
    let (depth, held) = FORK_LEVELS.with(|l| l.get());
    depth > 0 && held & (1u64 << ((depth - 1) % 64)) != 0
}

/// The calling thread, for [`GilHeap::holder`] (`pthread_self`: a read of the thread
/// pointer, never 0).
fn this_thread() -> usize {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

/// Sleeps while `*word == expected` (Linux `futex(FUTEX_WAIT_PRIVATE)`, the lock's
/// sleep; outside the free-threaded path, which never waits), at most `timeout_ms` when given;
/// returns at once if it differs, and may return spuriously: callers re-check in a loop.
fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32, timeout_ms: Option<u64>) {
    let ts = timeout_ms.map(|ms| libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the whole call; a null timeout waits for a
    // wake, another is a relative timeout that lives across the call. The kernel only reads
    // the word. (It fails with EAGAIN when the word changed, ETIMEDOUT on a timeout: errno is
    // kept, as `free` must.)
    os::keep_errno(|| unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            tsp,
        )
    });
}

/// Wakes up to `n` threads sleeping in [`futex_wait`] on `word`.
fn futex_wake(word: &core::sync::atomic::AtomicU32, n: i32) {
    // SAFETY: `word` is a valid, aligned u32; waking touches no memory.
    os::keep_errno(|| unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        )
    });
}

impl<const SERIAL: bool> Front for GilHeap<SERIAL> {
    const MODE: Mode = Mode::Gil;
    /// A GIL-mode handle keeps nothing of its own: it forwards to the locked heap.
    type Local = ();
    const NO_LOCAL: () = ();

    fn build(geo: Geometry, _config: &Config) -> Option<GilHeap<SERIAL>> {
        GilHeap::new(geo)
    }

    #[inline(always)]
    unsafe fn alloc(&self, class: usize, _local: (), arenas: &Arenas) -> *mut u8 {
        match self.lock(&arenas.map) {
            Some(mut g) => g.alloc(class, &arenas.map),
            // A fork holds the lock (protocol step 2): the allocator underneath serves the
            // request, and a free finds it foreign.
            None => large::alloc(class_size(class), ALIGNMENT),
        }
    }

    /// The whole allocation when the lock is free at once; null (nothing done) when it is not,
    /// or when memory is exhausted (the general path then tries again and reports it).
    #[inline(always)]
    fn alloc_fast(&self, class: usize, _geo: &Geometry, arenas: &Arenas) -> *mut u8 {
        match self.try_lock(&arenas.map) {
            Some(mut g) => g.alloc(class, &arenas.map),
            None => ptr::null_mut(),
        }
    }

    /// The always-on block check, then the whole free when the lock is free at once; false
    /// (nothing done) when the check fails (the general path reports it) or the lock is taken.
    #[inline(always)]
    unsafe fn free_fast(
        &self,
        pool: *mut PoolHeader,
        block: *mut u8,
        geo: &Geometry,
        arenas: &Arenas,
    ) -> bool {
        // SAFETY: the trait's contract.
        unsafe { self.free_checked::<false>(pool, block, geo, arenas) }
    }

    /// An instance's free with the block check made once: the check, then the whole free
    /// under the lock; false (nothing done) when the check fails (the general path reports
    /// it) or a fork holds the lock (the general path defers the free).
    #[inline(always)]
    unsafe fn free_owned(
        &self,
        pool: *mut PoolHeader,
        block: *mut u8,
        geo: &Geometry,
        _local: (),
        arenas: &Arenas,
    ) -> bool {
        // SAFETY: the trait's contract.
        unsafe { self.free_checked::<true>(pool, block, geo, arenas) }
    }

    #[inline(always)]
    unsafe fn free(&self, pool: *mut PoolHeader, block: *mut u8, _local: (), arenas: &Arenas) {
        match self.lock(&arenas.map) {
            // SAFETY: a live block of `pool` (the trait's contract).
            Some(mut g) => unsafe { g.free(pool, block, &arenas.map) },
            // SAFETY: as above (a fork holds the lock: protocol step 2).
            None => unsafe { self.free_deferred(block, &arenas.map) },
        }
    }

    fn fill_stats(&self, stats: &mut Stats, arenas: &Arenas) {
        self.lock_wait(&arenas.map).fill_stats(stats);
    }

    /// pymalloc returns pools and arenas eagerly: nothing is left to trim.
    fn trim(&self, _arenas: &Arenas) -> usize {
        0
    }

    fn new_local(&self) -> Option<()> {
        Some(())
    }

    unsafe fn flush_local(&self, _local: (), _arenas: &Arenas) {}

    unsafe fn trim_local(&self, _local: (), _arenas: &Arenas) -> usize {
        0
    }

    unsafe fn local_pools(&self, _local: ()) -> usize {
        0
    }

    unsafe fn drop_local(&self, _local: (), _arenas: &Arenas) {}

    fn set_process_heap(&mut self) {}

    fn fork_prepare(&self, arenas: &Arenas) {
        self.lock_for_fork(&arenas.map);
    }

    fn fork_parent(&self, arenas: &Arenas) {
        self.unlock_in_parent(&arenas.map);
    }

    fn fork_child(&self, arenas: &Arenas) {
        self.unlock_in_child(&arenas.map);
    }

    fn thread_exit(&self, _tid: usize, _arenas: &Arenas) {}

    fn release_all(&mut self, arenas: &Arenas) {
        self.lock_wait(&arenas.map).release_all(&arenas.map);
    }

    #[cfg(test)]
    fn check_invariants(&self, arenas: &Arenas) {
        self.lock_wait(&arenas.map).check_invariants();
    }
}
