//! The one-screen summary: each configuration's headline figure beside the
//! peers' and the target, and whether the target is met, as Markdown.

use std::fmt::Write as _;

use crate::figures::{Figure, Figures, Metric};
use crate::reference::{Reference, Target};

/// Whether `f` meets `t`: "yes"; "median only" when a run of the range
/// misses; "**no**"; or "?" when the figures cannot tell (no loss counts).
pub(crate) fn met(f: &Figure, t: &Target) -> String {
    let mut verdict = "yes";
    if let Some(bound) = t.value {
        let ok = |v: f64| if t.metric.higher_is_better() { v >= bound } else { v <= bound };
        let worst = if t.metric.higher_is_better() { f.min } else { f.max };
        if !ok(f.median) {
            return "**no**".to_owned();
        }
        if worst.is_some_and(|w| !ok(w)) {
            verdict = "median only";
        }
    }
    if t.no_loss {
        match (f.lost, f.closed) {
            (Some(0), Some(0)) => {}
            (Some(lost), Some(closed)) => return format!("**no**: {lost} lost, {closed} closed"),
            _ => return "?".to_owned(),
        }
    }
    verdict.to_owned()
}

fn cell_range(f: &Figure) -> String {
    let mut s = format!("**{}**", f.metric.format(f.median));
    if let (Some(a), Some(b)) = (f.min, f.max) {
        let (a, b) = (f.metric.format(a), f.metric.format(b));
        // "6.79 – 7.04 M/s" rather than "6.79 M/s – 7.04 M/s" where the
        // units agree: the table must fit one screen.
        let a = match (a.rsplit_once(' '), b.rsplit_once(' ')) {
            (Some((number, unit)), Some((_, other))) if unit == other => number.to_owned(),
            _ => a,
        };
        let _ = write!(s, " ({a} – {b})");
    }
    if f.metric != Metric::DeliveriesPerS && f.metric != Metric::RssPerConnKib {
        s = format!("{} {s}", f.metric.name());
    }
    s
}

/// The table: one row per configuration, on the metric its scenario is
/// judged by, and one more for each other metric the configuration has a
/// target on (a burst's memory).
pub(crate) fn table(figures: &Figures, reference: &Reference) -> String {
    let peers = reference.peer_names();
    let mut out = String::from("| configuration | ArqonBus: median (range) |");
    for p in &peers {
        let _ = write!(out, " {p} |");
    }
    out.push_str(" target | met? | measured |\n|---|---|");
    out.push_str(&"---|".repeat(peers.len()));
    out.push_str("---|---|---|\n");
    for f in &figures.figures {
        let case = reference.case(&f.label);
        let judged = case.and_then(|c| c.target(f.metric)).is_some();
        if Metric::headline(&f.scenario) != Some(f.metric) && !judged {
            continue;
        }
        let title = case.map_or(f.label.as_str(), |c| c.title.as_str());
        let _ = write!(out, "| {title} | {} |", cell_range(f));
        for p in &peers {
            let value = case
                .and_then(|c| c.peers.iter().find(|x| &x.name == p && x.metric == f.metric))
                .map(|x| f.metric.format(x.value))
                .unwrap_or_default();
            let _ = write!(out, " {value} |");
        }
        let target = case.and_then(|c| c.target(f.metric));
        let (text, verdict) = target.map_or((String::new(), String::new()), |t| (t.text.clone(), met(f, t)));
        let measured = f.measured.as_deref().unwrap_or(figures.measured.as_str());
        let _ = writeln!(out, " {text} | {verdict} | {measured} |");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures;

    fn figure(metric: Metric, median: f64, range: Option<(f64, f64)>) -> Figure {
        Figure {
            label: "x".into(),
            scenario: "fanout".into(),
            client: None,
            metric,
            unit: metric.unit().into(),
            median,
            min: range.map(|r| r.0),
            max: range.map(|r| r.1),
            runs: None,
            lost: None,
            closed: None,
            measured: None,
        }
    }

    fn target(metric: Metric, value: Option<f64>, no_loss: bool) -> Target {
        Target { metric, value, no_loss, text: String::new(), source: String::new() }
    }

    #[test]
    fn targets_are_met_in_the_metric_direction() {
        let floor = target(Metric::DeliveriesPerS, Some(6e6), false);
        assert_eq!(met(&figure(Metric::DeliveriesPerS, 6.9e6, Some((6.79e6, 7.04e6))), &floor), "yes");
        assert_eq!(met(&figure(Metric::DeliveriesPerS, 6.1e6, Some((5e6, 7e6))), &floor), "median only");
        assert_eq!(met(&figure(Metric::DeliveriesPerS, 0.97e6, None), &floor), "**no**");
        let ceiling = target(Metric::P99Us, Some(1000.0), false);
        assert_eq!(met(&figure(Metric::P99Us, 860.0, Some((780.0, 5670.0))), &ceiling), "median only");
        assert_eq!(met(&figure(Metric::P99Us, 30_500.0, None), &ceiling), "**no**");
        let no_loss = target(Metric::DeliveriesPerS, None, true);
        let mut f = figure(Metric::DeliveriesPerS, 7e5, None);
        assert_eq!(met(&f, &no_loss), "?");
        (f.lost, f.closed) = (Some(0), Some(0));
        assert_eq!(met(&f, &no_loss), "yes");
        f.closed = Some(3);
        assert_eq!(met(&f, &no_loss), "**no**: 0 lost, 3 closed");
    }

    #[test]
    fn one_row_per_configuration_with_peers_and_target() {
        let figures = figures::parse(
            r#"{"measured":"2026-12-06","figures":[
            {"label":"fanin 50->1, 2k each","scenario":"fanin","metric":"deliveries_per_s","unit":"deliveries/s","median":969000,"min":877000,"max":987000},
            {"label":"fanin 50->1, 2k each","scenario":"fanin","metric":"rss_growth_kib","unit":"KiB","median":3000},
            {"label":"burst","scenario":"fanout","metric":"deliveries_per_s","unit":"deliveries/s","median":650000},
            {"label":"burst","scenario":"fanout","metric":"rss_growth_kib","unit":"KiB","median":12800,"min":11900,"max":14336},
            {"label":"latency 1k/s ->100, 5 s","scenario":"latency","metric":"p50_us","unit":"us","median":460,"measured":"2026-11-30"},
            {"label":"latency 1k/s ->100, 5 s","scenario":"latency","metric":"p99_us","unit":"us","median":860,"measured":"2026-11-30"}]}"#,
        )
        .unwrap();
        let reference = Reference::parse(
            r#"{"cases":[{"label":"fanin 50->1, 2k each","title":"fan-in 50 -> 1","peers":[
            {"name":"NATS","metric":"deliveries_per_s","value":950000,"source":"t"}],
            "targets":[{"metric":"deliveries_per_s","value":1.5e6,"text":">= 1.5 M/s","source":"t"}]},
            {"label":"burst","title":"burst","targets":[
            {"metric":"rss_growth_kib","value":15000,"text":"<= 15 MB","source":"t"}]}]}"#,
        )
        .unwrap();
        let table = table(&figures, &reference);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| configuration | ArqonBus: median (range) | NATS | target | met? | measured |");
        assert_eq!(
            lines[2],
            "| fan-in 50 -> 1 | **969 k/s** (877 – 987 k/s) | 950 k/s | >= 1.5 M/s | **no** | 2026-12-06 |"
        );
        // A metric other than the headline gets a row only where it has a target.
        assert_eq!(lines[3], "| burst | **650 k/s** |  |  |  | 2026-12-06 |");
        assert_eq!(
            lines[4],
            "| burst | peak RSS growth **12.5 MiB** (11.6 – 14.0 MiB) |  | <= 15 MB | yes | 2026-12-06 |"
        );
        assert_eq!(lines[5], "| latency 1k/s ->100, 5 s | p99 **0.860 ms** |  |  |  | 2026-11-30 |");
        assert_eq!(lines.len(), 6, "{table}");
    }

    #[test]
    fn the_docs_table_is_what_the_checked_in_figures_give() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let newest = crate::summarize::newest_figures(&root.join("benches/results")).unwrap();
        let figures = figures::load(&newest).unwrap();
        let reference = Reference::load(&root.join("benches/reference.json")).unwrap();
        let table = table(&figures, &reference);
        let summary = std::fs::read_to_string(root.join("docs/img/summary.md")).unwrap();
        assert_eq!(table, summary, "run `cargo run -p arqon-bench -- summarize --out docs/img`");
        let docs = std::fs::read_to_string(root.join("docs/performance.md")).unwrap();
        assert!(docs.contains(&table), "docs/performance.md must carry docs/img/summary.md as it is");
    }
}
