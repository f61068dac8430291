//! The client against the real bus (an in-process server on 127.0.0.1 port
//! 0), against a tiny fake bus for what the real one never does (stay
//! silent, drop a connection mid-request), and through a TCP proxy that can
//! cut or freeze connections on demand.
//!
//! Every wait is bounded and generous: these run on slow, busy machines.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arqon_client::{
    ChannelKey, Client, ClientError, ClientOptions, ErrorCode, Event, Events, Incoming, Message, MessageId, Name,
    PublishOptions, Role, Target,
};
use arqon_e2e::tls::SelfSigned;
use arqon_e2e::{TestServer, test_config};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;

/// Longest any one wait may take.
const WAIT: Duration = Duration::from_secs(30);

/// Options for clients that should reconnect quickly.
fn fast_reconnect() -> ClientOptions {
    ClientOptions {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..ClientOptions::default()
    }
}

async fn admin_server() -> TestServer {
    let mut config = test_config();
    config.auth.default_role = Role::Admin;
    TestServer::start_with(config).await
}

async fn connect(url: &str) -> (Client, Events) {
    connect_with(url, ClientOptions::default()).await
}

async fn connect_with(url: &str, options: ClientOptions) -> (Client, Events) {
    let client = tokio::time::timeout(WAIT, Client::connect_with(url, options)).await.expect("connect in time");
    let client = client.expect("connect");
    let events = client.events().expect("first events() call");
    (client, events)
}

async fn next_item(events: &mut Events) -> Incoming {
    tokio::time::timeout(WAIT, events.next()).await.expect("an item in time").expect("stream still open")
}

/// The next item `pick` accepts; others are passed to `skip`.
async fn next_where<T>(events: &mut Events, mut pick: impl FnMut(&Incoming) -> Option<T>) -> T {
    loop {
        let item = next_item(events).await;
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

async fn next_event(events: &mut Events) -> Event {
    next_where(events, |item| match item {
        Incoming::Event(event) => Some(event.clone()),
        _ => None,
    })
    .await
}

fn n_of(message: &Message) -> u64 {
    message.payload_as::<Value>().unwrap()["n"].as_u64().expect("payload has n")
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Rejected { code, .. }) => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn key(room: &str, channel: &str) -> ChannelKey {
    ChannelKey::parse(room, channel).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_typed_helper_returns_its_typed_answer() {
    let server = admin_server().await;
    let (alice, mut alice_events) = connect(&server.url()).await;
    let (bob, mut bob_events) = connect(&server.url()).await;
    assert!(alice.events().is_none(), "the stream is handed out once");
    let info = alice.server_info();
    assert_eq!(info.role, Role::Admin);
    assert_eq!(info.heartbeat_s, 20);
    assert_eq!(info.limits.rate_per_s, 0);
    assert!(alice.is_connected());

    assert!(alice.ping().await.unwrap().pong);
    assert_eq!(alice.command("ping", Value::Null).await.unwrap(), json!({"pong": true}));

    let status = alice.status().await.unwrap();
    assert!(status.connections >= 2, "{status:?}");
    assert_eq!(status.storage.backend, "memory");
    assert!(status.storage.healthy);
    assert!(!status.version.is_empty());

    let help = alice.help().await.unwrap();
    let names: Vec<&str> = help.commands.iter().map(|c| c.name.as_str()).collect();
    for name in [
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
    ] {
        assert!(names.contains(&name), "help lacks {name}: {names:?}");
    }
    assert!(help.commands.iter().all(|c| c.allowed || c.api_only), "an admin may run every client command");
    assert!(help.commands.iter().any(|c| c.name == "send" && c.api_only && !c.allowed));
    let history_help = help.commands.iter().find(|c| c.name == "history").unwrap();
    assert!(history_help.args.iter().any(|a| a.name == "limit" && !a.required));
    assert_eq!(help.commands.iter().find(|c| c.name == "delete_channel").unwrap().role, Role::Admin);

    let created = alice.create_channel("lobby", "general").await.unwrap();
    assert_eq!((created.room.as_str(), created.channel.as_str(), created.created), ("lobby", "general", true));
    assert!(!alice.create_channel("lobby", "general").await.unwrap().created);

    let joined = alice.join("lobby", "general").await.unwrap();
    assert_eq!((joined.members, joined.truncated), (1, None));
    let joined = bob.join_channel("lobby", "general", None).await.unwrap();
    assert_eq!(joined.members, 2);
    assert_eq!(
        next_event(&mut alice_events).await,
        Event::MemberJoined {
            room: Name::parse("lobby").unwrap(),
            channel: Name::parse("general").unwrap(),
            client_id: bob.server_info().client_id,
            user: None,
            info: Value::Null,
        }
    );

    let list = alice.list_channels(Some("lobby")).await.unwrap();
    assert_eq!(list.channels.len(), 1);
    assert_eq!((list.channels[0].channel.as_str(), list.channels[0].members), ("general", 2));
    alice.create_channel("other", "x").await.unwrap();
    let all = alice.list_channels(None).await.unwrap();
    assert!(all.channels.iter().any(|c| c.room.as_str() == "other"), "{all:?}");

    let info = alice.channel_info("lobby", "general").await.unwrap();
    assert_eq!((info.members, info.stored, info.last_id), (2, 0, None));

    // publish: acknowledged, delivered to the other member, kept in order.
    let mut ids = Vec::new();
    for n in 0..5u64 {
        ids.push(alice.publish("lobby", "general", &json!({"n": n})).await.unwrap());
    }
    for (n, id) in ids.iter().enumerate() {
        let message = next_message(&mut bob_events).await;
        assert_eq!((message.id, n_of(&message)), (*id, n as u64));
        assert_eq!(message.from_client(), Some(alice.server_info().client_id));
        assert_eq!(message.channel_key(), Some(key("lobby", "general")));
    }
    let meta = [("trace".to_owned(), "t-1".to_owned())].into_iter().collect();
    let with_meta = alice.publish_with("lobby", "general", &"text", PublishOptions { id: None, meta }).await.unwrap();
    let message = next_message(&mut bob_events).await;
    assert_eq!((message.id, message.payload.get(), message.meta["trace"].as_str()), (with_meta, "\"text\"", "t-1"));

    let info = alice.channel_info("lobby", "general").await.unwrap();
    assert_eq!((info.stored, info.last_id), (6, Some(with_meta)));

    // history: oldest first; limit and before.
    let history = alice.history("lobby", "general", None, None).await.unwrap();
    let got: Vec<MessageId> = history.iter().map(|m| m.id).collect();
    assert_eq!(got[..5], ids[..]);
    assert_eq!(history[0].payload_as::<Value>().unwrap(), json!({"n": 0}));
    let page = alice.history("lobby", "general", Some(2), Some(ids[4])).await.unwrap();
    assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[2], ids[3]]);

    // join_channel with since: the replay arrives on the stream.
    let (carol, mut carol_events) = connect(&server.url()).await;
    let joined = carol.join_channel("lobby", "general", Some(ids[2])).await.unwrap();
    assert_eq!(joined.truncated, Some(false));
    for expected in [ids[3], ids[4], with_meta] {
        assert_eq!(next_message(&mut carol_events).await.id, expected);
    }

    // send: fire-and-forget to a channel, a room, a client.
    let to_channel = alice.send(Target::Channel(key("lobby", "general")), &json!({"n": 100})).await.unwrap();
    let message = next_message(&mut bob_events).await;
    assert_eq!((message.id, n_of(&message)), (to_channel, 100));
    alice.send(Target::Room(Name::parse("lobby").unwrap()), &json!({"n": 101})).await.unwrap();
    let message = next_message(&mut bob_events).await;
    assert_eq!(
        (n_of(&message), message.room.as_ref().map(Name::as_str), message.channel.clone()),
        (101, Some("lobby"), None)
    );
    alice.send(Target::Client(bob.server_info().client_id), &json!({"n": 102})).await.unwrap();
    let message = next_message(&mut bob_events).await;
    assert_eq!((n_of(&message), message.room.clone()), (102, None));

    // leave, then delete: the remaining members hear about it.
    let left = carol.leave("lobby", "general").await.unwrap();
    assert!(left.left);
    assert!(!carol.leave_channel("lobby", "general").await.unwrap().left);
    let deleted = alice.delete_channel("lobby", "general").await.unwrap();
    assert!(deleted.deleted);
    let event = next_where(&mut bob_events, |item| match item {
        Incoming::Event(event @ Event::ChannelDeleted { .. }) => Some(event.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        event,
        Event::ChannelDeleted { room: Name::parse("lobby").unwrap(), channel: Name::parse("general").unwrap() }
    );
    assert_eq!(code(alice.channel_info("lobby", "general").await), ErrorCode::NotFound);

    // close: the stream ends with Closed, and the handle refuses work.
    alice.close().await;
    let last = next_where(&mut alice_events, |item| match item {
        Incoming::Closed { error } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert_eq!(last, ClientError::Closed);
    assert!(tokio::time::timeout(WAIT, alice_events.next()).await.unwrap().is_none());
    assert_eq!(alice.ping().await.unwrap_err(), ClientError::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_errors() {
    let server = TestServer::start().await; // default role: user
    let (client, mut events) = connect(&server.url()).await;

    assert_eq!(code(client.history("nowhere", "nothing", None, None).await), ErrorCode::NotFound);
    assert_eq!(code(client.channel_info("nowhere", "nothing").await), ErrorCode::NotFound);
    client.create_channel("r", "c").await.unwrap();
    assert_eq!(code(client.delete_channel("r", "c").await), ErrorCode::Forbidden);
    assert_eq!(code(client.history("r", "c", Some(0), None).await), ErrorCode::InvalidArgs);
    assert_eq!(code(client.history("r", "c", Some(1001), None).await), ErrorCode::InvalidArgs);
    assert_eq!(code(client.command("history", json!({"room": "r"})).await), ErrorCode::InvalidArgs);
    assert_eq!(code(client.command("publish", json!({"room": "r", "channel": "c"})).await), ErrorCode::InvalidArgs);
    assert_eq!(code(client.command("no_such_command", json!({})).await), ErrorCode::UnknownCommand);
    // Names are checked locally with the bus's rules, and by the bus.
    assert_eq!(code(client.join("bad name", "c").await), ErrorCode::InvalidName);
    assert_eq!(
        code(client.command("join_channel", json!({"room": "bad name", "channel": "c"})).await),
        ErrorCode::InvalidName
    );
    let unknown = MessageId::parse("arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P").unwrap();
    assert_eq!(code(client.history("r", "c", None, Some(unknown)).await), ErrorCode::NotFound);

    // A refused fire-and-forget message comes back on the stream, by id.
    let nobody = arqon_client::ClientId::parse("arq_01JDQ8Z6W3T7M5KX2C9V4B8N1Q").unwrap();
    let id = client.send(Target::Client(nobody), &json!("hello?")).await.unwrap();
    let (request_id, error) = next_where(&mut events, |item| match item {
        Incoming::Error { request_id, error } => Some((*request_id, error.clone())),
        _ => None,
    })
    .await;
    assert_eq!(request_id, Some(id));
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
    // The connection is still fine.
    assert!(client.ping().await.unwrap().pong);

    // A guest may not publish.
    let mut config = test_config();
    config.auth.default_role = Role::Guest;
    let guests = TestServer::start_with(config).await;
    let (guest, _events) = connect(&guests.url()).await;
    assert_eq!(code(guest.publish("r", "c", &1).await), ErrorCode::Forbidden);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_is_stored_once() {
    let server = TestServer::start().await;
    let (subscriber, mut events) = connect(&server.url()).await;
    subscriber.join("idem", "c").await.unwrap();
    let (publisher, _publisher_events) = connect(&server.url()).await;
    let id = MessageId::parse("arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P").unwrap();
    for _ in 0..3 {
        let options = PublishOptions { id: Some(id), ..PublishOptions::default() };
        assert_eq!(publisher.publish_with("idem", "c", &json!({"n": 1}), options).await.unwrap(), id);
    }
    publisher.publish("idem", "c", &json!({"n": 2})).await.unwrap();
    assert_eq!(n_of(&next_message(&mut events).await), 1);
    assert_eq!(n_of(&next_message(&mut events).await), 2);
    assert_eq!(subscriber.channel_info("idem", "c").await.unwrap().stored, 2);
}

/// A fake bus: accepts WebSocket upgrades, reports each upgrade's
/// `Authorization` header, sends a `welcome` (unless told not to), then reads
/// and never answers; with `drop_on_frame`, it drops the connection at the
/// first frame it receives instead.
struct FakeBus {
    addr: SocketAddr,
    headers: mpsc::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl FakeBus {
    async fn start(welcome: bool, drop_on_frame: bool) -> FakeBus {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (header_tx, headers) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let header_tx = header_tx.clone();
                tokio::spawn(async move {
                    let (seen_tx, seen_rx) = oneshot::channel();
                    // The signature is tungstenite's.
                    #[allow(clippy::result_large_err)]
                    let callback =
                        |request: &tungstenite::handshake::server::Request,
                         response: tungstenite::handshake::server::Response| {
                            let auth =
                                request.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
                            let _ = seen_tx.send(auth);
                            Ok(response)
                        };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
                    let _ = header_tx.send(seen_rx.await.unwrap_or_default()).await;
                    if welcome {
                        let frame = json!({
                            "version": 1,
                            "id": "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P",
                            "type": "event",
                            "timestamp": "2026-11-29T12:00:00.123Z",
                            "payload": {
                                "event": "welcome",
                                "client_id": "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1Q",
                                "role": "user",
                                "server_version": "fake",
                                "heartbeat_s": 60,
                                "limits": {"max_message_bytes": 1048576, "rate_per_s": 0, "burst": 0}
                            }
                        });
                        if ws.send(tungstenite::Message::text(frame.to_string())).await.is_err() {
                            return;
                        }
                    }
                    while let Some(Ok(frame)) = ws.next().await {
                        if drop_on_frame && frame.is_text() {
                            return;
                        }
                    }
                });
            }
        });
        FakeBus { addr, headers, task }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for FakeBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_times_out_and_the_token_is_sent_as_a_bearer_header() {
    let mut fake = FakeBus::start(true, false).await;
    let options = ClientOptions {
        token: Some("s3cret".to_owned()),
        request_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    let (client, _events) = connect_with(&fake.url(), options).await;
    let header = tokio::time::timeout(WAIT, fake.headers.recv()).await.unwrap().unwrap();
    assert_eq!(header.as_deref(), Some("Bearer s3cret"));
    assert_eq!(client.server_info().server_version, "fake");
    assert_eq!(client.ping().await.unwrap_err(), ClientError::Timeout(Duration::from_millis(300)));
    assert_eq!(client.status().await.unwrap_err(), ClientError::Timeout(Duration::from_millis(300)));
    // The connection itself is still up: timing out is per request.
    assert!(client.is_connected());

    // Without a token, no header.
    let (_plain, _events) = connect(&fake.url()).await;
    let header = tokio::time::timeout(WAIT, fake.headers.recv()).await.unwrap().unwrap();
    assert_eq!(header, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_bus_that_never_welcomes_times_out() {
    let fake = FakeBus::start(false, false).await;
    let options = ClientOptions { connect_timeout: Duration::from_millis(300), ..ClientOptions::default() };
    let result = tokio::time::timeout(WAIT, Client::connect_with(&fake.url(), options)).await.unwrap();
    assert_eq!(result.unwrap_err(), ClientError::Timeout(Duration::from_millis(300)));

    // Nobody listening at all: a transport error, not a hang.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", closed.local_addr().unwrap());
    drop(closed);
    let result = tokio::time::timeout(WAIT, Client::connect(&url)).await.unwrap();
    assert!(matches!(result, Err(ClientError::Transport(_))), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_the_connection_drops_fails_with_connection_lost() {
    let fake = FakeBus::start(true, true).await;
    let (client, mut events) = connect_with(&fake.url(), fast_reconnect()).await;
    assert_eq!(client.ping().await.unwrap_err(), ClientError::ConnectionLost);
    next_where(&mut events, |item| matches!(item, Incoming::Disconnected { .. }).then_some(())).await;
    let (rejoined, failed) = next_where(&mut events, |item| match item {
        Incoming::Reconnected { rejoined, failed, .. } => Some((rejoined.len(), failed.len())),
        _ => None,
    })
    .await;
    assert_eq!((rejoined, failed), (0, 0));
}

/// A TCP proxy between clients and the bus that can cut (`kill`) or freeze
/// (stop forwarding, keep the sockets open) every connection open at the
/// time; later connections are forwarded normally.
struct Proxy {
    addr: SocketAddr,
    /// (kill generation, freeze generation).
    control: watch::Sender<(u64, u64)>,
    /// Connections forwarding or frozen (not yet closed or killed).
    open: Arc<AtomicUsize>,
    /// Connections that have stopped forwarding since the last freeze.
    frozen: Arc<watch::Sender<usize>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (control, _) = watch::channel((0u64, 0u64));
        let open = Arc::new(AtomicUsize::new(0));
        let frozen = Arc::new(watch::channel(0usize).0);
        let accept_control = control.clone();
        let (accept_open, accept_frozen) = (Arc::clone(&open), Arc::clone(&frozen));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                let Ok(mut outbound) = TcpStream::connect(target).await else { continue };
                let mut control = accept_control.subscribe();
                let (kill0, freeze0) = *control.borrow_and_update();
                let (open, frozen) = (Arc::clone(&accept_open), Arc::clone(&accept_frozen));
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {
                            open.fetch_sub(1, Ordering::SeqCst);
                            return;
                        }
                        _ = control.wait_for(|&(kill, freeze)| kill != kill0 || freeze != freeze0) => {}
                    }
                    // Frozen: hold both sockets, forward nothing, until killed.
                    frozen.send_modify(|n| *n += 1);
                    let _ = control.wait_for(|&(kill, _)| kill != kill0).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Proxy { addr, control, open, frozen, task }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn kill(&self) {
        self.control.send_modify(|c| c.0 += 1);
    }

    /// Freezes every open connection, and returns once none of them forwards
    /// anything any more (so what is sent after this cannot slip through).
    async fn freeze(&self) {
        let open = self.open.load(Ordering::SeqCst);
        self.frozen.send_replace(0);
        let mut frozen = self.frozen.subscribe();
        self.control.send_modify(|c| c.1 += 1);
        tokio::time::timeout(WAIT, frozen.wait_for(|&n| n >= open)).await.expect("frozen in time").unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_reconnects_every_message_arrives_exactly_once_in_order() {
    const COUNT: u64 = 200;
    let server = TestServer::start().await;
    let proxy = Arc::new(Proxy::start(server.addr).await);
    let (subscriber, mut events) = connect_with(&proxy.url(), fast_reconnect()).await;
    subscriber.join("reconnect", "feed").await.unwrap();
    let (publisher, _publisher_events) = connect(&server.url()).await;

    let cutter = Arc::clone(&proxy);
    let publishing = tokio::spawn(async move {
        for n in 0..COUNT {
            publisher.publish("reconnect", "feed", &json!({ "n": n })).await.unwrap();
            if n == 60 || n == 130 {
                cutter.kill();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let mut received = Vec::new();
    let (mut disconnects, mut reconnects) = (0, 0);
    while received.len() < COUNT as usize || reconnects == 0 {
        match next_item(&mut events).await {
            Incoming::Message(message) => received.push(n_of(&message)),
            Incoming::Disconnected { .. } => disconnects += 1,
            Incoming::Reconnected { rejoined, failed, .. } => {
                assert_eq!(rejoined, vec![key("reconnect", "feed")]);
                assert!(failed.is_empty(), "{failed:?}");
                reconnects += 1;
            }
            Incoming::Truncated { channel } => panic!("history should have covered the gap in {channel}"),
            _ => {}
        }
    }
    tokio::time::timeout(WAIT, publishing).await.unwrap().unwrap();
    // Nothing more (no late duplicate) arrives.
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(1), events.next()).await {
        if let Incoming::Message(message) = item {
            received.push(n_of(&message));
        }
    }
    assert_eq!(received, (0..COUNT).collect::<Vec<_>>());
    assert!(disconnects >= 1 && reconnects >= 1, "disconnects {disconnects}, reconnects {reconnects}");
    // The re-joined membership is live: a new message arrives.
    let (late, _late_events) = connect(&server.url()).await;
    late.publish("reconnect", "feed", &json!({ "n": COUNT })).await.unwrap();
    assert_eq!(n_of(&next_message(&mut events).await), COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_connection_is_detected_by_the_heartbeat_and_replaced() {
    let mut config = test_config();
    config.server.heartbeat_s = 1;
    let server = TestServer::start_with(config).await;
    let proxy = Proxy::start(server.addr).await;
    let (subscriber, mut events) = connect_with(&proxy.url(), fast_reconnect()).await;
    assert_eq!(subscriber.server_info().heartbeat_s, 1);
    subscriber.join("hb", "c").await.unwrap();
    let (publisher, _publisher_events) = connect(&server.url()).await;
    publisher.publish("hb", "c", &json!({"n": 0})).await.unwrap();
    assert_eq!(n_of(&next_message(&mut events).await), 0);

    let frozen_at = tokio::time::Instant::now();
    proxy.freeze().await;
    // Published into the frozen connection: lost on the wire, so it must come
    // back through the replay after the reconnect.
    publisher.publish("hb", "c", &json!({"n": 1})).await.unwrap();
    let error = next_where(&mut events, |item| match item {
        Incoming::Disconnected { error } => Some(error.clone()),
        Incoming::Message(message) => panic!("nothing passes a frozen proxy, got {message:?}"),
        _ => None,
    })
    .await;
    assert_eq!(error, ClientError::Timeout(Duration::from_secs(2)));
    // ~2 heartbeats; the bound only guards against "never", not against a slow machine.
    assert!(frozen_at.elapsed() < WAIT, "took {:?}", frozen_at.elapsed());
    let mut rest = Vec::new();
    let mut rejoined = None;
    while rejoined.is_none() || rest.len() < 2 {
        match next_item(&mut events).await {
            Incoming::Reconnected { rejoined: channels, .. } => {
                rejoined = Some(channels);
                publisher.publish("hb", "c", &json!({"n": 2})).await.unwrap();
            }
            Incoming::Message(message) => rest.push(n_of(&message)),
            _ => {}
        }
    }
    assert_eq!(rejoined, Some(vec![key("hb", "c")]));
    assert_eq!(rest, vec![1, 2]);
    assert!(subscriber.ping().await.unwrap().pong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_loses_no_channel_message() {
    const COUNT: u64 = 200;
    let server = TestServer::start().await;
    let options = ClientOptions { event_capacity: 16, ..ClientOptions::default() };
    let (subscriber, mut events) = connect_with(&server.url(), options).await;
    subscriber.join("slow", "c").await.unwrap();
    let (publisher, _publisher_events) = connect(&server.url()).await;
    // Far more than the queue holds, while nobody reads.
    for n in 0..COUNT {
        publisher.publish("slow", "c", &json!({ "n": n })).await.unwrap();
    }
    let mut received = Vec::new();
    while received.len() < COUNT as usize {
        match next_item(&mut events).await {
            Incoming::Message(message) => received.push(n_of(&message)),
            Incoming::Truncated { channel } => panic!("history should have covered {channel}"),
            _ => {}
        }
    }
    assert_eq!(received, (0..COUNT).collect::<Vec<_>>());
    // Still subscribed and live.
    publisher.publish("slow", "c", &json!({ "n": COUNT })).await.unwrap();
    assert_eq!(n_of(&next_message(&mut events).await), COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_a_lost_connection_closes_the_client() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let options = ClientOptions { reconnect: false, ..ClientOptions::default() };
    let (client, mut events) = connect_with(&proxy.url(), options).await;
    client.join("r", "c").await.unwrap();
    proxy.kill();
    let error = next_where(&mut events, |item| match item {
        Incoming::Closed { error } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert_ne!(error, ClientError::Closed, "the reason is the transport failure");
    assert!(tokio::time::timeout(WAIT, events.next()).await.unwrap().is_none(), "the stream ends");
    assert_eq!(client.ping().await.unwrap_err(), ClientError::Closed);
    assert!(!client.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_saw_no_message_yet_resumes_from_the_join() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let (publisher, _publisher_events) = connect(&server.url()).await;
    // `busy` has history from before the join; `empty` has none.
    for n in 0..3 {
        publisher.publish("resume", "busy", &json!({ "n": n })).await.unwrap();
    }
    publisher.create_channel("resume", "empty").await.unwrap();
    // A slow first reconnect, so that the messages below are published
    // while the subscriber is away.
    let options = ClientOptions {
        backoff_initial: Duration::from_millis(600),
        backoff_max: Duration::from_millis(600),
        ..ClientOptions::default()
    };
    let (subscriber, mut events) = connect_with(&proxy.url(), options).await;
    subscriber.join("resume", "busy").await.unwrap();
    subscriber.join("resume", "empty").await.unwrap();
    // Answered after the cursor lookups that follow each join.
    subscriber.ping().await.unwrap();
    proxy.kill();
    next_where(&mut events, |item| matches!(item, Incoming::Disconnected { .. }).then_some(())).await;
    for n in 10..12 {
        publisher.publish("resume", "busy", &json!({ "n": n })).await.unwrap();
        publisher.publish("resume", "empty", &json!({ "n": n + 10 })).await.unwrap();
    }
    let (mut busy, mut empty, mut reconnected) = (Vec::new(), Vec::new(), false);
    while busy.len() < 2 || empty.len() < 2 || !reconnected {
        match next_item(&mut events).await {
            Incoming::Message(message) if message.channel.as_ref().unwrap().as_str() == "busy" => {
                busy.push(n_of(&message));
            }
            Incoming::Message(message) => empty.push(n_of(&message)),
            Incoming::Reconnected { .. } => reconnected = true,
            Incoming::Truncated { channel } => panic!("nothing was lost in {channel}"),
            _ => {}
        }
    }
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(1), events.next()).await {
        assert!(!matches!(item, Incoming::Message(_)), "unexpected {item:?}");
    }
    // Only what was published after the join: not the older history of busy.
    assert_eq!(busy, vec![10, 11]);
    assert_eq!(empty, vec![20, 21]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_that_cannot_be_replayed_are_counted_when_the_queue_overflows() {
    let server = TestServer::start().await;
    let options = ClientOptions { event_capacity: 4, ..ClientOptions::default() };
    let (subscriber, mut events) = connect_with(&server.url(), options).await;
    subscriber.join("lag", "c").await.unwrap();
    let (publisher, _publisher_events) = connect(&server.url()).await;
    for n in 0..20 {
        publisher.send(Target::Room(Name::parse("lag").unwrap()), &json!({ "n": n })).await.unwrap();
    }
    // Both answers come after the room messages were delivered and read.
    publisher.ping().await.unwrap();
    subscriber.ping().await.unwrap();
    let mut received = Vec::new();
    for _ in 0..4 {
        received.push(n_of(&next_message(&mut events).await));
    }
    assert_eq!(received, vec![0, 1, 2, 3]);
    match next_item(&mut events).await {
        Incoming::Lagged { dropped } => assert_eq!(dropped, 16),
        other => panic!("expected Lagged, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_locally_and_the_connection_stays() {
    let mut config = test_config();
    config.limits.max_message_bytes = 1024;
    let server = TestServer::start_with(config).await;
    let (client, mut events) = connect(&server.url()).await;
    assert_eq!(client.server_info().limits.max_message_bytes, 1024);
    let big = "x".repeat(2000);
    assert_eq!(code(client.publish("big", "c", &big).await), ErrorCode::MessageTooLarge);
    let room = Target::Room(Name::parse("big").unwrap());
    assert_eq!(code(client.send(room, &big).await), ErrorCode::MessageTooLarge);
    assert!(client.ping().await.unwrap().pong);
    assert!(events.try_recv().is_none(), "no disconnect, no error frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_surfaces_the_bus_error_code() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // The signature is tungstenite's.
        #[allow(clippy::result_large_err)]
        let refuse = |_: &tungstenite::handshake::server::Request, _| {
            let body = r#"{"error":{"code":"UNAUTHORIZED","message":"bad or expired token"}}"#;
            Err(tungstenite::http::Response::builder().status(401).body(Some(body.to_owned())).unwrap())
        };
        let _ = tokio_tungstenite::accept_hdr_async(stream, refuse).await;
    });
    let options = ClientOptions { token: Some("expired".to_owned()), ..ClientOptions::default() };
    let result = tokio::time::timeout(WAIT, Client::connect_with(&url, options)).await.unwrap();
    match result {
        Err(ClientError::Rejected { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Unauthorized);
            assert_eq!(message, "bad or expired token");
        }
        other => panic!("expected UNAUTHORIZED, got {other:?}"),
    }
    server.await.unwrap();
}

/// A cluster node that lost Redis says `channel_gap`: the client hands the
/// event on, re-joins from `last_id`, and of the replay delivers only what
/// it had not; live messages after it go on. A scripted bus: m2 never came
/// live, m3 did (out of history's order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_gap_is_repaired_from_last_id() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let id = |n: u8| format!("arq_01JDQ8Z6W3T7M5KX2C9V4B8N{n:02}");
    let (m1, m2, m3, m4, m5) = (id(1), id(2), id(3), id(4), id(5));
    let (joins_tx, mut joins) = mpsc::unbounded_channel::<Value>();
    let bus = {
        let (m1, m2, m3, m4, m5) = (m1.clone(), m2.clone(), m3.clone(), m4.clone(), m5.clone());
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let envelope = |kind: &str, fields: Value| {
                let mut frame = json!({"version": 1, "type": kind, "timestamp": "2026-11-29T12:00:00.123Z"});
                frame.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
                tungstenite::Message::text(frame.to_string())
            };
            let message = |mid: &str, n: u64| {
                envelope("message", json!({"id": mid, "room": "r", "channel": "c", "from": id(9), "payload": {"n": n}}))
            };
            let welcome = json!({"id": id(10), "payload": {
                "event": "welcome", "client_id": id(11), "role": "user", "server_version": "fake", "heartbeat_s": 60,
                "limits": {"max_message_bytes": 1048576, "rate_per_s": 0, "burst": 0}}});
            ws.send(envelope("event", welcome)).await.unwrap();
            let mut joined = 0;
            while let Some(Ok(frame)) = ws.next().await {
                let Ok(text) = frame.to_text() else { continue };
                let Ok(frame) = serde_json::from_str::<Value>(text) else { continue };
                let answer = |payload: Value| {
                    envelope("response", json!({"id": id(12), "request_id": frame["id"], "payload": payload}))
                };
                match frame["command"].as_str() {
                    Some("join_channel") => {
                        joined += 1;
                        joins_tx.send(frame["args"].clone()).unwrap();
                        if joined == 1 {
                            ws.send(answer(json!({"room": "r", "channel": "c", "members": 2}))).await.unwrap();
                        } else {
                            // A live copy before the answer (dropped: the
                            // replay holds it), the answer, the replay since
                            // m1, then live traffic.
                            ws.send(message(&m4, 4)).await.unwrap();
                            ws.send(answer(json!({"room": "r", "channel": "c", "members": 2}))).await.unwrap();
                            for (n, mid) in [(2, &m2), (3, &m3), (4, &m4), (5, &m5)] {
                                ws.send(message(mid, n)).await.unwrap();
                            }
                        }
                    }
                    Some("channel_info") => {
                        let info = json!({"room": "r", "channel": "c", "members": 2,
                            "created_at": "2026-11-29T12:00:00.000Z", "stored": 0, "last_id": null});
                        ws.send(answer(info)).await.unwrap();
                        ws.send(message(&m1, 1)).await.unwrap();
                        ws.send(message(&m3, 3)).await.unwrap();
                        let gap = json!({"event": "channel_gap", "room": "r", "channel": "c", "last_id": m1});
                        ws.send(envelope("event", json!({"id": id(13), "payload": gap}))).await.unwrap();
                    }
                    _ => {}
                }
            }
        })
    };

    let (client, mut events) = connect(&format!("ws://{addr}/ws")).await;
    client.join("r", "c").await.unwrap();
    let mut seen = Vec::new();
    while seen.iter().filter(|s: &&String| s.starts_with("arq_")).count() < 5 {
        match next_item(&mut events).await {
            Incoming::Message(message) => seen.push(message.id.to_string()),
            Incoming::Event(Event::ChannelGap { room, channel, last_id }) => {
                assert_eq!((room.as_str(), channel.as_str()), ("r", "c"));
                assert_eq!(last_id.map(|id| id.to_string()), Some(m1.clone()));
                seen.push("gap".to_owned());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, [m1.as_str(), m3.as_str(), "gap", m2.as_str(), m4.as_str(), m5.as_str()]);
    let first = joins.recv().await.unwrap();
    assert!(first.get("since").is_none(), "{first}");
    assert_eq!(joins.recv().await.unwrap()["since"], m1.as_str());
    client.close().await;
    bus.abort();
}

/// `wss://`: a bus with a self-signed certificate is reached when its
/// certificate is given as a root, refused (certificate unknown) when it is
/// not, and a `tls_roots_pem` that holds no certificate is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_the_bus_certificate_as_a_root() {
    let tls = SelfSigned::new("client");
    let server = TestServer::start_with(tls.config(test_config())).await;
    let url = format!("wss://localhost:{}/ws", server.addr.port());

    let trusted = ClientOptions { tls_roots_pem: Some(tls.cert_pem.clone()), ..ClientOptions::default() };
    let (client, _events) = connect_with(&url, trusted).await;
    client.ping().await.unwrap();
    client.publish("tls", "c", &json!({"n": 1})).await.unwrap();
    assert_eq!(client.channel_info("tls", "c").await.unwrap().stored, 1);
    client.close().await;

    let unknown = ClientOptions { reconnect: false, ..ClientOptions::default() };
    let refused = tokio::time::timeout(WAIT, Client::connect_with(&url, unknown)).await.unwrap();
    let error = refused.expect_err("an unknown certificate is refused").to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");

    let garbage = ClientOptions { tls_roots_pem: Some("not a certificate".to_owned()), ..ClientOptions::default() };
    let refused = tokio::time::timeout(WAIT, Client::connect_with(&url, garbage)).await.unwrap();
    let error = refused.expect_err("no root, no connection").to_string();
    assert!(error.contains("tls_roots_pem holds no certificate"), "{error}");
}
