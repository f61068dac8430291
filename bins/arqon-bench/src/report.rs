//! One run's results: a human table on stdout, then one JSON line.

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::histogram::Histogram;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Latency {
    /// Samples.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Largest sample (exact).
    pub(crate) max_us: f64,
    /// Mean.
    pub(crate) mean_us: f64,
}

impl Latency {
    /// Summarizes a nanosecond histogram; `None` when it is empty.
    pub(crate) fn from_histogram(h: &Histogram) -> Option<Self> {
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Latency {
            count: h.count(),
            p50_us: us(h.quantile(0.50)?),
            p99_us: us(h.quantile(0.99)?),
            p999_us: us(h.quantile(0.999)?),
            max_us: us(h.max()),
            mean_us: h.mean()? / 1000.0,
        })
    }
}

/// How fast one subscriber reads when nothing else limits it (`readrate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReadRate {
    /// Size of one delivered frame's text, bytes.
    pub(crate) frame_bytes: u64,
    /// Deliveries read per second from frames already in memory.
    pub(crate) buffer_per_s: f64,
    /// Deliveries read per second from a local socket kept full.
    pub(crate) socket_per_s: f64,
}

/// Everything one run measured. Serialized as one JSON object per line;
/// fields that do not apply to a scenario are left out, and a line missing
/// fields (e.g. the script's note that a run crashed) still reads back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Report {
    /// Scenario name.
    pub(crate) scenario: String,
    /// Configuration name (groups repeated runs in a summary).
    pub(crate) label: String,
    /// The goal this configuration is measured against, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
    /// The parameters of the run.
    pub(crate) params: BTreeMap<String, serde_json::Value>,
    /// Connections opened successfully (publishers, subscribers, idle ones).
    pub(crate) connections: u64,
    /// Messages or commands sent.
    pub(crate) published: u64,
    /// Deliveries (or answers) expected.
    pub(crate) expected: u64,
    /// Distinct deliveries (or answers) received.
    pub(crate) delivered: u64,
    /// `expected - delivered`: never hidden.
    pub(crate) lost: u64,
    /// Deliveries of a message a subscriber already had.
    pub(crate) duplicates: u64,
    /// Deliveries older than one already received from the same publisher.
    pub(crate) out_of_order: u64,
    /// Error frames by wire code, refused or failed connections, unexpected
    /// closes (`CLOSE_<code>`), and similar, with counts.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Subscribers the bus closed, by close code (`"1008"`: slow consumer).
    /// Each is also among `errors` as `CLOSE_<code>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) closed: BTreeMap<String, u64>,
    /// Events received (welcome excluded), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) events: BTreeMap<String, u64>,
    /// Seconds from the first send to the last delivery.
    pub(crate) elapsed_s: f64,
    /// Distinct deliveries per second over `elapsed_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deliveries_per_s: Option<f64>,
    /// Bytes the (lean) subscribers read off the wire, frames of every kind.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) wire_bytes: u64,
    /// `wire_bytes / delivered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) wire_bytes_per_delivery: Option<f64>,
    /// Messages sent per second, over the publishing time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) published_per_s: Option<f64>,
    /// Send-to-receive latency of deliveries (or round trip of commands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) latency: Option<Latency>,
    /// One subscriber's read rate (`readrate` scenario).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) read_rate: Option<ReadRate>,
    /// Round trips per command name (`commands` scenario).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) commands: BTreeMap<String, Latency>,
    /// Server RSS before the connections opened, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rss_before_kib: Option<u64>,
    /// Server RSS with every connection open and idle, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rss_after_kib: Option<u64>,
    /// `(rss_after - rss_before) / connections`, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rss_per_conn_kib: Option<f64>,
    /// The server's peak RSS during the measured phase (`VmHWM` at its end)
    /// minus its RSS at the start, KiB: what a burst cost it (`fanout`,
    /// `fanin`; a fresh server per run, as `benches/run.sh` starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rss_growth_kib: Option<u64>,
    /// Seconds to open and join every connection (`conns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) open_s: Option<f64>,
    /// Server CPU over the measured phase, % of one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_pct: Option<f64>,
    /// This generator's CPU over the measured phase, % of one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) generator_cpu_pct: Option<f64>,
    /// The machine's 1-minute load average when the run started: anything
    /// well above the two processes of the benchmark means other work
    /// competed for the cores and the figures are low.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) load_avg: Option<f64>,
    /// The run hit `--timeout` before it finished.
    pub(crate) timed_out: bool,
    /// Why the run could not be carried out, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failure: Option<String>,
}

/// The runs of each configuration, from JSON result lines (other lines are
/// ignored, so a whole log can be fed in), in the order the configurations
/// first appear.
pub(crate) fn grouped(text: &str) -> Result<Vec<(String, Vec<Report>)>, crate::BenchError> {
    let mut groups: Vec<(String, Vec<Report>)> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| l.starts_with('{')) {
        let report: Report =
            serde_json::from_str(line).map_err(|e| crate::BenchError::Results(format!("bad result line: {e}")))?;
        match groups.iter_mut().find(|(label, _)| *label == report.label) {
            Some((_, runs)) => runs.push(report),
            None => groups.push((report.label.clone(), vec![report])),
        }
    }
    Ok(groups)
}

impl Report {
    /// Counts one error under `code`.
    pub(crate) fn error(&mut self, code: impl Into<String>, n: u64) {
        if n > 0 {
            *self.errors.entry(code.into()).or_default() += n;
        }
    }

    /// Adds every error count of `errors`.
    pub(crate) fn errors_from(&mut self, errors: &BTreeMap<String, u64>) {
        for (code, n) in errors {
            self.error(code.clone(), *n);
        }
    }

    /// Whether anything went wrong: loss, duplicates, reordering, errors,
    /// a timeout or a failure.
    pub(crate) fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.errors.is_empty()
            && !self.timed_out
            && self.failure.is_none()
    }

    /// The human table.
    pub(crate) fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        row("scenario", format!("{} ({})", self.scenario, self.label));
        let params: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        row("params", params.join(" "));
        row("connections", self.connections.to_string());
        row("sent", self.published.to_string());
        row("delivered / expected", format!("{} / {}", self.delivered, self.expected));
        row("lost", self.lost.to_string());
        row("duplicates / out of order", format!("{} / {}", self.duplicates, self.out_of_order));
        let errors: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        row("errors", if errors.is_empty() { "none".to_owned() } else { errors.join(" ") });
        if !self.closed.is_empty() || matches!(self.scenario.as_str(), "fanout" | "fanin" | "latency") {
            let by_code: Vec<String> = self.closed.iter().map(|(code, n)| format!("{code}: {n}")).collect();
            let total: u64 = self.closed.values().sum();
            let text = if by_code.is_empty() { "0".to_owned() } else { format!("{total} ({})", by_code.join(", ")) };
            row("subscribers closed", text);
        }
        if !self.events.is_empty() {
            let events: Vec<String> = self.events.iter().map(|(k, v)| format!("{k}={v}")).collect();
            row("events", events.join(" "));
        }
        row("elapsed", format!("{:.3} s", self.elapsed_s));
        if let Some(d) = self.deliveries_per_s {
            row("deliveries/s", format!("{d:.0}"));
        }
        if let Some(p) = self.published_per_s {
            row("published/s", format!("{p:.0}"));
        }
        if let Some(b) = self.wire_bytes_per_delivery {
            row("wire bytes", format!("{} ({b:.0} per delivery)", self.wire_bytes));
        }
        if let Some(r) = &self.read_rate {
            row("frame size", format!("{} bytes", r.frame_bytes));
            row("read from memory", format!("{:.0} deliveries/s", r.buffer_per_s));
            row("read from a socket", format!("{:.0} deliveries/s", r.socket_per_s));
        }
        let latency = |l: &Latency| {
            format!(
                "p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us  (n={})",
                l.p50_us, l.p99_us, l.p999_us, l.max_us, l.count
            )
        };
        if let Some(l) = &self.latency {
            row("latency", latency(l));
        }
        for (name, l) in &self.commands {
            row(&format!("{name} round trip"), latency(l));
        }
        if let (Some(before), Some(after)) = (self.rss_before_kib, self.rss_after_kib) {
            row("server RSS", format!("{before} KiB -> {after} KiB"));
        }
        if let Some(per) = self.rss_per_conn_kib {
            row("RSS per connection", format!("{per:.2} KiB"));
        }
        if let Some(open) = self.open_s {
            row("open + join time", format!("{open:.2} s"));
        }
        if let Some(growth) = self.rss_growth_kib {
            row("server peak RSS growth", format!("{:.1} MiB", growth as f64 / 1024.0));
        }
        if let Some(cpu) = self.server_cpu_pct {
            row("server CPU", format!("{cpu:.0}% of a core"));
        }
        if let Some(cpu) = self.generator_cpu_pct {
            row("generator CPU", format!("{cpu:.0}% of a core"));
        }
        if let Some(load) = self.load_avg {
            row("load average at start", format!("{load:.2}"));
        }
        if self.timed_out {
            row("TIMED OUT", "the run hit --timeout".to_owned());
        }
        if let Some(failure) = &self.failure {
            row("FAILED", failure.clone());
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        out
    }

    /// Prints the table, then the JSON line, to stdout.
    pub(crate) fn print(&self) {
        let json = serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"failure":"report: {e}"}}"#));
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, "{}", self.table());
        let _ = writeln!(stdout, "{json}");
        let _ = stdout.flush();
    }
}

/// For `skip_serializing_if`: a count of zero is not worth a field.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_skips_what_does_not_apply() {
        let mut report = Report { scenario: "fanout".into(), label: "x".into(), ..Report::default() };
        report.error("CLOSE_1008", 2);
        report.error("NEVER", 0);
        report.closed.insert("1008".into(), 2);
        let json = serde_json::to_string(&report).unwrap();
        assert!(!json.contains("rss_") && !json.contains("latency") && !json.contains("NEVER"));
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.errors["CLOSE_1008"], 2);
        assert!(!back.is_clean());
        assert!(report.table().contains("CLOSE_1008=2"));
        let closed_row = |r: &Report| {
            let table = r.table();
            table.lines().find_map(|l| l.strip_prefix("subscribers closed")).map(|v| v.trim().to_owned())
        };
        assert_eq!(closed_row(&report).as_deref(), Some("2 (1008: 2)"));
        assert_eq!(back.closed["1008"], 2);
        let clean = Report { scenario: "fanin".into(), ..Report::default() };
        assert_eq!(closed_row(&clean).as_deref(), Some("0"));
        assert_eq!(closed_row(&Report { scenario: "conns".into(), ..Report::default() }), None);
        assert!(!serde_json::to_string(&clean).unwrap().contains("closed"));
    }
}
