//! The join hook (`[hooks] join_url`, docs/hooks.md): in rooms with the
//! `join_hook` option, every join is first put to the application. 200
//! allows it; 401 or 403 refuse it (`FORBIDDEN`, with the application's
//! message); anything else (down, slow, another status) refuses it too, as
//! `INTERNAL` so the client may try again: a join hook always fails closed.

use std::sync::Arc;
use std::time::Duration;

use arqon_config::HooksConfig;
use arqon_protocol::{ErrorCode, ProtocolError, RawValue, Role};
use arqon_routing::{JoinAsk, JoinGuard, JoinVerdict};
use bytes::Bytes;
use serde::Serialize;

use crate::ServerError;
use crate::connect_hook::message_of;
use crate::http_client::Target;

/// The configured join hook.
#[derive(Debug)]
pub(crate) struct HttpJoinGuard {
    target: Target,
    timeout: Duration,
}

/// What the bus sends the hook.
#[derive(Serialize)]
struct Ask<'a> {
    room: &'a str,
    channel: &'a str,
    client_id: String,
    user: Option<&'a str>,
    role: Role,
    info: Option<&'a RawValue>,
}

impl HttpJoinGuard {
    /// The hook, if configured; an `https://` URL whose CA file cannot be
    /// used is an error.
    pub(crate) fn from_config(config: &HooksConfig) -> Result<Option<Arc<dyn JoinGuard>>, ServerError> {
        if config.join_url.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(HttpJoinGuard {
            target: Target::parse(&config.join_url, &config.ca_file, "hooks.ca_file")?,
            timeout: Duration::from_millis(config.timeout_ms),
        })))
    }
}

fn unavailable(why: &str) -> ProtocolError {
    tracing::warn!(reason = why, "the join hook gave no usable answer");
    ProtocolError::new(ErrorCode::Internal, "the join hook is unavailable; try again")
}

impl JoinGuard for HttpJoinGuard {
    fn allow(&self, ask: &JoinAsk<'_>) -> JoinVerdict {
        let body = serde_json::to_vec(&Ask {
            room: ask.key.room.as_str(),
            channel: ask.key.channel.as_str(),
            client_id: ask.client_id.to_string(),
            user: ask.user,
            role: ask.role,
            info: ask.info,
        });
        let (target, timeout) = (self.target.clone(), self.timeout);
        let what = format!("{}/{}", ask.key.room, ask.key.channel);
        Box::pin(async move {
            let body = body.map_err(|e| unavailable(&e.to_string()))?;
            match tokio::time::timeout(timeout, target.post(Bytes::from(body), &[])).await {
                Ok(Ok((status, answer))) => match status.as_u16() {
                    200..=299 => Ok(()),
                    401 | 403 => Err(ProtocolError::new(
                        ErrorCode::Forbidden,
                        message_of(&answer).unwrap_or_else(|| format!("the application refused joining {what}")),
                    )),
                    other => Err(unavailable(&format!("status {other}"))),
                },
                Ok(Err(e)) => Err(unavailable(&e.to_string())),
                Err(_) => Err(unavailable("timed out")),
            }
        })
    }
}
