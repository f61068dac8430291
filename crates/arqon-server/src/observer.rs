//! Turns bus events into metrics and telemetry events.

use arqon_routing::{BusEvent, Observer};
use arqon_telemetry::{BusMetrics, TelemetryHub};
use serde_json::json;

/// The server's observer: every bus event updates the metrics (atomics) and,
/// only while someone watches, becomes a telemetry event.
#[derive(Debug)]
pub(crate) struct Telemetry {
    pub(crate) metrics: BusMetrics,
    pub(crate) hub: TelemetryHub,
}

impl Telemetry {
    pub(crate) fn new(telemetry_buffer: usize) -> Self {
        Telemetry { metrics: arqon_telemetry::BusMetrics::new(), hub: TelemetryHub::new(telemetry_buffer) }
    }
}

impl Observer for Telemetry {
    fn observe(&self, event: &BusEvent<'_>) {
        // Asked where an event may be published: most events a busy bus
        // sees (frames, routed messages) only count.
        let observed = || self.hub.is_observed();
        match *event {
            BusEvent::ConnectionOpened { client_id, role } => {
                self.metrics.connection_opened();
                if observed() {
                    self.hub.publish("connection_opened", json!({"client_id": client_id, "role": role}));
                }
            }
            BusEvent::ConnectionClosed { client_id } => {
                self.metrics.connection_closed();
                if observed() {
                    self.hub.publish("connection_closed", json!({"client_id": client_id}));
                }
            }
            BusEvent::FrameReceived { kind } => {
                self.metrics.frame_received(kind.as_str());
            }
            BusEvent::MessageRouted { room, channel, fanout, bytes, latency } => {
                self.metrics.message_routed(fanout, latency);
                if observed() {
                    self.hub.publish(
                        "message_routed",
                        json!({
                            "room": room.map(|r| r.as_str()),
                            "channel": channel.map(|c| c.as_str()),
                            "fanout": fanout,
                            "bytes": bytes,
                            // Every message is timed while the stream is watched;
                            // null for one routed just before a watcher came.
                            "latency_us": latency.map(|l| u64::try_from(l.as_micros()).unwrap_or(u64::MAX)),
                        }),
                    );
                }
            }
            BusEvent::CommandExecuted { command, error, duration } => {
                let outcome = error.map_or("ok", |code| code.as_str());
                self.metrics.command_executed(command, outcome, duration);
                if observed() {
                    self.hub.publish(
                        "command_executed",
                        json!({
                            "command": command,
                            "outcome": outcome,
                            "duration_us": u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
                        }),
                    );
                }
            }
            BusEvent::Error { client_id, code } => {
                self.metrics.error(code);
                if observed() {
                    self.hub.publish("error", json!({"client_id": client_id, "code": code.as_str()}));
                }
            }
            BusEvent::RateLimited { client_id } => {
                self.metrics.rate_limited();
                if observed() {
                    self.hub.publish("rate_limited", json!({"client_id": client_id}));
                }
            }
            BusEvent::SlowConsumer { client_id, cause } => {
                self.metrics.slow_consumer(cause.as_str());
                if observed() {
                    self.hub.publish("slow_consumer", json!({"client_id": client_id, "cause": cause.as_str()}));
                }
            }
            BusEvent::ChannelCreated { key } => {
                if observed() {
                    self.hub.publish("channel_created", json!({"room": key.room, "channel": key.channel}));
                }
            }
            BusEvent::ChannelDeleted { key } => {
                if observed() {
                    self.hub.publish("channel_deleted", json!({"room": key.room, "channel": key.channel}));
                }
            }
            // For webhooks (crate::webhooks); the member events clients get
            // already say the same.
            BusEvent::MemberAdded { .. } | BusEvent::MemberRemoved { .. } | BusEvent::MessagePublished { .. } => {}
        }
    }
}

/// Reports every event to the telemetry and to the webhooks, if on.
#[derive(Debug)]
pub(crate) struct BusObserver {
    /// None while monitoring is off (nothing would read the numbers).
    pub(crate) telemetry: Option<std::sync::Arc<Telemetry>>,
    pub(crate) webhooks: Option<crate::webhooks::WebhookSink>,
}

impl Observer for BusObserver {
    fn observe(&self, event: &BusEvent<'_>) {
        if let Some(telemetry) = &self.telemetry {
            telemetry.observe(event);
        }
        if let Some(webhooks) = &self.webhooks {
            webhooks.observe(event);
        }
    }

    /// While the telemetry stream is watched: each `message_routed` event
    /// carries its own latency.
    fn times_every_message(&self) -> bool {
        self.telemetry.as_ref().is_some_and(|telemetry| telemetry.hub.is_observed())
    }
}
