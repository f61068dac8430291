//! Property tests for the wire protocol: valid envelopes round-trip through `decode` and the
//! encoders, and no input makes `decode` panic or break the error precedence of PROTOCOL.md section 6.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use arqon_protocol::encode::{self, MessageFrame};
use arqon_protocol::{
    ChannelKey, ClientId, ErrorCode, Frame, FrameBody, IdGenerator, MessageId, Name, ProtocolError, RawJson, Target,
    Timestamp, decode, extract_id,
};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Every field an envelope may carry.
const FIELDS: [&str; 14] = [
    "version",
    "id",
    "type",
    "timestamp",
    "room",
    "channel",
    "to",
    "from",
    "command",
    "args",
    "payload",
    "meta",
    "request_id",
    "error",
];

/// The codes `decode` itself may report; the others belong to later layers.
const DECODE_CODES: [ErrorCode; 6] = [
    ErrorCode::InvalidJson,
    ErrorCode::InvalidEnvelope,
    ErrorCode::UnsupportedVersion,
    ErrorCode::InvalidId,
    ErrorCode::InvalidTimestamp,
    ErrorCode::InvalidName,
];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,64}"
}

/// A valid id in its wire form (first ULID character at most `7`).
fn id_text() -> impl Strategy<Value = String> {
    "arq_[0-7][0-9A-HJKMNP-TV-Z]{25}"
}

/// Floats with a short exact decimal form, so that they survive a JSON round trip bit for bit.
fn float() -> impl Strategy<Value = Value> {
    (any::<i32>(), 0..4i32).prop_map(|(m, e)| json!(f64::from(m) / 10f64.powi(e)))
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        float(),
        any::<String>().prop_map(Value::String),
        // Brackets and quotes inside strings must not count as nesting.
        "[\\[\\]{}\"\\\\]{0,300}".prop_map(Value::String),
    ]
}

/// Arbitrary JSON at most `depth` containers deep.
fn json_value(depth: u32) -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(depth, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn meta() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(any::<String>(), any::<String>(), 0..=16)
}

#[derive(Debug, Clone)]
enum TargetSpec {
    Channel(String, String),
    Room(String),
    Direct(String),
}

fn target() -> impl Strategy<Value = TargetSpec> {
    prop_oneof![
        (name(), name()).prop_map(|(r, c)| TargetSpec::Channel(r, c)),
        name().prop_map(TargetSpec::Room),
        id_text().prop_map(TargetSpec::Direct),
    ]
}

/// A valid client `message` frame and its parts.
#[derive(Debug, Clone)]
struct MessageCase {
    target: TargetSpec,
    id: Option<String>,
    payload: Option<Value>,
    meta: Option<BTreeMap<String, String>>,
    /// Milliseconds from server time, within the allowed skew.
    skew_ms: Option<i64>,
    version: bool,
}

fn message_case() -> impl Strategy<Value = MessageCase> {
    (
        target(),
        proptest::option::of(id_text()),
        proptest::option::of(json_value(5)),
        proptest::option::of(meta()),
        proptest::option::of(-290_000..290_000i64),
        any::<bool>(),
    )
        .prop_map(|(target, id, payload, meta, skew_ms, version)| MessageCase {
            target,
            id,
            payload,
            meta,
            skew_ms,
            version,
        })
}

impl MessageCase {
    fn to_json(&self, now: Timestamp) -> Value {
        let mut frame = Map::new();
        frame.insert("type".into(), json!("message"));
        match &self.target {
            TargetSpec::Channel(room, channel) => {
                frame.insert("room".into(), json!(room));
                frame.insert("channel".into(), json!(channel));
            }
            TargetSpec::Room(room) => {
                frame.insert("room".into(), json!(room));
            }
            TargetSpec::Direct(to) => {
                frame.insert("to".into(), json!(to));
            }
        }
        if let Some(id) = &self.id {
            frame.insert("id".into(), json!(id));
        }
        if let Some(payload) = &self.payload {
            frame.insert("payload".into(), payload.clone());
        }
        if let Some(meta) = &self.meta {
            frame.insert("meta".into(), json!(meta));
        }
        if let Some(skew) = self.skew_ms {
            let ts = Timestamp::from_unix_ms(now.unix_ms() + skew);
            frame.insert("timestamp".into(), json!(ts.to_string()));
        }
        if self.version {
            frame.insert("version".into(), json!(1));
        }
        Value::Object(frame)
    }

    fn expected_target(&self) -> Target {
        match &self.target {
            TargetSpec::Channel(room, channel) => Target::Channel(ChannelKey::parse(room, channel).unwrap()),
            TargetSpec::Room(room) => Target::Room(Name::parse(room).unwrap()),
            TargetSpec::Direct(to) => Target::Client(ClientId::parse(to).unwrap()),
        }
    }
}

fn parse(frame: &Frame) -> Value {
    serde_json::from_str(frame.as_str()).unwrap_or_else(|e| panic!("server frame is not JSON ({e}): {frame:?}"))
}

fn raw_json(raw: Option<RawJson<'_>>) -> Option<Value> {
    raw.map(|r| serde_json::from_str(r.get()).unwrap())
}

fn check_error_is_sensible(text: &str, err: &ProtocolError) {
    assert!(DECODE_CODES.contains(&err.code), "unexpected code {:?} for {text:?}", err.code);
    assert!(!err.message.is_empty(), "empty message for {text:?}");
    // A request id is only ever one the frame itself carried.
    if let Some(rid) = err.request_id {
        assert!(text.contains(&rid.to_string()), "request_id {rid} is not in {text:?}");
    }
}

/// Nests `inner` in `depth` arrays or objects (alternating when `mixed`).
fn nest(depth: usize, inner: &str, style: u8) -> String {
    let mut open = String::with_capacity(depth * 6);
    let mut close = String::with_capacity(depth);
    for level in 0..depth {
        let object = match style {
            0 => false,
            1 => true,
            _ => level % 2 == 1,
        };
        if object {
            open.push_str(r#"{"a":"#);
            close.push('}');
        } else {
            open.push('[');
            close.push(']');
        }
    }
    close = close.chars().rev().collect();
    format!("{open}{inner}{close}")
}

/// The deepest `payload` nesting `decode` accepts, found by asking it.
fn max_payload_depth() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        let accepted = |depth: usize| {
            let text = format!(r#"{{"type":"message","room":"r","payload":{}}}"#, nest(depth, "0", 0));
            decode(&text, Timestamp::now()).is_ok()
        };
        assert!(accepted(1));
        let max = (1..=1000).take_while(|&d| accepted(d)).last().unwrap();
        assert!(max < 1000, "payload nesting is not limited at all");
        max
    })
}

// ---------------------------------------------------------------------------
// (a) Valid envelopes round-trip
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_messages_round_trip(case in message_case()) {
        let now = Timestamp::now();
        let text = serde_json::to_string(&case.to_json(now)).unwrap();
        let frame = decode(&text, now).unwrap_or_else(|e| panic!("{e} for {text}"));

        prop_assert_eq!(frame.id.map(|id| id.to_string()), case.id.clone());
        prop_assert!(frame.from.is_none());
        prop_assert_eq!(raw_json(frame.meta), case.meta.as_ref().map(|m| json!(m)));
        let FrameBody::Message { target, payload } = &frame.body else {
            panic!("decoded a message as a command: {text}");
        };
        prop_assert_eq!(target, &case.expected_target());
        // The payload is passed through byte for byte, and means the same JSON.
        prop_assert_eq!(payload.map(|p| p.get().to_owned()), case.payload.as_ref().map(|p| p.to_string()));
        prop_assert_eq!(raw_json(*payload), case.payload.clone());

        // Encode it as the bus delivers it, and read it back.
        let mut ids = IdGenerator::new();
        let id = frame.id.unwrap_or_else(|| ids.message_id());
        let from = ids.client_id();
        let (room, channel) = match target {
            Target::Channel(key) => (Some(&key.room), Some(&key.channel)),
            Target::Room(room) => (Some(room), None),
            Target::Client(_) | Target::User(_) => (None, None),
        };
        let delivered = MessageFrame { id, timestamp: now, from: from.into(), user: None, room, channel, payload: *payload, meta: frame.meta }.encode();
        let v = parse(&delivered);
        prop_assert_eq!(&v["type"], "message");
        prop_assert_eq!(&v["version"], 1);
        prop_assert_eq!(&v["id"], &json!(id.to_string()));
        prop_assert_eq!(&v["from"], &json!(from.to_string()));
        prop_assert_eq!(&v["timestamp"], &json!(now.to_string()));
        prop_assert_eq!(v.get("room").cloned(), room.map(|r| json!(r.as_str())));
        prop_assert_eq!(v.get("channel").cloned(), channel.map(|c| json!(c.as_str())));
        prop_assert_eq!(v.get("payload"), case.payload.as_ref());
        prop_assert_eq!(v.get("meta").cloned(), case.meta.as_ref().map(|m| json!(m)));
        prop_assert!(v.get("to").is_none());

        // What the bus sends can be decoded again as a client frame, except for
        // the server-only fields; the payload still survives.
        let mut resent = v.as_object().unwrap().clone();
        resent.remove("from");
        let resent = serde_json::to_string(&resent).unwrap();
        if room.is_some() {
            let again = decode(&resent, now).unwrap();
            let FrameBody::Message { payload: again, .. } = again.body else { panic!("not a message") };
            prop_assert_eq!(raw_json(again), case.payload.clone());
        }
    }

    #[test]
    fn valid_commands_round_trip(
        command in any::<String>(),
        id in proptest::option::of(id_text()),
        args in proptest::option::of(prop::collection::btree_map(any::<String>(), json_value(4), 0..8)),
        from_self in any::<bool>(),
    ) {
        let now = Timestamp::now();
        let me = IdGenerator::new().client_id();
        let mut object = Map::new();
        object.insert("type".into(), json!("command"));
        object.insert("command".into(), json!(command));
        if let Some(id) = &id {
            object.insert("id".into(), json!(id));
        }
        let args = args.map(|a| Value::Object(a.into_iter().collect()));
        if let Some(args) = &args {
            object.insert("args".into(), args.clone());
        }
        if from_self {
            object.insert("from".into(), json!(me.to_string()));
        }
        let text = serde_json::to_string(&object).unwrap();
        let frame = decode(&text, now).unwrap_or_else(|e| panic!("{e} for {text}"));

        prop_assert_eq!(frame.id.map(|id| id.to_string()), id.clone());
        prop_assert!(frame.meta.is_none());
        prop_assert!(frame.from_is(me));
        prop_assert!(!frame.from_is(IdGenerator::new().client_id()) || !from_self);
        let FrameBody::Command { name, args: raw_args } = &frame.body else {
            panic!("decoded a command as a message: {text}");
        };
        prop_assert_eq!(name.as_ref(), command.as_str());
        prop_assert_eq!(raw_args.map(|a| a.get().to_owned()), args.as_ref().map(Value::to_string));

        // The answer to it: a response carrying the args back, and an error
        // whose message is the (arbitrary) command name.
        let mut ids = IdGenerator::new();
        let response = parse(&encode::response(ids.message_id(), now, frame.id, &args));
        prop_assert_eq!(&response["type"], "response");
        prop_assert_eq!(response.get("request_id").cloned(), id.as_ref().map(|i| json!(i)));
        prop_assert_eq!(&response["payload"], args.as_ref().unwrap_or(&Value::Null));
        let error = parse(&encode::error(ids.message_id(), now, frame.id, ErrorCode::UnknownCommand, name, None));
        prop_assert_eq!(&error["type"], "error");
        prop_assert_eq!(&error["error"]["code"], "UNKNOWN_COMMAND");
        prop_assert_eq!(&error["error"]["message"], &json!(command));
        prop_assert!(error["error"].get("retry_after_ms").is_none());
        prop_assert_eq!(error.get("request_id").cloned(), id.as_ref().map(|i| json!(i)));
    }

    #[test]
    fn timestamps_outside_the_skew_are_refused(skew_s in prop_oneof![-100_000i64..-301, 301..100_000i64]) {
        let now = Timestamp::now();
        let ts = Timestamp::from_unix_ms(now.unix_ms() + skew_s * 1000);
        let text = format!(r#"{{"type":"message","room":"r","timestamp":"{ts}"}}"#);
        prop_assert_eq!(decode(&text, now).unwrap_err().code, ErrorCode::InvalidTimestamp);
    }

    #[test]
    fn ids_round_trip_canonically(bits in any::<u128>()) {
        let id = MessageId::from_ulid(bits.into());
        let text = id.to_string();
        prop_assert_eq!(text.len(), 30);
        prop_assert_eq!(MessageId::parse(&text).unwrap(), id);
        prop_assert_eq!(ClientId::parse(&text).unwrap().to_string(), text.clone());
        prop_assert_eq!(extract_id(&format!(r#"{{"id":"{text}","anything":[1]}}"#)), Some(id));
        // Lower case is a different (refused) spelling, unless there is nothing to lower.
        let lower = format!("arq_{}", text[4..].to_ascii_lowercase());
        prop_assert_eq!(MessageId::parse(&lower).is_ok(), lower == text);
    }

    #[test]
    fn any_string_id_parses_only_if_canonical(text in prop_oneof![id_text(), "arq_.{0,30}", ".{0,34}"]) {
        match MessageId::parse(&text) {
            Ok(id) => prop_assert_eq!(id.to_string(), text),
            Err(e) => prop_assert_eq!(e.code, ErrorCode::InvalidId),
        }
    }

    #[test]
    fn names_follow_the_alphabet(text in prop_oneof![name(), ".{0,70}", "[A-Za-z0-9_.-]{60,70}"]) {
        let expected = (1..=64).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        match Name::parse(&text) {
            Ok(n) => {
                prop_assert!(expected, "{text:?} accepted");
                prop_assert_eq!(n.as_str(), text.as_str());
            }
            Err(e) => {
                prop_assert!(!expected, "{text:?} refused");
                prop_assert_eq!(e.code, ErrorCode::InvalidName);
            }
        }
    }

    #[test]
    fn timestamps_format_and_parse_back(ms in -62_135_596_800_000i64..253_402_300_799_999) {
        let ts = Timestamp::from_unix_ms(ms);
        let text = ts.to_string();
        prop_assert_eq!(text.len(), 24);
        prop_assert_eq!(Timestamp::parse(&text).unwrap(), ts);
    }
}

// ---------------------------------------------------------------------------
// (b) No input panics, and errors are sensible
// ---------------------------------------------------------------------------

/// Values that get past the type checks of some fields, so that the later
/// checks are reached too.
fn plausible_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(vec!["message", "command", "event", "response", "r", "bad name", "ping", "nope", "1", ""])
            .prop_map(Value::from),
        id_text().prop_map(Value::from),
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(Timestamp::now().to_string())),
        Just(json!({"k": "v"})),
        Just(json!({})),
    ]
}

fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![json_value(3), plausible_value()]
}

fn random_object() -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![3 => select(FIELDS.to_vec()).prop_map(str::to_owned), 1 => any::<String>()];
    prop::collection::btree_map(key, field_value(), 0..10).prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(err) = decode(&text, Timestamp::now()) {
            check_error_is_sensible(&text, &err);
        }
        let _ = extract_id(&text);
    }

    #[test]
    fn json_looking_text_never_panics(text in r#"[{}\[\]":,a-z0-9 \\]{0,200}"#) {
        match decode(&text, Timestamp::now()) {
            Ok(_) => prop_assert!(serde_json::from_str::<Value>(&text).is_ok()),
            Err(err) => check_error_is_sensible(&text, &err),
        }
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value(6)) {
        let text = value.to_string();
        let err = decode(&text, Timestamp::now()).unwrap_err();
        check_error_is_sensible(&text, &err);
        if !value.is_object() {
            prop_assert_eq!(err.code, ErrorCode::InvalidJson);
        }
    }

    #[test]
    fn arbitrary_objects_are_decoded_or_refused_sensibly(object in random_object()) {
        let text = serde_json::to_string(&object).unwrap();
        let result = decode(&text, Timestamp::now());
        let valid_id = object.get("id").and_then(Value::as_str).and_then(|id| MessageId::parse(id).ok());
        let unknown = object.keys().any(|k| !FIELDS.contains(&k.as_str()));
        let server_only = ["request_id", "error"].iter().any(|k| object.get(*k).is_some_and(|v| !v.is_null()));
        match result {
            Ok(frame) => {
                prop_assert!(!unknown && !server_only, "accepted {text}");
                prop_assert!(matches!(object.get("type").and_then(Value::as_str), Some("message" | "command")));
                prop_assert!(matches!(object.get("version"), None | Some(Value::Null)) || object["version"] == 1);
                prop_assert_eq!(frame.id, valid_id);
                match frame.body {
                    FrameBody::Message { .. } => prop_assert!(object.contains_key("room") || object.contains_key("to")),
                    FrameBody::Command { name, .. } => prop_assert_eq!(Some(name.as_ref()), object["command"].as_str()),
                }
            }
            Err(err) => {
                check_error_is_sensible(&text, &err);
                // Shallow input: nothing here can be INVALID_JSON.
                prop_assert_ne!(err.code, ErrorCode::InvalidJson, "{}", text);
                if unknown || server_only {
                    prop_assert_eq!(err.code, ErrorCode::InvalidEnvelope, "{}", text);
                }
                // request_id is present whenever the frame's id was valid.
                prop_assert_eq!(err.request_id, valid_id, "{}", text);
                prop_assert_eq!(extract_id(&text), valid_id);
            }
        }
    }
}

/// Where a deeply nested value is put.
#[derive(Debug, Clone, Copy)]
enum Spot {
    Payload,
    Args,
    Meta,
    Unknown,
    Id,
    Room,
    RequestId,
    Whole,
    Truncated,
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn deep_nesting_is_refused_not_a_crash(
        depth in prop_oneof![1..300usize, 300..=10_000usize],
        spot in select(vec![
            Spot::Payload, Spot::Args, Spot::Meta, Spot::Unknown, Spot::Id,
            Spot::Room, Spot::RequestId, Spot::Whole, Spot::Truncated,
        ]),
        style in 0..3u8,
    ) {
        let deep = nest(depth, "\"x\"", style);
        let text = match spot {
            Spot::Payload => format!(r#"{{"type":"message","room":"r","payload":{deep}}}"#),
            Spot::Args => format!(r#"{{"type":"command","command":"ping","args":{{"x":{deep}}}}}"#),
            Spot::Meta => format!(r#"{{"type":"message","room":"r","meta":{deep}}}"#),
            Spot::Unknown => format!(r#"{{"type":"message","room":"r","x":{deep}}}"#),
            Spot::Id => format!(r#"{{"type":"message","room":"r","id":{deep}}}"#),
            Spot::Room => format!(r#"{{"type":"message","room":{deep}}}"#),
            Spot::RequestId => format!(r#"{{"type":"message","room":"r","request_id":{deep}}}"#),
            Spot::Whole => deep.clone(),
            Spot::Truncated => format!(r#"{{"type":"message","room":"r","payload":{}"#, &deep[..deep.len() / 2]),
        };
        // Nesting as `decode` counts it: `args` wraps the value in one object.
        let effective = depth + usize::from(matches!(spot, Spot::Args));
        let max = max_payload_depth();
        match decode(&text, Timestamp::now()) {
            Ok(_) => {
                let shallow_meta = matches!(spot, Spot::Meta) && depth == 1 && style == 1;
                prop_assert!(matches!(spot, Spot::Payload | Spot::Args) || shallow_meta, "{spot:?} at depth {depth} accepted");
                prop_assert!(effective <= max, "{spot:?} at depth {depth} accepted");
            }
            Err(err) => {
                check_error_is_sensible(&text, &err);
                prop_assert!(
                    matches!(err.code, ErrorCode::InvalidJson | ErrorCode::InvalidEnvelope),
                    "{spot:?} at depth {depth}: {err}"
                );
                match spot {
                    Spot::Payload | Spot::Args => {
                        prop_assert!(effective > max, "{spot:?} at depth {depth}: {err}");
                        prop_assert_eq!(err.code, ErrorCode::InvalidJson);
                    }
                    // An outermost object is an envelope with an unknown field.
                    Spot::Whole if style == 1 => {}
                    Spot::Whole | Spot::Truncated => prop_assert_eq!(err.code, ErrorCode::InvalidJson),
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn deepest_accepted_payload_stays_parseable_wherever_the_bus_sends_it() {
    let max = max_payload_depth();
    let mut ids = IdGenerator::new();
    let now = Timestamp::now();
    let payload = nest(max, "1", 2);
    let text = format!(r#"{{"type":"message","room":"r","channel":"c","payload":{payload}}}"#);
    let frame = decode(&text, now).unwrap();
    let FrameBody::Message { target: Target::Channel(key), payload } = frame.body else {
        panic!("not a channel message")
    };
    let delivered = MessageFrame {
        id: ids.message_id(),
        timestamp: now,
        from: ids.client_id().into(),
        user: None,
        room: Some(&key.room),
        channel: Some(&key.channel),
        payload,
        meta: None,
    }
    .encode();
    // Receivers (our own Rust client among them) parse with serde_json's default limits.
    let live = parse(&delivered);
    assert!(live["payload"].is_array() || live["payload"].is_object());
    // The same frame, stored, comes back inside a `history` response.
    let history = encode::messages_response(ids.message_id(), now, None, &[delivered]);
    parse(&history);
}

#[test]
fn only_an_object_is_an_envelope() {
    // serde reads structs from arrays too, field by field: a positional
    // "envelope" must not pass for a message.
    for text in [
        r#"[1, null, "message", null, "r"]"#,
        r#"[null, null, "message", null, "r", "c"]"#,
        r#"[1, null, "command", null, null, null, null, null, "ping"]"#,
        r#"[null, null, "event"]"#,
        r#"[1]"#,
        r#"[]"#,
        r#""message""#,
        "null",
        "17",
    ] {
        let err = decode(text, Timestamp::now()).map(|_| ()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson, "{text}");
        assert_eq!(err.message, "frame is not a JSON object", "{text}");
    }
    assert_eq!(extract_id(&format!(r#"["{ID}"]"#)), None);
    let id = MessageId::parse(ID).unwrap();
    assert_eq!(extract_id(&format!(" \r\n\t{{\"id\":\"{ID}\"}}")), Some(id));
    let err =
        decode(&format!("\n {{\"id\":\"{ID}\",\"type\":\"message\",\"room\":\"r\",\"version\":2}}"), Timestamp::now())
            .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnsupportedVersion);
    assert_eq!(decode("[1, 2", Timestamp::now()).unwrap_err().code, ErrorCode::InvalidJson);
}

#[test]
fn brackets_inside_strings_are_not_nesting() {
    let text =
        format!(r#"{{"type":"message","room":"r","payload":["{}\"\\", "{}"]}}"#, "[".repeat(10_000), "{".repeat(500));
    let frame = decode(&text, Timestamp::now()).unwrap();
    let FrameBody::Message { payload, .. } = frame.body else { panic!("not a message") };
    assert_eq!(raw_json(payload).unwrap()[0].as_str().unwrap().len(), 10_002);
}

// ---------------------------------------------------------------------------
// Error precedence
// ---------------------------------------------------------------------------

const ID: &str = "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P";

fn code(text: &str) -> ErrorCode {
    decode(text, Timestamp::now()).unwrap_err().code
}

#[test]
fn composed_errors_report_the_first_in_precedence() {
    for (text, expected) in [
        (r#"{"type":"message","room":"r","bogus":1,"id":"bad"}"#, ErrorCode::InvalidEnvelope),
        (r#"{"type":"message","room":"r","version":2,"id":"bad"}"#, ErrorCode::UnsupportedVersion),
        (r#"{"type":"message","room":"r","id":"bad","timestamp":"never"}"#, ErrorCode::InvalidId),
        (r#"{"type":"message","room":"bad name","timestamp":"never"}"#, ErrorCode::InvalidTimestamp),
        (r#"{"type":"message","room":"bad name","version":7,"timestamp":"never"}"#, ErrorCode::UnsupportedVersion),
        (r#"{"type":"message","room":"r","to":"nope"}"#, ErrorCode::InvalidEnvelope),
        (r#"{"type":"message","to":"nope","id":"bad","version":2}"#, ErrorCode::UnsupportedVersion),
        (r#"{"type":"event","room":"bad name","version":2}"#, ErrorCode::InvalidEnvelope),
        (r#"{"type":"command","command":"ping","room":"r","version":2}"#, ErrorCode::InvalidEnvelope),
        (r#"{"type":"message","room":"r","request_id":"x","version":2}"#, ErrorCode::InvalidEnvelope),
        (r#"{"type":"message","room":"r","meta":{"a":1},"id":"bad"}"#, ErrorCode::InvalidEnvelope),
        (r#"{"type":"message","room":"r","version":"1","id":"bad"}"#, ErrorCode::InvalidEnvelope),
        (r#"{"type":"message","room":"r","id":"bad""#, ErrorCode::InvalidJson),
    ] {
        assert_eq!(code(text), expected, "{text}");
    }
    let deep = nest(5_000, "1", 0);
    assert_eq!(code(&format!(r#"{{"type":"message","room":"r","payload":{deep},"bogus":1}}"#)), ErrorCode::InvalidJson);
    assert_eq!(
        code(&format!(r#"{{"type":"message","room":"r","payload":{deep},"version":2}}"#)),
        ErrorCode::InvalidJson
    );
}

/// One thing wrong with a frame, and the code it deserves alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    DeepPayload,
    UnknownField,
    ServerField,
    WrongType,
    BadVersion,
    BadId,
    BadTo,
    BadTimestamp,
    BadName,
}

impl Fault {
    fn code(self) -> ErrorCode {
        match self {
            Fault::DeepPayload => ErrorCode::InvalidJson,
            Fault::UnknownField | Fault::ServerField | Fault::WrongType => ErrorCode::InvalidEnvelope,
            Fault::BadVersion => ErrorCode::UnsupportedVersion,
            Fault::BadId | Fault::BadTo => ErrorCode::InvalidId,
            Fault::BadTimestamp => ErrorCode::InvalidTimestamp,
            Fault::BadName => ErrorCode::InvalidName,
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_first_applicable_error_is_reported(
        faults in prop::collection::btree_set(
            select(vec![
                Fault::DeepPayload, Fault::UnknownField, Fault::ServerField, Fault::WrongType,
                Fault::BadVersion, Fault::BadId, Fault::BadTo, Fault::BadTimestamp, Fault::BadName,
            ]),
            1..5,
        ),
        extra_depth in prop_oneof![1..4usize, 4..5_000usize],
        with_id in any::<bool>(),
    ) {
        let now = Timestamp::now();
        let mut frame = Map::new();
        frame.insert("type".into(), json!("message"));
        let direct = faults.contains(&Fault::BadTo);
        if direct {
            frame.insert("to".into(), json!("arq_nope"));
        } else {
            let room = if faults.contains(&Fault::BadName) { "bad name" } else { "r" };
            frame.insert("room".into(), json!(room));
            frame.insert("channel".into(), json!("c"));
        }
        if with_id || faults.contains(&Fault::BadId) {
            let id = if faults.contains(&Fault::BadId) { "arq_1" } else { ID };
            frame.insert("id".into(), json!(id));
        }
        if faults.contains(&Fault::UnknownField) {
            frame.insert("bogus".into(), json!(true));
        }
        if faults.contains(&Fault::ServerField) {
            frame.insert("request_id".into(), json!(ID));
        }
        if faults.contains(&Fault::WrongType) {
            frame.insert("command".into(), json!(5));
        }
        if faults.contains(&Fault::BadVersion) {
            frame.insert("version".into(), json!(0));
        }
        if faults.contains(&Fault::BadTimestamp) {
            frame.insert("timestamp".into(), json!("2026-13-01T00:00:00Z"));
        }
        let mut text = serde_json::to_string(&frame).unwrap();
        if faults.contains(&Fault::DeepPayload) {
            let deep = nest(max_payload_depth() + extra_depth, "null", 2);
            text.insert_str(1, &format!(r#""payload":{deep},"#));
        } else {
            text.insert_str(1, r#""payload":{"ok":[1,2,3]},"#);
        }
        let expected = faults.iter().map(|f| f.code()).min().unwrap();
        let err = decode(&text, now).unwrap_err();
        prop_assert_eq!(err.code, expected, "faults {:?}: {}", faults, err.message);
        let id_valid = with_id && !faults.contains(&Fault::BadId);
        prop_assert_eq!(err.request_id.is_some(), id_valid, "faults {:?}", faults);
    }
}

#[test]
fn seventeen_meta_keys_are_refused_sixteen_accepted() {
    let meta = |n: usize| -> Value { Value::Object((0..n).map(|i| (format!("k{i}"), json!("v"))).collect()) };
    let frame = |n| json!({"type": "message", "room": "r", "meta": meta(n), "id": ID}).to_string();
    assert!(decode(&frame(16), Timestamp::now()).is_ok());
    let err = decode(&frame(17), Timestamp::now()).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidEnvelope);
    assert_eq!(err.request_id.unwrap().to_string(), ID);
}
