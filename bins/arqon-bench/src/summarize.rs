//! `arqon-bench summarize`: the median and range of repeated runs as a
//! Markdown table, and with `--out DIR` the SVG charts and the one-screen
//! summary of docs/performance.md.
//!
//! The input is a run's `results.jsonl` (or the directory `benches/run.sh`
//! wrote it to), or a figures file (`benches/results/*.json`, the latest by
//! default) holding figures recorded before; the peers' figures and the
//! targets come from `benches/reference.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::BenchError;
use crate::charts;
use crate::figures::{self, median};
use crate::overview;
use crate::reference::Reference;
use crate::report::Report;

/// Where the checked-in figures live; the newest is the default input.
pub(crate) const RESULTS_DIR: &str = "benches/results";
/// The peers' figures and the targets.
pub(crate) const REFERENCE: &str = "benches/reference.json";

/// What `summarize` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// Results: a `results.jsonl`, a run directory or a figures file; `None`:
    /// the newest figures file under [`RESULTS_DIR`].
    pub(crate) input: Option<PathBuf>,
    /// Where to write the median-and-range table, besides stdout.
    pub(crate) table: Option<PathBuf>,
    /// Where to write the charts and `summary.md`.
    pub(crate) out: Option<PathBuf>,
    /// The reference file; `None`: [`REFERENCE`] if it exists.
    pub(crate) reference: Option<PathBuf>,
}

/// How a metric is read out of a report and shown.
struct Metric {
    name: &'static str,
    value: fn(&Report) -> Option<f64>,
    format: fn(f64) -> String,
}

fn per_second(v: f64) -> String {
    if v >= 1e6 { format!("{:.2} M/s", v / 1e6) } else { format!("{:.0} k/s", v / 1e3) }
}

fn millis(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

fn kib(v: f64) -> String {
    format!("{v:.2} KiB")
}

fn mib(v: f64) -> String {
    format!("{:.1} MiB", v / 1024.0)
}

fn percent(v: f64) -> String {
    format!("{v:.0}%")
}

fn seconds(v: f64) -> String {
    format!("{v:.1} s")
}

const fn metric(name: &'static str, value: fn(&Report) -> Option<f64>, format: fn(f64) -> String) -> Metric {
    Metric { name, value, format }
}

fn metrics(scenario: &str) -> Vec<Metric> {
    let cpu = [
        metric("server CPU", |r| r.server_cpu_pct, percent),
        metric("generator CPU", |r| r.generator_cpu_pct, percent),
    ];
    let mut list = match scenario {
        "fanout" | "fanin" => vec![
            metric("deliveries/s", |r| r.deliveries_per_s, per_second),
            metric("published/s", |r| r.published_per_s, per_second),
            metric("latency p50", |r| r.latency.map(|l| l.p50_us), millis),
            metric("latency p99", |r| r.latency.map(|l| l.p99_us), millis),
            metric("server peak RSS growth", |r| r.rss_growth_kib.map(|k| k as f64), mib),
        ],
        // The server API: publishes/s is the headline (each one fans out).
        "api" => vec![
            metric("published/s", |r| r.published_per_s, per_second),
            metric("deliveries/s", |r| r.deliveries_per_s, per_second),
            metric("latency p50", |r| r.latency.map(|l| l.p50_us), millis),
            metric("latency p99", |r| r.latency.map(|l| l.p99_us), millis),
        ],
        "latency" => vec![
            metric("latency p50", |r| r.latency.map(|l| l.p50_us), millis),
            metric("latency p99", |r| r.latency.map(|l| l.p99_us), millis),
            metric("latency p99.9", |r| r.latency.map(|l| l.p999_us), millis),
            metric("latency max", |r| r.latency.map(|l| l.max_us), millis),
            metric("deliveries/s", |r| r.deliveries_per_s, per_second),
        ],
        "conns" => vec![
            metric("RSS per connection", |r| r.rss_per_conn_kib, kib),
            metric("server RSS, all open", |r| r.rss_after_kib.map(|k| k as f64), mib),
            metric("connections open", |r| Some(r.connections as f64), |v| format!("{v:.0}")),
            metric("open + join time", |r| r.open_s, seconds),
        ],
        "readrate" => vec![
            metric("read from memory", |r| r.read_rate.map(|x| x.buffer_per_s), per_second),
            metric("read from a socket", |r| r.read_rate.map(|x| x.socket_per_s), per_second),
            metric("frame size", |r| r.read_rate.map(|x| x.frame_bytes as f64), |v| format!("{v:.0} B")),
        ],
        "commands" => vec![
            metric("round trip p50", |r| r.latency.map(|l| l.p50_us), millis),
            metric("round trip p99", |r| r.latency.map(|l| l.p99_us), millis),
            metric("round trip p99.9", |r| r.latency.map(|l| l.p999_us), millis),
        ],
        _ => Vec::new(),
    };
    if matches!(scenario, "fanout" | "fanin" | "latency" | "api") {
        list.push(metric("subscribers closed", |r| Some(r.closed.values().sum::<u64>() as f64), |v| format!("{v:.0}")));
    }
    if !matches!(scenario, "conns" | "readrate") {
        list.extend(cpu);
    }
    list.push(metric("load average at start", |r| r.load_avg, |v| format!("{v:.2}")));
    list
}

/// Builds the table from JSON lines (other lines are ignored, so a whole log
/// can be fed in).
pub(crate) fn table(text: &str) -> Result<String, BenchError> {
    let groups = crate::report::grouped(text)?;
    let mut out = String::new();
    out.push_str("| configuration | metric | median | range (min - max) | runs | target | lost | errors |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for (label, runs) in &groups {
        let first = &runs[0];
        let lost: u64 = runs.iter().map(|r| r.lost).sum();
        let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
        for run in runs {
            for (code, n) in &run.errors {
                *errors.entry(code).or_default() += n;
            }
        }
        let failures = runs.iter().filter(|r| r.failure.is_some() || r.timed_out).count();
        let mut error_text: Vec<String> = errors.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        if failures > 0 {
            error_text.push(format!("{failures} run(s) failed or timed out"));
        }
        let error_text = if error_text.is_empty() { "none".to_owned() } else { error_text.join(", ") };
        for (i, m) in metrics(&first.scenario).iter().enumerate() {
            let mut values: Vec<f64> = runs.iter().filter_map(|r| (m.value)(r)).collect();
            if values.is_empty() {
                continue;
            }
            values.sort_by(f64::total_cmp);
            let (lo, hi) = (values[0], values[values.len() - 1]);
            let head = i == 0;
            let _ = writeln!(
                out,
                "| {} | {} | **{}** | {} - {} | {} | {} | {} | {} |",
                if head { label.as_str() } else { "" },
                m.name,
                (m.format)(median(&values)),
                (m.format)(lo),
                (m.format)(hi),
                values.len(),
                if head { first.target.as_deref().unwrap_or("") } else { "" },
                if head { lost.to_string() } else { String::new() },
                if head { error_text.as_str() } else { "" },
            );
        }
    }
    Ok(out)
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|e| BenchError::Results(format!("cannot write {}: {e}", path.display())))
}

/// The newest figures file under `dir`: names are dates, so the greatest
/// name is the latest.
pub(crate) fn newest_figures(dir: &Path) -> Result<PathBuf, BenchError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| BenchError::Results(format!("cannot list {}: {e}", dir.display())))?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .max()
        .ok_or_else(|| BenchError::Results(format!("no figures file (*.json) in {}", dir.display())))
}

fn reference(request: &Request) -> Result<Reference, BenchError> {
    match &request.reference {
        Some(path) => Reference::load(path),
        None if Path::new(REFERENCE).is_file() => Reference::load(Path::new(REFERENCE)),
        // Run from elsewhere than the repository root: charts without the
        // peers and targets are still worth having.
        None => {
            eprintln!("arqon-bench: {REFERENCE} not found here: no peers or targets on the charts");
            Ok(Reference::default())
        }
    }
}

/// Prints the median-and-range table of a results file (writing it to
/// `request.table` too) and, with `request.out`, writes the charts,
/// `summary.md` and, for raw results, `figures.json` there.
pub(crate) fn run(request: &Request) -> Result<(), BenchError> {
    let input = match &request.input {
        Some(path) => path.clone(),
        None => newest_figures(Path::new(RESULTS_DIR))?,
    };
    let figures = figures::load(&input)?;
    let raw = input.extension().is_none_or(|e| e != "json");
    if raw {
        let file = if input.is_dir() { input.join("results.jsonl") } else { input.clone() };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| BenchError::Results(format!("cannot read {}: {e}", file.display())))?;
        let table = table(&text)?;
        print!("{table}");
        if let Some(path) = &request.table {
            write(path, &table)?;
        }
    } else if request.table.is_some() {
        return Err(BenchError::Results(format!(
            "{} holds figures, not runs: the median-and-range table needs a results.jsonl",
            input.display()
        )));
    }
    let reference = reference(request)?;
    let summary = overview::table(&figures, &reference);
    let Some(out) = &request.out else {
        if !raw {
            print!("{summary}");
        }
        return Ok(());
    };
    std::fs::create_dir_all(out).map_err(|e| BenchError::Results(format!("cannot create {}: {e}", out.display())))?;
    for (name, svg) in charts::draw_all(&figures.figures, &reference)? {
        let path = out.join(name);
        write(&path, &svg)?;
        eprintln!("wrote {}", path.display());
    }
    write(&out.join("summary.md"), &summary)?;
    if raw {
        let json = serde_json::to_string_pretty(&figures)
            .map_err(|e| BenchError::Results(format!("cannot encode figures: {e}")))?;
        write(&out.join("figures.json"), &(json + "\n"))?;
    }
    eprintln!("wrote {}", out.join("summary.md").display());
    if !raw {
        print!("{summary}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range_per_label() {
        let line = |label: &str, rate: f64, lost: u64| {
            format!(
                r#"{{"scenario":"fanout","label":"{label}","target":">= 4 M/s","params":{{}},"connections":101,"published":1,"expected":1,"delivered":1,"lost":{lost},"duplicates":0,"out_of_order":0,"errors":{{}},"elapsed_s":1.0,"deliveries_per_s":{rate},"timed_out":false}}"#
            )
        };
        let text =
            [line("a", 3e6, 0), "table noise".to_owned(), line("a", 1e6, 2), line("a", 2e6, 0), line("b", 5e5, 0)]
                .join("\n");
        let table = table(&text).unwrap();
        assert!(
            table.contains("| a | deliveries/s | **2.00 M/s** | 1.00 M/s - 3.00 M/s | 3 | >= 4 M/s | 2 | none |"),
            "{table}"
        );
        assert!(table.contains("| b | deliveries/s | **500 k/s** |"), "{table}");
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        let closed = r#"{"scenario":"fanin","label":"c","closed":{"1008":1},"errors":{"CLOSE_1008":1}}"#;
        let read = r#"{"scenario":"readrate","label":"r","read_rate":{"frame_bytes":420,"buffer_per_s":5e5,"socket_per_s":2.5e5}}"#;
        let table = super::table(&[closed, read].join("\n")).unwrap();
        assert!(table.contains("|  | subscribers closed | **1** | 1 - 1 | 1 |"), "{table}");
        assert!(table.contains("| r | read from memory | **500 k/s** |"), "{table}");
        assert!(table.contains("|  | read from a socket | **250 k/s** |"), "{table}");
        assert!(table.contains("|  | frame size | **420 B** |"), "{table}");
        let api = r#"{"scenario":"api","label":"p","published_per_s":15723.4,"deliveries_per_s":1.57e6,"latency":{"count":1,"p50_us":1482.7,"p99_us":2686.9,"p999_us":1.0,"max_us":1.0,"mean_us":1.0}}"#;
        let table = super::table(api).unwrap();
        assert!(table.contains("| p | published/s | **16 k/s** |"), "{table}");
        assert!(table.contains("|  | latency p99 | **2.687 ms** |"), "{table}");
        assert!(super::table("{oops").is_err());
    }
}
