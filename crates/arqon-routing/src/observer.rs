//! The seam through which the bus reports what happens in it.

use std::time::Duration;

use arqon_outbound::SlowCause;
use arqon_protocol::{ChannelKey, ClientId, ErrorCode, Name, Role};

/// What kind of frame a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A decoded `type: message`.
    Message,
    /// A decoded `type: command`.
    Command,
    /// A text frame that failed decoding.
    Invalid,
    /// A binary frame.
    Binary,
    /// A frame over `max_message_bytes`.
    Oversize,
}

impl FrameKind {
    /// The label used in metrics and telemetry.
    pub const fn as_str(self) -> &'static str {
        match self {
            FrameKind::Message => "message",
            FrameKind::Command => "command",
            FrameKind::Invalid => "invalid",
            FrameKind::Binary => "binary",
            FrameKind::Oversize => "oversize",
        }
    }
}

/// Something that happened in the bus.
#[derive(Debug, Clone)]
pub enum BusEvent<'a> {
    /// A client connected.
    ConnectionOpened {
        /// Its id.
        client_id: ClientId,
        /// Its role.
        role: Role,
    },
    /// A client disconnected.
    ConnectionClosed {
        /// Its id.
        client_id: ClientId,
    },
    /// A frame arrived.
    FrameReceived {
        /// What kind.
        kind: FrameKind,
    },
    /// A message was delivered (queued) to `fanout` clients.
    MessageRouted {
        /// Target room (channel and room-wide messages).
        room: Option<&'a Name>,
        /// Target channel (channel messages).
        channel: Option<&'a Name>,
        /// Clients reached on this node.
        fanout: usize,
        /// Encoded frame size.
        bytes: usize,
        /// From frame receipt to the last delivery queued, if this message
        /// was timed: a connection's first message and one in
        /// [`LATENCY_SAMPLE`] after it, or every one while
        /// [`Observer::times_every_message`] says so.
        latency: Option<Duration>,
    },
    /// A command finished.
    CommandExecuted {
        /// Its name.
        command: &'static str,
        /// `None` on success, else the error code sent.
        error: Option<ErrorCode>,
        /// How long it ran.
        duration: Duration,
    },
    /// An error frame was sent to a client.
    Error {
        /// The client.
        client_id: ClientId,
        /// The code.
        code: ErrorCode,
    },
    /// A client was refused a frame by its rate limit.
    RateLimited {
        /// The client.
        client_id: ClientId,
    },
    /// A client was closed as a slow consumer (reported when it goes).
    SlowConsumer {
        /// The client.
        client_id: ClientId,
        /// Which limit it broke.
        cause: SlowCause,
    },
    /// A channel was created.
    ChannelCreated {
        /// Which.
        key: &'a ChannelKey,
    },
    /// A channel was deleted.
    ChannelDeleted {
        /// Which.
        key: &'a ChannelKey,
    },
    /// A client became a member of a channel on this node.
    MemberAdded {
        /// The channel.
        key: &'a ChannelKey,
        /// The client.
        client_id: ClientId,
        /// Its user, if any.
        user: Option<&'a str>,
        /// It is the channel's first member (on every node, as far as this
        /// node knows: the channel is now occupied).
        occupied: bool,
        /// It is its user's first connection in the channel (an anonymous
        /// client always is).
        new_user: bool,
    },
    /// A client stopped being a member of a channel on this node.
    MemberRemoved {
        /// The channel.
        key: &'a ChannelKey,
        /// The client.
        client_id: ClientId,
        /// Its user, if any.
        user: Option<&'a str>,
        /// It was the channel's last member (on every node, as far as this
        /// node knows: now vacated).
        vacated: bool,
        /// It was its user's last connection in the channel.
        user_gone: bool,
    },
    /// A channel message was stored and delivered (not a retry).
    MessagePublished {
        /// The channel.
        key: &'a ChannelKey,
        /// The message as delivered.
        frame: &'a arqon_protocol::Frame,
    },
}

/// Receives every [`BusEvent`]. Called inline on the bus's hot path: it must
/// be cheap and must never block (count with atomics; hand off, bounded,
/// anything heavier).
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// Something happened.
    fn observe(&self, event: &BusEvent<'_>);

    /// Whether every routed message should be timed now, rather than one in
    /// [`LATENCY_SAMPLE`] per connection (e.g. while someone watches each
    /// message's latency live). Asked once per message: keep it cheap.
    fn times_every_message(&self) -> bool {
        false
    }
}

/// One routed message in this many, per connection, carries its routing
/// latency in [`BusEvent::MessageRouted`]: reading the clock for every
/// message cost a few percent of the bus's CPU, and a latency histogram
/// needs a sample.
pub const LATENCY_SAMPLE: u8 = 8;

/// The default: observes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn observe(&self, _event: &BusEvent<'_>) {}
}
