//! Soak: resident memory must follow the live set, not the work done.
//!
//! Producer/consumer traffic through the process-wide heap ([`FtMalloc`] as the global
//! allocator), where most blocks die on another thread than the one that allocated them: 4
//! producers allocate items of many size classes and send them to 4 consumers, each of which
//! keeps the last 2,000 it received in a ring and drops the older ones. The live set is the same
//! whatever the number of items, so peak RSS after 10x the work must stay within 1.2x of peak
//! RSS after 1x, in both modes. Each run is a child process (the mode is read once per
//! process), this binary re-executed with `FTMALLOC_SOAK_ITEMS` set. With `FTMALLOC_SOAK_SHOW`
//! set too, the child prints the heap's pool counts every 100 ms and its statistics at the end
//! (for diagnosing a failure by hand).

mod common;

use ftmalloc::{FtMalloc, Mode};
use std::sync::mpsc;

#[global_allocator]
static A: FtMalloc = FtMalloc;

const ITEMS: &str = "FTMALLOC_SOAK_ITEMS";
const PRODUCERS: usize = 4;
const CONSUMERS: usize = 4;
const RING: usize = 2000;

/// One item: a few small heap objects of sizes spread over the size classes.
struct Item {
    _bytes: Vec<u8>,
    _text: String,
    _boxed: Box<[u64]>,
}

fn item(p: usize, i: usize) -> Item {
    let k = i.wrapping_mul(2654435761).wrapping_add(p) % 61;
    Item {
        _bytes: vec![k as u8; 8 + k * 8],
        _text: format!("{p}:{i}:{}", "x".repeat(k % 24)),
        _boxed: vec![i as u64; 1 + k % 40].into_boxed_slice(),
    }
}

fn peak_rss_kib() -> u64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64
}

/// The child's work: `items` items per producer; prints the peak RSS.
fn child(items: usize) {
    common::started(FtMalloc::stats().mode);
    if std::env::var_os("FTMALLOC_SOAK_SHOW").is_some() {
        std::thread::spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let s = FtMalloc::stats();
            eprintln!(
                "arenas {} inuse_pools {} unused {} dirty {} cached {} abandoned {} maxcache {} blocks {} purged {}",
                s.counters.current, s.pools_in_use(), s.unused_pools, s.dirty_pools, s.cached_pools,
                s.abandoned_pools, s.max_cached_pools, s.blocks_in_use(), s.pools_purged
            );
        });
    }
    let mut txs = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let (tx, rx) = mpsc::sync_channel::<Item>(256);
        txs.push(tx);
        consumers.push(std::thread::spawn(move || {
            let mut ring: Vec<Option<Item>> = (0..RING).map(|_| None).collect();
            let mut at = 0;
            for it in rx {
                ring[at] = Some(it); // drops the item it replaces: a remote free, mostly
                at = (at + 1) % RING;
            }
        }));
    }
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let txs = txs.clone();
            std::thread::spawn(move || {
                for i in 0..items {
                    txs[(i + p) % CONSUMERS].send(item(p, i)).unwrap();
                }
            })
        })
        .collect();
    drop(txs);
    for t in producers {
        t.join().unwrap();
    }
    for t in consumers {
        t.join().unwrap();
    }
    let s = FtMalloc::stats();
    if std::env::var_os("FTMALLOC_SOAK_SHOW").is_some() {
        eprintln!("{s}");
    }
    println!(
        "soak items={items} peak_rss_kib={} arenas_highwater={} arenas_now={} pools_purged={}",
        peak_rss_kib(),
        s.counters.highwater,
        s.counters.current,
        s.pools_purged
    );
}

fn field(out: &str, name: &str) -> u64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in the child's output:\n{out}"))
}

fn run(mode: Mode, items: usize) -> String {
    let items = items.to_string();
    let out = common::run_passing(
        "same_live_set_same_memory",
        &[("FTMALLOC_MODE", mode.name()), (ITEMS, &items)],
        mode,
    );
    common::stdout(&out)
}

#[test]
fn same_live_set_same_memory() {
    if let Some(n) = std::env::var_os(ITEMS) {
        child(n.to_str().unwrap().parse().unwrap());
        return;
    }
    let base = 20_000;
    for mode in [Mode::FreeThreaded, Mode::Gil] {
        let one = run(mode, base);
        let ten = run(mode, base * 10);
        let (a, b) = (field(&one, "peak_rss_kib"), field(&ten, "peak_rss_kib"));
        let ratio = b as f64 / a as f64;
        eprintln!(
            "soak[{mode}]: peak RSS 1x {a} KiB, 10x {b} KiB ({ratio:.2}x); arenas highwater {} / {}",
            field(&one, "arenas_highwater"),
            field(&ten, "arenas_highwater")
        );
        assert!(
            ratio <= 1.2,
            "{mode}: peak RSS grows with the work at the same live set: 1x {a} KiB, 10x {b} KiB ({ratio:.2}x)\n{one}{ten}"
        );
    }
}
