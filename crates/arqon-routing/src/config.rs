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
    /// Bytes of frames queued towards one client at most (every frame kind);
    /// past it the client is closed with 1008 "slow consumer"; 0: no bound.
    /// Reported in `welcome`. Default: 64 MiB.
    pub max_backlog_bytes: usize,
    /// Bytes all clients' backlogs may hold together, each shared frame
    /// counted once; past it the largest backlogs are closed first (1008);
    /// 0: no budget. Default: 1 GiB.
    pub backlog_budget_bytes: usize,
    /// Member events are sent only while a channel has at most this many
    /// members. Default: 1000.
    pub member_events_max: usize,
    /// Member events each channel may send; past it they are counted and
    /// summed up in one `members_changed` event a second later.
    /// Default: 20 per second, burst 50.
    pub member_event_rate: RateLimit,
    /// Direct messages one client may receive, from all senders together;
    /// past it senders get `RATE_LIMITED` (`rate_per_s` 0: unlimited).
    /// Default: 100 per second, burst 200.
    pub direct_rate: RateLimit,
    /// A direct message to a client whose backlog already holds this many
    /// bytes is refused to its sender (`RATE_LIMITED`) instead of queued, so
    /// that no sender can make a recipient a slow consumer; 0: never.
    /// Default: 1 MiB.
    pub direct_backlog_bytes: usize,
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
    /// Channels on this node at most; creating one more fails with
    /// `FORBIDDEN`. 0: no limit. Default: 10000.
    pub max_channels: usize,
    /// Options per room (history, presence, member events, roles,
    /// auto-create). Default: none, every room as configured above.
    pub rooms: crate::RoomRules,
    /// Channels in one room at most; creating one more fails with
    /// `FORBIDDEN`. 0: no limit. Default: 1000.
    pub max_channels_per_room: usize,
    /// Channels one connection may create, explicitly or by auto-create,
    /// over its life; past it creating fails with `FORBIDDEN`. 0: no limit.
    /// Default: 1000.
    pub max_channels_created_per_client: usize,
    /// How long an auto-created channel with no members and no kept history
    /// stays before [`Router::run_reclaim`](crate::Router::run_reclaim)
    /// removes it; zero: never. Default: 300 s.
    pub idle_reclaim: Duration,
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
            max_backlog_bytes: 64 * 1024 * 1024,
            backlog_budget_bytes: 1024 * 1024 * 1024,
            member_events_max: 1000,
            member_event_rate: RateLimit { rate_per_s: 20, burst: 50 },
            direct_rate: RateLimit { rate_per_s: 100, burst: 200 },
            direct_backlog_bytes: 1024 * 1024,
            max_message_bytes: 1_048_576,
            heartbeat_s: 20,
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            role_rates: BTreeMap::new(),
            bytes_per_s: 1 << 20,
            bytes_burst: 4 << 20,
            abuse_limit: 100,
            abuse_window: Duration::from_secs(10),
            expiry_grace: Duration::from_secs(2),
            max_channels: 10_000,
            max_channels_per_room: 1000,
            rooms: crate::RoomRules::default(),
            max_channels_created_per_client: 1000,
            idle_reclaim: Duration::from_secs(300),
        }
    }
}
