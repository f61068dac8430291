//! Envelope decode (client frames) and encode (server frames).
//!
//! Run with: `cargo bench -p arqon-benches --bench protocol`

use std::collections::BTreeMap;
use std::hint::black_box;

use arqon_benches::{PAYLOAD_BYTES, channel_command, message_frame, payload};
use arqon_protocol::encode::{self, MessageFrame};
use arqon_protocol::{IdGenerator, Name, RawJson, RawValue, Timestamp};
use criterion::{Criterion, Throughput};

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    let now = Timestamp::now();
    let frames = [
        ("message_256B", message_frame("c", PAYLOAD_BYTES)),
        ("ping", r#"{"type":"command","id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P","command":"ping"}"#.to_owned()),
        ("join_channel", channel_command("join_channel", "c")),
    ];
    for (name, frame) in &frames {
        assert!(arqon_protocol::decode(frame, now).is_ok(), "{name} must decode");
        group.bench_function(*name, |b| b.iter(|| black_box(arqon_protocol::decode(black_box(frame), now).is_ok())));
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let mut ids = IdGenerator::new();
    let (room, channel) = (Name::parse("bench").ok(), Name::parse("c").ok());
    let body = match RawValue::from_string(payload(PAYLOAD_BYTES)) {
        Ok(body) => body,
        Err(e) => panic!("bench payload is JSON: {e}"),
    };
    let from = ids.client_id();
    let now = Timestamp::now();
    group.bench_function("message_256B", |b| {
        b.iter(|| {
            let frame = MessageFrame {
                id: ids.message_id(),
                timestamp: now,
                from: from.into(),
                user: None,
                room: room.as_ref(),
                channel: channel.as_ref(),
                payload: Some(RawJson::from(&*body)),
                meta: None,
            };
            black_box(frame.encode())
        })
    });
    let pong: BTreeMap<&str, bool> = BTreeMap::from([("pong", true)]);
    let request = ids.message_id();
    group.bench_function("response_pong", |b| {
        b.iter(|| black_box(encode::response(ids.message_id(), now, Some(request), &pong)))
    });
    group.bench_function("timestamp_now", |b| b.iter(|| black_box(Timestamp::now())));
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    decode(&mut c);
    encode(&mut c);
    c.final_summary();
}
