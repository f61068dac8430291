//! Settings of authentication, TLS and browser origins.

use std::collections::BTreeMap;

use arqon_protocol::Role;
use serde::{Deserialize, Serialize};

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No credentials: everyone gets `auth.default_role`.
    #[default]
    None,
    /// Static tokens listed in `auth.tokens`.
    Token,
    /// JSON Web Tokens (`auth.jwt`).
    Jwt,
}

/// One static token of `auth.tokens` (TOML only: `[[auth.tokens]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    /// The secret the client presents. Required.
    pub token: String,
    /// The role it grants. Required.
    pub role: Role,
    /// The user this token stands for (PROTOCOL.md 8.2), reported as `user`
    /// in `welcome`, in its messages and in presence; every connection still
    /// gets a fresh client id. Empty: an anonymous user. Default: empty.
    #[serde(default)]
    pub client: String,
    /// Rooms the client may join and publish to; `["*"]`: all. Default
    /// (the key left out): all. Note: an explicit empty list also means all
    /// here (TOML cannot tell it from a missing key), unlike a JWT's
    /// `rooms: []`, which grants none.
    #[serde(default)]
    pub rooms: Vec<String>,
}

/// JWT signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `auth.jwt.secret`.
    #[default]
    HS256,
    /// RSA-SHA256 with the PEM public key in `auth.jwt.public_key_file`.
    RS256,
}

/// `[auth.jwt]`: how JWTs are verified.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256` or `RS256`. Default: `HS256`.
    pub algorithm: JwtAlgorithm,
    /// Shared secret for HS256; at least 32 bytes (a shorter one is refused
    /// at start-up). Default: empty.
    pub secret: String,
    /// Path of the PEM public key for RS256. Default: empty.
    pub public_key_file: String,
    /// Seconds of clock skew tolerated on `exp` and `nbf`. Default: `0`.
    pub leeway_s: u64,
    /// Whether a token must carry `exp`; one without it is refused (HTTP
    /// 401). With `false`, such a token never expires. Default: `true`.
    pub require_exp: bool,
    /// When set, a token's `aud` must name this audience. Default: empty (not
    /// checked).
    pub audience: String,
    /// When set, a token's `iss` must be this issuer. Default: empty (not
    /// checked).
    pub issuer: String,
}

/// Shortest HS256 secret accepted: the hash's output size (RFC 7518 3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::HS256,
            secret: String::new(),
            public_key_file: String::new(),
            leeway_s: 0,
            require_exp: true,
            audience: String::new(),
            issuer: String::new(),
        }
    }
}

/// `[auth]`: identities and roles.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`, `token` or `jwt`. Default: `none`.
    pub mode: AuthMode,
    /// Role of a client that presents no credentials when `mode = "none"`;
    /// `guest`, `user` or `admin`. Default: `user`.
    pub default_role: Role,
    /// With `mode` token or jwt: whether a client with no credentials may
    /// connect (as `guest`). Default: `false`.
    pub allow_anonymous: bool,
    /// Milliseconds between the `token_expired` event and the close (1008)
    /// of a connection whose token expires. Default: `2000`.
    pub expiry_grace_ms: u64,
    /// Static tokens for `mode = "token"` (`[[auth.tokens]]` tables in TOML).
    /// Default: none.
    pub tokens: Vec<StaticToken>,
    /// JWT verification for `mode = "jwt"`. Default: see [`JwtConfig`].
    pub jwt: JwtConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            default_role: Role::User,
            allow_anonymous: false,
            expiry_grace_ms: 2000,
            tokens: Vec::new(),
            jwt: JwtConfig::default(),
        }
    }
}

/// `[tls]`: serve `wss://`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Path of the PEM certificate chain; with `key`, turns TLS on. Default: empty (off).
    pub cert: String,
    /// Path of the PEM private key. Default: empty (off).
    pub key: String,
}

impl TlsSettings {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty() || !self.key.is_empty()
    }
}

/// A rate for one role (`[limits.roles.guest]` etc.).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRate {
    /// Frames per second; 0 means unlimited. Required.
    pub rate_per_s: u32,
    /// Burst above the rate. Required.
    pub burst: u32,
}

/// Per-role overrides of `limits.rate_per_s` / `limits.burst`.
pub type RoleRates = BTreeMap<Role, RoleRate>;
