//! The free-threaded path takes no lock: its modules mention no `Mutex`, `RwLock`, `Condvar`,
//! `Once`-style blocking primitive (`Once`, `OnceLock`, `LazyLock`, `call_once`, `get_or_init`),
//! spin lock or wait for another thread (`Backoff::snooze`, `yield_now`, `sleep`). Code is
//! read before any `//` comment, under every `cfg` (a Miri-only or loom-only line counts too).
//!
//! "Its modules" is every file under `src/` except those that are not on it:
//! - `src/gil/` (GIL mode: its lock is the point);
//! - `src/global.rs` (the process shell): its one-time start-up makes concurrent first callers
//!   of the process-wide heap wait (`yield_now`) while one thread maps the heap's tables. After
//!   that, its per-call path is one `Acquire` load and a compare.
//! - `src/heaps.rs` (the registry of live heaps): its lock is taken only when a heap is created
//!   or dropped and by `fork`'s handlers, and a drop waits (`yield_now`) for thread-exit walks
//!   inside the heap; no allocation or free reaches it (the thread-exit walk takes no lock).
//! - `src/ft/fork.rs` (the fork gate's wait): `fork`'s prepare handler waits there until no
//!   arena release is in flight on another thread (`central`, protocol step 8); it is the only
//!   caller, and no allocation, free or statistics walk reaches the file.
//!
//! So the facade's dispatch (`src/heap.rs`), the layout, the base building blocks and the whole
//! `src/ft/` folder are read. The list is found by walking `src/`, so a new file is checked
//! without editing this test.

mod source;

/// Paths (relative to the crate root) not on the free-threaded path.
const NOT_ON_THE_PATH: &[&str] = &[
    "src/gil/",
    "src/global.rs",
    "src/heaps.rs",
    "src/ft/fork.rs",
];

fn free_threaded_path() -> Vec<(String, String)> {
    source::files()
        .into_iter()
        .filter(|(rel, _)| !NOT_ON_THE_PATH.iter().any(|p| rel.starts_with(p)))
        .collect()
}

/// The word a line's code (before any `//` comment) uses that is forbidden, if any.
fn forbidden_in(line: &str) -> Option<&'static str> {
    const FORBIDDEN: &[&str] = &[
        "Mutex",
        "RwLock",
        "Condvar",
        "SpinLock",
        "spin_lock",
        // crossbeam's Backoff is allowed only as `spin()` after a failed compare-exchange (the
        // failure means another thread made progress); `snooze()` and `is_completed()` are
        // how one waits for another thread, which a lock-free path never does.
        ".snooze(",
        "is_completed",
        "yield_now",
        "sleep(",
        "parking_lot",
        "futex",
    ];
    // One-time initialisation that blocks: a second caller of `Once::call_once`,
    // `OnceLock::get_or_init` or a `LazyLock`'s first deref waits for the first, as on a lock.
    // Whole identifiers, so that `FnOnce` (a closure bound) is not one.
    const FORBIDDEN_NAMES: &[&str] = &[
        "Once",
        "OnceLock",
        "LazyLock",
        "call_once",
        "call_once_force",
        "get_or_init",
        "get_or_try_init",
    ];
    let code = line.split("//").next().unwrap_or("");
    FORBIDDEN
        .iter()
        .copied()
        .find(|w| code.contains(w))
        .or_else(|| {
            code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .find_map(|id| FORBIDDEN_NAMES.iter().copied().find(|w| *w == id))
        })
}

#[test]
fn no_lock_on_the_free_threaded_path() {
    let files = free_threaded_path();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    // The walk found the files that matter (a moved tree must not make this pass vacuously).
    for must in [
        "src/heap.rs",
        "src/ft/mod.rs",
        "src/ft/central.rs",
        "src/ft/thread_cache.rs",
        "src/ft/registry.rs",
        "src/layout/pool.rs",
        "src/layout/arena_map.rs",
        "src/base/os.rs",
        "src/base/sync.rs",
        "src/base/stack.rs",
    ] {
        assert!(
            names.contains(&must),
            "{must} not found under src/: {names:?}"
        );
    }
    for (file, text) in &files {
        for (n, line) in text.lines().enumerate() {
            if let Some(word) = forbidden_in(line) {
                panic!(
                    "{file}:{}: `{word}` on the free-threaded path: {line}",
                    n + 1
                );
            }
        }
    }
}

#[test]
fn the_check_sees_a_lock() {
    assert_eq!(forbidden_in("    let g = m.lock(); // Mutex"), None);
    assert_eq!(
        forbidden_in("static L: std::sync::Mutex<()> = Mutex::new(());"),
        Some("Mutex")
    );
    assert_eq!(
        forbidden_in("        std::thread::yield_now();"),
        Some("yield_now")
    );
    assert_eq!(forbidden_in("backoff.snooze();"), Some(".snooze("));
    // One-time initialisation (issue 26): the types and the calls that wait.
    assert_eq!(
        forbidden_in("static S: std::sync::OnceLock<u8> = OnceLock::new();"),
        Some("OnceLock")
    );
    assert_eq!(
        forbidden_in("static T: LazyLock<u8> = LazyLock::new(|| 1);"),
        Some("LazyLock")
    );
    assert_eq!(forbidden_in("static O: Once = Once::new();"), Some("Once"));
    assert_eq!(
        forbidden_in("    INIT.call_once(|| ());"),
        Some("call_once")
    );
    assert_eq!(forbidden_in("    x.get_or_init(f)"), Some("get_or_init"));
    // A closure bound is not a `Once`.
    assert_eq!(forbidden_in("fn f(g: impl FnOnce() -> u8) {}"), None);
}
