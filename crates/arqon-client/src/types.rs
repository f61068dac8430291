//! What the bus sends: delivered messages, events, and the typed payloads of
//! every command's response (PROTOCOL.md sections 4 and 5).

use std::collections::BTreeMap;

use arqon_protocol::{ChannelKey, ClientId, MessageId, Name, RawValue, Role, Sender, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::ClientError;

/// One message as delivered live, replayed by `join_channel` with `since`,
/// or returned by `history`.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// The message id; unique within its channel's history.
    pub id: MessageId,
    /// The room, for channel and room-wide messages.
    #[serde(default)]
    pub room: Option<Name>,
    /// The channel, for channel messages.
    #[serde(default)]
    pub channel: Option<Name>,
    /// The sender: a client, or the application's backend through the
    /// server API ([`Sender::Server`], `from: "server"` on the wire).
    #[serde(deserialize_with = "sender")]
    pub from: Sender,
    /// The sender's user (PROTOCOL.md section 8.2): the identity in its
    /// credential, set by the bus; `None` for an anonymous sender and for
    /// messages sent through the server API.
    #[serde(default)]
    pub user: Option<String>,
    /// The body, exactly as the sender wrote it; JSON `null` if it sent none.
    #[serde(default = "null_payload")]
    pub payload: Box<RawValue>,
    /// Pass-through metadata (trace ids and such); empty if none was sent.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// When the bus received it.
    #[serde(deserialize_with = "timestamp")]
    pub timestamp: Timestamp,
}

impl Message {
    /// Parses the payload into `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.payload.get())
    }

    /// The sending client's id; `None` when the server API sent it.
    pub fn from_client(&self) -> Option<ClientId> {
        match self.from {
            Sender::Client(id) => Some(id),
            Sender::Server => None,
        }
    }

    /// The sender as the wire writes it: a client id, or `server`.
    pub fn from_label(&self) -> String {
        sender_label(&self.from)
    }

    /// The channel this message was published to, if it was a channel message.
    pub fn channel_key(&self) -> Option<ChannelKey> {
        Some(ChannelKey::new(self.room.clone()?, self.channel.clone()?))
    }
}

pub(crate) fn null_payload() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// `from`: a client id, or `server` (PROTOCOL.md section 8.3).
pub(crate) fn parse_sender(text: &str) -> Result<Sender, String> {
    if text == arqon_protocol::encode::SERVER_SENDER {
        return Ok(Sender::Server);
    }
    ClientId::parse(text).map(Sender::Client).map_err(|e| e.message)
}

/// A [`Sender`] as the wire writes it.
pub(crate) fn sender_label(sender: &Sender) -> String {
    match sender {
        Sender::Client(id) => id.to_string(),
        Sender::Server => arqon_protocol::encode::SERVER_SENDER.to_owned(),
    }
}

fn sender<'de, D: Deserializer<'de>>(d: D) -> Result<Sender, D::Error> {
    let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
    parse_sender(&text).map_err(serde::de::Error::custom)
}

/// Deserializes an RFC 3339 timestamp.
pub(crate) fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
    Timestamp::parse(&text).map_err(serde::de::Error::custom)
}

/// An event from the bus (PROTOCOL.md section 5). `welcome` is consumed by the
/// client itself; see [`Client::server_info`](crate::Client::server_info).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Another client joined a channel you are in.
    MemberJoined {
        /// The room.
        room: Name,
        /// The channel.
        channel: Name,
        /// Who joined.
        client_id: ClientId,
        /// Its user (the identity of its credential), if any.
        user: Option<String>,
        /// Its JWT's `info` claim (an object), or `Null`.
        info: serde_json::Value,
    },
    /// Another client left (or disconnected from) a channel you are in.
    MemberLeft {
        /// The room.
        room: Name,
        /// The channel.
        channel: Name,
        /// Who left.
        client_id: ClientId,
        /// Its user (the identity of its credential), if any.
        user: Option<String>,
        /// Its JWT's `info` claim (an object), or `Null`.
        info: serde_json::Value,
    },
    /// The application's backend took this client out of a channel (the
    /// server API's `unsubscribe`); the client stops re-joining it.
    ChannelLeft {
        /// The room.
        room: Name,
        /// The channel.
        channel: Name,
    },
    /// The application's backend is closing this connection (the server
    /// API's `disconnect`); the close follows with the same code. The client
    /// reconnects afterwards if
    /// [`ClientOptions::reconnect`](crate::ClientOptions::reconnect) is on:
    /// call [`Client::close`](crate::Client::close) on this event to honour
    /// the disconnect.
    Disconnected {
        /// The close code, 4000 to 4999.
        code: u16,
        /// Why, in the application's words (may be empty).
        reason: String,
    },
    /// A channel you were in was deleted; you are no longer a member, and the
    /// client stops re-joining it.
    ChannelDeleted {
        /// The room.
        room: Name,
        /// The channel.
        channel: Name,
    },
    /// In a cluster: the messages delivered from this channel after
    /// `last_id` were not its history (some missing, or out of order),
    /// because the bus node lost touch with the others. The client repairs
    /// the channel by itself (it re-joins from `last_id` and delivers only
    /// what it had not delivered); this event says that what came before the
    /// repair may have been out of order.
    ChannelGap {
        /// The room.
        room: Name,
        /// The channel.
        channel: Name,
        /// The last message received in history order; `None` if none was
        /// on this connection.
        last_id: Option<MessageId>,
    },
    /// The bus is stopping. The client reconnects (with backoff) if
    /// [`ClientOptions::reconnect`](crate::ClientOptions::reconnect) is on.
    Shutdown {
        /// Why, in the bus's words.
        reason: String,
    },
    /// An event this client does not know, kept whole.
    Other {
        /// The `event` field.
        name: String,
        /// The whole event payload.
        payload: serde_json::Value,
    },
}

/// One item of the [`Events`](crate::Events) stream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Incoming {
    /// A delivered message: a channel message (live or replayed), a room-wide
    /// message or a direct message. Channel messages arrive once each, in the
    /// order the bus stored them, across reconnects (see the crate docs).
    Message(Message),
    /// An event.
    Event(Event),
    /// An `error` frame that answers no pending request: the refusal of a
    /// fire-and-forget [`Client::send`](crate::Client::send), whose id is
    /// `request_id`.
    Error {
        /// The id of the refused frame, if the bus could read it.
        request_id: Option<MessageId>,
        /// The refusal.
        error: ClientError,
    },
    /// The connection dropped; requests in flight failed with
    /// [`ClientError::ConnectionLost`] and the client is reconnecting.
    Disconnected {
        /// Why the connection was given up.
        error: ClientError,
    },
    /// A new connection is up and every channel the client was in has been
    /// re-joined with `since` = the last message it delivered from there.
    /// Replayed messages of the last channels may follow this item.
    Reconnected {
        /// The client id the bus assigned to the new connection.
        client_id: ClientId,
        /// Connection attempts it took (1: the first attempt succeeded).
        attempts: u32,
        /// Channels re-joined.
        rejoined: Vec<ChannelKey>,
        /// Channels that could not be re-joined (e.g. deleted meanwhile); the
        /// client no longer considers itself a member of them.
        failed: Vec<(ChannelKey, ClientError)>,
    },
    /// A replay (after a reconnect, or after the incoming queue overflowed)
    /// could not reach back far enough: the channel's kept history no longer
    /// held the last message delivered from it, so messages in between may
    /// be missing.
    Truncated {
        /// The channel concerned.
        channel: ChannelKey,
    },
    /// This many items other than channel messages (which are replayed
    /// instead) were dropped because the incoming queue was full.
    Lagged {
        /// How many items were dropped since the last `Lagged`.
        dropped: u64,
    },
    /// The client stopped for good: the last item before the stream ends
    /// (best effort: not sent if the queue is full).
    Closed {
        /// Why.
        error: ClientError,
    },
}

/// What the bus says about itself and this connection, from its `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerInfo {
    /// This connection's client id.
    pub client_id: ClientId,
    /// This connection's role.
    pub role: Role,
    /// This connection's user: the identity of its credential (a static
    /// token's `client`, a JWT's `sub`); `None` when anonymous.
    #[serde(default)]
    pub user: Option<String>,
    /// The bus's version.
    pub server_version: String,
    /// Keep-alive interval, seconds; the client treats a connection that is
    /// silent for twice as long as dead.
    pub heartbeat_s: u64,
    /// The limits the bus applies to this connection.
    pub limits: Limits,
}

/// Per-connection limits announced in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Limits {
    /// Largest frame accepted, bytes.
    pub max_message_bytes: u64,
    /// Sustained frames per second; 0 means unlimited.
    pub rate_per_s: u64,
    /// Burst allowance, frames.
    pub burst: u64,
    /// Bytes of frames the bus queues for this connection before closing it
    /// as a slow consumer (PROTOCOL.md 8.1); 0 if the bus does not say.
    #[serde(default)]
    pub max_backlog_bytes: u64,
}

/// `ping`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Pong {
    /// Always `true`.
    pub pong: bool,
}

/// `status`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    /// The bus's version.
    pub version: String,
    /// Seconds since the bus started.
    pub uptime_s: u64,
    /// Open client connections.
    pub connections: u64,
    /// Rooms with at least one channel.
    pub rooms: u64,
    /// Channels.
    pub channels: u64,
    /// The history backend.
    pub storage: StorageStatus,
}

/// The storage part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StorageStatus {
    /// Backend name, e.g. `memory` or `redis`.
    pub backend: String,
    /// Whether it can serve history now.
    pub healthy: bool,
}

/// `help`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Help {
    /// Every command of the bus.
    pub commands: Vec<CommandHelp>,
}

/// One command in [`Help`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommandHelp {
    /// Its name, for [`Client::command`](crate::Client::command).
    pub name: String,
    /// What it does.
    pub description: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<ArgHelp>,
    /// The least role allowed to run it.
    pub role: Role,
    /// Only the server API has it (`POST /api/<name>`).
    #[serde(default)]
    pub api_only: bool,
    /// Whether this connection may run it.
    pub allowed: bool,
}

/// One argument in [`CommandHelp`]. PROTOCOL.md does not fix this shape; the
/// fields are read leniently (missing ones take their default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ArgHelp {
    /// Argument name.
    #[serde(default)]
    pub name: String,
    /// Its type, e.g. `name`, `message_id`, `limit`, `json`, `meta`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Whether it must be given.
    #[serde(default)]
    pub required: bool,
    /// What it means.
    #[serde(default)]
    pub description: String,
}

/// `create_channel`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelCreated {
    /// The room.
    pub room: Name,
    /// The channel.
    pub channel: Name,
    /// `false` if it already existed.
    pub created: bool,
}

/// `delete_channel`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelDeleted {
    /// The room.
    pub room: Name,
    /// The channel.
    pub channel: Name,
    /// Always `true`.
    pub deleted: bool,
}

/// `join_channel`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Joined {
    /// The room.
    pub room: Name,
    /// The channel.
    pub channel: Name,
    /// Member count, including this client.
    pub members: u64,
    /// With `since`: `Some(true)` if that id was no longer kept, so the
    /// replay starts at the oldest kept message and some may be missing.
    #[serde(default)]
    pub truncated: Option<bool>,
}

/// `leave_channel`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Left {
    /// The room.
    pub room: Name,
    /// The channel.
    pub channel: Name,
    /// `false` if this client was not a member.
    pub left: bool,
}

/// `list_channels`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelList {
    /// The channels.
    pub channels: Vec<ChannelSummary>,
}

/// One channel in [`ChannelList`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelSummary {
    /// The room.
    pub room: Name,
    /// The channel.
    pub channel: Name,
    /// Member count.
    pub members: u64,
}

/// `channel_info`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelInfo {
    /// The room.
    pub room: Name,
    /// The channel.
    pub channel: Name,
    /// Member count.
    pub members: u64,
    /// When the channel was created.
    #[serde(deserialize_with = "timestamp")]
    pub created_at: Timestamp,
    /// Messages kept in history.
    pub stored: u64,
    /// The newest kept message, if any.
    #[serde(default)]
    pub last_id: Option<MessageId>,
}

/// `history`'s answer, as sent; [`Client::history`](crate::Client::history)
/// returns its messages.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryPage {
    pub(crate) messages: Vec<Message>,
}

/// `publish`'s answer.
#[derive(Debug, Deserialize)]
pub(crate) struct Published {
    pub(crate) id: MessageId,
}

/// `presence`'s answer: one page of a channel's members.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Presence {
    /// Members, ordered by client id, at most the `limit` asked for. The
    /// next page starts after the last one's `client_id`.
    pub members: Vec<PresenceMember>,
    /// Connections in the channel (all pages).
    pub total: u64,
    /// Distinct users in the channel; each anonymous connection counts as one.
    pub users: u64,
}

/// One member in [`Presence`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PresenceMember {
    /// Its connection.
    pub client_id: ClientId,
    /// Its user, if the connection has a credential.
    #[serde(default)]
    pub user: Option<String>,
    /// Its JWT's `info` claim (an object) as is, or `Null`.
    #[serde(default)]
    pub info: serde_json::Value,
    /// When it joined the channel.
    #[serde(deserialize_with = "timestamp")]
    pub joined_at: Timestamp,
}

/// `presence_stats`'s answer (server API only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PresenceStats {
    /// Connections in the channel.
    pub total: u64,
    /// Distinct users; each anonymous connection counts as one.
    pub users: u64,
}
