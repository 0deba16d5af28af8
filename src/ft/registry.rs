//! Thread indices and thread exit.
//!
//! Every thread that binds to a free-threaded heap gets a small index (`tid`, below
//! `MAX_THREADS`, reused after the thread exits) from a bitmap, and a `pthread_key` destructor
//! that runs at its exit: it calls [`super::thread_exiting`] (which marks the thread's memo dead
//! and, through the exit hook, abandons its cache of every live heap) and frees the index.
//!
//! The destructor is a `pthread_key` destructor, not a Rust thread-local with `Drop`: registering
//! a Rust TLS destructor goes through `__cxa_thread_atexit_impl`, which calls `calloc`, and in the
//! C-ABI library `calloc` is this allocator. The key is created once, the first time a thread
//! binds, which in practice is early in the process, so it gets a low index and
//! `pthread_setspecific` needs no memory (glibc allocates only for keys >= 32). If it ever did,
//! the nested allocation would find the memo in the `BINDING` state and take the cache-less path.
//!
//! The destructor is code of this library, and a library can be `dlclose`d while threads that
//! registered the key still run (a plugin that used a heap instance once): glibc would then call
//! an unmapped address at their exit. So when the key is created, the object that holds the
//! destructor is pinned (`pin_code`: `dladdr` on the destructor, then `dlopen` of that object
//! with `RTLD_NOLOAD | RTLD_NODELETE`): a later `dlclose` leaves it mapped, and with it the
//! `pthread_atfork` handlers and the statics the destructor reads. The key is never deleted.
//!
//! Orderings: an index is taken with an `Acquire` compare-exchange and freed with a `Release`
//! `fetch_and`, so the next holder of an index sees every write its previous holder made to the
//! per-index entries (`FtHeap::by_tid`).

use super::MAX_THREADS;
use core::cell::Cell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One bit per thread index in use.
static TIDS: [AtomicU64; MAX_THREADS / 64] = [const { AtomicU64::new(0) }; MAX_THREADS / 64];

/// The pthread key plus one (0: not created yet).
static KEY: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    /// This thread's index plus one (0: none yet). Const, no destructor.
    static TID: Cell<usize> = const { Cell::new(0) };
}

fn acquire_tid() -> Option<usize> {
    for (w, word) in TIDS.iter().enumerate() {
        let mut v = word.load(Ordering::Relaxed);
        while v != u64::MAX {
            let bit = (!v).trailing_zeros();
            match word.compare_exchange_weak(
                v,
                v | (1 << bit),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(w * 64 + bit as usize),
                Err(now) => v = now,
            }
        }
    }
    None
}

fn release_tid(tid: usize) {
    TIDS[tid / 64].fetch_and(!(1u64 << (tid % 64)), Ordering::Release);
}

fn key() -> Option<libc::pthread_key_t> {
    let k = KEY.load(Ordering::Acquire);
    if k != 0 {
        return Some((k - 1) as libc::pthread_key_t);
    }
    let mut new: libc::pthread_key_t = 0;
    // SAFETY: `new` is a valid out-pointer; on_exit matches the destructor signature.
    if unsafe { libc::pthread_key_create(&mut new, Some(on_exit)) } != 0 {
        return None;
    }
    match KEY.compare_exchange(0, new as usize + 1, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            // Miri has no dynamic loader to ask (nor a `dlclose` to survive).
            if !cfg!(miri) {
                pin_code();
            }
            Some(new)
        }
        Err(winner) => {
            // SAFETY: our key was never used.
            unsafe { libc::pthread_key_delete(new) };
            Some((winner - 1) as libc::pthread_key_t)
        }
    }
}

/// Keeps the object (executable or shared library) that holds [`on_exit`] mapped for the rest
/// of the process: `dlopen` with `RTLD_NOLOAD | RTLD_NODELETE` of the file `dladdr` names. For
/// the main executable, or when the object cannot be found, it does nothing (nothing unloads
/// the executable). Called once, by the thread that created the key; `dlopen` may allocate
/// (in the drop-in library, through this allocator: the calling thread is binding, so its
/// nested calls take the cache-less path).
fn pin_code() {
    // SAFETY: all-zero bytes are a valid `Dl_info` (null pointers).
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    let addr = on_exit as unsafe extern "C" fn(*mut libc::c_void) as *const libc::c_void;
    // SAFETY: `info` is a valid out-pointer; any address may be asked about.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return;
    }
    // SAFETY: `dli_fname` is a NUL-terminated path owned by the loader, valid while the object
    // is loaded (it is: it holds this code). NOLOAD loads nothing new; the handle is kept (one
    // reference, never closed), and NODELETE makes the object permanent anyway.
    let _ = unsafe {
        libc::dlopen(
            info.dli_fname,
            libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
        )
    };
}

unsafe extern "C" fn on_exit(value: *mut libc::c_void) {
    let tid = value as usize - 1;
    super::thread_exiting(tid);
    TID.with(|t| t.set(0));
    release_tid(tid);
}

/// The calling thread's index; registers the exit destructor on first use. None when no
/// index or key is left.
pub(super) fn current_tid() -> Option<usize> {
    let t = TID.with(|t| t.get());
    if t != 0 {
        return Some(t - 1);
    }
    let key = key()?;
    let tid = acquire_tid()?;
    TID.with(|t| t.set(tid + 1));
    // SAFETY: a valid key; the value is a non-null integer, read back only by on_exit.
    unsafe { libc::pthread_setspecific(key, (tid + 1) as *mut libc::c_void) };
    Some(tid)
}
