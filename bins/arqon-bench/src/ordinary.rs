//! The ordinary subscriber: what a typical application's WebSocket client
//! does with each delivery, and `readrate`, which measures how fast one such
//! client reads on its own.
//!
//! The lean client ([`crate::lean`]) reads millions of frames per second, so
//! figures measured with it say what the bus can push, not what happens to
//! the applications that subscribe. An ordinary client uses tokio-tungstenite
//! with its default configuration, takes one message per
//! `StreamExt::next()`, parses every message whole into a
//! `serde_json::Value` and only then looks at its fields (here: the
//! sequence stamp). `fanout`, `fanin` and `latency` use it with
//! `--subscriber ordinary`.
//!
//! `readrate` needs no bus: it times one subscriber of either kind reading
//! `--messages` deliveries of `--payload` bytes, first from frames already
//! in memory (the parse alone), then from a local socket that an in-process
//! writer of pre-encoded frames keeps full (the parse plus the WebSocket
//! client and the socket, no server behind them). A subscriber fed faster
//! than this falls behind, and the bus's outbound backlog holds the
//! difference.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{Options, SubscriberKind};
use crate::client::Endpoint;
use crate::frame::{Incoming, MessageWriter, Stamp, stamp_fast};
use crate::lean::Event;
use crate::report::{ReadRate, Report};

/// Read buffer of an ordinary connection: tungstenite's default (128 KiB).
pub(crate) const READ_BUFFER: usize = 128 * 1024;

/// Reads a server frame the way an application does: the whole frame into a
/// `serde_json::Value`, then its fields.
pub(crate) fn classify_value(text: &str) -> Incoming {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Incoming::Unreadable;
    };
    match value.get("type").and_then(Value::as_str) {
        Some("message") => {
            let payload = &value["payload"];
            let field = |name: &str| payload.get(name).and_then(Value::as_u64);
            match (field("p").and_then(|p| u32::try_from(p).ok()), field("s"), field("t")) {
                (Some(publisher), Some(seq), Some(sent_ns)) => Incoming::Message(Stamp { publisher, seq, sent_ns }),
                _ => Incoming::ForeignMessage,
            }
        }
        Some("response") => Incoming::Response,
        Some("error") => Incoming::Error { code: value["error"]["code"].as_str().unwrap_or("UNKNOWN").to_owned() },
        Some("event") => Incoming::Event { name: value["payload"]["event"].as_str().unwrap_or("unknown").to_owned() },
        _ => Incoming::Unreadable,
    }
}

/// A delivered envelope as the bus writes it, around the payload of `sent`
/// (a frame from [`MessageWriter`]).
fn delivered(sent: &str) -> String {
    let payload = sent.find(r#""payload":"#).map_or(sent, |at| &sent[at..]);
    format!(
        r#"{{"version":1,"id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P","type":"message","timestamp":"2026-11-29T12:00:00.123Z","room":"bench","channel":"c","from":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1Q",{payload}"#
    )
}

/// Appends an unmasked text frame, as a server sends it.
fn encode_server_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=65535 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Counts deliveries in sequence; anything else is an error.
#[derive(Debug, Default)]
struct Sequence {
    next: u64,
    errors: u64,
}

impl Sequence {
    fn check(&mut self, stamp: Option<Stamp>) {
        match stamp {
            Some(stamp) if stamp.seq == self.next => self.next += 1,
            _ => self.errors += 1,
        }
    }
}

/// The stamp of one delivery, read the way `kind` reads it.
fn stamp_of(kind: SubscriberKind, text: &str) -> Option<Stamp> {
    match kind {
        SubscriberKind::Lean => stamp_fast(text.as_bytes()),
        SubscriberKind::Ordinary => match classify_value(text) {
            Incoming::Message(stamp) => Some(stamp),
            _ => None,
        },
    }
}

/// Reads `count` deliveries from the socket at `url`; returns the sequence
/// check and the seconds it took from the end of the upgrade.
async fn read_socket(kind: SubscriberKind, url: &str, count: u64) -> Result<(Sequence, f64), String> {
    let addr = crate::cli::parse_url(url).map_err(|e| e.to_string())?;
    let endpoint = Endpoint::new(url, addr, 0);
    let mut seq = Sequence::default();
    let begin;
    match kind {
        SubscriberKind::Ordinary => {
            let mut ws = endpoint.connect(0, READ_BUFFER).await.map_err(|e| format!("{}: {}", e.code, e.detail))?;
            begin = Instant::now();
            while seq.next + seq.errors < count {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => seq.check(stamp_of(kind, text.as_str())),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("read failed: {e}")),
                    None => return Err("the writer closed early".to_owned()),
                }
            }
        }
        SubscriberKind::Lean => {
            let mut ws = endpoint.connect_lean(0).await.map_err(|e| format!("{}: {}", e.code, e.detail))?;
            begin = Instant::now();
            while seq.next + seq.errors < count {
                match ws.next().await {
                    Ok(Event::Text(range)) => seq.check(stamp_fast(ws.reader.bytes(range))),
                    Ok(Event::Eof | Event::Close(_)) => return Err("the writer closed early".to_owned()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read failed: {e}")),
                }
            }
        }
    }
    Ok((seq, begin.elapsed().as_secs_f64()))
}

/// Accepts one connection, completes the upgrade and writes `wire` (every
/// frame, pre-encoded) as fast as the reader takes it; then holds the
/// connection until the reader is done (`done` resolves).
async fn write_socket(listener: TcpListener, wire: Vec<u8>, done: tokio::sync::oneshot::Receiver<()>) {
    let Ok((tcp, _)) = listener.accept().await else { return };
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { return };
    // The client sends nothing after the upgrade, so tungstenite holds no
    // byte of it: the socket can be written directly.
    let mut tcp = ws.into_inner();
    if tcp.write_all(&wire).await.is_ok() {
        let _ = done.await;
    }
}

/// Runs `readrate` as configured.
pub(crate) async fn run(o: &Options) -> Report {
    let mut report = Report {
        scenario: o.scenario.name().to_owned(),
        label: o.label.clone(),
        target: o.target.clone(),
        ..Report::default()
    };
    report.params.insert("subscriber".into(), o.subscriber.name().into());
    report.params.insert("messages".into(), o.messages.into());
    report.params.insert("payload_bytes".into(), o.payload.into());
    let writer = MessageWriter::new(&o.room, &o.channel, o.payload);
    let mut sent = String::new();
    let frames: Vec<String> = (0..o.messages)
        .map(|seq| {
            writer.write(&mut sent, Stamp { publisher: 0, seq, sent_ns: seq });
            delivered(&sent)
        })
        .collect();
    // Each of the two passes reads every message once.
    report.expected = 2 * o.messages;

    // From memory: the parse and the check alone.
    let mut seq = Sequence::default();
    let begin = Instant::now();
    for frame in &frames {
        seq.check(stamp_of(o.subscriber, frame));
    }
    let buffer_s = begin.elapsed().as_secs_f64();
    report.delivered += seq.next;
    report.error("OUT_OF_SEQUENCE", seq.errors);

    // From a socket kept full by a writer of pre-encoded frames.
    let mut wire = Vec::with_capacity(frames.iter().map(|f| f.len() + 10).sum());
    for frame in &frames {
        encode_server_frame(&mut wire, frame.as_bytes());
    }
    let frame_bytes = frames.first().map_or(0, |f| f.len() as u64);
    drop(frames);
    let listener = match TcpListener::bind("127.0.0.1:0").await.and_then(|l| l.local_addr().map(|a| (l, a))) {
        Ok(pair) => pair,
        Err(e) => {
            report.failure = Some(format!("cannot listen on 127.0.0.1: {e}"));
            return report;
        }
    };
    let (listener, addr) = listener;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(write_socket(listener, wire, done_rx));
    let url = format!("ws://{addr}/ws");
    let socket_s = match tokio::time::timeout(o.timeout, read_socket(o.subscriber, &url, o.messages)).await {
        Ok(Ok((seq, seconds))) => {
            report.delivered += seq.next;
            report.error("OUT_OF_SEQUENCE", seq.errors);
            Some(seconds)
        }
        Ok(Err(e)) => {
            report.failure = Some(format!("socket reader: {e}"));
            None
        }
        Err(_) => {
            report.timed_out = true;
            None
        }
    };
    let _ = done_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    report.lost = report.expected.saturating_sub(report.delivered);
    report.elapsed_s = buffer_s + socket_s.unwrap_or(0.0);
    let rate = |seconds: f64| if seconds > 0.0 { o.messages as f64 / seconds } else { 0.0 };
    if let Some(socket_s) = socket_s {
        report.deliveries_per_s = Some(rate(socket_s));
        report.read_rate = Some(ReadRate { frame_bytes, buffer_per_s: rate(buffer_s), socket_per_s: rate(socket_s) });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_like_the_fast_path_reads_them() {
        let writer = MessageWriter::new("bench", "c", 256);
        let mut sent = String::new();
        let stamp = Stamp { publisher: 7, seq: 41, sent_ns: 1_234_567 };
        writer.write(&mut sent, stamp);
        let frame = delivered(&sent);
        assert!(matches!(classify_value(&frame), Incoming::Message(s) if s == stamp));
        assert_eq!(stamp_fast(frame.as_bytes()), Some(stamp));
        let reordered = r#"{"type":"message","payload":{"t":5,"s":2,"p":1,"x":""}}"#;
        assert!(matches!(classify_value(reordered), Incoming::Message(Stamp { publisher: 1, seq: 2, sent_ns: 5 })));
        assert!(matches!(classify_value(r#"{"type":"message","payload":{"p":1}}"#), Incoming::ForeignMessage));
        let error = r#"{"type":"error","error":{"code":"RATE_LIMITED","message":"slow down"}}"#;
        assert!(matches!(classify_value(error), Incoming::Error { ref code } if code == "RATE_LIMITED"));
        let event = r#"{"type":"event","payload":{"event":"member_joined"}}"#;
        assert!(matches!(classify_value(event), Incoming::Event { ref name } if name == "member_joined"));
        assert!(matches!(classify_value(r#"{"type":"response","payload":{}}"#), Incoming::Response));
        assert!(matches!(classify_value("not json"), Incoming::Unreadable));
    }

    #[test]
    fn sequence_counts_gaps_and_foreign_frames_as_errors() {
        let mut seq = Sequence::default();
        let s = |seq| Some(Stamp { publisher: 0, seq, sent_ns: 0 });
        seq.check(s(0));
        seq.check(s(1));
        seq.check(s(3));
        seq.check(None);
        seq.check(s(2));
        assert_eq!((seq.next, seq.errors), (3, 2));
    }

    #[tokio::test]
    async fn readrate_reads_every_frame_from_memory_and_from_the_socket() {
        for (kind, payload) in [(SubscriberKind::Ordinary, 256), (SubscriberKind::Lean, 70_000)] {
            let args =
                ["readrate", "--messages", "300", "--payload", &payload.to_string(), "--subscriber", kind.name()];
            let options = match crate::cli::parse(args.iter().map(|s| (*s).to_owned())).unwrap() {
                crate::cli::Invocation::Run(o) => o,
                other => panic!("{other:?}"),
            };
            let report = run(&options).await;
            assert!(report.is_clean(), "{kind:?}: {}", report.table());
            assert_eq!((report.expected, report.delivered, report.lost), (600, 600, 0));
            let rate = report.read_rate.unwrap();
            assert!(rate.frame_bytes > payload as u64, "{rate:?}");
            assert!(rate.buffer_per_s > 0.0 && rate.socket_per_s > 0.0, "{rate:?}");
        }
    }
}
