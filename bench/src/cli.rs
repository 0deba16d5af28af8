//! The command line: the flags ([`Cli`]), the hidden subcommand of the child-process protocol
//! ([`Child`]), the validation of every value, the resolved [`Plan`] and the `--list` text.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Parser, Subcommand};

use ftmalloc_bench::allocs::AllocName;
use ftmalloc_bench::catalogue::{self, Workload, WORKLOADS};
use ftmalloc_bench::child::CELL;
use ftmalloc_bench::timing::Budget;

/// Seconds per cell when neither `--ops` nor `--seconds` is given.
const DEFAULT_SECONDS: f64 = 1.3;
/// Thread counts of the default suite.
const DEFAULT_THREADS: [usize; 3] = [1, 2, 4];

/// Compare ftmalloc (GIL and free-threaded modes) with the system allocator, mimalloc and
/// jemalloc on classic multithreaded allocator workloads.
///
/// Each (workload, allocator, threads) cell runs in its own child process, so its peak and
/// retained RSS are its own. Prints a table (or CSV with --csv) and writes a report folder:
/// results.csv, table.txt (the table as printed), report.md and one SVG plot per workload.
#[derive(Parser, Debug)]
#[command(name = "ftmalloc-bench", version, about, long_about = None)]
pub struct Cli {
    /// Workloads to run, comma-separated [default: all]
    #[arg(long, value_delimiter = ',', value_name = "W,..", value_parser = workload_parser())]
    pub workloads: Vec<String>,

    /// Allocators to compare, comma-separated [default: all available]
    #[arg(long, value_delimiter = ',', value_name = "A,..", value_parser = allocator_parser())]
    pub allocators: Vec<String>,

    /// Worker thread counts, comma-separated, each in 1..=256 [default: 1,2,4]
    #[arg(long, value_delimiter = ',', value_name = "N,..", value_parser = parse_threads)]
    pub threads: Vec<u16>,

    /// Operations (allocations, each freed) per thread and cell, a whole number >= 1
    #[arg(long, value_name = "N", conflicts_with = "seconds", allow_negative_numbers = true,
          value_parser = parse_ops)]
    pub ops: Option<u64>,

    /// Run each cell for this many seconds, a number in (0, 3600] [default: 1.3]
    #[arg(long, value_name = "S", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub seconds: Option<f64>,

    /// Run each cell N times (1..=100) and report the median
    #[arg(long, value_name = "N", default_value_t = 1, allow_negative_numbers = true,
          value_parser = parse_repeat)]
    pub repeat: u32,

    /// Report folder (results.csv, table.txt, report.md, `<workload>.svg`)
    #[arg(long, value_name = "DIR", default_value = "target/ftmalloc-report")]
    pub out: PathBuf,

    /// Print CSV on stdout instead of the table
    #[arg(long)]
    pub csv: bool,

    /// List the workloads and allocators, then exit
    #[arg(long)]
    pub list: bool,

    /// Measure nothing: redraw the SVG plots of the report folder DIR from its results.csv
    /// (with the date and machine of its report.md), then exit
    #[arg(long, value_name = "DIR", conflicts_with_all = ["workloads", "allocators", "threads",
          "ops", "seconds", "csv", "list"])]
    pub replot: Option<PathBuf>,

    #[command(subcommand)]
    pub child: Option<Child>,
}

/// The hidden subcommand the harness re-executes itself with.
#[derive(Subcommand, Debug)]
pub enum Child {
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

/// The budget of `--ops` or `--seconds` (the default: [`DEFAULT_SECONDS`] seconds).
pub fn budget(ops: Option<u64>, seconds: Option<f64>) -> Budget {
    match (ops, seconds) {
        (Some(n), _) => Budget::Ops(n),
        (None, s) => Budget::Time(Duration::from_secs_f64(s.unwrap_or(DEFAULT_SECONDS))),
    }
}

/// What the parent runs, after defaults and de-duplication.
#[derive(Debug)]
pub struct Plan {
    /// Workloads, in the order asked.
    pub workloads: Vec<&'static Workload>,
    /// Allocators, in the order asked.
    pub allocators: Vec<AllocName>,
    /// Thread counts, ascending.
    pub threads: Vec<usize>,
    /// Work per thread and cell.
    pub budget: Budget,
    /// Runs of each cell.
    pub repeat: u32,
}

/// Resolves the parsed flags: defaults, de-duplication, sorted thread counts.
pub fn plan(cli: &Cli) -> Result<Plan, String> {
    let mut workloads: Vec<&'static Workload> = Vec::new();
    for name in &cli.workloads {
        let w = catalogue::find(name).ok_or_else(|| format!("unknown workload '{name}'"))?;
        if !workloads.iter().any(|v| std::ptr::eq(*v, w)) {
            workloads.push(w);
        }
    }
    if workloads.is_empty() {
        workloads = WORKLOADS.iter().collect();
    }
    let allocators: Vec<AllocName> = if cli.allocators.is_empty() {
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

/// The `--list` text.
pub fn listing() -> String {
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
        s.push_str(&format!("  {:<width$}  {}\n", a.name(), a.describe()));
    }
    s
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
        let p = plan(&cli).unwrap();
        assert_eq!(p.workloads.len(), WORKLOADS.len());
        assert_eq!(p.threads, DEFAULT_THREADS);
        assert_eq!(
            p.budget,
            Budget::Time(Duration::from_secs_f64(DEFAULT_SECONDS))
        );
        assert_eq!(p.repeat, 1);
        assert_eq!(cli.out, PathBuf::from("target/ftmalloc-report"));
        assert_eq!(p.allocators, AllocName::ALL);
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
        let p = plan(&cli).unwrap();
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
    fn listing_names_every_workload_and_allocator() {
        let l = listing();
        assert!(WORKLOADS
            .iter()
            .all(|w| l.contains(w.name) && l.contains(w.classic)));
        assert!(AllocName::ALL.iter().all(|a| l.contains(a.name())));
    }
}
