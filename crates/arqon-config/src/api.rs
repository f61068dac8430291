//! `[[api.keys]]`: who may call the server API (PROTOCOL.md section 8.3).

use arqon_protocol::Role;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::settings::rule;

/// Shortest accepted API key: a key is a password for the whole bus.
pub const MIN_API_KEY_BYTES: usize = 16;

/// `[api]`: the server API's keys. With none, every `/api/` request gets 401.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// The keys (TOML only: `[[api.keys]]`). Default: none.
    pub keys: Vec<ApiKey>,
}

/// One key of `[[api.keys]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs and metrics (the key itself is never logged). Required.
    pub name: String,
    /// The secret, sent as `Authorization: Bearer <key>` or `X-API-Key`;
    /// at least 16 bytes. Required.
    pub key: String,
    /// `user` (publish, broadcast, send, presence…) or `admin` (also
    /// disconnect, subscribe, unsubscribe, delete_channel). Required.
    pub role: Role,
    /// Calls per second this key may make; 0: unlimited (the application
    /// paces itself). Over it, calls get 429 `RATE_LIMITED` with
    /// `retry_after_ms`. Default: `0`.
    #[serde(default)]
    pub rate_per_s: u32,
    /// Calls at once above `rate_per_s`. Default: `0` (twice the rate).
    #[serde(default)]
    pub burst: u32,
}

impl ApiKey {
    /// A key with no rate limit.
    pub fn new(name: impl Into<String>, key: impl Into<String>, role: Role) -> Self {
        ApiKey { name: name.into(), key: key.into(), role, rate_per_s: 0, burst: 0 }
    }
}

impl ApiConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (i, key) in self.keys.iter().enumerate() {
            rule(
                !key.name.is_empty() && key.name.len() <= 64,
                "api.keys.name",
                format!("{:?}", key.name),
                "every API key needs a name of 1 to 64 bytes",
            )?;
            rule(
                key.key.len() >= MIN_API_KEY_BYTES,
                "api.keys.key",
                format!("the key named {:?} has {} bytes", key.name, key.key.len()),
                "must be at least 16 bytes",
            )?;
            rule(key.role != Role::Guest, "api.keys.role", format!("{:?}: guest", key.name), "must be user or admin")?;
            let clash = self.keys[..i].iter().find(|other| other.name == key.name || other.key == key.key);
            rule(clash.is_none(), "api.keys", format!("{:?}", key.name), "names and keys must be unique")?;
        }
        Ok(())
    }
}
