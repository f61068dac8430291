//! Server frames: built once as JSON bytes, then shared (cheap clones) by
//! every receiver and by history.

use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::Serialize;

use crate::{ClientId, ErrorCode, MessageId, Name, PROTOCOL_VERSION, RawJson, Timestamp};

/// One encoded server frame: a complete JSON envelope, UTF-8.
///
/// Cloning shares the bytes; a message delivered to a thousand members and
/// kept in history exists once in memory. A plain `Arc` rather than `Bytes`:
/// every delivery clones and drops one, and `Bytes` does both through a
/// vtable call (a tenth of the fan-out profile). One allocation per frame:
/// the bytes sit in the `Arc`'s own block, after a slot for the frame's
/// compressed form (see [`Frame::compressed`]). triomphe's `Arc` holds a
/// header and a slice in one block, which `std`'s cannot, and has no weak
/// count to update.
#[derive(Clone)]
pub struct Frame(triomphe::Arc<triomphe::HeaderSlice<Compressed, [u8]>>);

/// A frame's compressed form, once a transport asked for it.
type Compressed = OnceLock<Box<[u8]>>;

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Frame {}

impl Frame {
    /// Wraps text already known to be one complete envelope (e.g. read back
    /// from a storage backend).
    pub fn from_text(text: impl Into<String>) -> Self {
        Frame::copy_of(text.into().as_bytes())
    }

    /// A frame holding a copy of `bytes`, which the caller guarantees to be
    /// UTF-8.
    fn copy_of(bytes: &[u8]) -> Self {
        Frame(triomphe::Arc::from_header_and_slice(OnceLock::new(), bytes))
    }

    /// Wraps bytes from a storage backend, checking they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Frame::copy_of(&bytes))
    }

    /// The encoded JSON, as bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0.slice
    }

    /// The frame's compressed form, made by `compress` the first time it is
    /// asked for and kept with the frame from then on: a transport that
    /// compresses what it delivers (WebSocket permessage-deflate) compresses
    /// a frame delivered to a thousand receivers once, and every receiver
    /// writes the same bytes. This crate does not compress; it only keeps
    /// the result, which lives as long as the frame (in history too).
    /// Whoever asks must always ask with the same `compress`.
    pub fn compressed(&self, compress: impl FnOnce(&[u8]) -> Box<[u8]>) -> &[u8] {
        self.0.header.get_or_init(|| compress(self.bytes()))
    }

    /// The frame as `Bytes` sharing the same memory (for I/O libraries).
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from_owner(self.clone())
    }

    /// The encoded JSON.
    pub fn as_str(&self) -> &str {
        // Every constructor guarantees UTF-8; the fallback is unreachable.
        std::str::from_utf8(self.bytes()).unwrap_or_default()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.slice.len()
    }

    /// Whether the frame is empty (never true for an encoded envelope).
    pub fn is_empty(&self) -> bool {
        self.0.slice.is_empty()
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Frame").field(&self.as_str()).finish()
    }
}

impl Frame {
    /// The server time written in the frame (`timestamp`), if it has one:
    /// every envelope this module builds does, near its start.
    pub fn timestamp(&self) -> Option<Timestamp> {
        const KEY: &[u8] = b"\"timestamp\":\"";
        let bytes = self.bytes();
        let head = &bytes[..bytes.len().min(160)];
        let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
        let text = std::str::from_utf8(bytes.get(at..at + 24)?).ok()?;
        Timestamp::parse(text).ok()
    }
}

/// `PROTOCOL_VERSION` as written in every frame.
const VERSION_TEXT: &str = "1";
const _: () = assert!(PROTOCOL_VERSION == 1, "update VERSION_TEXT with PROTOCOL_VERSION");

/// Writes an envelope field by field; keeps the JSON well-formed by
/// construction (every value is a validated token, an escaped string or raw
/// JSON that was parsed on the way in).
struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn start(capacity: usize, id: MessageId, kind: &str, timestamp: Timestamp) -> Self {
        // The fixed fields of an envelope take about 200 bytes: reserve them
        // with the caller's hint so that a frame is built in one allocation.
        // Written into the thread's scratch buffer, then copied into the
        // frame's own block: one allocation per frame, not two.
        let mut out = crate::scratch::take();
        out.reserve(capacity + 256);
        out.extend_from_slice(b"{\"version\":");
        out.extend_from_slice(VERSION_TEXT.as_bytes());
        out.extend_from_slice(b",\"id\":\"");
        id.write_to(&mut out);
        out.extend_from_slice(b"\",\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"timestamp\":\"");
        timestamp.write_to(&mut out);
        out.push(b'"');
        Writer { out }
    }

    fn key(&mut self, key: &str) {
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A value that needs no escaping: names and ids.
    fn token(&mut self, key: &str, value: &str) {
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
    }

    fn id(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) {
        self.key(key);
        self.out.push(b'"');
        write(&mut self.out);
        self.out.push(b'"');
    }

    fn raw(&mut self, key: &str, raw: &str) {
        self.key(key);
        self.out.extend_from_slice(raw.as_bytes());
    }

    fn serialized(&mut self, key: &str, value: &impl Serialize) {
        self.key(key);
        if serde_json::to_writer(&mut self.out, value).is_err() {
            // Our payload types serialize infallibly; keep the frame valid regardless.
            self.out.extend_from_slice(b"null");
        }
    }

    fn finish(mut self) -> Frame {
        self.out.push(b'}');
        let frame = Frame::copy_of(&self.out);
        crate::scratch::give(self.out);
        frame
    }
}

/// Writes `,"room":…,"channel":…`. A thread delivers the same channel's
/// messages over and over: the text of the last pair is kept with the names
/// themselves, so that a frame to the same names (the same shared text, as
/// a publisher's keys are) copies it at once. Holding the names keeps their
/// text alive, so the same address cannot mean other names.
fn channel_fields(room: &Name, channel: &Name, out: &mut Vec<u8>) {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(Name, Name, Vec<u8>)>> = const { std::cell::RefCell::new(None) };
    }
    let write = |room: &Name, channel: &Name, out: &mut Vec<u8>| {
        let mut w = Writer { out: std::mem::take(out) };
        w.token("room", room.as_str());
        w.token("channel", channel.as_str());
        *out = w.out;
    };
    let same = |a: &Name, b: &Name| std::ptr::eq(a.as_str(), b.as_str());
    let kept = LAST.try_with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        match &mut *last {
            Some((r, c, text)) if same(r, room) && same(c, channel) => out.extend_from_slice(text),
            last => {
                let mut text = Vec::with_capacity(room.as_str().len() + channel.as_str().len() + 24);
                write(room, channel, &mut text);
                out.extend_from_slice(&text);
                *last = Some((room.clone(), channel.clone(), text));
            }
        }
        Some(())
    });
    // While the thread's locals are torn down: written in full.
    if !matches!(kept, Ok(Some(()))) {
        write(room, channel, out);
    }
}

/// `from` of a message the application's backend sent through the server API.
pub const SERVER_SENDER: &str = "server";

/// Who sent a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A connected client.
    Client(ClientId),
    /// The application, through the server API (`from: "server"`).
    Server,
}

impl From<ClientId> for Sender {
    fn from(id: ClientId) -> Self {
        Sender::Client(id)
    }
}

/// A `type: message` frame as delivered (and stored).
#[derive(Debug, Clone, Copy)]
pub struct MessageFrame<'a> {
    /// The message id (the client's, or one the server assigned).
    pub id: MessageId,
    /// Server time of receipt.
    pub timestamp: Timestamp,
    /// The sender.
    pub from: Sender,
    /// The sender's user (PROTOCOL.md section 8.2), set by the server.
    pub user: Option<&'a str>,
    /// Target room, for channel and room-wide messages.
    pub room: Option<&'a Name>,
    /// Target channel, for channel messages.
    pub channel: Option<&'a Name>,
    /// The body, untouched.
    pub payload: Option<RawJson<'a>>,
    /// Pass-through metadata, untouched.
    pub meta: Option<RawJson<'a>>,
}

impl MessageFrame<'_> {
    /// Encodes the frame once.
    pub fn encode(&self) -> Frame {
        let hint = self.payload.map_or(0, |p| p.get().len()) + self.meta.map_or(0, |m| m.get().len());
        let mut w = Writer::start(hint, self.id, "message", self.timestamp);
        match (self.room, self.channel) {
            (Some(room), Some(channel)) => channel_fields(room, channel, &mut w.out),
            (room, channel) => {
                if let Some(room) = room {
                    w.token("room", room.as_str());
                }
                if let Some(channel) = channel {
                    w.token("channel", channel.as_str());
                }
            }
        }
        match self.from {
            Sender::Client(id) => w.id("from", |out| id.write_to(out)),
            Sender::Server => w.token("from", SERVER_SENDER),
        }
        if let Some(user) = self.user {
            w.serialized("user", &user);
        }
        if let Some(payload) = self.payload {
            w.raw("payload", payload.get());
        }
        if let Some(meta) = self.meta {
            w.raw("meta", meta.get());
        }
        w.finish()
    }
}

/// A `type: response` answering the frame `request_id`.
pub fn response(id: MessageId, timestamp: Timestamp, request_id: Option<MessageId>, payload: &impl Serialize) -> Frame {
    let mut w = Writer::start(64, id, "response", timestamp);
    if let Some(request_id) = request_id {
        w.id("request_id", |out| request_id.write_to(out));
    }
    w.serialized("payload", payload);
    w.finish()
}

/// A `type: response` whose payload is `{"messages":[…]}` built from stored
/// frames, without re-parsing them: [`messages_response_head`], the frames
/// separated by commas, then [`MESSAGES_RESPONSE_TAIL`], in one block.
pub fn messages_response(
    id: MessageId,
    timestamp: Timestamp,
    request_id: Option<MessageId>,
    messages: &[Frame],
) -> Frame {
    let head = messages_response_head(id, timestamp, request_id);
    let total: usize = head.len() + messages.iter().map(|m| m.len() + 1).sum::<usize>() + MESSAGES_RESPONSE_TAIL.len();
    let mut out = crate::scratch::take();
    out.reserve(total);
    out.extend_from_slice(head.bytes());
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message.bytes());
    }
    out.extend_from_slice(MESSAGES_RESPONSE_TAIL);
    let frame = Frame::copy_of(&out);
    crate::scratch::give(out);
    frame
}

/// What closes a [`messages_response_head`]: the `messages` array, the
/// payload object and the envelope.
pub const MESSAGES_RESPONSE_TAIL: &[u8] = b"]}}";

/// The start of a [`messages_response`], up to and including
/// `"payload":{"messages":[`. With the stored frames (comma-separated) and
/// [`MESSAGES_RESPONSE_TAIL`] after it, a transport can write the response
/// as one message without copying the frames out of history.
pub fn messages_response_head(id: MessageId, timestamp: Timestamp, request_id: Option<MessageId>) -> Frame {
    let mut w = Writer::start(64, id, "response", timestamp);
    if let Some(request_id) = request_id {
        w.id("request_id", |out| request_id.write_to(out));
    }
    w.key("payload");
    w.out.extend_from_slice(b"{\"messages\":[");
    let frame = Frame::copy_of(&w.out);
    crate::scratch::give(w.out);
    frame
}

/// A `type: event`; `payload` must serialize to an object with an `event` field.
pub fn event(id: MessageId, timestamp: Timestamp, payload: &impl Serialize) -> Frame {
    let mut w = Writer::start(64, id, "event", timestamp);
    w.serialized("payload", payload);
    w.finish()
}

/// The `error` object of an error frame.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

/// A `type: error` frame.
pub fn error(
    id: MessageId,
    timestamp: Timestamp,
    request_id: Option<MessageId>,
    code: ErrorCode,
    message: &str,
    retry_after_ms: Option<u64>,
) -> Frame {
    let mut w = Writer::start(message.len() + 32, id, "error", timestamp);
    if let Some(request_id) = request_id {
        w.id("request_id", |out| request_id.write_to(out));
    }
    w.serialized("error", &ErrorBody { code: code.as_str(), message, retry_after_ms });
    w.finish()
}

/// The `shutdown` event.
pub fn shutdown_event(id: MessageId, timestamp: Timestamp, reason: &str) -> Frame {
    #[derive(Serialize)]
    struct Shutdown<'a> {
        event: &'static str,
        reason: &'a str,
    }
    event(id, timestamp, &Shutdown { event: "shutdown", reason })
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::IdGenerator;

    fn parse(frame: &Frame) -> serde_json::Value {
        serde_json::from_str(frame.as_str()).unwrap()
    }

    #[test]
    fn message_frame_is_valid_json_with_payload_untouched() {
        let mut ids = IdGenerator::new();
        let room = Name::parse("r").unwrap();
        let channel = Name::parse("c").unwrap();
        let payload: Box<RawValue> = serde_json::from_str(r#"{ "b" : 1.50, "a":"\u00e9" }"#).unwrap();
        let frame = MessageFrame {
            id: ids.message_id(),
            timestamp: Timestamp::from_unix_ms(0),
            from: ids.client_id().into(),
            user: Some("ann \"a\""),
            room: Some(&room),
            channel: Some(&channel),
            payload: Some(RawJson::from(&*payload)),
            meta: None,
        }
        .encode();
        assert!(frame.as_str().contains(r#""payload":{ "b" : 1.50, "a":"\u00e9" }"#));
        let v = parse(&frame);
        assert_eq!(v["type"], "message");
        assert_eq!(v["version"], 1);
        assert_eq!(v["room"], "r");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["user"], "ann \"a\"");
        assert_eq!(frame.timestamp(), Some(Timestamp::from_unix_ms(0)));
        assert_eq!(Frame::from_text(r#"{"a":1}"#).timestamp(), None);
    }

    #[test]
    fn every_frame_names_its_own_room_and_channel_whatever_the_thread_sent_before() {
        let mut ids = IdGenerator::new();
        let mut encode = |room: Option<&Name>, channel: Option<&Name>| {
            let frame = MessageFrame {
                id: ids.message_id(),
                timestamp: Timestamp::from_unix_ms(0),
                from: Sender::Server,
                user: None,
                room,
                channel,
                payload: None,
                meta: None,
            }
            .encode();
            let v = parse(&frame);
            (v["room"].as_str().map(str::to_owned), v["channel"].as_str().map(str::to_owned))
        };
        let name = |text: &str| Name::parse(text).unwrap();
        let owned = |room: &str, channel: &str| (Some(room.to_owned()), Some(channel.to_owned()));
        let (r, c, d) = (name("r"), name("c"), name("d"));
        assert_eq!(encode(Some(&r), Some(&c)), owned("r", "c"));
        assert_eq!(encode(Some(&r), Some(&c)), owned("r", "c"), "the same names again");
        assert_eq!(encode(Some(&r), Some(&d)), owned("r", "d"));
        assert_eq!(encode(Some(&d), Some(&r)), owned("d", "r"));
        assert_eq!(encode(Some(&r), None), (Some("r".to_owned()), None));
        // Names made anew each time (another text at a freed address must not
        // pass for the kept one).
        for i in 0..50 {
            let (room, channel) = (name(&format!("room{i}")), name(&format!("ch{}", i % 3)));
            assert_eq!(encode(Some(&room), Some(&channel)), owned(&format!("room{i}"), &format!("ch{}", i % 3)));
        }
        assert_eq!(encode(Some(&name("r")), Some(&name("c"))), owned("r", "c"), "equal text, other names");
    }

    #[test]
    fn server_messages_say_so_and_carry_no_user() {
        let mut ids = IdGenerator::new();
        let room = Name::parse("r").unwrap();
        let frame = MessageFrame {
            id: ids.message_id(),
            timestamp: Timestamp::now(),
            from: Sender::Server,
            user: None,
            room: Some(&room),
            channel: None,
            payload: None,
            meta: None,
        }
        .encode();
        let v = parse(&frame);
        assert_eq!(v["from"], "server");
        assert!(v.get("user").is_none());
    }

    #[test]
    fn error_frame_escapes_its_message() {
        let mut ids = IdGenerator::new();
        let rid = ids.message_id();
        let frame = error(
            ids.message_id(),
            Timestamp::now(),
            Some(rid),
            ErrorCode::RateLimited,
            "a \"quoted\"\nline",
            Some(12),
        );
        let v = parse(&frame);
        assert_eq!(v["error"]["code"], "RATE_LIMITED");
        assert_eq!(v["error"]["message"], "a \"quoted\"\nline");
        assert_eq!(v["error"]["retry_after_ms"], 12);
        assert_eq!(v["request_id"], rid.to_string());
    }

    #[test]
    fn messages_response_embeds_frames() {
        let mut ids = IdGenerator::new();
        let stored = vec![Frame::from_text(r#"{"a":1}"#), Frame::from_text(r#"{"b":2}"#)];
        let v = parse(&messages_response(ids.message_id(), Timestamp::now(), None, &stored));
        assert_eq!(v["payload"]["messages"][1]["b"], 2);
        assert!(v.get("request_id").is_none());
        let v = parse(&messages_response(ids.message_id(), Timestamp::now(), None, &[]));
        assert_eq!(v["payload"]["messages"].as_array().unwrap().len(), 0);
    }
}
