//! The parent/child-process protocol: every (workload, allocator, threads) cell runs in a child
//! process, the harness binary re-executed with the hidden [`CELL`] subcommand, so that its
//! peak and retained RSS are its own. The parent's side is [`run_in_child`]; the child's is
//! [`run_here`], which prints one `RESULT ops seconds peak_rss_kib retained_rss_kib` line that
//! [`parse_result`] reads back.

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::allocs::AllocName;
use crate::catalogue::{self, Workload};
use crate::procfs;
use crate::report::Sample;
use crate::timing::{Budget, Params};

/// Name of the hidden subcommand that runs one cell in a child process; its flags are
/// `--workload`, `--allocator`, `--threads`, `--seed` and one of `--ops` and `--seconds`.
pub const CELL: &str = "__cell";

/// A cell that has run too long is killed after this (plus the budget, times ten).
const GRACE: Duration = Duration::from_secs(120);

/// The child's side: runs the cell on the process-wide heap of `allocator`, prints its
/// `RESULT` line and returns the process's exit code (2: unknown names; 3: the allocator could
/// not be set up).
pub fn run_here(workload: &str, allocator: &str, params: Params) -> ExitCode {
    // A panicking worker must not leave the others waiting at a barrier.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        hook(info);
        std::process::abort();
    }));
    let (Some(w), Some(a)) = (catalogue::find(workload), AllocName::from_name(allocator)) else {
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
    let retained = procfs::resident_kib();
    let peak = procfs::peak_rss_kib().max(retained);
    println!(
        "RESULT {} {} {} {}",
        out.ops,
        out.elapsed.as_secs_f64(),
        peak,
        retained
    );
    ExitCode::SUCCESS
}

/// The parent's side: runs one cell in a child process (`exe`, the harness binary, with the
/// [`CELL`] subcommand), waits for it (killing it when it runs far past its budget) and parses
/// its `RESULT` line.
pub fn run_in_child(
    exe: &Path,
    w: &Workload,
    a: AllocName,
    threads: usize,
    budget: Budget,
    seed: u64,
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
        &seed.to_string(),
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
    parse_result(&stdout).ok_or_else(|| format!("no RESULT line in the child's output: {stdout:?}"))
}

/// Parses `RESULT ops seconds peak_rss_kib retained_rss_kib` out of a child's standard output.
pub fn parse_result(stdout: &str) -> Option<Sample> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_round_trips() {
        let s = parse_result("noise\nRESULT 1200 0.5 4096 2048\n").unwrap();
        assert_eq!(
            s,
            Sample {
                ops: 1200,
                seconds: 0.5,
                peak_rss_kib: 4096,
                retained_rss_kib: 2048
            }
        );
        assert!(parse_result("RESULT 1 2 3\n").is_none());
    }
}
