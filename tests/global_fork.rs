//! The process-wide heap (`FtMalloc` as `#[global_allocator]`) across `fork` and thread exit,
//! in every mode. Each check runs in a child process with `FTMALLOC_MODE` set, because the mode
//! is read once, at the first allocation.

use std::process::Command;

#[global_allocator]
static A: ftmalloc::FtMalloc = ftmalloc::FtMalloc;

const ROLE: &str = "FTMALLOC_TEST_ROLE";

fn run_child(test: &str, mode: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, "child")
        .env("FTMALLOC_MODE", mode)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{test} in mode {mode} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_child() -> bool {
    std::env::var(ROLE).is_ok()
}

fn churn(seed: usize) -> usize {
    let mut v: Vec<String> = (0..2000).map(|i| format!("{seed}-{i}")).collect();
    v.retain(|s| s.len() % 2 == 0);
    let m: std::collections::HashMap<_, _> = v.iter().map(|s| (s.clone(), s.len())).collect();
    m.values().sum()
}

#[test]
fn fork_while_other_threads_allocate() {
    if !is_child() {
        for &mode in ftmalloc::Mode::NAMES {
            run_child("fork_while_other_threads_allocate", mode);
        }
        return;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += churn(t);
                }
                n
            })
        })
        .collect();
    let expected = churn(7);
    for _ in 0..20 {
        // SAFETY: the child only allocates, frees and exits with _exit; the atfork handlers
        // make the heap usable in the child.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = churn(7) == expected && Box::new([1u8; 100])[99] == 1;
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child failed: {status}"
        );
        assert_eq!(churn(7), expected, "the parent goes on");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        assert!(w.join().unwrap() > 0);
    }
}

#[test]
fn thread_exit_gives_caches_back() {
    if !is_child() {
        for &mode in ftmalloc::Mode::NAMES {
            run_child("thread_exit_gives_caches_back", mode);
        }
        return;
    }
    for wave in 0..50 {
        let hs: Vec<_> = (0..8)
            .map(|t| std::thread::spawn(move || churn(wave * 8 + t)))
            .collect();
        for h in hs {
            assert!(h.join().unwrap() > 0);
        }
    }
    let s = ftmalloc::FtMalloc::stats();
    if s.mode == ftmalloc::Mode::FreeThreaded {
        // 400 threads have exited: only this thread's cache (and at most a few of threads still
        // being torn down by the runtime) remain.
        assert!(
            s.thread_caches <= 2,
            "caches of exited threads were not given back:\n{s}"
        );
    }
    assert!(
        s.counters.highwater <= 16,
        "arenas grew with the number of threads:\n{s}"
    );
    assert_eq!(s.total(), s.mapped_bytes());
}

#[test]
fn debug_mode_through_the_environment() {
    if !is_child() {
        for &mode in ftmalloc::Mode::NAMES {
            let out = Command::new(std::env::current_exe().unwrap())
                .args([
                    "debug_mode_through_the_environment",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ROLE, "child")
                .env("FTMALLOC_MODE", mode)
                .env("FTMALLOC_DEBUG", "1")
                .output()
                .unwrap();
            use std::os::unix::process::ExitStatusExt;
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{mode}: {err}");
            assert!(
                err.contains("ftmalloc debug: double free at 0x"),
                "{mode}: {err}"
            );
        }
        return;
    }
    // Ordinary work runs in debug mode, then a double free through Box.
    assert!(churn(3) > 0);
    // black_box: the block escapes, so the optimizer may not elide the allocation and its frees
    // (it did, at opt-level 1 with an instrumented std: no free reached the allocator).
    let p = std::hint::black_box(Box::into_raw(Box::new([7u8; 24])));
    // SAFETY: none, on purpose: the second drop is the double free debug mode must catch.
    unsafe {
        drop(Box::from_raw(p));
        drop(Box::from_raw(std::hint::black_box(p)));
    }
}

#[test]
fn ten_thousand_threads_in_waves_abandon_and_adopt() {
    if !is_child() {
        for &mode in ftmalloc::Mode::NAMES {
            run_child("ten_thousand_threads_in_waves_abandon_and_adopt", mode);
        }
        return;
    }
    for wave in 0..50 {
        let handed: Vec<Vec<Box<[u8]>>> = (0..200)
            .map(|t| {
                std::thread::spawn(move || {
                    (0..20)
                        .map(|i| {
                            vec![(t % 251) as u8; 1 + (wave * 7 + t * 13 + i * 29) % 512]
                                .into_boxed_slice()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        // The owners have exited (their caches were abandoned): these frees land in abandoned
        // or adopted pools.
        for (t, blocks) in handed.into_iter().enumerate() {
            for b in blocks {
                assert!(b.iter().all(|&x| x == (t % 251) as u8));
            }
        }
    }
    let s = ftmalloc::FtMalloc::stats();
    assert!(
        s.thread_caches <= 2,
        "caches of exited threads were kept:\n{s}"
    );
    assert!(
        s.counters.highwater <= 64,
        "memory grew with the number of threads:\n{s}"
    );
    assert_eq!(s.total(), s.mapped_bytes());
}
