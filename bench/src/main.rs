//! `ftmalloc-bench`: the comparison harness. Runs classic multithreaded allocator workloads on
//! ftmalloc (GIL and free-threaded modes), the system allocator, mimalloc and jemalloc, each
//! (workload, allocator, threads) cell in its own child process, and reports throughput,
//! scaling, peak and retained RSS as a table, CSV, Markdown and SVG plots.
//!
//! `cargo run --release` runs the default suite; `--help` lists the flags, `--list` the
//! workloads.
//!
//! This file dispatches: [`cli`] parses the command line into a plan, [`suite`] runs it (the
//! workloads, the child-process protocol and the reports are the `ftmalloc_bench` library's).

mod cli;
mod suite;

use std::process::ExitCode;

use clap::Parser;

use ftmalloc_bench::child;
use ftmalloc_bench::timing::Params;

use cli::{Child, Cli};

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
        return child::run_here(
            workload,
            allocator,
            Params {
                threads: usize::from(*threads),
                budget: cli::budget(*ops, *seconds),
                seed: *seed,
            },
        );
    }
    if let Some(dir) = &cli.replot {
        return suite::replot(dir);
    }
    if cli.list {
        print!("{}", cli::listing());
        return ExitCode::SUCCESS;
    }
    let plan = match cli::plan(&cli) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    suite::run(&cli, &plan)
}
