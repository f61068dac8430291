use bytes::Bytes;

use crate::Frame;

/// One item of a connection's outbound queue.
///
/// A batch counts as one queue slot: `join_channel` with `since` replays up to
/// a channel's whole kept history at once, which must not overflow a queue
/// sized for live traffic.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A single frame.
    Frame(Frame),
    /// Frames to write back to back, in order.
    Batch(Vec<Frame>),
    /// A binary WebSocket message. The bus itself never sends binary (every
    /// envelope is a text frame); this variant exists for harnesses built on
    /// the transport, such as the echo server the Autobahn|Testsuite runs
    /// against.
    Binary(Bytes),
}

/// Why the bus closes a connection, as a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// The WebSocket close code.
    pub code: u16,
    /// A short reason sent in the close frame.
    pub reason: &'static str,
}

impl CloseReason {
    /// 1001: the server is shutting down.
    pub const SHUTDOWN: CloseReason = CloseReason { code: 1001, reason: "server shutting down" };
    /// 1008: the client's outbound queue overflowed.
    pub const SLOW_CONSUMER: CloseReason = CloseReason { code: 1008, reason: "slow consumer" };
    /// 1008: the client kept breaking the rules (e.g. the rate limit).
    pub const ABUSE: CloseReason = CloseReason { code: 1008, reason: "repeated abuse" };
    /// 1008: the client's credentials expired while it was connected.
    pub const TOKEN_EXPIRED: CloseReason = CloseReason { code: 1008, reason: "token expired" };
    /// 1009: a frame over `max_message_bytes`.
    pub const TOO_LARGE: CloseReason = CloseReason { code: 1009, reason: "message too large" };
}
