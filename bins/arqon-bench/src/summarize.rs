//! `arqon-bench summarize RESULTS.jsonl`: the median and range of repeated
//! runs, as a Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::BenchError;
use crate::report::Report;

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
    if matches!(scenario, "fanout" | "fanin" | "latency") {
        list.push(metric("subscribers closed", |r| Some(r.closed.values().sum::<u64>() as f64), |v| format!("{v:.0}")));
    }
    if !matches!(scenario, "conns" | "readrate") {
        list.extend(cpu);
    }
    list.push(metric("load average at start", |r| r.load_avg, |v| format!("{v:.2}")));
    list
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

/// Builds the table from JSON lines (other lines are ignored, so a whole log
/// can be fed in).
pub(crate) fn table(text: &str) -> Result<String, BenchError> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, Vec<Report>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| l.starts_with('{')) {
        let report: Report =
            serde_json::from_str(line).map_err(|e| BenchError::Results(format!("bad result line: {e}")))?;
        if !groups.contains_key(&report.label) {
            order.push(report.label.clone());
        }
        groups.entry(report.label.clone()).or_default().push(report);
    }
    let mut out = String::new();
    out.push_str("| configuration | metric | median | range (min - max) | runs | target | lost | errors |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for label in order {
        let runs = &groups[&label];
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

/// Reads `input`, prints the table, and writes it to `output` if given.
pub(crate) fn run(input: &Path, output: Option<&Path>) -> Result<(), BenchError> {
    let text = std::fs::read_to_string(input)
        .map_err(|e| BenchError::Results(format!("cannot read {}: {e}", input.display())))?;
    let table = table(&text)?;
    print!("{table}");
    if let Some(output) = output {
        std::fs::write(output, &table)
            .map_err(|e| BenchError::Results(format!("cannot write {}: {e}", output.display())))?;
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
        assert!(super::table("{oops").is_err());
    }
}
