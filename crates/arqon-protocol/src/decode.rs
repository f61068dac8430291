//! Client frame decoding, with the error precedence of PROTOCOL.md section 6.
//!
//! The fast path deserializes straight into a borrowed struct; only a frame
//! that fails it pays for a second, generic parse to classify the failure and
//! recover its id for `request_id`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};
use serde_json::value::RawValue;

use crate::{
    ChannelKey, ClientId, ErrorCode, MAX_META_KEYS, MessageId, Name, PROTOCOL_VERSION, ProtocolError, Timestamp,
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
}

/// What a decoded client frame asks for.
#[derive(Debug, Clone)]
pub enum FrameBody<'a> {
    /// `type: message`.
    Message {
        /// Its destination.
        target: Target,
        /// The body, untouched (absent if the client sent none).
        payload: Option<&'a RawValue>,
    },
    /// `type: command`.
    Command {
        /// The command name, not yet looked up.
        name: Cow<'a, str>,
        /// The raw `args` object, if any; each command parses its own.
        args: Option<&'a RawValue>,
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
    pub meta: Option<&'a RawValue>,
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
/// the contract's order.
#[derive(Deserialize)]
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
    args: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    payload: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    meta: Option<&'a RawValue>,
    #[serde(default)]
    request_id: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

/// A present field is `Some`, even when it is JSON `null`.
fn raw_present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

fn envelope_error(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidEnvelope, message)
}

/// Decodes one text frame from a client, checked against server time `now`.
///
/// On failure the error carries the code to report (the first that applies,
/// in the contract's order) and the frame's id when it was valid.
pub fn decode(text: &str, now: Timestamp) -> Result<ClientFrame<'_>, ProtocolError> {
    // serde also reads a struct from an array, field by field: without this
    // check `[1,null,"message",null,"r"]` would pass for an envelope.
    if !is_object_text(text) {
        let message = match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => "frame is not a JSON object".to_owned(),
            Err(parse) => format!("frame is not valid JSON: {parse}"),
        };
        return Err(ProtocolError::new(ErrorCode::InvalidJson, message));
    }
    let wire: Wire<'_> = match serde_json::from_str(text) {
        Ok(wire) => wire,
        Err(err) => return Err(classify_failure(text, &err)),
    };
    let request_id = wire.id.as_deref().and_then(|id| MessageId::parse(id).ok());
    check(wire, now).map_err(|e| e.with_request_id(request_id))
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

/// Why the fast path failed: not JSON / not an object, or a bad envelope.
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

fn check<'a>(wire: Wire<'a>, now: Timestamp) -> Result<ClientFrame<'a>, ProtocolError> {
    // 0. INVALID_JSON: nesting the parser skipped over in raw values.
    for raw in [wire.payload, wire.args].into_iter().flatten() {
        check_depth(raw.get())?;
    }
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
    let to = wire.to.as_deref().map(ClientId::parse).transpose()?;
    // 4. INVALID_TIMESTAMP (the server's own time replaces it).
    if let Some(ts) = wire.timestamp.as_deref() {
        Timestamp::check_client(ts, now)?;
    }
    // 5. INVALID_NAME (command arguments are checked by each command).
    let body = if is_command {
        FrameBody::Command { name: wire.command.unwrap_or_default(), args: wire.args }
    } else {
        let target = match (to, wire.room.as_deref(), wire.channel.as_deref()) {
            (Some(client), _, _) => Target::Client(client),
            (None, Some(room), Some(channel)) => Target::Channel(ChannelKey::parse(room, channel)?),
            (None, Some(room), None) => Target::Room(Name::parse(room)?),
            (None, None, _) => return Err(envelope_error("a message needs a target")),
        };
        FrameBody::Message { target, payload: wire.payload }
    };
    Ok(ClientFrame { id, body, meta: wire.meta, from: wire.from })
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

fn check_meta(meta: &RawValue) -> Result<(), ProtocolError> {
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
}
