//! Every detection aborts with a message naming the pointer: each error is committed in a child
//! process (this binary re-executed), which must die by SIGABRT with the expected message.
//! Both modes; the debug-mode errors with `Config::with_debug(true)`, the always-on checks
//! without it. (`tests/global_fork.rs` checks `FTMALLOC_DEBUG=1` with the global allocator.)
//! Also debug mode's allocation paths that detect nothing: zero-size and zeroed requests (a large
//! zeroed request must not become resident, measured in a child) and realloc.

mod common;

use ftmalloc::{Allocator, Config, Mode};
use std::alloc::Layout;

const CASE: &str = "FTMALLOC_DETECT_CASE";

fn lay(n: usize) -> Layout {
    Layout::from_size_align(n, 8).unwrap()
}

/// The child test's name (it commits the case named by `CASE`).
const CHILD: &str = "child";

/// The environment of a child that runs `case` in `mode`.
fn case_env(case: &str, mode: &str) -> [(&'static str, String); 1] {
    [(CASE, format!("{case}:{mode}"))]
}

/// Runs `case` in a child, in `mode`; checks that it started in that mode and then died by
/// `SIGABRT`, and returns its stderr.
fn die_in_child(case: &str, mode: &str) -> String {
    let [(k, v)] = case_env(case, mode);
    let out = common::run_aborting(CHILD, &[(k, &v)], Mode::from_name(mode).unwrap());
    common::stderr(&out)
}

/// Prints the address a child case is about to hand to the allocator (`target 0x…`), so the
/// parent can check that the message names exactly that pointer.
fn announce(p: *const u8) {
    eprintln!("target {:#x}", p as usize);
}

/// The address a child announced.
fn target(err: &str) -> &str {
    err.lines()
        .find_map(|l| l.strip_prefix("target "))
        .unwrap_or_else(|| panic!("the child announced no target:\n{err}"))
}

/// The child: commits the error named by the environment.
#[test]
fn child() {
    let Ok(spec) = std::env::var(CASE) else {
        return;
    };
    let (case, mode) = spec.split_once(':').unwrap();
    let mode = Mode::from_name(mode).unwrap();
    let debug = Allocator::with_config(mode, Config::PYMALLOC.with_debug(true)).unwrap();
    let plain = Allocator::new(mode);
    assert_eq!(plain.mode(), debug.mode());
    common::started(debug.mode());
    // SAFETY: none, on purpose: each case commits the error the allocator must catch.
    unsafe {
        match case {
            "double-free" => {
                let p = debug.alloc(lay(40));
                debug.dealloc(p, lay(40));
                announce(p);
                debug.dealloc(p, lay(40));
            }
            "overrun" => {
                let p = debug.alloc(lay(40));
                *p.add(40) = 1;
                announce(p);
                debug.dealloc(p, lay(40));
            }
            "underrun" => {
                let p = debug.alloc(lay(40));
                *p.sub(1) = 1;
                announce(p);
                debug.dealloc(p, lay(40));
            }
            "realloc-overrun" => {
                let p = debug.alloc(lay(24));
                *p.add(30) = 7;
                announce(p);
                debug.realloc(p, lay(24), 100);
            }
            "use-after-free" => {
                let p = debug.alloc(lay(64));
                debug.dealloc(p, lay(64));
                *p.add(10) = 42;
                // The block comes back (LIFO) and its damaged 0xDD fill is seen.
                announce(p);
                let _ = debug.alloc(lay(64));
            }
            "interior-debug" => {
                let p = debug.alloc(lay(64));
                announce(p.add(16));
                debug.free(p.add(16));
            }
            "interior" => {
                let p = plain.alloc(lay(64));
                announce(p.add(8));
                plain.free(p.add(8));
            }
            "realloc-interior-debug" => {
                let p = debug.alloc(lay(64));
                announce(p.add(16));
                debug.realloc(p.add(16), lay(64), 200);
            }
            "usable-size-interior-debug" => {
                let p = debug.alloc(lay(64));
                announce(p.add(16));
                let n = debug.usable_size(p.add(16));
                eprintln!("usable_size returned {n:#x}");
            }
            "realloc-freed-debug" => {
                let p = debug.alloc(lay(64));
                debug.free(p);
                announce(p);
                debug.realloc(p, lay(64), 200);
            }
            "usable-size-freed-debug" => {
                let p = debug.alloc(lay(64));
                debug.free(p);
                announce(p);
                let n = debug.usable_size(p);
                eprintln!("usable_size returned {n:#x}");
            }
            // A pool's start: the debug header would lie before it, in the previous pool (or
            // outside the arena, when the pool is the arena's first).
            "free-pool-start-debug" | "free-pool-start" => {
                let a = if case == "free-pool-start" {
                    &plain
                } else {
                    &debug
                };
                let p = a.alloc(lay(32));
                let pool = a.geometry().pool_of(p as usize) as *mut u8;
                announce(pool);
                a.free(pool);
            }
            "free-arena-start-debug" => {
                let p = debug.alloc(lay(32));
                let arena = debug.geometry().arena_of(p as usize) as *mut u8;
                announce(arena);
                debug.free(arena);
            }
            // Not an error: exits normally (the parent checks), panics on failure.
            "calloc-rss-debug" => {
                let n = 1usize << 30;
                let before = common::rss();
                let p = debug.alloc_zeroed(Layout::from_size_align(n, 16).unwrap());
                assert!(!p.is_null(), "alloc_zeroed of 1 GiB failed");
                let after = common::rss();
                eprintln!("alloc_zeroed(1 GiB) in debug mode: RSS {before} -> {after} bytes");
                assert!(
                    after.saturating_sub(before) < 64 << 20,
                    "alloc_zeroed(1 GiB) in debug mode made {} MiB resident",
                    (after - before) >> 20
                );
                assert!(*p == 0 && *p.add(n / 2) == 0 && *p.add(n - 1) == 0);
                debug.free(p);
            }
            "unused-pool" => {
                let p = plain.alloc(lay(64));
                // A pool of the same arena that was never handed out.
                announce(p.add(5 * 16384));
                plain.free(p.add(5 * 16384));
            }
            other => panic!("unknown case {other}"),
        }
    }
    // Reaching this point means nothing was detected: exit normally, which the parent reports.
}

#[test]
fn debug_mode_detects_each_error_in_both_modes() {
    // The message and where it names the faulting pointer `{t}` (as the child announced it).
    let cases = [
        ("double-free", "ftmalloc debug: double free at {t} ("),
        (
            "overrun",
            "ftmalloc debug: write past the end of the block (guard bytes damaged) at {t} (",
        ),
        (
            "underrun",
            "ftmalloc debug: write before the start of the block (guard bytes damaged) at {t} (",
        ),
        (
            "realloc-overrun",
            "ftmalloc debug: write past the end of the block (guard bytes damaged) at {t} (",
        ),
        (
            "use-after-free",
            "ftmalloc debug: write to freed memory (seen when the block was handed out again) \
             at {t} (",
        ),
        (
            "interior-debug",
            "ftmalloc: invalid free of {t}: not the start of a block (",
        ),
    ];
    for &mode in Mode::NAMES {
        for (case, message) in cases {
            let err = die_in_child(case, mode);
            let t = target(&err);
            let message = message.replace("{t}", t);
            assert!(
                err.contains(&message),
                "{case} ({mode}): expected {message:?}, naming the pointer, in:\n{err}"
            );
            assert!(
                err.contains("size class"),
                "{case} ({mode}): no size class:\n{err}"
            );
            assert!(err.contains("pool 0x"), "{case} ({mode}): no pool:\n{err}");
        }
    }
}

/// Realloc and usable_size in debug mode check the pointer as free does, before anything is
/// read through the debug header, allocated or copied, and name it as realloc's or
/// usable_size's; free of a pool's (or arena's) start is an invalid free, not a read outside
/// the pool.
#[test]
fn debug_mode_checks_every_pointer_before_reading_its_header() {
    let cases = [
        (
            "realloc-interior-debug",
            "ftmalloc: invalid realloc of ",
            "not the start of a block",
        ),
        (
            "usable-size-interior-debug",
            "ftmalloc: invalid usable_size of ",
            "not the start of a block",
        ),
        (
            "realloc-freed-debug",
            "ftmalloc debug: realloc of a freed block at ",
            "size class",
        ),
        (
            "usable-size-freed-debug",
            "ftmalloc debug: usable_size of a freed block at ",
            "size class",
        ),
        (
            "free-pool-start-debug",
            "ftmalloc: invalid free of ",
            "not the start of a block",
        ),
        ("free-arena-start-debug", "ftmalloc: invalid free of ", ""),
    ];
    for &mode in Mode::NAMES {
        for (case, prefix, what) in cases {
            let err = die_in_child(case, mode);
            let t = target(&err);
            assert!(
                err.contains(&format!("{prefix}{t}")) && err.contains(what),
                "{case} ({mode}): expected {prefix:?} naming {t} and {what:?} in:\n{err}"
            );
            if case.starts_with("free-") {
                // The pool named is the one the pointer is in, not the one before it.
                assert!(
                    err.contains(&format!("(pool {t}, ")),
                    "{case} ({mode}): the message names another pool than {t}:\n{err}"
                );
            }
        }
    }
}

/// Debug mode serves a zero-size request with a usable size above zero (as non-debug mode and
/// glibc do), zeroed requests with zeros inside intact guards, and realloc keeps contents.
#[test]
fn debug_mode_zero_size_zeroed_and_realloc() {
    for &name in Mode::NAMES {
        let mode = Mode::from_name(name).unwrap();
        let debug = Allocator::with_config(mode, Config::PYMALLOC.with_debug(true)).unwrap();
        let plain = Allocator::new(mode);
        // SAFETY: every pointer used is live and freed once.
        unsafe {
            for a in [&debug, &plain] {
                let z = Layout::from_size_align(0, 1).unwrap();
                let p = a.alloc(z);
                assert!(!p.is_null());
                assert!(a.usable_size(p) > 0, "{name}: zero-size usable size is 0");
                a.dealloc(p, z);
            }
            // The 0xCD fill left in freed blocks would show through if the zeroed path filled.
            for n in [1, 40, 100, 400, 464] {
                let p = debug.alloc(lay(n));
                debug.free(p);
                let q = debug.alloc_zeroed(lay(n));
                assert_eq!(debug.usable_size(q), n);
                assert!(
                    std::slice::from_raw_parts(q, n).iter().all(|&b| b == 0),
                    "{name}: alloc_zeroed({n}) in debug mode is not zero"
                );
                debug.free(q);
            }
            let p = debug.alloc(lay(40));
            for i in 0..40 {
                *p.add(i) = i as u8;
            }
            let q = debug.realloc(p, lay(40), 300);
            assert_eq!(debug.usable_size(q), 300);
            let r = debug.realloc(q, lay(300), 10);
            assert_eq!(debug.usable_size(r), 10);
            for i in 0..10 {
                assert_eq!(*r.add(i), i as u8);
            }
            debug.free(r);
        }
        assert_eq!(debug.stats().blocks_in_use(), 0, "{name}");
    }
}

/// A large zeroed request in debug mode gets fresh zero pages (the C library's calloc), not a
/// memset: 1 GiB raises the resident set by less than 64 MiB. In a child, so no other test of
/// this binary allocates while the resident set is measured.
#[test]
fn debug_mode_large_zeroed_request_is_not_resident() {
    if std::env::var(CASE).is_ok() {
        return;
    }
    for mode in common::modes() {
        let [(k, v)] = case_env("calloc-rss-debug", mode.name());
        common::run_passing(CHILD, &[(k, &v)], mode);
    }
}

#[test]
fn always_on_checks_catch_invalid_frees() {
    for &mode in Mode::NAMES {
        let err = die_in_child("interior", mode);
        let t = target(&err);
        assert!(
            err.contains(&format!("invalid free of {t}: not the start of a block")),
            "{err}"
        );
        let err = die_in_child("free-pool-start", mode);
        let t = target(&err);
        assert!(
            err.contains(&format!(
                "invalid free of {t}: not the start of a block (pool {t}, "
            )),
            "{err}"
        );
        let err = die_in_child("unused-pool", mode);
        let t = target(&err);
        assert!(
            err.contains(&format!("invalid free of {t}: ")) && err.contains("not in use"),
            "{err}"
        );
    }
}

#[test]
fn debug_mode_raises_no_false_alarm() {
    if std::env::var(CASE).is_ok() {
        return;
    }
    for &name in Mode::NAMES {
        let a = Allocator::with_config(
            Mode::from_name(name).unwrap(),
            Config::PYMALLOC.with_debug(true),
        )
        .unwrap();
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<usize>>();
            let a = &a;
            s.spawn(move || {
                for batch in rx {
                    for p in batch {
                        // SAFETY: live blocks handed over, freed once.
                        unsafe { a.free(p as *mut u8) };
                    }
                }
            });
            for t in 0..4 {
                let tx = tx.clone();
                s.spawn(move || common::produce_and_hand_over(a, t, 20_000, tx));
            }
            drop(tx);
        });
        assert_eq!(a.stats().blocks_in_use(), 0);
    }
}
