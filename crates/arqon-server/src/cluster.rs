//! Turns the `[cluster]` section into a started broker, and reports its
//! health to metrics, telemetry and the log.

use std::time::Duration;

use arqon_cluster::{ClusterHealth, ClusterOptions, RedisBroker};
use arqon_config::Config;
use arqon_telemetry::ClusterReport;
use serde_json::json;

use crate::ServerError;
use crate::observer::Telemetry;

/// Connects the cluster broker if `cluster.enabled` (it shares the storage's
/// key prefix and, unless `cluster.redis_url` is set, its Redis).
pub(crate) async fn open_broker(config: &Config) -> Result<Option<RedisBroker>, ServerError> {
    let cluster = &config.cluster;
    if !cluster.enabled {
        return Ok(None);
    }
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
    Ok(Some(RedisBroker::connect(options).await?))
}

/// The cluster part of `/status` and `/ready`.
pub(crate) fn status(health: &ClusterHealth) -> serde_json::Value {
    json!({
        "node_id": health.node_id,
        "healthy": health.healthy,
        "peers": health.peers,
        "forwarded": health.forwarded,
        "received": health.received,
        "dropped": health.dropped,
    })
}

/// Copies the broker's numbers into the metrics.
pub(crate) fn report(telemetry: &Telemetry, health: &ClusterHealth) {
    telemetry.metrics.set_cluster(ClusterReport {
        healthy: health.healthy,
        peers: health.peers.len(),
        forwarded: health.forwarded,
        received: health.received,
        dropped: health.dropped,
    });
}

/// Logs and streams a change of the cluster's health.
pub(crate) fn transition(telemetry: &Telemetry, health: &ClusterHealth) {
    let event = if health.healthy { "cluster_recovered" } else { "cluster_degraded" };
    if health.healthy {
        tracing::info!(node = %health.node_id, peers = health.peers.len(), "cluster reachable");
    } else {
        tracing::warn!(node = %health.node_id, "cluster unreachable; serving local clients only");
    }
    telemetry.hub.publish(event, json!({"node_id": health.node_id, "peers": health.peers}));
}
