//! Close codes the bus sends.

/// Why the bus closes a connection, as a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// The WebSocket close code.
    pub code: u16,
    /// A short reason sent in the close frame.
    pub reason: &'static str,
}

impl CloseReason {
    /// 1000: a normal closure (the client asked for it).
    pub const NORMAL: CloseReason = CloseReason { code: 1000, reason: "normal closure" };
    /// 1001: the server is shutting down.
    pub const SHUTDOWN: CloseReason = CloseReason { code: 1001, reason: "server shutting down" };
    /// 1008: the client does not read fast enough (PROTOCOL.md section 8.1:
    /// backlog bytes, write timeout or the global budget).
    pub const SLOW_CONSUMER: CloseReason = CloseReason { code: 1008, reason: "slow consumer" };
    /// 1008: the client kept breaking the rules (e.g. the rate limit).
    pub const ABUSE: CloseReason = CloseReason { code: 1008, reason: "repeated abuse" };
    /// 1008: the client's credentials expired while it was connected.
    pub const TOKEN_EXPIRED: CloseReason = CloseReason { code: 1008, reason: "token expired" };
    /// 1009: a frame over `max_message_bytes`.
    pub const TOO_LARGE: CloseReason = CloseReason { code: 1009, reason: "message too large" };
}
