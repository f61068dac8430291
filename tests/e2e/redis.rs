//! History in Redis, end to end: a real bus over a real redis-server that the
//! test kills, freezes or starts late. Nothing a client was told is stored
//! may be lost, nothing may be stored twice, and the bus must keep serving.
//!
//! Each test spawns its own redis-server on a free port; without one
//! installed they skip with a notice, except under `CI=true`, where they fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arqon_config::{Config, StorageBackend};
use arqon_e2e::redis::{RedisProcess, redis_available};
use arqon_e2e::{TIMEOUT, TestClient, TestServer, test_config};
use serde_json::{Value, json};

/// How many messages the outage tests publish, and at what pace.
const MESSAGES: usize = 5000;
const PACE: Duration = Duration::from_millis(2);
/// The outage starts after this many messages and lasts this long.
const OUTAGE_AFTER: usize = 1000;
const OUTAGE: Duration = Duration::from_secs(5);
/// The command timeout these tests configure.
const COMMAND_TIMEOUT_MS: u64 = 500;

fn redis_config(redis: &RedisProcess) -> Config {
    let mut config = test_config();
    config.storage.backend = StorageBackend::Redis;
    config.storage.redis.url = redis.url();
    config.storage.redis.command_timeout_ms = COMMAND_TIMEOUT_MS;
    config.storage.redis.connect_timeout_ms = 1000;
    config.storage.journal.path = redis.dir().join("journal").display().to_string();
    config
}

/// `status`'s storage part.
async fn storage_status(client: &mut TestClient) -> Value {
    client.ok("status", json!({})).await["storage"].clone()
}

/// Waits until `status` reports the storage healthy (the journal written back).
async fn until_healthy(client: &mut TestClient) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let storage = storage_status(client).await;
        if storage["healthy"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "storage not healthy again in time: {storage}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole kept history of a channel, oldest first, paged 1,000 at a time
/// with `before`.
async fn full_history(client: &mut TestClient, room: &str, channel: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut before: Option<Value> = None;
    loop {
        let mut args = json!({"room": room, "channel": channel, "limit": 1000});
        if let Some(id) = &before {
            args["before"] = id.clone();
        }
        let page = client.ok("history", args).await["messages"].as_array().unwrap().clone();
        let Some(oldest) = page.first() else { break };
        before = Some(oldest["id"].clone());
        all.splice(0..0, page);
    }
    all
}

/// Publishes with the `publish` command; returns the message id.
async fn publish(client: &mut TestClient, room: &str, channel: &str, payload: Value) -> String {
    let answer = client.ok("publish", json!({"room": room, "channel": channel, "payload": payload})).await;
    answer["id"].as_str().unwrap().to_owned()
}

/// Reads `n` messages, checking they carry `i` = `first`, `first + 1`, …;
/// returns their ids.
async fn receive_in_order(client: &mut TestClient, first: usize, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in first..first + n {
        let message = client.recv_message().await;
        assert_eq!(message["payload"]["i"], i, "live delivery out of order or lost: {message}");
        ids.push(message["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// What an outage does to Redis.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// `kill -9`, then a restart on the same port and data (append-only file).
    Kill,
    /// `kill -STOP`, then `kill -CONT`.
    Freeze,
}

/// A subscriber and a publisher on one channel; the publisher sends
/// [`MESSAGES`] at a steady [`PACE`] with the `publish` command while Redis
/// suffers `outage` for [`OUTAGE`]. Every message must be delivered live,
/// no publish may take much past the command timeout, and afterwards history
/// must hold all of them, in order, once.
async fn publish_through(outage: Outage) {
    let redis = tokio::task::block_in_place(RedisProcess::start_durable);
    let server = TestServer::start_with(redis_config(&redis)).await;
    let (mut subscriber, mut publisher) = (server.client().await, server.client().await);
    subscriber.join("load", "c").await;

    let sent = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(async move {
        let ids = receive_in_order(&mut subscriber, 0, MESSAGES).await;
        (subscriber, ids)
    });
    let chaos = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut redis = redis;
            while sent.load(Ordering::SeqCst) < OUTAGE_AFTER {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            match outage {
                Outage::Kill => redis.kill(),
                Outage::Freeze => redis.stop(),
            }
            tokio::time::sleep(OUTAGE).await;
            match outage {
                Outage::Kill => tokio::task::spawn_blocking(move || {
                    redis.restart();
                    redis
                })
                .await
                .unwrap(),
                Outage::Freeze => {
                    redis.cont();
                    redis
                }
            }
        })
    };

    let mut slowest = Duration::ZERO;
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..MESSAGES {
        tick.tick().await;
        let started = Instant::now();
        publish(&mut publisher, "load", "c", json!({"i": i})).await;
        slowest = slowest.max(started.elapsed());
        sent.store(i + 1, Ordering::SeqCst);
        if i == OUTAGE_AFTER + 750 {
            // About 1.5 s into the outage: the bus says it is degraded.
            let storage = storage_status(&mut publisher).await;
            assert_eq!(storage["healthy"], false, "{outage:?}: {storage}");
        }
    }
    eprintln!("{outage:?}: slowest publish {slowest:?}");
    let _redis = chaos.await.unwrap();
    let (_subscriber, delivered) = tokio::time::timeout(TIMEOUT, reader).await.expect("all delivered in time").unwrap();
    // One append waits for the command timeout when the outage begins; the
    // rest are journaled at once. Slack covers a busy machine.
    let bound = Duration::from_millis(COMMAND_TIMEOUT_MS) + Duration::from_millis(1500);
    assert!(slowest < bound, "a publish took {slowest:?} ({outage:?}), bound {bound:?}");

    until_healthy(&mut publisher).await;
    let history = full_history(&mut publisher, "load", "c").await;
    let kept: Vec<&str> = history.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(kept.len(), MESSAGES, "history holds every message exactly once ({outage:?})");
    assert_eq!(kept, delivered, "history is in delivery order ({outage:?})");
    for (i, message) in history.iter().enumerate() {
        assert_eq!(message["payload"]["i"], i);
        assert_eq!(message["type"], "message");
    }
    assert_eq!(publisher.take_pending().iter().filter(|f| f["type"] == "error").count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_loses_nothing() {
    if !redis_available("redis_killed_mid_stream_loses_nothing") {
        return;
    }
    publish_through(Outage::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_mid_stream_stalls_no_publish_and_loses_nothing() {
    if !redis_available("redis_frozen_mid_stream_stalls_no_publish_and_loses_nothing") {
        return;
    }
    publish_through(Outage::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_channels_survive_a_server_restart() {
    if !redis_available("history_and_channels_survive_a_server_restart") {
        return;
    }
    let redis = tokio::task::block_in_place(RedisProcess::start);
    let config = redis_config(&redis);
    let server = TestServer::start_with(config.clone()).await;
    let mut client = server.client().await;
    client.ok("create_channel", json!({"room": "r", "channel": "empty"})).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(publish(&mut client, "r", "busy", json!({"i": i})).await);
    }
    let info = client.ok("channel_info", json!({"room": "r", "channel": "empty"})).await;
    assert_eq!(
        storage_status(&mut client).await,
        json!({"backend": "redis", "healthy": true, "journaled": 0, "refused": 0})
    );
    drop(client);
    server.shutdown().await;

    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let listed = client.ok("list_channels", json!({"room": "r"})).await;
    let names: Vec<&str> =
        listed["channels"].as_array().unwrap().iter().map(|c| c["channel"].as_str().unwrap()).collect();
    assert_eq!(names, ["busy", "empty"]);
    let again = client.ok("channel_info", json!({"room": "r", "channel": "empty"})).await;
    assert_eq!(again["created_at"], info["created_at"], "the original record");
    let history = full_history(&mut client, "r", "busy").await;
    let kept: Vec<&str> = history.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(kept, ids);
    let busy = client.ok("channel_info", json!({"room": "r", "channel": "busy"})).await;
    assert_eq!((busy["stored"].clone(), busy["last_id"].clone()), (json!(30), json!(ids[29])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_starts_while_redis_is_down_and_catches_up() {
    if !redis_available("the_bus_starts_while_redis_is_down_and_catches_up") {
        return;
    }
    let mut redis = RedisProcess::reserve();
    let mut config = redis_config(&redis);
    config.storage.redis.connect_timeout_ms = 300;
    let server = TestServer::start_with(config.clone()).await;
    let (mut subscriber, mut publisher) = (server.client().await, server.client().await);
    assert_eq!(
        storage_status(&mut publisher).await,
        json!({"backend": "redis", "healthy": false, "journaled": 0, "refused": 0})
    );

    subscriber.join("r", "c").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(publish(&mut publisher, "r", "c", json!({"i": i})).await);
    }
    assert_eq!(receive_in_order(&mut subscriber, 0, 20).await, ids, "delivered live while Redis is down");
    // Redis may hold older history this bus has never seen: no partial answer.
    assert_eq!(publisher.err("history", json!({"room": "r", "channel": "c"})).await, "STORAGE_UNAVAILABLE");

    tokio::task::block_in_place(|| redis.restart());
    until_healthy(&mut publisher).await;
    let history = full_history(&mut publisher, "r", "c").await;
    assert_eq!(history.iter().map(|m| m["id"].as_str().unwrap()).collect::<Vec<_>>(), ids);
    drop((subscriber, publisher));
    server.shutdown().await;

    // What was journaled, the channel record included, is in Redis now.
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let listed = client.ok("list_channels", json!({})).await;
    assert_eq!(listed["channels"], json!([{"room": "r", "channel": "c", "members": 0}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_since_across_an_outage_returns_exactly_the_missed_messages() {
    if !redis_available("join_since_across_an_outage_returns_exactly_the_missed_messages") {
        return;
    }
    let mut redis = tokio::task::block_in_place(RedisProcess::start_durable);
    let server = TestServer::start_with(redis_config(&redis)).await;
    let mut publisher = server.client().await;
    let mut first = server.client().await;
    first.join("r", "c").await;
    for i in 0..10 {
        publish(&mut publisher, "r", "c", json!({"i": i})).await;
    }
    let seen = receive_in_order(&mut first, 0, 10).await;
    let last_seen = seen[9].clone();
    drop(first);

    redis.kill();
    let mut missed = Vec::new();
    for i in 10..20 {
        missed.push(publish(&mut publisher, "r", "c", json!({"i": i})).await);
    }
    // Rejoining while Redis is still down: answered from memory.
    let mut second = server.client().await;
    let joined = second.ok("join_channel", json!({"room": "r", "channel": "c", "since": last_seen})).await;
    assert_eq!(joined["truncated"], false);
    assert_eq!(receive_in_order(&mut second, 10, 10).await, missed);
    let marker = publish(&mut publisher, "r", "c", json!({"i": 20})).await;
    assert_eq!(second.recv_message().await["id"], marker.as_str(), "live resumes right after, nothing twice");
    missed.push(marker);
    drop(second);

    tokio::task::block_in_place(|| redis.restart());
    for i in 21..25 {
        missed.push(publish(&mut publisher, "r", "c", json!({"i": i})).await);
    }
    until_healthy(&mut publisher).await;
    // Rejoining after Redis is back: answered by Redis, the outage included.
    let mut third = server.client().await;
    let joined = third.ok("join_channel", json!({"room": "r", "channel": "c", "since": last_seen})).await;
    assert_eq!(joined["truncated"], false);
    assert_eq!(receive_in_order(&mut third, 10, 15).await, missed);
    let marker = publish(&mut publisher, "r", "c", json!({"i": 25})).await;
    assert_eq!(third.recv_message().await["id"], marker.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_refuses_publishing_and_loses_nothing_accepted() {
    if !redis_available("a_full_journal_refuses_publishing_and_loses_nothing_accepted") {
        return;
    }
    let mut redis = tokio::task::block_in_place(RedisProcess::start_durable);
    let mut config = redis_config(&redis);
    config.storage.redis.journal_capacity = 5;
    let server = TestServer::start_with(config).await;
    let (mut subscriber, mut publisher) = (server.client().await, server.client().await);
    subscriber.join("r", "c").await;
    let mut accepted = vec![publish(&mut publisher, "r", "c", json!({"i": 0})).await];

    redis.kill();
    for i in 1..6 {
        accepted.push(publish(&mut publisher, "r", "c", json!({"i": i})).await);
    }
    let refused = publisher.err("publish", json!({"room": "r", "channel": "c", "payload": {"i": 6}})).await;
    assert_eq!(refused, "STORAGE_UNAVAILABLE");
    let storage = storage_status(&mut publisher).await;
    assert_eq!(storage["healthy"], false);
    // The refusal and the waiting journal are visible in status.
    assert_eq!((storage["journaled"].as_u64(), storage["refused"].as_u64()), (Some(5), Some(1)), "{storage}");
    assert_eq!(receive_in_order(&mut subscriber, 0, 6).await, accepted);
    subscriber.expect_silence(Duration::from_millis(200)).await; // the refused one was not delivered

    tokio::task::block_in_place(|| redis.restart());
    until_healthy(&mut publisher).await;
    accepted.push(publish(&mut publisher, "r", "c", json!({"i": 6})).await);
    let history = full_history(&mut publisher, "r", "c").await;
    assert_eq!(history.iter().map(|m| m["id"].as_str().unwrap()).collect::<Vec<_>>(), accepted);
}
