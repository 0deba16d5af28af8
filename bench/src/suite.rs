//! The suite (the parent's side): runs every cell of the plan in a child process with a
//! progress bar, then prints the table or CSV and each mode's heap statistics, and writes the
//! report folder (results.csv, table.txt, report.md, one SVG plot per workload).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use ftmalloc_bench::catalogue::WORKLOADS;
use ftmalloc_bench::child;
use ftmalloc_bench::procfs;
use ftmalloc_bench::report::{self, Provenance, Row, Sample};
use ftmalloc_bench::timing::Budget;

use crate::cli::{Cli, Plan};

/// Seed of every run (the workloads are deterministic given the seed, up to scheduling).
const SEED: u64 = 0x5EED_F7A1_10C0;

/// Runs every cell of `plan` (each in a child process), prints the table (or CSV) and each
/// mode's heap statistics, and writes the report folder.
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
            match child::run_in_child(&exe, w, *a, *t, plan.budget, SEED) {
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
        let mut rng = fastrand::Rng::with_seed(2026);
        let mut live = Vec::new();
        for i in 0..200_000usize {
            let layout = std::alloc::Layout::from_size_align(rng.usize(1..=512), 8)
                .expect("sizes 1..=512 with alignment 8 are valid layouts");
            // SAFETY: non-zero layout; every block is freed once below.
            let p = unsafe { heap.alloc(layout) };
            assert!(!p.is_null(), "ftmalloc ran out of memory");
            live.push((p, layout));
            if i % 3 != 0 {
                let (p, l) = live.swap_remove(rng.usize(..live.len()));
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
    let run = Provenance {
        date: report::utc_now(),
        machine: format!(
            "{} CPUs ({}), {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            procfs::cpu_model(),
            std::env::consts::ARCH
        ),
    };
    let intro = format!(
        "# ftmalloc comparison report\n\n\
         - date: {}\n- machine: {}\n- command: `ftmalloc-bench{}`\n\
         - budget: {budget}; median of {} run(s); suite wall time {:.1} s\n\
         - allocators: {}\n\n\
         Mops/s: million operations per second, all threads together (an operation is one \
         allocation, freed later). *vs system*: throughput over the system allocator's at \
         the same thread count. *vs 1 thread*: throughput over the same allocator's at one \
         thread. *peak RSS*: the child process's peak resident set (VmHWM). *retained \
         RSS*: its resident set after the workload freed everything and its threads \
         exited. Each cell ran in its own process. Absolute numbers depend on the machine; \
         compare ratios from one run.\n",
        run.date,
        run.machine,
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
        report::plot(&cli.out, rows, w, &run)?;
    }
    Ok(())
}

/// `--replot DIR`: redraws the SVG plots of a report folder from its `results.csv`, with the
/// date and machine of its `report.md`; measures nothing. Errors name the file and the fault.
pub fn replot(dir: &Path) -> ExitCode {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let result = (|| -> Result<usize, String> {
        let rows = report::parse_csv(&read("results.csv")?)
            .map_err(|e| format!("{}: {e}", dir.join("results.csv").display()))?;
        let run = Provenance::from_report(&read("report.md")?)
            .map_err(|e| format!("{}: {e}", dir.join("report.md").display()))?;
        let mut plotted = 0;
        for w in WORKLOADS
            .iter()
            .filter(|w| rows.iter().any(|r| r.workload == w.name))
        {
            report::plot(dir, &rows, w, &run).map_err(|e| format!("plotting {}: {e}", w.name))?;
            plotted += 1;
        }
        Ok(plotted)
    })();
    match result {
        Ok(n) => {
            eprintln!("replot: {n} plots written to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
