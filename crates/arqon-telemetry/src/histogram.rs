//! Fixed-bucket histograms and counters on the message path, rendered in
//! the Prometheus text format by this crate.
//!
//! The exporter's own histograms keep every sample until the next scrape: a
//! bus that nobody scrapes would grow by 16 bytes per routed message, and each
//! sample costs a push into a shared bucket list. These keep one atomic per
//! bucket plus a sum: recording is two relaxed additions, memory is fixed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram over integer samples (nanoseconds, member counts) with fixed
/// upper bounds; rendered scaled (e.g. nanoseconds as seconds).
#[derive(Debug)]
pub(crate) struct Histogram {
    /// Inclusive upper bounds, ascending, in sample units.
    bounds: &'static [u64],
    /// Samples per bucket (not cumulative); the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of all samples, in sample units.
    sum: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [u64]) -> Self {
        Histogram { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum: AtomicU64::new(0) }
    }

    pub(crate) fn record(&self, sample: u64) {
        // Few buckets: a linear scan beats a binary search here.
        let bucket = self.bounds.iter().position(|&b| sample <= b).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(sample, Ordering::Relaxed);
    }

    /// Samples recorded so far.
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the samples, in sample units.
    pub(crate) fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// Appends `NAME_bucket`, `NAME_sum` and `NAME_count` lines; `labels` is
    /// either empty or `key="value",...` without braces; `scale` converts
    /// sample units into the exported unit.
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(&bound) => format_value(bound as f64 * scale),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", format_value(self.sum() as f64 * scale));
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// A counter rendered by this crate (see the module comment).
#[derive(Debug, Default)]
pub(crate) struct Count(AtomicU64);

impl Count {
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Appends the `# HELP` and `# TYPE` lines of one metric family.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A number as Prometheus prints it: integers without a fraction.
fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        static BOUNDS: [u64; 3] = [10, 100, 1000];
        let h = Histogram::new(&BOUNDS);
        for sample in [0, 10, 11, 100, 5000] {
            h.record(sample);
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum(), 5121);
        let mut out = String::new();
        h.render(&mut out, "x", "k=\"v\"", 0.5);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "x_bucket{k=\"v\",le=\"5\"} 2",
                "x_bucket{k=\"v\",le=\"50\"} 4",
                "x_bucket{k=\"v\",le=\"500\"} 4",
                "x_bucket{k=\"v\",le=\"+Inf\"} 5",
                "x_sum{k=\"v\"} 2560.5",
                "x_count{k=\"v\"} 5",
            ]
        );
    }

    #[test]
    fn memory_does_not_grow_with_samples() {
        static BOUNDS: [u64; 1] = [1];
        let h = Histogram::new(&BOUNDS);
        for i in 0..100_000 {
            h.record(i % 3);
        }
        assert_eq!(h.counts.len(), 2);
        assert_eq!(h.count(), 100_000);
    }
}
