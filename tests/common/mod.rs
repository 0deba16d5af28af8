//! Helpers shared by integration tests (a module of each test that declares `mod common;`):
//! running one test of the same binary in a child process and checking what it did, the
//! process's memory, the modes, and a debug-mode workload.
//!
//! Not every test uses every helper.
#![allow(dead_code)]

pub mod live;

use ftmalloc::{Allocator, Mode};
use std::alloc::Layout;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::sync::mpsc::Sender;

// ---------------------------------------------------------------------------------------------
// Child processes: this test binary re-executed to run one of its tests.

/// What a child test prints (to stderr) when its body starts, followed by the mode of the heap
/// under test: [`started`] prints it, [`run_passing`] and [`run_aborting`] require it.
pub const STARTED: &str = "ftmalloc test child: started; heap mode ";

/// The process-wide heap's environment variables: a child gets none of the parent's, only
/// those its caller passes.
pub const ENV_VARS: &[&str] = &[
    "FTMALLOC_MODE",
    "FTMALLOC_STATS",
    "FTMALLOC_DEBUG",
    "FTMALLOC_DECAY_MS",
    "FTMALLOC_TRACE",
];

/// Called first by the body of a child test: prints [`STARTED`] and `mode`, the mode of the heap
/// the child actually uses (the process-wide heap's `FtMalloc::stats().mode`, or an instance's
/// `mode()`), for the parent to check against the mode it asked for.
pub fn started(mode: Mode) {
    eprintln!("{STARTED}{mode}");
}

/// Runs test `test` of this binary in a child (`test --exact --nocapture --test-threads=1`),
/// with the environment variables of [`ENV_VARS`] removed and `env` set. Checks nothing: see
/// [`run_passing`] and [`run_aborting`].
pub fn run_child(test: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"]);
    for var in ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run the child for {test}: {e}"))
}

/// A child's status, stdout and stderr, for failure messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The child's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The child's stdout.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks that the child ran exactly one test (`test`), that its body started (the [`STARTED`]
/// line, once) and that the heap it used was in `mode`.
fn assert_started(out: &Output, test: &str, mode: Mode) {
    let so = stdout(out);
    assert!(
        so.lines().any(|l| l == "running 1 test"),
        "{test} ({mode}): the child did not run exactly one test (is the name right?):\n{}",
        show(out)
    );
    let se = stderr(out);
    let modes: Vec<&str> = se.lines().filter_map(|l| l.strip_prefix(STARTED)).collect();
    assert!(
        modes.len() == 1,
        "{test} ({mode}): the child's body did not start exactly once (saw {} start lines):\n{}",
        modes.len(),
        show(out)
    );
    assert_eq!(
        modes[0],
        mode.name(),
        "{test}: the child ran in another mode than asked for:\n{}",
        show(out)
    );
}

/// Runs `test` in a child with `env` (as [`run_child`]) and requires that it ran exactly that
/// one test, which passed (`test result: ok. 1 passed;`), after reporting heap mode `mode`
/// ([`started`]). Returns the output for further checks.
pub fn run_passing(test: &str, env: &[(&str, &str)], mode: Mode) -> Output {
    let out = run_child(test, env);
    assert!(
        out.status.success(),
        "{test} ({mode}, {env:?}): the child failed:\n{}",
        show(&out)
    );
    assert!(
        stdout(&out).contains("test result: ok. 1 passed;"),
        "{test} ({mode}, {env:?}): the child did not pass exactly one test:\n{}",
        show(&out)
    );
    assert_started(&out, test, mode);
    out
}

/// Runs `test` in a child with `env` (as [`run_child`]) and requires that its body started in
/// heap mode `mode` ([`started`]) and that it then died by `SIGABRT`. Returns the output: the
/// caller checks the message.
pub fn run_aborting(test: &str, env: &[(&str, &str)], mode: Mode) -> Output {
    let out = run_child(test, env);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{test} ({mode}, {env:?}): the child did not abort:\n{}",
        show(&out)
    );
    assert_started(&out, test, mode);
    out
}

// ---------------------------------------------------------------------------------------------
// The process and the modes.

/// Every mode, in [`Mode::NAMES`]' order.
pub fn modes() -> Vec<Mode> {
    Mode::NAMES
        .iter()
        .map(|n| Mode::from_name(n).unwrap_or_else(|| panic!("Mode::NAMES lists {n:?}")))
        .collect()
}

/// Field `i` of `/proc/self/statm` (0: virtual size, 1: resident set), in bytes.
fn statm_bytes(i: usize) -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(i)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("unexpected /proc/self/statm: {statm:?}"));
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    assert!(page > 0);
    pages * page as usize
}

/// Resident set size of this process in bytes.
pub fn rss() -> usize {
    statm_bytes(1)
}

/// Virtual size of this process in bytes.
pub fn vm_bytes() -> usize {
    statm_bytes(0)
}

// ---------------------------------------------------------------------------------------------
// Workloads.

/// A debug-mode workload of one producer thread: `iters` allocations of 1..=400 bytes, each
/// filled; every third block is sent (in batches of 64) to a thread that frees it, the others
/// are freed here. Used to check that debug mode raises no false alarm across threads.
pub fn produce_and_hand_over(a: &Allocator, t: usize, iters: usize, tx: Sender<Vec<usize>>) {
    let mut keep = Vec::new();
    for i in 0..iters {
        let n = 1 + (i * 31 + t) % 400;
        let layout = Layout::from_size_align(n, 8).unwrap();
        // SAFETY: a non-zero layout; the block is freed below or by the receiver.
        let p = unsafe { a.alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: n bytes are ours.
        unsafe { std::ptr::write_bytes(p, 0x11, n) };
        if i % 3 == 0 {
            keep.push(p as usize);
            if keep.len() == 64 {
                tx.send(std::mem::take(&mut keep)).unwrap();
            }
        } else {
            // SAFETY: a live block, freed once.
            unsafe { a.free(p) };
        }
    }
    tx.send(keep).unwrap();
}
