//! PROTOCOL.md section 3: where each message goes.

use std::time::Duration;

use arqon_e2e::{TestServer, test_config};
use serde_json::json;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_message_reaches_members_but_not_sender_or_outsiders() {
    let server = TestServer::start().await;
    let (mut a, mut b, mut c, mut outsider) =
        (server.client().await, server.client().await, server.client().await, server.client().await);
    for client in [&mut a, &mut b, &mut c] {
        client.join("lobby", "chat").await;
    }
    outsider.join("lobby", "other").await;
    // Drain member_joined events before checking silence.
    a.recv_event("member_joined").await;
    a.recv_event("member_joined").await;
    b.recv_event("member_joined").await;
    a.send(json!({"type": "message", "room": "lobby", "channel": "chat", "payload": {"text": "hi"}, "meta": {"trace": "t1"}})).await;
    for receiver in [&mut b, &mut c] {
        let msg = receiver.recv_message().await;
        assert_eq!(msg["payload"], json!({"text": "hi"}));
        assert_eq!(msg["from"], a.id.as_str());
        assert_eq!(msg["room"], "lobby");
        assert_eq!(msg["channel"], "chat");
        assert_eq!(msg["meta"], json!({"trace": "t1"}));
        assert_eq!(msg["version"], 1);
        assert!(msg["id"].as_str().unwrap().starts_with("arq_"));
        assert!(msg["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    a.expect_silence(QUIET).await;
    outsider.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_message_reaches_each_member_once_and_is_not_stored() {
    let server = TestServer::start().await;
    let (mut sender, mut both, mut one, mut elsewhere) =
        (server.client().await, server.client().await, server.client().await, server.client().await);
    one.join("house", "garden").await;
    both.join("house", "kitchen").await;
    both.join("house", "garden").await;
    elsewhere.join("street", "kitchen").await;
    sender.send(json!({"type": "message", "room": "house", "payload": 42})).await;
    let msg = both.recv_message().await;
    assert_eq!(msg["payload"], 42);
    assert_eq!(msg["room"], "house");
    assert!(msg.get("channel").is_none());
    assert_eq!(one.recv_message().await["payload"], 42);
    // Exactly once, although `both` is in two channels of the room.
    both.expect_silence(QUIET).await;
    elsewhere.expect_silence(QUIET).await;
    // Room-wide messages are live only.
    let history = sender.ok("history", json!({"room": "house", "channel": "kitchen"})).await;
    assert_eq!(history["messages"], json!([]));
    // A room with no channels: NOT_FOUND.
    let err = sender.request(json!({"type": "message", "room": "empty-room", "payload": 1})).await;
    assert_eq!(err["error"]["code"], "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_reaches_exactly_its_target() {
    let server = TestServer::start().await;
    let (mut a, mut b, mut c) = (server.client().await, server.client().await, server.client().await);
    a.send(json!({"type": "message", "to": b.id, "payload": "psst"})).await;
    let msg = b.recv_message().await;
    assert_eq!(msg["payload"], "psst");
    assert_eq!(msg["from"], a.id.as_str());
    assert!(msg.get("room").is_none() && msg.get("to").is_none());
    c.expect_silence(QUIET).await;
    a.expect_silence(QUIET).await;
    let unknown = "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P";
    let err = a.request(json!({"type": "message", "to": unknown, "payload": 1})).await;
    assert_eq!(err["error"]["code"], "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_arrive_in_order() {
    let server = TestServer::start().await;
    let (mut sender, mut receiver) = (server.client().await, server.client().await);
    receiver.join("bulk", "seq").await;
    sender.join("bulk", "seq").await;
    const N: u64 = 10_000;
    let window = arqon_e2e::Window::default();
    let progress = window.clone();
    let send = tokio::spawn(async move {
        for i in 0..N {
            window.before_sending(i).await;
            sender.publish_ff("bulk", "seq", json!(i)).await;
        }
        sender
    });
    for i in 0..N {
        let msg = receiver.recv_message().await;
        assert_eq!(msg["payload"], i, "message {i} out of order");
        progress.received(i + 1);
    }
    let mut sender = send.await.unwrap();
    // Nothing was refused along the way.
    sender.ok("ping", json!({})).await;
    assert_eq!(sender.take_pending(), Vec::<serde_json::Value>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_channel_without_auto_create_is_not_found() {
    let mut config = test_config();
    config.channels.auto_create = false;
    let server = TestServer::start_with(config).await;
    let mut a = server.client().await;
    let err = a.request(json!({"type": "message", "room": "r", "channel": "nope", "payload": 1})).await;
    assert_eq!(err["error"]["code"], "NOT_FOUND");
    assert_eq!(a.err("join_channel", json!({"room": "r", "channel": "nope"})).await, "NOT_FOUND");
    assert_eq!(a.ok("create_channel", json!({"room": "r", "channel": "yes"})).await["created"], true);
    a.join("r", "yes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_id_is_neither_stored_nor_delivered_twice() {
    let server = TestServer::start().await;
    let (mut a, mut b) = (server.client().await, server.client().await);
    b.join("r", "c").await;
    let id = a.new_id();
    let frame = json!({"type": "message", "id": id, "room": "r", "channel": "c", "payload": "once"});
    a.send(frame.clone()).await;
    a.send(frame).await;
    let published = a.command("publish", json!({"room": "r", "channel": "c", "payload": "once"})).await;
    assert_eq!(published["type"], "response");
    // publish with the same id as the command's id: a retry answers with the original id.
    let retry_id = published["request_id"].as_str().unwrap().to_owned();
    a.send(json!({"type": "command", "id": retry_id, "command": "publish", "args": {"room": "r", "channel": "c", "payload": "once"}})).await;
    let again = a.recv_where(|v| v["type"] == "response").await;
    assert_eq!(again["payload"]["id"], retry_id.as_str());
    assert_eq!(b.recv_message().await["id"], id.as_str());
    assert_eq!(b.recv_message().await["id"], retry_id.as_str());
    b.expect_silence(QUIET).await;
    let history = a.ok("history", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_cannot_send_messages() {
    let mut config = test_config();
    config.auth.default_role = arqon_protocol::Role::Guest;
    let server = TestServer::start_with(config).await;
    let mut guest = server.client().await;
    assert_eq!(guest.welcome["payload"]["role"], "guest");
    let err = guest.request(json!({"type": "message", "room": "r", "channel": "c", "payload": 1})).await;
    assert_eq!(err["error"]["code"], "FORBIDDEN");
    assert_eq!(guest.err("publish", json!({"room": "r", "channel": "c", "payload": 1})).await, "FORBIDDEN");
    // Guests may not auto-create by joining either.
    assert_eq!(guest.err("join_channel", json!({"room": "r", "channel": "c"})).await, "NOT_FOUND");
}

/// The server runs the idle reclaim beside the bus and stops it with the
/// bus: an auto-created channel left empty disappears, one made with
/// `create_channel` stays, and shutdown still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reclaims_idle_auto_created_channels_until_shutdown() {
    let mut config = test_config();
    config.channels.idle_reclaim_s = 1;
    let server = TestServer::start_with(config).await;
    let mut a = server.client().await;
    a.join("r", "passing").await;
    a.ok("leave_channel", json!({"room": "r", "channel": "passing"})).await;
    a.ok("create_channel", json!({"room": "r", "channel": "kept"})).await;
    let deadline = tokio::time::Instant::now() + arqon_e2e::TIMEOUT;
    loop {
        let listed = a.ok("list_channels", json!({"room": "r"})).await;
        let names: Vec<&str> =
            listed["channels"].as_array().unwrap().iter().map(|c| c["channel"].as_str().unwrap()).collect();
        if names == ["kept"] {
            break;
        }
        assert_eq!(names, ["kept", "passing"], "{listed}");
        assert!(tokio::time::Instant::now() < deadline, "r/passing was never reclaimed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(a);
    server.shutdown().await;
}
