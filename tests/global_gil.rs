//! `FtMalloc` as the `#[global_allocator]` under ordinary std code, in every mode, and its
//! environment variables.
//!
//! The mode is read from `FTMALLOC_MODE` once, at the first allocation, so every check runs in
//! a child process: this binary re-executed with `FTMALLOC_MODE` (and `FTMALLOC_STATS`) set, a
//! filter naming the test, and `FTMALLOC_TEST_WORK` telling the child to do the work. The
//! parent only starts children and checks what they report (`common::run_passing`: the child
//! ran that one test, in the mode asked for, and passed).

mod common;

use common::show;
use ftmalloc::{FtMalloc, Mode};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::Output;
use std::sync::mpsc;

#[global_allocator]
static A: FtMalloc = FtMalloc;

/// Set in a child: do the test's work instead of starting children.
const WORK: &str = "FTMALLOC_TEST_WORK";

/// True in a child; then reports the process-wide heap's mode for the parent to check.
fn is_child() -> bool {
    let child = std::env::var_os(WORK).is_some();
    if child {
        common::started(FtMalloc::stats().mode);
    }
    child
}

/// `env` and `WORK`, for a child.
fn with_work<'a>(env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = vec![(WORK, "1")];
    all.extend_from_slice(env);
    all
}

/// Runs test `test` of this binary in a child with `env` set (and nothing else of ftmalloc's);
/// checks nothing.
fn run_self(test: &str, env: &[(&str, &str)]) -> Output {
    common::run_child(test, &with_work(env))
}

/// Runs test `test` in a child with `env` and requires that it ran, with its heap in `mode`,
/// and passed.
fn run_passing(test: &str, env: &[(&str, &str)], mode: Mode) -> Output {
    common::run_passing(test, &with_work(env), mode)
}

// ---------------------------------------------------------------------------------------------
// The workload: 8 threads of std collections, strings handed round a ring through channels.

const THREADS: usize = 8;
const ROUNDS: usize = 40;
const PER_ROUND: usize = 50;

trait Shape: Send {
    fn area2(&self) -> u64;
    fn label(&self) -> String;
}

struct Rect(u64, u64);
struct Square(u64);
struct Tri(u64, u64);

impl Shape for Rect {
    fn area2(&self) -> u64 {
        2 * self.0 * self.1
    }
    fn label(&self) -> String {
        format!("rect {}x{}", self.0, self.1)
    }
}
impl Shape for Square {
    fn area2(&self) -> u64 {
        2 * self.0 * self.0
    }
    fn label(&self) -> String {
        format!("square {}", self.0)
    }
}
impl Shape for Tri {
    fn area2(&self) -> u64 {
        self.0 * self.1
    }
    fn label(&self) -> String {
        format!("tri {} {}", self.0, self.1)
    }
}

/// The message thread `from` sends in `round` as number `i`: a header and a tail of a length
/// that spans pool sizes and large ones (up to 700 bytes).
fn message(from: usize, round: usize, i: usize) -> String {
    let tail = (from * 131 + round * 17 + i * 7) % 700;
    let mut s = format!("{from}:{round}:{i}:");
    let c = char::from(b'a' + (i % 26) as u8);
    for _ in 0..tail {
        s.push(c);
    }
    s
}

fn check_message(s: &str, from: usize) -> (usize, usize) {
    let mut parts = s.splitn(4, ':');
    let mut num = || parts.next().unwrap().parse::<usize>().unwrap();
    let (f, round, i) = (num(), num(), num());
    assert_eq!(f, from, "message from the wrong thread");
    assert_eq!(s, message(f, round, i), "message corrupted in transit");
    (round, i)
}

/// One thread's std-collections churn for one round; panics on a wrong result.
fn churn(t: usize, round: usize) {
    let n = 200 + (t * 31 + round * 7) % 300;

    let mut v: Vec<u64> = (0..n as u64).map(|i| i * (t as u64 + 1)).collect();
    assert_eq!(
        v.iter().sum::<u64>(),
        (t as u64 + 1) * (n as u64 * (n as u64 - 1) / 2)
    );
    v.retain(|x| x % 3 == 0);
    v.extend_from_slice(&[7; 100]);
    v.shrink_to_fit();
    assert!(v.iter().filter(|&&x| x == 7).count() >= 100);

    let mut text = String::new();
    for i in 0..n {
        text.push_str(&i.to_string());
        text.push(',');
    }
    let back: Vec<usize> = text
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(back, (0..n).collect::<Vec<_>>());

    let mut map: HashMap<String, Vec<u32>> = HashMap::new();
    for i in 0..n {
        map.insert(format!("k{t}-{round}-{i}"), (0..(i % 40) as u32).collect());
    }
    for i in (0..n).step_by(2) {
        let v = map.remove(&format!("k{t}-{round}-{i}")).unwrap();
        assert_eq!(v.len(), i % 40);
    }
    assert_eq!(map.len(), n / 2);
    for i in (1..n).step_by(2) {
        let v = &map[&format!("k{t}-{round}-{i}")];
        let k = i % 40;
        assert_eq!(
            v.iter().map(|&x| x as usize).sum::<usize>(),
            k * (k + 1) / 2 - k
        );
    }

    let mut tree: BTreeMap<u64, String> = (0..n as u64).map(|k| (k * 3, k.to_string())).collect();
    let range: u64 = tree.range(30..=300).map(|(k, _)| *k).sum();
    assert_eq!(range, (10..=100).map(|k| k * 3).sum::<u64>());
    tree.retain(|k, _| k % 2 == 0);
    assert!(tree.values().all(|s| s.parse::<u64>().unwrap() % 2 == 0));

    let mut dq: VecDeque<Box<[u8]>> = VecDeque::new();
    for i in 0..n {
        let len = 1 + (i * 53) % 1500;
        dq.push_back(vec![i as u8; len].into_boxed_slice());
        if dq.len() > 32 {
            let j = i - 32;
            let b = dq.pop_front().unwrap();
            assert_eq!(b.len(), 1 + (j * 53) % 1500);
            assert!(b.iter().all(|&x| x == j as u8));
        }
    }

    let shapes: Vec<Box<dyn Shape>> = (0..n as u64)
        .map(|i| -> Box<dyn Shape> {
            match i % 3 {
                0 => Box::new(Rect(i, 2)),
                1 => Box::new(Square(i)),
                _ => Box::new(Tri(i, 4)),
            }
        })
        .collect();
    let expected: u64 = (0..n as u64)
        .map(|i| match i % 3 {
            0 => 4 * i,
            1 => 2 * i * i,
            _ => 4 * i,
        })
        .sum();
    assert_eq!(shapes.iter().map(|s| s.area2()).sum::<u64>(), expected);
    assert!(shapes[1].label().starts_with("square"));
}

/// Runs the 8-thread workload; returns the strings the threads kept, for the caller to free.
fn workload() -> Vec<String> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel::<String>()).unzip();
    let mut rxs: Vec<Option<mpsc::Receiver<String>>> = rxs.into_iter().map(Some).collect();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            // Thread t sends to t + 1 and receives from t - 1 (a ring).
            let tx = txs[(t + 1) % THREADS].clone();
            let rx = rxs[t].take().unwrap();
            std::thread::spawn(move || {
                let from = (t + THREADS - 1) % THREADS;
                let mut got = vec![0usize; ROUNDS];
                let mut received = 0;
                let mut kept = Vec::new();
                let mut take = |s: String| {
                    let (round, i) = check_message(&s, from);
                    got[round] += 1;
                    // Keep a few small ones alive past the thread's exit; free the rest here,
                    // on another thread than the one that allocated them.
                    if i % 10 == 0 && s.len() <= 300 {
                        kept.push(s);
                    }
                };
                for round in 0..ROUNDS {
                    for i in 0..PER_ROUND {
                        tx.send(message(t, round, i)).unwrap();
                    }
                    churn(t, round);
                    while let Ok(s) = rx.try_recv() {
                        take(s);
                        received += 1;
                    }
                }
                drop(tx);
                for _ in received..ROUNDS * PER_ROUND {
                    take(rx.recv().expect("a sender hung up early"));
                }
                assert!(
                    got.iter().all(|&c| c == PER_ROUND),
                    "lost messages: {got:?}"
                );
                kept
            })
        })
        .collect();
    drop(txs);
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("a worker panicked"))
        .collect()
}

#[test]
fn std_collections_on_eight_threads() {
    if !is_child() {
        for mode in common::modes() {
            run_passing(
                "std_collections_on_eight_threads",
                &[("FTMALLOC_MODE", mode.name())],
                mode,
            );
        }
        return;
    }
    let kept = workload();
    let small = kept
        .iter()
        .filter(|s| (1..=512).contains(&s.capacity()))
        .count();
    assert!(small >= THREADS * ROUNDS, "too few strings kept: {small}");
    let heap = FtMalloc::instance();
    for s in &kept {
        if (1..=512).contains(&s.capacity()) {
            assert!(
                heap.owns(s.as_ptr()),
                "a small string was not served from a pool"
            );
        }
    }
    let live = FtMalloc::stats();
    assert!(
        live.pools_in_use() > 0 && live.counters.allocated_total >= 1,
        "{live}"
    );
    assert!(live.blocks_in_use() >= small, "{live}");
    assert_eq!(live.total(), live.mapped_bytes(), "{live}");
    // Freed here, on another thread than the one that allocated them (which has exited).
    drop(kept);
    let after = FtMalloc::stats();
    let freed = live.blocks_in_use().saturating_sub(after.blocks_in_use());
    assert!(
        freed >= small,
        "freeing {small} strings freed only {freed} blocks"
    );
    assert_eq!(after.total(), after.mapped_bytes(), "{after}");
}

// ---------------------------------------------------------------------------------------------
// Environment variables.

/// The stderr line that names `var`, and the values it lists after "accepted".
fn refusal(out: &Output, var: &str) -> (String, Vec<String>) {
    assert!(
        !out.status.success() && out.status.signal() == Some(libc::SIGABRT),
        "{var}: a bad value should abort:\n{}",
        show(out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains(var))
        .unwrap_or_else(|| panic!("no message naming {var}:\n{}", show(out)))
        .to_string();
    let accepted = line
        .split_once("accepted values")
        .unwrap_or_else(|| panic!("the message lists no accepted values: {line}"))
        .1
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    (line, accepted)
}

#[test]
fn a_bad_mode_aborts_naming_it_and_the_accepted_ones() {
    if is_child() {
        // Never reached: the child aborts at its first allocation.
        return;
    }
    let out = run_self(
        "a_bad_mode_aborts_naming_it_and_the_accepted_ones",
        &[("FTMALLOC_MODE", "bogus")],
    );
    let (line, accepted) = refusal(&out, "FTMALLOC_MODE");
    assert!(line.contains("\"bogus\""), "the value is not named: {line}");
    for name in Mode::NAMES {
        assert!(
            accepted.iter().any(|a| a == name),
            "{name} not listed: {line}"
        );
    }
}

#[test]
fn a_stats_flag_other_than_0_or_1_is_refused() {
    if is_child() {
        return;
    }
    let out = run_self(
        "a_stats_flag_other_than_0_or_1_is_refused",
        &[("FTMALLOC_STATS", "2")],
    );
    let (line, accepted) = refusal(&out, "FTMALLOC_STATS");
    assert!(line.contains("\"2\""), "the value is not named: {line}");
    assert_eq!(accepted[..2], ["0", "1"], "{line}");
    assert!(
        line.contains("a file path containing '/'"),
        "the path form is not named: {line}"
    );
}

#[test]
fn a_bad_decay_is_refused_naming_it() {
    if is_child() {
        return;
    }
    for bad in ["10s", "-1", "3600001", "1e3", "99999999999"] {
        let out = run_self(
            "a_bad_decay_is_refused_naming_it",
            &[("FTMALLOC_DECAY_MS", bad)],
        );
        let (line, _) = refusal(&out, "FTMALLOC_DECAY_MS");
        assert!(
            line.contains(&format!("\"{bad}\"")) && line.contains("0 to 3600000"),
            "the value or the accepted range is not named: {line}"
        );
    }
}

/// `FTMALLOC_DECAY_MS=0`: in free-threaded mode every pool returned to its arena is purged at
/// once, so freeing a few arenas' worth of blocks shows purged pools without waiting.
#[test]
fn a_zero_decay_purges_returned_pools_at_once() {
    if !is_child() {
        for mode in common::modes() {
            run_passing(
                "a_zero_decay_purges_returned_pools_at_once",
                &[("FTMALLOC_MODE", mode.name()), ("FTMALLOC_DECAY_MS", "0")],
                mode,
            );
        }
        return;
    }
    let v: Vec<Box<[u8; 200]>> = (0..20_000).map(|i| Box::new([i as u8; 200])).collect();
    assert!(v.iter().enumerate().all(|(i, b)| b[199] == i as u8));
    drop(v);
    let s = FtMalloc::stats();
    match s.mode {
        Mode::FreeThreaded => {
            assert!(s.pools_purged >= 100, "{s}");
            assert_eq!(s.dirty_pools, 0, "{s}");
        }
        // GIL mode, like pymalloc, gives back whole arenas only.
        Mode::Gil => assert_eq!(s.pools_purged, 0, "{s}"),
    }
}

/// The number after `=` on the first stderr line starting with `label`.
fn stat(stderr: &str, label: &str) -> usize {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stderr}"));
    line.rsplit('=')
        .next()
        .unwrap()
        .trim()
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {line}"))
}

#[test]
fn stats_flag_prints_the_table_at_exit() {
    if is_child() {
        let v: Vec<Box<[u8; 100]>> = (0..5000).map(|i| Box::new([i as u8; 100])).collect();
        assert!(v.iter().enumerate().all(|(i, b)| b[99] == i as u8));
        return;
    }
    for mode in common::modes() {
        let out = run_passing(
            "stats_flag_prints_the_table_at_exit",
            &[("FTMALLOC_MODE", mode.name()), ("FTMALLOC_STATS", "1")],
            mode,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("ftmalloc ({mode} mode)")),
            "{mode}: no stats header:\n{stderr}"
        );
        assert!(stat(&stderr, "# arenas allocated total") >= 1, "{stderr}");
        // The table balances: Total == arenas mapped * arena size.
        let mapped = stderr
            .lines()
            .find(|l| l.contains("bytes/arena"))
            .and_then(|l| l.rsplit('=').next())
            .map(|n| n.trim().replace(',', ""))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{mode}: no arenas * bytes/arena line:\n{stderr}"));
        assert_eq!(stat(&stderr, "Total"), mapped, "{mode}:\n{stderr}");
    }
    for quiet in [None, Some("0"), Some("")] {
        let mut env = vec![("FTMALLOC_MODE", "gil")];
        env.extend(quiet.map(|v| ("FTMALLOC_STATS", v)));
        let out = run_passing("stats_flag_prints_the_table_at_exit", &env, Mode::Gil);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("# arenas allocated total"),
            "FTMALLOC_STATS={quiet:?} printed stats:\n{stderr}"
        );
    }
}

#[test]
fn the_mode_unset_or_empty_is_free_threaded() {
    if is_child() {
        let v: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        assert_eq!(v[999], "999");
        return;
    }
    // The helper checks the mode the child's process-wide heap reports.
    run_passing(
        "the_mode_unset_or_empty_is_free_threaded",
        &[],
        Mode::FreeThreaded,
    );
    run_passing(
        "the_mode_unset_or_empty_is_free_threaded",
        &[("FTMALLOC_MODE", "")],
        Mode::FreeThreaded,
    );
}

#[test]
fn a_bad_debug_flag_aborts_naming_it() {
    if is_child() {
        return;
    }
    for bad in ["yes", "2", "on"] {
        let out = run_self(
            "a_bad_debug_flag_aborts_naming_it",
            &[("FTMALLOC_DEBUG", bad)],
        );
        let (line, accepted) = refusal(&out, "FTMALLOC_DEBUG");
        assert!(
            line.contains(&format!("FTMALLOC_DEBUG=\"{bad}\" is not accepted")),
            "the value is not named: {line}"
        );
        assert_eq!(accepted, ["0", "1"], "{line}");
    }
}

/// The child prints the process-wide heap's largest pooled request: 512, less debug mode's
/// header and guards when `FTMALLOC_DEBUG` turned debug mode on.
#[test]
fn the_debug_flag_is_off_unless_1() {
    if is_child() {
        eprintln!("pooled_limit {}", FtMalloc::instance().pooled_limit());
        return;
    }
    for mode in common::modes() {
        for (value, on) in [
            (None, false),
            (Some(""), false),
            (Some("0"), false),
            (Some("1"), true),
        ] {
            let mut env = vec![("FTMALLOC_MODE", mode.name())];
            env.extend(value.map(|v| ("FTMALLOC_DEBUG", v)));
            let out = run_passing("the_debug_flag_is_off_unless_1", &env, mode);
            let err = common::stderr(&out);
            let limit: usize = err
                .lines()
                .find_map(|l| l.strip_prefix("pooled_limit "))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no pooled_limit line:\n{}", show(&out)));
            assert_eq!(
                limit < 512,
                on,
                "{mode}, FTMALLOC_DEBUG={value:?}: debug mode should be {}; pooled limit {limit}",
                if on { "on" } else { "off" }
            );
        }
    }
}

/// What the decay child must see: its freed pools purged after two waits of 150 ms, or kept.
const DECAY_EXPECT: &str = "FTMALLOC_TEST_DECAY_EXPECT";

/// The decay child (free-threaded): frees about 250 pools' worth of blocks (keeping one block per
/// arena, so that no arena is released and only purging can take their pages), then twice
/// waits 150 ms and runs a maintenance pass (a thread exit runs one when it is due). With a
/// decay of 100 ms a pool is purged by the second pass after it stayed free for an interval;
/// with 3,600,000 ms, never in this test. Right after the frees, if they took under 90 ms, no
/// freed pool can have been purged yet with a decay of 100 ms (a decay of 0 purges at once).
fn decay_child() {
    let expect = std::env::var(DECAY_EXPECT).expect("the parent says what to expect");
    let heap = FtMalloc::instance();
    let v: Vec<Box<[u8; 200]>> = (0..20_000).map(|i| Box::new([i as u8; 200])).collect();
    let mut arenas = std::collections::BTreeSet::new();
    let mut keep = Vec::new();
    let start = std::time::Instant::now();
    for b in v {
        if arenas.insert(heap.geometry().arena_of(&*b as *const u8 as usize)) {
            keep.push(b);
        }
    }
    let freed = FtMalloc::stats();
    let took = start.elapsed();
    assert!(freed.counters.current >= 3, "{freed}");
    if took < std::time::Duration::from_millis(90) && expect == "purged" {
        assert!(
            freed.dirty_pools >= 100,
            "pools were purged within {took:?} of their return (the decay is not 100 ms):\n{freed}"
        );
    }
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(150));
        std::thread::spawn(|| drop(std::hint::black_box(Box::new([1u8; 64]))))
            .join()
            .unwrap();
    }
    let after = FtMalloc::stats();
    eprintln!(
        "decay: frees took {took:?}; dirty {} -> {}, purged {} -> {}",
        freed.dirty_pools, after.dirty_pools, freed.pools_purged, after.pools_purged
    );
    match expect.as_str() {
        "purged" => assert!(
            after.pools_purged >= freed.pools_purged + 100 && after.dirty_pools < 100,
            "the freed pools were not purged after 2 x 150 ms:\n{freed}\n{after}"
        ),
        "kept" => assert!(
            after.pools_purged == freed.pools_purged && after.dirty_pools >= 100,
            "pools were purged before the decay interval:\n{freed}\n{after}"
        ),
        other => panic!("{DECAY_EXPECT}={other}"),
    }
    drop(keep);
}

/// `FTMALLOC_DECAY_MS`: unset or empty means 100 ms (freed pools stay resident for at least
/// 90 ms and are purged within 300 ms), and a value is honoured (3,600,000: nothing purged;
/// 50: purged).
#[test]
fn the_decay_defaults_to_100_ms_and_a_value_is_honoured() {
    if is_child() {
        decay_child();
        return;
    }
    let test = "the_decay_defaults_to_100_ms_and_a_value_is_honoured";
    for (value, expect) in [
        (None, "purged"),
        (Some(""), "purged"),
        (Some("3600000"), "kept"),
        (Some("50"), "purged"),
    ] {
        let mut env = vec![("FTMALLOC_MODE", "ft"), (DECAY_EXPECT, expect)];
        env.extend(value.map(|v| ("FTMALLOC_DECAY_MS", v)));
        run_passing(test, &env, Mode::FreeThreaded);
    }
}

/// `FTMALLOC_STATS=1` in free-threaded mode prints the thread-cache and purge rows too; with
/// `FTMALLOC_DECAY_MS=0` the zero-decay child's freed pools are all purged.
#[test]
fn stats_flag_prints_thread_cache_and_purge_rows() {
    if is_child() {
        return;
    }
    let out = run_passing(
        "a_zero_decay_purges_returned_pools_at_once",
        &[
            ("FTMALLOC_MODE", "ft"),
            ("FTMALLOC_DECAY_MS", "0"),
            ("FTMALLOC_STATS", "1"),
        ],
        Mode::FreeThreaded,
    );
    let stderr = common::stderr(&out);
    assert!(stat(&stderr, "# thread caches") >= 1, "{stderr}");
    for row in [
        "# pools held by thread caches",
        "# pools awaiting adoption",
        "# most pools held by one cache",
    ] {
        stat(&stderr, row);
    }
    assert_eq!(stat(&stderr, "# free pools not yet purged"), 0, "{stderr}");
    let purged = stat(&stderr, "# pools purged");
    assert!(purged >= 100, "{stderr}");
    assert_eq!(stat(&stderr, "# bytes purged"), purged * 16384, "{stderr}");
}

/// The environment configures the process-wide heap only: in a process whose heap is in one
/// mode with debug mode on and a decay of 0, `Allocator::new` of the other mode gets that mode
/// without debug mode, and an instance's decay is its own.
#[test]
fn the_environment_does_not_apply_to_instances() {
    if is_child() {
        let process = FtMalloc::instance();
        assert!(process.pooled_limit() < 512, "FTMALLOC_DEBUG=1 not applied");
        let other = match process.mode() {
            Mode::Gil => Mode::FreeThreaded,
            Mode::FreeThreaded => Mode::Gil,
        };
        let a = ftmalloc::Allocator::new(other);
        assert_eq!(a.mode(), other);
        assert_eq!(a.stats().mode, other);
        assert_eq!(a.pooled_limit(), 512, "debug mode leaked into an instance");
        // A decay of an hour: the freed pools stay resident (a decay of 0 would purge them).
        let slow = ftmalloc::Allocator::with_config(
            Mode::FreeThreaded,
            ftmalloc::Config::PYMALLOC.with_decay_ms(3_600_000),
        )
        .unwrap();
        let l = std::alloc::Layout::from_size_align(200, 8).unwrap();
        // Through an explicit handle, which owns its pools and returns each as it empties
        // (with the process-wide heap in free-threaded mode, this thread's memo is that heap's).
        let mut tc = slow.thread_cache().expect("a cache slot");
        // SAFETY: a valid layout; every block is freed once, below.
        let blocks: Vec<*mut u8> = (0..20_000).map(|_| unsafe { tc.alloc(l) }).collect();
        // One block kept per arena: no arena is released, only purging could take the pages.
        let mut arenas = std::collections::BTreeSet::new();
        let mut keep = Vec::new();
        for p in blocks {
            if arenas.insert(slow.geometry().arena_of(p as usize)) {
                keep.push(p);
            } else {
                // SAFETY: a live block of `slow`, freed once.
                unsafe { tc.dealloc(p, l) };
            }
        }
        let s = slow.stats();
        assert!(
            s.dirty_pools >= 100 && s.pools_purged == 0,
            "FTMALLOC_DECAY_MS=0 leaked into an instance:\n{s}"
        );
        for p in keep {
            // SAFETY: the last live blocks, freed once.
            unsafe { tc.dealloc(p, l) };
        }
        return;
    }
    for mode in common::modes() {
        run_passing(
            "the_environment_does_not_apply_to_instances",
            &[
                ("FTMALLOC_MODE", mode.name()),
                ("FTMALLOC_DEBUG", "1"),
                ("FTMALLOC_DECAY_MS", "0"),
            ],
            mode,
        );
    }
}

/// C `malloc`'s fast paths (`FtMalloc::malloc_fast`, `malloc_fast_gil`) take any `size_t`: a
/// size they do not serve misses (null) without being made into a `Layout`, which cannot hold
/// sizes near `usize::MAX`. The `c_abi` fuzz target found `malloc(SIZE_MAX - k)` violating
/// `Layout::from_size_align_unchecked`'s precondition (an abort under debug assertions, as in
/// this test). A child per mode, so that mode's fast path is the live one.
#[test]
fn c_malloc_fast_paths_take_any_size() {
    if is_child() {
        for size in [0, 513, isize::MAX as usize, usize::MAX - 15, usize::MAX] {
            assert!(FtMalloc::malloc_fast(size).is_null(), "malloc_fast({size})");
            assert!(
                FtMalloc::malloc_fast_gil(size).is_null(),
                "malloc_fast_gil({size})"
            );
        }
        return;
    }
    for mode in common::modes() {
        run_passing(
            "c_malloc_fast_paths_take_any_size",
            &[("FTMALLOC_MODE", mode.name())],
            mode,
        );
    }
}
