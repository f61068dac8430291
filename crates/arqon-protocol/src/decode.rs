//! Client frame decoding, with the error precedence of PROTOCOL.md section 6.
//!
//! The fast path is a single-pass scan of the envelope (see [`crate::scan`])
//! into the same borrowed struct serde fills, then the shared checks. Any
//! frame the scanner does not take simply (escapes in envelope strings,
//! unknown or duplicate keys, invalid JSON, ...) goes to the serde path,
//! which deserializes the struct and, only when that fails, pays for a second,
//! generic parse to classify the failure and recover its id for `request_id`.
//! So errors, and everything about them, come from the serde path alone.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};
use serde_json::value::RawValue;

use crate::scan::{Cursor, NotFast, RawJson, Scan};
use crate::{
    ChannelKey, ClientId, ErrorCode, MAX_META_KEYS, MessageId, Name, PROTOCOL_VERSION, ProtocolError, RecentNames,
    Timestamp,
};

/// Where a client's `message` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every member of one channel.
    Channel(ChannelKey),
    /// Every member of any channel of a room, each once.
    Room(Name),
    /// One client.
    Client(ClientId),
    /// Every connection of one user (`to: "user:NAME"`, PROTOCOL.md 8.2).
    User(String),
}

/// The prefix of `to` that addresses a user rather than a client.
pub const USER_PREFIX: &str = "user:";

/// Longest user name, in bytes (a credential's identity).
pub const MAX_USER_BYTES: usize = 256;

/// Checks a user name: 1 to [`MAX_USER_BYTES`] bytes, no control characters.
pub fn check_user(name: &str) -> Result<(), ProtocolError> {
    if name.is_empty() || name.len() > MAX_USER_BYTES || name.chars().any(char::is_control) {
        return Err(ProtocolError::new(
            ErrorCode::InvalidId,
            format!("a user name has 1 to {MAX_USER_BYTES} bytes and no control characters"),
        ));
    }
    Ok(())
}

/// `to` of a direct message: a client id, or `user:NAME`.
pub fn parse_to(to: &str) -> Result<Target, ProtocolError> {
    match to.strip_prefix(USER_PREFIX) {
        Some(user) => {
            check_user(user)?;
            Ok(Target::User(user.to_owned()))
        }
        None => ClientId::parse(to).map(Target::Client),
    }
}

/// What a decoded client frame asks for.
#[derive(Debug, Clone)]
pub enum FrameBody<'a> {
    /// `type: message`.
    Message {
        /// Its destination.
        target: Target,
        /// The body, untouched (absent if the client sent none).
        payload: Option<RawJson<'a>>,
    },
    /// `type: command`.
    Command {
        /// The command name, not yet looked up.
        name: Cow<'a, str>,
        /// The raw `args` object, if any; each command parses its own.
        args: Option<RawJson<'a>>,
    },
}

/// A client frame that passed every envelope-level check. Borrows from the
/// frame text, so payloads are never copied before they are encoded once.
#[derive(Debug, Clone)]
pub struct ClientFrame<'a> {
    /// The client's id for this frame, if it sent one.
    pub id: Option<MessageId>,
    /// What the frame asks for.
    pub body: FrameBody<'a>,
    /// The raw `meta` object (validated: at most 16 string values).
    pub meta: Option<RawJson<'a>>,
    /// The `from` the client claimed, if any; the router checks it is its own.
    pub from: Option<Cow<'a, str>>,
}

impl ClientFrame<'_> {
    /// Whether the claimed `from` (if any) is `me`.
    pub fn from_is(&self, me: ClientId) -> bool {
        match &self.from {
            None => true,
            Some(claimed) => ClientId::parse(claimed).is_ok_and(|id| id == me),
        }
    }
}

/// The envelope as it arrives; every field optional so that checks can run in
/// the contract's order. Filled by serde or by [`scan`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(default)]
    version: Option<i64>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    to: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    command: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    args: Option<RawJson<'a>>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    payload: Option<RawJson<'a>>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    meta: Option<RawJson<'a>>,
    #[serde(default)]
    request_id: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    /// Its room and channel are those of the connection's [`Head`] (the
    /// scan kept or resumed a head that names both), whose key is then kept
    /// with it.
    #[serde(skip)]
    headed: bool,
}

/// A present field is `Some`, even when it is JSON `null`.
fn raw_present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawJson<'de>>, D::Error> {
    <&'de RawValue>::deserialize(d).map(|raw| Some(RawJson::from(raw)))
}

fn envelope_error(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidEnvelope, message)
}

/// Decodes one text frame from a client, checked against server time `now`.
///
/// On failure the error carries the code to report (the first that applies,
/// in the contract's order) and the frame's id when it was valid.
pub fn decode(text: &str, now: Timestamp) -> Result<ClientFrame<'_>, ProtocolError> {
    decode_with(text, now, &mut RecentNames::default())
}

/// [`decode`] for a connection that keeps its [`RecentNames`]: the same
/// checks and errors, with the room and channel names reused while the
/// client keeps naming the same ones.
pub fn decode_with<'a>(
    text: &'a str,
    now: Timestamp,
    names: &mut RecentNames,
) -> Result<ClientFrame<'a>, ProtocolError> {
    // Filled in place and checked by reference: a `Wire` is a few hundred
    // bytes, and each move of one was a `memcpy` on every message.
    let mut wire = Wire::default();
    match scan(text, &mut names.head, &mut wire) {
        // The scanner has validated the JSON and the nesting of raw values.
        Ok(()) => {
            // The id is parsed for `request_id` only if the frame is refused.
            let id = wire.id.clone();
            check(&mut wire, now, names)
                .map_err(|e| e.with_request_id(id.as_deref().and_then(|id| MessageId::parse(id).ok())))
        }
        Err(NotFast) => decode_slow(text, now, names),
    }
}

/// The serde path: every frame the scanner passes on, and the reference the
/// scanner must agree with (see the differential test).
fn decode_slow<'a>(text: &'a str, now: Timestamp, names: &mut RecentNames) -> Result<ClientFrame<'a>, ProtocolError> {
    // serde also reads a struct from an array, field by field: without this
    // check `[1,null,"message",null,"r"]` would pass for an envelope.
    if !is_object_text(text) {
        let message = match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => "frame is not a JSON object".to_owned(),
            Err(parse) => format!("frame is not valid JSON: {parse}"),
        };
        return Err(ProtocolError::new(ErrorCode::InvalidJson, message));
    }
    let mut wire: Wire<'_> = match serde_json::from_str(text) {
        Ok(wire) => wire,
        Err(err) => return Err(classify_failure(text, &err)),
    };
    let request_id = wire.id.as_deref().and_then(|id| MessageId::parse(id).ok());
    // 0. INVALID_JSON: nesting the parser skipped over in raw values.
    [wire.payload, wire.args]
        .into_iter()
        .flatten()
        .try_for_each(|raw| check_depth(raw.get()))
        .and_then(|()| check(&mut wire, now, names))
        .map_err(|e| e.with_request_id(request_id))
}

/// Reads a frame into `wire` (a default one) in one pass, if it is a JSON
/// object of known, distinct, unescaped keys with values of the right JSON
/// types; payload, args and meta may be any JSON at most [`MAX_DEPTH`] deep.
/// A frame that opens with the bytes of `head` resumes at its payload.
#[inline] // One caller.
fn scan<'a>(text: &'a str, head: &mut Head, wire: &mut Wire<'a>) -> Scan<()> {
    let mut c = Cursor::new(text);
    // One bit per `Field` seen, for duplicates (which serde refuses).
    let (mut seen, mut resumed) = match head.resume(text, wire) {
        Some(seen) => {
            c.seek(head.bytes.len());
            wire.headed = head.names_both();
            (seen, true)
        }
        None => {
            c.expect(b'{')?;
            (0u16, false)
        }
    };
    loop {
        let field = if std::mem::take(&mut resumed) {
            Field::Payload
        } else {
            let field = Field::of(c.plain_string()?).ok_or(NotFast)?;
            let bit = 1 << field as u16;
            if seen & bit != 0 {
                return Err(NotFast);
            }
            seen |= bit;
            c.expect(b':')?;
            if let Field::Payload = field {
                wire.headed = head.remember(text, c.position(), seen, wire) && head.names_both();
            }
            field
        };
        match field {
            Field::Version => wire.version = if c.null() { None } else { Some(c.integer()?) },
            Field::Id => wire.id = optional_string(&mut c)?,
            Field::Type => wire.kind = Cow::Borrowed(c.plain_string()?),
            Field::Timestamp => wire.timestamp = optional_string(&mut c)?,
            Field::Room => wire.room = optional_string(&mut c)?,
            Field::Channel => wire.channel = optional_string(&mut c)?,
            Field::To => wire.to = optional_string(&mut c)?,
            Field::From => wire.from = optional_string(&mut c)?,
            Field::Command => wire.command = optional_string(&mut c)?,
            Field::Args => wire.args = Some(c.value()?),
            Field::Payload => wire.payload = Some(c.value()?),
            Field::Meta => wire.meta = Some(c.value()?),
            // `Option<IgnoredAny>`: null is absent.
            Field::RequestId => wire.request_id = (c.value()?.get() != "null").then_some(IgnoredAny),
            Field::Error => wire.error = (c.value()?.get() != "null").then_some(IgnoredAny),
        }
        match c.next_token()? {
            b',' => {}
            b'}' => break,
            _ => return Err(NotFast),
        }
    }
    // `type` is the one required field; nothing may follow the object.
    if seen & (1 << Field::Type as u16) == 0 || !c.at_end() {
        return Err(NotFast);
    }
    Ok(())
}

/// The opening of the last envelope the scanner read up to `"payload":`,
/// and what it held. A publisher's frames differ only from their payload on
/// (`{"type":"message","room":…,"channel":…,"payload":` opens every one), and
/// the scan's state after those bytes depends on nothing else: a frame that
/// opens with the same bytes resumes there, sparing the envelope's keys and
/// names (a tenth of a fan-in message's instructions). Kept only for openings made of
/// `version`, `type`, `room`, `channel` and `to`, so that an `id` (which
/// differs every time) never churns it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Head {
    /// Up to and including the colon after `"payload"`; empty: none kept.
    bytes: Vec<u8>,
    /// The `seen` bits of the scan at that point.
    seen: u16,
    version: Option<i64>,
    /// Where each string field's text sits in `bytes`.
    kind: Option<Range<usize>>,
    room: Option<Range<usize>>,
    channel: Option<Range<usize>>,
    to: Option<Range<usize>>,
    /// The channel its room and channel name, once a frame's check made it
    /// (so a resumed frame's names are not compared again).
    key: Option<ChannelKey>,
}

impl Head {
    /// Longest opening kept: names are at most 64 bytes, so a longer one has
    /// whitespace to spare, or is not worth keeping.
    const MAX_BYTES: usize = 256;
    /// The fields an opening may hold (and `payload`, which ends it).
    const FIELDS: u16 = 1 << Field::Version as u16
        | 1 << Field::Type as u16
        | 1 << Field::Room as u16
        | 1 << Field::Channel as u16
        | 1 << Field::To as u16
        | 1 << Field::Payload as u16;

    /// If `text` opens with this opening: the scan's state after it, read
    /// from `text` into `wire` (a default one), and its `seen` bits.
    fn resume<'a>(&self, text: &'a str, wire: &mut Wire<'a>) -> Option<u16> {
        if self.bytes.is_empty() || !text.as_bytes().starts_with(&self.bytes) {
            return None;
        }
        let field = |range: &Option<Range<usize>>| match range {
            Some(range) => text.get(range.clone()).map(|s| Some(Cow::Borrowed(s))),
            None => Some(None),
        };
        // All read before any is written: `wire` is untouched unless this
        // resumes.
        let (kind, room, channel, to) =
            (field(&self.kind)?, field(&self.room)?, field(&self.channel)?, field(&self.to)?);
        (wire.version, wire.kind) = (self.version, kind.unwrap_or_default());
        (wire.room, wire.channel, wire.to) = (room, channel, to);
        Some(self.seen)
    }

    /// Keeps `text[..end]`, the opening just scanned (with `seen` and what
    /// `wire` holds so far), unless it holds other fields or is too long;
    /// returns whether it did.
    fn remember(&mut self, text: &str, end: usize, seen: u16, wire: &Wire<'_>) -> bool {
        if seen & !Self::FIELDS != 0 || end > Self::MAX_BYTES {
            return false;
        }
        let Some(bytes) = text.as_bytes().get(..end) else { return false };
        // Every string the scanner returns is a slice of `text`.
        let range = |field: &Option<Cow<'_, str>>| {
            field.as_deref().map(|s| {
                let start = (s.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
                start..start + s.len()
            })
        };
        let kind = (seen & 1 << Field::Type as u16 != 0).then_some(&wire.kind).cloned();
        let ranges = [range(&kind), range(&wire.room), range(&wire.channel), range(&wire.to)];
        if ranges.iter().flatten().any(|r| r.end > end) {
            return false;
        }
        self.bytes.clear();
        self.bytes.extend_from_slice(bytes);
        [self.kind, self.room, self.channel, self.to] = ranges;
        (self.seen, self.version, self.key) = (seen, wire.version, None);
        true
    }

    /// Whether the head names both room and channel: a frame that opens
    /// with it cannot name them again (a duplicate key), so they are the
    /// frame's, and [`Self::kept_key`] is the frame's key.
    fn names_both(&self) -> bool {
        self.room.is_some() && self.channel.is_some()
    }

    /// The key of the head's room and channel, once one was kept.
    pub(crate) fn kept_key(&self) -> Option<&ChannelKey> {
        self.key.as_ref()
    }

    /// Keeps the key of the head's room and channel.
    pub(crate) fn keep_key(&mut self, key: ChannelKey) {
        self.key = Some(key);
    }
}

/// The keys of [`Wire`], as the scanner matches them (unescaped only).
#[derive(Clone, Copy)]
enum Field {
    Version,
    Id,
    Type,
    Timestamp,
    Room,
    Channel,
    To,
    From,
    Command,
    Args,
    Payload,
    Meta,
    RequestId,
    Error,
}

impl Field {
    fn of(key: &str) -> Option<Field> {
        Some(match key {
            "version" => Field::Version,
            "id" => Field::Id,
            "type" => Field::Type,
            "timestamp" => Field::Timestamp,
            "room" => Field::Room,
            "channel" => Field::Channel,
            "to" => Field::To,
            "from" => Field::From,
            "command" => Field::Command,
            "args" => Field::Args,
            "payload" => Field::Payload,
            "meta" => Field::Meta,
            "request_id" => Field::RequestId,
            "error" => Field::Error,
            _ => return None,
        })
    }
}

/// An `Option<Cow<str>>` field as serde reads it: null is absent.
fn optional_string<'a>(c: &mut Cursor<'a>) -> Scan<Option<Cow<'a, str>>> {
    if c.peek() == Some(b'"') {
        c.plain_string().map(|s| Some(Cow::Borrowed(s)))
    } else {
        c.null().then_some(None).ok_or(NotFast)
    }
}

/// Best-effort recovery of a frame's valid `id`, for answering a frame that
/// is refused before (or while) it is decoded.
pub fn extract_id(text: &str) -> Option<MessageId> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<Cow<'a, str>>,
    }
    if !is_object_text(text) {
        return None;
    }
    let only: IdOnly<'_> = serde_json::from_str(text).ok()?;
    MessageId::parse(&only.id?).ok()
}

/// Whether `text` can only be a JSON object (if it is JSON at all).
fn is_object_text(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{')
}

/// Why serde could not read the envelope: not JSON / not an object, or a bad
/// envelope.
fn classify_failure(text: &str, err: &serde_json::Error) -> ProtocolError {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(parse) => {
            // Too deep for a `Value` is still JSON whose id may be readable.
            return ProtocolError::new(ErrorCode::InvalidJson, format!("frame is not valid JSON: {parse}"))
                .with_request_id(extract_id(text));
        }
    };
    let Some(object) = value.as_object() else {
        return ProtocolError::new(ErrorCode::InvalidJson, "frame is not a JSON object");
    };
    let request_id = object.get("id").and_then(serde_json::Value::as_str).and_then(|id| MessageId::parse(id).ok());
    // Nesting the fast path refuses first: INVALID_JSON outranks INVALID_ENVELOPE.
    let too_deep = ["payload", "args"]
        .into_iter()
        .filter_map(|field| object.get(field))
        .find_map(|raw| check_depth(&raw.to_string()).err());
    too_deep.unwrap_or_else(|| envelope_error(format!("invalid envelope: {err}"))).with_request_id(request_id)
}

/// The checks after parsing, shared by both paths. Step 0 (nesting) is
/// behind us: the scanner counted it, and the serde path checked it.
fn check<'a>(wire: &mut Wire<'a>, now: Timestamp, names: &mut RecentNames) -> Result<ClientFrame<'a>, ProtocolError> {
    // 1. INVALID_ENVELOPE: structure and combinations.
    if wire.request_id.is_some() || wire.error.is_some() {
        return Err(envelope_error("request_id and error are set by the server only"));
    }
    let is_command = match &*wire.kind {
        "message" => false,
        "command" => true,
        other => {
            return Err(envelope_error(format!(
                "type {other:?} cannot be sent by a client (expected \"message\" or \"command\")"
            )));
        }
    };
    if let Some(args) = wire.args
        && !args.get().starts_with('{')
    {
        return Err(envelope_error("args must be an object"));
    }
    if let Some(meta) = wire.meta {
        check_meta(meta)?;
    }
    if is_command {
        if wire.command.is_none() {
            return Err(envelope_error("a command frame needs the field command"));
        }
        for (field, present) in [
            ("room", wire.room.is_some()),
            ("channel", wire.channel.is_some()),
            ("to", wire.to.is_some()),
            ("payload", wire.payload.is_some()),
        ] {
            if present {
                return Err(envelope_error(format!(
                    "a command frame cannot carry {field}; pass command arguments in args"
                )));
            }
        }
    } else {
        if wire.command.is_some() || wire.args.is_some() {
            return Err(envelope_error("a message frame cannot carry command or args"));
        }
        if wire.to.is_some() && (wire.room.is_some() || wire.channel.is_some()) {
            return Err(envelope_error("a message goes to a client (to) or a room/channel, not both"));
        }
        if wire.channel.is_some() && wire.room.is_none() {
            return Err(envelope_error("a channel message needs its room"));
        }
        if wire.to.is_none() && wire.room.is_none() {
            return Err(envelope_error("a message needs a target: room and channel, room, or to"));
        }
    }
    // 2. UNSUPPORTED_VERSION.
    if let Some(version) = wire.version
        && version != PROTOCOL_VERSION
    {
        return Err(ProtocolError::new(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {version} is not supported (this server speaks {PROTOCOL_VERSION})"),
        ));
    }
    // 3. INVALID_ID.
    let id = wire.id.as_deref().map(MessageId::parse).transpose()?;
    let to = wire.to.as_deref().map(parse_to).transpose()?;
    // 4. INVALID_TIMESTAMP (the server's own time replaces it).
    if let Some(ts) = wire.timestamp.as_deref() {
        Timestamp::check_client(ts, now)?;
    }
    // 5. INVALID_NAME (command arguments are checked by each command).
    let body = if is_command {
        FrameBody::Command { name: wire.command.take().unwrap_or_default(), args: wire.args }
    } else {
        let target = match (to, wire.room.as_deref(), wire.channel.as_deref()) {
            (Some(to), _, _) => to,
            (None, Some(room), Some(channel)) if wire.headed => Target::Channel(names.head_key(room, channel)?),
            (None, Some(room), Some(channel)) => Target::Channel(names.key(room, channel)?),
            (None, Some(room), None) => Target::Room(names.room(room)?),
            (None, None, _) => return Err(envelope_error("a message needs a target")),
        };
        FrameBody::Message { target, payload: wire.payload }
    };
    Ok(ClientFrame { id, body, meta: wire.meta, from: wire.from.take() })
}

/// Deepest nesting accepted inside `payload` and `args`, so that no receiver
/// chokes on what we forward: serde_json parses at most 127 levels, and a
/// payload sits 4 levels down in the deepest frame that carries it (a
/// `history` response: response, `payload`, `messages`, the envelope).
pub(crate) const MAX_DEPTH: usize = 127 - 4;

/// Raw values are skipped by serde_json without a depth limit; forwarding a
/// 10,000-deep payload would crash receivers that parse recursively.
fn check_depth(raw: &str) -> Result<(), ProtocolError> {
    // Depth d needs at least 2d bytes and d opening brackets: short values,
    // and values with few brackets (most payloads; counting them is a
    // vectorized pass, several times cheaper than the exact scan below),
    // cannot be too deep.
    if raw.len() < 2 * MAX_DEPTH || opening_brackets(raw.as_bytes()) <= MAX_DEPTH {
        return Ok(());
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in raw.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidJson,
                        format!("JSON nested deeper than {MAX_DEPTH} levels"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// How many `[` and `{` bytes `raw` holds: `(b | 0x20) == b'{'` matches
/// exactly those two (0x5B, 0x7B), and counting into a `u8` per 255-byte chunk
/// lets the compiler do it 16 or 32 bytes at a time.
fn opening_brackets(raw: &[u8]) -> usize {
    raw.chunks(255)
        .map(|chunk| {
            let n = chunk.iter().fold(0u8, |n, &b| n + u8::from((b | 0x20) == b'{'));
            usize::from(n)
        })
        .sum()
}

fn check_meta(meta: RawJson<'_>) -> Result<(), ProtocolError> {
    let map: BTreeMap<Cow<'_, str>, Cow<'_, str>> = serde_json::from_str(meta.get())
        .map_err(|e| envelope_error(format!("meta must be an object of strings: {e}")))?;
    if map.len() > MAX_META_KEYS {
        return Err(envelope_error(format!("meta has {} keys; at most {MAX_META_KEYS} are allowed", map.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P";

    fn now() -> Timestamp {
        Timestamp::now()
    }

    fn code(text: &str) -> ErrorCode {
        decode(text, now()).unwrap_err().code
    }

    #[test]
    fn decodes_a_channel_message_without_copying_the_payload() {
        let text = r#"{"type":"message","room":"r","channel":"c","payload":{"a":[1,2]},"meta":{"trace":"x"}}"#;
        let frame = decode(text, now()).unwrap();
        let FrameBody::Message { target, payload } = frame.body else { panic!("not a message") };
        assert_eq!(target, Target::Channel(ChannelKey::parse("r", "c").unwrap()));
        assert_eq!(payload.unwrap().get(), r#"{"a":[1,2]}"#);
        assert_eq!(frame.meta.unwrap().get(), r#"{"trace":"x"}"#);
    }

    #[test]
    fn to_addresses_a_client_or_every_connection_of_a_user() {
        let frame = decode(r#"{"type":"message","to":"user:ann@example.com","payload":1}"#, now()).unwrap();
        let FrameBody::Message { target, .. } = frame.body else { panic!("not a message") };
        assert_eq!(target, Target::User("ann@example.com".to_owned()));
        assert_eq!(code(r#"{"type":"message","to":"user:","payload":1}"#), ErrorCode::InvalidId);
        let long = "x".repeat(MAX_USER_BYTES + 1);
        assert_eq!(code(&format!(r#"{{"type":"message","to":"user:{long}"}}"#)), ErrorCode::InvalidId);
        assert_eq!(code(r#"{"type":"message","to":"user:a\nb"}"#), ErrorCode::InvalidId);
    }

    #[test]
    fn a_client_cannot_claim_a_user() {
        // The server sets `user`; a client that sends one is refused.
        assert_eq!(code(r#"{"type":"message","room":"r","user":"admin"}"#), ErrorCode::InvalidEnvelope);
        assert_eq!(code(r#"{"type":"command","command":"ping","user":"x"}"#), ErrorCode::InvalidEnvelope);
    }

    #[test]
    fn null_payload_is_kept() {
        let frame = decode(r#"{"type":"message","room":"r","payload":null}"#, now()).unwrap();
        let FrameBody::Message { payload, .. } = frame.body else { panic!() };
        assert_eq!(payload.unwrap().get(), "null");
    }

    #[test]
    fn each_error_code_in_precedence() {
        assert_eq!(code("not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"type":"message","room":"r","bogus":1}"#), ErrorCode::InvalidEnvelope);
        assert_eq!(code(r#"{"room":"r"}"#), ErrorCode::InvalidEnvelope);
        assert_eq!(code(r#"{"type":"event","room":"r"}"#), ErrorCode::InvalidEnvelope);
        assert_eq!(code(r#"{"type":"message"}"#), ErrorCode::InvalidEnvelope);
        assert_eq!(code(&format!(r#"{{"type":"message","to":"{ID}","room":"r"}}"#)), ErrorCode::InvalidEnvelope);
        assert_eq!(code(r#"{"type":"message","channel":"c"}"#), ErrorCode::InvalidEnvelope);
        assert_eq!(code(r#"{"type":"command"}"#), ErrorCode::InvalidEnvelope);
        assert_eq!(code(r#"{"type":"command","command":"ping","args":[]}"#), ErrorCode::InvalidEnvelope);
        assert_eq!(code(r#"{"type":"message","room":"r","version":"1"}"#), ErrorCode::InvalidEnvelope);
        assert_eq!(code(r#"{"type":"message","room":"r","meta":{"a":1}}"#), ErrorCode::InvalidEnvelope);
        assert_eq!(code(r#"{"type":"message","room":"r","version":2}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(code(r#"{"type":"message","room":"r","id":"nope"}"#), ErrorCode::InvalidId);
        assert_eq!(code(r#"{"type":"message","to":"nope"}"#), ErrorCode::InvalidId);
        assert_eq!(
            code(r#"{"type":"message","room":"r","timestamp":"1999-01-01T00:00:00Z"}"#),
            ErrorCode::InvalidTimestamp
        );
        assert_eq!(code(r#"{"type":"message","room":"bad name"}"#), ErrorCode::InvalidName);
        // Version beats id; id beats timestamp; timestamp beats name.
        assert_eq!(code(r#"{"type":"message","room":"r r","id":"x","version":3}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(code(r#"{"type":"message","room":"r r","id":"x","timestamp":"t"}"#), ErrorCode::InvalidId);
        assert_eq!(code(r#"{"type":"message","room":"r r","timestamp":"t"}"#), ErrorCode::InvalidTimestamp);
    }

    #[test]
    fn seventeen_meta_keys_are_too_many() {
        let keys: Vec<String> = (0..17).map(|i| format!(r#""k{i}":"v""#)).collect();
        let text = format!(r#"{{"type":"message","room":"r","meta":{{{}}}}}"#, keys.join(","));
        assert_eq!(code(&text), ErrorCode::InvalidEnvelope);
        let text = format!(r#"{{"type":"message","room":"r","meta":{{{}}}}}"#, keys[..16].join(","));
        assert!(decode(&text, now()).is_ok());
    }

    #[test]
    fn request_id_is_recovered_whenever_the_id_is_valid() {
        let err = decode(&format!(r#"{{"id":"{ID}","type":"message","room":"r","bogus":1}}"#), now()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidEnvelope);
        assert_eq!(err.request_id.unwrap().to_string(), ID);
        let err = decode(&format!(r#"{{"id":"{ID}","type":"message","room":"r","version":9}}"#), now()).unwrap_err();
        assert_eq!(err.request_id.unwrap().to_string(), ID);
        let err = decode(r#"{"id":"bad","type":"message","room":"r","version":9}"#, now()).unwrap_err();
        assert!(err.request_id.is_none());
        assert_eq!(extract_id(&format!(r#"{{"id":"{ID}","x":[1]}}"#)).unwrap().to_string(), ID);
        assert!(extract_id("[").is_none());
    }

    #[test]
    fn spoofed_from_is_detected() {
        let me = ClientId::parse(ID).unwrap();
        let text = format!(r#"{{"type":"message","room":"r","from":"{ID}"}}"#);
        let frame = decode(&text, now()).unwrap();
        assert!(frame.from_is(me));
        let frame = decode(r#"{"type":"message","room":"r","from":"someone"}"#, now()).unwrap();
        assert!(!frame.from_is(me));
    }

    #[test]
    fn opening_brackets_are_counted_exactly() {
        let all: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let expected = all.iter().filter(|&&b| b == b'[' || b == b'{').count();
        assert_eq!(opening_brackets(&all), expected);
        assert_eq!(opening_brackets(&[b'['; 600]), 600);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!(r#"{{"type":"message","room":"r","payload":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(code(&deep), ErrorCode::InvalidJson);
        let ok = format!(
            r#"{{"type":"message","room":"r","payload":{}"[[[\\"{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(decode(&ok, now()).is_ok(), "{ok}");
        let deep_array = "[".repeat(100_000);
        assert_eq!(code(&deep_array), ErrorCode::InvalidJson);
        // Just over the limit, and many brackets that nest only twice.
        let over = format!(
            r#"{{"type":"message","room":"r","payload":{}{}}}"#,
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(code(&over), ErrorCode::InvalidJson);
        let wide = format!(r#"{{"type":"message","room":"r","payload":[{}[]]}}"#, "[],".repeat(2 * MAX_DEPTH));
        assert!(decode(&wide, now()).is_ok(), "{wide}");
    }

    #[test]
    fn well_formed_frames_take_the_fast_path() {
        let now = now();
        for text in [
            r#"{"type":"message","room":"bench","channel":"c1","payload":{"seq":123,"sent_ns":1732900000000000000,"pad":"xxxx"}}"#.to_owned(),
            format!(r#"{{"type":"command","id":"{ID}","command":"ping"}}"#),
            r#"{"type":"command","command":"join_channel","args":{"room":"bench","channel":"c"}}"#.to_owned(),
            format!("\n{{ \"version\" : 1 ,\t\"id\":\"{ID}\", \"type\":\"message\",\r\n\"to\":\"{ID}\" , \"meta\":{{}} }}\n"),
            format!(r#"{{"type":"message","room":"r","timestamp":"{now}","from":null,"request_id":null,"error":null}}"#),
        ] {
            assert!(scan(&text, &mut Head::default(), &mut Wire::default()).is_ok(), "{text}");
            assert!(decode(&text, now).is_ok(), "{text}");
        }
    }

    #[test]
    fn a_frame_that_opens_like_the_last_resumes_at_its_payload_and_decodes_the_same() {
        let now = now();
        let head = r#"{"type":"message","room":"r","channel":"c","payload":"#;
        let mut names = RecentNames::default();
        assert!(decode_with(&format!("{head}1}}"), now, &mut names).is_ok());
        assert_eq!(names.head.bytes, head.as_bytes(), "the opening is kept");
        for rest in [
            "2}",
            r#"{"a":[1,2,{"b":null}]} , "meta":{"k":"v"} }"#,
            r#"2,"room":"x"}"#,
            r#"2,"payload":3}"#,
            r#"2,"id":"nope"}"#,
            "[1,}",
            "2} x",
            "2",
            "",
            r#""\u00e9\ud800"}"#,
            r#"2,"command":"ping"}"#,
        ] {
            let text = format!("{head}{rest}");
            let fresh = decode(&text, now);
            assert_eq!(format!("{:?}", decode_with(&text, now, &mut names)), format!("{fresh:?}"), "{text}");
            assert_eq!(names.head.bytes, head.as_bytes(), "{text}");
        }
        // Names after the payload are not the opening's: each frame keeps its own.
        let late = r#"{"type":"message","payload":1,"#;
        for names_after in [r#""room":"a","channel":"b"}"#, r#""room":"x","channel":"y"}"#, r#""room":"x"}"#] {
            let text = format!("{late}{names_after}");
            assert_eq!(format!("{:?}", decode_with(&text, now, &mut names)), format!("{:?}", decode(&text, now)));
        }
        // Openings with other fields are not kept; the last one stays.
        assert!(decode_with(&format!("{head}1}}"), now, &mut names).is_ok());
        let with_id = format!(r#"{{"id":"{ID}","type":"message","room":"r","payload":1}}"#);
        assert!(decode_with(&with_id, now, &mut names).is_ok());
        assert_eq!(names.head.bytes, head.as_bytes());
        // A new opening replaces it, whitespace and all.
        let other = "{ \"type\" : \"message\", \"to\":\"".to_owned() + ID + "\", \"payload\" :";
        let frame = format!("{other}[]}}");
        assert_eq!(format!("{:?}", decode_with(&frame, now, &mut names)), format!("{:?}", decode(&frame, now)));
        assert_eq!(names.head.bytes, other.as_bytes());
        let again = format!("{other} {{}} }}");
        assert_eq!(format!("{:?}", decode_with(&again, now, &mut names)), format!("{:?}", decode(&again, now)));
    }

    #[test]
    fn what_the_scanner_does_not_take_the_serde_path_does() {
        for text in [
            r#"{"ty\u0070e":"message","room":"r"}"#,
            r#"{"type":"message","room":"\u0072"}"#,
            r#"{"type":"message","room":"r","version":1.0}"#,
            r#"{"type":"message","room":"r","version":-0}"#,
        ] {
            assert!(scan(text, &mut Head::default(), &mut Wire::default()).is_err(), "{text}");
            assert_eq!(
                decode(text, now()).map(|f| format!("{f:?}")),
                decode_slow(text, now(), &mut RecentNames::default()).map(|f| format!("{f:?}"))
            );
        }
        // Escaped names are still names; serde unescapes them.
        assert!(decode(r#"{"ty\u0070e":"message","room":"\u0072"}"#, now()).is_ok());
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }

        fn pick<'a>(&mut self, items: &'a [String]) -> &'a str {
            &items[self.below(items.len())]
        }
    }

    /// Values for each envelope field (the first one valid), and some that are wrong.
    fn field_values(now: Timestamp) -> Vec<(&'static str, Vec<String>)> {
        let deep = |d: usize| format!("{}0{}", "[".repeat(d), "]".repeat(d));
        let q = |s: &str| format!("\"{s}\"");
        let keys = |n: usize| (0..n).map(|i| format!(r#""k{i}":"v""#)).collect::<Vec<_>>().join(",");
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        vec![
            (
                "version",
                owned(&["1", "2", "0", "null", "-1", "-0", "1.0", "1e0", "\"1\"", "01", "9223372036854775808", "true"]),
            ),
            (
                "id",
                vec![
                    q(ID),
                    q("nope"),
                    "null".into(),
                    "5".into(),
                    q(r"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1\u0050"),
                    q("arq_\u{1}"),
                ],
            ),
            (
                "type",
                vec![q("message"), q("command"), q("event"), "null".into(), "1".into(), q(r"mess\u0061ge"), q("")],
            ),
            ("timestamp", vec![q(&now.to_string()), q("1999-01-01T00:00:00Z"), "null".into(), q("t"), "3".into()]),
            ("room", vec![q("r"), q("bench"), q("bad name"), "null".into(), q(""), q(r"r\u0031"), "[]".into(), q("é")]),
            ("channel", vec![q("c"), q("c.1-x_"), "null".into(), q("a b"), "{}".into(), q(&"c".repeat(65))]),
            ("to", vec![q(ID), q("nope"), "null".into(), q(r"arq\n")]),
            ("from", vec![q(ID), q("someone"), "null".into(), q(r#"a\"b"#), "7".into()]),
            ("command", vec![q("ping"), q("join_channel"), "null".into(), "5".into(), q(r"pi\u006eg")]),
            (
                "args",
                vec![
                    r#"{"room":"r","channel":"c"}"#.into(),
                    "{}".into(),
                    "[]".into(),
                    "null".into(),
                    "\"x\"".into(),
                    r#"{"a":[1,2.5,{"b":null}],"c":"\u00e9\ud800"}"#.into(),
                    format!(r#"{{"x":{}}}"#, deep(MAX_DEPTH - 1)),
                    format!(r#"{{"x":{}}}"#, deep(MAX_DEPTH)),
                ],
            ),
            (
                "payload",
                vec![
                    r#"{"seq":123,"sent_ns":1732900000000000000,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#
                        .into(),
                    "null".into(),
                    "1".into(),
                    "-0.5e-3".into(),
                    r#""s\u00e9\ud83d\ude00\"\\\/\b\f\n\r\t""#.into(),
                    "[true,false,null,[],{}]".into(),
                    "{}".into(),
                    "1E+400".into(),
                    r#"{"":"","\u0000":0}"#.into(),
                    deep(MAX_DEPTH),
                    deep(MAX_DEPTH + 1),
                    format!("[{}]", "1,".repeat(40) + "1"),
                ],
            ),
            (
                "meta",
                vec![
                    r#"{"trace":"x"}"#.into(),
                    "{}".into(),
                    r#"{"a":1}"#.into(),
                    "null".into(),
                    "[]".into(),
                    format!("{{{}}}", keys(16)),
                    format!("{{{}}}", keys(17)),
                    r#"{"a":"\ud800"}"#.into(),
                    r#"{"a":"x","a":"y"}"#.into(),
                ],
            ),
            ("request_id", owned(&["null", "\"x\"", "1", "{}"])),
            ("error", owned(&["null", "{}", "[null]"])),
            ("bogus", owned(&["1", "null"])),
        ]
    }

    /// A frame of random fields, mostly shaped like a real one.
    fn random_frame(rng: &mut Rng, fields: &[(&'static str, Vec<String>)]) -> String {
        const SHAPES: [&[&str]; 5] = [
            &["type", "room", "channel", "payload"],
            &["type", "room"],
            &["type", "to", "payload"],
            &["type", "command", "args"],
            &["type", "command"],
        ];
        let ws = ["", "", "", " ", "\n\t ", "\r\n"].map(str::to_owned);
        let shape = SHAPES[rng.below(SHAPES.len())];
        let mut parts = Vec::new();
        for (name, values) in fields {
            let wanted = shape.contains(name);
            if !(wanted || rng.chance(12)) {
                continue;
            }
            let value = if wanted && rng.chance(85) {
                // The valid value that fits the shape.
                match *name {
                    "type" if shape.contains(&"command") => values[1].as_str(),
                    _ => values[0].as_str(),
                }
            } else {
                rng.pick(values)
            };
            let (a, b, c, d) = (rng.pick(&ws), rng.pick(&ws), rng.pick(&ws), rng.pick(&ws));
            parts.push(format!("{a}\"{name}\"{b}:{c}{value}{d}"));
        }
        // Field order does not matter to serde; shuffle it.
        for i in (1..parts.len()).rev() {
            parts.swap(i, rng.below(i + 1));
        }
        format!("{}{{{}}}{}", rng.pick(&ws), parts.join(","), rng.pick(&ws))
    }

    /// One small edit of the kinds that break frames in interesting ways.
    fn mutate(rng: &mut Rng, text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        let at = rng.below(bytes.len() + 1);
        match rng.below(8) {
            0 if at < bytes.len() => {
                bytes.remove(at);
            }
            1 => {
                let insert =
                    [b'"', b'{', b'}', b'[', b']', b'\\', b',', b':', b' ', b'0', b'-', b'n', b'\n', 1, b'e', b'.'];
                bytes.insert(at, insert[rng.below(insert.len())]);
            }
            2 => bytes.truncate(at),
            3 => {
                // Duplicate the first key and its value.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                if let Some(first) = text.find(',') {
                    let dup = text[1..first].trim_start_matches('{').to_owned();
                    bytes = format!("{{{dup},{}", &text[1..]).into_bytes();
                }
            }
            4 => bytes = text.replacen("{", r#"{"x":1,"#, 1).into_bytes(),
            5 => {
                // Escape a letter of some key.
                let keys = ["\"type\"", "\"room\"", "\"payload\"", "\"command\""];
                let key = keys[rng.below(keys.len())];
                let escaped = format!("\"\\u{:04x}{}", key.as_bytes()[1], &key[2..]);
                bytes = text.replacen(key, &escaped, 1).into_bytes();
            }
            6 => bytes.extend_from_slice([&b"x"[..], b"}", b",", b" {}", b"\0"][rng.below(5)]),
            _ if at + 1 < bytes.len() => bytes.swap(at, at + 1),
            _ => bytes.insert(0, b'['),
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The fast path changes nothing but speed: for every frame, `decode`
    /// answers exactly what the serde path alone answers.
    #[test]
    fn fast_and_slow_paths_agree() {
        let now = Timestamp::from_unix_ms(1_800_000_000_000);
        let fields = field_values(now);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut cases, mut fast, mut accepted) = (0, 0, 0);
        // A connection's names and envelope head, kept across every case.
        let mut connection = RecentNames::default();
        let mut check_one = |text: &str| {
            cases += 1;
            fast += usize::from(scan(text, &mut Head::default(), &mut Wire::default()).is_ok());
            let (new, old) = (decode(text, now), decode_slow(text, now, &mut RecentNames::default()));
            let kept = decode_with(text, now, &mut connection);
            assert_eq!(format!("{kept:?}"), format!("{new:?}"), "{text}");
            match (&new, &old) {
                (Ok(new), Ok(old)) => {
                    accepted += 1;
                    // Debug shows every field; Cow and RawJson show their text.
                    assert_eq!(format!("{new:?}"), format!("{old:?}"), "{text}");
                }
                (Err(new), Err(old)) => assert_eq!(new, old, "{text}"),
                _ => panic!("fast {:?} but slow {:?} for {text}", new.is_ok(), old.is_ok()),
            }
        };
        for _ in 0..1500 {
            let frame = random_frame(&mut rng, &fields);
            check_one(&frame);
            let once = mutate(&mut rng, &frame);
            check_one(&once);
            check_one(&mutate(&mut rng, &once));
        }
        for text in [
            "",
            " ",
            "{",
            "}",
            "{}",
            "[]",
            "null",
            "\u{feff}{\"type\":\"message\",\"room\":\"r\"}",
            "{\"type\":\"message\",\"room\":\"r\"}{}",
        ] {
            check_one(text);
        }
        // The corpus reaches both paths, and both outcomes.
        assert!(fast > cases / 5 && accepted > cases / 10, "{cases} cases, {fast} fast, {accepted} accepted");
    }
}
