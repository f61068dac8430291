//! The frames the generator sends, and the cheap reading of what it receives.
//!
//! Every benchmark message carries a payload of exactly `--payload` bytes:
//!
//! ```json
//! {"x":"xxxx…","p":3,"s":41,"t":1234567}
//! ```
//!
//! `x` pads to the size, `p` is the publisher's index, `s` its sequence
//! number and `t` the send time in nanoseconds since the generator's start
//! (a monotonic clock shared by every task of the process). The fields that
//! matter come last, and the bus writes `payload` as the last field of a
//! delivered envelope when there is no `meta`, so a subscriber reads them
//! backwards from the end of the frame in a few dozen byte comparisons,
//! without parsing JSON. Anything else (events, responses, errors, or a
//! server that orders fields differently) takes the slow path: a real parse.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// What a benchmark payload says about its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Publisher index.
    pub(crate) publisher: u32,
    /// Sequence number within that publisher, from 0.
    pub(crate) seq: u64,
    /// Send time, nanoseconds since the generator's clock started.
    pub(crate) sent_ns: u64,
}

/// Builds `type: message` frames to one channel with payloads of a fixed size.
#[derive(Debug, Clone)]
pub(crate) struct MessageWriter {
    /// `{"type":"message","room":…,"channel":…,"payload":{"x":"`
    prefix: String,
    payload_bytes: usize,
    /// Pad with words rather than `x`: text that compresses like real
    /// messages do (about 2 to 3 times), not a thousandfold.
    text: bool,
    /// What closes the frame after the payload's last number: the payload's
    /// brace, and the envelope's unless the payload goes bare.
    suffix: &'static str,
    /// `payload_bytes` of `x`: the pad is a slice of it, copied at once
    /// (pushed a char at a time, it was an eighth of the generator's CPU).
    pad: String,
}

/// What a `text` pad is made of: words of a chat message or a status
/// update, chosen per message.
const WORDS: [&str; 32] = [
    "the",
    "order",
    "shipped",
    "user",
    "status",
    "online",
    "price",
    "updated",
    "to",
    "from",
    "queue",
    "eu-west",
    "latency",
    "ms",
    "ok",
    "warning",
    "temperature",
    "sensor",
    "42",
    "17.5",
    "account",
    "balance",
    "message",
    "channel",
    "room",
    "delivered",
    "at",
    "2026-12-06",
    "id",
    "retry",
    "error",
    "count",
];

/// Bytes of the payload other than the pad and the three numbers.
const PAYLOAD_OVERHEAD: usize = r#"{"x":"","p":,"s":,"t":}"#.len();

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

impl MessageWriter {
    /// Frames for channel `room`/`channel`, payloads of `payload_bytes`
    /// (at least the size of the numbers; smaller requests get no padding).
    pub(crate) fn new(room: &str, channel: &str, payload_bytes: usize) -> Self {
        let prefix = format!(r#"{{"type":"message","room":"{room}","channel":"{channel}","payload":{{"x":""#);
        MessageWriter { prefix, payload_bytes, text: false, suffix: "}}", pad: "x".repeat(payload_bytes) }
    }

    /// The payloads alone, for a peer whose messages are opaque bytes (a NATS
    /// `PUB` body): the same stamps and sizes, read back by [`stamp_payload`].
    pub(crate) fn bare(payload_bytes: usize) -> Self {
        MessageWriter {
            prefix: r#"{"x":""#.to_owned(),
            payload_bytes,
            text: false,
            suffix: "}",
            pad: "x".repeat(payload_bytes),
        }
    }

    /// Pads payloads with varied words instead of one repeated character
    /// (`--text`), for measurements where compression matters.
    pub(crate) fn with_text(mut self, text: bool) -> Self {
        self.text = text;
        self
    }

    /// Server API `publish` bodies (the command's args) for `room`/`channel`,
    /// with the same stamped payloads.
    pub(crate) fn api(room: &str, channel: &str, payload_bytes: usize) -> Self {
        let prefix = format!(r#"{{"room":"{room}","channel":"{channel}","payload":{{"x":""#);
        MessageWriter { prefix, payload_bytes, text: false, suffix: "}}", pad: "x".repeat(payload_bytes) }
    }

    /// Writes one complete frame into `out` (cleared first).
    pub(crate) fn write(&self, out: &mut String, stamp: Stamp) {
        out.clear();
        let numbers = digits(u64::from(stamp.publisher)) + digits(stamp.seq) + digits(stamp.sent_ns);
        let pad = self.payload_bytes.saturating_sub(PAYLOAD_OVERHEAD + numbers);
        out.push_str(&self.prefix);
        if self.text {
            // A cheap generator seeded by the stamp: every message differs.
            let mut x = (stamp.seq ^ (u64::from(stamp.publisher) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let start = out.len();
            while out.len() - start < pad {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
                out.push(' ');
            }
            out.truncate(start + pad);
        } else {
            out.push_str(self.pad.get(..pad).unwrap_or(&self.pad));
        }
        out.push_str(r#"","p":"#);
        push_number(out, u64::from(stamp.publisher));
        out.push_str(r#","s":"#);
        push_number(out, stamp.seq);
        out.push_str(r#","t":"#);
        push_number(out, stamp.sent_ns);
        out.push_str(self.suffix);
    }
}

/// Appends `n` in decimal (what `write!` does, without its formatter: three
/// numbers per message were a visible share of the generator's CPU).
fn push_number(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits: always UTF-8.
    if let Ok(text) = std::str::from_utf8(&digits[at..]) {
        out.push_str(text);
    }
}

/// Reads the unsigned decimal number that ends at `end` (exclusive);
/// returns it and where it starts.
fn number_before(bytes: &[u8], end: usize) -> Option<(u64, usize)> {
    let mut start = end;
    while start > 0 && bytes[start - 1].is_ascii_digit() {
        start -= 1;
    }
    if start == end {
        return None;
    }
    let mut value = 0u64;
    for &b in &bytes[start..end] {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((value, start))
}

/// Expects `tag` right before `end`; returns where it starts.
fn tag_before<const N: usize>(bytes: &[u8], end: usize, tag: &[u8; N]) -> Option<usize> {
    // An array compare: inline, where a slice compare called `memcmp`
    // (a few percent of the generator's CPU at millions of frames a second).
    let start = end.checked_sub(N)?;
    (<[u8; N]>::try_from(bytes.get(start..end)?).ok()? == *tag).then_some(start)
}

/// The fast path: the stamp of a delivered benchmark message, read backwards
/// from the end of the frame; `None` if the frame does not end that way.
pub(crate) fn stamp_fast(frame: &[u8]) -> Option<Stamp> {
    stamp_ending(frame, b"}}")
}

/// The stamp of a bare payload ([`MessageWriter::bare`]).
pub(crate) fn stamp_payload(payload: &[u8]) -> Option<Stamp> {
    stamp_ending(payload, b"}")
}

fn stamp_ending<const S: usize>(frame: &[u8], suffix: &[u8; S]) -> Option<Stamp> {
    let end = tag_before(frame, frame.len(), suffix)?;
    let (sent_ns, end) = number_before(frame, end)?;
    let end = tag_before(frame, end, br#","t":"#)?;
    let (seq, end) = number_before(frame, end)?;
    let end = tag_before(frame, end, br#","s":"#)?;
    let (publisher, end) = number_before(frame, end)?;
    tag_before(frame, end, br#""p":"#)?;
    Some(Stamp { publisher: u32::try_from(publisher).ok()?, seq, sent_ns })
}

/// A server frame, read only as far as the generator needs.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A benchmark message.
    Message(Stamp),
    /// A message whose payload is not a benchmark stamp.
    ForeignMessage,
    /// A command's response.
    Response,
    /// An error.
    Error {
        /// The wire error code.
        code: String,
    },
    /// An event (`welcome`, `member_joined`, `shutdown`, …).
    Event {
        /// `payload.event`.
        name: String,
    },
    /// Not an envelope the generator understands.
    Unreadable,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
}

#[derive(Deserialize)]
struct EventPayload<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
}

#[derive(Deserialize)]
struct StampPayload {
    p: u32,
    s: u64,
    t: u64,
}

/// Classifies a server frame: the fast path first, then a real parse.
pub(crate) fn classify(frame: &str) -> Incoming {
    if let Some(stamp) = stamp_fast(frame.as_bytes()) {
        return Incoming::Message(stamp);
    }
    let Ok(peek) = serde_json::from_str::<Peek<'_>>(frame) else {
        return Incoming::Unreadable;
    };
    match peek.kind.as_ref() {
        "message" => match peek.payload.and_then(|p| serde_json::from_str::<StampPayload>(p.get()).ok()) {
            Some(s) => Incoming::Message(Stamp { publisher: s.p, seq: s.s, sent_ns: s.t }),
            None => Incoming::ForeignMessage,
        },
        "response" => Incoming::Response,
        "error" => Incoming::Error { code: peek.error.map_or_else(|| "UNKNOWN".to_owned(), |e| e.code.into_owned()) },
        "event" => Incoming::Event {
            name: peek
                .payload
                .and_then(|p| serde_json::from_str::<EventPayload<'_>>(p.get()).ok())
                .map_or_else(|| "unknown".to_owned(), |e| e.event.into_owned()),
        },
        _ => Incoming::Unreadable,
    }
}

/// Where a `"request_id":"arq_…"` field's value starts, found cheaply.
pub(crate) fn request_id_fast(frame: &str) -> Option<&str> {
    const KEY: &str = r#""request_id":""#;
    let start = frame.find(KEY)? + KEY.len();
    frame.get(start..start + 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(sent: &str) -> String {
        // What the bus makes of a sent frame: envelope fields, then the payload verbatim.
        let payload_start = sent.find(r#""payload":"#).unwrap();
        format!(
            r#"{{"version":1,"id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P","type":"message","timestamp":"2026-11-29T12:00:00.123Z","room":"bench","channel":"c","from":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1Q",{}"#,
            &sent[payload_start..]
        )
    }

    #[test]
    fn payload_has_the_requested_size_and_round_trips() {
        let writer = MessageWriter::new("bench", "c", 256);
        let mut out = String::new();
        for stamp in [
            Stamp { publisher: 0, seq: 0, sent_ns: 0 },
            Stamp { publisher: 49, seq: 19_999, sent_ns: 98_765_432_101 },
            Stamp { publisher: u32::MAX, seq: u64::MAX, sent_ns: u64::MAX },
        ] {
            writer.write(&mut out, stamp);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(serde_json::to_string(&v["payload"]).unwrap().len(), 256, "{out}");
            assert_eq!(v["type"], "message");
            let frame = delivered(&out);
            assert_eq!(stamp_fast(frame.as_bytes()), Some(stamp));
            assert!(matches!(classify(&frame), Incoming::Message(s) if s == stamp));
        }
    }

    #[test]
    fn bare_payloads_have_the_requested_size_and_round_trip() {
        let writer = MessageWriter::bare(256);
        let mut out = String::new();
        for stamp in [Stamp { publisher: 0, seq: 0, sent_ns: 0 }, Stamp { publisher: 49, seq: 19_999, sent_ns: 98_765 }]
        {
            writer.write(&mut out, stamp);
            assert_eq!(out.len(), 256, "{out}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["s"], stamp.seq, "{out}");
            assert_eq!(stamp_payload(out.as_bytes()), Some(stamp));
            // A bare payload is not an envelope, and an envelope not a bare payload.
            assert_eq!(stamp_fast(out.as_bytes()), None);
        }
        MessageWriter::new("bench", "c", 256).write(&mut out, Stamp { publisher: 1, seq: 2, sent_ns: 3 });
        assert_eq!(stamp_payload(out.as_bytes()), None);
    }

    #[test]
    fn slow_path_reads_reordered_messages_and_other_frames() {
        let reordered =
            r#"{"type":"message","payload":{"t":5,"s":2,"p":1,"x":""},"id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P"}"#;
        assert!(stamp_fast(reordered.as_bytes()).is_none());
        assert!(matches!(classify(reordered), Incoming::Message(Stamp { publisher: 1, seq: 2, sent_ns: 5 })));
        let joined = r#"{"version":1,"id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P","type":"response","timestamp":"2026-11-29T12:00:00.123Z","request_id":"arq_00000000000000000000000007","payload":{"room":"bench","channel":"c","members":5}}"#;
        assert!(matches!(classify(joined), Incoming::Response));
        assert_eq!(request_id_fast(joined), Some("arq_00000000000000000000000007"));
        let error = r#"{"type":"error","id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P","error":{"code":"RATE_LIMITED","message":"slow down","retry_after_ms":3}}"#;
        assert!(matches!(classify(error), Incoming::Error { ref code } if code == "RATE_LIMITED"));
        let event = r#"{"type":"event","payload":{"event":"member_joined","room":"r","channel":"c","client_id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P"}}"#;
        assert!(matches!(classify(event), Incoming::Event { ref name } if name == "member_joined"));
        assert!(matches!(classify("not json"), Incoming::Unreadable));
        assert!(matches!(classify(r#"{"type":"message","payload":{"a":1}}"#), Incoming::ForeignMessage));
    }
}
