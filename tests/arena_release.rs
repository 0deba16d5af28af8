//! Arenas go back to the OS when their pools are all free, and are reused afterwards, in every
//! mode (pymalloc's geometry: 16 KiB pools, 1 MiB arenas).
//!
//! The RSS check runs in a child process (this binary re-executed with a filter), one per mode,
//! so no other test of the binary allocates or frees while the resident set is measured.

use ftmalloc::{Allocator, Mode};
use std::alloc::Layout;
use std::collections::BTreeSet;
use std::process::Command;

/// Set (to a mode name) in the child that does the RSS measurement.
const CHILD_MODE: &str = "FTMALLOC_ARENA_RELEASE_MODE";

const BLOCK: usize = 256;
/// 4 MiB of 256-byte blocks: 63 blocks per 16 KiB pool, 64 pools per arena, so 5 arenas.
const LOAD: usize = 4 << 20;

fn modes() -> impl Iterator<Item = Mode> {
    Mode::NAMES
        .iter()
        .map(|n| Mode::from_name(n).unwrap_or_else(|| panic!("Mode::NAMES lists {n:?}")))
}

fn lay() -> Layout {
    Layout::from_size_align(BLOCK, 8).unwrap()
}

/// Allocates `LOAD` bytes of `BLOCK`-byte blocks, writing every byte of each.
fn fill(a: &Allocator, blocks: &mut Vec<*mut u8>) {
    for i in 0..LOAD / BLOCK {
        // SAFETY: a valid non-zero layout; freed by `drain`.
        let p = unsafe { a.alloc(lay()) };
        assert!(
            !p.is_null() && a.owns(p),
            "block {i} not served from a pool"
        );
        // SAFETY: p is a fresh block of BLOCK writable bytes.
        unsafe { p.write_bytes(i as u8, BLOCK) };
        blocks.push(p);
    }
}

/// Frees every block, in allocation order, checking its contents first.
fn drain(a: &Allocator, blocks: &mut Vec<*mut u8>) {
    for (i, p) in blocks.drain(..).enumerate() {
        // SAFETY: p is live, BLOCK bytes, written by `fill`.
        let (first, last) = unsafe { (*p, *p.add(BLOCK - 1)) };
        assert!(first == i as u8 && last == i as u8, "block {i} overwritten");
        // SAFETY: p is live and was allocated from `a` with `lay()`.
        unsafe { a.dealloc(p, lay()) };
    }
}

/// Resident set size of this process in bytes (`/proc/self/statm`, second field, in pages).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("unexpected /proc/self/statm: {statm:?}"));
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    assert!(page > 0);
    pages * page as usize
}

#[test]
fn freeing_everything_unmaps_arenas_and_returns_rss() {
    let Ok(name) = std::env::var(CHILD_MODE) else {
        for mode in Mode::NAMES {
            let out = Command::new(std::env::current_exe().unwrap())
                .args([
                    "freeing_everything_unmaps_arenas_and_returns_rss",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_MODE, mode)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{mode} mode: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains("1 passed"),
                "{mode} mode: the child ran no test:\n{stdout}"
            );
        }
        return;
    };
    let mode = Mode::from_name(&name).unwrap();
    let a = Allocator::new(mode);
    let mut blocks = Vec::with_capacity(LOAD / BLOCK);
    let before = rss();
    fill(&a, &mut blocks);
    let full = rss();
    let s = a.stats();
    assert!(
        s.counters.current >= 3,
        "{mode} mode: 4 MiB should take 3+ arenas:\n{s}"
    );
    assert_eq!(s.blocks_in_use(), LOAD / BLOCK);
    assert!(
        full >= before + LOAD / 2,
        "{mode} mode: writing 4 MiB raised RSS only from {before} to {full}"
    );
    let bases: BTreeSet<usize> = blocks
        .iter()
        .map(|&p| a.geometry().arena_of(p as usize))
        .collect();

    drain(&a, &mut blocks);
    let after = rss();
    println!("{mode} mode: RSS {before} -> {full} (full) -> {after} (all freed)");
    let s = a.stats();
    assert_eq!(s.blocks_in_use(), 0, "{mode} mode:\n{s}");
    assert_eq!(s.total(), s.mapped_bytes(), "{mode} mode:\n{s}");
    assert!(
        s.counters.current <= 1,
        "{mode} mode: more than one arena kept mapped:\n{s}"
    );
    assert!(s.counters.reclaimed >= 2, "{mode} mode:\n{s}");
    // The arena map forgets released arenas.
    let still = bases.iter().filter(|&&b| a.owns(b as *const u8)).count();
    assert_eq!(
        still as u64, s.counters.current,
        "{mode} mode: the arena map still claims released arenas"
    );
    assert!(
        full.saturating_sub(after) >= 2 << 20,
        "{mode} mode: RSS went from {before} to {full} (full) to {after} (all freed): \
         less than 2 MiB given back\n{s}"
    );
}

#[test]
fn released_arenas_are_reused_without_growing_the_peak() {
    for mode in modes() {
        let a = Allocator::new(mode);
        let mut blocks = Vec::with_capacity(LOAD / BLOCK);
        fill(&a, &mut blocks);
        let peak = a.stats().counters.highwater;
        assert!(peak >= 3, "{mode} mode");
        drain(&a, &mut blocks);
        for round in 1..=4 {
            let before = a.stats().counters;
            // SAFETY: a valid layout; freed right away.
            let p = unsafe { a.alloc(lay()) };
            assert!(a.owns(p));
            assert_eq!(
                a.stats().counters.allocated_total,
                before.allocated_total,
                "{mode} mode, round {round}: the kept arena was not reused for the first block"
            );
            // SAFETY: p is live, allocated with lay().
            unsafe { a.dealloc(p, lay()) };
            fill(&a, &mut blocks);
            let s = a.stats();
            assert_eq!(
                s.counters.highwater, peak,
                "{mode} mode, round {round}: the same load needed more arenas:\n{s}"
            );
            drain(&a, &mut blocks);
            let s = a.stats();
            assert!(s.counters.current <= 1, "{mode} mode, round {round}:\n{s}");
            assert_eq!(s.total(), s.mapped_bytes());
        }
    }
}
