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
//!
//! `journal_fsync_cost` (same command, add `journal_fsync_cost` to run only
//! it) measures appends during an outage: into the journal in memory only,
//! and on disk with each fsync policy (docs/performance.md, "Journal fsync
//! cost").

// Measures Redis too, so it needs the `redis` feature.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arqon_protocol::{ChannelKey, MessageId, Timestamp};
use arqon_storage::{
    ChannelRecord, ChannelStats, FallbackOptions, FallbackStorage, FsyncPolicy, Health, JournalOptions, MemoryStorage,
    RedisStorage, Since, Storage, StorageError, StoredMessage, async_trait,
};
use arqon_storage_conformance::fixtures::message;
use support::{fresh_ids, redis_available, redis_options, start_redis};

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

/// A backend that is always down: every append is journaled.
#[derive(Debug)]
struct Down;

fn down() -> StorageError {
    StorageError::Unavailable("down".to_owned())
}

#[async_trait]
impl Storage for Down {
    async fn create_channel(&self, _: &ChannelKey, _: Timestamp) -> Result<(ChannelRecord, bool), StorageError> {
        Err(down())
    }
    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        Err(down())
    }
    async fn delete_channel(&self, _: &ChannelKey) -> Result<bool, StorageError> {
        Err(down())
    }
    async fn append(&self, _: &ChannelKey, _: StoredMessage) -> Result<arqon_storage::Appended, StorageError> {
        Err(down())
    }
    async fn history(
        &self,
        _: &ChannelKey,
        _: usize,
        _: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        Err(down())
    }
    async fn since(&self, _: &ChannelKey, _: MessageId) -> Result<Since, StorageError> {
        Err(down())
    }
    async fn stats(&self, _: &ChannelKey) -> Result<ChannelStats, StorageError> {
        Err(down())
    }
    fn health(&self) -> Health {
        Health::new("down", false)
    }
    async fn ping(&self) -> Result<(), StorageError> {
        Err(down())
    }
}

/// Appends during an outage for at most `FOR` (or `MOST` messages),
/// awaited one by one per channel on `channels` channels; appends per second.
async fn journaled_rate(storage: &Arc<FallbackStorage>, channels: usize) -> f64 {
    const FOR: Duration = Duration::from_secs(2);
    const MOST: usize = 50_000;
    let started = Instant::now();
    let tasks: Vec<_> = (0..channels)
        .map(|c| {
            let storage = Arc::clone(storage);
            tokio::spawn(async move {
                let chan = ChannelKey::parse("bench", &format!("j{c}")).unwrap();
                let mut n = 0;
                for id in fresh_ids(MOST / channels) {
                    storage.append(&chan, message(&chan, id)).await.unwrap();
                    n += 1;
                    if started.elapsed() > FOR {
                        break;
                    }
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a timing figure, not a check; see the file's documentation"]
async fn journal_fsync_cost() {
    // On the disk the build uses (not a tmpfs /tmp, where a sync is free).
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("journal-fsync-cost");
    let policies = [
        ("memory only", None),
        ("disk, interval 1000 ms", Some(FsyncPolicy::Interval(Duration::from_millis(1000)))),
        ("disk, always", Some(FsyncPolicy::Always)),
    ];
    for (name, policy) in policies {
        let mut rates = Vec::new();
        for channels in [1, CHANNELS] {
            let _ = std::fs::remove_dir_all(&dir);
            let options = FallbackOptions { max_len: KEPT, ..Default::default() };
            let storage = match policy {
                None => FallbackStorage::new(Arc::new(Down), options),
                Some(fsync) => {
                    let journal = JournalOptions { dir: dir.clone(), name: "bench".to_owned(), fsync };
                    FallbackStorage::open(Arc::new(Down), options, &journal).await.unwrap()
                }
            };
            let storage = Arc::new(storage);
            rates.push(journaled_rate(&storage, channels).await);
        }
        println!(
            "journal {name:<24} append 1 channel {:>9.0}/s  append {CHANNELS} channels {:>9.0}/s",
            rates[0], rates[1]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
