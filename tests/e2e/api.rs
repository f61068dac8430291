//! Issue 16: the server API over real HTTP on the bus listener (PROTOCOL.md
//! section 8.3), users with many connections and presence on the wire
//! (section 8.2), and room options through the configuration file (8.4).

use arqon_config::{ApiKey, AuthMode, StaticToken};
use arqon_e2e::api::ApiConn;
use arqon_e2e::{Closed, TestClient, TestServer, test_config};
use arqon_protocol::Role;
use serde_json::json;

const ADMIN_KEY: &str = "admin-key-0123456789abcdef";
const USER_KEY: &str = "user-key-0123456789abcdef";

fn api_config() -> arqon_config::Config {
    let mut config = test_config();
    let key = |name: &str, key: &str, role| ApiKey::new(name, key, role);
    config.api.keys = vec![key("backend", ADMIN_KEY, Role::Admin), key("reports", USER_KEY, Role::User)];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_publishes_to_websocket_clients_and_a_retry_is_recognised() {
    let server = TestServer::start_with(api_config()).await;
    let mut browser = server.client().await;
    browser.join("news", "live").await;
    let mut api = ApiConn::connect(server.addr).await;
    let id = "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P";
    let body = json!({"room": "news", "channel": "live", "payload": {"text": "hello"}, "id": id}).to_string();
    let first = api.post("publish", Some(USER_KEY), &body).await;
    assert_eq!((first.status, first.body.clone()), (200, json!({"id": id})), "{}", first.text);
    assert!(first.headers.to_lowercase().contains("content-type: application/json"), "{}", first.headers);
    let retry = api.post("publish", Some(USER_KEY), &body).await;
    assert_eq!((retry.status, retry.body), (200, json!({"id": id})));
    let got = browser.recv_message().await;
    assert_eq!(got["payload"], json!({"text": "hello"}));
    assert_eq!(got["from"], "server");
    assert!(got.get("user").is_none(), "{got}");
    // The retry was neither stored again nor delivered again.
    let history = api.post("history", Some(USER_KEY), &json!({"room": "news", "channel": "live"}).to_string()).await;
    assert_eq!(history.body["messages"].as_array().map(Vec::len), Some(1), "{}", history.text);
    browser.ok("ping", json!({})).await;
    assert!(browser.take_pending().is_empty());
    // The key is accepted as X-API-Key as well.
    let header = format!("X-API-Key: {USER_KEY}\r\n");
    let status = api.raw("POST", "/api/status", &header, "{}").await;
    assert_eq!(status.status, 200, "{}", status.text);
    assert_eq!(status.body["connections"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_get_their_status_and_code_and_the_connection_stays_usable() {
    let mut config = api_config();
    config.limits.max_message_bytes = 4096;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    client.join("r", "c").await;
    let mut api = ApiConn::connect(server.addr).await;
    let ok = json!({"room": "r", "channel": "c", "payload": 1}).to_string();
    let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
        ("publish", None, ok.clone(), 401, "UNAUTHORIZED"),
        ("publish", Some("wrong-key-0123456789abcdef"), ok.clone(), 401, "UNAUTHORIZED"),
        ("publish", Some(USER_KEY), "{not json".to_owned(), 400, "INVALID_ARGS"),
        ("publish", Some(USER_KEY), "[1,2]".to_owned(), 400, "INVALID_ARGS"),
        ("publish", Some(USER_KEY), String::new(), 400, "INVALID_ARGS"),
        ("publish", Some(USER_KEY), json!({"room": "r"}).to_string(), 400, "INVALID_ARGS"),
        (
            "publish",
            Some(USER_KEY),
            json!({"room": "a b", "channel": "c", "payload": 1}).to_string(),
            400,
            "INVALID_NAME",
        ),
        ("nope", Some(USER_KEY), "{}".to_owned(), 404, "UNKNOWN_COMMAND"),
        ("delete_channel", Some(USER_KEY), json!({"room": "r", "channel": "c"}).to_string(), 403, "FORBIDDEN"),
        ("disconnect", Some(USER_KEY), json!({"user": "x"}).to_string(), 403, "FORBIDDEN"),
        ("send", Some(USER_KEY), json!({"to": "user:nobody", "payload": 1}).to_string(), 404, "NOT_FOUND"),
        ("history", Some(USER_KEY), json!({"room": "r", "channel": "none"}).to_string(), 404, "NOT_FOUND"),
        (
            "publish",
            Some(USER_KEY),
            json!({"room": "r", "channel": "c", "payload": "x".repeat(5000)}).to_string(),
            413,
            "MESSAGE_TOO_LARGE",
        ),
    ];
    for (command, key, body, status, code) in cases {
        let answer = api.post(command, key, &body).await;
        assert_eq!(answer.status, status, "{command} {body:.60}: {}", answer.text);
        assert_eq!(answer.body["error"]["code"], code, "{command}: {}", answer.text);
        assert!(answer.body["error"]["message"].is_string(), "{}", answer.text);
    }
    let get = api.raw("GET", "/api/publish", "", "").await;
    assert_eq!(get.status, 405, "{}", get.text);
    assert!(get.headers.contains("allow: POST") || get.headers.contains("Allow: POST"), "{}", get.headers);
    // After all of that, the same connection still works and nothing was delivered.
    let answer = api.post("publish", Some(USER_KEY), &ok).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let got = client.recv_message().await;
    assert_eq!(got["payload"], 1);
    assert!(client.take_pending().is_empty(), "only the one good publish arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_key_configured_every_call_is_refused() {
    let server = TestServer::start().await;
    let mut api = ApiConn::connect(server.addr).await;
    let answer = api.post("ping", Some("anything-at-all-0123456789"), "{}").await;
    assert_eq!((answer.status, answer.body["error"]["code"].as_str()), (401, Some("UNAUTHORIZED")));
    // The WebSocket endpoint is untouched by the API's presence.
    let mut client = server.client().await;
    client.ok("ping", json!({})).await;
}

fn users_config() -> arqon_config::Config {
    let mut config = api_config();
    config.auth.mode = AuthMode::Token;
    let token = |token: &str, client: &str| StaticToken {
        token: token.to_owned(),
        role: Role::User,
        client: client.to_owned(),
        rooms: Vec::new(),
    };
    config.auth.tokens = vec![token("ann-token", "ann"), token("bob-token", "bob")];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_two_tabs_is_reached_presented_and_disconnected_as_one() {
    let server = TestServer::start_with(users_config()).await;
    let url = |token: &str| format!("{}?token={token}", server.url());
    let mut tab1 = TestClient::connect(&url("ann-token")).await;
    let mut tab2 = TestClient::connect(&url("ann-token")).await;
    let mut bob = TestClient::connect(&url("bob-token")).await;
    assert_ne!(tab1.id, tab2.id, "a fresh client id per connection");
    for client in [&mut tab1, &mut tab2, &mut bob] {
        client.join("chat", "main").await;
    }
    // Bob writes to the user; both tabs get it, naming bob.
    bob.send(json!({"type": "message", "to": "user:ann", "payload": "hi ann"})).await;
    for tab in [&mut tab1, &mut tab2] {
        let got = tab.recv_message().await;
        assert_eq!((got["payload"].as_str(), got["user"].as_str()), (Some("hi ann"), Some("bob")), "{got}");
    }
    let presence = bob.ok("presence", json!({"room": "chat", "channel": "main"})).await;
    assert_eq!((presence["total"].as_u64(), presence["users"].as_u64()), (Some(3), Some(2)), "{presence}");
    let ids: Vec<&str> =
        presence["members"].as_array().unwrap().iter().map(|m| m["client_id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "ordered by client id");
    // The API sees the same, and a tab that drops without a close leaves.
    let mut api = ApiConn::connect(server.addr).await;
    drop(tab2);
    let body = json!({"room": "chat", "channel": "main"}).to_string();
    let deadline = tokio::time::Instant::now() + arqon_e2e::TIMEOUT;
    loop {
        let stats = api.post("presence_stats", Some(USER_KEY), &body).await;
        if stats.body == json!({"total": 2, "users": 2}) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the dropped tab stayed: {}", stats.text);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // An admin key disconnects every connection of a user, with its code.
    let tab3 = TestClient::connect(&url("ann-token")).await;
    let closed = api
        .post("disconnect", Some(ADMIN_KEY), &json!({"user": "ann", "code": 4003, "reason": "banned"}).to_string())
        .await;
    assert_eq!(closed.body, json!({"disconnected": 2}), "{}", closed.text);
    for mut tab in [tab1, tab3] {
        let (frames, closed) = tab.drain_until_closed().await;
        assert_eq!(closed, Closed::Code(4003));
        assert!(
            frames.iter().any(|f| f["payload"]["event"] == "disconnected" && f["payload"]["reason"] == "banned"),
            "{frames:?}"
        );
    }
    bob.ok("ping", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_subscribes_and_unsubscribes_a_connected_client() {
    let server = TestServer::start_with(api_config()).await;
    let mut publisher = server.client().await;
    let first = publisher.ok("publish", json!({"room": "r", "channel": "c", "payload": "one"})).await;
    publisher.ok("publish", json!({"room": "r", "channel": "c", "payload": "two"})).await;
    let mut client = server.client().await;
    let mut api = ApiConn::connect(server.addr).await;
    let args = json!({"client_id": client.id, "room": "r", "channel": "c", "since": first["id"]});
    let joined = api.post("subscribe", Some(ADMIN_KEY), &args.to_string()).await;
    assert_eq!(joined.status, 200, "{}", joined.text);
    assert_eq!(joined.body["members"], 1);
    assert_eq!(client.recv_message().await["payload"], "two", "the replay after since");
    publisher.ok("publish", json!({"room": "r", "channel": "c", "payload": "three"})).await;
    assert_eq!(client.recv_message().await["payload"], "three");
    let args = json!({"client_id": client.id, "room": "r", "channel": "c"});
    let left = api.post("unsubscribe", Some(ADMIN_KEY), &args.to_string()).await;
    assert_eq!(left.body, json!({"left": true}), "{}", left.text);
    assert_eq!(client.recv_event("channel_left").await["payload"]["channel"], "c");
    let gone = json!({"client_id": "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P", "room": "r", "channel": "c"});
    assert_eq!(api.post("subscribe", Some(ADMIN_KEY), &gone.to_string()).await.status, 404);
    let batch = json!({"commands": [
        {"command": "broadcast", "args": {"room": "r", "payload": "all"}},
        {"command": "presence_stats", "args": {"room": "r", "channel": "c"}},
        {"command": "publish", "args": {"room": "r"}},
    ]});
    let results = api.post("batch", Some(USER_KEY), &batch.to_string()).await;
    assert_eq!(results.status, 200, "{}", results.text);
    assert_eq!(results.body["results"][1], json!({"total": 0, "users": 0}));
    assert_eq!(results.body["results"][2]["error"]["code"], "INVALID_ARGS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_options_from_the_file_apply_on_the_wire() {
    let text = "[server]\nport = 0\n[monitoring]\nport = 0\n[limits]\nrate_per_s = 0\nbytes_per_s = 0\n\
                [rooms.\"quiet-*\"]\npresence = false\nmember_events = false\n\
                [rooms.staff]\njoin_role = \"admin\"\n";
    let dir = std::env::temp_dir().join(format!("arqon-rooms-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rooms.toml");
    std::fs::write(&path, text).unwrap();
    let config = arqon_config::Config::load(Some(&path), Vec::new()).unwrap();
    let server = TestServer::start_with(config).await;
    let (mut a, mut b) = (server.client().await, server.client().await);
    a.join("quiet-1", "c").await;
    b.join("quiet-1", "c").await;
    assert_eq!(a.err("presence", json!({"room": "quiet-1", "channel": "c"})).await, "FORBIDDEN");
    assert_eq!(a.err("join_channel", json!({"room": "staff", "channel": "c"})).await, "FORBIDDEN");
    // No member event reached a (its ping's answer is all it gets).
    a.ok("ping", json!({})).await;
    assert!(a.take_pending().iter().all(|f| f["payload"]["event"] != "member_joined"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_rate_is_refused_past_it_and_others_are_not() {
    let mut config = api_config();
    let mut limited = ApiKey::new("paced", "paced-key-0123456789abcdef", Role::User);
    limited.rate_per_s = 1;
    limited.burst = 2;
    config.api.keys.push(limited);
    let server = TestServer::start_with(config).await;
    let mut api = ApiConn::connect(server.addr).await;
    for _ in 0..2 {
        assert_eq!(api.post("ping", Some("paced-key-0123456789abcdef"), "{}").await.status, 200);
    }
    let refused = api.post("ping", Some("paced-key-0123456789abcdef"), "{}").await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(refused.body["error"]["code"], "RATE_LIMITED");
    assert!(refused.body["error"]["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", refused.text);
    // Keys without a rate are not limited.
    for _ in 0..50 {
        assert_eq!(api.post("ping", Some(USER_KEY), "{}").await.status, 200);
    }
}
