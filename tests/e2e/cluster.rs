//! Several nodes acting as one bus over one redis-server the tests start:
//! every routing row across nodes, cluster-wide counts, member events and
//! channel changes, per-sender order, a client moving between nodes, and
//! Redis killed and restarted under traffic. (A node killed with kill -9 is
//! in bins/arqonbus/tests/process.rs, which runs real processes.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arqon_config::{Config, StorageBackend};
use arqon_e2e::redis::{RedisProcess, redis_available};
use arqon_e2e::{TIMEOUT, TestClient, TestServer, Window, http, test_config};
use serde_json::{Value, json};

/// Short, so that tests about dead nodes finish quickly.
const REGISTRY_TTL_MS: u64 = 1500;

pub(crate) fn node_config(redis: &RedisProcess, node: &str) -> Config {
    node_config_ttl(redis, node, REGISTRY_TTL_MS)
}

fn node_config_ttl(redis: &RedisProcess, node: &str, ttl_ms: u64) -> Config {
    let mut config = test_config();
    config.storage.backend = StorageBackend::Redis;
    config.storage.redis.url = redis.url();
    config.storage.redis.command_timeout_ms = 500;
    config.storage.redis.connect_timeout_ms = 1000;
    config.storage.journal.path = redis.dir().join("journal").display().to_string();
    config.cluster.enabled = true;
    config.cluster.node_id = node.to_owned();
    config.cluster.registry_ttl_ms = ttl_ms;
    config
}

/// `n` nodes over `redis`, each knowing all the others.
async fn start_nodes(redis: &RedisProcess, n: usize) -> Vec<TestServer> {
    start_nodes_ttl(redis, n, REGISTRY_TTL_MS).await
}

async fn start_nodes_ttl(redis: &RedisProcess, n: usize, ttl_ms: u64) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(TestServer::start_with(node_config_ttl(redis, &format!("node-{i}"), ttl_ms)).await);
    }
    for node in &nodes {
        until_status(node, |s| s["cluster"]["peers"].as_array().map(Vec::len) == Some(n - 1)).await;
    }
    nodes
}

/// The node's monitoring `/status`.
async fn status(node: &TestServer) -> Value {
    let (code, body) = http(node.monitoring.expect("monitoring on"), "GET", "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until the node's `/status` satisfies `pred`.
pub(crate) async fn until_status(node: &TestServer, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = status(node).await;
        if pred(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "status never matched: {status}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `from`'s node knows `to`'s (registrations travel
/// asynchronously): direct probes until one arrives. Returns nothing; the
/// probes are consumed.
async fn until_reachable(from: &mut TestClient, to: &mut TestClient) {
    let deadline = Instant::now() + TIMEOUT;
    for probe in 0u64.. {
        let id = from.new_id();
        from.send(json!({"type": "message", "id": id, "to": to.id, "payload": {"probe": probe}})).await;
        let arrived = tokio::time::timeout(
            Duration::from_millis(300),
            to.recv_where(|f| f["type"] == "message" && f["payload"]["probe"] == probe),
        )
        .await;
        if arrived.is_ok() {
            // Errors for the probes that failed are of no interest.
            from.take_pending();
            return;
        }
        assert!(Instant::now() < deadline, "{} never became reachable", to.id);
    }
}

macro_rules! need_redis {
    ($name:literal) => {
        if !redis_available($name) {
            return;
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_room_and_direct_messages_cross_nodes_exactly_once() {
    need_redis!("channel_room_and_direct_messages_cross_nodes_exactly_once");
    let redis = RedisProcess::start();
    let nodes = start_nodes(&redis, 3).await;
    let (mut a, mut b, mut c) = (nodes[0].client().await, nodes[1].client().await, nodes[2].client().await);
    for client in [&mut a, &mut b, &mut c] {
        client.join("r", "c1").await;
    }
    // b is in two channels of the room: a room-wide message reaches it once.
    b.join("r", "c2").await;
    a.until_members("r", "c1", 3).await;

    // Row 1: a channel message reaches every member on every node, not the sender.
    a.publish_ff("r", "c1", json!("to the channel")).await;
    for client in [&mut b, &mut c] {
        let message = client.recv_message().await;
        assert_eq!((message["payload"].clone(), message["from"].clone()), (json!("to the channel"), json!(a.id)));
    }
    // Row 2: room-wide, each client once.
    c.send(json!({"type": "message", "room": "r", "payload": "to the room"})).await;
    for client in [&mut a, &mut b] {
        assert_eq!(client.recv_message().await["payload"], "to the room");
    }
    // Row 3: direct, to a client on another node.
    until_reachable(&mut a, &mut c).await;
    a.send(json!({"type": "message", "to": c.id, "payload": "to c"})).await;
    let direct = c.recv_message().await;
    assert_eq!((direct["payload"].clone(), direct["from"].clone()), (json!("to c"), json!(a.id)));
    // Nothing twice, nothing to the senders (member events aside).
    for client in [&mut a, &mut b, &mut c] {
        let messages: Vec<Value> = client.take_pending().into_iter().filter(|f| f["type"] == "message").collect();
        assert!(messages.is_empty(), "{messages:?}");
        client.expect_silence(Duration::from_millis(300)).await;
    }
    // A client connected nowhere is NOT_FOUND on every node.
    let gone = c.id.clone();
    drop(c);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        b.send(json!({"type": "message", "to": gone, "payload": "anyone?"})).await;
        match tokio::time::timeout(Duration::from_millis(300), b.recv()).await {
            Ok(frame) if frame["type"] == "error" => {
                assert_eq!(frame["error"]["code"], "NOT_FOUND");
                break;
            }
            _ => assert!(Instant::now() < deadline, "a departed client stayed reachable"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_member_events_and_channel_changes_are_cluster_wide() {
    need_redis!("counts_member_events_and_channel_changes_are_cluster_wide");
    let redis = RedisProcess::start();
    let nodes = start_nodes(&redis, 3).await;
    let mut a = nodes[0].client().await;
    a.ok("create_channel", json!({"room": "r", "channel": "x"})).await;
    let mut b = nodes[1].client().await;
    // Created on node 0, listed on node 1.
    let deadline = Instant::now() + TIMEOUT;
    while b.ok("list_channels", json!({"room": "r"})).await["channels"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the channel never appeared on node 1");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    a.join("r", "x").await;
    b.until_members("r", "x", 1).await;
    let joined = b.join("r", "x").await;
    assert!(joined["members"].as_u64().unwrap() >= 1);
    // a, on another node, hears that b joined.
    let event = a.recv_event("member_joined").await;
    assert_eq!(event["payload"]["client_id"], json!(b.id));
    let mut c = nodes[2].client().await;
    c.join("r", "x").await;
    for client in [&mut a, &mut b, &mut c] {
        client.until_members("r", "x", 3).await;
    }
    let listed = a.ok("list_channels", json!({})).await;
    assert_eq!(listed["channels"], json!([{"room": "r", "channel": "x", "members": 3}]));
    // Leaving and disconnecting count down everywhere, with member_left.
    c.ok("leave_channel", json!({"room": "r", "channel": "x"})).await;
    a.until_members("r", "x", 2).await;
    drop(b);
    assert_eq!(a.recv_event("member_left").await["payload"]["client_id"], json!(c.id));
    c.until_members("r", "x", 1).await;

    // Deleting on node 2 removes the channel on node 0 and tells its member.
    let mut admin_config = node_config(&redis, "node-admin");
    admin_config.auth.default_role = arqon_protocol::Role::Admin;
    let admin_node = TestServer::start_with(admin_config).await;
    let mut admin = admin_node.client().await;
    admin.ok("delete_channel", json!({"room": "r", "channel": "x"})).await;
    let deleted = a.recv_event("channel_deleted").await;
    assert_eq!(deleted["payload"]["channel"], "x");
    let deadline = Instant::now() + TIMEOUT;
    while !a.ok("list_channels", json!({})).await["channels"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the deleted channel stayed on node 0");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A channel of the same name starts from zero members everywhere: the old
    // one's counts (a was still a member on node 0) died with it.
    c.join("r", "x").await;
    for client in [&mut a, &mut c, &mut admin] {
        client.until_members("r", "x", 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_sender_order_and_history_hold_across_nodes() {
    need_redis!("per_sender_order_and_history_hold_across_nodes");
    const MESSAGES: u64 = 2000;
    let redis = RedisProcess::start();
    let nodes = start_nodes(&redis, 2).await;
    let mut reader = nodes[1].client().await;
    reader.join("r", "order").await;
    let mut writer = nodes[0].client().await;
    writer.until_members("r", "order", 1).await;
    let window = Window::default();
    let pace = window.clone();
    let sending = tokio::spawn(async move {
        for i in 0..MESSAGES {
            pace.before_sending(i).await;
            writer.publish_ff("r", "order", json!({"i": i})).await;
        }
        writer
    });
    for i in 0..MESSAGES {
        let message = reader.recv_message().await;
        assert_eq!(message["payload"]["i"], i, "out of order");
        window.received(i + 1);
    }
    let _writer = sending.await.unwrap();
    // History, read on the other node, is in the same order.
    let history = reader.ok("history", json!({"room": "r", "channel": "order", "limit": 1000})).await;
    let kept: Vec<u64> =
        history["messages"].as_array().unwrap().iter().map(|m| m["payload"]["i"].as_u64().unwrap()).collect();
    assert_eq!(kept, (MESSAGES - 1000..MESSAGES).collect::<Vec<_>>());
    // The nodes count what crossed: every message (and member event) left
    // node 0 and arrived at node 1; nothing was dropped.
    let sent = status(&nodes[0]).await["cluster"].clone();
    let got = status(&nodes[1]).await["cluster"].clone();
    assert!(sent["forwarded"].as_u64().unwrap() >= MESSAGES, "{sent}");
    assert!(got["received"].as_u64().unwrap() >= MESSAGES, "{got}");
    assert_eq!((sent["dropped"].as_u64(), got["dropped"].as_u64()), (Some(0), Some(0)));
    let (_, metrics) = http(nodes[1].monitoring.unwrap(), "GET", "/metrics").await;
    let received = metrics
        .lines()
        .find_map(|l| l.strip_prefix("arqon_cluster_received_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(received.is_some_and(|n| n >= MESSAGES as f64), "{metrics}");
    assert!(metrics.contains("arqon_cluster_healthy 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_another_node_with_since_misses_nothing() {
    need_redis!("a_client_moving_to_another_node_with_since_misses_nothing");
    let redis = RedisProcess::start();
    let nodes = start_nodes(&redis, 3).await;
    let mut publisher = nodes[2].client().await;
    let mut mover = nodes[0].client().await;
    mover.join("r", "m").await;
    publisher.until_members("r", "m", 1).await;
    let mut seen = Vec::new();
    for i in 0..50 {
        publisher.ok("publish", json!({"room": "r", "channel": "m", "payload": i})).await;
    }
    for _ in 0..50 {
        seen.push(mover.recv_message().await);
    }
    let last = seen.last().unwrap()["id"].clone();
    drop(mover);
    // Published while it moves.
    for i in 50..100 {
        publisher.ok("publish", json!({"room": "r", "channel": "m", "payload": i})).await;
    }
    let mut moved = nodes[1].client().await;
    let joined = moved.ok("join_channel", json!({"room": "r", "channel": "m", "since": last})).await;
    assert!(joined.get("truncated").is_none_or(|t| t == false));
    for i in 100..150 {
        publisher.ok("publish", json!({"room": "r", "channel": "m", "payload": i})).await;
    }
    for _ in 50..150 {
        seen.push(moved.recv_message().await);
    }
    let payloads: Vec<u64> = seen.iter().map(|m| m["payload"].as_u64().unwrap()).collect();
    assert_eq!(payloads, (0..150).collect::<Vec<_>>(), "every message exactly once, in order");
    moved.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_traffic() {
    need_redis!("redis_killed_and_restarted_under_traffic");
    let mut redis = RedisProcess::start_durable();
    let nodes = start_nodes(&redis, 2).await;
    let mut local = nodes[0].client().await;
    let mut remote = nodes[1].client().await;
    local.join("r", "o").await;
    remote.join("r", "o").await;
    let mut publisher = nodes[0].client().await;
    publisher.until_members("r", "o", 2).await;
    let mut published = Vec::new();
    let publish = |i: u64| json!({"room": "r", "channel": "o", "payload": i});
    for i in 0..100 {
        let answer = publisher.ok("publish", publish(i)).await;
        published.push(answer["id"].clone());
    }
    let mut remote_seen: Vec<u64> = Vec::new();
    for i in 0..100 {
        assert_eq!(local.recv_message().await["payload"], i);
        remote_seen.push(remote.recv_message().await["payload"].as_u64().unwrap());
    }

    redis.kill();
    // Local delivery goes on; the node says it is cut off.
    for i in 100..200 {
        let answer = publisher.ok("publish", publish(i)).await;
        published.push(answer["id"].clone());
        assert_eq!(local.recv_message().await["payload"], i);
    }
    until_status(&nodes[0], |s| s["cluster"]["healthy"] == false).await;
    let (code, metrics) = http(nodes[0].monitoring.unwrap(), "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("arqon_cluster_healthy 0"), "{metrics}");

    redis.restart();
    for node in &nodes {
        until_status(node, |s| s["cluster"]["healthy"] == true && s["storage"]["healthy"] == true).await;
        until_status(node, |s| s["cluster"]["peers"].as_array().map(Vec::len) == Some(1)).await;
    }
    publisher.until_members("r", "o", 2).await;
    for i in 200..300 {
        let answer = publisher.ok("publish", publish(i)).await;
        published.push(answer["id"].clone());
        assert_eq!(local.recv_message().await["payload"], i);
    }
    // Cross-node delivery resumed: the remote member gets the new messages,
    // in order (what was sent while Redis was away is recovered below).
    loop {
        let i = remote.recv_message().await["payload"].as_u64().unwrap();
        remote_seen.push(i);
        if i == 299 {
            break;
        }
    }
    assert!(remote_seen.windows(2).all(|w| w[0] < w[1]), "{remote_seen:?}");
    assert!(remote_seen.ends_with(&(200..300).collect::<Vec<_>>()), "{remote_seen:?}");
    // History, read on the remote node, has all 300 exactly once, in order
    // (the journal was written back), and the remote member recovers the gap.
    let history = remote.ok("history", json!({"room": "r", "channel": "o", "limit": 1000})).await;
    let ids: Vec<Value> = history["messages"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids, published);
    let mut rejoined = nodes[1].client().await;
    let joined = rejoined.ok("join_channel", json!({"room": "r", "channel": "o", "since": published[99]})).await;
    assert!(joined.get("truncated").is_none_or(|t| t == false));
    for i in 100..300 {
        assert_eq!(rejoined.recv_message().await["payload"], i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_is_forgotten_at_once_and_one_alone_still_serves() {
    need_redis!("a_node_that_leaves_is_forgotten_at_once_and_one_alone_still_serves");
    let redis = RedisProcess::start();
    // A TTL far beyond the test: only the leaving announcement can make the
    // other node forget this one.
    let mut nodes = start_nodes_ttl(&redis, 2, 600_000).await;
    let mut staying = nodes[0].client().await;
    staying.join("r", "l").await;
    let mut leaving = nodes[1].client().await;
    leaving.join("r", "l").await;
    staying.until_members("r", "l", 2).await;
    drop(leaving);
    staying.until_members("r", "l", 1).await;
    let mut second = nodes[1].client().await;
    second.join("r", "l").await;
    staying.until_members("r", "l", 2).await;
    nodes.pop().unwrap().shutdown().await;
    staying.until_members("r", "l", 1).await;
    until_status(&nodes[0], |s| s["cluster"]["peers"] == json!([])).await;
    let mut other = nodes[0].client().await;
    other.publish_ff("r", "l", json!("still here")).await;
    assert_eq!(staying.recv_message().await["payload"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_redis_is_down_serves_locally_then_joins() {
    need_redis!("a_node_started_while_redis_is_down_serves_locally_then_joins");
    let mut redis = RedisProcess::reserve();
    let lonely = TestServer::start_with(node_config(&redis, "early")).await;
    let status = until_status(&lonely, |s| s["cluster"]["healthy"] == false).await;
    assert_eq!(status["cluster"]["node_id"], "early");
    // Its own clients are served: local delivery needs no Redis.
    let mut a = lonely.client().await;
    let mut b = lonely.client().await;
    a.join("r", "d").await;
    b.publish_ff("r", "d", json!("local")).await;
    assert_eq!(a.recv_message().await["payload"], "local");

    redis.restart();
    until_status(&lonely, |s| s["cluster"]["healthy"] == true).await;
    let other = TestServer::start_with(node_config(&redis, "late")).await;
    until_status(&lonely, |s| s["cluster"]["peers"] == json!(["late"])).await;
    a.until_members("r", "d", 1).await;
    let mut c = other.client().await;
    c.until_members("r", "d", 1).await;
    c.publish_ff("r", "d", json!("from the late node")).await;
    assert_eq!(a.recv_message().await["payload"], "from the late node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_cluster_topics_is_ignored() {
    need_redis!("garbage_on_cluster_topics_is_ignored");
    let redis = RedisProcess::start();
    let nodes = start_nodes(&redis, 2).await;
    let mut a = nodes[0].client().await;
    a.join("r", "g").await;
    let mut b = nodes[1].client().await;
    b.until_members("r", "g", 1).await;
    // Malformed control messages and forwarded frames, from "another node".
    for (topic, body) in [
        ("arqon:cluster", "not json"),
        ("arqon:cluster", r#"{"t":"members","node":"x","counts":[["nocolon",5]]}"#),
        ("arqon:cluster", r#"{"t":"clients","node":"x","joined":["not-an-id"]}"#),
        ("arqon:ch:r:g", "x\nc r g arq_bad\n{}"),
        ("arqon:ch:r:g", "no header at all"),
        ("arqon:node:node-0", "x\nd arq_01ARZ3NDEKTSV4RRFFQ69G5FAV\nnot json but delivered as is"),
        // Action requests and answers that parse as nothing, or answer nothing asked.
        ("arqon:node:node-0", "x\na 5 c arq_bad\n{}"),
        ("arqon:node:node-0", "x\na 5 c arq_01ARZ3NDEKTSV4RRFFQ69G5FAV\nnot json"),
        ("arqon:node:node-0", "x\ny 999\nnot json"),
        ("arqon:node:node-0", "x\ny 999\n{\"touched\":1}"),
    ] {
        redis.command(&["PUBLISH", topic, body]);
    }
    b.publish_ff("r", "g", json!("after the garbage")).await;
    let message = a.recv_message().await;
    assert_eq!(message["payload"], "after the garbage");
    a.until_members("r", "g", 1).await;
    a.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_shows_no_cluster() {
    let node = TestServer::start().await;
    let status = status(&node).await;
    assert!(status.get("cluster").is_none(), "{status}");
    let (_, metrics) = http(node.monitoring.unwrap(), "GET", "/metrics").await;
    assert!(!metrics.contains("arqon_cluster_"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_a_node_never_answers_history_from_its_own_memory() {
    need_redis!("during_an_outage_a_node_never_answers_history_from_its_own_memory");
    let mut redis = RedisProcess::start();
    let nodes = start_nodes(&redis, 2).await;
    let mut a = nodes[0].client().await;
    let mut b = nodes[1].client().await;
    // Node 0 stores one message (a single node would now cache the channel),
    // then node 1 stores five more that node 0 never sees in memory.
    a.ok("publish", json!({"room": "r", "channel": "h", "payload": 0})).await;
    for i in 1..6 {
        b.ok("publish", json!({"room": "r", "channel": "h", "payload": i})).await;
    }
    assert_eq!(a.ok("history", json!({"room": "r", "channel": "h"})).await["messages"].as_array().unwrap().len(), 6);
    redis.kill();
    until_status(&nodes[0], |s| s["storage"]["healthy"] == false || s["cluster"]["healthy"] == false).await;
    // An incomplete answer would be worse than none.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let reply = a.command("history", json!({"room": "r", "channel": "h"})).await;
        if reply["type"] == "error" {
            assert_eq!(reply["error"]["code"], "STORAGE_UNAVAILABLE", "{reply}");
            break;
        }
        assert_eq!(reply["payload"]["messages"].as_array().unwrap().len(), 6, "{reply}");
        assert!(Instant::now() < deadline, "storage never noticed the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_and_regaining_redis_is_streamed_as_telemetry() {
    need_redis!("losing_and_regaining_redis_is_streamed_as_telemetry");
    use futures_util::StreamExt;
    let mut redis = RedisProcess::start();
    let nodes = start_nodes(&redis, 1).await;
    let url = format!("ws://{}/telemetry?events=cluster_degraded,cluster_recovered", nodes[0].monitoring.unwrap());
    let (mut events, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut next = async || loop {
        let frame = tokio::time::timeout(TIMEOUT, events.next()).await.expect("an event in time").unwrap().unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            return serde_json::from_str::<Value>(text.as_str()).unwrap();
        }
    };
    redis.kill();
    let degraded = next().await;
    assert_eq!((degraded["event"].as_str(), degraded["node_id"].as_str()), (Some("cluster_degraded"), Some("node-0")));
    redis.restart();
    assert_eq!(next().await["event"], "cluster_recovered");
}

/// One subscriber doing what an SDK does with one channel: it keeps the
/// messages in the order received; on `channel_gap` it drops what came
/// after `last_id` (not history's order, or incomplete) and rejoins with
/// `since: last_id`, whose replay and the live messages after it continue
/// the channel's history exactly. Returns the ids it ends with and how many
/// gaps it was told of, once it holds `expected` (or after a deadline).
async fn follow(
    mut client: TestClient,
    channel: &'static str,
    mut expected: tokio::sync::watch::Receiver<Option<Vec<String>>>,
) -> (Vec<String>, usize) {
    let mut sequence: Vec<String> = Vec::new();
    let mut gaps = 0;
    let mut deadline: Option<Instant> = None;
    loop {
        if let Some(expected) = expected.borrow_and_update().as_ref() {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + TIMEOUT);
            if sequence.len() >= expected.len() || Instant::now() > deadline {
                return (sequence, gaps);
            }
        }
        let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), client.recv()).await else { continue };
        if frame["type"] == "message" {
            sequence.push(frame["id"].as_str().unwrap().to_owned());
            continue;
        }
        if frame["payload"]["event"] != "channel_gap" {
            continue;
        }
        gaps += 1;
        assert_eq!(
            (frame["payload"]["room"].as_str(), frame["payload"]["channel"].as_str()),
            (Some("r"), Some(channel))
        );
        let last = frame["payload"]["last_id"].as_str().expect("a last id: messages came before").to_owned();
        let at = sequence.iter().position(|id| *id == last).expect("last_id is a message this client got");
        sequence.truncate(at + 1);
        let rejoin = client.new_id();
        let args = json!({"room": "r", "channel": channel, "since": last});
        client.send(json!({"id": rejoin, "type": "command", "command": "join_channel", "args": args})).await;
        // What arrives before the answer is superseded by the replay.
        loop {
            let frame = client.recv().await;
            if frame["request_id"] == rejoin.as_str() {
                assert_eq!(frame["type"], "response", "{frame}");
                assert!(frame["payload"].get("truncated").is_none_or(|t| t == false), "{frame}");
                break;
            }
        }
    }
}

/// Two nodes, a subscriber and a publisher on each, and Redis frozen
/// (SIGSTOP) for `freeze` after `before` messages per publisher, with
/// `during` sent while it is frozen and `after` once it is back. Every
/// subscriber must end with exactly the channel's history, in its order:
/// live, or through `channel_gap` and `since` as an SDK does. Returns how
/// many gaps each subscriber was told of.
async fn freeze_with_traffic(
    channel: &'static str,
    freeze: Option<Duration>,
    (before, during, after): (u64, u64, u64),
) -> Vec<usize> {
    use tokio::sync::watch;
    let redis = RedisProcess::start();
    let nodes = start_nodes(&redis, 2).await;
    let (expected_tx, expected_rx) = watch::channel(None);
    let mut followers = Vec::new();
    for node in &nodes {
        let mut subscriber = node.client().await;
        subscriber.join("r", channel).await;
        followers.push(subscriber);
    }
    followers[0].until_members("r", channel, 2).await;
    let followers: Vec<_> =
        followers.into_iter().map(|client| tokio::spawn(follow(client, channel, expected_rx.clone()))).collect();
    // 0: before the freeze, 1: frozen, 2: thawed.
    let (phase_tx, phase_rx) = watch::channel(0u8);
    let (sent_before_tx, mut sent_before_rx) = tokio::sync::mpsc::channel::<()>(2);
    let mut publishers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let mut publisher = node.client().await;
        let mut phase = phase_rx.clone();
        let sent_before = sent_before_tx.clone();
        publishers.push(tokio::spawn(async move {
            // 20 messages a second from each publisher.
            let mut i = 0;
            for (count, wait_for) in [(before, 0u8), (during, 1), (after, 2)] {
                phase.wait_for(|p| *p >= wait_for).await.unwrap();
                for _ in 0..count {
                    publisher.publish_ff("r", channel, json!({"node": n, "i": i})).await;
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if wait_for == 0 {
                    sent_before.send(()).await.unwrap();
                }
            }
            publisher
        }));
    }
    for _ in 0..2 {
        sent_before_rx.recv().await.unwrap();
    }
    if let Some(freeze) = freeze {
        // Let the first messages cross before the freeze.
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.stop();
        phase_tx.send(1).unwrap();
        tokio::time::sleep(freeze).await;
        redis.cont();
    }
    phase_tx.send(2).unwrap();
    let mut keep = Vec::new();
    for publisher in publishers {
        keep.push(publisher.await.unwrap());
    }
    // Once both nodes are back and their journals are written, history is
    // complete: every message of both publishers, once.
    for node in &nodes {
        until_status(node, |s| {
            s["cluster"]["healthy"] == true && s["storage"]["healthy"] == true && s["storage"]["journaled"] == 0
        })
        .await;
    }
    let history = keep[0].ok("history", json!({"room": "r", "channel": channel, "limit": 1000})).await;
    let messages = history["messages"].as_array().unwrap();
    let mut sent: Vec<(u64, u64)> = messages
        .iter()
        .map(|m| (m["payload"]["node"].as_u64().unwrap(), m["payload"]["i"].as_u64().unwrap()))
        .collect();
    sent.sort_unstable();
    let total = before + during + after;
    let all: Vec<(u64, u64)> = (0..2).flat_map(|n| (0..total).map(move |i| (n, i))).collect();
    assert_eq!(sent, all, "history holds every message once");
    let history: Vec<String> = messages.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    expected_tx.send(Some(history.clone())).unwrap();
    let mut gaps = Vec::new();
    for (n, follower) in followers.into_iter().enumerate() {
        let (sequence, told) = follower.await.unwrap();
        let missing = history.iter().filter(|id| !sequence.contains(id)).count();
        let twice = sequence.len() - sequence.iter().collect::<std::collections::HashSet<_>>().len();
        let first_difference = sequence.iter().zip(&history).position(|(a, b)| a != b);
        assert!(
            sequence == history,
            "subscriber on node {n} (told of {told} gaps) does not end with the channel's history: {} of {} \
             messages, {missing} missing, {twice} twice, first difference at {first_difference:?}",
            sequence.len(),
            history.len()
        );
        gaps.push(told);
    }
    gaps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_under_traffic_loses_nothing_silently() {
    need_redis!("a_frozen_redis_under_traffic_loses_nothing_silently");
    let gaps = freeze_with_traffic("frozen", Some(Duration::from_secs(3)), (20, 50, 20)).await;
    // Each node delivered its own publisher's messages while cut off, so at
    // most one of the two orders can match history without a gap.
    assert!(gaps.iter().any(|n| *n > 0), "{gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_that_stops_during_a_freeze_is_recovered_once() {
    need_redis!("traffic_that_stops_during_a_freeze_is_recovered_once");
    // Nothing is published after Redis is back: the nodes must look at
    // history themselves, and the rejoin must not replay what was seen.
    freeze_with_traffic("stopped", Some(Duration::from_secs(3)), (20, 40, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_on_two_nodes_reach_every_subscriber_in_history_order() {
    need_redis!("publishers_on_two_nodes_reach_every_subscriber_in_history_order");
    // Both publish at the same moments: each node's own message and the
    // other's copy race, and history decides. Redis stays up: no gap.
    let gaps = freeze_with_traffic("race", None, (60, 0, 0)).await;
    assert_eq!(gaps, [0, 0]);
}

/// The server API key of [`start_user_nodes`]' nodes.
const API_KEY: &str = "cluster-api-key-0123456789";

/// Nodes whose clients present static tokens naming users.
async fn start_user_nodes(redis: &RedisProcess, n: usize) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut config = node_config(redis, &format!("node-{i}"));
        config.auth.mode = arqon_config::AuthMode::Token;
        let token = |token: &str, user: &str| arqon_config::StaticToken {
            token: token.to_owned(),
            role: arqon_protocol::Role::User,
            client: user.to_owned(),
            rooms: Vec::new(),
        };
        // eve may use room "allowed" only.
        let eve = arqon_config::StaticToken { rooms: vec!["allowed".to_owned()], ..token("eve-token", "eve") };
        config.auth.tokens = vec![token("ann-token", "ann"), token("bob-token", "bob"), eve];
        config.api.keys = vec![arqon_config::ApiKey::new("backend", API_KEY, arqon_protocol::Role::Admin)];
        nodes.push(TestServer::start_with(config).await);
    }
    for node in &nodes {
        until_status(node, |s| s["cluster"]["peers"].as_array().map(Vec::len) == Some(n - 1)).await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_user_reaches_its_connections_on_every_node_once() {
    need_redis!("a_message_to_a_user_reaches_its_connections_on_every_node_once");
    let redis = RedisProcess::start();
    let nodes = start_user_nodes(&redis, 3).await;
    let mut bob = nodes[0].client_as("bob-token").await;
    let mut tab1 = nodes[1].client_as("ann-token").await;
    let mut tab2 = nodes[2].client_as("ann-token").await;
    // Registrations travel asynchronously: probe until both tabs hear bob.
    let deadline = Instant::now() + TIMEOUT;
    for probe in 0u64.. {
        bob.send(json!({"type": "message", "to": "user:ann", "payload": {"probe": probe}})).await;
        let wait = Duration::from_millis(300);
        let one = tokio::time::timeout(wait, tab1.recv_where(|f| f["payload"]["probe"] == probe)).await.is_ok();
        let two = tokio::time::timeout(wait, tab2.recv_where(|f| f["payload"]["probe"] == probe)).await.is_ok();
        if one && two {
            break;
        }
        assert!(Instant::now() < deadline, "ann's tabs never both became reachable");
    }
    for client in [&mut bob, &mut tab1, &mut tab2] {
        client.take_pending();
    }
    bob.send(json!({"type": "message", "to": "user:ann", "payload": "hello ann"})).await;
    for tab in [&mut tab1, &mut tab2] {
        let got = tab.recv_where(|f| f["type"] == "message").await;
        assert_eq!((got["payload"].as_str(), got["user"].as_str()), (Some("hello ann"), Some("bob")), "{got}");
        tab.expect_silence(Duration::from_millis(300)).await;
    }
    // Once ann has no connection anywhere, the user is NOT_FOUND.
    drop(tab1);
    drop(tab2);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        bob.send(json!({"type": "message", "to": "user:ann", "payload": "anyone?"})).await;
        match tokio::time::timeout(Duration::from_millis(300), bob.recv()).await {
            Ok(frame) if frame["type"] == "error" => {
                assert_eq!(frame["error"]["code"], "NOT_FOUND");
                break;
            }
            _ => assert!(Instant::now() < deadline, "a departed user stayed reachable"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_the_members_of_every_node_and_forgets_a_node_that_goes() {
    need_redis!("presence_lists_the_members_of_every_node_and_forgets_a_node_that_goes");
    let redis = RedisProcess::start();
    let mut nodes = start_user_nodes(&redis, 3).await;
    let mut bob = nodes[0].client_as("bob-token").await;
    let mut tab1 = nodes[1].client_as("ann-token").await;
    let mut tab2 = nodes[2].client_as("ann-token").await;
    for client in [&mut bob, &mut tab1, &mut tab2] {
        client.join("chat", "main").await;
    }
    let args = json!({"room": "chat", "channel": "main"});
    let until_presence = async |client: &mut TestClient, total: u64, users: u64| -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            client.take_pending();
            let page = client.ok("presence", args.clone()).await;
            if page["total"] == total && page["users"] == users {
                return page;
            }
            assert!(Instant::now() < deadline, "presence stayed {page}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let page = until_presence(&mut bob, 3, 2).await;
    let mut ids: Vec<&str> =
        page["members"].as_array().unwrap().iter().map(|m| m["client_id"].as_str().unwrap()).collect();
    let listed = ids.clone();
    ids.sort_unstable();
    assert_eq!(listed, ids, "ordered by client id across nodes");
    let mut expected = vec![bob.id.as_str(), tab1.id.as_str(), tab2.id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(page["members"].as_array().unwrap().iter().all(|m| m["joined_at"].is_string()));
    // Paging works over the merged list.
    let first = bob.ok("presence", json!({"room": "chat", "channel": "main", "limit": 2})).await;
    let after = first["members"][1]["client_id"].clone();
    let rest = bob.ok("presence", json!({"room": "chat", "channel": "main", "after": after})).await;
    assert_eq!(rest["members"].as_array().map(Vec::len), Some(1), "{rest}");
    // A member that leaves, then a whole node that goes, leave the list.
    tab1.ok("leave_channel", args.clone()).await;
    until_presence(&mut bob, 2, 2).await;
    nodes.pop().unwrap().shutdown().await; // node 2, with tab2
    drop(tab2);
    until_presence(&mut bob, 1, 1).await;
    // A node that shuts down takes its entries out of Redis itself.
    assert_eq!(redis.command_values(&["HKEYS", "arqon:presence:chat:main"]), [bob.id.clone()]);
    assert_eq!(redis.command(&["EXISTS", "arqon:node:node-2:presence"]), ":0");
}

/// Presence of `chat/main` as seen by `client`: (total, client ids).
async fn presence_ids(client: &mut TestClient) -> (u64, Vec<String>) {
    client.take_pending();
    let page = client.ok("presence", json!({"room": "chat", "channel": "main"})).await;
    let ids = page["members"].as_array().unwrap().iter().map(|m| m["client_id"].as_str().unwrap().to_owned()).collect();
    (page["total"].as_u64().unwrap(), ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_rewritten_when_redis_comes_back_empty() {
    need_redis!("presence_is_rewritten_when_redis_comes_back_empty");
    let mut redis = RedisProcess::start(); // no persistence: it restarts empty
    let nodes = start_user_nodes(&redis, 2).await;
    let mut bob = nodes[0].client_as("bob-token").await;
    let mut ann = nodes[1].client_as("ann-token").await;
    let mut gone = nodes[1].client_as("ann-token").await;
    for client in [&mut bob, &mut ann, &mut gone] {
        client.join("chat", "main").await;
    }
    let until = async |client: &mut TestClient, mut expected: Vec<String>| {
        expected.sort();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (total, ids) = presence_ids(client).await;
            if ids == expected && total == expected.len() as u64 {
                return;
            }
            assert!(Instant::now() < deadline, "presence stayed {ids:?}, wanted {expected:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let all = vec![bob.id.clone(), ann.id.clone(), gone.id.clone()];
    until(&mut bob, all).await;

    redis.kill();
    for node in &nodes {
        until_status(node, |s| s["cluster"]["healthy"] == false).await;
    }
    // A member leaves while Redis is away: its removal cannot be written.
    gone.ok("leave_channel", json!({"room": "chat", "channel": "main"})).await;
    redis.restart();
    for node in &nodes {
        until_status(node, |s| s["cluster"]["healthy"] == true).await;
    }
    // Each node wrote its members back: bob's node lists ann again, and not
    // the member that left during the outage.
    let mut expected = vec![bob.id.clone(), ann.id.clone()];
    until(&mut bob, expected.clone()).await;
    until(&mut ann, expected.clone()).await;
    let mut keys = redis.command_values(&["HKEYS", "arqon:presence:chat:main"]);
    keys.sort();
    expected.sort();
    assert_eq!(keys, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starting_removes_the_presence_left_by_a_dead_one() {
    need_redis!("a_node_starting_removes_the_presence_left_by_a_dead_one");
    let redis = RedisProcess::start();
    // What a node killed long ago left behind: its heartbeat, long past,
    // its entries, and the set naming where they are. A live entry of the
    // same channel stays.
    let old = "1000";
    redis.command(&["ZADD", "arqon:nodes", old, "ghost"]);
    let ghost = r#"{"node":"ghost","joined_at":"2026-01-01T00:00:00.000Z"}"#;
    let live = r#"{"node":"elsewhere","joined_at":"2026-01-01T00:00:00.000Z"}"#;
    redis.command(&["HSET", "arqon:presence:chat:main", "ghost-member-1", ghost]);
    redis.command(&["HSET", "arqon:presence:chat:main", "live-member", live]);
    redis.command(&["HSET", "arqon:presence:chat:side", "ghost-member-2", ghost]);
    redis.command(&["SADD", "arqon:node:ghost:presence", "chat:main", "chat:side"]);
    let node = TestServer::start_with(node_config(&redis, "node-0")).await;
    until_status(&node, |s| s["cluster"]["healthy"] == true).await;
    assert_eq!(redis.command_values(&["HKEYS", "arqon:presence:chat:main"]), ["live-member"]);
    assert_eq!(redis.command(&["EXISTS", "arqon:presence:chat:side"]), ":0");
    assert_eq!(redis.command(&["EXISTS", "arqon:node:ghost:presence"]), ":0");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_of_one_node_acts_on_clients_of_every_node() {
    need_redis!("the_api_of_one_node_acts_on_clients_of_every_node");
    let redis = RedisProcess::start();
    let nodes = start_user_nodes(&redis, 3).await;
    let mut bob = nodes[1].client_as("bob-token").await;
    let mut tab1 = nodes[1].client_as("ann-token").await;
    let mut tab2 = nodes[2].client_as("ann-token").await;
    let mut api = arqon_e2e::api::ApiConn::connect(nodes[0].addr).await;
    let post = async |api: &mut arqon_e2e::api::ApiConn, command: &str, args: Value| {
        let answer = api.post(command, Some(API_KEY), &args.to_string()).await;
        assert_eq!(answer.status, 200, "{command}: {}", answer.text);
        answer.body
    };
    let mut eve = nodes[2].client_as("eve-token").await;
    // subscribe: bob, on node 1, joins through node 0's API, then gets what
    // node 0's API publishes. Registrations travel asynchronously: retry
    // until node 0 knows bob.
    let args = json!({"client_id": bob.id, "room": "r", "channel": "sub"});
    let deadline = Instant::now() + TIMEOUT;
    let joined = loop {
        let answer = api.post("subscribe", Some(API_KEY), &args.to_string()).await;
        if answer.status == 200 {
            break answer.body;
        }
        assert_eq!(answer.status, 404, "{}", answer.text);
        assert!(Instant::now() < deadline, "node 0 never learnt of bob");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The answer is bob's node's: the join is done when it comes.
    assert_eq!(
        (joined["room"].as_str(), joined["channel"].as_str(), joined["members"].as_u64()),
        (Some("r"), Some("sub"), Some(1)),
        "{joined}"
    );
    let info = bob.ok("channel_info", json!({"room": "r", "channel": "sub"})).await;
    assert_eq!(info["members"], 1, "{info}");
    // A refusal on the client's node is the API's answer: eve may not use r.
    let deadline = Instant::now() + TIMEOUT;
    let refused = loop {
        let args = json!({"client_id": eve.id, "room": "r", "channel": "sub"});
        let answer = api.post("subscribe", Some(API_KEY), &args.to_string()).await;
        if answer.status != 404 {
            break answer;
        }
        assert!(Instant::now() < deadline, "node 0 never learnt of eve");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(refused.body["error"]["code"], "FORBIDDEN", "{}", refused.text);
    eve.expect_silence(Duration::from_millis(200)).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        post(&mut api, "publish", json!({"room": "r", "channel": "sub", "payload": "via node 0"})).await;
        if tokio::time::timeout(Duration::from_millis(300), bob.recv_where(|f| f["payload"] == "via node 0"))
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "bob never got node 0's publish");
    }
    // unsubscribe: bob is told, and is a member no more.
    let left = post(&mut api, "unsubscribe", json!({"client_id": bob.id, "room": "r", "channel": "sub"})).await;
    assert_eq!(left, json!({"left": true}));
    bob.recv_event("channel_left").await;
    bob.until_members("r", "sub", 0).await;
    // Not a member any more: the second says so.
    let again = post(&mut api, "unsubscribe", json!({"client_id": bob.id, "room": "r", "channel": "sub"})).await;
    assert_eq!(again, json!({"left": false}));
    // disconnect by user: ann's tabs on nodes 1 and 2 are closed with the code.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let gone = post(&mut api, "disconnect", json!({"user": "ann", "code": 4002, "reason": "signed out"})).await;
        if gone["disconnected"].as_u64() > Some(0) {
            // Counted by the nodes that closed them: one tab on each.
            assert_eq!(gone["disconnected"], 2, "{gone}");
            break;
        }
        assert!(Instant::now() < deadline, "node 0 never learnt of ann");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for tab in [&mut tab1, &mut tab2] {
        let (frames, closed) = tab.drain_until_closed().await;
        assert_eq!(closed, arqon_e2e::Closed::Code(4002));
        assert!(frames.iter().any(|f| f["payload"]["event"] == "disconnected"), "{frames:?}");
    }
    bob.ok("ping", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_action_on_a_node_that_never_answers_fails_after_a_bounded_wait() {
    need_redis!("an_api_action_on_a_node_that_never_answers_fails_after_a_bounded_wait");
    let redis = Arc::new(RedisProcess::start());
    let node = start_user_nodes(&redis, 1).await.remove(0);
    // A node that registered a client and then froze: its heartbeats go on
    // (so it is alive), but nothing answers on its topic.
    let ghost_client = arqon_protocol::IdGenerator::new().client_id().to_string();
    redis.command(&["SADD", "arqon:node:ghost:clients", &ghost_client]);
    let beating = Arc::new(AtomicBool::new(true));
    let heartbeats = std::thread::spawn({
        let (redis, beating) = (Arc::clone(&redis), Arc::clone(&beating));
        move || {
            while beating.load(Ordering::Relaxed) {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
                redis.command(&["ZADD", "arqon:nodes", &now.to_string(), "ghost"]);
                redis.command(&["PUBLISH", "arqon:cluster", r#"{"t":"heartbeat","node":"ghost"}"#]);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    });
    let mut api = arqon_e2e::api::ApiConn::connect(node.addr).await;
    let args = json!({"client_id": ghost_client, "room": "r", "channel": "c"}).to_string();
    let deadline = Instant::now() + TIMEOUT;
    let answer = loop {
        let answer = api.post("subscribe", Some(API_KEY), &args).await;
        if answer.status != 404 {
            break answer;
        }
        assert!(Instant::now() < deadline, "the node never learnt of the ghost's client");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer.status, 500, "{}", answer.text);
    assert_eq!(answer.body["error"]["code"], "INTERNAL");
    assert!(answer.text.contains("did not answer in time"), "{}", answer.text);
    // The connection and the bus are fine.
    let pong = api.post("ping", Some(API_KEY), "{}").await;
    assert_eq!(pong.status, 200, "{}", pong.text);
    beating.store(false, Ordering::Relaxed);
    heartbeats.join().unwrap();
}
