//! The one error type of the client.

use std::time::Duration;

use arqon_protocol::{ErrorCode, ProtocolError};

/// Everything that can go wrong talking to the bus.
///
/// Cheap to clone, so one failure can be reported to every request it
/// affects. Server-side refusals keep their wire [`ErrorCode`]; match on
/// [`ClientError::code`] to branch on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The bus refused the request with an `error` frame (PROTOCOL.md
    /// section 6), or the client refused it locally for a reason the bus
    /// would have given the same code for (an invalid room or channel name).
    #[error("{code}: {message}")]
    Rejected {
        /// The wire error code.
        code: ErrorCode,
        /// The bus's explanation, safe to show a user.
        message: String,
        /// With `RATE_LIMITED`: how long to wait before retrying.
        retry_after_ms: Option<u64>,
    },
    /// The server API ([`ServerApi`](crate::ServerApi)) refused the call: the
    /// HTTP status and the wire error code of its `{"error": {…}}` body
    /// (PROTOCOL.md section 8.3). Items of a
    /// [`ServerApi::batch`](crate::ServerApi::batch) that failed carry the
    /// status the API gives that code.
    #[error("HTTP {status} {code}: {message}")]
    Api {
        /// The HTTP status, e.g. 401.
        status: u16,
        /// The wire error code, e.g. `UNAUTHORIZED`.
        code: ErrorCode,
        /// The bus's explanation, safe to show a user.
        message: String,
        /// With `RATE_LIMITED`: how long to wait before retrying.
        retry_after_ms: Option<u64>,
    },
    /// No answer arrived within the request (or connect) timeout. The
    /// request may still have been applied by the bus.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection dropped while the request was in flight; the bus may or
    /// may not have applied it. The client is reconnecting (unless
    /// [`ClientOptions::reconnect`](crate::ClientOptions::reconnect) is off).
    #[error("connection lost before the answer arrived")]
    ConnectionLost,
    /// The client was closed (by [`Client::close`](crate::Client::close), by
    /// dropping every handle, or because it gave up reconnecting).
    #[error("client closed")]
    Closed,
    /// The WebSocket layer failed: connect refused, handshake rejected, I/O
    /// error, a URL it cannot use.
    #[error("transport: {0}")]
    Transport(String),
    /// The bus answered with something this client cannot read (a frame or a
    /// payload that does not match PROTOCOL.md).
    #[error("unexpected answer from the bus: {0}")]
    Decode(String),
    /// A payload or argument could not be serialized to JSON (for example a
    /// map with non-string keys).
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

impl ClientError {
    /// The wire error code, for [`ClientError::Rejected`] and
    /// [`ClientError::Api`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Rejected { code, .. } | ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The HTTP status, for [`ClientError::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A rejection with no retry hint.
    pub(crate) fn rejected(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError::Rejected { code, message: message.into(), retry_after_ms: None }
    }
}

impl From<ProtocolError> for ClientError {
    fn from(err: ProtocolError) -> Self {
        ClientError::rejected(err.code, err.message)
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(err: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error;
        match err {
            // The bus refuses an upgrade with an HTTP status and a JSON error
            // body (PROTOCOL.md section 1): surface its code, e.g. UNAUTHORIZED.
            Error::Http(response) => {
                let status = response.status();
                let body = response.body().as_deref().unwrap_or_default();
                match parse_error_body(body) {
                    Some(rejected) => rejected,
                    None => ClientError::Transport(format!("upgrade refused with HTTP {status}")),
                }
            }
            other => ClientError::Transport(other.to_string()),
        }
    }
}

/// `{"error":{"code":…,"message":…}}`, as sent with a refused upgrade.
fn parse_error_body(body: &[u8]) -> Option<ClientError> {
    #[derive(serde::Deserialize)]
    struct Body {
        error: WireError,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    Some(body.error.into_client_error())
}

/// The `error` object of an `error` frame.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct WireError {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

impl WireError {
    /// The code, if this client knows it.
    pub(crate) fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_wire(&self.code)
    }

    /// As a server API refusal with this HTTP status.
    pub(crate) fn into_api_error(self, status: u16) -> ClientError {
        match self.into_client_error() {
            ClientError::Rejected { code, message, retry_after_ms } => {
                ClientError::Api { status, code, message, retry_after_ms }
            }
            other => other,
        }
    }

    pub(crate) fn into_client_error(self) -> ClientError {
        // A code newer than this client is kept readable rather than dropped.
        let (code, message) = match ErrorCode::from_wire(&self.code) {
            Some(code) => (code, self.message),
            None => (ErrorCode::Internal, format!("{} (unknown code {})", self.message, self.code)),
        };
        ClientError::Rejected { code, message, retry_after_ms: self.retry_after_ms }
    }
}
