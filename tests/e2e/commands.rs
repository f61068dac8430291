//! PROTOCOL.md section 4: every command and its response shape.

use std::time::Duration;

use arqon_e2e::{TestServer, test_config};
use arqon_protocol::Role;
use serde_json::{Value, json};

fn admin_config() -> arqon_config::Config {
    let mut config = test_config();
    config.auth.default_role = Role::Admin;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_status_help() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    assert_eq!(a.ok("ping", json!({})).await, json!({"pong": true}));
    // args may be omitted entirely.
    let pong = a.request(json!({"type": "command", "command": "ping"})).await;
    assert_eq!(pong["payload"]["pong"], true);
    a.join("r", "c").await;
    let status = a.ok("status", json!({})).await;
    assert!(status["version"].is_string());
    assert!(status["uptime_s"].is_u64());
    assert_eq!(status["connections"], 1);
    assert_eq!(status["rooms"], 1);
    assert_eq!(status["channels"], 1);
    assert_eq!(status["storage"], json!({"backend": "memory", "healthy": true, "journaled": 0, "refused": 0}));
    let help = a.ok("help", json!({})).await;
    let commands = help["commands"].as_array().unwrap();
    let names: Vec<&str> = commands.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "ping",
            "status",
            "help",
            "create_channel",
            "delete_channel",
            "join_channel",
            "leave_channel",
            "list_channels",
            "channel_info",
            "history",
            "publish",
            "presence",
            "presence_stats",
            "broadcast",
            "send",
            "disconnect",
            "subscribe",
            "unsubscribe",
            "batch"
        ]
    );
    for c in commands {
        assert!(c["description"].is_string() && c["args"].is_array() && c["role"].is_string(), "{c}");
        let allowed = c["role"] != "admin" && c["api_only"] == false;
        assert_eq!(c["allowed"], allowed, "{c}");
    }
    let history = commands.iter().find(|c| c["name"] == "history").unwrap();
    assert_eq!(history["args"][2]["name"], "limit");
    assert_eq!(history["args"][2]["required"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_reports_identity_and_limits() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let w = &a.welcome;
    assert_eq!(w["payload"]["role"], "user");
    assert!(w["payload"]["client_id"].as_str().unwrap().starts_with("arq_"));
    assert_eq!(w["payload"]["heartbeat_s"], 20);
    assert_eq!(
        w["payload"]["limits"],
        json!({"max_message_bytes": 1_048_576, "rate_per_s": 0, "burst": 200, "bytes_per_s": 0,
               "bytes_burst": 4_194_304, "max_backlog_bytes": 64 << 20})
    );
    assert!(w["payload"]["server_version"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_info_leave_delete() {
    let server = TestServer::start_with(admin_config()).await;
    let (mut admin, mut member) = (server.client().await, server.client().await);
    assert_eq!(
        admin.ok("create_channel", json!({"room": "r1", "channel": "a"})).await,
        json!({"room": "r1", "channel": "a", "created": true})
    );
    assert_eq!(admin.ok("create_channel", json!({"room": "r1", "channel": "a"})).await["created"], false);
    admin.ok("create_channel", json!({"room": "r2", "channel": "b"})).await;
    let joined = member.join("r1", "a").await;
    assert_eq!(joined, json!({"room": "r1", "channel": "a", "members": 1}));
    let all = admin.ok("list_channels", json!({})).await;
    assert_eq!(
        all,
        json!({"channels": [{"room": "r1", "channel": "a", "members": 1}, {"room": "r2", "channel": "b", "members": 0}]})
    );
    let r2 = admin.ok("list_channels", json!({"room": "r2"})).await;
    assert_eq!(r2, json!({"channels": [{"room": "r2", "channel": "b", "members": 0}]}));
    member.publish_ff("r1", "a", json!("x")).await;
    let sent = member.ok("publish", json!({"room": "r1", "channel": "a", "payload": "y"})).await;
    let info = admin.ok("channel_info", json!({"room": "r1", "channel": "a"})).await;
    assert_eq!(info["members"], 1);
    assert_eq!(info["stored"], 2);
    assert_eq!(info["last_id"], sent["id"]);
    assert!(info["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(admin.err("channel_info", json!({"room": "r1", "channel": "zzz"})).await, "NOT_FOUND");
    assert_eq!(
        member.ok("leave_channel", json!({"room": "r1", "channel": "a"})).await,
        json!({"room": "r1", "channel": "a", "left": true})
    );
    assert_eq!(member.ok("leave_channel", json!({"room": "r1", "channel": "a"})).await["left"], false);
    member.join("r1", "a").await;
    let deleted = admin.ok("delete_channel", json!({"room": "r1", "channel": "a"})).await;
    assert_eq!(deleted, json!({"room": "r1", "channel": "a", "deleted": true}));
    let event = member.recv_event("channel_deleted").await;
    assert_eq!(event["payload"], json!({"event": "channel_deleted", "room": "r1", "channel": "a"}));
    assert_eq!(admin.err("delete_channel", json!({"room": "r1", "channel": "a"})).await, "NOT_FOUND");
    assert_eq!(admin.err("history", json!({"room": "r1", "channel": "a"})).await, "NOT_FOUND");
    assert_eq!(admin.ok("list_channels", json!({})).await["channels"].as_array().unwrap().len(), 1);
    // The former member no longer receives the channel's traffic once it is re-created.
    admin.ok("create_channel", json!({"room": "r1", "channel": "a"})).await;
    admin.publish_ff("r1", "a", json!("after")).await;
    member.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_per_command() {
    let mut config = test_config();
    config.auth.default_role = Role::Guest;
    let server = TestServer::start_with(config).await;
    let mut guest = server.client().await;
    for (command, args) in [
        ("create_channel", json!({"room": "r", "channel": "c"})),
        ("delete_channel", json!({"room": "r", "channel": "c"})),
        ("publish", json!({"room": "r", "channel": "c", "payload": 1})),
    ] {
        assert_eq!(guest.err(command, args).await, "FORBIDDEN", "{command}");
    }
    let help = guest.ok("help", json!({})).await;
    for c in help["commands"].as_array().unwrap() {
        assert_eq!(c["allowed"], c["role"] == "guest" && c["api_only"] == false, "{c}");
    }
    let user_server = TestServer::start().await;
    let mut user = user_server.client().await;
    user.ok("create_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(user.err("delete_channel", json!({"room": "r", "channel": "c"})).await, "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_events_on_join_leave_and_disconnect() {
    let server = TestServer::start().await;
    let (mut a, mut b) = (server.client().await, server.client().await);
    a.join("r", "c").await;
    b.join("r", "c").await;
    let joined = a.recv_event("member_joined").await;
    let expected =
        json!({"event": "member_joined", "room": "r", "channel": "c", "client_id": b.id, "user": null, "info": null});
    assert_eq!(joined["payload"], expected);
    b.ok("leave_channel", json!({"room": "r", "channel": "c"})).await;
    let left = a.recv_event("member_left").await;
    assert_eq!(left["payload"]["client_id"], b.id.as_str());
    b.join("r", "c").await;
    a.recv_event("member_joined").await;
    let b_id = b.id.clone();
    drop(b);
    let left = a.recv_event("member_left").await;
    assert_eq!(left["payload"]["client_id"], b_id.as_str());
    // Never about yourself.
    a.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_events_stop_above_the_configured_size() {
    let mut config = test_config();
    config.limits.member_events_max = 2;
    let server = TestServer::start_with(config).await;
    let (mut a, mut b, mut c) = (server.client().await, server.client().await, server.client().await);
    a.join("r", "c").await;
    b.join("r", "c").await;
    a.recv_event("member_joined").await;
    c.join("r", "c").await; // 3 members > 2: no events
    a.expect_silence(Duration::from_millis(300)).await;
    b.expect_silence(Duration::from_millis(300)).await;
}

fn ids(messages: &Value) -> Vec<Value> {
    messages.as_array().unwrap().iter().map(|m| m["payload"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_with_limit_and_before() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut sent = Vec::new();
    for i in 0..60 {
        let r = a.ok("publish", json!({"room": "h", "channel": "c", "payload": i, "meta": {"n": i.to_string()}})).await;
        sent.push(r["id"].as_str().unwrap().to_owned());
    }
    let default = a.ok("history", json!({"room": "h", "channel": "c"})).await;
    assert_eq!(ids(&default["messages"]), (10..60).map(|i| json!(i)).collect::<Vec<_>>());
    let first = &default["messages"][0];
    assert_eq!(first["type"], "message");
    assert_eq!(first["id"], sent[10].as_str());
    assert_eq!(first["from"], a.id.as_str());
    assert_eq!(first["meta"], json!({"n": "10"}));
    let five = a.ok("history", json!({"room": "h", "channel": "c", "limit": 5})).await;
    assert_eq!(ids(&five["messages"]), (55..60).map(|i| json!(i)).collect::<Vec<_>>());
    let before = a.ok("history", json!({"room": "h", "channel": "c", "limit": 3, "before": sent[20]})).await;
    assert_eq!(ids(&before["messages"]), vec![json!(17), json!(18), json!(19)]);
    let start = a.ok("history", json!({"room": "h", "channel": "c", "limit": 1000, "before": sent[2]})).await;
    assert_eq!(ids(&start["messages"]), vec![json!(0), json!(1)]);
    assert_eq!(
        a.err("history", json!({"room": "h", "channel": "c", "before": "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P"})).await,
        "NOT_FOUND"
    );
    assert_eq!(a.err("history", json!({"room": "h", "channel": "c", "limit": 0})).await, "INVALID_ARGS");
    assert_eq!(a.err("history", json!({"room": "h", "channel": "c", "limit": 1001})).await, "INVALID_ARGS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_order_is_storage_order_not_id_order() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let smaller = a.new_id();
    let greater = a.new_id();
    assert!(greater > smaller);
    a.send(json!({"type": "message", "id": greater, "room": "o", "channel": "c", "payload": "first"})).await;
    a.send(json!({"type": "message", "id": smaller, "room": "o", "channel": "c", "payload": "second"})).await;
    let history = a.ok("history", json!({"room": "o", "channel": "c"})).await;
    assert_eq!(ids(&history["messages"]), vec![json!("first"), json!("second")]);
    let before = a.ok("history", json!({"room": "o", "channel": "c", "before": smaller})).await;
    assert_eq!(ids(&before["messages"]), vec![json!("first")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_since_replays_exactly_the_missed_messages_then_live() {
    let server = TestServer::start().await;
    let (mut publisher, mut reader) = (server.client().await, server.client().await);
    reader.join("s", "c").await;
    let mut last_seen = String::new();
    for i in 0..5 {
        publisher.ok("publish", json!({"room": "s", "channel": "c", "payload": i})).await;
        last_seen = reader.recv_message().await["id"].as_str().unwrap().to_owned();
    }
    reader.ok("leave_channel", json!({"room": "s", "channel": "c"})).await;
    for i in 5..12 {
        publisher.ok("publish", json!({"room": "s", "channel": "c", "payload": i})).await;
    }
    // Live traffic keeps flowing while the reader rejoins.
    let live = tokio::spawn(async move {
        for i in 12..40 {
            publisher.publish_ff("s", "c", json!(i)).await;
        }
        publisher
    });
    let joined = reader.ok("join_channel", json!({"room": "s", "channel": "c", "since": last_seen})).await;
    assert_eq!(joined["truncated"], false);
    for i in 5..40 {
        let msg = reader.recv_message().await;
        assert_eq!(msg["payload"], i, "gap or duplicate at {i}");
    }
    let _ = live.await.unwrap();
    reader.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_since_an_unknown_id_replays_everything_kept_and_says_truncated() {
    let mut config = test_config();
    config.limits.history_per_channel = 10;
    let server = TestServer::start_with(config).await;
    let (mut publisher, mut reader) = (server.client().await, server.client().await);
    for i in 0..15 {
        publisher.ok("publish", json!({"room": "t", "channel": "c", "payload": i})).await;
    }
    let joined = reader
        .ok("join_channel", json!({"room": "t", "channel": "c", "since": "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P"}))
        .await;
    assert_eq!(joined["truncated"], true);
    for i in 5..15 {
        assert_eq!(reader.recv_message().await["payload"], i);
    }
    reader.expect_silence(Duration::from_millis(300)).await;
}
