//! The Redis backend against a real redis-server: the key layout and its
//! trimming, and how it behaves when Redis is frozen, absent at start-up or
//! restarted. (The storage contract itself is checked by the conformance
//! suite.) Each test spawns its own redis-server; without one installed the
//! tests skip with a notice, except under `CI=true`, where they fail.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arqon_protocol::{ChannelKey, Timestamp};
use arqon_storage::{
    After, Appended, ChannelRecord, ChannelStats, FallbackOptions, FallbackStorage, FsyncPolicy, JournalOptions,
    RedisOptions, RedisStorage, Storage, StorageError,
};
use arqon_storage_conformance::fixtures::message;
use support::{RedisProcess, fresh_ids, ids, redis_available, redis_options, start_redis, until_ping};

/// Slack over a timeout for a slow, busy machine.
const SLACK: Duration = Duration::from_millis(1500);

fn key(channel: &str) -> ChannelKey {
    ChannelKey::parse("r", channel).unwrap()
}

async fn append_all(storage: &dyn Storage, key: &ChannelKey, ids: &[arqon_protocol::MessageId]) {
    for &id in ids {
        assert_eq!(storage.append(key, message(key, id)).await.unwrap(), Appended::Stored, "append {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_under_the_prefix_and_the_id_set_is_trimmed_exactly() {
    if !redis_available("keys_stay_under_the_prefix_and_the_id_set_is_trimmed_exactly") {
        return;
    }
    let redis = start_redis();
    let options = RedisOptions { key_prefix: "bus1:".to_owned(), ..redis_options(&redis, 5) };
    let storage = RedisStorage::connect(options).await.unwrap();
    let chan = key("c");
    storage.create_channel(&chan, Timestamp::from_unix_ms(7)).await.unwrap();
    let all = fresh_ids(300);
    append_all(&storage, &chan, &all).await;

    assert_eq!(redis.command(&["DBSIZE"]), ":4", "registry, stream, id set, counter");
    assert_eq!(redis.command(&["HGET", "bus1:channels", "r:c"]), "$1");
    assert_eq!(redis.command(&["ZCARD", "bus1:ids:{r:c}"]), ":5", "the id set holds exactly the kept ids");
    let stream_len: usize = redis.command(&["XLEN", "bus1:log:{r:c}"])[1..].parse().unwrap();
    assert!((5..300).contains(&stream_len), "MAXLEN ~ trims whole nodes: {stream_len}");
    // Whatever the stream still holds physically, reads see exactly the window.
    assert_eq!(ids(&storage.history(&chan, 1000, None).await.unwrap()), all[295..]);
    assert_eq!(storage.stats(&chan).await.unwrap(), ChannelStats { stored: 5, last_id: Some(all[299]) });
    assert_eq!(storage.history(&chan, 10, Some(all[294])).await, Err(StorageError::UnknownCursor(all[294])));
    assert!(storage.since(&chan, all[294]).await.unwrap().truncated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_fails_within_the_command_timeout_and_the_late_write_is_deduped() {
    if !redis_available("a_frozen_redis_fails_within_the_command_timeout_and_the_late_write_is_deduped") {
        return;
    }
    let redis = start_redis();
    let timeout = Duration::from_millis(300);
    let storage =
        RedisStorage::connect(RedisOptions { command_timeout: timeout, ..redis_options(&redis, 100) }).await.unwrap();
    let chan = key("c");
    let all = fresh_ids(3);
    append_all(&storage, &chan, &all[..1]).await;

    redis.stop();
    let started = Instant::now();
    let result = storage.append(&chan, message(&chan, all[1])).await;
    assert!(matches!(result, Err(StorageError::Unavailable(_))), "{result:?}");
    assert!(started.elapsed() < timeout + SLACK, "append took {:?}", started.elapsed());
    assert!(!storage.health().healthy);
    let started = Instant::now();
    assert!(matches!(storage.history(&chan, 10, None).await, Err(StorageError::Unavailable(_))));
    assert!(started.elapsed() < timeout + SLACK, "history took {:?}", started.elapsed());

    redis.cont();
    until_ping(&storage).await;
    assert!(storage.health().healthy);
    // The timed-out append had reached Redis's socket and ran on thaw:
    // sending it again is recognised, so it is stored once.
    assert_eq!(storage.append(&chan, message(&chan, all[1])).await.unwrap(), Appended::Duplicate);
    append_all(&storage, &chan, &all[2..]).await;
    assert_eq!(ids(&storage.history(&chan, 10, None).await.unwrap()), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_up_is_not_an_error_and_is_joined_later() {
    if !redis_available("redis_down_at_start_up_is_not_an_error_and_is_joined_later") {
        return;
    }
    let mut redis = RedisProcess::reserve();
    let options = RedisOptions { connect_timeout: Duration::from_millis(300), ..redis_options(&redis, 100) };
    let started = Instant::now();
    let storage = RedisStorage::connect(options).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300) + SLACK, "connect took {:?}", started.elapsed());
    assert!(!storage.health().healthy);
    let chan = key("c");
    let all = fresh_ids(1);
    let started = Instant::now();
    assert!(matches!(storage.append(&chan, message(&chan, all[0])).await, Err(StorageError::Unavailable(_))));
    assert!(started.elapsed() < SLACK, "fails fast while disconnected: {:?}", started.elapsed());

    tokio::task::block_in_place(|| redis.restart());
    until_ping(&storage).await;
    append_all(&storage, &chan, &all).await;
    assert!(storage.health().healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_channels_survive_a_redis_restart_and_a_new_client() {
    if !redis_available("history_and_channels_survive_a_redis_restart_and_a_new_client") {
        return;
    }
    let mut redis = tokio::task::block_in_place(RedisProcess::start_durable);
    let options = redis_options(&redis, 100);
    let storage = RedisStorage::connect(options.clone()).await.unwrap();
    let chan = key("c");
    let record = ChannelRecord { key: chan.clone(), created_at: Timestamp::from_unix_ms(1_700_000_000_123) };
    storage.create_channel(&chan, record.created_at).await.unwrap();
    let all = fresh_ids(11);
    append_all(&storage, &chan, &all[..10]).await;

    redis.kill();
    assert!(matches!(storage.append(&chan, message(&chan, all[10])).await, Err(StorageError::Unavailable(_))));
    tokio::task::block_in_place(|| redis.restart());
    until_ping(&storage).await;
    // The restarted Redis has no scripts cached: EVALSHA falls back to EVAL.
    assert_eq!(ids(&storage.history(&chan, 50, None).await.unwrap()), all[..10]);
    append_all(&storage, &chan, &all[10..]).await;

    // Another client, as a restarted bus would be, sees the same.
    let again = RedisStorage::connect(options).await.unwrap();
    assert_eq!(again.channels().await.unwrap(), vec![record]);
    assert_eq!(ids(&again.history(&chan, 50, None).await.unwrap()), all);
    let since = again.since(&chan, all[4]).await.unwrap();
    assert_eq!((ids(&since.messages), since.truncated), (all[5..].to_vec(), false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_max_len_later_reveals_nothing_already_trimmed() {
    if !redis_available("a_larger_max_len_later_reveals_nothing_already_trimmed") {
        return;
    }
    let redis = start_redis();
    let small = redis_options(&redis, 5);
    let storage = RedisStorage::connect(small.clone()).await.unwrap();
    let chan = key("c");
    let all = fresh_ids(11);
    append_all(&storage, &chan, &all[..10]).await;

    let larger = RedisStorage::connect(RedisOptions { max_len: 8, ..small }).await.unwrap();
    assert_eq!(ids(&larger.history(&chan, 50, None).await.unwrap()), all[5..10]);
    assert_eq!(larger.stats(&chan).await.unwrap().stored, 5);
    append_all(&larger, &chan, &all[10..]).await;
    assert_eq!(ids(&larger.history(&chan, 50, None).await.unwrap()), all[5..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_timed_out_and_landed_later_is_stored_once_after_the_journal_is_replayed() {
    if !redis_available("an_append_that_timed_out_and_landed_later_is_stored_once_after_the_journal_is_replayed") {
        return;
    }
    let redis = start_redis();
    let options = RedisOptions { command_timeout: Duration::from_millis(300), ..redis_options(&redis, 100) };
    let ids_key = format!("{}ids:{{r:c}}", options.key_prefix);
    let dir = std::env::temp_dir().join(format!("arqon-journal-redis-test-{}", std::process::id()));
    let journal = JournalOptions { dir: dir.clone(), name: "redis".to_owned(), fsync: FsyncPolicy::Always };
    let fallback = FallbackOptions { max_len: 100, retry_interval: Duration::from_millis(20), ..Default::default() };
    let open = async || {
        let primary = Arc::new(RedisStorage::connect(options.clone()).await.unwrap());
        FallbackStorage::open(primary, fallback.clone(), &journal).await.unwrap()
    };
    let chan = key("c");
    let all = fresh_ids(5);

    let storage = open().await;
    append_all(&storage, &chan, &all[..2]).await;
    redis.stop();
    // Times out (journaled, on disk), but the command is in Redis's socket.
    append_all(&storage, &chan, &all[2..]).await;
    assert_eq!(storage.health().journaled, 3);
    drop(storage); // the bus dies before Redis is back
    redis.cont();
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.command(&["ZCARD", &ids_key]) != ":3" {
        assert!(Instant::now() < deadline, "the timed-out append never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let storage = open().await;
    assert_eq!(ids(&storage.history(&chan, 10, None).await.unwrap()), all, "each once, in order");
    assert_eq!(storage.health().journaled, 0);
    drop(storage);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_number_appends_and_reads_by_position_see_exactly_the_window() {
    if !redis_available("positions_number_appends_and_reads_by_position_see_exactly_the_window") {
        return;
    }
    let redis = start_redis();
    let storage = RedisStorage::connect(redis_options(&redis, 5)).await.unwrap();
    let chan = key("p");
    let empty = storage.read_placed(&chan, After::Position(0), 10).await.unwrap().unwrap();
    assert_eq!((empty.messages.len(), empty.truncated, empty.tip, empty.tip_id), (0, false, 0, None));
    let all = fresh_ids(8);
    for (n, &id) in all.iter().enumerate() {
        let placed = storage.append_placed(&chan, message(&chan, id)).await.unwrap();
        assert_eq!(placed, (Appended::Stored, Some(n as u64 + 1)));
    }
    // A retry has no new position.
    assert_eq!(storage.append_placed(&chan, message(&chan, all[7])).await.unwrap(), (Appended::Duplicate, None));
    let positions = |read: &arqon_storage::PlacedRead| -> Vec<(u64, arqon_protocol::MessageId)> {
        read.messages.iter().map(|p| (p.position, p.message.id)).collect()
    };
    // Kept: positions 4..=8. After position 5, at most 2.
    let read = storage.read_placed(&chan, After::Position(5), 2).await.unwrap().unwrap();
    assert_eq!(positions(&read), [(6, all[5]), (7, all[6])]);
    assert_eq!((read.truncated, read.tip, read.tip_id), (false, 8, Some(all[7])));
    // Right after a trimmed position: everything kept, truncated.
    let read = storage.read_placed(&chan, After::Position(1), 10).await.unwrap().unwrap();
    assert_eq!((positions(&read).first().copied(), read.messages.len(), read.truncated), (Some((4, all[3])), 5, true));
    // Just before the window is not truncated; at the tip, nothing.
    let read = storage.read_placed(&chan, After::Position(3), 10).await.unwrap().unwrap();
    assert_eq!((read.messages.len(), read.truncated), (5, false));
    let read = storage.read_placed(&chan, After::Position(8), 10).await.unwrap().unwrap();
    assert_eq!((read.messages.len(), read.truncated, read.tip), (0, false, 8));
    // By id, as `since`; limit 0 reads the tip only.
    let read = storage.read_placed(&chan, After::Id(all[5]), 10).await.unwrap().unwrap();
    assert_eq!(positions(&read), [(7, all[6]), (8, all[7])]);
    let since = storage.since(&chan, all[5]).await.unwrap();
    assert_eq!(ids(&since.messages), all[6..]);
    assert!(storage.read_placed(&chan, After::Id(all[0]), 10).await.unwrap().unwrap().truncated);
    let tip = storage.read_placed(&chan, After::Position(0), 0).await.unwrap().unwrap();
    assert_eq!((tip.messages.len(), tip.tip, tip.tip_id), (0, 8, Some(all[7])));
}
