//! Results: the median of repeats, the text table, CSV, the Markdown report (and the date on
//! it) and the SVG plots.

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use plotters::prelude::*;
use plotters::style::text_anchor;

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

/// Where and when the rows of a plot were measured, printed at the foot of every figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Provenance {
    /// The run's date, as the report's `date:` line (`YYYY-MM-DD HH:MM UTC`).
    pub date: String,
    /// The machine, as the report's `machine:` line (`2 CPUs (AMD EPYC), x86_64`).
    pub machine: String,
}

impl Provenance {
    /// The `date:` and `machine:` lines of a report written by this harness (`report.md`),
    /// or an error naming the line that is missing.
    pub fn from_report(report_md: &str) -> Result<Provenance, String> {
        let field = |name: &str| {
            report_md
                .lines()
                .find_map(|l| l.strip_prefix(&format!("- {name}: ")))
                .map(|v| v.trim().to_string())
                .ok_or_else(|| format!("report.md has no '- {name}: ' line"))
        };
        Ok(Provenance {
            date: field("date")?,
            machine: field("machine")?,
        })
    }

    fn caption(&self) -> String {
        format!("measured {} on {}", self.date, self.machine)
    }
}

/// The rows of a CSV document written by [`csv`] (header first), or an error naming the line
/// and what is wrong with it. Workloads and allocators must be ones this harness knows.
pub fn parse_csv(text: &str) -> Result<Vec<Row>, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.trim() == CSV_HEADER => {}
        other => {
            return Err(format!(
                "the first line is {other:?}; expected the header '{CSV_HEADER}'"
            ))
        }
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = i + 2;
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() != 8 {
            return Err(format!(
                "line {at}: {} fields, expected 8: '{line}'",
                f.len()
            ));
        }
        let num = |c: usize| -> Result<f64, String> {
            f[c].parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("line {at}: '{}' is not a number (column {c})", f[c]))
        };
        let whole = |c: usize| -> Result<u64, String> {
            f[c].parse::<u64>()
                .map_err(|_| format!("line {at}: '{}' is not a whole number (column {c})", f[c]))
        };
        rows.push(Row {
            workload: crate::catalogue::find(f[0])
                .ok_or_else(|| format!("line {at}: unknown workload '{}'", f[0]))?
                .name,
            allocator: AllocName::from_name(f[1])
                .ok_or_else(|| format!("line {at}: unknown allocator '{}'", f[1]))?,
            threads: usize::try_from(whole(2)?).unwrap_or(usize::MAX),
            ops: whole(3)?,
            seconds: num(4)?,
            mops: num(5)?,
            peak_rss_kib: whole(6)?,
            retained_rss_kib: whole(7)?,
        });
    }
    Ok(rows)
}

/// One line of a panel: an allocator's points, solid or dashed.
struct Series {
    colour: RGBColor,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

/// Draws one panel on `area`: axes from `x` and 0 to the highest point, and `series`.
fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    x: (f64, f64),
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<(), Box<dyn Error>> {
    let (tmin, tmax) = x;
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.08;
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(80)
        .build_cartesian_2d((tmin - 0.5)..(tmax + 0.5), 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 16))
        .y_desc(y_desc)
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
    for s in series {
        let style = s.colour.stroke_width(3);
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(s.points.clone(), 10, 6, style))?;
            chart.draw_series(
                s.points
                    .iter()
                    .map(|&p| Circle::new(p, 5, s.colour.stroke_width(2))),
            )?;
        } else {
            chart.draw_series(LineSeries::new(s.points.clone(), style))?;
            chart.draw_series(
                s.points
                    .iter()
                    .map(|&p| Circle::new(p, 5, s.colour.filled())),
            )?;
        }
    }
    Ok(())
}

/// Height of one legend line, pixels.
const LEGEND_LINE: i32 = 22;

/// Draws the legend on its own strip below the panels (so it covers no point): one line per
/// allocator, then `notes` (each a line of text).
fn legend(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    entries: &[(RGBColor, String)],
    notes: &[String],
) -> Result<(), Box<dyn Error>> {
    let x0 = 96;
    let mut y = 4;
    for (colour, label) in entries {
        let mid = y + LEGEND_LINE / 2 - 2;
        area.draw(&PathElement::new(
            [(x0, mid), (x0 + 28, mid)],
            colour.stroke_width(3),
        ))?;
        area.draw(&Circle::new((x0 + 14, mid), 5, colour.filled()))?;
        area.draw(&Text::new(
            label.clone(),
            (x0 + 40, y + 2),
            ("sans-serif", 16).into_font(),
        ))?;
        y += LEGEND_LINE;
    }
    for note in notes {
        area.draw(&Text::new(
            note.clone(),
            (x0, y + 2),
            ("sans-serif", 16).into_font(),
        ))?;
        y += LEGEND_LINE;
    }
    Ok(())
}

/// Writes `dir/<workload>.svg`: throughput against the thread count N, one line per
/// allocator (and, for `fragmentation`, a second panel with peak and retained RSS), the
/// legend on its own strip below, and the run's date and machine at the foot.
pub fn plot(
    dir: &Path,
    rows: &[Row],
    w: &Workload,
    run: &Provenance,
) -> Result<(), Box<dyn Error>> {
    let mine = of(rows, w);
    if mine.is_empty() {
        return Ok(());
    }
    let tmin = mine.iter().map(|r| r.threads).min().unwrap_or(1) as f64;
    let tmax = mine.iter().map(|r| r.threads).max().unwrap_or(1) as f64;
    let with_rss = w.name == "fragmentation";
    let points = |a: AllocName, y: fn(&Row) -> f64| -> Vec<(f64, f64)> {
        mine.iter()
            .filter(|r| r.allocator == a)
            .map(|r| (r.threads as f64, y(r)))
            .collect()
    };
    let present: Vec<(RGBColor, AllocName)> = AllocName::ALL
        .into_iter()
        .zip(COLOURS)
        .filter(|&(a, _)| mine.iter().any(|r| r.allocator == a))
        .map(|(a, c)| (c, a))
        .collect();
    let notes: Vec<String> = if with_rss {
        vec![
            "right panel: solid line, filled dots: peak RSS; dashed line, open dots: retained \
              RSS (after everything is freed)"
                .to_string(),
        ]
    } else {
        Vec::new()
    };
    let subtitle = wrap(&format!("{}; follows {}", w.describe, w.classic), 110);
    let title_h = 44 + 22 * subtitle.len() as u32;
    let legend_h = 8 + LEGEND_LINE as u32 * (present.len() + notes.len()) as u32;
    let foot_h = 28;
    let width = if with_rss { 1400 } else { 900 };
    let height = title_h + 440 + legend_h + foot_h;

    let path = dir.join(format!("{}.svg", w.name));
    let root = SVGBackend::new(&path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = if with_rss {
        format!(
            "{}: throughput (left, higher is better) and RSS (right, lower is better)",
            w.name
        )
    } else {
        format!("{}: throughput vs threads (higher is better)", w.name)
    };
    let (head, rest) = root.split_vertically(title_h);
    let (panels, rest) = rest.split_vertically(440);
    let (legend_area, foot) = rest.split_vertically(legend_h);
    head.draw(&Text::new(
        title,
        (width as i32 / 2, 8),
        TextStyle::from(("sans-serif", 26).into_font()).pos(text_anchor::Pos::new(
            text_anchor::HPos::Center,
            text_anchor::VPos::Top,
        )),
    ))?;
    for (i, line) in subtitle.iter().enumerate() {
        head.draw(&Text::new(
            line.clone(),
            (width as i32 / 2, 44 + 22 * i as i32),
            TextStyle::from(("sans-serif", 16).into_font()).pos(text_anchor::Pos::new(
                text_anchor::HPos::Center,
                text_anchor::VPos::Top,
            )),
        ))?;
    }
    let x_desc = w.threads;
    let throughput: Vec<Series> = present
        .iter()
        .map(|&(colour, a)| Series {
            colour,
            points: points(a, |r| r.mops),
            dashed: false,
        })
        .collect();
    let mops_desc = "Mops/s (million allocations + frees per second)";
    if with_rss {
        let (left, right) = panels.split_horizontally(width / 2);
        panel(&left, (tmin, tmax), x_desc, mops_desc, &throughput)?;
        let mut rss = Vec::new();
        for &(colour, a) in &present {
            rss.push(Series {
                colour,
                points: points(a, |r| r.peak_rss_kib as f64 / 1024.0),
                dashed: false,
            });
            rss.push(Series {
                colour,
                points: points(a, |r| r.retained_rss_kib as f64 / 1024.0),
                dashed: true,
            });
        }
        panel(
            &right,
            (tmin, tmax),
            x_desc,
            "RSS, MiB (peak: solid; retained: dashed)",
            &rss,
        )?;
    } else {
        panel(&panels, (tmin, tmax), x_desc, mops_desc, &throughput)?;
    }
    let entries: Vec<(RGBColor, String)> = present
        .iter()
        .map(|&(c, a)| (c, format!("{} - {}", a.name(), a.describe())))
        .collect();
    legend(&legend_area, &entries, &notes)?;
    foot.draw(&Text::new(
        run.caption(),
        (width as i32 - 12, 4),
        ("sans-serif", 14)
            .into_font()
            .color(&RGBColor(0x55, 0x55, 0x55))
            .pos(text_anchor::Pos::new(
                text_anchor::HPos::Right,
                text_anchor::VPos::Top,
            )),
    ))?;
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
    fn csv_reads_back_what_it_wrote_and_names_bad_lines() {
        let rows = [
            row("xmalloc", AllocName::Ft, 2, 32.5),
            row("fragmentation", AllocName::Jemalloc, 4, 7.875),
        ];
        assert_eq!(parse_csv(&csv(&rows)).unwrap(), rows);
        let e = parse_csv("workload,allocator\n").unwrap_err();
        assert!(e.contains("expected the header"), "{e}");
        let e = parse_csv(&format!(
            "{CSV_HEADER}\npairs,ft,1,10,1.0,1.0,5,5\nnope,ft,1,1,1,1,1,1\n"
        ))
        .unwrap_err();
        assert!(e.contains("line 3") && e.contains("'nope'"), "{e}");
        let e = parse_csv(&format!("{CSV_HEADER}\npairs,ft,x,10,1.0,1.0,5,5\n")).unwrap_err();
        assert!(e.contains("line 2") && e.contains("'x'"), "{e}");
        let e = parse_csv(&format!("{CSV_HEADER}\npairs,ft,1\n")).unwrap_err();
        assert!(e.contains("3 fields"), "{e}");
    }

    #[test]
    fn provenance_comes_from_the_report_lines() {
        let md = "# r\n\n- date: 2026-11-30 05:26 UTC\n- machine: 2 CPUs (AMD EPYC), x86_64\n";
        let p = Provenance::from_report(md).unwrap();
        assert_eq!(p.date, "2026-11-30 05:26 UTC");
        assert_eq!(p.machine, "2 CPUs (AMD EPYC), x86_64");
        let e = Provenance::from_report("- date: today\n").unwrap_err();
        assert!(e.contains("machine"), "{e}");
    }

    /// The `y` of the first SVG `<text>` element whose content contains `needle`.
    fn text_y(svg: &str, needle: &str) -> f64 {
        let at = svg
            .find(needle)
            .unwrap_or_else(|| panic!("no text '{needle}' in the SVG"));
        let tag = &svg[svg[..at].rfind("<text").expect("inside a <text> element")..at];
        let y = tag.split(" y=\"").nth(1).expect("a y attribute");
        y[..y.find('"').unwrap()].parse().unwrap()
    }

    #[test]
    fn plots_keep_the_legend_off_the_data_and_say_when_where_and_what_n_is() {
        let dir = std::env::temp_dir().join(format!("ftmalloc-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = Provenance {
            date: "2026-11-30 05:26 UTC".into(),
            machine: "2 CPUs (test), x86_64".into(),
        };
        let mut rows = Vec::new();
        for w in ["xmalloc", "fragmentation"] {
            for (i, a) in AllocName::ALL.into_iter().enumerate() {
                for t in [1, 2, 4] {
                    rows.push(row(w, a, t, 10.0 * (i + t) as f64));
                }
            }
        }
        for name in ["xmalloc", "fragmentation"] {
            let w = crate::catalogue::find(name).unwrap();
            plot(&dir, &rows, w, &run).unwrap();
            let svg = std::fs::read_to_string(dir.join(format!("{name}.svg"))).unwrap();
            assert!(svg.contains("measured 2026-11-30 05:26 UTC on 2 CPUs (test), x86_64"));
            // The legend lies below the x-axis label, that is outside every panel.
            let axis = text_y(&svg, w.threads);
            for a in AllocName::ALL {
                let label = format!("{} - ", a.name());
                assert!(
                    text_y(&svg, &label) > axis,
                    "{name}: legend '{label}' inside the plot"
                );
            }
            if name == "fragmentation" {
                assert!(svg.contains("RSS, MiB"), "the RSS panel is missing");
            }
        }
        assert!(crate::catalogue::find("xmalloc")
            .unwrap()
            .threads
            .contains("2N threads"));
        std::fs::remove_dir_all(&dir).unwrap();
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
