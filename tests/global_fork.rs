//! The process-wide heap (`FtMalloc` as `#[global_allocator]`) across `fork` and thread exit,
//! in every mode. Each check runs in a child process with `FTMALLOC_MODE` set, because the mode
//! is read once, at the first allocation (`common::run_passing`: the child must run that one
//! test, in that mode, and pass). Also: the caches a free-threaded fork child loses stay bounded.

mod common;

use ftmalloc::{FtMalloc, Mode};

#[global_allocator]
static A: FtMalloc = FtMalloc;

const ROLE: &str = "FTMALLOC_TEST_ROLE";

/// Runs `test` in a child with `FTMALLOC_MODE=mode` and requires that it ran, in that mode, and
/// passed.
fn run_child(test: &str, mode: Mode) {
    common::run_passing(
        test,
        &[(ROLE, "child"), ("FTMALLOC_MODE", mode.name())],
        mode,
    );
}

/// True in a child; then reports the process-wide heap's mode for the parent to check.
fn is_child() -> bool {
    let child = std::env::var(ROLE).is_ok();
    if child {
        common::started(FtMalloc::stats().mode);
    }
    child
}

/// Waits for child `pid` and returns its wait status; panics if the wait fails.
fn wait_for(pid: libc::pid_t) -> libc::c_int {
    // Not a clean exit: a status the wait did not write reads as a failure.
    let mut status: libc::c_int = -1;
    // SAFETY: waiting for our own child; status is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(
        r,
        pid,
        "waitpid({pid}) failed: {}",
        std::io::Error::last_os_error()
    );
    status
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
        for mode in common::modes() {
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
        let status = wait_for(pid);
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
        for mode in common::modes() {
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
    let s = FtMalloc::stats();
    if s.mode == Mode::FreeThreaded {
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
        for mode in common::modes() {
            let out = common::run_aborting(
                "debug_mode_through_the_environment",
                &[
                    (ROLE, "child"),
                    ("FTMALLOC_MODE", mode.name()),
                    ("FTMALLOC_DEBUG", "1"),
                ],
                mode,
            );
            let err = common::stderr(&out);
            let t = err
                .lines()
                .find_map(|l| l.strip_prefix("target "))
                .unwrap_or_else(|| panic!("{mode}: the child announced no target:\n{err}"));
            assert!(
                err.contains(&format!("ftmalloc debug: double free at {t} (")),
                "{mode}: no double free naming {t}:\n{err}"
            );
        }
        return;
    }
    // Debug mode is on: its header and guards lower the largest pooled request below 512.
    assert!(
        FtMalloc::instance().pooled_limit() < 512,
        "debug mode is off"
    );
    // Ordinary work runs in debug mode, then a double free through Box.
    assert!(churn(3) > 0);
    // black_box: the block escapes, so the optimizer may not elide the allocation and its frees
    // (it did, at opt-level 1 with an instrumented std: no free reached the allocator).
    let p = std::hint::black_box(Box::into_raw(Box::new([7u8; 24])));
    eprintln!("target {:#x}", p as usize);
    // SAFETY: none, on purpose: the second drop is the double free debug mode must catch.
    unsafe {
        drop(Box::from_raw(p));
        drop(Box::from_raw(std::hint::black_box(p)));
    }
}

#[test]
fn ten_thousand_threads_in_waves_abandon_and_adopt() {
    if !is_child() {
        for mode in common::modes() {
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
    let s = FtMalloc::stats();
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

/// One round of the fork child's workload: 4,000 blocks of every size class up to 512 bytes
/// (and a few larger), written, checked and freed. The live set is the same every round.
fn child_round(round: usize) -> bool {
    let blocks: Vec<Box<[u8]>> = (0..4000)
        .map(|i| vec![(i + round) as u8; 1 + (i * 37) % 600].into_boxed_slice())
        .collect();
    blocks
        .iter()
        .enumerate()
        .all(|(i, b)| b.len() == 1 + (i * 37) % 600 && b.iter().all(|&x| x == (i + round) as u8))
}

/// Free-threaded mode: a forked child loses the caches of the parent's other threads (they do
/// not exist in it; their pools are never used again there), and that loss stays bounded by
/// what those threads held at the fork. Eight threads hold partly used pools of every class
/// while the main thread forks 20 times; each child works through 30 rounds of the same live
/// set and must not grow: no new cache beyond those at the fork, arenas and resident memory
/// no larger after the last round than after the first. The parent's heap is unchanged by the
/// forks.
#[test]
fn caches_lost_in_a_fork_child_stay_bounded() {
    if !is_child() {
        run_child(
            "caches_lost_in_a_fork_child_stay_bounded",
            Mode::FreeThreaded,
        );
        return;
    }
    const THREADS: usize = 8;
    const FORKS: usize = 20;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let stop = std::sync::Arc::new(std::sync::Barrier::new(THREADS + 1));
    let holders: Vec<_> = (0..THREADS)
        .map(|t| {
            let ready = ready_tx.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Every class: 300 blocks each, every other one freed, so the cache holds
                // partly used pools of each class.
                let mut kept = Vec::new();
                for i in 0..300 * 32 {
                    let b = vec![t as u8; 1 + (i % 32) * 16].into_boxed_slice();
                    if i % 2 == 0 {
                        kept.push(b);
                    }
                }
                ready.send(()).unwrap();
                stop.wait();
                kept.iter().all(|b| b.iter().all(|&x| x == t as u8))
            })
        })
        .collect();
    drop(ready_tx);
    for _ in 0..THREADS {
        ready_rx.recv().unwrap();
    }
    let before = FtMalloc::stats();
    assert!(
        before.thread_caches > THREADS && before.cached_pools >= THREADS * 16,
        "the threads hold no caches:\n{before}"
    );
    for f in 0..FORKS {
        // SAFETY: the child allocates, frees and leaves with _exit; the atfork handlers make
        // the heap usable in it. It prints only after its work, from this thread.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let at_fork = FtMalloc::stats();
            let mut ok = child_round(0);
            let first = FtMalloc::stats();
            let rss_first = common::rss();
            for round in 1..30 {
                ok &= child_round(round);
            }
            let last = FtMalloc::stats();
            let rss_last = common::rss();
            let mut why = String::new();
            if !ok {
                why += "a block was damaged; ";
            }
            if last.thread_caches > at_fork.thread_caches {
                why += "caches grew; ";
            }
            if last.counters.current > first.counters.current
                || last.counters.highwater > first.counters.highwater + 1
            {
                why += "arenas grew; ";
            }
            // Under a sanitizer (`.ci/sanitize` sets FTMALLOC_SANITIZER) resident memory also
            // holds the sanitizer's shadow and quarantine, which grow with the work: the caches
            // and arenas above are the check there.
            if rss_last > rss_first + (4 << 20) && std::env::var_os("FTMALLOC_SANITIZER").is_none()
            {
                why += "resident memory grew; ";
            }
            if f == 0 {
                eprintln!(
                    "fork child: {} caches ({} at the fork), {} pools held by caches, arenas {} \
                     after round 1 and {} after round 30, RSS {rss_first} -> {rss_last}",
                    last.thread_caches,
                    at_fork.thread_caches,
                    last.cached_pools,
                    first.counters.current,
                    last.counters.current
                );
            }
            if !why.is_empty() {
                eprintln!(
                    "fork child {f}: {why}\nRSS {rss_first} -> {rss_last}\n\
                     --- at the fork\n{at_fork}\n--- after round 1\n{first}\n--- after round 30\n{last}"
                );
            }
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(if why.is_empty() { 0 } else { 1 }) };
        }
        let status = wait_for(pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "fork child {f} failed (status {status}); its report is above"
        );
    }
    let after = FtMalloc::stats();
    assert_eq!(after.thread_caches, before.thread_caches, "{after}");
    assert!(
        after.counters.current <= before.counters.current + 1,
        "the parent's heap grew across the forks:\n{before}\n{after}"
    );
    stop.wait();
    for h in holders {
        assert!(h.join().unwrap(), "a holder's blocks were damaged");
    }
}
