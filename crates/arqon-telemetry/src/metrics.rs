//! Prometheus metrics of one bus: most through the `metrics` facade, the
//! per-message ones in fixed buckets of our own (see [`crate::histogram`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use arqon_protocol::ErrorCode;
use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::histogram::{self, Count, Histogram};

/// A storage operation, counted by `arqon_storage_operations_total{op}`.
/// Typed, so that counting an append (one per message) is an index, not a
/// search by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageOp {
    /// `create_channel`.
    CreateChannel,
    /// `channels`.
    Channels,
    /// `delete_channel`.
    DeleteChannel,
    /// `append` (and its immediate and placed forms).
    Append,
    /// `history`.
    History,
    /// `since` (and placed reads).
    Since,
    /// `stats`.
    Stats,
}

impl StorageOp {
    /// Every operation, in the order of [`STORAGE_OPS`].
    pub const ALL: [StorageOp; 7] = [
        StorageOp::CreateChannel,
        StorageOp::Channels,
        StorageOp::DeleteChannel,
        StorageOp::Append,
        StorageOp::History,
        StorageOp::Since,
        StorageOp::Stats,
    ];

    /// The `op` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            StorageOp::CreateChannel => "create_channel",
            StorageOp::Channels => "channels",
            StorageOp::DeleteChannel => "delete_channel",
            StorageOp::Append => "append",
            StorageOp::History => "history",
            StorageOp::Since => "since",
            StorageOp::Stats => "stats",
        }
    }
}

/// The `op` labels of `arqon_storage_operations_total`.
pub const STORAGE_OPS: [&str; 7] = {
    let mut labels = [""; 7];
    let mut i = 0;
    while i < labels.len() {
        labels[i] = StorageOp::ALL[i].as_str();
        i += 1;
    }
    labels
};

/// Frame kinds counted by `arqon_frames_received_total{type}`.
pub const FRAME_KINDS: [&str; 5] = ["message", "command", "invalid", "binary", "oversize"];

/// Every metric of one bus, with handles registered up front.
///
/// Each bus owns its own recorder (not the process-global one), so two buses
/// in one process (tests, embedding) never mix their numbers. Recording
/// through a handle is an atomic operation: no registry lookup and no lock
/// shared by connections on the hot path. Histograms have fixed buckets and
/// fixed memory, scraped or not.
pub struct BusMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    connections: Gauge,
    opened: Counter,
    closed: Counter,
    frames: [Count; FRAME_KINDS.len()],
    /// Clients reached per routed message; its count is the messages routed,
    /// its sum the deliveries.
    fanout: Histogram,
    /// Routing latency in nanoseconds.
    latency: Histogram,
    /// Command run time in nanoseconds, by (command, outcome); commands are
    /// off the message path, so a short lock is fine.
    commands: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
    errors: [Counter; ErrorCode::ALL.len()],
    rate_limited: Counter,
    webhook_sent: Counter,
    webhook_dropped: [Counter; WEBHOOK_DROPS.len()],
    slow_consumers: [Counter; SLOW_CAUSES.len()],
    backlog_bytes: Gauge,
    backlog_budget_bytes: Gauge,
    storage_healthy: Gauge,
    storage_journal_bytes: Gauge,
    storage_cache_bytes: Gauge,
    storage_journal_skipped: Gauge,
    storage_ok: [Counter; STORAGE_OPS.len()],
    storage_failed: [Counter; STORAGE_OPS.len()],
    budgets: BudgetGauges,
    /// Registered on the first report, so a single node shows no cluster series.
    cluster: std::sync::OnceLock<ClusterMetrics>,
}

/// The cluster series (docs/cluster.md).
struct ClusterMetrics {
    healthy: Gauge,
    peers: Gauge,
    forwarded: Counter,
    received: Counter,
    dropped: Counter,
}

/// The memory budgets and how much of them is used (docs/operations.md).
struct BudgetGauges {
    channels: Gauge,
    channels_limit: [Gauge; 3],
    history_bytes: Gauge,
    history_bytes_limit: Gauge,
}

/// The scopes of `arqon_channels_limit{scope}`, in the order of
/// [`BudgetReport::channels_limits`].
pub const CHANNEL_LIMIT_SCOPES: [&str; 3] = ["node", "room", "connection"];

/// The bus's budgets and their use, as reported to
/// [`BusMetrics::set_budgets`]. A limit of 0 means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetReport {
    /// Channels on this node.
    pub channels: usize,
    /// Most channels on the node, in one room, and created by one
    /// connection (see [`CHANNEL_LIMIT_SCOPES`]).
    pub channels_limits: [usize; 3],
    /// Bytes of history held in memory.
    pub history_bytes: u64,
    /// Most bytes of history held in memory.
    pub history_bytes_limit: u64,
}

/// A cluster node's state as reported to [`BusMetrics::set_cluster`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterReport {
    /// Whether Redis answers.
    pub healthy: bool,
    /// Other nodes alive.
    pub peers: usize,
    /// Deliveries sent to other nodes so far.
    pub forwarded: u64,
    /// Deliveries received from other nodes so far.
    pub received: u64,
    /// Deliveries dropped on the way to or from other nodes so far.
    pub dropped: u64,
}

impl fmt::Debug for BusMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusMetrics").finish_non_exhaustive()
    }
}

/// Buckets for routing and command latency, in nanoseconds (exported in
/// seconds: 50 µs to 1 s).
static LATENCY_BUCKETS_NS: [u64; 12] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];
/// Why slow consumers are closed (PROTOCOL.md section 8.1), as the `cause`
/// label of `arqon_slow_consumer_disconnects_total`.
pub const SLOW_CAUSES: [&str; 3] = ["backlog", "write_timeout", "budget"];
/// Why webhook events are dropped, as the `reason` label of
/// `arqon_webhook_events_dropped_total`.
pub const WEBHOOK_DROPS: [&str; 3] = ["queue_full", "failed", "shutdown"];
/// Buckets for fan-out (members reached per message).
static FANOUT_BUCKETS: [u64; 10] = [0, 1, 2, 5, 10, 50, 100, 500, 1000, 10000];
/// Nanoseconds to seconds.
const NS: f64 = 1e-9;

impl Default for BusMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl BusMetrics {
    /// A fresh set of metrics, all at zero.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let mut metrics = metrics::with_local_recorder(&recorder, || {
            metrics::describe_gauge!("arqon_connections", "Connected WebSocket clients.");
            metrics::describe_counter!("arqon_errors_total", "Error frames sent, by code.");
            metrics::describe_gauge!(
                "arqon_backlog_bytes",
                "Bytes of frames queued towards all clients, each shared frame counted once."
            );
            metrics::describe_gauge!(
                "arqon_backlog_budget_bytes",
                "The global budget for queued frames (0: none); past it the largest backlogs are closed."
            );
            metrics::describe_counter!(
                "arqon_slow_consumer_disconnects_total",
                "Clients closed with 1008 for not reading, by cause (backlog, write_timeout, budget)."
            );
            metrics::describe_gauge!("arqon_storage_healthy", "1 while the storage backend is healthy.");
            metrics::describe_counter!("arqon_webhook_events_sent_total", "Webhook events the receiver accepted.");
            metrics::describe_counter!(
                "arqon_webhook_events_dropped_total",
                "Webhook events dropped, by reason (queue_full, failed, shutdown)."
            );
            metrics::describe_gauge!(
                "arqon_storage_journal_bytes",
                "Bytes of messages journaled during a storage outage."
            );
            metrics::describe_gauge!(
                "arqon_storage_cache_bytes",
                "Bytes of messages cached to answer reads during an outage."
            );
            metrics::describe_gauge!(
                "arqon_storage_journal_skipped_bytes",
                "Bytes of a torn or corrupt journal file tail skipped at start-up."
            );
            metrics::describe_gauge!("arqon_channels", "Channels on this node.");
            metrics::describe_gauge!(
                "arqon_channels_limit",
                "Most channels on the node, in one room, created by one connection (0: no limit)."
            );
            metrics::describe_gauge!("arqon_history_bytes", "Bytes of channel history held in memory.");
            metrics::describe_gauge!(
                "arqon_history_bytes_limit",
                "Most bytes of channel history held in memory (0: none held here)."
            );
            BusMetrics {
                connections: metrics::gauge!("arqon_connections"),
                opened: metrics::counter!("arqon_connections_opened_total"),
                closed: metrics::counter!("arqon_connections_closed_total"),
                frames: Default::default(),
                fanout: Histogram::new(&FANOUT_BUCKETS),
                latency: Histogram::new(&LATENCY_BUCKETS_NS),
                commands: Mutex::default(),
                errors: ErrorCode::ALL.map(|code| metrics::counter!("arqon_errors_total", "code" => code.as_str())),
                rate_limited: metrics::counter!("arqon_rate_limited_total"),
                webhook_sent: metrics::counter!("arqon_webhook_events_sent_total"),
                webhook_dropped: WEBHOOK_DROPS
                    .map(|reason| metrics::counter!("arqon_webhook_events_dropped_total", "reason" => reason)),
                slow_consumers: SLOW_CAUSES
                    .map(|cause| metrics::counter!("arqon_slow_consumer_disconnects_total", "cause" => cause)),
                backlog_bytes: metrics::gauge!("arqon_backlog_bytes"),
                backlog_budget_bytes: metrics::gauge!("arqon_backlog_budget_bytes"),
                storage_healthy: metrics::gauge!("arqon_storage_healthy"),
                storage_journal_bytes: metrics::gauge!("arqon_storage_journal_bytes"),
                storage_cache_bytes: metrics::gauge!("arqon_storage_cache_bytes"),
                storage_journal_skipped: metrics::gauge!("arqon_storage_journal_skipped_bytes"),
                storage_ok: STORAGE_OPS.map(|op| metrics::counter!("arqon_storage_operations_total", "op" => op)),
                storage_failed: STORAGE_OPS.map(|op| metrics::counter!("arqon_storage_failures_total", "op" => op)),
                budgets: BudgetGauges {
                    channels: metrics::gauge!("arqon_channels"),
                    channels_limit: CHANNEL_LIMIT_SCOPES
                        .map(|scope| metrics::gauge!("arqon_channels_limit", "scope" => scope)),
                    history_bytes: metrics::gauge!("arqon_history_bytes"),
                    history_bytes_limit: metrics::gauge!("arqon_history_bytes_limit"),
                },
                cluster: std::sync::OnceLock::new(),
                recorder: PrometheusBuilder::new().build_recorder(),
                handle: handle.clone(),
            }
        });
        metrics.recorder = recorder;
        metrics.handle = handle;
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        self.render_own(&mut out);
        out
    }

    /// The metrics this crate keeps itself (message path and histograms).
    fn render_own(&self, out: &mut String) {
        use std::fmt::Write as _;
        let name = "arqon_frames_received_total";
        histogram::header(out, name, "counter", "Frames received from clients, by type.");
        for (kind, count) in FRAME_KINDS.iter().zip(&self.frames) {
            let _ = writeln!(out, "{name}{{type=\"{kind}\"}} {}", count.get());
        }
        let name = "arqon_messages_routed_total";
        histogram::header(out, name, "counter", "Messages routed (retries excluded).");
        let _ = writeln!(out, "{name} {}", self.messages_routed());
        let name = "arqon_messages_delivered_total";
        histogram::header(out, name, "counter", "Message deliveries queued to clients.");
        let _ = writeln!(out, "{name} {}", self.messages_delivered());
        let name = "arqon_message_fanout";
        histogram::header(out, name, "histogram", "Clients reached per routed message.");
        self.fanout.render(out, name, "", 1.0);
        let name = "arqon_routing_latency_seconds";
        histogram::header(
            out,
            name,
            "histogram",
            "From frame receipt to delivery queued, for a sample of routed messages (one in 8 per connection).",
        );
        self.latency.render(out, name, "", NS);
        let name = "arqon_command_duration_seconds";
        histogram::header(out, name, "histogram", "Command execution time.");
        let commands = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
        for ((command, outcome), h) in commands.iter() {
            h.render(out, name, &format!("command=\"{command}\",outcome=\"{outcome}\""), NS);
        }
    }

    /// Message frames received so far.
    pub fn messages_received(&self) -> u64 {
        FRAME_KINDS.iter().position(|k| *k == "message").map_or(0, |i| self.frames[i].get())
    }

    /// Messages routed so far (retries excluded).
    pub fn messages_routed(&self) -> u64 {
        self.fanout.count()
    }

    /// Deliveries queued so far.
    pub fn messages_delivered(&self) -> u64 {
        self.fanout.sum()
    }

    /// A client connected.
    pub fn connection_opened(&self) {
        self.opened.increment(1);
        self.connections.increment(1.0);
    }

    /// A client disconnected.
    pub fn connection_closed(&self) {
        self.closed.increment(1);
        self.connections.decrement(1.0);
    }

    /// A frame arrived; `kind` is one of [`FRAME_KINDS`].
    pub fn frame_received(&self, kind: &str) {
        if let Some(i) = FRAME_KINDS.iter().position(|k| *k == kind) {
            self.frames[i].add(1);
        }
    }

    /// A message was routed to `fanout` clients, after `latency` if it was
    /// timed (the latency histogram is a sample of the messages).
    pub fn message_routed(&self, fanout: usize, latency: Option<Duration>) {
        self.fanout.record(fanout as u64);
        if let Some(latency) = latency {
            self.latency.record(nanos(latency));
        }
    }

    /// A command ran; `outcome` is `ok` or an error code.
    pub fn command_executed(&self, command: &'static str, outcome: &'static str, duration: Duration) {
        let mut commands = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
        commands
            .entry((command, outcome))
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS_NS))
            .record(nanos(duration));
    }

    /// An error frame was sent.
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].increment(1);
        }
    }

    /// Webhook events the receiver accepted.
    pub fn webhook_sent(&self, events: u64) {
        self.webhook_sent.increment(events);
    }

    /// Webhook events dropped: `reason` is one of [`WEBHOOK_DROPS`]
    /// (`queue_full`: the receiver is behind; `failed`: a batch out of retries;
    /// `shutdown`: not sent within the shutdown grace).
    pub fn webhook_dropped(&self, reason: &str, events: u64) {
        if let Some(at) = WEBHOOK_DROPS.iter().position(|r| *r == reason) {
            self.webhook_dropped[at].increment(events);
        }
    }

    /// A frame was refused by the rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.increment(1);
    }

    /// A client was closed as a slow consumer; `cause` is one of
    /// [`SLOW_CAUSES`] (anything else is counted as `backlog`).
    pub fn slow_consumer(&self, cause: &str) {
        let at = SLOW_CAUSES.iter().position(|c| *c == cause).unwrap_or(0);
        self.slow_consumers[at].increment(1);
    }

    /// Sets the memory held by queued frames and its budget (sampled when
    /// scraped).
    pub fn set_backlog(&self, bytes: usize, budget: usize) {
        self.backlog_bytes.set(bytes as f64);
        self.backlog_budget_bytes.set(budget as f64);
    }

    /// Sets whether storage is healthy.
    pub fn set_storage_healthy(&self, healthy: bool) {
        self.storage_healthy.set(if healthy { 1.0 } else { 0.0 });
    }

    /// Sets the bytes the storage wrapper holds in memory (its outage
    /// journal and its read cache) and the bytes of a bad journal file tail
    /// it skipped at start-up.
    pub fn set_storage_bytes(&self, journal: u64, cache: u64, skipped: u64) {
        self.storage_journal_bytes.set(journal as f64);
        self.storage_cache_bytes.set(cache as f64);
        self.storage_journal_skipped.set(skipped as f64);
    }

    /// Sets the budget gauges (sampled when scraped).
    pub fn set_budgets(&self, report: BudgetReport) {
        let budgets = &self.budgets;
        budgets.channels.set(report.channels as f64);
        for (gauge, limit) in budgets.channels_limit.iter().zip(report.channels_limits) {
            gauge.set(limit as f64);
        }
        budgets.history_bytes.set(report.history_bytes as f64);
        budgets.history_bytes_limit.set(report.history_bytes_limit as f64);
    }

    /// Sets the cluster series from the broker's running totals (sampled at
    /// scrape time and by the health watcher).
    pub fn set_cluster(&self, report: ClusterReport) {
        let cluster = self.cluster.get_or_init(|| {
            metrics::with_local_recorder(&self.recorder, || {
                metrics::describe_gauge!("arqon_cluster_healthy", "1 while this node reaches the cluster's Redis.");
                metrics::describe_gauge!("arqon_cluster_peers", "Other cluster nodes alive.");
                metrics::describe_counter!("arqon_cluster_forwarded_total", "Deliveries sent to other nodes.");
                metrics::describe_counter!("arqon_cluster_received_total", "Deliveries received from other nodes.");
                metrics::describe_counter!(
                    "arqon_cluster_dropped_total",
                    "Cross-node deliveries dropped (Redis down, queue full, receiver lagging)."
                );
                ClusterMetrics {
                    healthy: metrics::gauge!("arqon_cluster_healthy"),
                    peers: metrics::gauge!("arqon_cluster_peers"),
                    forwarded: metrics::counter!("arqon_cluster_forwarded_total"),
                    received: metrics::counter!("arqon_cluster_received_total"),
                    dropped: metrics::counter!("arqon_cluster_dropped_total"),
                }
            })
        });
        cluster.healthy.set(if report.healthy { 1.0 } else { 0.0 });
        cluster.peers.set(report.peers as f64);
        cluster.forwarded.absolute(report.forwarded);
        cluster.received.absolute(report.received);
        cluster.dropped.absolute(report.dropped);
    }

    /// Counts one storage operation and whether it failed. Pre-registered:
    /// appends are on the message path.
    pub fn storage_op(&self, op: StorageOp, ok: bool) {
        let i = op as usize;
        if let Some(counter) = if ok { &self.storage_ok } else { &self.storage_failed }.get(i) {
            counter.increment(1);
        }
    }
}

/// The value of one series (its name with labels, exactly as rendered, e.g.
/// `arqon_storage_operations_total{op="append"}`) in a Prometheus text
/// exposition such as `/metrics` serves; `None` when it is absent. For
/// checks and scripts that read the metrics back.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `storage_op` indexes the counters by the operation's discriminant:
    /// `ALL` (and so the labels) must be in declaration order, every one once.
    #[test]
    fn storage_ops_index_their_own_labels() {
        for (i, op) in StorageOp::ALL.into_iter().enumerate() {
            assert_eq!(op as usize, i);
            assert_eq!(STORAGE_OPS[i], op.as_str());
        }
        let m = BusMetrics::new();
        for op in StorageOp::ALL {
            m.storage_op(op, true);
            m.storage_op(op, false);
        }
        let text = m.render();
        for label in STORAGE_OPS {
            assert_eq!(
                sample(&text, &format!("arqon_storage_operations_total{{op=\"{label}\"}}")),
                Some(1.0),
                "{label}"
            );
            assert_eq!(sample(&text, &format!("arqon_storage_failures_total{{op=\"{label}\"}}")), Some(1.0), "{label}");
        }
    }

    #[test]
    fn records_and_renders() {
        let m = BusMetrics::new();
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.frame_received("command");
        m.message_routed(3, Some(Duration::from_micros(120)));
        m.error(ErrorCode::NotFound);
        m.command_executed("ping", "ok", Duration::from_micros(10));
        m.storage_op(StorageOp::Append, true);
        let text = m.render();
        assert_eq!(sample(&text, "arqon_connections"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "arqon_connections_opened_total"), Some(2.0));
        assert_eq!(sample(&text, r#"arqon_frames_received_total{type="command"}"#), Some(1.0));
        assert_eq!(sample(&text, "arqon_messages_delivered_total"), Some(3.0));
        // A message routed untimed counts, and adds nothing to the latency sample.
        m.message_routed(2, None);
        let text = m.render();
        assert_eq!(sample(&text, "arqon_messages_routed_total"), Some(2.0));
        assert_eq!(sample(&text, "arqon_messages_delivered_total"), Some(5.0));
        assert_eq!(sample(&text, "arqon_routing_latency_seconds_count"), Some(1.0));
        assert_eq!(sample(&text, r#"arqon_errors_total{code="NOT_FOUND"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"arqon_command_duration_seconds_count{command="ping",outcome="ok"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"arqon_storage_operations_total{op="append"}"#), Some(1.0));
    }

    #[test]
    fn every_line_is_a_comment_or_a_sample() {
        let m = BusMetrics::new();
        m.connection_opened();
        m.message_routed(2, Some(Duration::from_micros(700)));
        m.command_executed("ping", "ok", Duration::from_micros(10));
        m.error(ErrorCode::NotFound);
        let text = m.render();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
            assert!(value.parse::<f64>().is_ok(), "value of {line:?}");
            assert!(series.starts_with("arqon_"), "series of {line:?}");
            assert_eq!(series.matches('{').count(), series.matches('}').count(), "{line:?}");
        }
        // Each family's HELP and TYPE come once, before its samples.
        for family in ["arqon_routing_latency_seconds", "arqon_message_fanout", "arqon_frames_received_total"] {
            assert_eq!(text.matches(&format!("# TYPE {family} ")).count(), 1, "{family}");
        }
        assert_eq!(sample(&text, "arqon_routing_latency_seconds_count"), Some(1.0));
        assert_eq!(sample(&text, r#"arqon_routing_latency_seconds_bucket{le="0.0005"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"arqon_routing_latency_seconds_bucket{le="0.001"}"#), Some(1.0));
        assert_eq!(sample(&text, "arqon_messages_routed_total"), Some(1.0));
        assert_eq!(sample(&text, "arqon_messages_delivered_total"), Some(2.0));
        m.frame_received("message");
        m.frame_received("command");
        assert_eq!((m.messages_received(), m.messages_routed(), m.messages_delivered()), (1, 1, 2));
    }

    #[test]
    fn budgets_are_gauges_with_their_limits() {
        let m = BusMetrics::new();
        m.set_budgets(BudgetReport {
            channels: 12,
            channels_limits: [10_000, 1000, 0],
            history_bytes: 4096,
            history_bytes_limit: 1 << 28,
        });
        let text = m.render();
        assert_eq!(sample(&text, "arqon_channels"), Some(12.0), "{text}");
        assert_eq!(sample(&text, r#"arqon_channels_limit{scope="node"}"#), Some(10_000.0));
        assert_eq!(sample(&text, r#"arqon_channels_limit{scope="room"}"#), Some(1000.0));
        assert_eq!(sample(&text, r#"arqon_channels_limit{scope="connection"}"#), Some(0.0));
        assert_eq!(sample(&text, "arqon_history_bytes"), Some(4096.0));
        assert_eq!(sample(&text, "arqon_history_bytes_limit"), Some(268_435_456.0));
        // A later sample replaces the earlier one: these are gauges.
        m.set_budgets(BudgetReport { channels: 3, ..BudgetReport::default() });
        assert_eq!(sample(&m.render(), "arqon_channels"), Some(3.0));
    }

    #[test]
    fn two_buses_do_not_share_numbers() {
        let (a, b) = (BusMetrics::new(), BusMetrics::new());
        a.connection_opened();
        assert_eq!(sample(&b.render(), "arqon_connections_opened_total"), Some(0.0));
    }
}
