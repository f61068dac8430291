//! SVG charts of figures, drawn with plotters' SVG backend.
//!
//! Each chart is a horizontal bar chart with one row per configuration (long
//! labels fit on the left): ArqonBus's median as a bar with its range as a
//! whisker, the peers' figures as markers and the target as a red line
//! across the row. Text is written as SVG `<text>` and laid out by
//! plotters' estimate, so no font is loaded and no browser is needed; the
//! viewer's sans-serif font draws it.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::BenchError;
use crate::figures::{Figure, Metric};
use crate::reference::{Case, Reference};

/// One chart: which metrics it shows and how.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kind {
    /// File name under the output directory.
    pub(crate) file: &'static str,
    /// Caption.
    title: &'static str,
    /// X axis description.
    axis: &'static str,
    /// The metrics shown, one bar each per row.
    metrics: &'static [Metric],
    /// Logarithmic x axis: latencies span three decades.
    log: bool,
}

/// The three charts `summarize` draws.
pub(crate) const KINDS: [Kind; 3] = [
    Kind {
        file: "deliveries.svg",
        title: "Deliveries per second (more is better)",
        axis: "deliveries/s, all subscribers together",
        metrics: &[Metric::DeliveriesPerS],
        log: false,
    },
    Kind {
        file: "latency.svg",
        title: "Latency and command round trips (less is better)",
        axis: "milliseconds (log scale)",
        metrics: &[Metric::P50Us, Metric::P99Us, Metric::P999Us],
        log: true,
    },
    Kind {
        file: "memory.svg",
        title: "Server memory per idle connection (less is better)",
        axis: "KiB of RSS per connection",
        metrics: &[Metric::RssPerConnKib],
        log: false,
    },
];

/// The name of ArqonBus's series for `metric` in a chart of `kind`.
pub(crate) fn series_name(kind: &Kind, metric: Metric) -> String {
    if kind.metrics.len() == 1 { "ArqonBus (median, range)".to_owned() } else { format!("ArqonBus {}", metric.name()) }
}

/// One row: a configuration's figures on the chart's metrics.
struct Row<'a> {
    title: String,
    figures: Vec<&'a Figure>,
    case: Option<&'a Case>,
}

fn rows<'a>(kind: &Kind, figures: &'a [Figure], reference: &'a Reference) -> Vec<Row<'a>> {
    let mut rows: Vec<Row<'a>> = Vec::new();
    for f in figures.iter().filter(|f| kind.metrics.contains(&f.metric)) {
        if let Some(row) = rows.iter_mut().find(|r| r.figures[0].label == f.label) {
            row.figures.push(f);
            continue;
        }
        let case = reference.case(&f.label);
        let title = case.map_or_else(|| f.label.clone(), |c| c.title.clone());
        rows.push(Row { title, figures: vec![f], case });
    }
    rows
}

const PEER_COLORS: [RGBColor; 4] = [RGBColor(0x1b, 0x9e, 0x77), RGBColor(0xd9, 0x5f, 0x02), MAGENTA, BLACK];
const BAR_COLORS: [RGBColor; 3] = [RGBColor(0x9e, 0xc5, 0xe8), RGBColor(0x3a, 0x7d, 0xc4), RGBColor(0x1a, 0x3f, 0x75)];
const TARGET_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);

/// Axis ticks at 1, 2 and 5 times powers of ten: every decade on a log axis,
/// or about six steps on a linear one.
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    let mut out = Vec::new();
    if log {
        let mut decade = 10f64.powf(lo.floor());
        while decade.log10() <= hi {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if (lo..=hi).contains(&v.log10()) {
                    out.push(v.log10());
                }
            }
            decade *= 10.0;
        }
        return out;
    }
    let raw = (hi - lo) / 6.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(raw);
    let mut v = lo;
    while v <= hi {
        out.push(v);
        v += step;
    }
    out
}

/// Axis tick text in the metric's usual scale.
fn tick_text(metric: Metric, v: f64) -> String {
    let trim = |s: String| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s };
    match metric {
        Metric::DeliveriesPerS if v == 0.0 => "0".to_owned(),
        Metric::DeliveriesPerS if v >= 1e6 => format!("{} M", trim(format!("{:.1}", v / 1e6))),
        Metric::DeliveriesPerS => format!("{} k", trim(format!("{:.0}", v / 1e3))),
        Metric::P50Us | Metric::P99Us | Metric::P999Us => trim(format!("{:.3}", v / 1000.0)),
        Metric::RssPerConnKib => trim(format!("{v:.1}")),
        Metric::RssGrowthKib => trim(format!("{:.1}", v / 1024.0)),
    }
}

/// A linear f64 axis whose ticks are given: plotters' own f64 axis picks
/// its ticks, and its key-point wrapper cannot take label formatters.
struct Axis {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Axis {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Self {
        Axis { inner: range.into(), ticks }
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
}

fn chart_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::Chart(e.to_string())
}

/// Draws one chart as SVG text; `None` when no figure is on its metrics.
pub(crate) fn draw(kind: &Kind, figures: &[Figure], reference: &Reference) -> Result<Option<String>, BenchError> {
    let rows = rows(kind, figures, reference);
    if rows.is_empty() {
        return Ok(None);
    }
    let to_x = |v: f64| if kind.log { v.max(1e-9).log10() } else { v };
    // The chart's metrics that have a figure: a band of each row each, and
    // a legend entry each (a metric nobody measured gets neither).
    let metrics: Vec<Metric> = kind
        .metrics
        .iter()
        .copied()
        .filter(|m| rows.iter().any(|r| r.figures.iter().any(|f| f.metric == *m)))
        .collect();
    // Everything drawn, so that the axis holds every marker and whisker.
    let mut values: Vec<f64> = Vec::new();
    let mut peer_names: Vec<String> = Vec::new();
    let mut any_target = false;
    for row in &rows {
        for f in &row.figures {
            values.extend([Some(f.median), f.min, f.max].into_iter().flatten());
        }
        if let Some(case) = row.case {
            for p in case.peers.iter().filter(|p| metrics.contains(&p.metric)) {
                values.push(p.value);
                if !peer_names.contains(&p.name) {
                    peer_names.push(p.name.clone());
                }
            }
            let targets: Vec<f64> =
                case.targets.iter().filter(|t| metrics.contains(&t.metric)).filter_map(|t| t.value).collect();
            any_target |= !targets.is_empty();
            values.extend(targets);
        }
    }
    let (min_v, max_v) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    // Room on the right for the value printed after the longest bar; on a
    // log axis, room on the left too, or the shortest bar would not show.
    let (lo, hi) = if kind.log { (log_floor(min_v / 1.5), to_x(max_v) + 0.35) } else { (0.0, max_v * 1.18) };
    let n = rows.len();
    let per_row = 26 + 14 * u32::try_from(metrics.len()).unwrap_or(1);
    // The legend goes in blank space below the last row, where it can hide
    // nothing.
    let entries = metrics.len() + peer_names.len() + usize::from(any_target);
    let legend_px = 24 + 20 * u32::try_from(entries).unwrap_or(1);
    let height = 110 + legend_px + per_row * u32::try_from(n).unwrap_or(1);
    let layout = Layout {
        metrics,
        peer_names,
        x: (lo, hi),
        legend_rows: f64::from(legend_px) / f64::from(per_row),
        to_x: &to_x,
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, height)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        plot(&root, kind, &rows, &layout)?;
        root.present().map_err(chart_error)?;
    }
    Ok(Some(svg))
}

/// The largest 1, 2 or 5 times a power of ten at or below `v`, as log10.
fn log_floor(v: f64) -> f64 {
    let decade = 10f64.powf(v.max(1e-9).log10().floor());
    let step = [5.0, 2.0, 1.0].into_iter().map(|m| m * decade).find(|s| *s <= v).unwrap_or(decade);
    step.log10()
}

/// What `draw` worked out for `plot`.
struct Layout<'a> {
    metrics: Vec<Metric>,
    peer_names: Vec<String>,
    /// The x axis range, in axis units (log10 on a log axis).
    x: (f64, f64),
    /// Blank space below the last row for the legend, in rows.
    legend_rows: f64,
    /// Value to axis units.
    to_x: &'a dyn Fn(f64) -> f64,
}

fn plot(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    kind: &Kind,
    rows: &[Row<'_>],
    layout: &Layout<'_>,
) -> Result<(), BenchError> {
    let Layout { metrics, peer_names, x: (lo, hi), legend_rows, to_x } = layout;
    let (lo, hi) = (*lo, *hi);
    let n = rows.len();
    // Row i is drawn at y = n - 1 - i, so the first configuration is on top.
    let y_of = |i: usize| (n - 1 - i) as f64;
    let titles: Vec<String> = rows.iter().map(|r| r.title.clone()).collect();
    let axis_metric = kind.metrics[0];
    let y_keys: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let mut chart = ChartBuilder::on(root)
        .caption(kind.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(300)
        .build_cartesian_2d(
            Axis::new(lo..hi, ticks(lo, hi, kind.log)),
            Axis::new(-0.5 - legend_rows..n as f64 - 0.5, y_keys),
        )
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(kind.axis)
        .x_label_formatter(&|x| tick_text(axis_metric, if kind.log { 10f64.powf(*x) } else { *x }))
        .y_label_formatter(&|y| {
            let i = n as f64 - 1.0 - y.round();
            titles.get(i as usize).cloned().unwrap_or_default()
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(chart_error)?;

    // Each metric gets a band of the row; bars, markers and target lines of
    // that metric share it.
    let band = 0.76 / metrics.len() as f64;
    let band_of = |row: usize, metric: Metric| {
        let k = metrics.iter().position(|x| *x == metric).unwrap_or(0) as f64;
        let top = y_of(row) + 0.38 - k * band;
        (top - band, top)
    };
    let base = lo;
    for (k, &metric) in metrics.iter().enumerate() {
        let color = if metrics.len() == 1 { BAR_COLORS[1] } else { BAR_COLORS[k % BAR_COLORS.len()] };
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        let mut labels = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let Some(f) = row.figures.iter().find(|f| f.metric == metric) else { continue };
            let (y0, y1) = band_of(i, metric);
            let pad = band * 0.1;
            let x = to_x(f.median);
            bars.push(Rectangle::new([(base, y0 + pad), (x, y1 - pad)], color.filled()));
            let mid = (y0 + y1) / 2.0;
            if let (Some(a), Some(b)) = (f.min, f.max) {
                let cap = band * 0.25;
                whiskers.push(vec![(to_x(a), mid), (to_x(b), mid)]);
                whiskers.push(vec![(to_x(a), mid - cap), (to_x(a), mid + cap)]);
                whiskers.push(vec![(to_x(b), mid - cap), (to_x(b), mid + cap)]);
            }
            labels.push(((f.max.map_or(x, to_x).max(x), mid), f.metric.format(f.median)));
        }
        chart
            .draw_series(bars)
            .map_err(chart_error)?
            .label(series_name(kind, metric))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        chart
            .draw_series(whiskers.into_iter().map(|path| PathElement::new(path, BLACK.stroke_width(1))))
            .map_err(chart_error)?;
        let style = ("sans-serif", 12).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        chart
            .draw_series(
                labels.into_iter().map(|(at, text)| EmptyElement::at(at) + Text::new(text, (6, 0), style.clone())),
            )
            .map_err(chart_error)?;
    }
    for (p, name) in peer_names.iter().enumerate() {
        let color = PEER_COLORS[p % PEER_COLORS.len()];
        let mut points: Vec<(f64, f64)> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let peers = row.case.map(|c| c.peers.as_slice()).unwrap_or_default();
            for peer in peers.iter().filter(|x| &x.name == name && metrics.contains(&x.metric)) {
                let (y0, y1) = band_of(i, peer.metric);
                points.push((to_x(peer.value), (y0 + y1) / 2.0));
            }
        }
        // A circle for the first peer, a triangle for the second, then
        // crosses, so that they differ without colour too.
        match p {
            0 => {
                chart
                    .draw_series(points.iter().map(|&at| Circle::new(at, 6, color.filled())))
                    .map_err(chart_error)?
                    .label(name.as_str())
                    .legend(move |(x, y)| Circle::new((x + 7, y), 6, color.filled()));
            }
            1 => {
                chart
                    .draw_series(points.iter().map(|&at| TriangleMarker::new(at, 8, color.filled())))
                    .map_err(chart_error)?
                    .label(name.as_str())
                    .legend(move |(x, y)| TriangleMarker::new((x + 7, y), 8, color.filled()));
            }
            _ => {
                chart
                    .draw_series(points.iter().map(|&at| Cross::new(at, 6, color.stroke_width(2))))
                    .map_err(chart_error)?
                    .label(name.as_str())
                    .legend(move |(x, y)| Cross::new((x + 7, y), 6, color.stroke_width(2)));
            }
        }
    }
    let mut targets: Vec<PathElement<(f64, f64)>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let list = row.case.map(|c| c.targets.as_slice()).unwrap_or_default();
        for t in list.iter().filter(|t| metrics.contains(&t.metric)) {
            let Some(v) = t.value else { continue };
            // A lone metric's target spans its whole row; otherwise its band.
            let (y0, y1) = if metrics.len() == 1 { (y_of(i) - 0.45, y_of(i) + 0.45) } else { band_of(i, t.metric) };
            targets.push(PathElement::new(vec![(to_x(v), y0), (to_x(v), y1)], TARGET_COLOR.stroke_width(3)));
        }
    }
    if !targets.is_empty() {
        chart
            .draw_series(targets)
            .map_err(chart_error)?
            .label("target")
            .legend(|(x, y)| PathElement::new(vec![(x + 7, y - 7), (x + 7, y + 7)], TARGET_COLOR.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(chart_error)?;
    Ok(())
}

/// Draws every chart that has figures; returns `(file name, SVG text)`.
pub(crate) fn draw_all(figures: &[Figure], reference: &Reference) -> Result<Vec<(&'static str, String)>, BenchError> {
    let mut out = Vec::new();
    for kind in &KINDS {
        if let Some(svg) = draw(kind, figures, reference)? {
            out.push((kind.file, svg));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures;

    /// The text of every `<text>` element, unescaped enough for the names
    /// used here.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|rest| {
                let body = &rest[rest.find('>')? + 1..];
                Some(
                    body[..body.find("</text>")?]
                        .trim()
                        .replace("&gt;", ">")
                        .replace("&lt;", "<")
                        .replace("&amp;", "&"),
                )
            })
            .collect()
    }

    const FIGURES: &str = r#"{"figures":[
        {"label":"fanout 1->100, 20k msgs","scenario":"fanout","client":"lean","metric":"deliveries_per_s","unit":"deliveries/s","median":6.9e6,"min":6.79e6,"max":7.04e6,"runs":3},
        {"label":"fanout 1->100, 20k msgs, ordinary","scenario":"fanout","client":"ordinary","metric":"deliveries_per_s","unit":"deliveries/s","median":7.95e5},
        {"label":"latency 1k/s ->100, 5 s","scenario":"latency","client":"lean","metric":"p50_us","unit":"us","median":460},
        {"label":"latency 1k/s ->100, 5 s","scenario":"latency","client":"lean","metric":"p99_us","unit":"us","median":860,"min":780,"max":5670}]}"#;

    const REFERENCE: &str = r#"{"cases":[
        {"label":"fanout 1->100, 20k msgs","title":"fan-out 1 -> 100, lean","peers":[
            {"name":"nats-server","metric":"deliveries_per_s","value":2.7e6,"source":"t"},
            {"name":"Socket.IO","metric":"deliveries_per_s","value":2e5,"source":"t"}],
         "targets":[{"metric":"deliveries_per_s","value":6e6,"text":">= 6 M/s","source":"t"}]},
        {"label":"latency 1k/s ->100, 5 s","title":"latency 1k/s","peers":[
            {"name":"nats-server","metric":"p99_us","value":2800,"source":"t"}],
         "targets":[{"metric":"p99_us","value":1000,"text":"p99 <= 1 ms","source":"t"}]}]}"#;

    #[test]
    fn charts_carry_series_rows_and_values() {
        let figures = figures::parse(FIGURES).unwrap().figures;
        let reference = Reference::parse(REFERENCE).unwrap();
        let charts = draw_all(&figures, &reference).unwrap();
        let names: Vec<&str> = charts.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["deliveries.svg", "latency.svg"], "no memory figure, no memory chart");

        let svg = &charts[0].1;
        assert!(svg.starts_with("<svg"), "{svg}");
        let t = texts(svg);
        for expected in [
            "Deliveries per second (more is better)",
            "ArqonBus (median, range)",
            "nats-server",
            "Socket.IO",
            "target",
            "fan-out 1 -> 100, lean",
            "fanout 1->100, 20k msgs, ordinary",
            "6.90 M/s",
            "795 k/s",
        ] {
            assert!(t.iter().any(|x| x == expected), "{expected:?} not among {t:?}");
        }

        let t = texts(&charts[1].1);
        for expected in ["ArqonBus p50", "ArqonBus p99", "nats-server", "target", "0.860 ms", "0.460 ms"] {
            assert!(t.iter().any(|x| x == expected), "{expected:?} not among {t:?}");
        }
        assert!(!t.iter().any(|x| x == "Socket.IO"), "a peer with no figure here has no legend entry");
        assert!(!t.iter().any(|x| x == "ArqonBus p99.9"), "nor a metric without a figure");
    }

    #[test]
    fn ticks_fall_on_round_numbers() {
        assert_eq!(ticks(0.0, 8.0, false), [0.0, 2.0, 4.0, 6.0, 8.0]);
        let log: Vec<f64> = ticks(2.0, 3.0, true).iter().map(|x| (10f64.powf(*x)).round()).collect();
        assert_eq!(log, [100.0, 200.0, 500.0, 1000.0]);
        assert_eq!(tick_text(Metric::DeliveriesPerS, 2e6), "2 M");
        assert_eq!(tick_text(Metric::DeliveriesPerS, 5e5), "500 k");
        assert_eq!(tick_text(Metric::P99Us, 200.0), "0.2");
    }
}
