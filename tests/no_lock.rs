//! The free-threaded path takes no lock: its modules mention no `Mutex`, `RwLock`, `Condvar`,
//! `Once`-style blocking primitive, spin lock or wait for another thread (`Backoff::snooze`,
//! `yield_now`, `sleep`).

const FREE_THREADED_PATH: &[(&str, &str)] = &[
    ("src/ft.rs", include_str!("../src/ft.rs")),
    ("src/central.rs", include_str!("../src/central.rs")),
    (
        "src/thread_cache.rs",
        include_str!("../src/thread_cache.rs"),
    ),
    ("src/pool.rs", include_str!("../src/pool.rs")),
    ("src/arena_map.rs", include_str!("../src/arena_map.rs")),
    ("src/os.rs", include_str!("../src/os.rs")),
    ("src/sync.rs", include_str!("../src/sync.rs")),
];

#[test]
fn no_lock_on_the_free_threaded_path() {
    let forbidden = [
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
    for (file, text) in FREE_THREADED_PATH {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                assert!(
                    !code.contains(word),
                    "{file}:{}: `{word}` on the free-threaded path: {line}",
                    n + 1
                );
            }
        }
    }
}
