//! Turns the `[cluster]` section into a started broker, and reports its
//! health to metrics, telemetry and the log.
//!
//! The broker is Redis pub/sub (`arqon-cluster`), so clustering exists only
//! with the `redis` feature. Without it, [`Broker`] and [`Handle`] are
//! uninhabited: the rest of the server keeps one code path, and
//! `cluster.enabled = true` fails start-up ([`ServerError::NotBuiltIn`]).

use arqon_config::Config;

use crate::ServerError;

#[cfg(feature = "redis")]
pub(crate) use with_redis::*;
#[cfg(not(feature = "redis"))]
pub(crate) use without_redis::*;

/// Connects the cluster broker if `cluster.enabled` (it shares the storage's
/// key prefix and, unless `cluster.redis_url` is set, its Redis).
pub(crate) async fn open_broker(config: &Config) -> Result<Option<Broker>, ServerError> {
    if !config.cluster.enabled {
        return Ok(None);
    }
    connect(config).await.map(Some)
}

#[cfg(feature = "redis")]
mod with_redis {
    use std::sync::Arc;
    use std::time::Duration;

    use arqon_cluster::{ClusterHealth, ClusterOptions};
    use arqon_config::Config;
    use arqon_routing::Router;
    use arqon_telemetry::ClusterReport;
    use serde_json::json;

    use std::future::Future;
    use std::pin::Pin;

    use arqon_protocol::ChannelKey;

    use crate::ServerError;
    use crate::observer::Telemetry;
    use crate::webhooks::{Change, ClusterMembership, Member, Membership};

    /// This node's link to the others.
    pub(crate) type Broker = arqon_cluster::RedisBroker;
    /// The running broker's tasks, stopped at shutdown.
    pub(crate) type Handle = arqon_cluster::ClusterHandle;

    pub(super) async fn connect(config: &Config) -> Result<Broker, ServerError> {
        let cluster = &config.cluster;
        let redis = &config.storage.redis;
        let url = if cluster.redis_url.is_empty() { redis.url.clone() } else { cluster.redis_url.clone() };
        let options = ClusterOptions {
            url,
            key_prefix: redis.key_prefix.clone(),
            node_id: cluster.node_id.clone(),
            registry_ttl: Duration::from_millis(cluster.registry_ttl_ms),
            forward_queue: cluster.forward_queue,
            connect_timeout: Duration::from_millis(redis.connect_timeout_ms),
            command_timeout: Duration::from_millis(redis.command_timeout_ms),
        };
        Ok(Broker::connect(options).await?)
    }

    /// The broker as the router sees it.
    pub(crate) fn for_router(broker: &Broker) -> Arc<dyn arqon_routing::Broker> {
        Arc::new(broker.clone())
    }

    /// Joins the cluster (when Redis answers) and starts forwarding.
    pub(crate) async fn start(broker: &Broker, router: Router) -> Handle {
        broker.start(router).await
    }

    /// Leaves the cluster: the other nodes forget this one's clients at once.
    pub(crate) async fn shutdown(handle: Handle) {
        handle.shutdown().await;
    }

    /// This node's id.
    pub(crate) fn node_id(broker: &Broker) -> &str {
        broker.node_id()
    }

    /// The cluster's ledger, for webhooks that fire once per cluster.
    pub(crate) fn membership(broker: &Broker) -> ClusterMembership {
        let (ledger, mut transitions) = broker.ledger();
        let (found_tx, found) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(transition) = transitions.recv().await {
                if found_tx.send(change(transition)).await.is_err() {
                    return;
                }
            }
        });
        ClusterMembership { judge: Box::new(LedgerJudge(ledger)), found }
    }

    #[derive(Debug)]
    struct LedgerJudge(arqon_cluster::Ledger);

    impl Membership for LedgerJudge {
        fn judge<'a>(
            &'a self,
            key: &'a ChannelKey,
            member: &'a Member,
            present: bool,
        ) -> Pin<Box<dyn Future<Output = Result<Option<Change>, String>> + Send + 'a>> {
            Box::pin(async move {
                let member = match member {
                    Member::User(user) => arqon_cluster::Member::User(user.clone()),
                    Member::Client(id) => arqon_cluster::Member::Client(*id),
                };
                let judged = if present { self.0.enter(key, &member).await } else { self.0.leave(key, &member).await };
                judged.map(|t| t.map(change)).map_err(|e| e.to_string())
            })
        }
    }

    fn change(transition: arqon_cluster::Transition) -> Change {
        let member = match transition.member {
            arqon_cluster::Member::User(user) => Member::User(user),
            arqon_cluster::Member::Client(id) => Member::Client(id),
        };
        Change { key: transition.key, member, present: transition.present, channel: transition.channel }
    }

    /// The cluster part of `/status` and `/ready`.
    pub(crate) fn status(broker: &Broker) -> serde_json::Value {
        let health = broker.health();
        json!({
            "node_id": health.node_id,
            "healthy": health.healthy,
            "peers": health.peers,
            "forwarded": health.forwarded,
            "received": health.received,
            "dropped": health.dropped,
        })
    }

    /// Copies the broker's numbers into the metrics; returns whether it is
    /// healthy.
    pub(crate) fn report(telemetry: &Telemetry, broker: &Broker) -> bool {
        let health = broker.health();
        report_health(telemetry, &health);
        health.healthy
    }

    fn report_health(telemetry: &Telemetry, health: &ClusterHealth) {
        telemetry.metrics.set_cluster(ClusterReport {
            healthy: health.healthy,
            peers: health.peers.len(),
            forwarded: health.forwarded,
            received: health.received,
            dropped: health.dropped,
        });
    }

    /// Reports the broker's numbers, and logs and streams a change of its
    /// health since `last` (which it updates).
    pub(crate) fn watch(telemetry: &Telemetry, broker: &Broker, last: &mut Option<bool>) {
        let health = broker.health();
        report_health(telemetry, &health);
        if *last == Some(health.healthy) {
            return;
        }
        *last = Some(health.healthy);
        let event = if health.healthy { "cluster_recovered" } else { "cluster_degraded" };
        if health.healthy {
            tracing::info!(node = %health.node_id, peers = health.peers.len(), "cluster reachable");
        } else {
            tracing::warn!(node = %health.node_id, "cluster unreachable; serving local clients only");
        }
        telemetry.hub.publish(event, json!({"node_id": health.node_id, "peers": health.peers}));
    }
}

#[cfg(not(feature = "redis"))]
mod without_redis {
    use std::sync::Arc;

    use arqon_config::Config;
    use arqon_routing::Router;

    use crate::ServerError;
    use crate::observer::Telemetry;

    /// No broker exists in a build without the `redis` feature.
    #[derive(Debug, Clone)]
    pub(crate) enum Broker {}
    /// No running broker either.
    #[derive(Debug)]
    pub(crate) enum Handle {}

    pub(crate) fn for_router(broker: &Broker) -> Arc<dyn arqon_routing::Broker> {
        match *broker {}
    }

    pub(super) async fn connect(_config: &Config) -> Result<Broker, ServerError> {
        Err(ServerError::NotBuiltIn { setting: "cluster.enabled = true" })
    }

    pub(crate) async fn start(broker: &Broker, _router: Router) -> Handle {
        match *broker {}
    }

    pub(crate) async fn shutdown(handle: Handle) {
        match handle {}
    }

    pub(crate) fn node_id(broker: &Broker) -> &str {
        match *broker {}
    }

    pub(crate) fn status(broker: &Broker) -> serde_json::Value {
        match *broker {}
    }

    pub(crate) fn membership(broker: &Broker) -> crate::webhooks::ClusterMembership {
        match *broker {}
    }

    pub(crate) fn report(_telemetry: &Telemetry, broker: &Broker) -> bool {
        match *broker {}
    }

    pub(crate) fn watch(_telemetry: &Telemetry, broker: &Broker, _last: &mut Option<bool>) {
        match *broker {}
    }
}
