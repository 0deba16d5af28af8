//! Results: the median of repeats, the text table, CSV, the Markdown report (and the date on
//! it) and the SVG plots.

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use plotters::prelude::*;

use crate::allocs::AllocName;
use crate::catalogue::Workload;

/// The CSV header; one [`Row`] per line below it, in this column order.
pub const CSV_HEADER: &str =
    "workload,allocator,threads,ops,seconds,mops_per_sec,peak_rss_kib,retained_rss_kib";

/// What one child process measured for one cell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Operations done by all threads.
    pub ops: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Peak resident set of the child, KiB.
    pub peak_rss_kib: u64,
    /// Resident set after the workload freed everything, KiB.
    pub retained_rss_kib: u64,
}

impl Sample {
    /// Millions of operations per second.
    pub fn mops(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9) / 1e6
    }
}

/// One (workload, allocator, threads) cell: each column is the median of its repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Workload name.
    pub workload: &'static str,
    /// Allocator.
    pub allocator: AllocName,
    /// Worker threads.
    pub threads: usize,
    /// Operations (median).
    pub ops: u64,
    /// Seconds (median).
    pub seconds: f64,
    /// Millions of operations per second (median of the repeats' throughputs).
    pub mops: f64,
    /// Peak RSS, KiB (median).
    pub peak_rss_kib: u64,
    /// Retained RSS, KiB (median).
    pub retained_rss_kib: u64,
}

/// The median of `v` (the mean of the two middle values for an even count); 0 when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Row {
    /// The row of a cell from its samples (at least one).
    pub fn from_samples(
        workload: &'static str,
        allocator: AllocName,
        threads: usize,
        samples: &[Sample],
    ) -> Row {
        let col = |f: fn(&Sample) -> f64| median(&samples.iter().map(f).collect::<Vec<_>>());
        Row {
            workload,
            allocator,
            threads,
            ops: col(|s| s.ops as f64).round() as u64,
            seconds: col(|s| s.seconds),
            mops: col(Sample::mops),
            peak_rss_kib: col(|s| s.peak_rss_kib as f64).round() as u64,
            retained_rss_kib: col(|s| s.retained_rss_kib as f64).round() as u64,
        }
    }

    /// The row as a CSV line (no newline), columns as [`CSV_HEADER`].
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{:.6},{:.3},{},{}",
            self.workload,
            self.allocator.name(),
            self.threads,
            self.ops,
            self.seconds,
            self.mops,
            self.peak_rss_kib,
            self.retained_rss_kib
        )
    }
}

/// The whole CSV document, header first.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&r.csv());
        s.push('\n');
    }
    s
}

fn find<'a>(rows: &'a [Row], w: &str, a: AllocName, t: usize) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.workload == w && r.allocator == a && r.threads == t)
}

/// The derived columns of a row: ratio to the system allocator at the same thread count, and
/// scaling against the same allocator at one thread.
fn ratios(rows: &[Row], r: &Row) -> (Option<f64>, Option<f64>) {
    let vs_system = find(rows, r.workload, AllocName::System, r.threads).map(|s| r.mops / s.mops);
    let vs_one = find(rows, r.workload, r.allocator, 1).map(|o| r.mops / o.mops);
    (vs_system, vs_one)
}

fn times(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite())
        .map_or_else(|| "-".to_string(), |v| format!("{v:.2}x"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

const COLUMNS: [&str; 7] = [
    "allocator",
    "threads",
    "Mops/s",
    "vs system",
    "vs 1 thread",
    "peak RSS",
    "retained RSS",
];

fn cells(rows: &[Row], r: &Row) -> [String; 7] {
    let (vs_system, vs_one) = ratios(rows, r);
    [
        r.allocator.name().to_string(),
        r.threads.to_string(),
        format!("{:.2}", r.mops),
        times(vs_system),
        times(vs_one),
        mib(r.peak_rss_kib),
        mib(r.retained_rss_kib),
    ]
}

/// The rows of workload `w`, in run order.
fn of<'a>(rows: &'a [Row], w: &Workload) -> Vec<&'a Row> {
    rows.iter().filter(|r| r.workload == w.name).collect()
}

/// The text table: one block per workload, one line per (allocator, threads).
pub fn table(rows: &[Row], workloads: &[&Workload]) -> String {
    let mut out = String::new();
    for w in workloads {
        let mine = of(rows, w);
        if mine.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{}: {}", w.name, w.describe);
        let body: Vec<[String; 7]> = mine.iter().map(|r| cells(rows, r)).collect();
        let width: Vec<usize> = (0..7)
            .map(|c| {
                body.iter()
                    .map(|b| b[c].len())
                    .chain([COLUMNS[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cols: [&str; 7]| {
            let mut l = format!("  {:<w$}", cols[0], w = width[0]);
            for c in 1..7 {
                let _ = write!(l, "  {:>w$}", cols[c], w = width[c]);
            }
            l
        };
        let _ = writeln!(out, "{}", line(COLUMNS));
        for b in &body {
            let _ = writeln!(out, "{}", line(std::array::from_fn(|c| b[c].as_str())));
        }
        out.push('\n');
    }
    out
}

/// The Markdown report: a preamble (`intro`, already Markdown), then per workload its
/// description, its table and its plot.
pub fn markdown(rows: &[Row], workloads: &[&Workload], intro: &str) -> String {
    let mut out = String::from(intro);
    for w in workloads {
        let mine = of(rows, w);
        if mine.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n## {}\n\n{} ({}).\n", w.name, w.describe, w.classic);
        let _ = writeln!(out, "| {} |", COLUMNS.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            ["---|", "--:|", "--:|", "--:|", "--:|", "--:|", "--:|"].concat()
        );
        for r in mine {
            let _ = writeln!(out, "| {} |", cells(rows, r).join(" | "));
        }
        let _ = writeln!(out, "\n![{0}: throughput vs threads]({0}.svg)", w.name);
    }
    out
}

/// Line colours, one per allocator in [`AllocName::ALL`] order.
const COLOURS: [RGBColor; 5] = [
    RGBColor(0xd6, 0x27, 0x28), // gil: red
    RGBColor(0x1f, 0x77, 0xb4), // ft: blue
    RGBColor(0x55, 0x55, 0x55), // system: grey
    RGBColor(0x2c, 0xa0, 0x2c), // mimalloc: green
    RGBColor(0xff, 0x7f, 0x0e), // jemalloc: orange
];

/// `text` broken at spaces into lines of at most `width` characters (longer words stay whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.len() + 1 + word.len() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// Writes `dir/<workload>.svg`: throughput against threads, one line per allocator.
pub fn plot(dir: &Path, rows: &[Row], w: &Workload) -> Result<(), Box<dyn Error>> {
    let mine = of(rows, w);
    if mine.is_empty() {
        return Ok(());
    }
    let tmin = mine.iter().map(|r| r.threads).min().unwrap_or(1) as f64;
    let tmax = mine.iter().map(|r| r.threads).max().unwrap_or(1) as f64;
    // Headroom above the highest point keeps the legend (upper left) clear of the lines.
    let ymax = mine.iter().map(|r| r.mops).fold(0.0, f64::max).max(1e-3) * 1.45;

    let path = dir.join(format!("{}.svg", w.name));
    let root = SVGBackend::new(&path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut area = root.titled(
        &format!("{}: throughput vs threads (higher is better)", w.name),
        ("sans-serif", 28),
    )?;
    for line in wrap(&format!("{}; follows {}", w.describe, w.classic), 100) {
        area = area.titled(&line, ("sans-serif", 16))?;
    }
    let mut chart = ChartBuilder::on(&area)
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(80)
        .build_cartesian_2d((tmin - 0.5)..(tmax + 0.5), 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("threads")
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 16))
        .y_desc("Mops/s (million allocations + frees per second)")
        .x_labels((2.0 * (tmax - tmin) + 3.0) as usize)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 && x.round() >= 1.0 {
                format!("{}", x.round() as i64)
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.1}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, a) in AllocName::ALL.into_iter().enumerate() {
        let points: Vec<(f64, f64)> = mine
            .iter()
            .filter(|r| r.allocator == a)
            .map(|r| (r.threads as f64, r.mops))
            .collect();
        if points.is_empty() {
            continue;
        }
        let colour = COLOURS[i];
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(3)))?
            .label(format!("{} - {}", a.name(), a.describe()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], colour.stroke_width(3)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 17))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The current UTC date and time, `YYYY-MM-DD HH:MM UTC` (the report's `date:` line).
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_date(secs)
}

/// `secs` seconds after 1970-01-01 00:00 UTC as `YYYY-MM-DD HH:MM UTC`, by the C library's
/// `gmtime_r`.
fn utc_date(secs: u64) -> String {
    let t = libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX);
    // SAFETY: an all-zero tm is a valid value of the plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; gmtime_r is thread-safe.
    if unsafe { libc::gmtime_r(&t, &mut tm) }.is_null() {
        return "unknown date".into();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(w: &'static str, a: AllocName, t: usize, mops: f64) -> Row {
        Row {
            workload: w,
            allocator: a,
            threads: t,
            ops: 1000,
            seconds: 1.0,
            mops,
            peak_rss_kib: 2048,
            retained_rss_kib: 1024,
        }
    }

    #[test]
    fn csv_header_order() {
        assert_eq!(
            CSV_HEADER.split(',').collect::<Vec<_>>(),
            [
                "workload",
                "allocator",
                "threads",
                "ops",
                "seconds",
                "mops_per_sec",
                "peak_rss_kib",
                "retained_rss_kib"
            ]
        );
        let text = csv(&[row("pairs", AllocName::Gil, 2, 12.5)]);
        assert_eq!(
            text,
            format!("{CSV_HEADER}\npairs,gil,2,1000,1.000000,12.500,2048,1024\n")
        );
    }

    #[test]
    fn wrap_breaks_at_spaces() {
        assert_eq!(wrap("aa bb cc dd", 5), ["aa bb", "cc dd"]);
        assert_eq!(wrap("abcdefgh x", 4), ["abcdefgh", "x"]);
        assert!(wrap("", 4).is_empty());
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let s = |ops, seconds| Sample {
            ops,
            seconds,
            peak_rss_kib: ops,
            retained_rss_kib: 1,
        };
        let r = Row::from_samples(
            "pairs",
            AllocName::Ft,
            1,
            &[s(100, 1.0), s(300, 1.0), s(200, 1.0)],
        );
        assert_eq!((r.ops, r.peak_rss_kib, r.retained_rss_kib), (200, 200, 1));
        assert!((r.mops - 200e-6).abs() < 1e-12);
    }

    #[test]
    fn ratios_against_system_and_one_thread() {
        let rows = [
            row("pairs", AllocName::System, 1, 10.0),
            row("pairs", AllocName::System, 2, 20.0),
            row("pairs", AllocName::Ft, 1, 30.0),
            row("pairs", AllocName::Ft, 2, 90.0),
            row("pairs", AllocName::Gil, 4, 5.0),
        ];
        assert_eq!(ratios(&rows, &rows[3]), (Some(4.5), Some(3.0)));
        assert_eq!(ratios(&rows, &rows[4]), (None, None));
        let w = crate::catalogue::find("pairs").unwrap();
        let t = table(&rows, &[w]);
        assert!(t.contains("vs system") && t.contains("4.50x") && t.contains("3.00x"));
        let md = markdown(&rows, &[w], "# r\n");
        assert!(md.contains("| ft | 2 | 90.00 | 4.50x | 3.00x | 2.0 MiB | 1.0 MiB |"));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_date(1_000_000_000), "2001-09-09 01:46 UTC");
        assert_eq!(utc_date(4_102_444_799), "2099-12-31 23:59 UTC");
        let now = utc_now();
        assert_eq!(now.len(), "YYYY-MM-DD HH:MM UTC".len(), "{now}");
    }
}
