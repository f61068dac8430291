//! ArqonBus configuration. This layer owns the typed settings ([`Config`] and
//! one struct per `[section]`), their defaults (the limits of PROTOCOL.md
//! section 7), loading them from defaults, then an optional TOML file, then
//! `ARQON_*` environment variables ([`Config::load`], [`Config::from_env`]),
//! and validating the result ([`Config::validate`]). Mistakes fail start-up
//! with a [`ConfigError`] that names the key and the value: an unknown key or
//! variable is an error, never silently ignored.
//!
//! It depends on no arqon crate except `arqon-protocol` (for [`Role`]); the
//! server reads a `Config` and hands each part to the layer that needs it.
//!
//! # Layout
//!
//! - `settings`: the structs, their defaults and [`Config::validate`].
//!   Settings are `[section]` then key, or one level deeper for a part of a
//!   section (`[storage.redis]`).
//! - `load`: [`Config::load`] and [`Config::from_env`], the layering and the
//!   strict per-value type check.
//! - `cluster`: [`ClusterConfig`], the `[cluster]` section.
//! - `print`: [`Config::redacted`] and [`Config::to_toml`], for
//!   `arqonbus --print-config`.
//! - `error`: [`ConfigError`].
//!
//! The reference of every key is docs/configuration.md; a test keeps it in
//! step with the defaults here.
//!
//! [`Role`]: arqon_protocol::Role

mod api;
mod cluster;
mod error;
mod hooks;
mod load;
mod print;
mod rooms;
mod security;
mod settings;
mod webhooks;

pub use api::{ApiConfig, ApiKey, MIN_API_KEY_BYTES};
pub use cluster::ClusterConfig;
pub use error::ConfigError;
pub use hooks::{HookFailure, HooksConfig};
pub use print::REDACTED;
pub use rooms::{RoomConfig, valid_room_pattern};
pub use security::{
    AuthConfig, AuthMode, JwtAlgorithm, JwtConfig, MIN_HS256_SECRET_BYTES, RoleRate, RoleRates, StaticToken,
    TlsSettings,
};
pub use settings::{
    ChannelsConfig, CompressionConfig, Config, JournalConfig, JournalFsync, LimitsConfig, MonitoringConfig, RedbConfig,
    RedisConfig, ServerConfig, StorageBackend, StorageConfig,
};
pub use webhooks::{MIN_WEBHOOK_SECRET_BYTES, WEBHOOK_EVENTS, WebhooksConfig};
