//! Fuzz target: client envelope decoding.
//!
//! Run with: cargo +nightly fuzz run decode (see docs/fuzzing.md).
//!
//! Feeds arbitrary bytes, as lossy UTF-8 (a WebSocket text frame is always
//! UTF-8), to `arqon_protocol::decode` and `extract_id`. Neither may panic.
//! A frame that decodes must be a JSON object whose valid `id` both agree on;
//! a decoded message, re-encoded as the bus would deliver it, must be valid
//! JSON carrying the same target, payload and meta, byte for byte.
#![no_main]

use std::borrow::Cow;

use arqon_protocol::encode::MessageFrame;
use arqon_protocol::{ClientId, FrameBody, MessageId, RawJson, RawValue, Target, Timestamp, decode, extract_id};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

/// A fixed server time, so that every input reproduces exactly.
const NOW_MS: i64 = 1_800_000_000_000;
const SENDER: &str = "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P";
const ASSIGNED: &str = "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1Q";

/// A delivered message frame, as a receiver parses it; unknown fields fail.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Delivered<'a> {
    version: i64,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    meta: Option<&'a RawValue>,
}

/// A present field is `Some`, even when it is JSON `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

fn raw(value: Option<&RawValue>) -> Option<&str> {
    value.map(RawValue::get)
}

fn sent(value: Option<RawJson<'_>>) -> Option<&str> {
    value.map(|v| v.get())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let now = Timestamp::from_unix_ms(NOW_MS);
    let id = extract_id(&text);
    let frame = match decode(&text, now) {
        Ok(frame) => frame,
        Err(err) => {
            assert!(!err.message.is_empty(), "empty error message for {text:?}");
            return;
        }
    };
    // Only a JSON object is an envelope. (Checked without `serde_json::Value`,
    // which refuses numbers beyond f64 such as 1e999 that JSON allows.)
    let json_object = text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{')
        && serde_json::from_str::<IgnoredAny>(&text).is_ok();
    assert!(json_object, "decoded a frame that is not a JSON object: {text:?}");
    assert_eq!(frame.id, id, "decode and extract_id disagree on the id of {text:?}");
    let FrameBody::Message { target, payload } = &frame.body else {
        if let FrameBody::Command { args: Some(args), .. } = &frame.body {
            assert!(serde_json::from_str::<IgnoredAny>(args.get()).is_ok());
        }
        return;
    };
    let (Ok(from), Ok(assigned)) = (ClientId::parse(SENDER), MessageId::parse(ASSIGNED)) else {
        panic!("the constant ids are valid");
    };
    // A direct message's target is routing information: it is not delivered.
    let (room, channel) = match target {
        Target::Channel(key) => (Some(&key.room), Some(&key.channel)),
        Target::Room(room) => (Some(room), None),
        Target::Client(_) => (None, None),
    };
    let message_id = frame.id.unwrap_or(assigned);
    let delivered =
        MessageFrame { id: message_id, timestamp: now, from: from.into(), user: None, room, channel, payload: *payload, meta: frame.meta }
            .encode();
    let parsed: Delivered<'_> = match serde_json::from_str(delivered.as_str()) {
        Ok(parsed) => parsed,
        Err(e) => panic!("re-encoded frame is not valid JSON ({e}): {:?} from {text:?}", delivered.as_str()),
    };
    assert_eq!(parsed.version, 1);
    assert_eq!(parsed.id, message_id.to_string());
    assert_eq!(parsed.kind, "message");
    assert!(Timestamp::parse(&parsed.timestamp).is_ok());
    assert_eq!(parsed.from, SENDER);
    assert_eq!(parsed.room.as_deref(), room.map(|n| n.as_str()));
    assert_eq!(parsed.channel.as_deref(), channel.map(|n| n.as_str()));
    assert_eq!(parsed.to, None);
    assert_eq!(raw(parsed.payload), sent(*payload), "payload changed on the way through");
    assert_eq!(raw(parsed.meta), sent(frame.meta), "meta changed on the way through");
});
