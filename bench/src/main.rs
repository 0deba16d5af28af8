//! `ftmalloc-bench`: the comparison harness. Runs classic multithreaded allocator workloads on
//! ftmalloc (GIL and free-threaded modes), the system allocator, mimalloc and jemalloc, each
//! (workload, allocator, threads) cell in its own child process, and reports throughput,
//! scaling, peak and retained RSS as a table, CSV, Markdown and SVG plots.
//!
//! `cargo run --release` runs the default suite; `--help` lists the flags, `--list` the
//! workloads.

mod allocs;
mod report;
mod workloads;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use allocs::AllocName;
use report::{Row, Sample};
use workloads::{Budget, Params, Workload, WORKLOADS};

/// Seconds per cell when neither `--ops` nor `--seconds` is given.
const DEFAULT_SECONDS: f64 = 1.3;
/// Thread counts of the default suite.
const DEFAULT_THREADS: [usize; 3] = [1, 2, 4];
/// Seed of every run (the workloads are deterministic given the seed, up to scheduling).
const SEED: u64 = 0x5EED_F7A1_10C0;
/// Name of the hidden subcommand that runs one cell in a child process.
const CELL: &str = "__cell";

/// Compare ftmalloc (GIL and free-threaded modes) with the system allocator, mimalloc and
/// jemalloc on classic multithreaded allocator workloads.
///
/// Each (workload, allocator, threads) cell runs in its own child process, so its peak and
/// retained RSS are its own. Prints a table (or CSV with --csv) and writes a report folder:
/// results.csv, table.txt (the table as printed), report.md and one SVG plot per workload.
#[derive(Parser, Debug)]
#[command(name = "ftmalloc-bench", version, about, long_about = None)]
struct Cli {
    /// Workloads to run, comma-separated [default: all]
    #[arg(long, value_delimiter = ',', value_name = "W,..", value_parser = workload_parser())]
    workloads: Vec<String>,

    /// Allocators to compare, comma-separated [default: all available]
    #[arg(long, value_delimiter = ',', value_name = "A,..", value_parser = allocator_parser())]
    allocators: Vec<String>,

    /// Worker thread counts, comma-separated, each in 1..=256 [default: 1,2,4]
    #[arg(long, value_delimiter = ',', value_name = "N,..", value_parser = parse_threads)]
    threads: Vec<u16>,

    /// Operations (allocations, each freed) per thread and cell, a whole number >= 1
    #[arg(long, value_name = "N", conflicts_with = "seconds", allow_negative_numbers = true,
          value_parser = parse_ops)]
    ops: Option<u64>,

    /// Run each cell for this many seconds, a number in (0, 3600] [default: 1.3]
    #[arg(long, value_name = "S", allow_negative_numbers = true, value_parser = parse_seconds)]
    seconds: Option<f64>,

    /// Run each cell N times (1..=100) and report the median
    #[arg(long, value_name = "N", default_value_t = 1, allow_negative_numbers = true,
          value_parser = parse_repeat)]
    repeat: u32,

    /// Report folder (results.csv, table.txt, report.md, `<workload>.svg`)
    #[arg(long, value_name = "DIR", default_value = "target/ftmalloc-report")]
    out: PathBuf,

    /// Print CSV on stdout instead of the table
    #[arg(long)]
    csv: bool,

    /// List the workloads and allocators, then exit
    #[arg(long)]
    list: bool,

    #[command(subcommand)]
    child: Option<Child>,
}

/// The hidden subcommand the harness re-executes itself with.
#[derive(Subcommand, Debug)]
enum Child {
    /// Run one cell and print `RESULT ops seconds peak_rss_kib retained_rss_kib`.
    #[command(name = CELL, hide = true)]
    Cell {
        #[arg(long, value_parser = workload_parser())]
        workload: String,
        #[arg(long, value_parser = allocator_parser())]
        allocator: String,
        #[arg(long, value_parser = parse_threads)]
        threads: u16,
        #[arg(long, conflicts_with = "seconds", value_parser = parse_ops)]
        ops: Option<u64>,
        #[arg(long, value_parser = parse_seconds)]
        seconds: Option<f64>,
        #[arg(long)]
        seed: u64,
    },
}

fn workload_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(
        WORKLOADS
            .iter()
            .map(|w| PossibleValue::new(w.name).help(w.describe)),
    )
}

fn allocator_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(
        AllocName::ALL
            .iter()
            .map(|a| PossibleValue::new(a.name()).help(a.describe())),
    )
}

/// A whole number in `lo..=hi`, or an error naming the value and the accepted range.
fn whole<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    s: &str,
    lo: T,
    hi: T,
    what: &str,
) -> Result<T, String> {
    match s.trim().parse::<T>() {
        Ok(v) if lo <= v && v <= hi => Ok(v),
        _ => Err(format!(
            "'{s}' is not {what}; accepted: a whole number in {lo}..={hi}"
        )),
    }
}

fn parse_threads(s: &str) -> Result<u16, String> {
    whole(s, 1, 256, "a thread count")
}

fn parse_ops(s: &str) -> Result<u64, String> {
    whole(s, 1, 1_000_000_000_000, "a number of operations")
}

fn parse_repeat(s: &str) -> Result<u32, String> {
    whole(s, 1, 100, "a repeat count")
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!(
            "'{s}' is not a number of seconds; accepted: a number in (0, 3600], e.g. 0.5"
        )),
    }
}

fn budget(ops: Option<u64>, seconds: Option<f64>) -> Budget {
    match (ops, seconds) {
        (Some(n), _) => Budget::Ops(n),
        (None, s) => Budget::Time(Duration::from_secs_f64(s.unwrap_or(DEFAULT_SECONDS))),
    }
}

/// What the parent runs, after defaults and de-duplication.
#[derive(Debug)]
struct Plan {
    workloads: Vec<&'static Workload>,
    allocators: Vec<AllocName>,
    threads: Vec<usize>,
    budget: Budget,
    repeat: u32,
}

/// Resolves the parsed flags; notes go to `notes` (one line each).
fn plan(cli: &Cli, notes: &mut Vec<String>) -> Result<Plan, String> {
    let mut workloads: Vec<&'static Workload> = Vec::new();
    for name in &cli.workloads {
        let w = workloads::find(name).ok_or_else(|| format!("unknown workload '{name}'"))?;
        if !workloads.iter().any(|v| std::ptr::eq(*v, w)) {
            workloads.push(w);
        }
    }
    if workloads.is_empty() {
        workloads = WORKLOADS.iter().collect();
    }
    let asked: Vec<AllocName> = if cli.allocators.is_empty() {
        AllocName::ALL.to_vec()
    } else {
        let mut v = Vec::new();
        for name in &cli.allocators {
            let a =
                AllocName::from_name(name).ok_or_else(|| format!("unknown allocator '{name}'"))?;
            if !v.contains(&a) {
                v.push(a);
            }
        }
        v
    };
    let mut allocators = Vec::new();
    for a in asked {
        match a.unavailable() {
            Some(why) => notes.push(format!(
                "note: allocator '{}' is unavailable ({why}); skipped",
                a.name()
            )),
            None => allocators.push(a),
        }
    }
    if allocators.is_empty() {
        return Err("no available allocator left to run".into());
    }
    let mut threads: Vec<usize> = if cli.threads.is_empty() {
        DEFAULT_THREADS.to_vec()
    } else {
        cli.threads.iter().map(|&t| usize::from(t)).collect()
    };
    threads.sort_unstable();
    threads.dedup();
    Ok(Plan {
        workloads,
        allocators,
        threads,
        budget: budget(cli.ops, cli.seconds),
        repeat: cli.repeat,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Child::Cell {
        workload,
        allocator,
        threads,
        ops,
        seconds,
        seed,
    }) = &cli.child
    {
        return child::run(
            workload,
            allocator,
            Params {
                threads: usize::from(*threads),
                budget: budget(*ops, *seconds),
                seed: *seed,
            },
        );
    }
    if cli.list {
        print!("{}", listing());
        return ExitCode::SUCCESS;
    }
    let mut notes = Vec::new();
    let plan = match plan(&cli, &mut notes) {
        Ok(p) => p,
        Err(e) => {
            for n in &notes {
                eprintln!("{n}");
            }
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for n in &notes {
        eprintln!("{n}");
    }
    parent::run(&cli, &plan)
}

/// The `--list` text.
fn listing() -> String {
    let mut s = String::from("workloads (an operation is one allocation, freed later):\n");
    let width = WORKLOADS.iter().map(|w| w.name.len()).max().unwrap_or(0);
    for w in WORKLOADS {
        s.push_str(&format!(
            "  {:<width$}  {}\n  {:<width$}  follows {}\n",
            w.name, w.describe, "", w.classic
        ));
    }
    s.push_str("allocators:\n");
    for a in AllocName::ALL {
        let state = a
            .unavailable()
            .map_or_else(String::new, |why| format!(" [unavailable: {why}]"));
        s.push_str(&format!(
            "  {:<width$}  {}{state}\n",
            a.name(),
            a.describe()
        ));
    }
    s
}

/// The child side: one cell, measured in this process alone.
mod child {
    use super::*;

    /// Runs the cell and prints its `RESULT` line.
    pub fn run(workload: &str, allocator: &str, params: Params) -> ExitCode {
        // A panicking worker must not leave the others waiting at a barrier.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            hook(info);
            std::process::abort();
        }));
        let (Some(w), Some(a)) = (workloads::find(workload), AllocName::from_name(allocator))
        else {
            eprintln!("error: unknown workload '{workload}' or allocator '{allocator}'");
            return ExitCode::from(2);
        };
        let Some(heap) = a.instantiate_process_wide() else {
            eprintln!("error: allocator '{allocator}' is unavailable in this build");
            return ExitCode::from(3);
        };
        let out = (w.run)(&heap, &params);
        // Everything is freed and every worker has exited; the heap is still alive, so this is
        // what the allocator keeps.
        let retained = resident_kib();
        let peak = peak_rss_kib().max(retained);
        println!(
            "RESULT {} {} {} {}",
            out.ops,
            out.elapsed.as_secs_f64(),
            peak,
            retained
        );
        ExitCode::SUCCESS
    }

    /// Resident set now, KiB (`/proc/self/statm`, second field, in pages).
    fn resident_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        pages * page / 1024
    }

    /// Peak resident set of this process image, KiB: `VmHWM` of `/proc/self/status`.
    ///
    /// Not `getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries the high-water mark of the
    /// parent's address space across `posix_spawn`/`vfork` + `exec` into `ru_maxrss`, so a child
    /// of a large parent would report the parent's peak. `VmHWM` belongs to this image alone.
    /// `ru_maxrss` is the fallback where `/proc` is missing.
    fn peak_rss_kib() -> u64 {
        let hwm = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            });
        if let Some(kib) = hwm {
            return kib;
        }
        // SAFETY: an all-zero rusage is a valid value of the plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: ru is a valid, writable rusage.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return 0;
        }
        ru.ru_maxrss.max(0) as u64
    }
}

/// The parent side: runs every cell in a child, aggregates and reports.
mod parent {
    use super::*;
    use std::io::Read;

    /// A cell that has run too long is killed after this (plus the budget, times ten).
    const GRACE: Duration = Duration::from_secs(120);

    pub fn run(cli: &Cli, plan: &Plan) -> ExitCode {
        let started = Instant::now();
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: cannot find this executable to re-run it: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut cells = Vec::new();
        for &w in &plan.workloads {
            for &t in &plan.threads {
                for &a in &plan.allocators {
                    cells.push((w, a, t, Vec::<Sample>::new()));
                }
            }
        }
        let total = cells.len() as u64 * u64::from(plan.repeat);
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:32}] {pos}/{len} cells, eta {eta}  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        let mut failures = 0;
        for rep in 0..plan.repeat {
            for (w, a, t, samples) in cells.iter_mut() {
                bar.set_message(format!(
                    "{} / {} / {} threads (run {}/{})",
                    w.name,
                    a.name(),
                    t,
                    rep + 1,
                    plan.repeat
                ));
                match run_cell(&exe, w, *a, *t, plan.budget) {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        failures += 1;
                        bar.println(format!(
                            "warning: {} / {} / {} threads failed: {e}",
                            w.name,
                            a.name(),
                            t
                        ));
                    }
                }
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        let rows: Vec<Row> = cells
            .iter()
            .filter(|c| !c.3.is_empty())
            .map(|(w, a, t, s)| Row::from_samples(w.name, *a, *t, s))
            .collect();
        let wall = started.elapsed();

        if cli.csv {
            print!("{}", report::csv(&rows));
        } else {
            print!("{}", report::table(&rows, &plan.workloads));
            print_heap_stats();
        }
        match write_report(cli, plan, &rows, wall) {
            Ok(()) => eprintln!(
                "report: {} (results.csv, table.txt, report.md, {} plots); suite took {:.1} s",
                cli.out.display(),
                plan.workloads.len(),
                wall.as_secs_f64()
            ),
            Err(e) => {
                eprintln!("error: writing the report to {}: {e}", cli.out.display());
                return ExitCode::FAILURE;
            }
        }
        if failures > 0 {
            eprintln!("error: {failures} cell run(s) failed");
            return ExitCode::FAILURE;
        }
        ExitCode::SUCCESS
    }

    /// Prints each mode's heap statistics (as CPython's `sys._debugmallocstats()`) after a
    /// short mixed workload in this process: 200,000 allocations of 1..=512 bytes, two thirds
    /// of them freed at random, the rest still live when the snapshot is taken.
    fn print_heap_stats() {
        for mode in [ftmalloc::Mode::Gil, ftmalloc::Mode::FreeThreaded] {
            let heap = ftmalloc::Allocator::new(mode);
            let mut rng = workloads::Rng::new(2026);
            let mut live = Vec::new();
            for i in 0..200_000usize {
                let layout = std::alloc::Layout::from_size_align(1 + rng.below(512), 8)
                    .expect("sizes 1..=512 with alignment 8 are valid layouts");
                // SAFETY: non-zero layout; every block is freed once below.
                let p = unsafe { heap.alloc(layout) };
                assert!(!p.is_null(), "ftmalloc ran out of memory");
                live.push((p, layout));
                if i % 3 != 0 {
                    let (p, l) = live.swap_remove(rng.below(live.len()));
                    // SAFETY: a live block with its layout, freed once.
                    unsafe { heap.dealloc(p, l) };
                }
            }
            println!(
                "\nftmalloc heap after a short mixed workload ({} live blocks):",
                live.len()
            );
            println!("{}", heap.stats());
            for (p, l) in live {
                // SAFETY: live blocks, freed once.
                unsafe { heap.dealloc(p, l) };
            }
        }
    }

    /// Runs one cell in a child process and parses its `RESULT` line.
    fn run_cell(
        exe: &std::path::Path,
        w: &Workload,
        a: AllocName,
        threads: usize,
        budget: Budget,
    ) -> Result<Sample, String> {
        let mut cmd = Command::new(exe);
        cmd.args([
            CELL,
            "--workload",
            w.name,
            "--allocator",
            a.name(),
            "--threads",
            &threads.to_string(),
            "--seed",
            &SEED.to_string(),
        ]);
        let limit = match budget {
            Budget::Ops(n) => {
                cmd.args(["--ops", &n.to_string()]);
                GRACE * 5
            }
            Budget::Time(d) => {
                cmd.args(["--seconds", &d.as_secs_f64().to_string()]);
                GRACE + d * 10
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("killed after {:.0} s", limit.as_secs_f64()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(format!("waiting for the child: {e}")),
            }
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut stdout);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        if !status.success() {
            let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(format!("child exited with {status}: {tail}"));
        }
        parse_result(&stdout)
            .ok_or_else(|| format!("no RESULT line in the child's output: {stdout:?}"))
    }

    /// Parses `RESULT ops seconds peak_rss_kib retained_rss_kib`.
    pub(crate) fn parse_result(stdout: &str) -> Option<Sample> {
        let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT "))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 {
            return None;
        }
        Some(Sample {
            ops: f[0].parse().ok()?,
            seconds: f[1].parse().ok()?,
            peak_rss_kib: f[2].parse().ok()?,
            retained_rss_kib: f[3].parse().ok()?,
        })
    }

    fn write_report(
        cli: &Cli,
        plan: &Plan,
        rows: &[Row],
        wall: Duration,
    ) -> Result<(), Box<dyn std::error::Error>> {
        std::fs::create_dir_all(&cli.out)?;
        std::fs::write(cli.out.join("results.csv"), report::csv(rows))?;
        std::fs::write(
            cli.out.join("table.txt"),
            report::table(rows, &plan.workloads),
        )?;
        let budget = match plan.budget {
            Budget::Ops(n) => format!("{n} operations per thread"),
            Budget::Time(d) => format!("{} s per cell", d.as_secs_f64()),
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let intro = format!(
            "# ftmalloc comparison report\n\n\
             - date: {}\n- machine: {} CPUs ({}), {}\n- command: `ftmalloc-bench{}`\n\
             - budget: {budget}; median of {} run(s); suite wall time {:.1} s\n\
             - allocators: {}\n\n\
             Mops/s: million operations per second, all threads together (an operation is one \
             allocation, freed later). *vs system*: throughput over the system allocator's at \
             the same thread count. *vs 1 thread*: throughput over the same allocator's at one \
             thread. *peak RSS*: the child process's peak resident set (VmHWM). *retained \
             RSS*: its resident set after the workload freed everything and its threads \
             exited. Each cell ran in its own process. Absolute numbers depend on the machine; \
             compare ratios from one run.\n",
            utc_now(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model(),
            std::env::consts::ARCH,
            args.iter().map(|a| format!(" {a}")).collect::<String>(),
            plan.repeat,
            wall.as_secs_f64(),
            plan.allocators
                .iter()
                .map(|a| format!("`{}` ({})", a.name(), a.describe()))
                .collect::<Vec<_>>()
                .join(", "),
        );
        std::fs::write(
            cli.out.join("report.md"),
            report::markdown(rows, &plan.workloads, &intro),
        )?;
        for w in &plan.workloads {
            report::plot(&cli.out, rows, w)?;
        }
        Ok(())
    }

    /// The CPU model from /proc/cpuinfo.
    fn cpu_model() -> String {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into())
    }

    /// The current UTC date and time, `YYYY-MM-DD HH:MM UTC`.
    fn utc_now() -> String {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        format!(
            "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
            rem / 3600,
            rem % 3600 / 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ftmalloc-bench").chain(args.iter().copied()))
    }

    fn err(args: &[&str]) -> String {
        let e = parse(args).expect_err("should be refused");
        assert_eq!(e.exit_code(), 2, "{e}");
        e.to_string()
    }

    #[test]
    fn defaults() {
        let cli = parse(&[]).unwrap();
        let mut notes = Vec::new();
        let p = plan(&cli, &mut notes).unwrap();
        assert_eq!(p.workloads.len(), WORKLOADS.len());
        assert_eq!(p.threads, DEFAULT_THREADS);
        assert_eq!(
            p.budget,
            Budget::Time(Duration::from_secs_f64(DEFAULT_SECONDS))
        );
        assert_eq!(p.repeat, 1);
        assert_eq!(cli.out, PathBuf::from("target/ftmalloc-report"));
        assert_eq!(
            p.allocators.len() + notes.len(),
            AllocName::ALL.len(),
            "every allocator runs or is noted"
        );
    }

    #[test]
    fn lists_are_split_deduplicated_and_sorted() {
        let cli = parse(&[
            "--workloads",
            "larson,pairs,larson",
            "--allocators",
            "system,gil",
            "--threads",
            "4,1,4",
            "--ops",
            "1000",
        ])
        .unwrap();
        let p = plan(&cli, &mut Vec::new()).unwrap();
        let names: Vec<_> = p.workloads.iter().map(|w| w.name).collect();
        assert_eq!(names, ["larson", "pairs"]);
        assert_eq!(p.allocators, [AllocName::System, AllocName::Gil]);
        assert_eq!(p.threads, [1, 4]);
        assert_eq!(p.budget, Budget::Ops(1000));
    }

    #[test]
    fn unknown_names_are_refused_with_the_accepted_ones() {
        let e = err(&["--workloads", "pairs,nope"]);
        assert!(e.contains("'nope'") && e.contains("threadtest") && e.contains("fragmentation"));
        let e = err(&["--allocators", "tcmalloc"]);
        assert!(e.contains("'tcmalloc'") && e.contains("mimalloc") && e.contains("jemalloc"));
    }

    #[test]
    fn bad_numbers_are_refused() {
        assert!(err(&["--threads", "0"]).contains("1..=256"));
        assert!(err(&["--threads", "two"]).contains("'two'"));
        assert!(err(&["--ops", "-5"]).contains("'-5'"));
        assert!(err(&["--ops", "1e3"]).contains("accepted: a whole number"));
        assert!(err(&["--seconds", "-1"]).contains("'-1'"));
        assert!(err(&["--seconds", "0"]).contains("(0, 3600]"));
        assert!(err(&["--seconds", "abc"]).contains("'abc'"));
        assert!(err(&["--repeat", "0"]).contains("1..=100"));
        assert_eq!(
            parse(&["--ops", "5", "--seconds", "1"]).unwrap_err().kind(),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn result_line_round_trips() {
        let s = parent::parse_result("noise\nRESULT 1200 0.5 4096 2048\n").unwrap();
        assert_eq!(
            s,
            Sample {
                ops: 1200,
                seconds: 0.5,
                peak_rss_kib: 4096,
                retained_rss_kib: 2048
            }
        );
        assert!(parent::parse_result("RESULT 1 2 3\n").is_none());
    }

    #[test]
    fn listing_names_every_workload_and_allocator() {
        let l = listing();
        assert!(WORKLOADS
            .iter()
            .all(|w| l.contains(w.name) && l.contains(w.classic)));
        assert!(AllocName::ALL.iter().all(|a| l.contains(a.name())));
    }
}

/// Tests of `workloads.rs` (kept here: that file is also compiled into the criterion benches).
#[cfg(test)]
mod workload_tests {
    use crate::allocs::{AllocName, Heap};
    use crate::workloads::*;
    use std::time::Duration;

    #[test]
    fn registry_names_are_unique_and_found() {
        for (i, w) in WORKLOADS.iter().enumerate() {
            assert!(std::ptr::eq(find(w.name).unwrap(), w));
            assert!(WORKLOADS[..i].iter().all(|v| v.name != w.name));
        }
        assert!(find("nope").is_none());
    }

    #[test]
    fn every_workload_runs_on_every_allocator() {
        for name in AllocName::ALL {
            let Some(heap) = name.instantiate() else {
                continue;
            };
            for w in WORKLOADS {
                let p = Params {
                    threads: 2,
                    budget: Budget::Ops(600),
                    seed: 7,
                };
                let out = (w.run)(&heap, &p);
                assert!(out.ops >= 1200, "{} on {}: {:?}", w.name, name.name(), out);
                assert!(out.elapsed > Duration::ZERO);
            }
            if let Heap::Gil(h) | Heap::Ft(h) = &heap {
                assert_eq!(h.stats().blocks_in_use(), 0, "{} leaked", name.name());
            }
        }
    }

    #[test]
    fn time_budget_stops() {
        let heap = AllocName::System.instantiate().unwrap();
        let p = Params {
            threads: 2,
            budget: Budget::Time(Duration::from_millis(20)),
            seed: 1,
        };
        let out = (find("xmalloc").unwrap().run)(&heap, &p);
        assert!(out.ops > 0);
        assert!(out.elapsed >= Duration::from_millis(20));
        assert!(out.elapsed < Duration::from_secs(5));
    }

    #[test]
    fn sizes_stay_in_range() {
        let t = SizeTable::new(3, 257, 512);
        assert!((0..4096).all(|k| (257..=512).contains(&t.get(k).size())));
        let mut r = Rng::new(0);
        assert!((0..10_000).all(|_| r.below(10) < 10));
    }
}
