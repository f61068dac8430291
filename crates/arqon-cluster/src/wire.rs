//! What nodes say to each other through Redis: topic and key names, the
//! framing of forwarded deliveries, and the control messages.

use arqon_protocol::{ChannelKey, ClientId, ErrorCode, Frame, MessageId, Name, ProtocolError, Timestamp};
use arqon_routing::{ActionReport, ActionTarget, ClientAction, Place};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Redis key and pub/sub topic names under one prefix (shared with storage).
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Names { prefix: prefix.to_owned() }
    }

    /// Control topic every node listens on.
    pub(crate) fn control(&self) -> String {
        format!("{}cluster", self.prefix)
    }

    /// Topic of one node: direct messages for its clients.
    pub(crate) fn node_topic(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    /// Topic of one channel's traffic. Names hold no `:`, so this is unambiguous.
    pub(crate) fn channel_topic(&self, key: &ChannelKey) -> String {
        format!("{}ch:{}:{}", self.prefix, key.room, key.channel)
    }

    /// Topic of room-wide messages.
    pub(crate) fn room_topic(&self, room: &Name) -> String {
        format!("{}room:{room}", self.prefix)
    }

    /// Topic of messages to users (`to: "user:NAME"`): every node listens,
    /// and delivers to its own connections of the user.
    pub(crate) fn users_topic(&self) -> String {
        format!("{}users", self.prefix)
    }

    /// Hash of one channel's members on every node: client id → a
    /// [`PresenceRecord`] as JSON.
    pub(crate) fn presence(&self, key: &ChannelKey) -> String {
        format!("{}{}", self.presence_prefix(), member_field(key))
    }

    /// What a presence hash's name is before its `room:channel`.
    pub(crate) fn presence_prefix(&self) -> String {
        format!("{}presence:", self.prefix)
    }

    /// What the membership ledger's hashes are named before `room:channel`:
    /// `NODE\nMEMBER` → 1 (who holds which member), and `MEMBER` → on how
    /// many nodes (see `ledger`).
    pub(crate) fn ledger_prefixes(&self) -> (String, String) {
        (format!("{}holders:", self.prefix), format!("{}identities:", self.prefix))
    }

    /// The membership ledger's two hashes of channel `key`: its holders and
    /// its identities.
    pub(crate) fn ledger(&self, key: &ChannelKey) -> (String, String) {
        let (holders, identities) = self.ledger_prefixes();
        let field = member_field(key);
        (format!("{holders}{field}"), format!("{identities}{field}"))
    }

    /// Set of the channels (`room:channel`) whose presence hash holds
    /// entries of `node`: what to clean once it is gone. It does not expire,
    /// so that the node's entries can be found however long it stayed away.
    pub(crate) fn presence_channels(&self, node: &str) -> String {
        format!("{}node:{node}:presence", self.prefix)
    }

    /// Set of the users with connections on `node`.
    pub(crate) fn users(&self, node: &str) -> String {
        format!("{}node:{node}:users", self.prefix)
    }

    /// Sorted set: node id → its last heartbeat (Unix ms).
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// Set of the client ids connected to `node`.
    pub(crate) fn clients(&self, node: &str) -> String {
        format!("{}node:{node}:clients", self.prefix)
    }

    /// Hash `room:channel` → members of that channel on `node`.
    pub(crate) fn members(&self, node: &str) -> String {
        format!("{}node:{node}:members", self.prefix)
    }

    /// What a received topic is.
    pub(crate) fn classify<'a>(&self, topic: &'a str) -> Topic<'a> {
        let Some(rest) = topic.strip_prefix(self.prefix.as_str()) else {
            return Topic::Unknown;
        };
        if rest == "cluster" {
            Topic::Control
        } else if rest.starts_with("ch:") || rest.starts_with("room:") || rest == "users" {
            Topic::Traffic
        } else if let Some(node) = rest.strip_prefix("node:") {
            Topic::Node(node)
        } else {
            Topic::Unknown
        }
    }
}

/// A received topic, classified.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Topic<'a> {
    Control,
    /// A channel or room topic; the target is inside the frame header.
    Traffic,
    Node(&'a str),
    Unknown,
}

/// The `room:channel` field of the members hash.
pub(crate) fn member_field(key: &ChannelKey) -> String {
    format!("{}:{}", key.room, key.channel)
}

/// Parses a `room:channel` field.
pub(crate) fn parse_member_field(field: &str) -> Option<ChannelKey> {
    let (room, channel) = field.split_once(':')?;
    ChannelKey::parse(room, channel).ok()
}

/// One member in a channel's presence hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PresenceRecord {
    /// The node holding the connection (its entries vanish with it).
    pub(crate) node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<String>,
    /// The credential's `info`, as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) info: Option<String>,
    pub(crate) joined_at: String,
}

/// What a forwarded frame is for. The header names the target so that one
/// parser serves every topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// Every member of the channel but `from`; stored messages carry their
    /// place in the channel's history.
    Channel(ChannelKey, ClientId, Place),
    /// Every member of the room's channels but `from`.
    Room(Name, ClientId),
    /// One client.
    Direct(ClientId),
    /// Every connection of a user (on the receiving node) but `from`.
    User(String, ClientId),
    /// Request `n`: an application action about a client or a user; the
    /// body is an [`ActionBody`], not a frame. Every node that gets it
    /// answers on the origin's topic.
    Action(u64, ActionTarget),
    /// The answer to this node's request `n`; the body is a [`ReplyBody`].
    Reply(u64),
}

/// A forwarded [`ClientAction`], as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ActionBody {
    Disconnect { code: u16, reason: Option<String> },
    Subscribe { room: String, channel: String, since: Option<String> },
    Unsubscribe { room: String, channel: String },
}

impl ActionBody {
    pub(crate) fn of(action: &ClientAction) -> Self {
        match action {
            ClientAction::Disconnect { code, reason } => ActionBody::Disconnect { code: *code, reason: reason.clone() },
            ClientAction::Subscribe { key, since } => ActionBody::Subscribe {
                room: key.room.to_string(),
                channel: key.channel.to_string(),
                since: since.map(|id| id.to_string()),
            },
            ClientAction::Unsubscribe { key } => {
                ActionBody::Unsubscribe { room: key.room.to_string(), channel: key.channel.to_string() }
            }
        }
    }

    /// The action, if every name and id in it is valid.
    pub(crate) fn action(&self) -> Option<ClientAction> {
        Some(match self {
            ActionBody::Disconnect { code, reason } => ClientAction::Disconnect { code: *code, reason: reason.clone() },
            ActionBody::Subscribe { room, channel, since } => ClientAction::Subscribe {
                key: ChannelKey::parse(room, channel).ok()?,
                since: since.as_deref().map(MessageId::parse).transpose().ok()?,
            },
            ActionBody::Unsubscribe { room, channel } => {
                ClientAction::Unsubscribe { key: ChannelKey::parse(room, channel).ok()? }
            }
        })
    }

    pub(crate) fn to_frame(&self) -> Frame {
        // A derived Serialize of strings and integers cannot fail.
        Frame::from_text(serde_json::to_string(self).unwrap_or_default())
    }
}

/// A node's answer to an action, as JSON: an [`ActionReport`] without the
/// count of nodes that did not answer (the asking node knows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReplyBody {
    touched: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answer: Option<String>,
    /// The refusal's wire code and message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<(String, String)>,
}

impl ReplyBody {
    pub(crate) fn of(report: &ActionReport) -> Self {
        ReplyBody {
            touched: report.touched,
            answer: report.answer.clone(),
            refused: report.refused.as_ref().map(|e| (e.code.to_string(), e.message.clone())),
        }
    }

    /// The report; a refusal with an unknown code becomes `INTERNAL`.
    pub(crate) fn report(self) -> ActionReport {
        let refused = self.refused.map(|(code, message)| {
            ProtocolError::new(ErrorCode::from_wire(&code).unwrap_or(ErrorCode::Internal), message)
        });
        ActionReport { touched: self.touched, answer: self.answer, refused, unanswered: 0 }
    }

    pub(crate) fn to_frame(&self) -> Frame {
        // A derived Serialize of strings and integers cannot fail.
        Frame::from_text(serde_json::to_string(self).unwrap_or_default())
    }
}

/// A forwarded delivery: `origin node`, target and the frame, as
/// `node \n c room channel from [place] \n frame` (or `r room from`, `d to`),
/// where a stored message's place is `position id`, or `?` while it has
/// none. The frame is the exact envelope delivered locally, so it is never
/// re-encoded.
pub(crate) fn encode_traffic(origin: &str, target: &Target, frame: &Frame) -> Bytes {
    let header = match target {
        Target::Channel(key, from, Place::Unstored) => format!("{origin}\nc {} {} {from}\n", key.room, key.channel),
        Target::Channel(key, from, Place::At(position, id)) => {
            format!("{origin}\nc {} {} {from} {position} {id}\n", key.room, key.channel)
        }
        Target::Channel(key, from, Place::Unplaced) => format!("{origin}\nc {} {} {from} ?\n", key.room, key.channel),
        Target::Room(room, from) => format!("{origin}\nr {room} {from}\n"),
        Target::Direct(to) => format!("{origin}\nd {to}\n"),
        // The user last: a user name may hold spaces (never a line break).
        Target::User(user, from) => format!("{origin}\nu {from} {user}\n"),
        Target::Action(request, ActionTarget::Client(id)) => format!("{origin}\na {request} c {id}\n"),
        Target::Action(request, ActionTarget::User(user)) => format!("{origin}\na {request} u {user}\n"),
        Target::Reply(request) => format!("{origin}\ny {request}\n"),
    };
    let mut out = BytesMut::with_capacity(header.len() + frame.len());
    out.put_slice(header.as_bytes());
    out.put_slice(frame.bytes());
    out.freeze()
}

/// Parses [`encode_traffic`]'s output; the frame shares `bytes`.
pub(crate) fn decode_traffic(bytes: &Bytes) -> Option<(&str, Target, Frame)> {
    let first = bytes.iter().position(|b| *b == b'\n')?;
    let second = first + 1 + bytes[first + 1..].iter().position(|b| *b == b'\n')?;
    let origin = std::str::from_utf8(&bytes[..first]).ok()?;
    let header = std::str::from_utf8(&bytes[first + 1..second]).ok()?;
    let parts: Vec<&str> = header.split(' ').collect();
    let target = match parts[..] {
        ["c", room, channel, from, ref place @ ..] => {
            let place = match place {
                [] => Place::Unstored,
                ["?"] => Place::Unplaced,
                [position, id] => Place::At(position.parse().ok()?, MessageId::parse(id).ok()?),
                _ => return None,
            };
            Target::Channel(ChannelKey::parse(room, channel).ok()?, ClientId::parse(from).ok()?, place)
        }
        ["r", room, from] => Target::Room(Name::parse(room).ok()?, ClientId::parse(from).ok()?),
        ["d", to] => Target::Direct(ClientId::parse(to).ok()?),
        ["u", from, ref user @ ..] if !user.is_empty() => Target::User(user.join(" "), ClientId::parse(from).ok()?),
        ["a", request, "c", id] => {
            Target::Action(request.parse().ok()?, ActionTarget::Client(ClientId::parse(id).ok()?))
        }
        ["a", request, "u", ref user @ ..] if !user.is_empty() => {
            Target::Action(request.parse().ok()?, ActionTarget::User(user.join(" ")))
        }
        ["y", request] => Target::Reply(request.parse().ok()?),
        _ => return None,
    };
    let frame = Frame::from_utf8(bytes.slice(second + 1..)).ok()?;
    Some((origin, target, frame))
}

/// Control messages on the control topic, JSON. Every one names its sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Control {
    /// The sender is alive.
    Heartbeat { node: String },
    /// Clients connected to / disconnected from the sender.
    Clients {
        node: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        joined: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left: Vec<String>,
    },
    /// Users that now have (`present`) or no longer have (`gone`)
    /// connections on the sender.
    Users {
        node: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        present: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        gone: Vec<String>,
    },
    /// The sender's member counts of some channels changed.
    Members { node: String, counts: Vec<(String, usize)> },
    /// A channel was created on the sender.
    ChannelCreated { node: String, room: String, channel: String, created_at: String },
    /// A channel (and its history) was deleted on the sender.
    ChannelDeleted { node: String, room: String, channel: String },
    /// The sender rewrote its registry (start-up, or back after an outage):
    /// read it again.
    Sync { node: String },
    /// The sender is shutting down: forget it now.
    Leaving { node: String },
}

impl Control {
    pub(crate) fn node(&self) -> &str {
        match self {
            Control::Heartbeat { node }
            | Control::Clients { node, .. }
            | Control::Users { node, .. }
            | Control::Members { node, .. }
            | Control::ChannelCreated { node, .. }
            | Control::ChannelDeleted { node, .. }
            | Control::Sync { node }
            | Control::Leaving { node } => node,
        }
    }

    pub(crate) fn to_json(&self) -> String {
        // A derived Serialize of strings, integers and vectors cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub(crate) fn channel_created(node: &str, key: &ChannelKey, created_at: Timestamp) -> Self {
        Control::ChannelCreated {
            node: node.to_owned(),
            room: key.room.to_string(),
            channel: key.channel.to_string(),
            created_at: created_at.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> ClientId {
        ClientId::from_ulid(ulid::Ulid(n))
    }

    #[test]
    fn traffic_round_trips_for_every_target() {
        let frame = Frame::from_text(r#"{"type":"message","payload":"a\nb"}"#);
        let key = ChannelKey::parse("r1", "c.1").unwrap();
        let message = arqon_protocol::IdGenerator::new().message_id();
        for target in [
            Target::Channel(key.clone(), id(1), Place::Unstored),
            Target::Channel(key.clone(), id(1), Place::At(42, message)),
            Target::Channel(key, id(1), Place::Unplaced),
            Target::Room(Name::parse("r-2").unwrap(), id(2)),
            Target::Direct(id(3)),
            Target::User("ann".to_owned(), id(4)),
            Target::User("Ann  Lee@example.com".to_owned(), id(4)),
            Target::Action(7, ActionTarget::Client(id(5))),
            Target::Action(u64::MAX, ActionTarget::User("ann lee".to_owned())),
            Target::Reply(7),
        ] {
            let bytes = encode_traffic("node-a", &target, &frame);
            let (origin, back, body) = decode_traffic(&bytes).unwrap();
            assert_eq!((origin, &back, body.as_str()), ("node-a", &target, frame.as_str()));
        }
    }

    #[test]
    fn actions_round_trip() {
        let key = ChannelKey::parse("r", "c").unwrap();
        for action in [
            ClientAction::Disconnect { code: 4001, reason: Some("bye".into()) },
            ClientAction::Subscribe { key: key.clone(), since: Some(arqon_protocol::IdGenerator::new().message_id()) },
            ClientAction::Unsubscribe { key },
        ] {
            let frame = ActionBody::of(&action).to_frame();
            let body: ActionBody = serde_json::from_str(frame.as_str()).unwrap();
            assert_eq!(body.action(), Some(action));
        }
    }

    #[test]
    fn replies_round_trip() {
        let refused = ProtocolError::new(ErrorCode::Forbidden, "room r is not allowed");
        for report in [
            ActionReport { touched: 2, ..ActionReport::default() },
            ActionReport { touched: 1, answer: Some(r#"{"members":3}"#.into()), ..ActionReport::default() },
            ActionReport { refused: Some(refused), ..ActionReport::default() },
        ] {
            let frame = ReplyBody::of(&report).to_frame();
            let body: ReplyBody = serde_json::from_str(frame.as_str()).unwrap();
            assert_eq!(body.report(), report);
        }
        let odd: ReplyBody = serde_json::from_str(r#"{"touched":0,"refused":["NEW_CODE","x"]}"#).unwrap();
        assert_eq!(odd.report().refused.map(|e| e.code), Some(ErrorCode::Internal));
    }

    #[test]
    fn malformed_traffic_is_rejected() {
        let from = id(1).to_string();
        let bad_places = [
            format!("n\nc r c {from} 12\n{{}}"),
            format!("n\nc r c {from} x {from}\n{{}}"),
            format!("n\nc r c {from} 1 2 3\n{{}}"),
        ];
        for bad in bad_places.iter().map(String::as_str).chain([
            "",
            "node",
            "node\nc r c\n{}",
            "node\nx a\n{}",
            "node\nd arq_bad\n{}",
            "node\nc r: c arq_x\n{}",
            "node\na x c arq_x\n{}",
            "node\ny -1\n{}",
        ]) {
            assert!(decode_traffic(&Bytes::copy_from_slice(bad.as_bytes())).is_none(), "{bad:?}");
        }
        let mut invalid = b"n\nd ".to_vec();
        invalid.extend_from_slice(id(1).to_string().as_bytes());
        invalid.extend_from_slice(b"\n\xff");
        assert!(decode_traffic(&Bytes::from(invalid)).is_none());
    }

    #[test]
    fn topics_are_classified() {
        let names = Names::new("arqon:");
        let key = ChannelKey::parse("r", "c").unwrap();
        assert_eq!(names.classify(&names.control()), Topic::Control);
        assert_eq!(names.classify(&names.channel_topic(&key)), Topic::Traffic);
        assert_eq!(names.classify(&names.room_topic(&key.room)), Topic::Traffic);
        assert_eq!(names.classify(&names.node_topic("n1")), Topic::Node("n1"));
        assert_eq!(names.classify("other:cluster"), Topic::Unknown);
        assert_eq!(parse_member_field(&member_field(&key)), Some(key));
        assert_eq!(parse_member_field("nocolon"), None);
    }

    #[test]
    fn control_messages_round_trip() {
        let key = ChannelKey::parse("r", "c").unwrap();
        let messages = [
            Control::Heartbeat { node: "a".into() },
            Control::Clients { node: "a".into(), joined: vec![id(1).to_string()], left: vec![] },
            Control::Members { node: "a".into(), counts: vec![("r:c".into(), 3)] },
            Control::channel_created("a", &key, Timestamp::now()),
            Control::ChannelDeleted { node: "a".into(), room: "r".into(), channel: "c".into() },
            Control::Sync { node: "a".into() },
            Control::Leaving { node: "a".into() },
        ];
        for message in messages {
            let back: Control = serde_json::from_str(&message.to_json()).unwrap();
            assert_eq!(back, message);
            assert_eq!(back.node(), "a");
        }
    }
}
