//! The settings themselves: plain serde data, their defaults, and the rules
//! that tie fields together.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::cluster::ClusterConfig;
use crate::security::{AuthConfig, AuthMode, JwtAlgorithm, MIN_HS256_SECRET_BYTES, RoleRates, TlsSettings};

/// Smallest accepted `limits.max_message_bytes`: room for an envelope with a
/// short payload, so a typo such as `1` cannot make every frame too large.
const MIN_MESSAGE_BYTES: usize = 256;
/// Largest accepted `limits.max_message_bytes` (64 MiB): each connection may
/// buffer a frame this large, so the cap bounds memory per client.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Smallest accepted `limits.max_backlog_bytes`: below this an ordinary
/// burst of events and responses, or one large message, would close healthy
/// clients as slow consumers.
const MIN_BACKLOG_BYTES: usize = 64 * 1024;
/// Longest accepted `server.shutdown_grace_ms`: a stop that hangs for over a
/// minute outlives the patience of every process supervisor.
const MAX_SHUTDOWN_GRACE_MS: u64 = 60_000;
/// Most accepted `storage.redis.pool_size`: each connection costs Redis a
/// client slot, and the bus gains nothing from more.
const MAX_REDIS_POOL: usize = 64;

/// All ArqonBus settings, one field per `[section]` of the TOML file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the bus listens and how it keeps connections alive. Default: see [`ServerConfig`].
    pub server: ServerConfig,
    /// Per-client and per-channel limits (PROTOCOL.md section 7). Default: see [`LimitsConfig`].
    pub limits: LimitsConfig,
    /// How channels come into existence. Default: see [`ChannelsConfig`].
    pub channels: ChannelsConfig,
    /// WebSocket compression (permessage-deflate). Default: see [`CompressionConfig`].
    pub compression: CompressionConfig,
    /// Roles given to clients. Default: see [`AuthConfig`].
    pub auth: AuthConfig,
    /// Where channel history is kept. Default: see [`StorageConfig`].
    pub storage: StorageConfig,
    /// The HTTP monitoring listener. Default: see [`MonitoringConfig`].
    pub monitoring: MonitoringConfig,
    /// TLS for the WebSocket listener. Default: off.
    pub tls: TlsSettings,
    /// Several nodes acting as one bus over Redis. Default: off.
    pub cluster: ClusterConfig,
    /// The server API's keys (`[[api.keys]]`). Default: none.
    pub api: crate::api::ApiConfig,
    /// The application's connect hook (`[hooks]`). Default: off.
    pub hooks: crate::hooks::HooksConfig,
    /// Signed event batches to the application (`[webhooks]`). Default: off.
    pub webhooks: crate::webhooks::WebhooksConfig,
    /// Options per room, by name or `*` glob (`[rooms."chat-*"]`).
    /// Default: none.
    pub rooms: std::collections::BTreeMap<String, crate::rooms::RoomConfig>,
}

/// `[monitoring]`: health, readiness, status, metrics and telemetry over HTTP.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Whether the monitoring listener runs at all; when off, metrics and
    /// telemetry are not collected either. Default: `true`.
    pub enabled: bool,
    /// IP address of the monitoring listener; keep it private: `/health`,
    /// `/ready`, `/status` and `/metrics` are unauthenticated. Default: `127.0.0.1`.
    pub host: String,
    /// TCP port of the monitoring listener; `0` picks any free port. Default: `9101`.
    pub port: u16,
    /// Telemetry events buffered for observers; one that falls further behind
    /// misses the oldest and gets a `dropped` event. At least 1. Default: `4096`.
    pub telemetry_buffer: usize,
    /// The credential the dashboard (`/`) and `/telemetry` require
    /// (`Authorization: Bearer` or `?token=`): empty, or at least 16
    /// characters without spaces. Empty: they are open while `host` is a
    /// loopback address and refused otherwise. Default: empty.
    pub auth_token: String,
}

/// The shortest `monitoring.auth_token` accepted.
pub(crate) const MIN_MONITORING_TOKEN_CHARS: usize = 16;

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".to_owned(),
            port: 9101,
            telemetry_buffer: 4096,
            auth_token: String::new(),
        }
    }
}

/// `[server]`: the listening socket and connection lifecycle.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// IP address to listen on (an IP literal such as `0.0.0.0` or `::`; host
    /// names are not resolved). Default: `127.0.0.1`.
    pub host: String,
    /// TCP port to listen on; `0` picks any free port. Default: `9100`.
    pub port: u16,
    /// Seconds between WebSocket pings; a client silent for two intervals is
    /// closed. At least 1. Default: `20`.
    pub heartbeat_s: u64,
    /// Milliseconds that connections get to drain on shutdown before they are
    /// dropped. At most 60000. Default: `5000`.
    pub shutdown_grace_ms: u64,
    /// Milliseconds a client has to complete TLS and the WebSocket upgrade
    /// (defeats half-open "slowloris" connections). At least 100. Default: `10000`.
    pub upgrade_timeout_ms: u64,
    /// Open connections at most; over it upgrades get HTTP 503. 0: no limit.
    /// Default: `100000`.
    pub max_connections: usize,
    /// Open connections per client IP at most; over it upgrades get HTTP 429.
    /// 0: no limit. Default: `1000`.
    pub max_connections_per_ip: usize,
    /// Browser origins (`https://app.example`) allowed to open a WebSocket;
    /// `*` allows any. Empty: no origin check. Requests without an `Origin`
    /// header (non-browser clients) always pass. Default: empty.
    pub allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 9100,
            heartbeat_s: 20,
            shutdown_grace_ms: 5000,
            upgrade_timeout_ms: 10_000,
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            allowed_origins: Vec::new(),
        }
    }
}

/// `[limits]`: what one client or one channel may use.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest frame a client may send, in bytes; larger ones get
    /// `MESSAGE_TOO_LARGE` and close 1009. Between 256 and 67108864 (64 MiB).
    /// Default: `1048576` (1 MiB).
    pub max_message_bytes: usize,
    /// Frames per second each client may send; `0` means unlimited.
    /// Default: `100`.
    pub rate_per_s: u32,
    /// Frames a client may send at once above its steady rate. At least 1
    /// while `rate_per_s` is above 0. Default: `200`.
    pub burst: u32,
    /// Bytes of frames queued towards one client at most (PROTOCOL.md
    /// section 8.1); a client whose backlog would grow past it is closed as a
    /// slow consumer (1008). At least 65536 and at least
    /// `max_message_bytes`. Default: `67108864` (64 MiB).
    pub max_backlog_bytes: usize,
    /// A client whose backlog is not empty and whose socket accepts no byte
    /// for this long is closed as a slow consumer (1008); 0: never. Default:
    /// `10000` (10 s).
    pub write_timeout_ms: u64,
    /// Bytes all clients' backlogs may hold together, each frame shared by
    /// several clients counted once; past it, the clients with the largest
    /// backlogs are closed (1008) until the total is under it again; 0: no
    /// budget. Default: `1073741824` (1 GiB).
    pub backlog_budget_bytes: usize,
    /// Largest channel, in members, that still gets `member_joined` and
    /// `member_left` events. Default: `1000`.
    pub member_events_max: usize,
    /// Member events each channel sends per second at most; past it (and
    /// `member_events_burst`) they are counted and summed up in one
    /// `members_changed` event a second later; 0: no limit. Default: `20`.
    pub member_events_per_s: u32,
    /// Member events a channel may send at once above its steady rate.
    /// Default: `50`.
    pub member_events_burst: u32,
    /// Direct messages one client may receive per second, from all senders
    /// together; past it (and `direct_burst`) senders get `RATE_LIMITED`;
    /// 0: no limit. Default: `100`.
    pub direct_per_s: u32,
    /// Direct messages a client may receive at once above the steady rate.
    /// Default: `200`.
    pub direct_burst: u32,
    /// A direct message to a client whose backlog already holds this many
    /// bytes is refused to its sender (`RATE_LIMITED`) instead of queued, so
    /// that senders cannot make a recipient a slow consumer; 0: never.
    /// Default: `1048576` (1 MiB).
    pub direct_backlog_bytes: usize,
    /// Messages of history kept per channel. At least 1. Default: `1000`.
    pub history_per_channel: usize,
    /// Bytes of history kept per channel by the memory backend (frames plus
    /// 96 bytes each); past it the channel's oldest messages go. At least
    /// `max_message_bytes`. Default: `8388608` (8 MiB).
    pub history_bytes_per_channel: usize,
    /// Bytes of history kept over all channels by the memory backend; past
    /// it the oldest messages of the largest channels go. At least
    /// `history_bytes_per_channel`. Default: `268435456` (256 MiB).
    pub history_bytes_total: usize,
    /// Channels on this node at most; over it creating one fails with
    /// `FORBIDDEN`. 0: no limit. Default: `10000`.
    pub max_channels: usize,
    /// Channels in one room at most; over it creating one fails with
    /// `FORBIDDEN`. 0: no limit. Default: `1000`.
    pub max_channels_per_room: usize,
    /// Channels one connection may create (explicitly or by auto-create)
    /// over its life; past it creating fails with `FORBIDDEN`. 0: no limit.
    /// Default: `1000`.
    pub max_channels_created_per_client: usize,
    /// Payload bytes per second each client may send, over all its frames
    /// (text, binary, pings); `0` means unlimited. Default: `1048576` (1 MiB).
    pub bytes_per_s: u64,
    /// Bytes a client may send at once above `bytes_per_s`; a single frame
    /// larger than this passes when the client's byte budget is full. At
    /// least 1 while `bytes_per_s` is above 0. Default: `4194304` (4 MiB).
    pub bytes_burst: u64,
    /// Refusals (frames over the frame or byte rate) after which a client is
    /// closed with 1008 (repeated abuse); 0: never. A sliding count: it
    /// drains at `abuse_limit` per `abuse_window_s`, so `abuse_limit`
    /// refusals in quick succession, or refusals arriving steadily faster
    /// than that, close the client. Default: `100`.
    pub abuse_limit: u32,
    /// The window of `abuse_limit`, in seconds. At least 1. Default: `10`.
    pub abuse_window_s: u64,
    /// Per-role rate overrides, e.g. `[limits.roles.guest]` with `rate_per_s`
    /// and `burst`; a role not listed uses `rate_per_s` and `burst`.
    /// Default: none.
    pub roles: RoleRates,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            rate_per_s: 100,
            burst: 200,
            max_backlog_bytes: 64 << 20,
            write_timeout_ms: 10_000,
            backlog_budget_bytes: 1 << 30,
            member_events_max: 1000,
            member_events_per_s: 20,
            member_events_burst: 50,
            direct_per_s: 100,
            direct_burst: 200,
            direct_backlog_bytes: 1 << 20,
            history_per_channel: 1000,
            history_bytes_per_channel: 8 << 20,
            history_bytes_total: 256 << 20,
            max_channels: 10_000,
            max_channels_per_room: 1000,
            max_channels_created_per_client: 1000,
            bytes_per_s: 1 << 20,
            bytes_burst: 4 << 20,
            abuse_limit: 100,
            abuse_window_s: 10,
            roles: RoleRates::new(),
        }
    }
}

/// `[channels]`: channel lifecycle.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    /// Whether publishing to or joining a missing channel creates it (else
    /// `NOT_FOUND`). Default: `true`.
    pub auto_create: bool,
    /// Seconds after which an auto-created channel with no members and no
    /// kept history is removed; channels made with `create_channel` stay.
    /// 0: never. Default: `300`.
    pub idle_reclaim_s: u64,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        Self { auto_create: true, idle_reclaim_s: 300 }
    }
}

/// `[compression]`: permessage-deflate (RFC 7692) for clients that offer it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Whether a client's offer of permessage-deflate is accepted. Default: `true`.
    pub enabled: bool,
    /// Frames shorter than this go out uncompressed. Default: `512`.
    pub min_bytes: usize,
    /// deflate level, 1 (fastest) to 9 (smallest). Default: `1`.
    pub level: u8,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self { enabled: true, min_bytes: 512, level: 1 }
    }
}

/// `[storage]`: the history backend.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Which backend keeps channel history: `memory`, `redis` or `redb`.
    /// Default: `memory`.
    pub backend: StorageBackend,
    /// The Redis backend, read when `backend` is `redis`. Default: see [`RedisConfig`].
    pub redis: RedisConfig,
    /// The write-ahead journal of the Redis backend. Default: see [`JournalConfig`].
    pub journal: JournalConfig,
    /// The embedded file backend, read when `backend` is `redb`. Default:
    /// see [`RedbConfig`].
    pub redb: RedbConfig,
}

/// `[storage.redb]`: the embedded backend, history in one local file
/// that survives restarts and crashes of the bus (docs/storage.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedbConfig {
    /// The database file, created with its directory if missing; relative
    /// to the working directory unless absolute. Required (not empty) when
    /// `storage.backend = "redb"`. Default: empty.
    pub path: String,
    /// Messages kept per channel; older ones are trimmed. At least 1.
    /// Default: `10000`.
    pub max_len: usize,
    /// When a commit reaches the disk: `always` (before the publish is
    /// answered) or `interval` (every `fsync_interval_ms`). Default: `always`.
    pub fsync: JournalFsync,
    /// Milliseconds between two syncs with `fsync = "interval"`. 1 to
    /// 60000. Default: `1000`.
    pub fsync_interval_ms: u64,
}

impl Default for RedbConfig {
    fn default() -> Self {
        Self { path: String::new(), max_len: 10_000, fsync: JournalFsync::Always, fsync_interval_ms: 1000 }
    }
}

/// `[storage.journal]`: where the Redis backend keeps, on disk, what it
/// accepted while Redis was unreachable, so that it survives the bus
/// stopping before Redis returns (docs/storage.md). Unused by `memory`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// Directory of the journal files, created if missing; relative to the
    /// working directory unless absolute. Not empty. Default: `arqon-journal`.
    pub path: String,
    /// When journal writes reach the disk: `always` (before the publish is
    /// answered) or `interval` (every `fsync_interval_ms`). Default: `always`.
    pub fsync: JournalFsync,
    /// Milliseconds between two syncs with `fsync = "interval"`. 1 to
    /// 60000. Default: `1000`.
    pub fsync_interval_ms: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self { path: "arqon-journal".to_owned(), fsync: JournalFsync::Always, fsync_interval_ms: 1000 }
    }
}

/// `storage.journal.fsync`, named in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalFsync {
    /// Every journal write is synced before the publish is answered.
    #[default]
    Always,
    /// Written at once, synced every `fsync_interval_ms`.
    Interval,
}

/// `[storage.redis]`: where the Redis backend keeps history, and how the bus
/// rides out a Redis outage (docs/storage.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Server, as `redis://[[user]:password@]host[:port][/db]` (TLS,
    /// `rediss://`, is not built in). Default: `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every key the bus writes, so that several buses or other
    /// applications can share one Redis. Not empty, no spaces.
    /// Default: `arqon:`.
    pub key_prefix: String,
    /// Messages kept per channel; older ones are trimmed. At least 1.
    /// Default: `10000`.
    pub max_len: usize,
    /// Milliseconds start-up waits for Redis; past it the bus starts anyway,
    /// degraded, and connects when Redis answers. At least 1. Default: `2000`.
    pub connect_timeout_ms: u64,
    /// Longest one Redis command may take, in milliseconds; past it the
    /// command fails (it is not retried) and the bus degrades. At least 1.
    /// Default: `1000`.
    pub command_timeout_ms: u64,
    /// Connections to Redis. 1 to 64. Default: `2`.
    pub pool_size: usize,
    /// Most messages held in memory, over all channels, while Redis is
    /// unreachable; past it publishing fails with `STORAGE_UNAVAILABLE`.
    /// `0` refuses every publish during an outage. Default: `100000`.
    pub journal_capacity: usize,
    /// Most bytes held in that journal (each message counts its envelope
    /// plus 64); past it publishing fails with `STORAGE_UNAVAILABLE`.
    /// Default: `268435456` (256 MiB).
    pub journal_bytes: u64,
    /// Newest messages per channel also kept in memory, to answer `history`
    /// and `join_channel` `since` during an outage. At most `max_len`.
    /// Default: `1000`.
    pub cache_per_channel: usize,
    /// Most bytes those caches hold over all channels (counted as for
    /// `journal_bytes`); past it the oldest cached messages are dropped,
    /// from channels not being written first. Default: `67108864` (64 MiB).
    pub cache_bytes: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "arqon:".to_owned(),
            max_len: 10_000,
            connect_timeout_ms: 2000,
            command_timeout_ms: 1000,
            pool_size: 2,
            journal_capacity: 100_000,
            journal_bytes: 256 << 20,
            cache_per_channel: 1000,
            cache_bytes: 64 << 20,
        }
    }
}

/// A history backend, named in lower case in TOML and the environment.
///
/// A new backend is a new variant; its own settings go in new fields of
/// [`StorageConfig`], so existing files keep loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// In-process memory; history is lost on restart.
    #[default]
    Memory,
    /// Redis Streams (`[storage.redis]`); history survives restarts, and a
    /// Redis outage is ridden out in memory.
    Redis,
    /// One local redb file (`[storage.redb]`); history survives restarts of
    /// a single node without Redis.
    Redb,
}

impl StorageBackend {
    /// The backend's name as written in configuration and reported by `status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StorageBackend::Memory => "memory",
            StorageBackend::Redis => "redis",
            StorageBackend::Redb => "redb",
        }
    }
}

impl fmt::Display for StorageBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Config {
    /// Checks the rules that types alone cannot express; [`Config::load`]
    /// calls it, so a loaded `Config` always passes.
    ///
    /// The error names the first broken rule's key and value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (server, limits) = (&self.server, &self.limits);
        rule(
            server.host.parse::<IpAddr>().is_ok(),
            "server.host",
            format!("{:?}", server.host),
            "must be an IP address such as 127.0.0.1 or ::1 (host names are not resolved)",
        )?;
        rule(
            self.monitoring.host.parse::<IpAddr>().is_ok(),
            "monitoring.host",
            format!("{:?}", self.monitoring.host),
            "must be an IP address such as 127.0.0.1 or ::1 (host names are not resolved)",
        )?;
        rule(server.heartbeat_s >= 1, "server.heartbeat_s", server.heartbeat_s, "must be at least 1")?;
        rule(
            server.shutdown_grace_ms <= MAX_SHUTDOWN_GRACE_MS,
            "server.shutdown_grace_ms",
            server.shutdown_grace_ms,
            "must be at most 60000",
        )?;
        rule(
            (MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&limits.max_message_bytes),
            "limits.max_message_bytes",
            limits.max_message_bytes,
            "must be between 256 and 67108864 (64 MiB)",
        )?;
        rule(
            limits.rate_per_s == 0 || limits.burst >= 1,
            "limits.burst",
            limits.burst,
            "must be at least 1 while limits.rate_per_s is above 0",
        )?;
        rule(
            limits.bytes_per_s == 0 || limits.bytes_burst >= 1,
            "limits.bytes_burst",
            limits.bytes_burst,
            "must be at least 1 while limits.bytes_per_s is above 0",
        )?;
        rule(
            (1..=9).contains(&self.compression.level),
            "compression.level",
            self.compression.level,
            "must be between 1 (fastest) and 9 (smallest)",
        )?;
        rule(limits.abuse_window_s >= 1, "limits.abuse_window_s", limits.abuse_window_s, "must be at least 1")?;
        rule(
            limits.max_backlog_bytes >= MIN_BACKLOG_BYTES.max(limits.max_message_bytes),
            "limits.max_backlog_bytes",
            limits.max_backlog_bytes,
            "must be at least 65536 and at least limits.max_message_bytes",
        )?;
        rule(
            limits.backlog_budget_bytes == 0 || limits.backlog_budget_bytes >= limits.max_backlog_bytes,
            "limits.backlog_budget_bytes",
            limits.backlog_budget_bytes,
            "must be 0 (no budget) or at least limits.max_backlog_bytes",
        )?;
        rule(
            self.monitoring.telemetry_buffer >= 1,
            "monitoring.telemetry_buffer",
            self.monitoring.telemetry_buffer,
            "must be at least 1",
        )?;
        let token = &self.monitoring.auth_token;
        rule(
            token.is_empty()
                || (token.chars().count() >= MIN_MONITORING_TOKEN_CHARS
                    && !token.chars().any(|c| c.is_whitespace() || c.is_control())),
            "monitoring.auth_token",
            // Never printed: say what is wrong with it, not what it is.
            format!("of {} characters", token.chars().count()),
            "must be empty or at least 16 characters without spaces (e.g. `openssl rand -hex 24`)",
        )?;
        rule(
            server.upgrade_timeout_ms >= 100,
            "server.upgrade_timeout_ms",
            server.upgrade_timeout_ms,
            "must be at least 100",
        )?;
        if let Some(origin) = server.allowed_origins.iter().find(|o| o.trim().is_empty()) {
            rule(false, "server.allowed_origins", format!("{origin:?}"), "entries must not be empty")?;
        }
        for (role, rate) in &limits.roles {
            rule(
                rate.rate_per_s == 0 || rate.burst >= 1,
                "limits.roles",
                format!("{role}: burst {}", rate.burst),
                "burst must be at least 1 while rate_per_s is above 0",
            )?;
        }
        rule(
            self.tls.cert.is_empty() == self.tls.key.is_empty(),
            "tls",
            format!("cert {:?}, key {:?}", self.tls.cert, self.tls.key),
            "set both tls.cert and tls.key, or neither",
        )?;
        let auth = &self.auth;
        rule(
            auth.mode != AuthMode::Token || !auth.tokens.is_empty(),
            "auth.tokens",
            "[]",
            "auth.mode = \"token\" needs at least one [[auth.tokens]] entry",
        )?;
        if let Some(token) = auth.tokens.iter().find(|t| t.token.is_empty()) {
            rule(false, "auth.tokens", format!("role {}", token.role), "a token must not be empty")?;
        }
        if auth.mode == AuthMode::Jwt {
            match auth.jwt.algorithm {
                JwtAlgorithm::HS256 => {
                    rule(!auth.jwt.secret.is_empty(), "auth.jwt.secret", "\"\"", "HS256 needs a secret")?;
                    // The value itself is a secret: only its length is shown.
                    rule(
                        auth.jwt.secret.len() >= MIN_HS256_SECRET_BYTES,
                        "auth.jwt.secret",
                        format!("of {} bytes", auth.jwt.secret.len()),
                        "an HS256 secret must be at least 32 bytes (generate one with `openssl rand -base64 32`)",
                    )?
                }
                JwtAlgorithm::RS256 => rule(
                    !auth.jwt.public_key_file.is_empty(),
                    "auth.jwt.public_key_file",
                    "\"\"",
                    "RS256 needs the path of a PEM public key",
                )?,
            }
        }
        rule(
            limits.history_per_channel >= 1,
            "limits.history_per_channel",
            limits.history_per_channel,
            "must be at least 1",
        )?;
        rule(
            limits.history_bytes_per_channel >= limits.max_message_bytes,
            "limits.history_bytes_per_channel",
            limits.history_bytes_per_channel,
            "must be at least limits.max_message_bytes",
        )?;
        rule(
            limits.history_bytes_total >= limits.history_bytes_per_channel,
            "limits.history_bytes_total",
            limits.history_bytes_total,
            "must be at least limits.history_bytes_per_channel",
        )?;
        self.storage.redis.validate()?;
        self.storage.journal.validate()?;
        self.storage.redb.validate(self.storage.backend)?;
        self.api.validate()?;
        self.webhooks.validate()?;
        self.hooks.validate(server.upgrade_timeout_ms)?;
        crate::rooms::validate(&self.rooms, limits.history_per_channel, &self.hooks.join_url)?;
        self.cluster.validate(self.storage.backend)
    }

    /// The address to listen on: `server.host` and `server.port`.
    ///
    /// A host that is not an IP address fails [`Config::validate`]; on an
    /// unvalidated `Config` such a host falls back to 127.0.0.1, the address
    /// that exposes nothing, rather than panicking.
    pub fn listen_addr(&self) -> SocketAddr {
        let ip = self.server.host.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        SocketAddr::new(ip, self.server.port)
    }

    /// The monitoring listener's address (same fallback as [`Config::listen_addr`]).
    pub fn monitoring_addr(&self) -> SocketAddr {
        let ip = self.monitoring.host.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        SocketAddr::new(ip, self.monitoring.port)
    }
}

impl RedisConfig {
    /// The rules of `[storage.redis]`, checked whichever backend is chosen so
    /// that a mistake shows before the day Redis is switched on.
    fn validate(&self) -> Result<(), ConfigError> {
        rule(
            self.url.starts_with("redis://"),
            "storage.redis.url",
            format!("{:?}", self.url),
            "must start with redis:// (rediss:// and other schemes are not supported)",
        )?;
        rule(
            !self.key_prefix.is_empty() && !self.key_prefix.contains(char::is_whitespace),
            "storage.redis.key_prefix",
            format!("{:?}", self.key_prefix),
            "must not be empty or contain spaces",
        )?;
        rule(self.max_len >= 1, "storage.redis.max_len", self.max_len, "must be at least 1")?;
        rule(
            self.connect_timeout_ms >= 1,
            "storage.redis.connect_timeout_ms",
            self.connect_timeout_ms,
            "must be at least 1",
        )?;
        rule(
            self.command_timeout_ms >= 1,
            "storage.redis.command_timeout_ms",
            self.command_timeout_ms,
            "must be at least 1",
        )?;
        rule(
            (1..=MAX_REDIS_POOL).contains(&self.pool_size),
            "storage.redis.pool_size",
            self.pool_size,
            "must be between 1 and 64",
        )?;
        rule(
            self.cache_per_channel <= self.max_len,
            "storage.redis.cache_per_channel",
            self.cache_per_channel,
            "must be at most storage.redis.max_len",
        )
    }
}

impl JournalConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        rule(!self.path.is_empty(), "storage.journal.path", format!("{:?}", self.path), "must not be empty")?;
        rule(
            (1..=60_000).contains(&self.fsync_interval_ms),
            "storage.journal.fsync_interval_ms",
            self.fsync_interval_ms,
            "must be between 1 and 60000",
        )
    }
}

impl RedbConfig {
    /// The path is required only by the redb backend; the other rules hold
    /// whichever backend is chosen.
    fn validate(&self, backend: StorageBackend) -> Result<(), ConfigError> {
        rule(
            backend != StorageBackend::Redb || !self.path.is_empty(),
            "storage.redb.path",
            format!("{:?}", self.path),
            "must name the database file when storage.backend = \"redb\"",
        )?;
        rule(self.max_len >= 1, "storage.redb.max_len", self.max_len, "must be at least 1")?;
        rule(
            (1..=60_000).contains(&self.fsync_interval_ms),
            "storage.redb.fsync_interval_ms",
            self.fsync_interval_ms,
            "must be between 1 and 60000",
        )
    }
}

/// Fails with [`ConfigError::Invalid`] unless `ok`.
pub(crate) fn rule(ok: bool, key: &'static str, value: impl ToString, rule: &'static str) -> Result<(), ConfigError> {
    if ok { Ok(()) } else { Err(ConfigError::Invalid { key, value: value.to_string(), rule }) }
}
