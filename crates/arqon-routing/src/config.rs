use std::collections::BTreeMap;
use std::time::Duration;

use arqon_protocol::Role;

/// A token-bucket rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Frames per second; 0 means unlimited.
    pub rate_per_s: u32,
    /// Frames at once above the rate.
    pub burst: u32,
}

/// Limits and policies of one router. Plain data; the server fills it from
/// the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Publishing to (and, for role `user` and above, joining) a missing
    /// channel creates it. Default: true.
    pub auto_create: bool,
    /// Frames per second per client; 0 means unlimited. Default: 100.
    pub rate_per_s: u32,
    /// Frames a client may send at once before the rate applies. Default: 200.
    pub burst: u32,
    /// Outbound queue capacity per client, in frames. Default: 1024.
    pub outbound_queue: usize,
    /// Member events are sent only while a channel has at most this many
    /// members. Default: 1000.
    pub member_events_max: usize,
    /// Largest frame a client may send; reported in `welcome`. Default: 1 MiB.
    pub max_message_bytes: usize,
    /// Heartbeat interval; reported in `welcome`. Default: 20.
    pub heartbeat_s: u64,
    /// Reported in `welcome` and `status`. Default: this crate's version.
    pub server_version: String,
    /// Per-role overrides of `rate_per_s`/`burst`. Default: none.
    pub role_rates: BTreeMap<Role, RateLimit>,
    /// Payload bytes per second per client, counted over every frame it
    /// sends (text and binary); 0 means unlimited. Default: 1 MiB.
    pub bytes_per_s: u64,
    /// Bytes a client may send at once before `bytes_per_s` applies; a
    /// single frame larger than this passes when the client's byte budget
    /// is full. Default: 4 MiB.
    pub bytes_burst: u64,
    /// Refusals (over the frame or byte rate) after which a client is closed
    /// with 1008; 0: never. Counted over a sliding window: the count drains
    /// at `abuse_limit` per `abuse_window`, so `abuse_limit` refusals in
    /// quick succession, or refusals arriving steadily faster than
    /// `abuse_limit` per `abuse_window`, close the client. Default: 100.
    pub abuse_limit: u32,
    /// The window of `abuse_limit`. Default: 10 s.
    pub abuse_window: Duration,
    /// Time between `token_expired` and the close. Default: 2 s.
    pub expiry_grace: Duration,
}

impl RouterConfig {
    /// The rate that applies to `role`.
    pub fn rate_for(&self, role: Role) -> RateLimit {
        self.role_rates.get(&role).copied().unwrap_or(RateLimit { rate_per_s: self.rate_per_s, burst: self.burst })
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            auto_create: true,
            rate_per_s: 100,
            burst: 200,
            outbound_queue: 1024,
            member_events_max: 1000,
            max_message_bytes: 1_048_576,
            heartbeat_s: 20,
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            role_rates: BTreeMap::new(),
            bytes_per_s: 1 << 20,
            bytes_burst: 4 << 20,
            abuse_limit: 100,
            abuse_window: Duration::from_secs(10),
            expiry_grace: Duration::from_secs(2),
        }
    }
}
