//! Figures: the median and range of one metric of one configuration, the
//! form in which results are charted and checked in.
//!
//! A figures file (`benches/results/*.json`, or `figures.json` beside the
//! charts `summarize --out` writes) holds these directly, each with its unit
//! and where it was measured, because the figures recorded in
//! docs/performance.md exist only as medians and ranges; the raw
//! `results.jsonl` of a `benches/run.sh` run is reduced to the same form, so
//! the charts are drawn from either.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::report::Report;

/// What a figure measures. The unit goes with it, so a figures file cannot
/// pair a value with the wrong one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Metric {
    /// Distinct deliveries per second, all subscribers together.
    DeliveriesPerS,
    /// Median latency (or command round trip), microseconds.
    P50Us,
    /// 99th percentile, microseconds.
    P99Us,
    /// 99.9th percentile, microseconds.
    P999Us,
    /// Server RSS per idle connection, KiB.
    RssPerConnKib,
    /// The server's peak RSS growth over a run (a burst's memory), KiB.
    RssGrowthKib,
}

impl Metric {
    /// The unit written beside the value in a figures file.
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Metric::DeliveriesPerS => "deliveries/s",
            Metric::P50Us | Metric::P99Us | Metric::P999Us => "us",
            Metric::RssPerConnKib | Metric::RssGrowthKib => "KiB",
        }
    }

    /// A short name for legends and tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Metric::DeliveriesPerS => "deliveries/s",
            Metric::P50Us => "p50",
            Metric::P99Us => "p99",
            Metric::P999Us => "p99.9",
            Metric::RssPerConnKib => "RSS per connection",
            Metric::RssGrowthKib => "peak RSS growth",
        }
    }

    /// Whether more is better (throughput) or less (latency, memory): the
    /// direction in which a target is met.
    pub(crate) fn higher_is_better(self) -> bool {
        matches!(self, Metric::DeliveriesPerS)
    }

    /// The value formatted for a human, in the metric's usual scale.
    pub(crate) fn format(self, v: f64) -> String {
        match self {
            Metric::DeliveriesPerS if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
            Metric::DeliveriesPerS => format!("{:.0} k/s", v / 1e3),
            // Three significant digits, the precision the runs agree to.
            Metric::P50Us | Metric::P99Us | Metric::P999Us if v >= 10_000.0 => format!("{:.1} ms", v / 1000.0),
            Metric::P50Us | Metric::P99Us | Metric::P999Us if v >= 1000.0 => format!("{:.2} ms", v / 1000.0),
            Metric::P50Us | Metric::P99Us | Metric::P999Us => format!("{:.3} ms", v / 1000.0),
            Metric::RssPerConnKib if v >= 10.0 => format!("{v:.1} KiB"),
            Metric::RssPerConnKib => format!("{v:.2} KiB"),
            Metric::RssGrowthKib => format!("{:.1} MiB", v / 1024.0),
        }
    }

    /// The metric a scenario is judged by first.
    pub(crate) fn headline(scenario: &str) -> Option<Metric> {
        match scenario {
            "fanout" | "fanin" => Some(Metric::DeliveriesPerS),
            "latency" | "commands" => Some(Metric::P99Us),
            "conns" => Some(Metric::RssPerConnKib),
            _ => None,
        }
    }

    /// The metrics a scenario's runs are reduced to. Throughput of paced
    /// runs (`latency`) is their rate, not a finding, so it is left out.
    fn of_scenario(scenario: &str) -> &'static [Metric] {
        match scenario {
            "fanout" | "fanin" => &[Metric::DeliveriesPerS, Metric::RssGrowthKib],
            "latency" | "commands" => &[Metric::P50Us, Metric::P99Us, Metric::P999Us],
            "conns" => &[Metric::RssPerConnKib],
            _ => &[],
        }
    }

    fn of_report(self, r: &Report) -> Option<f64> {
        match self {
            Metric::DeliveriesPerS => r.deliveries_per_s,
            Metric::P50Us => r.latency.map(|l| l.p50_us),
            Metric::P99Us => r.latency.map(|l| l.p99_us),
            Metric::P999Us => r.latency.map(|l| l.p999_us),
            Metric::RssPerConnKib => r.rss_per_conn_kib,
            Metric::RssGrowthKib => r.rss_growth_kib.map(|k| k as f64),
        }
    }
}

/// One metric of one configuration over its runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Figure {
    /// Configuration name, as `benches/run.sh` labels it.
    pub(crate) label: String,
    /// Scenario (`fanout`, `fanin`, `latency`, `conns`, `commands`).
    pub(crate) scenario: String,
    /// Subscriber kind (`lean`, `ordinary`), where the scenario has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client: Option<String>,
    /// What is measured.
    pub(crate) metric: Metric,
    /// `metric.unit()`, spelled out for the reader of the file.
    pub(crate) unit: String,
    /// Median over the runs.
    pub(crate) median: f64,
    /// Smallest run, when the range is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) min: Option<f64>,
    /// Largest run, when the range is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max: Option<f64>,
    /// Runs behind the median, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) runs: Option<u32>,
    /// Messages lost over all runs, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lost: Option<u64>,
    /// Subscribers the bus closed over all runs, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) closed: Option<u64>,
    /// When and on what build it was measured, if not the file's own date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) measured: Option<String>,
}

/// A figures file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Figures {
    /// When the figures were measured (a date, or a run directory's name).
    #[serde(default)]
    pub(crate) measured: String,
    /// Where they come from: the run, or the section of the docs.
    #[serde(default)]
    pub(crate) source: String,
    /// The figures, in the order of the suite.
    pub(crate) figures: Vec<Figure>,
}

/// The median of sorted values (the mean of the middle two for an even count).
pub(crate) fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

/// Reduces JSON result lines (other lines are ignored) to figures, in the
/// order the configurations first appear.
pub(crate) fn from_reports(text: &str) -> Result<Vec<Figure>, BenchError> {
    let mut figures = Vec::new();
    for (label, runs) in crate::report::grouped(text)? {
        let first = &runs[0];
        let client = first.params.get("subscriber").and_then(|v| v.as_str()).map(str::to_owned);
        let lost = runs.iter().map(|r| r.lost).sum();
        let closed = runs.iter().flat_map(|r| r.closed.values()).sum();
        for &metric in Metric::of_scenario(&first.scenario) {
            // A failed or timed-out run's partial figures would drag the
            // median; the summary table counts such runs, the chart omits them.
            let mut values: Vec<f64> = runs
                .iter()
                .filter(|r| r.failure.is_none() && !r.timed_out)
                .filter_map(|r| metric.of_report(r))
                .collect();
            if values.is_empty() {
                continue;
            }
            values.sort_by(f64::total_cmp);
            figures.push(Figure {
                label: label.clone(),
                scenario: first.scenario.clone(),
                client: client.clone(),
                metric,
                unit: metric.unit().to_owned(),
                median: median(&values),
                min: Some(values[0]),
                max: Some(values[values.len() - 1]),
                runs: u32::try_from(values.len()).ok(),
                lost: Some(lost),
                closed: Some(closed),
                measured: None,
            });
        }
    }
    Ok(figures)
}

/// Reads a figures file and checks every unit against its metric.
pub(crate) fn parse(text: &str) -> Result<Figures, BenchError> {
    let figures: Figures =
        serde_json::from_str(text).map_err(|e| BenchError::Results(format!("bad figures file: {e}")))?;
    for f in &figures.figures {
        if f.unit != f.metric.unit() {
            return Err(BenchError::Results(format!(
                "figure {:?} {}: unit {:?}, expected {:?}",
                f.label,
                f.metric.name(),
                f.unit,
                f.metric.unit()
            )));
        }
    }
    Ok(figures)
}

/// Loads figures from a figures file (`.json`), a results file of JSON lines,
/// or a run directory holding `results.jsonl` (what `benches/run.sh --out`
/// names).
pub(crate) fn load(path: &Path) -> Result<Figures, BenchError> {
    let file: PathBuf = if path.is_dir() { path.join("results.jsonl") } else { path.to_owned() };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| BenchError::Results(format!("cannot read {}: {e}", file.display())))?;
    if file.extension().is_some_and(|e| e == "json") {
        return parse(&text);
    }
    // run.sh names a run's directory after its UTC start time: the best
    // "when" a raw results file carries.
    let measured =
        file.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Figures { measured, source: file.display().to_string(), figures: from_reports(&text)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_reduce_to_median_and_range_per_metric() {
        let line = |label: &str, rate: f64, kind: &str| {
            format!(
                r#"{{"scenario":"fanout","label":"{label}","params":{{"subscriber":"{kind}"}},"deliveries_per_s":{rate},"lost":0}}"#
            )
        };
        let lat = r#"{"scenario":"latency","label":"l","latency":{"count":5,"p50_us":500,"p99_us":900,"p999_us":1500,"max_us":2000,"mean_us":600}}"#;
        let failed = r#"{"scenario":"fanout","label":"a","failure":"server did not start"}"#;
        let text =
            [line("a", 3e6, "lean"), "noise".to_owned(), line("a", 1e6, "lean"), failed.to_owned(), lat.to_owned()]
                .join("\n");
        let figures = from_reports(&text).unwrap();
        assert_eq!(figures.len(), 4, "{figures:?}");
        let a = &figures[0];
        assert_eq!((a.label.as_str(), a.metric, a.median), ("a", Metric::DeliveriesPerS, 2e6));
        assert_eq!((a.min, a.max, a.runs, a.client.as_deref()), (Some(1e6), Some(3e6), Some(2), Some("lean")));
        let metrics: Vec<Metric> = figures[1..].iter().map(|f| f.metric).collect();
        assert_eq!(metrics, [Metric::P50Us, Metric::P99Us, Metric::P999Us]);
        assert_eq!(figures[2].median, 900.0);
        assert!(from_reports("{oops").is_err());
    }

    #[test]
    fn figures_files_round_trip_and_units_are_checked() {
        let text = r#"{"measured":"2026-12-06","source":"docs","figures":[
            {"label":"conns 5000 idle","scenario":"conns","metric":"rss_per_conn_kib","unit":"KiB","median":6.44,"min":6.04,"max":6.48,"runs":3}]}"#;
        let figures = parse(text).unwrap();
        assert_eq!(figures.figures[0].metric, Metric::RssPerConnKib);
        assert_eq!(figures.figures[0].max, Some(6.48));
        let again = parse(&serde_json::to_string(&figures).unwrap()).unwrap();
        assert_eq!(again, figures);
        assert!(parse(&text.replace("\"KiB\"", "\"MiB\"")).is_err());
        assert!(parse(&text.replace("rss_per_conn_kib", "joules")).is_err());
    }

    #[test]
    fn the_checked_in_figures_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/results");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let figures = load(&path).unwrap();
                assert!(!figures.figures.is_empty(), "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen > 0, "no figures file in {}", dir.display());
    }
}
