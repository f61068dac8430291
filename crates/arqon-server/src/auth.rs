//! Authentication: credentials on the upgrade request to an [`Identity`].
//!
//! Authorization (roles, the `rooms` claim) is enforced in routing; this
//! module only establishes who the client is.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arqon_config::{AuthConfig, AuthMode, JwtAlgorithm, MIN_HS256_SECRET_BYTES, StaticToken};
use arqon_protocol::{Name, RawValue, Role, check_user};
use arqon_routing::{Identity, RoomAccess};
use arqon_transport::{Refusal, UpgradeRequest};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::ServerError;

/// Turns credentials into identities, per `auth.mode`.
pub(crate) enum Authenticator {
    /// Everyone gets the default role.
    Open { role: Role },
    /// Static tokens.
    Tokens { tokens: Vec<StaticToken>, allow_anonymous: bool },
    /// JSON Web Tokens.
    Jwt { key: Box<DecodingKey>, validation: Box<Validation>, allow_anonymous: bool },
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Authenticator::Open { .. } => "Authenticator::Open",
            Authenticator::Tokens { .. } => "Authenticator::Tokens",
            Authenticator::Jwt { .. } => "Authenticator::Jwt",
        })
    }
}

/// The claims ArqonBus reads from a JWT.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    role: Option<Role>,
    exp: Option<u64>,
    rooms: Option<RoomsClaim>,
    /// Application data about the user, shown in presence (at most 1 KiB).
    info: Option<Box<RawValue>>,
}

/// Largest `info` claim accepted, in bytes of JSON (PROTOCOL.md 8.2).
const MAX_INFO_BYTES: usize = 1024;

/// `rooms`: a list of room names, or `"*"` for all.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RoomsClaim {
    All(String),
    Some(Vec<String>),
}

fn unauthorized(message: impl Into<String>) -> Refusal {
    Refusal { status: 401, code: "UNAUTHORIZED", message: message.into() }
}

impl Authenticator {
    /// Builds the authenticator; reads the RS256 key file now, so a bad
    /// path fails start-up rather than every connection.
    pub(crate) fn from_config(auth: &AuthConfig) -> Result<Self, ServerError> {
        Ok(match auth.mode {
            AuthMode::None => Authenticator::Open { role: auth.default_role },
            AuthMode::Token => {
                Authenticator::Tokens { tokens: auth.tokens.clone(), allow_anonymous: auth.allow_anonymous }
            }
            AuthMode::Jwt => {
                let (key, algorithm) = match auth.jwt.algorithm {
                    JwtAlgorithm::HS256 => {
                        // Config::validate refuses it too; checked again here
                        // for a server built from an unvalidated Config.
                        let length = auth.jwt.secret.len();
                        if length < MIN_HS256_SECRET_BYTES {
                            return Err(ServerError::Auth(format!(
                                "auth.jwt.secret: an HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes \
                                 (this one has {length})"
                            )));
                        }
                        let key = DecodingKey::from_secret(auth.jwt.secret.as_bytes())
                            .map_err(|e| ServerError::Auth(format!("auth.jwt.secret: {e}")))?;
                        (key, Algorithm::HS256)
                    }
                    JwtAlgorithm::RS256 => {
                        let path = &auth.jwt.public_key_file;
                        let pem = std::fs::read(path)
                            .map_err(|e| ServerError::Auth(format!("auth.jwt.public_key_file {path:?}: {e}")))?;
                        let key = DecodingKey::from_rsa_pem(&pem)
                            .map_err(|e| ServerError::Auth(format!("auth.jwt.public_key_file {path:?}: {e}")))?;
                        (key, Algorithm::RS256)
                    }
                };
                let jwt = &auth.jwt;
                let mut validation = Validation::new(algorithm);
                validation.leeway = jwt.leeway_s;
                validation.validate_nbf = true;
                let mut required = HashSet::new();
                if jwt.require_exp {
                    required.insert("exp".to_owned());
                }
                if jwt.audience.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&[&jwt.audience]);
                    required.insert("aud".to_owned());
                }
                if !jwt.issuer.is_empty() {
                    validation.set_issuer(&[&jwt.issuer]);
                    required.insert("iss".to_owned());
                }
                validation.required_spec_claims = required;
                Authenticator::Jwt {
                    key: Box::new(key),
                    validation: Box::new(validation),
                    allow_anonymous: auth.allow_anonymous,
                }
            }
        })
    }

    /// Who is connecting, or why not.
    pub(crate) fn identify(&self, request: &UpgradeRequest<'_>) -> Result<Identity, Refusal> {
        let credentials = credentials(request);
        match self {
            Authenticator::Open { role } => Ok(Identity::new(*role)),
            Authenticator::Tokens { tokens, allow_anonymous } => {
                let Some(given) = credentials else { return anonymous(*allow_anonymous) };
                let token = tokens
                    .iter()
                    .find(|t| constant_time_eq(t.token.as_bytes(), given.as_bytes()))
                    .ok_or_else(|| unauthorized("unknown token"))?;
                let mut identity = Identity::new(token.role);
                if !token.client.is_empty() {
                    identity.user = Some(Arc::from(token.client.as_str()));
                }
                identity.rooms = room_access(&token.rooms);
                Ok(identity)
            }
            Authenticator::Jwt { key, validation, allow_anonymous } => {
                let Some(given) = credentials else { return anonymous(*allow_anonymous) };
                let data = jsonwebtoken::decode::<Claims>(&given, key, validation)
                    .map_err(|e| unauthorized(format!("invalid token: {e}")))?;
                let claims = data.claims;
                let mut identity = Identity::new(claims.role.unwrap_or(Role::User));
                if let Some(sub) = &claims.sub {
                    check_user(sub).map_err(|e| unauthorized(format!("invalid token: sub: {}", e.message)))?;
                    identity.user = Some(Arc::from(sub.as_str()));
                }
                if let Some(info) = claims.info {
                    if info.get().len() > MAX_INFO_BYTES || !info.get().trim_start().starts_with('{') {
                        return Err(unauthorized(format!(
                            "invalid token: info must be a JSON object of at most {MAX_INFO_BYTES} bytes"
                        )));
                    }
                    identity.info = Some(Arc::from(info));
                }
                identity.rooms = match &claims.rooms {
                    None => RoomAccess::All,
                    Some(RoomsClaim::All(star)) if star == "*" => RoomAccess::All,
                    Some(RoomsClaim::All(one)) => room_access(std::slice::from_ref(one)),
                    // An explicit empty list grants no room at all.
                    Some(RoomsClaim::Some(rooms)) if rooms.is_empty() => RoomAccess::Only(HashSet::new()),
                    Some(RoomsClaim::Some(rooms)) => room_access(rooms),
                };
                if let Some(exp) = claims.exp {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                    // Validation already refused a token past exp + leeway.
                    identity.expires_in = Some(Duration::from_secs(exp.saturating_sub(now)));
                }
                Ok(identity)
            }
        }
    }
}

fn anonymous(allowed: bool) -> Result<Identity, Refusal> {
    if allowed { Ok(Identity::new(Role::Guest)) } else { Err(unauthorized("credentials required")) }
}

/// `Authorization: Bearer …`, else `?token=…` (browsers cannot set headers).
fn credentials(request: &UpgradeRequest<'_>) -> Option<String> {
    let header = request
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|v| v.trim().to_owned());
    header.or_else(|| request.query?.split('&').find_map(|pair| pair.strip_prefix("token=").map(percent_decode)))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn room_access(rooms: &[String]) -> RoomAccess {
    if rooms.is_empty() || rooms.iter().any(|r| r == "*") {
        return RoomAccess::All;
    }
    // Names that are not valid room names can never match a room.
    RoomAccess::Only(rooms.iter().filter_map(|r| Name::parse(r).ok()).collect())
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Bb%3D%3D"), "a+b==");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%4"), "end%4");
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secrets"));
    }
}
