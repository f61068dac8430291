//! The memory storage backend: append to a full channel log (1,000 kept, so
//! every append also evicts), and history reads.
//!
//! Run with: `cargo bench -p arqon-benches --bench storage`

use std::hint::black_box;
use std::time::{Duration, Instant};

use arqon_benches::{PAYLOAD_BYTES, payload, runtime};
use arqon_protocol::encode::MessageFrame;
use arqon_protocol::{ChannelKey, IdGenerator, MessageId, Name, RawJson, RawValue, Timestamp};
use arqon_storage::{MemoryStorage, Storage, StoredMessage};
use criterion::{Criterion, Throughput};

fn storage(c: &mut Criterion) {
    let rt = runtime();
    let storage = MemoryStorage::new(MemoryStorage::DEFAULT_MAX_PER_CHANNEL);
    let key = match ChannelKey::parse("bench", "history") {
        Ok(key) => key,
        Err(e) => panic!("bench channel name: {e}"),
    };
    let body = match RawValue::from_string(payload(PAYLOAD_BYTES)) {
        Ok(body) => body,
        Err(e) => panic!("bench payload is JSON: {e}"),
    };
    let mut ids = IdGenerator::new();
    let (room, channel) = (Name::parse("bench").ok(), Name::parse("history").ok());
    let from = ids.client_id();
    // Every stored message shares one encoded frame: only ids differ, as
    // the bus shares a frame between history and live delivery.
    let frame = MessageFrame {
        id: ids.message_id(),
        timestamp: Timestamp::now(),
        from: from.into(),
        user: None,
        room: room.as_ref(),
        channel: channel.as_ref(),
        payload: Some(RawJson::from(&*body)),
        meta: None,
    }
    .encode();
    let mut kept: Vec<MessageId> = Vec::new();
    rt.block_on(async {
        for _ in 0..MemoryStorage::DEFAULT_MAX_PER_CHANNEL {
            let id = ids.message_id();
            kept.push(id);
            if let Err(e) = storage.append(&key, StoredMessage { id, frame: frame.clone() }).await {
                panic!("memory append: {e}");
            }
        }
    });
    let middle = kept[kept.len() / 2];

    let mut group = c.benchmark_group("storage");
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_full_log", |b| {
        b.iter_custom(|iters| {
            let messages: Vec<StoredMessage> =
                (0..iters).map(|_| StoredMessage { id: ids.message_id(), frame: frame.clone() }).collect();
            let mut spent = Duration::ZERO;
            rt.block_on(async {
                let start = Instant::now();
                for message in messages {
                    black_box(storage.append(&key, message).await.is_ok());
                }
                spent = start.elapsed();
            });
            spent
        })
    });
    // The log now holds the newest ids; look them up afresh.
    let newest = rt.block_on(storage.history(&key, 1000, None)).unwrap_or_default();
    let before = newest.get(newest.len() / 2).map_or(middle, |m| m.id);
    for (name, limit, cursor) in
        [("history_50", 50, None), ("history_1000", 1000, None), ("history_50_before", 50, Some(before))]
    {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(storage.history(&key, limit, cursor).await.map(|h| h.len()).unwrap_or(0));
                    }
                    spent = start.elapsed();
                });
                spent
            })
        });
    }
    group.bench_function("since_middle", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(storage.since(&key, before).await.map(|s| s.messages.len()).unwrap_or(0));
                }
                spent = start.elapsed();
            });
            spent
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    storage(&mut c);
    c.final_summary();
}
