//! The comparison harness's library: the allocators under comparison, the catalogue of
//! classic multithreaded allocator workloads, the timing harness they run in, the per-cell
//! child-process protocol and the reports.
//!
//! Two programs use it: the harness binary `ftmalloc-bench` (`src/main.rs`: the command line
//! and the suite), and the criterion benches (`benches/fastpath.rs` at the workspace root), so
//! both measure the same workload code.
//!
//! - [`allocs`]: the allocators, behind [`BenchAlloc`](allocs::BenchAlloc), and [`with_heap!`];
//! - [`catalogue`]: the list of workloads ([`WORKLOADS`](catalogue::WORKLOADS));
//! - [`timing`]: what a run is given and measures, and the barrier-timed thread harness;
//! - [`workloads`]: the workloads themselves, one module each;
//! - [`trace`]: the embedded CPython trace and its decoder (for the `pytrace` workload);
//! - [`child`]: one cell in its own process: the parent's and the child's side;
//! - [`procfs`]: what the harness reads from `/proc` (RSS, CPU model);
//! - [`report`]: medians, the table, CSV, the Markdown report and the SVG plots.

#![warn(missing_docs)]

pub mod allocs;
pub mod catalogue;
pub mod child;
pub mod procfs;
pub mod report;
pub mod timing;
pub mod trace;
pub mod workloads;
