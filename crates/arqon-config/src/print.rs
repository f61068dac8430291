//! The effective configuration as TOML with its secrets redacted: what
//! `arqonbus --print-config` shows an operator, and what may be pasted into
//! a bug report.

use crate::{Config, ConfigError};

/// What a secret is replaced with.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// A copy with every secret replaced by [`REDACTED`]: the JWT secret,
    /// static tokens, `monitoring.auth_token`, and passwords inside Redis URLs. Paths (TLS key, RS256
    /// public key) are kept: they say where a secret is, not what it is.
    #[must_use]
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        if !config.auth.jwt.secret.is_empty() {
            config.auth.jwt.secret = REDACTED.to_owned();
        }
        for token in &mut config.auth.tokens {
            token.token = REDACTED.to_owned();
        }
        if !config.webhooks.secret.is_empty() {
            config.webhooks.secret = REDACTED.to_owned();
        }
        for key in &mut config.api.keys {
            key.key = REDACTED.to_owned();
        }
        if !config.monitoring.auth_token.is_empty() {
            config.monitoring.auth_token = REDACTED.to_owned();
        }
        config.storage.redis.url = redact_url(&config.storage.redis.url);
        config.cluster.redis_url = redact_url(&config.cluster.redis_url);
        config
    }

    /// Every setting as a TOML document, loadable again with
    /// [`Config::load`] (secrets included: call [`Config::redacted`] first
    /// to hide them).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Print`] if a value has no TOML form (not expected: every
    /// setting is a string, number, boolean, list or table).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Print(e.to_string()))
    }
}

/// `redis://user:secret@host` → `redis://user:<redacted>@host`; a URL with
/// no credentials is returned as it is.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_owned() };
    // A lone userinfo is a password to Redis (`redis://secret@host`).
    let user = userinfo.split_once(':').map_or("", |(user, _)| user);
    let mut redacted = format!("{scheme}://{user}:{REDACTED}@{host}");
    if let Some(path) = path {
        redacted.push('/');
        redacted.push_str(path);
    }
    redacted
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{AuthMode, StaticToken};
    use arqon_protocol::Role;

    #[test]
    fn urls_lose_their_passwords_only() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://:pw@h:1/2"), "redis://:<redacted>@h:1/2");
        assert_eq!(redact_url("redis://bob:pw@h"), "redis://bob:<redacted>@h");
        assert_eq!(redact_url("redis://pw@h/0"), "redis://:<redacted>@h/0");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        let mut config = Config::default();
        config.auth.mode = AuthMode::Token;
        config.auth.jwt.secret = "s".repeat(40);
        config.auth.tokens = vec![StaticToken {
            token: "tok-123".to_owned(),
            role: Role::Admin,
            client: String::new(),
            rooms: Vec::new(),
        }];
        config.storage.redis.url = "redis://:hunter2@10.0.0.1:6379".to_owned();
        config.cluster.redis_url = "redis://ops:hunter3@10.0.0.2".to_owned();
        config.monitoring.auth_token = "monitor-secret-0123456789".to_owned();
        let text = config.redacted().to_toml().unwrap();
        for secret in ["ssss", "tok-123", "hunter2", "hunter3", "monitor-secret"] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        assert!(text.contains("10.0.0.1:6379") && text.contains("ops:<redacted>@10.0.0.2"), "{text}");
        assert_eq!(config.redacted().auth.tokens[0].role, Role::Admin);
    }

    #[test]
    fn the_printed_defaults_load_back_unchanged() {
        let text = Config::default().to_toml().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("printed.toml");
        std::fs::write(&path, &text).unwrap();
        let loaded = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(loaded, Config::default(), "{text}");
    }
}
