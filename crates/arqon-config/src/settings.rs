//! The settings themselves: plain serde data, their defaults, and the rules
//! that tie fields together.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use arqon_protocol::Role;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Smallest accepted `limits.max_message_bytes`: room for an envelope with a
/// short payload, so a typo such as `1` cannot make every frame too large.
const MIN_MESSAGE_BYTES: usize = 256;
/// Largest accepted `limits.max_message_bytes` (64 MiB): each connection may
/// buffer a frame this large, so the cap bounds memory per client.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Smallest accepted `limits.outbound_queue`: below this an ordinary burst of
/// events and responses would close healthy clients as slow consumers.
const MIN_OUTBOUND_QUEUE: usize = 16;
/// Longest accepted `server.shutdown_grace_ms`: a stop that hangs for over a
/// minute outlives the patience of every process supervisor.
const MAX_SHUTDOWN_GRACE_MS: u64 = 60_000;

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
    /// Roles given to clients. Default: see [`AuthConfig`].
    pub auth: AuthConfig,
    /// Where channel history is kept. Default: see [`StorageConfig`].
    pub storage: StorageConfig,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { host: "127.0.0.1".to_owned(), port: 9100, heartbeat_s: 20, shutdown_grace_ms: 5000 }
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
    /// Frames queued towards one client before it is closed as a slow
    /// consumer (1008). At least 16. Default: `1024`.
    pub outbound_queue: usize,
    /// Largest channel, in members, that still gets `member_joined` and
    /// `member_left` events. Default: `1000`.
    pub member_events_max: usize,
    /// Messages of history kept per channel. At least 1. Default: `1000`.
    pub history_per_channel: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            rate_per_s: 100,
            burst: 200,
            outbound_queue: 1024,
            member_events_max: 1000,
            history_per_channel: 1000,
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
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        Self { auto_create: true }
    }
}

/// `[auth]`: identities and roles.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Role of a client that presents no credentials: `guest`, `user` or
    /// `admin`. Default: `user`.
    pub default_role: Role,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { default_role: Role::User }
    }
}

/// `[storage]`: the history backend.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Which backend keeps channel history. Default: `memory`.
    pub backend: StorageBackend,
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
}

impl StorageBackend {
    /// The backend's name as written in configuration and reported by `status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StorageBackend::Memory => "memory",
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
            limits.outbound_queue >= MIN_OUTBOUND_QUEUE,
            "limits.outbound_queue",
            limits.outbound_queue,
            "must be at least 16",
        )?;
        rule(
            limits.history_per_channel >= 1,
            "limits.history_per_channel",
            limits.history_per_channel,
            "must be at least 1",
        )
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
}

/// Fails with [`ConfigError::Invalid`] unless `ok`.
fn rule(ok: bool, key: &'static str, value: impl ToString, rule: &'static str) -> Result<(), ConfigError> {
    if ok { Ok(()) } else { Err(ConfigError::Invalid { key, value: value.to_string(), rule }) }
}
