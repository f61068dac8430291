//! A quick throughput figure for the redb backend, not a check. Run it with:
//!
//! ```text
//! cargo test -p arqon-storage-redb --release --test throughput -- --ignored --nocapture
//! ```
//!
//! Appends awaited one by one per channel (as the router does), on 1, 8
//! and 64 channels at once, with each durability setting; then reads pages
//! of 100 with `history` and `since`. Each append run lasts 2 s or 50,000
//! messages. The file is in the target directory, on the build's disk (not
//! a tmpfs `/tmp`, where a sync is free). docs/performance.md ("redb
//! backend") records the figures.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arqon_protocol::{ChannelKey, IdGenerator};
use arqon_storage::Storage;
use arqon_storage_conformance::fixtures::message;
use arqon_storage_redb::{Durability, RedbOptions, RedbStorage};

const KEPT: usize = 10_000;
const READS: usize = 2_000;

/// Appends for at most `FOR` (or `MOST` messages), awaited one by one per
/// channel on `channels` channels; appends per second.
async fn append_rate(storage: &Arc<RedbStorage>, channels: usize) -> f64 {
    const FOR: Duration = Duration::from_secs(2);
    const MOST: usize = 50_000;
    let started = Instant::now();
    let tasks: Vec<_> = (0..channels)
        .map(|c| {
            let storage = Arc::clone(storage);
            tokio::spawn(async move {
                let chan = ChannelKey::parse("bench", &format!("c{c}")).unwrap();
                let mut ids = IdGenerator::new();
                let mut n = 0;
                while n < MOST / channels && started.elapsed() < FOR {
                    storage.append(&chan, message(&chan, ids.message_id())).await.unwrap();
                    n += 1;
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

fn open(dir: &Path, durability: Durability) -> Arc<RedbStorage> {
    let _ = std::fs::remove_dir_all(dir);
    let options = RedbOptions { max_len: KEPT, durability, ..RedbOptions::new(dir.join("bench.redb")) };
    Arc::new(RedbStorage::open(options).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a timing figure, not a check; see the file's documentation"]
async fn redb_append_and_read_rates() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("redb-throughput");
    let settings = [
        ("fsync = \"always\" (Immediate)", Durability::Immediate),
        ("fsync = \"interval\" (1000 ms)", Durability::Interval(Duration::from_millis(1000))),
    ];
    for (name, durability) in settings {
        let mut rates = Vec::new();
        for channels in [1, 8, 64] {
            let storage = open(&dir, durability);
            rates.push(append_rate(&storage, channels).await);
        }
        println!(
            "redb {name:<32} append 1 channel {:>8.0}/s  8 channels {:>8.0}/s  64 channels {:>8.0}/s",
            rates[0], rates[1], rates[2]
        );
    }

    // Reads from a channel of KEPT messages.
    let storage = open(&dir, Durability::Interval(Duration::from_millis(1000)));
    let chan = ChannelKey::parse("bench", "read").unwrap();
    let mut ids = IdGenerator::new();
    for _ in 0..KEPT {
        storage.append(&chan, message(&chan, ids.message_id())).await.unwrap();
    }
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
        "redb reads, channel of {KEPT}: history(100) {:>7.0} calls/s  since(100) {:>7.0} calls/s",
        READS as f64 / history.as_secs_f64(),
        READS as f64 / since.as_secs_f64(),
    );
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
}
