use std::fmt;

use crate::MessageId;

/// Every error code of the wire contract (PROTOCOL.md section 6).
///
/// The declaration order is the reporting precedence: when several errors
/// apply to one frame, the smallest variant is the one reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    /// Over the client's rate; the frame was not processed.
    RateLimited,
    /// The frame is not a JSON object.
    InvalidJson,
    /// Missing, unknown or wrong-typed field, or an impossible combination.
    InvalidEnvelope,
    /// `version` other than 1.
    UnsupportedVersion,
    /// Binary WebSocket frame.
    UnsupportedFrame,
    /// An id that is not `arq_` + ULID.
    InvalidId,
    /// A timestamp that does not parse or is too far from server time.
    InvalidTimestamp,
    /// No command of that name.
    UnknownCommand,
    /// A room or channel name outside the allowed alphabet or length.
    InvalidName,
    /// Missing, unknown or wrong-typed command argument.
    InvalidArgs,
    /// No identity.
    Unauthorized,
    /// Role too low, or a spoofed `from`.
    Forbidden,
    /// No such channel or client.
    NotFound,
    /// A frame over `max_message_bytes`.
    MessageTooLarge,
    /// History asked for while no backend can serve it.
    StorageUnavailable,
    /// A bug; details go to the log.
    Internal,
}

impl ErrorCode {
    /// Every code, in precedence order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::RateLimited,
        ErrorCode::InvalidJson,
        ErrorCode::InvalidEnvelope,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnsupportedFrame,
        ErrorCode::InvalidId,
        ErrorCode::InvalidTimestamp,
        ErrorCode::UnknownCommand,
        ErrorCode::InvalidName,
        ErrorCode::InvalidArgs,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MessageTooLarge,
        ErrorCode::StorageUnavailable,
        ErrorCode::Internal,
    ];

    /// The HTTP status the server API answers this code with (PROTOCOL.md
    /// section 8.3; the frame-level codes a command cannot produce count as
    /// the caller's error, 400).
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgs
            | ErrorCode::InvalidName
            | ErrorCode::InvalidEnvelope
            | ErrorCode::InvalidJson
            | ErrorCode::InvalidId
            | ErrorCode::InvalidTimestamp
            | ErrorCode::UnsupportedVersion
            | ErrorCode::UnsupportedFrame => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound | ErrorCode::UnknownCommand => 404,
            ErrorCode::MessageTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::StorageUnavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::InvalidEnvelope => "INVALID_ENVELOPE",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::UnsupportedFrame => "UNSUPPORTED_FRAME",
            ErrorCode::InvalidId => "INVALID_ID",
            ErrorCode::InvalidTimestamp => "INVALID_TIMESTAMP",
            ErrorCode::UnknownCommand => "UNKNOWN_COMMAND",
            ErrorCode::InvalidName => "INVALID_NAME",
            ErrorCode::InvalidArgs => "INVALID_ARGS",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::StorageUnavailable => "STORAGE_UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// Parses a wire code.
    pub fn from_wire(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame the bus refuses: the code and message to report, and the id of the
/// offending frame when it had a valid one (it becomes `request_id`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// The wire code.
    pub code: ErrorCode,
    /// A human-readable explanation, safe to show the client.
    pub message: String,
    /// The `id` of the frame being answered, if it was readable and valid.
    pub request_id: Option<MessageId>,
    /// For `RATE_LIMITED`: when to try again, in milliseconds.
    pub retry_after_ms: Option<u64>,
}

impl ProtocolError {
    /// An error with no request id attached yet.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError { code, message: message.into(), request_id: None, retry_after_ms: None }
    }

    /// Says when to try again (sent as `retry_after_ms`).
    #[must_use]
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        self
    }

    /// Attaches the id of the frame being answered.
    #[must_use]
    pub fn with_request_id(mut self, id: Option<MessageId>) -> Self {
        self.request_id = id;
        self
    }
}
