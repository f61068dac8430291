//! The backends of this crate through the conformance kit
//! (`arqon-storage-conformance`), one line each, as any backend crate runs
//! it: memory, the degradation wrapper over memory (with and without its
//! journal file), Redis and the wrapper over Redis. Then the memory
//! backend's byte budgets, which go beyond the contract.
//!
//! The Redis backends (feature `redis`) spawn a redis-server of their own
//! per check (see `support`); without one installed they skip with a
//! notice, except under `CI=true`, where they fail.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use arqon_protocol::{ChannelKey, IdGenerator, MessageId};
use arqon_storage::{
    Appended, ChannelStats, FallbackOptions, FallbackStorage, MemoryStorage, Storage, StorageError, StoredMessage,
};
use arqon_storage_conformance::conformance;
use arqon_storage_conformance::fixtures::{all, ids_of, ids_out_of_order, key};

// ---------------------------------------------------------------------------
// The backends under test: one line each
// ---------------------------------------------------------------------------

conformance!(memory, async |capacity| Arc::new(MemoryStorage::new(capacity)) as Arc<dyn Storage>);
conformance!(fallback_over_memory, async |capacity| {
    let options = FallbackOptions { max_len: capacity, ..FallbackOptions::default() };
    Arc::new(FallbackStorage::new(Arc::new(MemoryStorage::new(capacity)), options)) as Arc<dyn Storage>
});
conformance!(journaled_fallback_over_memory, support::journaled_fallback_over_memory);
#[cfg(feature = "redis")]
conformance!(redis, requires support::redis_available, support::redis_backend);
#[cfg(feature = "redis")]
conformance!(fallback_over_redis, requires support::redis_available, support::fallback_over_redis);

// ---------------------------------------------------------------------------
// The memory backend's byte budgets
// ---------------------------------------------------------------------------

/// Bytes the memory backend charges a message on top of its frame.
const OVERHEAD: usize = 96;

/// A message whose frame is `len` bytes of valid JSON.
fn sized(id: MessageId, len: usize) -> StoredMessage {
    let head = format!(r#"{{"id":"{id}","type":"message","payload":""#);
    let text = format!("{head}{}\"}}", "x".repeat(len - head.len() - 2));
    assert_eq!(text.len(), len);
    StoredMessage { id, frame: arqon_protocol::Frame::from_text(text) }
}

/// The issue's finding, at the storage: 300 appends of 1 MiB over 100
/// channels never leave more than the total budget held, and the count the
/// backend reports is the sum of what it keeps.
#[tokio::test]
async fn large_appends_to_many_channels_stay_within_the_total_budget() {
    const MIB: usize = 1 << 20;
    let total = 24 * MIB;
    let storage = MemoryStorage::new(1000).with_byte_budget(8 * MIB, total);
    let mut ids = IdGenerator::new();
    let channels: Vec<ChannelKey> = (0..100).map(|i| key("flood", &format!("c{i}"))).collect();
    for round in 0..3 {
        for chan in &channels {
            assert_eq!(storage.append(chan, sized(ids.message_id(), MIB)).await, Ok(Appended::Stored));
            let held = storage.held_bytes();
            assert!(held <= total, "round {round}, {chan}: {held} bytes held over a budget of {total}");
        }
    }
    let mut kept = 0;
    for chan in &channels {
        kept += all(&storage, chan).await.iter().map(|m| m.frame.len() + OVERHEAD).sum::<usize>();
    }
    assert_eq!(storage.held_bytes(), kept, "the counter is what the logs keep");
    let health = storage.health();
    assert_eq!((health.history_bytes, health.history_bytes_budget), (kept as u64, total as u64));
    // Trimmed to a sixteenth under the budget, not emptied.
    assert!(kept >= total - total / 16 - MIB - OVERHEAD, "only {kept} bytes kept");
}

/// Past the total, the largest channel loses its oldest messages; the small
/// ones, including the one just appended to, keep theirs.
#[tokio::test]
async fn the_largest_channel_is_trimmed_first() {
    let (big, small) = (key("r", "big"), key("r", "small"));
    let others: Vec<ChannelKey> = (0..4).map(|i| key("r", &format!("other{i}"))).collect();
    let mut generator = IdGenerator::new();
    let mut ids = || generator.message_id();
    // 10 x 10,000 + 5 x 2 x 1,000 bytes of frames; the budget has room for
    // 4,000 more bytes, then 15 more messages' overhead.
    let total = 10 * (10_000 + OVERHEAD) + 10 * (1_000 + OVERHEAD) + 4_000;
    let storage = MemoryStorage::new(1000).with_byte_budget(1 << 20, total);
    let big_ids: Vec<MessageId> = (0..10).map(|_| ids()).collect();
    for &id in &big_ids {
        storage.append(&big, sized(id, 10_000)).await.unwrap();
    }
    let mut small_ids = Vec::new();
    for chan in others.iter().chain([&small]) {
        for _ in 0..2 {
            let id = ids();
            storage.append(chan, sized(id, 1_000)).await.unwrap();
            small_ids.push((chan.clone(), id));
        }
    }
    assert_eq!(all(&storage, &big).await.len(), 10, "under the budget, nothing goes");
    // 5,000 bytes more: over the total, which must come down to 15/16 of it.
    let newest = ids();
    storage.append(&small, sized(newest, 5_000)).await.unwrap();
    let target = total - total / 16;
    assert!(storage.held_bytes() <= target, "{} held, target {target}", storage.held_bytes());
    let kept_big = ids_of(&all(&storage, &big).await);
    let evicted = 10 - kept_big.len();
    assert!((1..10).contains(&evicted), "{evicted} of big's messages evicted");
    assert_eq!(kept_big, big_ids[evicted..], "big keeps its newest, contiguous");
    for (chan, id) in &small_ids {
        assert!(ids_of(&all(&storage, chan).await).contains(id), "{chan} lost {id}");
    }
    assert_eq!(ids_of(&all(&storage, &small).await).last(), Some(&newest));
}

/// A channel trimmed by the total budget answers cursors as the contract
/// says: an evicted `since` is truncated, an evicted `before` unknown, an
/// evicted id may be stored again.
#[tokio::test]
async fn trimming_by_the_total_keeps_the_cursor_contract() {
    let (chan, other) = (key("r", "trimmed"), key("r", "other"));
    let ids = ids_out_of_order(8);
    let total = 6 * (1_000 + OVERHEAD);
    let storage = MemoryStorage::new(1000).with_byte_budget(1 << 20, total);
    for &id in &ids[..6] {
        storage.append(&chan, sized(id, 1_000)).await.unwrap();
    }
    // Over the total through another channel: `chan`, the largest, pays.
    storage.append(&other, sized(ids[6], 1_000)).await.unwrap();
    let kept = ids_of(&all(&storage, &chan).await);
    let evicted = 6 - kept.len();
    assert!((1..6).contains(&evicted), "{evicted} evicted");
    assert_eq!(kept, ids[evicted..6]);
    let since = storage.since(&chan, ids[0]).await.unwrap();
    assert!(since.truncated);
    assert_eq!(ids_of(&since.messages), kept);
    let since = storage.since(&chan, ids[evicted]).await.unwrap();
    assert!(!since.truncated);
    assert_eq!(ids_of(&since.messages), ids[evicted + 1..6]);
    assert_eq!(storage.history(&chan, 10, Some(ids[0])).await, Err(StorageError::UnknownCursor(ids[0])));
    assert_eq!(storage.stats(&chan).await.unwrap(), ChannelStats { stored: kept.len() as u64, last_id: Some(ids[5]) });
    assert_eq!(storage.append(&chan, sized(ids[0], 1_000)).await, Ok(Appended::Stored), "no longer kept");
}

/// Each channel keeps at most its byte budget, its newest messages; one
/// message over that budget is kept by no one and leaves nothing older to
/// replay past it.
#[tokio::test]
async fn each_channel_keeps_at_most_its_byte_budget() {
    let chan = key("r", "c");
    let ids = ids_out_of_order(6);
    let storage = MemoryStorage::new(1000).with_byte_budget(3 * (1_000 + OVERHEAD), 1 << 30);
    for &id in &ids[..5] {
        assert_eq!(storage.append(&chan, sized(id, 1_000)).await, Ok(Appended::Stored));
    }
    assert_eq!(ids_of(&all(&storage, &chan).await), ids[2..5]);
    assert_eq!(storage.held_bytes(), 3 * (1_000 + OVERHEAD));
    assert_eq!(storage.append(&chan, sized(ids[5], 4_000)).await, Ok(Appended::Stored));
    assert_eq!(all(&storage, &chan).await, Vec::new());
    assert_eq!(storage.held_bytes(), 0);
    let since = storage.since(&chan, ids[4]).await.unwrap();
    assert!(since.truncated, "the oversized message is missing after ids[4]");
}

/// Appends from several threads at once, to channels of their own and to
/// shared ones, leave the counter equal to what is kept and within the
/// budget once they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_keep_the_count_exact() {
    let total = 64 * (10_000 + OVERHEAD);
    let storage = Arc::new(MemoryStorage::new(1000).with_byte_budget(1 << 20, total));
    let tasks: Vec<_> = (0..4)
        .map(|task| {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                let mut ids = IdGenerator::new();
                for i in 0..100 {
                    let chan = if i % 2 == 0 {
                        key("shared", &format!("s{}", i % 10))
                    } else {
                        key("own", &format!("t{task}-{i}"))
                    };
                    assert_eq!(storage.append(&chan, sized(ids.message_id(), 10_000)).await, Ok(Appended::Stored));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut kept = 0;
    for record in (0..10).map(|i| key("shared", &format!("s{i}"))).chain(
        (0..4).flat_map(|task| (0..100).filter(|i| i % 2 == 1).map(move |i| key("own", &format!("t{task}-{i}")))),
    ) {
        kept += all(&*storage, &record).await.iter().map(|m| m.frame.len() + OVERHEAD).sum::<usize>();
    }
    assert_eq!(storage.held_bytes(), kept);
    assert!(kept <= total, "{kept} kept over a budget of {total}");
}

/// Deleting a channel gives its bytes back to the total.
#[tokio::test]
async fn delete_returns_the_bytes() {
    let storage = MemoryStorage::new(1000);
    let (a, b) = (key("r", "a"), key("r", "b"));
    let ids = ids_out_of_order(3);
    storage.append(&a, sized(ids[0], 2_000)).await.unwrap();
    storage.append(&b, sized(ids[1], 3_000)).await.unwrap();
    storage.append(&b, sized(ids[2], 500)).await.unwrap();
    assert_eq!(storage.held_bytes(), 5_500 + 3 * OVERHEAD);
    assert!(storage.delete_channel(&b).await.unwrap());
    assert_eq!(storage.held_bytes(), 2_000 + OVERHEAD);
    assert!(storage.delete_channel(&a).await.unwrap());
    assert_eq!(storage.held_bytes(), 0);
}
