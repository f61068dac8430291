//! [`ServerApi`] and the users and presence of PROTOCOL.md 8.2 and 8.3,
//! against the real bus (an in-process server on 127.0.0.1 port 0) with
//! static tokens for two users and two API keys.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use arqon_client::{
    BatchCommand, Client, ClientError, ClientOptions, ErrorCode, Event, Events, Incoming, Message, PublishOptions,
    Role, Sender, ServerApi, Target,
};
use arqon_config::{ApiKey, AuthMode, Config, StaticToken};
use arqon_e2e::tls::SelfSigned;
use arqon_e2e::{TestServer, test_config};
use futures_util::StreamExt;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const ADMIN_KEY: &str = "test-admin-key-0123456789";
const USER_KEY: &str = "test-user-key-0123456789";
const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";

fn api_config() -> Config {
    let mut config = test_config();
    config.auth.mode = AuthMode::Token;
    config.auth.allow_anonymous = true;
    for (token, user) in [(ALICE, "alice"), (BOB, "bob")] {
        config.auth.tokens.push(StaticToken {
            token: token.to_owned(),
            role: Role::User,
            client: user.to_owned(),
            rooms: Vec::new(),
        });
    }
    for (name, key, role) in [("backend-admin", ADMIN_KEY, Role::Admin), ("backend-user", USER_KEY, Role::User)] {
        config.api.keys.push(ApiKey::new(name, key, role));
    }
    config
}

async fn start() -> TestServer {
    TestServer::start_with(api_config()).await
}

fn api(server: &TestServer, key: &str) -> ServerApi {
    ServerApi::new(&format!("http://{}", server.addr), key).unwrap()
}

async fn connect(server: &TestServer, token: Option<&str>) -> (Client, Events) {
    let options = ClientOptions { token: token.map(str::to_owned), reconnect: false, ..ClientOptions::default() };
    let client = tokio::time::timeout(WAIT, Client::connect_with(&server.url(), options)).await.unwrap().unwrap();
    let events = client.events().unwrap();
    (client, events)
}

async fn next_where<T>(events: &mut Events, mut pick: impl FnMut(&Incoming) -> Option<T>) -> T {
    loop {
        let item = tokio::time::timeout(WAIT, events.next()).await.expect("an item in time").expect("open");
        if let Some(found) = pick(&item) {
            return found;
        }
    }
}

async fn next_message(events: &mut Events) -> Message {
    next_where(events, |item| match item {
        Incoming::Message(message) => Some(message.clone()),
        _ => None,
    })
    .await
}

fn status_and_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, ErrorCode) {
    match result {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected a server API refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_publish_reaches_a_websocket_client_from_server() {
    let server = start().await;
    let (alice, mut events) = connect(&server, Some(ALICE)).await;
    assert_eq!(alice.server_info().user.as_deref(), Some("alice"));
    alice.join("news", "main").await.unwrap();
    let backend = api(&server, USER_KEY);

    let id = backend.publish("news", "main", &json!({"text": "deploy done"})).await.unwrap();
    let message = next_message(&mut events).await;
    assert_eq!((message.id, message.from, message.user.as_deref()), (id, Sender::Server, None));
    assert_eq!(message.from_label(), "server");
    assert_eq!(message.payload_as::<serde_json::Value>().unwrap(), json!({"text": "deploy done"}));

    // The id makes it idempotent: the same publish again is stored once.
    let again = PublishOptions { id: Some(id), ..PublishOptions::default() };
    assert_eq!(backend.publish_with("news", "main", &"again", again).await.unwrap(), id);
    let history = alice.history("news", "main", None, None).await.unwrap();
    assert_eq!(history.iter().map(|m| m.id).collect::<Vec<_>>(), [id]);
    assert_eq!(history[0].from, Sender::Server);

    // One kept-alive connection for many calls; the generic call.
    for _ in 0..5 {
        assert_eq!(backend.call("ping", serde_json::Value::Null).await.unwrap(), json!({"pong": true}));
    }
    // A client message carries its sender's user.
    let (bob, _bob_events) = connect(&server, Some(BOB)).await;
    bob.publish("news", "main", &"from bob").await.unwrap();
    let message = next_message(&mut events).await;
    assert_eq!((message.from_client(), message.user.as_deref()), (Some(bob.server_info().client_id), Some("bob")));
    let (anonymous, _) = connect(&server, None).await;
    assert_eq!((anonymous.server_info().user, anonymous.server_info().role), (None, Role::Guest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_with_the_http_status_and_wire_code() {
    let server = start().await;
    let wrong = api(&server, "not-a-key-of-this-bus");
    let error = wrong.publish("r", "c", &1).await.unwrap_err();
    assert_eq!((error.status(), error.code()), (Some(401), Some(ErrorCode::Unauthorized)));
    assert!(matches!(error, ClientError::Api { status: 401, code: ErrorCode::Unauthorized, .. }), "{error:?}");

    let backend = api(&server, USER_KEY);
    let who = Target::User("nobody".to_owned());
    assert_eq!(status_and_code(backend.disconnect(&who, None, None).await), (403, ErrorCode::Forbidden));
    assert_eq!(status_and_code(backend.call("no_such_command", json!({})).await), (404, ErrorCode::UnknownCommand));
    assert_eq!(status_and_code(backend.send("user:nobody-here", &1).await), (404, ErrorCode::NotFound));
    assert_eq!(status_and_code(backend.call("publish", json!({"room": "r"})).await), (400, ErrorCode::InvalidArgs));
    // Names are checked here first, with the bus's code.
    assert_eq!(backend.publish("bad room", "c", &1).await.unwrap_err().code(), Some(ErrorCode::InvalidName));
    // Nobody listening: a transport error, not a refusal.
    let nobody = ServerApi::new("http://127.0.0.1:1", USER_KEY).unwrap();
    assert!(matches!(nobody.call("ping", json!({})).await, Err(ClientError::Transport(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_pages_through_members_with_their_users() {
    let server = start().await;
    let (watcher, mut watcher_events) = connect(&server, Some(BOB)).await;
    watcher.join("p", "c").await.unwrap();
    let (tab1, _e1) = connect(&server, Some(ALICE)).await;
    let (tab2, _e2) = connect(&server, Some(ALICE)).await;
    tab1.join("p", "c").await.unwrap();
    let joined = next_where(&mut watcher_events, |item| match item {
        Incoming::Event(Event::MemberJoined { client_id, user, info, .. }) => {
            Some((*client_id, user.clone(), info.clone()))
        }
        _ => None,
    })
    .await;
    assert_eq!(joined, (tab1.server_info().client_id, Some("alice".to_owned()), serde_json::Value::Null));
    tab2.join("p", "c").await.unwrap();

    let mut expected: Vec<_> = [&watcher, &tab1, &tab2].iter().map(|c| c.server_info().client_id).collect();
    expected.sort();
    let first = tab1.presence("p", "c", Some(2), None).await.unwrap();
    assert_eq!((first.total, first.users, first.members.len()), (3, 2, 2));
    let second = tab1.presence("p", "c", Some(2), first.members.last().map(|m| m.client_id)).await.unwrap();
    assert_eq!(second.members.len(), 1);
    let members: Vec<_> = first.members.iter().chain(&second.members).collect();
    assert_eq!(members.iter().map(|m| m.client_id).collect::<Vec<_>>(), expected);
    for member in &members {
        let user = if member.client_id == watcher.server_info().client_id { "bob" } else { "alice" };
        assert_eq!(member.user.as_deref(), Some(user));
        assert!(member.info.is_null());
    }

    let backend = api(&server, USER_KEY);
    let page = backend.presence("p", "c", None, None).await.unwrap();
    assert_eq!(page.members.iter().map(|m| m.client_id).collect::<Vec<_>>(), expected);
    let stats = backend.presence_stats("p", "c").await.unwrap();
    assert_eq!((stats.total, stats.users), (3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_broadcast_subscribe_unsubscribe_disconnect_and_batch() {
    let server = start().await;
    let (tab1, mut events1) = connect(&server, Some(ALICE)).await;
    let (tab2, mut events2) = connect(&server, Some(ALICE)).await;
    tab1.join("room", "one").await.unwrap();
    tab2.join("room", "two").await.unwrap();
    let backend = api(&server, USER_KEY);
    let admin = api(&server, ADMIN_KEY);

    assert_eq!(backend.send("user:alice", &json!({"note": "every tab"})).await.unwrap(), 2);
    for events in [&mut events1, &mut events2] {
        let message = next_message(events).await;
        assert_eq!((message.from, message.room.clone()), (Sender::Server, None));
    }
    assert_eq!(backend.broadcast("room", &"room-wide").await.unwrap(), 2);
    for events in [&mut events1, &mut events2] {
        let message = next_message(events).await;
        assert_eq!((message.room.as_ref().map(|r| r.as_str()), message.channel.clone()), (Some("room"), None));
    }

    let client_id = tab2.server_info().client_id;
    let joined = admin.subscribe(client_id, "room", "extra", None).await.unwrap();
    assert_eq!(joined.members, 1);
    let id = admin.publish("room", "extra", &"to the subscribed").await.unwrap();
    assert_eq!(next_message(&mut events2).await.id, id);
    assert!(admin.unsubscribe(client_id, "room", "extra").await.unwrap());
    let left = next_where(&mut events2, |item| match item {
        Incoming::Event(Event::ChannelLeft { room, channel }) => Some((room.to_string(), channel.to_string())),
        _ => None,
    })
    .await;
    assert_eq!(left, ("room".to_owned(), "extra".to_owned()));
    assert!(!admin.unsubscribe(client_id, "room", "extra").await.unwrap());

    let results = backend
        .batch(&[
            BatchCommand::new("publish", json!({"room": "room", "channel": "one", "payload": 1})),
            BatchCommand::new("send", json!({"to": "user:nobody-here", "payload": 2})),
            BatchCommand::new("channel_info", json!({"room": "room", "channel": "one"})),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0].as_ref().unwrap().get("id").is_some());
    let error = results[1].as_ref().unwrap_err();
    assert_eq!((error.status(), error.code()), (Some(404), Some(ErrorCode::NotFound)));
    assert_eq!(results[2].as_ref().unwrap()["stored"], 1);

    let gone = admin.disconnect(&Target::User("alice".to_owned()), Some(4001), Some("bye")).await.unwrap();
    assert_eq!(gone, 2);
    for events in [&mut events1, &mut events2] {
        let notice = next_where(events, |item| match item {
            Incoming::Event(Event::Disconnected { code, reason }) => Some((*code, reason.clone())),
            _ => None,
        })
        .await;
        assert_eq!(notice, (4001, "bye".to_owned()));
        let closed = next_where(events, |item| match item {
            Incoming::Closed { error } => Some(error.to_string()),
            _ => None,
        })
        .await;
        assert!(closed.contains("4001"), "{closed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_bus_certificate_as_a_root() {
    let tls = SelfSigned::new("server-api");
    let server = TestServer::start_with(tls.config(api_config())).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let options = ClientOptions { tls_roots_pem: Some(tls.cert_pem.clone()), ..ClientOptions::default() };
    let backend = ServerApi::with_options(&url, USER_KEY, &options).unwrap();
    assert_eq!(backend.call("ping", serde_json::Value::Null).await.unwrap(), json!({"pong": true}));
    let untrusted = ServerApi::new(&url, USER_KEY).unwrap();
    let error = untrusted.call("ping", serde_json::Value::Null).await.unwrap_err().to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

/// The bus drops an API connection idle for its upgrade timeout; the next
/// call opens a new one instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_the_bus_dropped_is_replaced() {
    let mut config = api_config();
    config.server.upgrade_timeout_ms = 200;
    let server = TestServer::start_with(config).await;
    let backend = api(&server, USER_KEY);
    for _ in 0..3 {
        assert_eq!(backend.call("ping", serde_json::Value::Null).await.unwrap(), json!({"pong": true}));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Calls at the same time each get a connection.
    let calls = (0..8).map(|_| backend.presence_stats("none", "here"));
    for result in futures_util::future::join_all(calls).await {
        assert_eq!(result.unwrap_err().code(), Some(ErrorCode::NotFound));
    }
}
