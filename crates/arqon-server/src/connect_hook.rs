//! The connect hook (`[hooks] connect_url`, docs/hooks.md): on every
//! WebSocket upgrade the bus asks the application who the client is.
//!
//! The bus POSTs what the request carried (the token from the header or the
//! query, the cookies, the remote address, the path); a 200 answer
//! `{user, role, info, rooms}` admits the client as that identity, 401 or 403
//! refuses it with that status. Anything else (the hook down, slower than
//! `timeout_ms`, an answer that is not that JSON) follows `on_failure`:
//! refused with 503 (the default: fail closed), or admitted as a guest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arqon_config::{HookFailure, HooksConfig};
use arqon_protocol::{RawValue, Role, check_user};
use arqon_routing::{Identity, RoomAccess};
use arqon_transport::{Refusal, UpgradeRequest, VetRequest};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ServerError;
use crate::auth::{credentials, room_access};
use crate::http_client::Target;

/// Largest `info` accepted from the hook, as from a JWT.
const MAX_INFO_BYTES: usize = 1024;

/// The configured hook.
#[derive(Debug)]
pub(crate) struct ConnectHook {
    target: Target,
    timeout: Duration,
    on_failure: HookFailure,
}

/// What the bus sends the hook.
#[derive(Serialize)]
struct Ask<'a> {
    /// `Authorization: Bearer …` or `?token=…`, if given.
    token: Option<String>,
    cookies: BTreeMap<&'a str, &'a str>,
    remote_addr: String,
    path: &'a str,
    origin: Option<&'a str>,
    user_agent: Option<&'a str>,
}

/// A 200 answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Admit {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    rooms: Option<Rooms>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Rooms {
    All(String),
    Some(Vec<String>),
}

fn refusal(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { status, code, message: message.into() }
}

impl ConnectHook {
    /// The hook, if configured; an `https://` URL whose CA file cannot be
    /// used is an error.
    pub(crate) fn from_config(config: &HooksConfig) -> Result<Option<Arc<ConnectHook>>, ServerError> {
        if config.connect_url.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(ConnectHook {
            target: Target::parse(&config.connect_url, &config.ca_file, "hooks.ca_file")?,
            timeout: Duration::from_millis(config.timeout_ms),
            on_failure: config.on_failure,
        })))
    }

    /// Who the client of `request` is, as the application says.
    pub(crate) async fn ask(&self, request: VetRequest) -> Result<Identity, Refusal> {
        let body = {
            let upgrade = UpgradeRequest {
                path: &request.path,
                query: request.query.as_deref(),
                headers: &request.headers,
                peer: request.peer,
            };
            let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
            let cookies = request
                .headers
                .get_all("cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .collect();
            let ask = Ask {
                token: credentials(&upgrade),
                cookies,
                remote_addr: request.peer.to_string(),
                path: &request.path,
                origin: header("origin"),
                user_agent: header("user-agent"),
            };
            serde_json::to_vec(&ask).map_err(|e| refusal(500, "INTERNAL", e.to_string()))?
        };
        let answer = tokio::time::timeout(self.timeout, self.target.post(Bytes::from(body), &[])).await;
        let failed = |why: String| {
            tracing::warn!(reason = %why, peer = %request.peer, "the connect hook gave no usable answer");
            match self.on_failure {
                HookFailure::Refuse => Err(refusal(503, "INTERNAL", "the connect hook is unavailable; try again")),
                HookFailure::Guest => Ok(Identity::new(Role::Guest)),
            }
        };
        let (status, body) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return failed(format!("request failed: {e}")),
            Err(_) => return failed(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        match status.as_u16() {
            200 => match identity(&body) {
                Ok(identity) => Ok(identity),
                Err(why) => failed(why),
            },
            401 | 403 => {
                let code = if status.as_u16() == 401 { "UNAUTHORIZED" } else { "FORBIDDEN" };
                Err(refusal(
                    status.as_u16(),
                    code,
                    message_of(&body).unwrap_or_else(|| "refused by the application".into()),
                ))
            }
            other => failed(format!("status {other}")),
        }
    }
}

/// The identity in a 200 answer.
fn identity(body: &[u8]) -> Result<Identity, String> {
    let admit: Admit = serde_json::from_slice(body).map_err(|e| format!("answer is not the expected JSON: {e}"))?;
    let mut identity = Identity::new(admit.role.unwrap_or(Role::User));
    if let Some(user) = admit.user {
        check_user(&user).map_err(|e| format!("user: {}", e.message))?;
        identity.user = Some(Arc::from(user.as_str()));
    }
    if let Some(info) = admit.info {
        if info.get().len() > MAX_INFO_BYTES || !info.get().trim_start().starts_with('{') {
            return Err(format!("info must be a JSON object of at most {MAX_INFO_BYTES} bytes"));
        }
        identity.info = Some(Arc::from(info));
    }
    identity.rooms = match admit.rooms {
        None => RoomAccess::All,
        Some(Rooms::All(star)) if star == "*" => RoomAccess::All,
        Some(Rooms::All(one)) => room_access(std::slice::from_ref(&one)),
        Some(Rooms::Some(rooms)) if rooms.is_empty() => RoomAccess::Only(Default::default()),
        Some(Rooms::Some(rooms)) => room_access(&rooms),
    };
    Ok(identity)
}

/// `{"error": {"message"}}` or `{"message"}` of a refusal, if any.
pub(crate) fn message_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = value.get("error").and_then(|e| e.get("message")).or_else(|| value.get("message"))?;
    message.as_str().map(|m| m.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_identities_or_reasons() {
        let id = identity(br#"{"user":"ann","role":"admin","info":{"n":1},"rooms":["a","b"]}"#).unwrap();
        assert_eq!((id.role, id.user.as_deref()), (Role::Admin, Some("ann")));
        assert!(matches!(id.rooms, RoomAccess::Only(ref r) if r.len() == 2));
        let id = identity(b"{}").unwrap();
        assert_eq!((id.role, id.user.is_none(), id.rooms), (Role::User, true, RoomAccess::All));
        assert!(identity(b"not json").is_err());
        assert!(identity(br#"{"user":"ann","admin":true}"#).is_err(), "unknown fields are refused");
        assert!(identity(br#"{"role":"root"}"#).is_err());
        assert!(identity(br#"{"info":"text"}"#).is_err());
        assert!(identity(br#"{"user":""}"#).is_err());
        assert_eq!(message_of(br#"{"error":{"message":"banned"}}"#).as_deref(), Some("banned"));
    }
}
