//! ArqonBus clustering: several nodes sharing one Redis act as one bus.
//!
//! This layer owns [`RedisBroker`], the Redis implementation of the
//! routing layer's [`Broker`](arqon_routing::Broker) seam: live cross-node
//! fan-out over Redis pub/sub (one topic per channel and per room, which a
//! node subscribes to only while it has local members there, plus one topic
//! per node for direct messages), a client → node registry and per-node
//! member counts (Redis sets and hashes refreshed by heartbeats, mirrored in
//! memory from announcements on a control topic), and node liveness. History
//! is not its business: the nodes share it through the Redis storage backend.
//! Forwarded channel messages carry their position in that history, which
//! the router uses to deliver in history order; after an outage this layer
//! has the router check each channel's history for what was missed
//! ([`Router::catch_up`](arqon_routing::Router::catch_up)).
//!
//! It knows routing's public API and Redis, nothing of sockets, configuration
//! files or metrics exporters: the server reads [`RedisBroker::health`] for
//! status, metrics and telemetry. It sits beside the storage crate's Redis
//! code rather than inside it because it needs the router, which storage
//! must not know. docs/cluster.md describes the design and its guarantees.
//!
//! Being Redis through and through, this crate has no `redis` feature of
//! its own: `arqon-server` depends on it only with its `redis` feature, so
//! a build without Redis leaves this crate (and `fred`) out altogether.
//!
//! # Layout
//!
//! - `broker`: [`RedisBroker`], the synchronous side the router calls
//!   (bounded queues, the cached view).
//! - `actions`: the server API's actions on clients of other nodes, as
//!   requests with answers.
//! - `ledger`: who is in each channel on any node, for webhooks
//!   ([`Ledger`]).
//! - `presence`: rewriting this node's presence entries, removing a dead
//!   node's.
//! - `node`: the background tasks that talk to Redis ([`ClusterHandle`]).
//! - `view`: the other nodes as last heard: clients, counts, liveness.
//! - `wire`: topic and key names, forwarded-frame framing, control messages.

mod actions;
mod broker;
mod ledger;
mod node;
mod presence;
mod view;
mod wire;

use std::time::Duration;

pub use broker::RedisBroker;
pub use ledger::{Ledger, Member, Transition};
pub use node::ClusterHandle;

/// How a node joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The Redis carrying cross-node traffic, `redis://…`.
    pub url: String,
    /// Prefix of every key and topic (the storage one, so one prefix names one bus).
    pub key_prefix: String,
    /// This node's id; empty generates one.
    pub node_id: String,
    /// A node silent this long is dead; heartbeats go out every third of it.
    pub registry_ttl: Duration,
    /// Deliveries queued for other nodes at most.
    pub forward_queue: usize,
    /// How long start-up waits for Redis (past it the node starts cut off).
    pub connect_timeout: Duration,
    /// Longest one Redis command may take.
    pub command_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "arqon:".to_owned(),
            node_id: String::new(),
            registry_ttl: Duration::from_secs(10),
            forward_queue: 65_536,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(1),
        }
    }
}

/// What the cluster layer reports: for `/status`, metrics and telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHealth {
    /// This node's id.
    pub node_id: String,
    /// Whether Redis answers: while false, cross-node delivery is paused and
    /// each node serves its own clients.
    pub healthy: bool,
    /// Other nodes alive, sorted.
    pub peers: Vec<String>,
    /// Deliveries sent to other nodes.
    pub forwarded: u64,
    /// Deliveries received from other nodes.
    pub received: u64,
    /// Deliveries not sent to other nodes (queue full, Redis down, unknown
    /// recipient) or lost on the way in (receiver lagging).
    pub dropped: u64,
}

/// Everything that can go wrong setting up the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Settings that can never work (a URL that does not parse, a bad node id).
    #[error("cluster: {0}")]
    Config(String),
    /// Redis refused or failed a command.
    #[error("cluster: redis: {0}")]
    Redis(String),
}

impl From<fred::error::Error> for ClusterError {
    fn from(error: fred::error::Error) -> Self {
        ClusterError::Redis(error.details().to_owned())
    }
}
