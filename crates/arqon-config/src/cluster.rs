//! `[cluster]`: several nodes acting as one bus over Redis (docs/cluster.md).

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::settings::{StorageBackend, rule};

/// Longest accepted `cluster.node_id`: it is part of Redis key and topic names.
const MAX_NODE_ID: usize = 64;
/// Shortest accepted `cluster.registry_ttl_ms`: heartbeats go out three times
/// per TTL, and a Redis round trip must fit well inside one interval.
const MIN_REGISTRY_TTL_MS: u64 = 500;

/// `[cluster]`: off by default; one node with no Redis is a complete bus.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Whether this node joins the other nodes sharing its Redis. Needs
    /// `storage.backend = "redis"` (history is shared through it).
    /// Default: `false`.
    pub enabled: bool,
    /// This node's name in the cluster: letters, digits, `-`, `_` and `.`,
    /// at most 64. Empty: a fresh one is generated at every start.
    /// Default: empty.
    pub node_id: String,
    /// The Redis carrying cross-node traffic, as `redis://…`. Empty: the
    /// storage one (`storage.redis.url`). Keys and topics use
    /// `storage.redis.key_prefix`. Default: empty.
    pub redis_url: String,
    /// Milliseconds after its last heartbeat at which a silent node counts
    /// as dead: its clients and memberships disappear from the other nodes.
    /// Heartbeats go out every third of it. At least 500. Default: `10000`.
    pub registry_ttl_ms: u64,
    /// Deliveries queued for other nodes while Redis is slow; past it the
    /// cross-node copy is dropped and counted (local delivery and history are
    /// unaffected). At least 1. Default: `65536`.
    pub forward_queue: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: String::new(),
            redis_url: String::new(),
            registry_ttl_ms: 10_000,
            forward_queue: 65_536,
        }
    }
}

impl ClusterConfig {
    /// The rules of `[cluster]`, checked even while it is off.
    pub(crate) fn validate(&self, backend: StorageBackend) -> Result<(), ConfigError> {
        rule(
            !self.enabled || backend == StorageBackend::Redis,
            "cluster.enabled",
            self.enabled,
            "needs storage.backend = \"redis\": the nodes share history through it",
        )?;
        rule(
            self.node_id.len() <= MAX_NODE_ID
                && self.node_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
            "cluster.node_id",
            format!("{:?}", self.node_id),
            "must be at most 64 letters, digits, '-', '_' or '.' (empty: generated)",
        )?;
        rule(
            self.redis_url.is_empty() || self.redis_url.starts_with("redis://"),
            "cluster.redis_url",
            format!("{:?}", self.redis_url),
            "must be empty (use storage.redis.url) or start with redis://",
        )?;
        rule(
            self.registry_ttl_ms >= MIN_REGISTRY_TTL_MS,
            "cluster.registry_ttl_ms",
            self.registry_ttl_ms,
            "must be at least 500",
        )?;
        rule(self.forward_queue >= 1, "cluster.forward_queue", self.forward_queue, "must be at least 1")
    }
}
