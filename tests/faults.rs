//! Faults: the OS refusing memory (RLIMIT_AS) gives null, never corruption, and the heap works
//! again once memory is back; 10,000 threads spawned and exited in waves, with their blocks freed
//! after they died. (Fork while threads allocate is in `tests/global_fork.rs`.)

mod common;

use ftmalloc::{Allocator, Mode};
use std::alloc::Layout;

const ROLE: &str = "FTMALLOC_FAULTS_CHILD";

fn lay(n: usize) -> Layout {
    Layout::from_size_align(n, 8).unwrap()
}

/// The child: exhausts a capped address space, then lifts the cap.
#[test]
fn child() {
    let Ok(mode) = std::env::var(ROLE) else {
        return;
    };
    let a = Allocator::new(Mode::from_name(&mode).unwrap());
    common::started(a.mode());
    // Warm up: one arena and this thread's cache exist before the cap.
    let mut live: Vec<usize> = Vec::with_capacity(1 << 20);
    // SAFETY: freed at the end.
    live.push(unsafe { a.alloc(lay(256)) } as usize);
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut old) }, 0);
    let cap = libc::rlimit {
        rlim_cur: common::vm_bytes() as u64 + (48 << 20),
        rlim_max: old.rlim_max,
    };
    // SAFETY: lowering our own soft limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &cap) }, 0);
    let mut nulls = 0;
    for _ in 0..(1usize << 20) {
        // SAFETY: non-zero layout.
        let p = unsafe { a.alloc(lay(256)) };
        if p.is_null() {
            nulls += 1;
            if nulls > 100 {
                break;
            }
            continue;
        }
        // SAFETY: a fresh 256-byte block.
        unsafe { p.cast::<usize>().write(live.len()) };
        live.push(p as usize);
    }
    assert!(nulls > 0, "the cap never made an allocation fail");
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), live.len());
    assert_eq!(s.total(), s.mapped_bytes());
    // Memory is back: the heap works again.
    // SAFETY: restoring the limit we lowered.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &old) }, 0);
    let extra: Vec<usize> = (0..100_000)
        // SAFETY: non-zero layout.
        .map(|_| unsafe { a.alloc(lay(256)) } as usize)
        .collect();
    assert!(
        extra.iter().all(|&p| p != 0),
        "no recovery after the cap was lifted"
    );
    for (i, &p) in live.iter().enumerate().skip(1) {
        // SAFETY: live blocks written above.
        assert_eq!(
            unsafe { (p as *const usize).read() },
            i,
            "a block was damaged"
        );
    }
    for p in live.into_iter().chain(extra) {
        // SAFETY: each live block freed once.
        unsafe { a.free(p as *mut u8) };
    }
    assert_eq!(a.stats().blocks_in_use(), 0);
    println!("FAULTS-OK nulls={nulls}");
}

#[test]
fn address_space_exhaustion_gives_null_then_recovers() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    for mode in common::modes() {
        let out = common::run_passing("child", &[(ROLE, mode.name())], mode);
        assert!(
            common::stdout(&out).contains("FAULTS-OK"),
            "{mode}: {}",
            common::show(&out)
        );
    }
}

/// 10,000 threads in waves of 200; each allocates, hands its blocks to a survivor and exits;
/// the survivor frees them after their owners died. Caches are reused, memory stays bounded.
#[test]
fn ten_thousand_threads_in_waves() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    for &name in Mode::NAMES {
        let a = Allocator::new(Mode::from_name(name).unwrap());
        for wave in 0..50 {
            let handed: Vec<Vec<usize>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..200)
                    .map(|t| {
                        let a = &a;
                        s.spawn(move || {
                            let mut mine = Vec::new();
                            for i in 0..20usize {
                                let n = 1 + (wave * 7 + t * 13 + i * 29) % 512;
                                // SAFETY: non-zero layout; freed by the survivor.
                                let p = unsafe { a.alloc(lay(n)) };
                                // SAFETY: a fresh block of n >= 1 bytes.
                                unsafe { p.write((t % 251) as u8) };
                                mine.push(p as usize);
                            }
                            mine
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            // Every owner has exited: all of these frees are remote, into pools whose owners
            // are gone.
            for (t, blocks) in handed.into_iter().enumerate() {
                for p in blocks {
                    // SAFETY: live block, freed once.
                    unsafe {
                        assert_eq!(*(p as *const u8), (t % 251) as u8);
                        a.free(p as *mut u8);
                    }
                }
            }
        }
        let s = a.stats();
        assert_eq!(s.blocks_in_use(), 0, "{name}: {s}");
        assert!(
            s.counters.highwater <= 64,
            "{name}: memory grew with the number of threads:\n{s}"
        );
    }
}
