//! `FtMalloc` as the `#[global_allocator]` under ordinary std code, in every mode, and its
//! environment variables.
//!
//! The mode is read from `FTMALLOC_MODE` once, at the first allocation, so every check runs in
//! a child process: this binary re-executed with `FTMALLOC_MODE` (and `FTMALLOC_STATS`) set, a
//! filter naming the test, and `FTMALLOC_TEST_WORK` telling the child to do the work. The
//! parent only starts children and checks what they report.

use ftmalloc::{FtMalloc, Mode};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::sync::mpsc;

#[global_allocator]
static A: FtMalloc = FtMalloc;

/// Set in a child: do the test's work instead of starting children.
const WORK: &str = "FTMALLOC_TEST_WORK";

fn is_child() -> bool {
    std::env::var_os(WORK).is_some()
}

/// Runs test `test` of this binary in a child with `env` set (and nothing else of ftmalloc's).
fn run_self(test: &str, env: &[(&str, &str)]) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env_remove("FTMALLOC_MODE")
        .env_remove("FTMALLOC_STATS")
        .env_remove("FTMALLOC_DECAY_MS")
        .env(WORK, "1")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_passed(out: &Output, what: &str) {
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{what}: the child failed or ran no test:\n{}",
        show(out)
    );
}

/// The child's mode, as the parent asked for it.
fn requested_mode() -> Mode {
    let name = std::env::var("FTMALLOC_MODE").expect("the parent sets FTMALLOC_MODE");
    Mode::from_name(&name).unwrap()
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
        for &mode in Mode::NAMES {
            let out = run_self(
                "std_collections_on_eight_threads",
                &[("FTMALLOC_MODE", mode)],
            );
            assert_passed(&out, mode);
        }
        return;
    }
    let mode = requested_mode();
    assert_eq!(
        FtMalloc::stats().mode,
        mode,
        "FTMALLOC_MODE was not honoured"
    );
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
        for &mode in Mode::NAMES {
            let out = run_self(
                "a_zero_decay_purges_returned_pools_at_once",
                &[("FTMALLOC_MODE", mode), ("FTMALLOC_DECAY_MS", "0")],
            );
            assert_passed(&out, mode);
        }
        return;
    }
    let v: Vec<Box<[u8; 200]>> = (0..20_000).map(|i| Box::new([i as u8; 200])).collect();
    assert!(v.iter().enumerate().all(|(i, b)| b[199] == i as u8));
    drop(v);
    let s = FtMalloc::stats();
    match requested_mode() {
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
        assert_eq!(FtMalloc::stats().mode, requested_mode());
        let v: Vec<Box<[u8; 100]>> = (0..5000).map(|i| Box::new([i as u8; 100])).collect();
        assert!(v.iter().enumerate().all(|(i, b)| b[99] == i as u8));
        return;
    }
    for &mode in Mode::NAMES {
        let out = run_self(
            "stats_flag_prints_the_table_at_exit",
            &[("FTMALLOC_MODE", mode), ("FTMALLOC_STATS", "1")],
        );
        assert_passed(&out, mode);
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
        let out = run_self("stats_flag_prints_the_table_at_exit", &env);
        assert_passed(&out, "FTMALLOC_STATS unset, 0 or empty");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("# arenas allocated total"),
            "FTMALLOC_STATS={quiet:?} printed stats:\n{stderr}"
        );
    }
}
