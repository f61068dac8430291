//! A quick throughput figure for each backend, not a check (the proper
//! benchmarks are criterion's). Run it with:
//!
//! ```text
//! cargo test -p arqon-storage --release --test throughput -- --ignored --nocapture
//! ```
//!
//! Appends one message at a time (each awaited, as the router does per
//! channel), on one channel and on 8 channels at once; then reads pages of
//! 100 with `history` and the newest 100 with `since`, from a channel of
//! 10,000. Redis backends use a redis-server of their own, on loopback.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arqon_protocol::ChannelKey;
use arqon_storage::{FallbackOptions, FallbackStorage, MemoryStorage, RedisStorage, Storage};
use support::{fresh_ids, message, redis_available, redis_options, start_redis};

const KEPT: usize = 10_000;
const APPENDS: usize = 20_000;
const CHANNELS: usize = 8;
const READS: usize = 2_000;

fn per_second(n: usize, took: Duration) -> String {
    format!("{:>9.0}/s", n as f64 / took.as_secs_f64())
}

async fn measure(name: &str, storage: Arc<dyn Storage>) {
    // Sequential appends to one channel.
    let chan = ChannelKey::parse("bench", "one").unwrap();
    let messages: Vec<_> = fresh_ids(APPENDS).into_iter().map(|id| message(&chan, id)).collect();
    let started = Instant::now();
    for m in messages {
        storage.append(&chan, m).await.unwrap();
    }
    let sequential = started.elapsed();

    // Concurrent appends, one task per channel.
    let started = Instant::now();
    let tasks: Vec<_> = (0..CHANNELS)
        .map(|c| {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                let chan = ChannelKey::parse("bench", &format!("c{c}")).unwrap();
                for id in fresh_ids(APPENDS / CHANNELS) {
                    storage.append(&chan, message(&chan, id)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let concurrent = started.elapsed();

    // Reads from the first channel (it keeps the newest KEPT).
    let kept = storage.history(&chan, 1000, None).await.unwrap();
    let cursor = kept[kept.len() - 101].id;
    let started = Instant::now();
    for _ in 0..READS {
        assert_eq!(storage.history(&chan, 100, None).await.unwrap().len(), 100);
    }
    let history = started.elapsed();
    let started = Instant::now();
    for _ in 0..READS {
        assert_eq!(storage.since(&chan, cursor).await.unwrap().messages.len(), 100);
    }
    let since = started.elapsed();

    println!(
        "{name:<22} append 1 channel {}  append {CHANNELS} channels {}  history(100) {} calls ({} msgs)  since(100) {} calls",
        per_second(APPENDS, sequential),
        per_second(APPENDS, concurrent),
        per_second(READS, history),
        per_second(READS * 100, history),
        per_second(READS, since),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a timing figure, not a check; see the file's documentation"]
async fn throughput() {
    measure("memory", Arc::new(MemoryStorage::new(KEPT))).await;
    if !redis_available("throughput (redis)") {
        return;
    }
    let redis = start_redis();
    let primary = RedisStorage::connect(redis_options(&redis, KEPT)).await.unwrap();
    measure("redis", Arc::new(primary)).await;
    let primary = RedisStorage::connect(redis_options(&redis, KEPT)).await.unwrap();
    let wrapped = FallbackStorage::new(Arc::new(primary), FallbackOptions { max_len: KEPT, ..Default::default() });
    measure("redis + fallback", Arc::new(wrapped)).await;
}
