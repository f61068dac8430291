//! `[hooks]`: the bus asks the application who may connect (docs/hooks.md).

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::settings::rule;

/// Whether `url` is `http://HOST…` or `https://HOST…`.
pub(crate) fn is_http_url(url: &str) -> bool {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace))
}

/// A CA file, when set, must be a readable file (its certificates are
/// checked at start-up, where they are loaded).
pub(crate) fn ca_file_rule(key: &'static str, path: &str) -> Result<(), ConfigError> {
    rule(
        path.is_empty() || std::path::Path::new(path).is_file(),
        key,
        format!("{path:?}"),
        "must be empty or a readable PEM file of CA certificates",
    )
}

/// What happens when the connect hook cannot answer (down, slow, garbage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookFailure {
    /// Refuse the connection with 503 (fail closed).
    #[default]
    Refuse,
    /// Let it in as an anonymous guest.
    Guest,
}

/// `[hooks]`: off while `connect_url` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// On every WebSocket upgrade the bus POSTs the request's credentials
    /// here (`http://…` or `https://…`) and takes `{user, role, info, rooms}` from a 200
    /// answer, or refuses on 401/403. Empty: off (the `[auth]` mode decides).
    /// Default: empty.
    pub connect_url: String,
    /// On `join_channel` (and the API's `subscribe`) in a room whose
    /// `join_hook` option is on, the bus POSTs who joins what here
    /// (`http://…` or `https://…`); 200 allows, 401/403 refuse (`FORBIDDEN`). Default: empty.
    pub join_url: String,
    /// Milliseconds a hook may take. Default: `2000`.
    pub timeout_ms: u64,
    /// When the connect hook is down, slow or answers garbage: `refuse`
    /// (503) or `guest`. Default: `refuse`. (The join hook always refuses.)
    pub on_failure: HookFailure,
    /// A PEM file of CA certificates to trust for `https://` hooks, besides
    /// the web's public roots (a private CA). Default: empty.
    pub ca_file: String,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            connect_url: String::new(),
            join_url: String::new(),
            timeout_ms: 2000,
            on_failure: HookFailure::Refuse,
            ca_file: String::new(),
        }
    }
}

impl HooksConfig {
    pub(crate) fn validate(&self, upgrade_timeout_ms: u64) -> Result<(), ConfigError> {
        rule(
            self.connect_url.is_empty() || is_http_url(&self.connect_url),
            "hooks.connect_url",
            format!("{:?}", self.connect_url),
            "must be empty (off) or an http:// or https:// URL with a host",
        )?;
        rule(
            self.join_url.is_empty() || is_http_url(&self.join_url),
            "hooks.join_url",
            format!("{:?}", self.join_url),
            "must be empty (off) or an http:// or https:// URL with a host",
        )?;
        ca_file_rule("hooks.ca_file", &self.ca_file)?;
        rule(
            (1..upgrade_timeout_ms).contains(&self.timeout_ms),
            "hooks.timeout_ms",
            self.timeout_ms,
            "must be at least 1 and below server.upgrade_timeout_ms (the hook runs inside the upgrade)",
        )
    }
}
