//! What the monitoring endpoints report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arqon_routing::Router;
use arqon_transport::{Access, Monitor, TextStream};
use serde_json::json;

use crate::observer::Telemetry;

/// The server's answers to `/ready`, `/status`, `/metrics` and `/telemetry`.
#[derive(Debug)]
pub(crate) struct BusMonitor {
    pub(crate) router: Router,
    pub(crate) telemetry: Arc<Telemetry>,
    /// True from the moment the bus accepts clients until shutdown begins.
    pub(crate) accepting: Arc<AtomicBool>,
    /// The cluster broker, if this node is part of one.
    pub(crate) broker: Option<crate::cluster::Broker>,
    /// The URL clients connect to, for `/status` (the dashboard derives the
    /// server API's address from it).
    pub(crate) url: String,
    /// Who may open the dashboard and `/telemetry`.
    pub(crate) access: Access,
}

/// Who may open the dashboard and `/telemetry`: holders of
/// `monitoring.auth_token` when it is set; else anyone on loopback, nobody
/// on another address (docs/security.md).
pub(crate) fn access(config: &arqon_config::Config) -> Access {
    let token = &config.monitoring.auth_token;
    if !token.is_empty() {
        Access::Token(token.clone())
    } else if config.monitoring_addr().ip().is_loopback() {
        Access::Open
    } else {
        Access::Closed(format!(
            "the monitoring listener is bound to {}, beyond loopback: the dashboard and /telemetry need \
             monitoring.auth_token (ARQON_MONITORING__AUTH_TOKEN) to be set",
            config.monitoring.host
        ))
    }
}

impl BusMonitor {
    fn storage(&self) -> serde_json::Value {
        let health = self.router.storage_health();
        json!({
            "backend": health.backend,
            "healthy": health.healthy,
            "journaled": health.journaled,
            "refused": health.refused,
        })
    }

    fn cluster(&self) -> Option<serde_json::Value> {
        self.broker.as_ref().map(crate::cluster::status)
    }
}

impl Monitor for BusMonitor {
    fn ready(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    fn readiness(&self) -> String {
        let ready = self.ready();
        // A degraded storage is reported, not hidden; the bus still serves.
        let mut body = json!({"status": if ready { "ready" } else { "unavailable" }, "accepting": ready, "storage": self.storage()});
        if let Some(cluster) = self.cluster() {
            body["cluster"] = cluster;
        }
        body.to_string()
    }

    fn status(&self) -> String {
        let counts = self.router.counts();
        let channels: Vec<_> = self
            .router
            .channels(None)
            .into_iter()
            .map(|c| json!({"room": c.key.room, "channel": c.key.channel, "members": c.members}))
            .collect();
        let mut body = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "url": self.url,
            "uptime_s": self.router.uptime_s(),
            "connections": counts.connections,
            "rooms": counts.rooms,
            "channels": channels,
            "messages": {
                // Messages clients got into the bus on this node: `message`
                // frames and `publish` commands alike, retries excluded.
                // (Counting `message` frames alone missed every publish.)
                "in": self.telemetry.metrics.messages_routed(),
                "out": self.telemetry.metrics.messages_delivered(),
            },
            "storage": self.storage(),
        });
        if let Some(cluster) = self.cluster() {
            body["cluster"] = cluster;
        }
        body.to_string()
    }

    fn metrics(&self) -> String {
        // Sampled at scrape time.
        let budget = self.router.backlog_budget();
        self.telemetry.metrics.set_backlog(budget.used(), budget.limit());
        let health = self.router.storage_health();
        self.telemetry.metrics.set_storage_healthy(health.healthy);
        let config = self.router.config();
        self.telemetry.metrics.set_budgets(arqon_telemetry::BudgetReport {
            channels: self.router.counts().channels,
            channels_limits: [
                config.max_channels,
                config.max_channels_per_room,
                config.max_channels_created_per_client,
            ],
            history_bytes: health.history_bytes,
            history_bytes_limit: health.history_bytes_budget,
        });
        if let Some(broker) = &self.broker {
            crate::cluster::report(&self.telemetry, broker);
        }
        self.telemetry.metrics.render()
    }

    fn access(&self) -> &Access {
        &self.access
    }

    fn telemetry(&self, query: Option<&str>) -> Result<TextStream, String> {
        let only = arqon_telemetry::parse_filter(query)?;
        Ok(Box::pin(self.telemetry.hub.subscribe(only)))
    }
}
