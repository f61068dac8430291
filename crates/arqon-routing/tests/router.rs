//! The bus core driven through its public API with no network: routing (PROTOCOL.md section 3),
//! commands (section 4), events (section 5), roles, limits, and the `Broker` and `Storage` seams.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arqon_outbound::{Closing, Outbound, SlowCause};
use arqon_protocol::{ChannelKey, ClientId, CloseReason, ErrorCode, Frame, IdGenerator, MessageId, Role, Timestamp};
use arqon_routing::{Arrival, Broker, Delivery, Identity, Inbox, Place, RoomAccess, Router, RouterConfig, Session};
use arqon_storage::{
    AppendNow, Appended, ChannelRecord, ChannelStats, Health, MemoryStorage, Since, Storage, StorageError,
    StoredMessage, async_trait,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Longest wait for a frame that should already be queued.
const WAIT: Duration = Duration::from_secs(5);

/// Defaults, without the rate limits (tests send many frames at once).
fn config() -> RouterConfig {
    RouterConfig { rate_per_s: 0, bytes_per_s: 0, ..RouterConfig::default() }
}

fn router() -> Router {
    router_with(config())
}

fn router_with(config: RouterConfig) -> Router {
    Router::new(config, Arc::new(MemoryStorage::new(1000)))
}

/// Parses a server frame and checks what every server frame must carry.
fn parse_frame(frame: &Frame) -> Value {
    let v: Value = serde_json::from_str(frame.as_str()).unwrap_or_else(|e| panic!("not JSON ({e}): {frame:?}"));
    assert_eq!(v["version"], 1, "{v}");
    MessageId::parse(v["id"].as_str().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {v}"));
    let ts = v["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {v}"));
    assert!(ts.len() == 24 && ts.ends_with('Z'), "{v}");
    Timestamp::parse(ts).unwrap();
    match v["type"].as_str() {
        Some("message" | "response" | "event") => {}
        Some("error") => {
            let code = v["error"]["code"].as_str().unwrap_or_else(|| panic!("no code: {v}"));
            assert!(ErrorCode::from_wire(code).is_some(), "{v}");
            assert!(v["error"]["message"].is_string(), "{v}");
        }
        _ => panic!("bad type: {v}"),
    }
    v
}

/// One connected client: its session, its inbox, and an id source for the
/// frames it sends.
struct Client {
    session: Session,
    inbox: Inbox,
    id: ClientId,
    ids: IdGenerator,
}

impl Client {
    /// Connects and consumes (and checks) the `welcome` event.
    fn connect(router: &Router, role: Role) -> Client {
        Client::connect_as(router, Identity::new(role))
    }

    /// Connects with `identity` and consumes (and checks) the `welcome` event.
    fn connect_as(router: &Router, identity: Identity) -> Client {
        let role = identity.role;
        let (session, inbox) = router.connect(identity).unwrap();
        let id = session.client_id();
        assert_eq!(session.role(), role);
        let mut client = Client { session, inbox, id, ids: IdGenerator::new() };
        let welcome = client.try_next().expect("welcome is queued at connect");
        assert_eq!(welcome["type"], "event");
        assert_eq!(welcome["payload"]["event"], "welcome");
        assert_eq!(welcome["payload"]["client_id"], id.to_string());
        assert_eq!(welcome["payload"]["role"], role.as_str());
        client
    }

    fn id_str(&self) -> String {
        self.id.to_string()
    }

    fn new_id(&mut self) -> MessageId {
        self.ids.message_id()
    }

    async fn send(&mut self, json: &str) {
        self.session.handle_text(json).await;
    }

    async fn send_value(&mut self, frame: Value) {
        self.send(&frame.to_string()).await;
    }

    async fn next_outbound(&mut self) -> Outbound {
        tokio::time::timeout(WAIT, self.inbox.frames.recv())
            .await
            .expect("no frame arrived in time")
            .expect("inbox closed")
    }

    /// The next frame (it must be a single frame, not a batch).
    async fn next(&mut self) -> Value {
        match self.next_outbound().await {
            Outbound::Frame(frame) => parse_frame(&frame),
            Outbound::Spliced(spliced) => parse_frame(&spliced.to_frame()),
            Outbound::Batch(frames) => panic!("expected one frame, got a batch of {}", frames.len()),
            Outbound::Binary(data) => panic!("the bus never sends binary, got {} bytes", data.len()),
        }
    }

    /// The next frame if one is queued.
    fn try_next(&mut self) -> Option<Value> {
        match self.inbox.frames.try_recv() {
            Ok(Outbound::Frame(frame)) => Some(parse_frame(&frame)),
            Ok(Outbound::Spliced(spliced)) => Some(parse_frame(&spliced.to_frame())),
            Ok(Outbound::Batch(frames)) => panic!("expected one frame, got a batch of {}", frames.len()),
            Ok(Outbound::Binary(data)) => panic!("the bus never sends binary, got {} bytes", data.len()),
            Err(_) => None,
        }
    }

    fn assert_quiet(&mut self) {
        if let Some(frame) = self.try_next() {
            panic!("unexpected frame: {frame}");
        }
    }

    /// Sends a command with a fresh id; returns its one answer, checked to
    /// carry that id as `request_id`.
    async fn command(&mut self, name: &str, args: Value) -> Value {
        let id = self.new_id();
        self.send_value(json!({"type": "command", "id": id.to_string(), "command": name, "args": args})).await;
        let reply = self.next().await;
        assert_eq!(reply["request_id"], id.to_string(), "{reply}");
        assert!(matches!(reply["type"].as_str(), Some("response" | "error")), "{reply}");
        reply
    }

    /// A command that must succeed; returns its payload.
    async fn ok(&mut self, name: &str, args: Value) -> Value {
        let reply = self.command(name, args).await;
        assert_eq!(reply["type"], "response", "{name} failed: {reply}");
        reply["payload"].clone()
    }

    /// A command that must fail; returns its error object.
    async fn fail(&mut self, name: &str, args: Value) -> Value {
        let reply = self.command(name, args).await;
        assert_eq!(reply["type"], "error", "{name} succeeded: {reply}");
        reply["error"].clone()
    }

    /// Discards everything queued so far.
    fn drain(&mut self) {
        while self.try_next().is_some() {}
    }

    async fn create(&mut self, room: &str, channel: &str) {
        self.ok("create_channel", json!({"room": room, "channel": channel})).await;
    }

    async fn join(&mut self, room: &str, channel: &str) -> Value {
        self.ok("join_channel", json!({"room": room, "channel": channel})).await
    }

    /// Publishes with the `publish` command; returns the message id.
    async fn publish(&mut self, room: &str, channel: &str, payload: Value) -> MessageId {
        let reply = self.ok("publish", json!({"room": room, "channel": channel, "payload": payload})).await;
        MessageId::parse(reply["id"].as_str().unwrap()).unwrap()
    }

    /// Sends a fire-and-forget message; returns the error it got, if any.
    async fn message(&mut self, frame: Value) -> Option<Value> {
        let mut frame = frame;
        frame["type"] = json!("message");
        self.send_value(frame).await;
        self.try_next()
    }
}

fn code(error_frame: &Value) -> &str {
    error_frame["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error: {error_frame}"))
}

fn key(room: &str, channel: &str) -> ChannelKey {
    ChannelKey::parse(room, channel).unwrap()
}

// ---------------------------------------------------------------------------
// Routing (section 3)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn channel_message_reaches_every_member_but_the_sender() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::Guest);
    let mut c = Client::connect(&router, Role::Guest);
    let mut d = Client::connect(&router, Role::User);
    a.join("r", "c").await;
    b.join("r", "c").await;
    c.join("r", "c").await;
    d.create("r", "other").await;
    d.join("r", "other").await;
    a.drain(); // member_joined of b and c
    b.drain(); // member_joined of c

    let id = a.new_id();
    let sent = json!({"id": id.to_string(), "room": "r", "channel": "c", "payload": {"n": [1, 2.5, "x"]}, "meta": {"trace": "t1"}});
    assert!(a.message(sent).await.is_none());
    for member in [&mut b, &mut c] {
        let got = member.next().await;
        assert_eq!(got["type"], "message");
        assert_eq!(got["id"], id.to_string());
        assert_eq!(got["from"], a.id_str());
        assert_eq!(got["room"], "r");
        assert_eq!(got["channel"], "c");
        assert_eq!(got["payload"], json!({"n": [1, 2.5, "x"]}));
        assert_eq!(got["meta"], json!({"trace": "t1"}));
        assert!(got.get("to").is_none());
        member.assert_quiet();
    }
    a.assert_quiet();
    d.assert_quiet();

    // A client's timestamp is checked, then replaced by server time.
    let theirs = Timestamp::from_unix_ms(Timestamp::now().unix_ms() - 200_000).to_string();
    let before = Timestamp::now();
    assert!(a.message(json!({"room": "r", "channel": "c", "timestamp": theirs})).await.is_none());
    let got = b.next().await;
    assert!(Timestamp::parse(got["timestamp"].as_str().unwrap()).unwrap() >= before, "{got}");
    c.next().await;
    let stale = Timestamp::from_unix_ms(Timestamp::now().unix_ms() - 400_000).to_string();
    let error = a.message(json!({"room": "r", "channel": "c", "timestamp": stale})).await.unwrap();
    assert_eq!(code(&error), "INVALID_TIMESTAMP");
    b.assert_quiet();

    // Without an id the bus assigns one; without a payload none is delivered.
    assert!(a.message(json!({"room": "r", "channel": "c"})).await.is_none());
    let got = b.next().await;
    assert_ne!(got["id"], id.to_string());
    assert!(got.get("payload").is_none());
    assert_eq!(c.next().await["id"], got["id"]);
}

#[tokio::test]
async fn publishing_needs_no_membership_and_auto_creates() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    assert!(a.message(json!({"room": "new", "channel": "c", "payload": 1})).await.is_none());
    let list = a.ok("list_channels", json!({})).await;
    assert_eq!(list["channels"], json!([{"room": "new", "channel": "c", "members": 0}]));
    // Channel messages are stored.
    let history = a.ok("history", json!({"room": "new", "channel": "c"})).await;
    assert_eq!(history["messages"][0]["payload"], 1);

    let router = router_with(RouterConfig { auto_create: false, ..config() });
    let mut a = Client::connect(&router, Role::User);
    let error = a.message(json!({"room": "r", "channel": "c", "payload": 1})).await.unwrap();
    assert_eq!(code(&error), "NOT_FOUND");
    let error = a.fail("publish", json!({"room": "r", "channel": "c", "payload": 1})).await;
    assert_eq!(error["code"], "NOT_FOUND");
    assert_eq!(router.counts().channels, 0);
}

#[tokio::test]
async fn room_message_reaches_each_member_of_the_room_once() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    let mut c = Client::connect(&router, Role::User);
    let mut d = Client::connect(&router, Role::User);
    a.join("r", "c1").await;
    b.join("r", "c1").await;
    b.join("r", "c2").await;
    c.join("r", "c2").await;
    d.join("elsewhere", "c1").await;
    a.drain();
    b.drain();

    let id = a.new_id();
    assert!(a.message(json!({"id": id.to_string(), "room": "r", "payload": "all"})).await.is_none());
    for member in [&mut b, &mut c] {
        let got = member.next().await;
        assert_eq!(got["id"], id.to_string());
        assert_eq!(got["room"], "r");
        assert!(got.get("channel").is_none(), "{got}");
        assert_eq!(got["from"], a.id_str());
        assert_eq!(got["payload"], "all");
        member.assert_quiet(); // b is in two channels of the room: still once
    }
    a.assert_quiet();
    d.assert_quiet();

    // Live only: not in any channel's history.
    for channel in ["c1", "c2"] {
        let history = a.ok("history", json!({"room": "r", "channel": channel})).await;
        assert_eq!(history["messages"], json!([]));
    }
    // A room with no channels.
    let error = a.message(json!({"room": "empty", "payload": 1})).await.unwrap();
    assert_eq!(code(&error), "NOT_FOUND");
}

#[tokio::test]
async fn direct_message_reaches_that_client_only() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::Guest);
    let mut c = Client::connect(&router, Role::Guest);
    a.create("r", "c").await;
    c.join("r", "c").await;
    let mut a_in = Client::connect(&router, Role::Guest);
    a_in.join("r", "c").await;

    let id = a.new_id();
    assert!(a.message(json!({"id": id.to_string(), "to": b.id_str(), "payload": {"hi": true}})).await.is_none());
    let got = b.next().await;
    assert_eq!(got["type"], "message");
    assert_eq!(got["id"], id.to_string());
    assert_eq!(got["from"], a.id_str());
    assert_eq!(got["payload"], json!({"hi": true}));
    assert!(got.get("room").is_none() && got.get("channel").is_none() && got.get("to").is_none(), "{got}");
    b.assert_quiet();
    a.assert_quiet();
    c.drain(); // member_joined of a_in
    c.assert_quiet();

    // Nobody with that id.
    let nobody = IdGenerator::new().client_id();
    let id = a.new_id();
    let error = a.message(json!({"id": id.to_string(), "to": nobody.to_string()})).await.unwrap();
    assert_eq!(code(&error), "NOT_FOUND");
    assert_eq!(error["request_id"], id.to_string());
}

#[tokio::test]
async fn impossible_targets_are_invalid_envelopes() {
    let router = router();
    let mut a = Client::connect(&router, Role::Admin);
    let mut b = Client::connect(&router, Role::Guest);
    let to = b.id_str();
    for frame in [
        json!({}),
        json!({"payload": 1}),
        json!({"to": to, "room": "r"}),
        json!({"to": to, "channel": "c"}),
        json!({"to": to, "room": "r", "channel": "c"}),
        json!({"channel": "c"}),
    ] {
        let id = a.new_id();
        let mut frame = frame;
        frame["id"] = json!(id.to_string());
        let error = a.message(frame.clone()).await.unwrap_or_else(|| panic!("{frame} accepted"));
        assert_eq!(code(&error), "INVALID_ENVELOPE", "{frame}");
        assert_eq!(error["request_id"], id.to_string(), "{frame}");
    }
    b.assert_quiet();
    // The connection stays usable.
    assert_eq!(a.ok("ping", json!({})).await, json!({"pong": true}));
}

#[tokio::test]
async fn decode_errors_are_reported_with_their_request_id() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    a.send("not json").await;
    let error = a.next().await;
    assert_eq!(code(&error), "INVALID_JSON");
    assert!(error.get("request_id").is_none());
    let id = a.new_id();
    a.send(&format!(r#"{{"type":"message","id":"{id}","room":"r","version":2}}"#)).await;
    let error = a.next().await;
    assert_eq!(code(&error), "UNSUPPORTED_VERSION");
    assert_eq!(error["request_id"], id.to_string());
    a.send(r#"{"type":"message","room":"bad name"}"#).await;
    assert_eq!(code(&a.next().await), "INVALID_NAME");
    a.session.handle_binary(2);
    assert_eq!(code(&a.next().await), "UNSUPPORTED_FRAME");
    assert_eq!(a.inbox.frames.closing(), None);
    a.session.handle_oversize();
    assert_eq!(code(&a.next().await), "MESSAGE_TOO_LARGE");
    assert_eq!(a.inbox.frames.closing(), Some(CloseReason::TOO_LARGE.into()));
}

#[tokio::test]
async fn from_must_be_the_sender() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    b.join("r", "c").await;
    let error = a.message(json!({"room": "r", "channel": "c", "from": b.id_str(), "payload": 1})).await.unwrap();
    assert_eq!(code(&error), "FORBIDDEN");
    let id = a.new_id();
    a.send_value(json!({"type": "command", "id": id.to_string(), "command": "ping", "from": b.id_str()})).await;
    let error = a.next().await;
    assert_eq!(code(&error), "FORBIDDEN");
    assert_eq!(error["request_id"], id.to_string());
    b.assert_quiet();
    // Its own id is fine.
    assert!(a.message(json!({"room": "r", "channel": "c", "from": a.id_str(), "payload": 2})).await.is_none());
    assert_eq!(b.next().await["payload"], 2);
}

#[tokio::test]
async fn a_retried_message_is_neither_stored_nor_delivered_again() {
    // Memory appends at once (`append_now` is done).
    retried_message_is_neither_stored_nor_delivered_again(router()).await;
}

#[tokio::test]
async fn through_a_backend_that_appends_later_messages_are_stored_delivered_and_deduplicated() {
    // A yielding backend keeps the default `append_now`, so every publish
    // takes the awaited `append`.
    let storage = Scripted::yielding();
    let probe = StoredMessage { id: IdGenerator::new().message_id(), frame: Frame::from_text("{}") };
    assert_eq!(storage.append_now(&key("r", "probe"), probe.clone()), AppendNow::Later(probe));
    retried_message_is_neither_stored_nor_delivered_again(Router::new(config(), Arc::new(storage))).await;
}

async fn retried_message_is_neither_stored_nor_delivered_again(router: Router) {
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::Guest);
    a.create("r", "c").await;
    b.join("r", "c").await;

    let id = a.new_id();
    let frame = json!({"id": id.to_string(), "room": "r", "channel": "c", "payload": "once"});
    assert!(a.message(frame.clone()).await.is_none());
    assert!(a.message(frame).await.is_none());
    assert_eq!(b.next().await["id"], id.to_string());
    b.assert_quiet();

    // `publish`: the command's id is the message id; a retry gets the same answer.
    let pid = a.new_id();
    let publish = json!({"type": "command", "id": pid.to_string(), "command": "publish",
        "args": {"room": "r", "channel": "c", "payload": "acked"}});
    for _ in 0..2 {
        a.send_value(publish.clone()).await;
        let reply = a.next().await;
        assert_eq!(reply["type"], "response");
        assert_eq!(reply["request_id"], pid.to_string());
        assert_eq!(reply["payload"], json!({"id": pid.to_string()}));
    }
    assert_eq!(b.next().await["id"], pid.to_string());
    b.assert_quiet();
    let history = a.ok("history", json!({"room": "r", "channel": "c"})).await;
    let ids: Vec<&Value> = history["messages"].as_array().unwrap().iter().map(|m| &m["id"]).collect();
    assert_eq!(ids, [&json!(id.to_string()), &json!(pid.to_string())]);
}

#[tokio::test]
async fn one_senders_messages_arrive_in_order() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::Guest);
    a.create("r", "c").await;
    b.join("r", "c").await;
    for n in 0..200 {
        assert!(a.message(json!({"room": "r", "channel": "c", "payload": n})).await.is_none());
    }
    for n in 0..200 {
        assert_eq!(b.next().await["payload"], n);
    }
    b.assert_quiet();
}

/// Publishers on several threads into two channels while the subscribers
/// drain on others: each subscriber gets every message once, each
/// publisher's in the order it sent them (a channel's frames go through its
/// shared fanout chunks and the queues' runs, which a push extends while the
/// writer takes what came before), and every subscriber gets a channel's
/// messages in the same order (a publish, whether it waited for the
/// channel's order lock or took it at once, delivers under it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_reach_every_member_once_in_order() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 400;
    let router = router();
    let mut setup = Client::connect(&router, Role::User);
    setup.create("r", "c").await;
    setup.create("r", "d").await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut sub = Client::connect(&router, Role::User);
        sub.join("r", "c").await;
        sub.join("r", "d").await;
        sub.drain();
        readers.push(tokio::spawn(async move {
            let mut seen = vec![Vec::new(); PUBLISHERS];
            // Per channel (c, d): the (publisher, n) pairs in arrival order.
            let mut order = [Vec::new(), Vec::new()];
            let mut total = 0;
            while total < PUBLISHERS * EACH {
                let frame = sub.next().await;
                if frame["type"] != "message" {
                    continue;
                }
                let (p, n) = (frame["payload"]["p"].as_u64().unwrap(), frame["payload"]["n"].as_u64().unwrap());
                let channel = if n % 3 == 2 { "d" } else { "c" };
                assert_eq!(frame["channel"], channel, "{frame}");
                seen[usize::try_from(p).unwrap()].push(n);
                order[usize::from(channel == "d")].push((p, n));
                total += 1;
                // Hand the thread over now and then, so pushes land while
                // this reader is between two takes.
                if total % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            while let Some(frame) = sub.try_next() {
                assert_ne!(frame["type"], "message", "one too many: {frame}");
            }
            // Kept to the end: a reader leaving would send the others member events.
            (seen, order, sub)
        }));
    }
    // The publishers are members too: their own messages skip their queues,
    // so a run must never grow across the gap.
    let mut joined = Vec::new();
    for _ in 0..PUBLISHERS {
        let mut publisher = Client::connect(&router, Role::User);
        publisher.join("r", "c").await;
        publisher.join("r", "d").await;
        joined.push(publisher);
    }
    let publishers: Vec<_> = joined
        .into_iter()
        .enumerate()
        .map(|(p, mut publisher)| {
            tokio::spawn(async move {
                for n in 0..EACH {
                    let channel = if n % 3 == 2 { "d" } else { "c" };
                    let frame =
                        json!({"type": "message", "room": "r", "channel": channel, "payload": {"p": p, "n": n}});
                    publisher.send_value(frame).await;
                }
                publisher
            })
        })
        .collect();
    let mut done = Vec::new();
    for publisher in publishers {
        done.push(publisher.await.unwrap());
    }
    let expected: Vec<u64> = (0..EACH as u64).collect();
    for (me, publisher) in done.iter_mut().enumerate() {
        let mut seen = vec![Vec::new(); PUBLISHERS];
        while let Some(frame) = publisher.try_next() {
            if frame["type"] == "message" {
                let (p, n) = (frame["payload"]["p"].as_u64().unwrap(), frame["payload"]["n"].as_u64().unwrap());
                seen[usize::try_from(p).unwrap()].push(n);
            }
        }
        for (p, got) in seen.iter().enumerate() {
            let want: &[u64] = if p == me { &[] } else { &expected };
            assert_eq!(got, want, "publisher {me} from {p}: the others' messages once, in order, never its own");
        }
    }
    let mut first_order = None;
    for reader in readers {
        let (seen, order, _sub) = tokio::time::timeout(WAIT, reader).await.expect("every message arrives").unwrap();
        for (p, got) in seen.iter().enumerate() {
            assert_eq!(got, &expected, "publisher {p}: every message once, in order");
        }
        match &first_order {
            None => first_order = Some(order),
            Some(first) => assert!(*first == order, "two subscribers saw a channel's messages in different orders"),
        }
    }
}

// ---------------------------------------------------------------------------
// Commands (section 4)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ping_status_and_help() {
    let router = router();
    let mut a = Client::connect(&router, Role::Guest);
    let mut u = Client::connect(&router, Role::User);
    assert_eq!(a.ok("ping", json!({})).await, json!({"pong": true}));
    // `args` may be left out.
    let id = a.new_id();
    a.send_value(json!({"type": "command", "id": id.to_string(), "command": "ping"})).await;
    assert_eq!(a.next().await["payload"], json!({"pong": true}));

    u.join("r", "c1").await;
    u.join("r", "c2").await;
    u.join("s", "c1").await;
    let status = a.ok("status", json!({})).await;
    assert_eq!(status["version"], RouterConfig::default().server_version);
    assert!(status["uptime_s"].is_u64(), "{status}");
    assert_eq!(status["connections"], 2);
    assert_eq!(status["rooms"], 2);
    assert_eq!(status["channels"], 3);
    assert_eq!(status["storage"], json!({"backend": "memory", "healthy": true, "journaled": 0, "refused": 0}));
    drop(u);
    assert_eq!(a.ok("status", json!({})).await["connections"], 1);

    let help = a.ok("help", json!({})).await;
    let names: Vec<&str> = help["commands"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
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
    for command in help["commands"].as_array().unwrap() {
        assert!(command["description"].as_str().is_some_and(|d| !d.is_empty()), "{command}");
        assert!(command["args"].is_array(), "{command}");
        let allowed = command["role"] == "guest" && command["api_only"] == false;
        assert_eq!(command["allowed"], allowed, "{command}");
    }
    let history = &help["commands"][9];
    let arg_names: Vec<&str> =
        history["args"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(arg_names, ["room", "channel", "limit", "before"]);
}

#[tokio::test]
async fn create_join_leave_list_and_info() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    let mut g = Client::connect(&router, Role::Guest);

    let created = a.ok("create_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(created, json!({"room": "r", "channel": "c", "created": true}));
    let again = a.ok("create_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(again, json!({"room": "r", "channel": "c", "created": false}));

    assert_eq!(a.join("r", "c").await, json!({"room": "r", "channel": "c", "members": 1}));
    assert_eq!(g.join("r", "c").await, json!({"room": "r", "channel": "c", "members": 2}));
    // Joining twice changes nothing.
    assert_eq!(g.join("r", "c").await["members"], 2);
    assert_eq!(a.next().await["payload"]["event"], "member_joined");
    a.assert_quiet();
    a.ok("create_channel", json!({"room": "a", "channel": "z"})).await;
    a.ok("create_channel", json!({"room": "r", "channel": "b"})).await;

    let list = g.ok("list_channels", json!({})).await;
    assert_eq!(
        list["channels"],
        json!([
            {"room": "a", "channel": "z", "members": 0},
            {"room": "r", "channel": "b", "members": 0},
            {"room": "r", "channel": "c", "members": 2},
        ])
    );
    let list = g.ok("list_channels", json!({"room": "r"})).await;
    assert_eq!(list["channels"].as_array().unwrap().len(), 2);
    assert_eq!(g.ok("list_channels", json!({"room": "none"})).await, json!({"channels": []}));

    let before = Timestamp::now();
    let published = a.publish("r", "c", json!(1)).await;
    assert_eq!(g.next().await["id"], published.to_string());
    let info = g.ok("channel_info", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(info["room"], "r");
    assert_eq!(info["channel"], "c");
    assert_eq!(info["members"], 2);
    assert_eq!(info["stored"], 1);
    assert_eq!(info["last_id"], published.to_string());
    let created_at = Timestamp::parse(info["created_at"].as_str().unwrap()).unwrap();
    assert!(created_at <= before, "{info}");
    let empty = g.ok("channel_info", json!({"room": "r", "channel": "b"})).await;
    assert_eq!(empty["stored"], 0);
    assert_eq!(empty["last_id"], Value::Null);
    assert_eq!(g.fail("channel_info", json!({"room": "r", "channel": "nope"})).await["code"], "NOT_FOUND");

    assert_eq!(
        g.ok("leave_channel", json!({"room": "r", "channel": "c"})).await,
        json!({"room": "r", "channel": "c", "left": true})
    );
    assert_eq!(g.ok("leave_channel", json!({"room": "r", "channel": "c"})).await["left"], false);
    assert_eq!(g.ok("leave_channel", json!({"room": "r", "channel": "nope"})).await["left"], false);
    assert_eq!(g.ok("channel_info", json!({"room": "r", "channel": "c"})).await["members"], 1);
    // A message after leaving does not reach the former member.
    assert_eq!(a.next().await["payload"]["event"], "member_left");
    g.assert_quiet();
    a.publish("r", "c", json!(2)).await;
    g.assert_quiet();
}

#[tokio::test]
async fn join_auto_creates_for_users_only() {
    let router = router();
    let mut g = Client::connect(&router, Role::Guest);
    let mut u = Client::connect(&router, Role::User);
    assert_eq!(g.fail("join_channel", json!({"room": "r", "channel": "c"})).await["code"], "NOT_FOUND");
    assert_eq!(router.counts().channels, 0);
    assert_eq!(u.join("r", "c").await["members"], 1);
    assert_eq!(g.join("r", "c").await["members"], 2);

    let router = router_with(RouterConfig { auto_create: false, ..config() });
    let mut u = Client::connect(&router, Role::User);
    assert_eq!(u.fail("join_channel", json!({"room": "r", "channel": "c"})).await["code"], "NOT_FOUND");
    // create_channel works regardless.
    u.ok("create_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(u.join("r", "c").await["members"], 1);
}

#[tokio::test]
async fn history_is_storage_order_with_limit_and_before() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::Guest);
    a.create("r", "c").await;
    b.join("r", "c").await;
    // Ids not in time order: history follows the order the bus stored them.
    let mut ids: Vec<MessageId> = (0..6).map(|_| a.new_id()).collect();
    ids.reverse();
    let mut live = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        a.send_value(json!({"type": "message", "id": id.to_string(), "room": "r", "channel": "c", "payload": n, "meta": {"n": n.to_string()}})).await;
        live.push(b.next().await);
    }
    let history = b.ok("history", json!({"room": "r", "channel": "c"})).await;
    // Stored messages are the envelopes exactly as delivered live.
    assert_eq!(history["messages"], Value::Array(live.clone()));

    let history = b.ok("history", json!({"room": "r", "channel": "c", "limit": 2})).await;
    assert_eq!(history["messages"], json!(live[4..]));
    let history = b.ok("history", json!({"room": "r", "channel": "c", "limit": 2, "before": ids[3].to_string()})).await;
    assert_eq!(history["messages"], json!(live[1..3]));
    let history = b.ok("history", json!({"room": "r", "channel": "c", "before": ids[0].to_string()})).await;
    assert_eq!(history["messages"], json!([]));

    let unknown = IdGenerator::new().message_id();
    let error = b.fail("history", json!({"room": "r", "channel": "c", "before": unknown.to_string()})).await;
    assert_eq!(error["code"], "NOT_FOUND");
    for limit in [json!(0), json!(1001), json!("5"), json!(-1), json!(2.5)] {
        let error = b.fail("history", json!({"room": "r", "channel": "c", "limit": limit})).await;
        assert_eq!(error["code"], "INVALID_ARGS", "{limit}");
        assert!(error["message"].as_str().unwrap().contains("limit"), "{error}");
    }
    assert_eq!(b.ok("history", json!({"room": "r", "channel": "c", "limit": 1000})).await["messages"], json!(live));
    assert_eq!(b.fail("history", json!({"room": "r", "channel": "none"})).await["code"], "NOT_FOUND");

    // The default limit is 50, newest kept.
    for n in 0..60 {
        a.publish("r", "d", json!(n)).await;
    }
    let history = b.ok("history", json!({"room": "r", "channel": "d"})).await;
    let payloads: Vec<Value> = history["messages"].as_array().unwrap().iter().map(|m| m["payload"].clone()).collect();
    assert_eq!(payloads, (10..60).map(|n| json!(n)).collect::<Vec<_>>());
}

#[tokio::test]
async fn publish_answers_with_the_id_once_delivered() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::Guest);
    a.create("r", "c").await;
    b.join("r", "c").await;
    let id = a.new_id();
    a.send_value(json!({"type": "command", "id": id.to_string(), "command": "publish",
        "args": {"room": "r", "channel": "c", "payload": [null, {"deep": true}], "meta": {"k": "v"}}}))
        .await;
    let reply = a.next().await;
    assert_eq!(reply["type"], "response");
    assert_eq!(reply["payload"], json!({"id": id.to_string()}));
    let got = b.next().await;
    assert_eq!(got["id"], id.to_string());
    assert_eq!(got["from"], a.id_str());
    assert_eq!(got["room"], "r");
    assert_eq!(got["channel"], "c");
    assert_eq!(got["payload"], json!([null, {"deep": true}]));
    assert_eq!(got["meta"], json!({"k": "v"}));

    // Without a command id, the bus assigns the message id.
    a.send(r#"{"type":"command","command":"publish","args":{"room":"r","channel":"c","payload":null}}"#).await;
    let reply = a.next().await;
    assert!(reply.get("request_id").is_none());
    let got = b.next().await;
    assert_eq!(reply["payload"]["id"], got["id"]);
    assert_eq!(got["payload"], Value::Null);
}

#[tokio::test]
async fn command_errors_follow_the_contract() {
    let router = router();
    let mut a = Client::connect(&router, Role::Admin);
    assert_eq!(a.fail("nope", json!({})).await["code"], "UNKNOWN_COMMAND");
    // UNKNOWN_COMMAND outranks bad names and args.
    assert_eq!(a.fail("nope", json!({"room": "bad name"})).await["code"], "UNKNOWN_COMMAND");
    for (command, args, expected, field) in [
        ("create_channel", json!({"room": "r"}), "INVALID_ARGS", "channel"),
        ("create_channel", json!({"room": "r", "channel": 5}), "INVALID_ARGS", "channel"),
        ("create_channel", json!({"room": "r", "channel": "c", "extra": 1}), "INVALID_ARGS", "extra"),
        ("ping", json!({"x": 1}), "INVALID_ARGS", "x"),
        ("publish", json!({"room": "r", "channel": "c"}), "INVALID_ARGS", "payload"),
        ("publish", json!({"room": "r", "channel": "c", "payload": 1, "meta": {"a": 1}}), "INVALID_ARGS", "meta"),
        ("join_channel", json!({"room": "r", "channel": "c", "since": "yesterday"}), "INVALID_ARGS", "since"),
        ("create_channel", json!({"room": "r", "channel": "bad name"}), "INVALID_NAME", "bad name"),
        ("list_channels", json!({"room": "x/y"}), "INVALID_NAME", "x/y"),
        // INVALID_NAME outranks INVALID_ARGS.
        ("history", json!({"room": "a b", "limit": 0, "extra": true}), "INVALID_NAME", "a b"),
    ] {
        let error = a.fail(command, args.clone()).await;
        assert_eq!(error["code"], expected, "{command} {args}");
        assert!(error["message"].as_str().unwrap().contains(field), "{command} {args}: {error}");
    }
    // INVALID_ARGS outranks FORBIDDEN.
    let mut g = Client::connect(&router, Role::Guest);
    assert_eq!(g.fail("delete_channel", json!({"room": "r"})).await["code"], "INVALID_ARGS");
    assert_eq!(g.fail("delete_channel", json!({"room": "r", "channel": "c"})).await["code"], "FORBIDDEN");
    // FORBIDDEN outranks NOT_FOUND.
    assert_eq!(a.fail("delete_channel", json!({"room": "r", "channel": "c"})).await["code"], "NOT_FOUND");
}

/// A sender's messages go to the channel that exists when each is sent, not
/// to the one it sent to last (the session keeps that one to skip the
/// channel table): after a delete, the next message fails without
/// auto-create, and reaches the re-created channel's members once it exists.
#[tokio::test]
async fn a_senders_next_message_follows_a_deleted_and_recreated_channel() {
    let router = router_with(RouterConfig { auto_create: false, ..config() });
    let mut admin = Client::connect(&router, Role::Admin);
    let mut sender = Client::connect(&router, Role::User);
    let mut reader = Client::connect(&router, Role::Guest);
    admin.create("r", "c").await;
    reader.join("r", "c").await;
    assert!(sender.message(json!({"room": "r", "channel": "c", "payload": 1})).await.is_none());
    assert_eq!(reader.next().await["payload"], 1);

    admin.ok("delete_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(reader.next().await["payload"]["event"], "channel_deleted");
    let refused = sender.message(json!({"room": "r", "channel": "c", "payload": 2})).await.expect("an error");
    assert_eq!(code(&refused), "NOT_FOUND", "{refused}");

    admin.create("r", "c").await;
    reader.join("r", "c").await;
    assert!(sender.message(json!({"room": "r", "channel": "c", "payload": 3})).await.is_none());
    assert_eq!(reader.next().await["payload"], 3);
    let history = admin.ok("history", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 1, "only the new channel's message: {history}");
    reader.assert_quiet();
}

#[tokio::test]
async fn delete_channel_tells_its_members_and_ends_their_membership() {
    let router = router();
    let mut admin = Client::connect(&router, Role::Admin);
    let mut b = Client::connect(&router, Role::User);
    let mut c = Client::connect(&router, Role::Guest);
    b.join("r", "c").await;
    c.join("r", "c").await;
    admin.join("r", "keep").await;
    b.drain(); // member_joined of c
    b.publish("r", "c", json!("old")).await;
    c.drain(); // the message

    let deleted = admin.ok("delete_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(deleted, json!({"room": "r", "channel": "c", "deleted": true}));
    for member in [&mut b, &mut c] {
        let event = member.next().await;
        assert_eq!(event["type"], "event");
        assert_eq!(event["payload"], json!({"event": "channel_deleted", "room": "r", "channel": "c"}));
        member.assert_quiet();
    }
    admin.assert_quiet(); // not a member
    assert_eq!(admin.fail("delete_channel", json!({"room": "r", "channel": "c"})).await["code"], "NOT_FOUND");
    assert_eq!(admin.fail("channel_info", json!({"room": "r", "channel": "c"})).await["code"], "NOT_FOUND");
    assert_eq!(
        admin.ok("list_channels", json!({})).await["channels"],
        json!([{"room": "r", "channel": "keep", "members": 1}])
    );

    // Re-created, it is a new, empty channel: no members, no history.
    admin.ok("create_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(admin.ok("channel_info", json!({"room": "r", "channel": "c"})).await["members"], 0);
    assert_eq!(admin.ok("history", json!({"room": "r", "channel": "c"})).await["messages"], json!([]));
    admin.publish("r", "c", json!("new")).await;
    b.assert_quiet();
    c.assert_quiet();
    // A former member disconnecting leaves nothing behind and tells nobody.
    let mut d = Client::connect(&router, Role::Guest);
    d.join("r", "c").await;
    drop(b);
    d.assert_quiet();
    assert_eq!(d.ok("channel_info", json!({"room": "r", "channel": "c"})).await["members"], 1);

    // An admin deleting a channel it is in gets the event too, after the response.
    admin.join("r", "c").await;
    d.drain(); // member_joined of admin
    admin.ok("delete_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(admin.next().await["payload"]["event"], "channel_deleted");
    assert_eq!(d.next().await["payload"]["event"], "channel_deleted");
    assert_eq!(router.counts().rooms, 1);
}

// ---------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------

/// One thing a client can do, and the least role that may do it.
struct Op {
    name: &'static str,
    least: Role,
    /// The frame to send, given the id of a connected guest member of `r/c`.
    frame: fn(&str) -> Value,
}

fn ops() -> Vec<Op> {
    fn cmd(command: &str, args: Value) -> Value {
        json!({"type": "command", "command": command, "args": args})
    }
    vec![
        Op { name: "ping", least: Role::Guest, frame: |_| cmd("ping", json!({})) },
        Op { name: "status", least: Role::Guest, frame: |_| cmd("status", json!({})) },
        Op { name: "help", least: Role::Guest, frame: |_| cmd("help", json!({})) },
        Op {
            name: "create_channel",
            least: Role::User,
            frame: |_| cmd("create_channel", json!({"room": "r", "channel": "new"})),
        },
        Op {
            name: "delete_channel",
            least: Role::Admin,
            frame: |_| cmd("delete_channel", json!({"room": "r", "channel": "c"})),
        },
        Op {
            name: "join_channel",
            least: Role::Guest,
            frame: |_| cmd("join_channel", json!({"room": "r", "channel": "c"})),
        },
        Op {
            name: "leave_channel",
            least: Role::Guest,
            frame: |_| cmd("leave_channel", json!({"room": "r", "channel": "c"})),
        },
        Op { name: "list_channels", least: Role::Guest, frame: |_| cmd("list_channels", json!({})) },
        Op {
            name: "channel_info",
            least: Role::Guest,
            frame: |_| cmd("channel_info", json!({"room": "r", "channel": "c"})),
        },
        Op { name: "history", least: Role::Guest, frame: |_| cmd("history", json!({"room": "r", "channel": "c"})) },
        Op {
            name: "publish",
            least: Role::User,
            frame: |_| cmd("publish", json!({"room": "r", "channel": "c", "payload": 1})),
        },
        Op {
            name: "message to a channel",
            least: Role::User,
            frame: |_| json!({"type": "message", "room": "r", "channel": "c", "payload": 1}),
        },
        Op {
            name: "message to a room",
            least: Role::User,
            frame: |_| json!({"type": "message", "room": "r", "payload": 1}),
        },
        Op {
            name: "direct message",
            least: Role::User,
            frame: |to| json!({"type": "message", "to": to, "payload": 1}),
        },
    ]
}

#[tokio::test]
async fn each_role_may_do_exactly_what_its_rank_allows() {
    for role in [Role::Guest, Role::User, Role::Admin] {
        for op in ops() {
            let router = router();
            let mut admin = Client::connect(&router, Role::Admin);
            admin.ok("create_channel", json!({"room": "r", "channel": "c"})).await;
            let mut target = Client::connect(&router, Role::Guest);
            target.join("r", "c").await;
            let mut client = Client::connect(&router, role);

            let id = client.new_id();
            let mut frame = (op.frame)(&target.id_str());
            frame["id"] = json!(id.to_string());
            client.send_value(frame).await;
            let reply = client.try_next();
            let what = format!("{} as {role}", op.name);
            if role >= op.least {
                match reply {
                    // Commands answer; allowed messages are silent and arrive.
                    Some(reply) => assert_eq!(reply["type"], "response", "{what}: {reply}"),
                    None => {
                        assert!(op.name.contains("message"), "{what}: no answer");
                        let got = target.next().await;
                        assert_eq!(got["id"], id.to_string(), "{what}");
                    }
                }
            } else {
                let reply = reply.unwrap_or_else(|| panic!("{what}: no answer"));
                assert_eq!(code(&reply), "FORBIDDEN", "{what}");
                assert_eq!(reply["request_id"], id.to_string(), "{what}");
                target.assert_quiet();
                // Refused: nothing happened.
                assert_eq!(router.counts().channels, 1, "{what}");
            }
        }

        // `help` agrees with the table.
        let router = router();
        let mut client = Client::connect(&router, role);
        let help = client.ok("help", json!({})).await;
        for op in ops().iter().filter(|op| !op.name.contains("message")) {
            let entry = help["commands"].as_array().unwrap().iter().find(|c| c["name"] == op.name).unwrap();
            assert_eq!(entry["role"], op.least.as_str(), "{}", op.name);
            assert_eq!(entry["allowed"], role >= op.least, "{} as {role}", op.name);
        }
    }
}

#[tokio::test]
async fn auto_create_needs_role_user() {
    for (role, expected) in [(Role::Guest, "FORBIDDEN"), (Role::User, "ok"), (Role::Admin, "ok")] {
        let router = router();
        let mut client = Client::connect(&router, role);
        let outcome = client.message(json!({"room": "fresh", "channel": "c", "payload": 1})).await;
        assert_eq!(outcome.as_ref().map_or("ok", code), expected, "message as {role}");
        let reply = client.command("publish", json!({"room": "fresh", "channel": "d", "payload": 1})).await;
        assert_eq!(if reply["type"] == "error" { code(&reply) } else { "ok" }, expected, "publish as {role}");
        // Joining a missing channel: guests get NOT_FOUND, not FORBIDDEN.
        let reply = client.command("join_channel", json!({"room": "fresh", "channel": "e"})).await;
        let expected = if role == Role::Guest { "NOT_FOUND" } else { "ok" };
        assert_eq!(if reply["type"] == "error" { code(&reply) } else { "ok" }, expected, "join as {role}");
    }
}

#[tokio::test]
async fn every_connection_gets_a_fresh_client_id() {
    let router = router();
    let first = Client::connect_as(&router, Identity::new(Role::User).with_user("ann"));
    let second = Client::connect_as(&router, Identity::new(Role::User).with_user("ann"));
    assert_ne!(first.id, second.id);
    assert_eq!(router.counts().connections, 2);
    drop(first);
    assert_eq!(router.counts().connections, 1);
}

// ---------------------------------------------------------------------------
// join_channel with since
// ---------------------------------------------------------------------------

/// Reads the answer to a `join_channel` with `since`, then the replay batch
/// that must follow it at once (if any); returns (response payload, replayed).
async fn join_since(client: &mut Client, room: &str, channel: &str, since: MessageId) -> (Value, Vec<Value>) {
    let payload =
        client.ok("join_channel", json!({"room": room, "channel": channel, "since": since.to_string()})).await;
    let replayed = match client.inbox.frames.try_recv() {
        Ok(Outbound::Batch(frames)) => {
            assert!(!frames.is_empty(), "empty batch");
            frames.iter().map(parse_frame).collect()
        }
        Ok(Outbound::Frame(frame)) => panic!("expected the replay batch, got {frame:?}"),
        Ok(Outbound::Spliced(spliced)) => panic!("expected the replay batch, got {spliced:?}"),
        Ok(Outbound::Binary(data)) => panic!("the bus never sends binary, got {} bytes", data.len()),
        Err(_) => Vec::new(),
    };
    (payload, replayed)
}

#[tokio::test]
async fn join_since_replays_stored_messages_as_one_batch_before_live_ones() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    let mut watcher = Client::connect(&router, Role::Guest);
    a.create("r", "c").await;
    watcher.join("r", "c").await;
    let mut ids = Vec::new();
    let mut live = Vec::new();
    for n in 0..10 {
        ids.push(a.publish("r", "c", json!(n)).await);
        live.push(watcher.next().await);
    }

    let mut b = Client::connect(&router, Role::Guest);
    let (payload, replayed) = join_since(&mut b, "r", "c", ids[3]).await;
    assert_eq!(payload["members"], 2);
    assert_ne!(payload["truncated"], true);
    // Exactly what was delivered live after the cursor, as it was delivered.
    assert_eq!(replayed, live[4..]);
    a.publish("r", "c", json!("live")).await;
    assert_eq!(b.next().await["payload"], "live");
    b.assert_quiet();

    // Since the newest: nothing to replay, no batch.
    let newest = a.publish("r", "c", json!("newest")).await;
    let mut c = Client::connect(&router, Role::Guest);
    let (_, replayed) = join_since(&mut c, "r", "c", newest).await;
    assert!(replayed.is_empty());
    c.assert_quiet();

    // An unknown cursor: everything kept, flagged as truncated.
    let mut d = Client::connect(&router, Role::Guest);
    let (payload, replayed) = join_since(&mut d, "r", "c", IdGenerator::new().message_id()).await;
    assert_eq!(payload["truncated"], true);
    assert_eq!(replayed.len(), 12);
    assert_eq!(replayed[..10], live[..]);
}

#[tokio::test]
async fn join_since_an_evicted_cursor_is_truncated() {
    let router = Router::new(config(), Arc::new(MemoryStorage::new(3)));
    let mut a = Client::connect(&router, Role::User);
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(a.publish("r", "c", json!(n)).await);
    }
    let mut b = Client::connect(&router, Role::Guest);
    let (payload, replayed) = join_since(&mut b, "r", "c", ids[1]).await;
    assert_eq!(payload["truncated"], true);
    let got: Vec<&Value> = replayed.iter().map(|m| &m["payload"]).collect();
    assert_eq!(got, [&json!(3), &json!(4), &json!(5)]);
    let (payload, replayed) = join_since(&mut b, "r", "c", ids[4]).await;
    assert_ne!(payload["truncated"], true);
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0]["id"], ids[5].to_string());
}

#[tokio::test]
async fn a_replay_counts_its_bytes_against_the_backlog() {
    async fn replay_of_forty(max_backlog_bytes: usize) -> (Client, Vec<Value>) {
        let router = router_with(RouterConfig { max_backlog_bytes, ..config() });
        let mut a = Client::connect(&router, Role::User);
        let first = a.publish("r", "c", json!(0)).await;
        for n in 1..=40 {
            a.publish("r", "c", json!({ "n": n, "pad": "x".repeat(100) })).await;
        }
        let mut b = Client::connect(&router, Role::Guest);
        let (_, replayed) = join_since(&mut b, "r", "c", first).await;
        (b, replayed)
    }
    // 40 messages of about 300 bytes: whole within 64 KiB, and live
    // traffic follows.
    let (b, replayed) = replay_of_forty(64 * 1024).await;
    assert_eq!(replayed.len(), 40);
    assert_eq!(b.inbox.frames.closing(), None);
    // Within 4 KiB they do not fit: the replay is not queued, and the
    // joiner is closed as a slow consumer rather than sent part of it.
    let router = router_with(RouterConfig { max_backlog_bytes: 4096, ..config() });
    let mut a = Client::connect(&router, Role::User);
    let first = a.publish("r", "c", json!(0)).await;
    for n in 1..=40 {
        a.publish("r", "c", json!({ "n": n, "pad": "x".repeat(100) })).await;
    }
    let mut b = Client::connect(&router, Role::Guest);
    let id = b.new_id();
    b.send_value(json!({"type": "command", "id": id, "command": "join_channel",
                        "args": {"room": "r", "channel": "c", "since": first}}))
        .await;
    assert_eq!(b.inbox.frames.closing(), Some(Closing::slow(SlowCause::Backlog)));
    assert!(b.inbox.frames.recv().await.is_none(), "what was queued is dropped");
}

/// Memory storage with the waits of a real backend where a test wants them.
struct Scripted {
    memory: MemoryStorage,
    waits: Waits,
}

enum Waits {
    /// Yields to the scheduler inside its calls, so that publishers and
    /// joiners interleave at the storage await points; it keeps the default
    /// `append_now`, so every publish waits for its append.
    Yielding,
    /// Appends at once, but a join's replay (`since`) waits for a permit.
    GatedReplay(tokio::sync::Semaphore),
}

impl Scripted {
    fn yielding() -> Self {
        Scripted { memory: MemoryStorage::new(1000), waits: Waits::Yielding }
    }

    fn gated_replay() -> Self {
        Scripted { memory: MemoryStorage::new(1000), waits: Waits::GatedReplay(tokio::sync::Semaphore::new(0)) }
    }

    async fn yield_if_yielding(&self) {
        if let Waits::Yielding = self.waits {
            tokio::task::yield_now().await;
        }
    }
}

#[async_trait]
impl Storage for Scripted {
    async fn create_channel(&self, key: &ChannelKey, at: Timestamp) -> Result<(ChannelRecord, bool), StorageError> {
        self.yield_if_yielding().await;
        self.memory.create_channel(key, at).await
    }
    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        self.memory.channels().await
    }
    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        self.memory.delete_channel(key).await
    }
    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        self.yield_if_yielding().await;
        let appended = self.memory.append(key, message).await;
        self.yield_if_yielding().await;
        appended
    }
    fn append_now(&self, key: &ChannelKey, message: StoredMessage) -> AppendNow {
        match self.waits {
            Waits::Yielding => AppendNow::Later(message),
            Waits::GatedReplay(_) => self.memory.append_now(key, message),
        }
    }
    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        self.memory.history(key, limit, before).await
    }
    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        let _permit = match &self.waits {
            Waits::GatedReplay(gate) => Some(gate.acquire().await.map_err(|e| StorageError::Backend(e.to_string()))?),
            Waits::Yielding => None,
        };
        self.yield_if_yielding().await;
        let since = self.memory.since(key, after).await;
        self.yield_if_yielding().await;
        since
    }
    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        self.memory.stats(key).await
    }
    fn health(&self) -> Health {
        self.memory.health()
    }
}

fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

#[tokio::test]
async fn a_message_routed_without_waiting_never_overtakes_a_join_that_holds_the_order() {
    let storage = Arc::new(Scripted::gated_replay());
    let router = Router::new(config(), Arc::clone(&storage) as Arc<dyn Storage>);
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::Guest);
    let ids: Vec<MessageId> = (0..3).map(|_| a.new_id()).collect();
    let texts: Vec<String> = (0..3)
        .map(|n| {
            json!({"type": "message", "id": ids[n].to_string(), "room": "r", "channel": "c", "payload": n}).to_string()
        })
        .collect();

    // A first message to a channel waits (for its creation); the next one
    // to the same channel is routed with nothing left to await.
    a.session.handle_text_now(&texts[0], Arrival::now()).expect("a first message waits for its channel").await;
    assert!(a.session.handle_text_now(&texts[1], Arrival::now()).is_none(), "routed at once");

    // b joins since the first: the join holds the channel's order while its
    // replay is read, and the read waits for the gate.
    let join = json!({"type": "command", "id": b.new_id().to_string(), "command": "join_channel",
                      "args": {"room": "r", "channel": "c", "since": ids[0].to_string()}})
    .to_string();
    let mut joining = Box::pin(b.session.handle_text(&join));
    assert!(poll_once(joining.as_mut()).is_pending(), "the replay read waits for the gate");
    // Meanwhile a message comes: it finds the order held, so it is left to
    // await, and waiting it neither stores nor delivers anything.
    let rest = a.session.handle_text_now(&texts[2], Arrival::now()).expect("the order is held: the message waits");
    let mut publishing = Box::pin(rest);
    assert!(poll_once(publishing.as_mut()).is_pending());
    assert_eq!(storage.memory.stats(&key("r", "c")).await.unwrap().stored, 2);

    if let Waits::GatedReplay(gate) = &storage.waits {
        gate.add_permits(1);
    }
    joining.await;
    publishing.await;
    drop(a);
    let joined = b.next().await;
    assert_eq!(joined["type"], "response", "{joined}");
    let replayed = match b.next_outbound().await {
        Outbound::Batch(frames) => frames.iter().map(|f| parse_frame(f)["payload"].clone()).collect::<Vec<_>>(),
        other => panic!("expected the replay, got {other:?}"),
    };
    assert_eq!(replayed, [json!(1)], "the replay holds what came before the join");
    assert_eq!(b.next().await["payload"], 2, "the message that waited comes after it, live");
    b.assert_quiet();
}

#[tokio::test]
async fn join_since_during_publishing_misses_nothing_and_repeats_nothing() {
    const N: usize = 40;
    let mut replay_sizes = Vec::new();
    for delay in 0..N {
        let router = Router::new(config(), Arc::new(Scripted::yielding()));
        let mut a = Client::connect(&router, Role::User);
        let mut b = Client::connect(&router, Role::Guest);
        let ids: Vec<MessageId> = (0..=N).map(|_| a.new_id()).collect();
        let send =
            |id: MessageId| json!({"type": "message", "id": id.to_string(), "room": "r", "channel": "c"}).to_string();
        a.send(&send(ids[0])).await;

        let publisher = async {
            for &id in &ids[1..] {
                a.send(&send(id)).await;
            }
        };
        let joiner = async {
            for _ in 0..delay {
                tokio::task::yield_now().await;
            }
            join_since(&mut b, "r", "c", ids[0]).await
        };
        let ((), (payload, replayed)) = tokio::join!(publisher, joiner);
        assert_eq!(payload["members"], 1);
        let mut seen: Vec<String> = replayed.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
        while let Some(frame) = b.try_next() {
            seen.push(frame["id"].as_str().unwrap().to_owned());
        }
        let expected: Vec<String> = ids[1..].iter().map(ToString::to_string).collect();
        assert_eq!(seen, expected, "joined after {delay} yields ({} replayed)", replayed.len());
        a.assert_quiet();
        replay_sizes.push(replayed.len());
    }
    // The joins really landed mid-stream, with and without a replay.
    assert!(replay_sizes.iter().any(|&n| 0 < n && n < N), "{replay_sizes:?}");
}

#[tokio::test]
async fn racing_deletes_and_a_re_create_leave_no_member_behind() {
    for delay in 0..24 {
        let router = Router::new(config(), Arc::new(Scripted::yielding()));
        let mut p = Client::connect(&router, Role::User);
        let mut d1 = Client::connect(&router, Role::Admin);
        let mut d2 = Client::connect(&router, Role::Admin);
        let mut x = Client::connect(&router, Role::User);
        p.create("r", "c").await;
        let rc = json!({"room": "r", "channel": "c"});
        // The publish holds the channel's order lock across the storage
        // await, so both deletes queue up behind it.
        let publish = async { p.publish("r", "c", json!(1)).await };
        let delete1 = async { d1.command("delete_channel", rc.clone()).await };
        let join = async {
            for _ in 0..delay {
                tokio::task::yield_now().await;
            }
            x.command("join_channel", rc.clone()).await
        };
        let delete2 = async {
            tokio::task::yield_now().await;
            d2.command("delete_channel", rc.clone()).await
        };
        let (_, first, joined, second) = tokio::join!(publish, delete1, join, delete2);
        assert_eq!(first["type"], "response", "{first}");
        if joined["type"] == "error" {
            // The join lost the race against a delete: no membership at all.
            assert_eq!(code(&joined), "NOT_FOUND");
            assert_eq!(second["type"], "error", "delay {delay}: both deletes succeeded: {second}");
            x.assert_quiet();
            continue;
        }

        // Whatever the interleaving: a client that was not told its channel
        // is gone is a member of the live channel.
        let mut told = false;
        while let Some(frame) = x.try_next() {
            told |= frame["payload"]["event"] == "channel_deleted";
        }
        if !told {
            let info = p.command("channel_info", rc.clone()).await;
            assert_eq!(info["payload"]["members"], 1, "delay {delay}: joined {joined}, second delete {second}: {info}");
            p.publish("r", "c", json!("still there")).await;
            assert_eq!(x.next().await["payload"], "still there", "delay {delay}");
        }
        // One channel, one successful delete.
        if second["type"] == "response" {
            assert!(told, "delay {delay}: the second delete succeeded without deleting x's channel");
        }
    }
}

// ---------------------------------------------------------------------------
// Member events (section 5)
// ---------------------------------------------------------------------------

fn member_event(event: &str, key: &str, client: &Client) -> Value {
    let (room, channel) = key.split_once('/').unwrap();
    json!({"event": event, "room": room, "channel": channel, "client_id": client.id_str(), "user": null, "info": null})
}

#[tokio::test]
async fn members_hear_of_joins_leaves_and_disconnects_but_never_of_themselves() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::Guest);
    let mut other = Client::connect(&router, Role::User);
    a.join("r", "c").await;
    other.create("r", "x").await;
    other.join("r", "x").await;

    b.join("r", "c").await;
    let event = a.next().await;
    assert_eq!(event["type"], "event");
    assert_eq!(event["payload"], member_event("member_joined", "r/c", &b));
    b.assert_quiet();
    other.assert_quiet();

    b.ok("leave_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(a.next().await["payload"], member_event("member_left", "r/c", &b));
    b.assert_quiet();

    b.join("r", "c").await;
    b.join("r", "x").await;
    assert_eq!(a.next().await["payload"], member_event("member_joined", "r/c", &b));
    assert_eq!(other.next().await["payload"], member_event("member_joined", "r/x", &b));
    let b_event = member_event("member_left", "r/c", &b);
    let b_event_x = member_event("member_left", "r/x", &b);
    drop(b);
    assert_eq!(a.next().await["payload"], b_event);
    assert_eq!(other.next().await["payload"], b_event_x);
    a.assert_quiet();
    other.assert_quiet();
    assert_eq!(a.ok("channel_info", json!({"room": "r", "channel": "c"})).await["members"], 1);
}

#[tokio::test]
async fn member_events_stop_above_the_cutoff() {
    let router = router_with(RouterConfig { member_events_max: 2, ..config() });
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::Guest);
    let mut c = Client::connect(&router, Role::Guest);
    a.join("r", "c").await;
    b.join("r", "c").await; // 2 members: announced
    assert_eq!(a.next().await["payload"]["event"], "member_joined");
    c.join("r", "c").await; // 3 members: silent
    a.assert_quiet();
    b.assert_quiet();
    let mut d = Client::connect(&router, Role::Guest);
    d.join("r", "c").await; // 4: silent
    drop(d); // 3 left: silent
    a.assert_quiet();
    b.assert_quiet();
    c.assert_quiet();
    c.ok("leave_channel", json!({"room": "r", "channel": "c"})).await; // 2 left: announced again
    assert_eq!(a.next().await["payload"], member_event("member_left", "r/c", &c));
    assert_eq!(b.next().await["payload"], member_event("member_left", "r/c", &c));
}

// ---------------------------------------------------------------------------
// Limits (sections 6 and 7)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_slow_consumer_is_closed_by_bytes_and_the_others_get_everything() {
    let router = router_with(RouterConfig { max_backlog_bytes: 2000, ..config() });
    let mut publisher = Client::connect(&router, Role::User);
    publisher.create("r", "c").await;
    let mut slow = Client::connect(&router, Role::Guest);
    slow.join("r", "c").await; // the slow client reads up to here, then never again
    let mut fast = Client::connect(&router, Role::Guest);
    fast.join("r", "c").await;
    let mut queued_bytes = slow.inbox.frames.len();
    assert_eq!(queued_bytes, 1, "the member event");
    queued_bytes = 0;
    let mut closed_at = None;
    for n in 0..50 {
        assert!(publisher.message(json!({"room": "r", "channel": "c", "payload": n})).await.is_none());
        let got = fast.next().await;
        assert_eq!(got["payload"], n);
        queued_bytes += got.to_string().len();
        if closed_at.is_none() && slow.inbox.frames.closing().is_some() {
            closed_at = Some((n, queued_bytes));
        }
    }
    fast.assert_quiet();
    // Closed by the message that would have taken its backlog past 2,000
    // bytes, not by a count of frames.
    let (n, bytes) = closed_at.expect("the slow consumer is closed");
    // (The member event it also holds is about 200 bytes.)
    assert!((1500..=2000).contains(&bytes), "closed at message {n} after {bytes} bytes of messages");
    assert_eq!(slow.inbox.frames.closing(), Some(Closing::slow(SlowCause::Backlog)));
    assert_eq!(fast.inbox.frames.closing(), None);
    assert_eq!(publisher.inbox.frames.closing(), None);
    // Frames queued to a closed connection are dropped (section 8.1).
    assert_eq!(slow.inbox.frames.len(), 0);
    assert!(slow.inbox.frames.recv().await.is_none());
}

#[tokio::test]
async fn a_channels_only_member_gets_every_message_in_order_and_is_closed_by_bytes_too() {
    // One member takes the plain-frame path of delivery (no shared chunk).
    let router = router_with(RouterConfig { max_backlog_bytes: 2000, ..config() });
    let mut publisher = Client::connect(&router, Role::User);
    publisher.create("r", "c").await;
    let mut only = Client::connect(&router, Role::Guest);
    only.join("r", "c").await;
    for n in 0..5 {
        assert!(publisher.message(json!({"room": "r", "channel": "c", "payload": n})).await.is_none());
        assert_eq!(only.next().await["payload"], n);
    }
    only.assert_quiet();
    for n in 5..50 {
        assert!(publisher.message(json!({"room": "r", "channel": "c", "payload": n})).await.is_none());
    }
    assert_eq!(only.inbox.frames.closing(), Some(Closing::slow(SlowCause::Backlog)));
    assert_eq!(publisher.inbox.frames.closing(), None);
}

#[tokio::test]
async fn past_the_global_budget_the_largest_backlog_is_closed_first() {
    // Budget 4,000 bytes; members that never read. A frame shared by both
    // is counted once, so two members reading nothing hold one copy.
    let router = router_with(RouterConfig { max_backlog_bytes: 64 * 1024, backlog_budget_bytes: 4000, ..config() });
    let mut publisher = Client::connect(&router, Role::User);
    publisher.create("r", "shared").await;
    let mut a = Client::connect(&router, Role::Guest);
    a.join("r", "shared").await;
    let mut b = Client::connect(&router, Role::Guest);
    b.join("r", "shared").await;
    let pad = "x".repeat(200);
    for n in 0..6 {
        publisher.message(json!({"room": "r", "channel": "shared", "payload": {"n": n, "pad": pad}})).await;
    }
    // Six ~400-byte frames queued to two members, plus the joins' frames:
    // counted once they come to about 3 KB, twice they would pass 5 KB.
    let used = router.backlog_budget().used();
    assert!((2500..3500).contains(&used), "{used}");
    assert_eq!(a.inbox.frames.closing(), None);
    assert_eq!(b.inbox.frames.closing(), None);
    // A direct flood at `b` makes its backlog the largest: it alone is closed.
    for _ in 0..10 {
        publisher.message(json!({"to": b.id_str(), "payload": pad})).await;
    }
    assert_eq!(b.inbox.frames.closing(), Some(Closing::slow(SlowCause::Budget)));
    assert_eq!(a.inbox.frames.closing(), None);
    assert!(router.backlog_budget().used() < 4000);
    assert_eq!(router.backlog_budget().evictions(), 1);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_refuses_over_the_burst_until_time_passes() {
    let router = router_with(RouterConfig { rate_per_s: 10, burst: 5, ..config() });
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    b.join("r", "c").await;
    for _ in 0..4 {
        assert_eq!(a.ok("ping", json!({})).await, json!({"pong": true}));
    }
    assert!(a.message(json!({"room": "r", "channel": "c", "payload": 5})).await.is_none());
    assert_eq!(b.next().await["payload"], 5);

    // The 6th: refused before parsing, not processed.
    let id = a.new_id();
    let error = a.message(json!({"id": id.to_string(), "room": "r", "channel": "c", "payload": 6})).await.unwrap();
    assert_eq!(code(&error), "RATE_LIMITED");
    assert_eq!(error["request_id"], id.to_string());
    let retry_after_ms = error["error"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=100).contains(&retry_after_ms), "{error}");
    b.assert_quiet();
    a.send("not even json").await;
    assert_eq!(code(&a.next().await), "RATE_LIMITED");

    tokio::time::advance(Duration::from_millis(retry_after_ms)).await;
    assert_eq!(a.ok("ping", json!({})).await, json!({"pong": true}));
    assert_eq!(a.fail("ping", json!({})).await["code"], "RATE_LIMITED");

    // A long pause refills the bucket up to the burst, no further.
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..5 {
        assert_eq!(a.ok("ping", json!({})).await, json!({"pong": true}));
    }
    assert_eq!(a.fail("ping", json!({})).await["code"], "RATE_LIMITED");
    // Steady state: one frame per 100 ms.
    for _ in 0..3 {
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(a.ok("ping", json!({})).await, json!({"pong": true}));
    }
    assert_eq!(a.inbox.frames.closing(), None);
}

#[tokio::test(start_paused = true)]
async fn frames_that_arrived_together_share_their_arrival() {
    // What a transport does: one arrival per read, handed with every frame
    // that read completed, whenever each is handled.
    let router = router_with(RouterConfig { rate_per_s: 10, burst: 2, abuse_limit: 0, ..config() });
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    b.join("r", "c").await;
    let read_at = tokio::time::Instant::now();
    let stamped = Timestamp::from_unix_ms(1_700_000_000_123);
    let arrival = Arrival::at(read_at, stamped);
    let frame = |n: u32| json!({"type": "message", "room": "r", "channel": "c", "payload": n}).to_string();
    // Handled a second later, the two still arrived together: stamped with
    // the read's time, and the bucket has not refilled between them.
    tokio::time::advance(Duration::from_secs(1)).await;
    for n in 1..=2 {
        a.session.handle_text_at(&frame(n), arrival).await;
        let delivered = b.next().await;
        assert_eq!(delivered["payload"], n);
        assert_eq!(delivered["timestamp"], "2023-11-14T22:13:20.123Z");
    }
    // The burst of 2 is spent at the arrival's instant, not at the handling's.
    a.session.handle_text_at(&frame(3), arrival).await;
    let error = a.next().await;
    assert_eq!(code(&error), "RATE_LIMITED");
    assert_eq!(error["error"]["retry_after_ms"], 100);
    b.assert_quiet();
    // A later read: the bucket refilled by the time between the reads.
    let later = Arrival::at(read_at + Duration::from_millis(100), Timestamp::from_unix_ms(1_700_000_000_223));
    a.session.handle_text_at(&frame(4), later).await;
    let delivered = b.next().await;
    assert_eq!(
        (delivered["payload"].clone(), delivered["timestamp"].clone()),
        (json!(4), json!("2023-11-14T22:13:20.223Z"))
    );
}

#[tokio::test(start_paused = true)]
async fn rate_zero_is_unlimited_and_welcome_says_so() {
    let router = router_with(RouterConfig { rate_per_s: 0, burst: 5, ..config() });
    let (mut session, mut inbox) = router.connect(Identity::new(Role::Guest)).unwrap();
    let Some(Outbound::Frame(welcome)) = inbox.frames.recv().await else { panic!("no welcome") };
    let welcome = parse_frame(&welcome);
    assert_eq!(welcome["payload"]["limits"]["rate_per_s"], 0);
    assert_eq!(welcome["payload"]["limits"]["max_message_bytes"], 1_048_576);
    assert_eq!(welcome["payload"]["heartbeat_s"], 20);
    assert_eq!(welcome["payload"]["server_version"], RouterConfig::default().server_version);
    for _ in 0..500 {
        session.handle_text(r#"{"type":"command","command":"ping"}"#).await;
        let Some(Outbound::Frame(frame)) = inbox.frames.recv().await else { panic!("no answer") };
        assert_eq!(parse_frame(&frame)["type"], "response");
    }
}

#[tokio::test(start_paused = true)]
async fn binary_frames_and_pings_count_against_the_rate() {
    let router = router_with(RouterConfig { rate_per_s: 10, burst: 4, abuse_limit: 0, ..config() });
    let mut a = Client::connect(&router, Role::User);
    for _ in 0..2 {
        a.session.handle_binary(2);
        assert_eq!(code(&a.next().await), "UNSUPPORTED_FRAME");
    }
    assert!(a.session.handle_ping(4), "a ping within the rate is answered by the transport");
    a.assert_quiet();
    assert_eq!(a.ok("ping", json!({})).await, json!({"pong": true}));
    // The burst of 4 is spent, on binary frames and pings as much as on text.
    a.session.handle_binary(2);
    let error = a.next().await;
    assert_eq!(code(&error), "RATE_LIMITED");
    assert_eq!(error["error"]["retry_after_ms"], 100);
    assert!(!a.session.handle_ping(4), "an over-rate ping gets no pong");
    assert_eq!(code(&a.next().await), "RATE_LIMITED");
    assert_eq!(a.fail("ping", json!({})).await["code"], "RATE_LIMITED");
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(a.session.handle_ping(4));
    a.assert_quiet();
}

#[tokio::test(start_paused = true)]
async fn a_client_sending_steadily_over_its_rate_is_closed_1008() {
    let router = router_with(RouterConfig {
        rate_per_s: 10,
        burst: 10,
        abuse_limit: 20,
        abuse_window: Duration::from_secs(10),
        ..config()
    });
    let mut a = Client::connect(&router, Role::User);
    // 90 frames/s, nine times its rate: after the burst, eight in nine are
    // refused, so refusals never come 20 in a row (the old rule never closed it).
    let mut sent = 0;
    while a.inbox.frames.closing().is_none() && sent < 900 {
        a.send(r#"{"type":"command","command":"ping"}"#).await;
        a.drain();
        sent += 1;
        tokio::time::advance(Duration::from_micros(11_111)).await;
    }
    assert_eq!(a.inbox.frames.closing(), Some(CloseReason::ABUSE.into()));
    // 10 of the burst, then 3 of 24 passed: the 21st refusal (less 0.5
    // drained over 0.26 s) reaches 20.
    assert_eq!(sent, 34, "closed a third of a second in");
}

#[tokio::test(start_paused = true)]
async fn a_client_slowed_by_the_rate_but_within_the_abuse_window_stays() {
    let router = router_with(RouterConfig {
        rate_per_s: 10,
        burst: 1,
        abuse_limit: 20,
        abuse_window: Duration::from_secs(10),
        ..config()
    });
    let mut a = Client::connect(&router, Role::User);
    // One refusal per second (twice its rate for a moment, then obeying
    // retry_after) drains faster than it fills: never closed.
    for _ in 0..100 {
        assert_eq!(a.ok("ping", json!({})).await, json!({"pong": true}));
        assert_eq!(a.fail("ping", json!({})).await["code"], "RATE_LIMITED");
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert!(a.inbox.frames.closing().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_inbound_byte_rate_refuses_large_frames_and_counts_the_refusals() {
    let router = router_with(RouterConfig { bytes_per_s: 10_000, bytes_burst: 40_000, abuse_limit: 5, ..config() });
    let (_session, mut inbox) = router.connect(Identity::new(Role::User)).unwrap();
    let Some(Outbound::Frame(welcome)) = inbox.frames.recv().await else { panic!("no welcome") };
    let welcome = parse_frame(&welcome);
    assert_eq!(welcome["payload"]["limits"]["bytes_per_s"], 10_000);
    assert_eq!(welcome["payload"]["limits"]["bytes_burst"], 40_000);

    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    b.join("r", "c").await;
    let frame = json!({"type": "message", "room": "r", "channel": "c", "payload": "x".repeat(9_900)}).to_string();
    let len = frame.len();
    // Four fit in the burst, within the frame rate.
    for _ in 0..4 {
        a.send(&frame).await;
        a.assert_quiet();
        assert_eq!(b.next().await["payload"].as_str().map(str::len), Some(9_900));
    }
    a.send(&frame).await;
    let error = a.next().await;
    assert_eq!(code(&error), "RATE_LIMITED");
    let wait = Duration::from_secs_f64((5 * len - 40_000) as f64 / 10_000.0).as_millis();
    assert_eq!(error["error"]["retry_after_ms"], u64::try_from(wait).unwrap());
    b.assert_quiet();
    // What is left of the byte budget still carries a small frame.
    assert_eq!(a.ok("ping", json!({})).await, json!({"pong": true}));
    for _ in 0..3 {
        a.send(&frame).await;
        assert_eq!(code(&a.next().await), "RATE_LIMITED");
    }
    assert!(a.inbox.frames.closing().is_none());
    a.send(&frame).await;
    assert_eq!(code(&a.next().await), "RATE_LIMITED");
    assert_eq!(a.inbox.frames.closing(), Some(CloseReason::ABUSE.into()), "the 5th refusal in a moment closes");
    b.assert_quiet();
}

/// Lets the runtime drop the tasks aborted so far (it does so when it next runs them).
async fn settle(router: &Router, tasks: &tokio::runtime::RuntimeMetrics, alive: usize) {
    for _ in 0..1000 {
        if router.live_expiry_timers() == 0 && tasks.num_alive_tasks() == alive {
            return;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn connections_with_expiring_credentials_leave_no_timer_behind() {
    let router = router();
    let tasks = tokio::runtime::Handle::current().metrics();
    let alive = tasks.num_alive_tasks();
    for n in 0..20_000 {
        let mut identity = Identity::new(Role::User);
        identity.expires_in = Some(Duration::from_secs(30 * 24 * 3600));
        let (session, inbox) = router.connect(identity).unwrap();
        if n == 0 {
            assert_eq!((router.live_expiry_timers(), tasks.num_alive_tasks()), (1, alive + 1));
        }
        drop(session);
        drop(inbox);
        if n % 1000 == 999 {
            tokio::task::yield_now().await;
        }
    }
    settle(&router, &tasks, alive).await;
    assert_eq!(router.live_expiry_timers(), 0);
    assert_eq!(tasks.num_alive_tasks(), alive, "every expiry task ended with its connection");
    assert_eq!(router.counts().connections, 0);
}

#[tokio::test(start_paused = true)]
async fn expiring_credentials_are_told_then_closed_and_the_timer_ends() {
    let router = router_with(RouterConfig { expiry_grace: Duration::from_secs(2), ..config() });
    let mut identity = Identity::new(Role::User);
    identity.expires_in = Some(Duration::from_secs(60));
    let mut a = Client::connect_as(&router, identity);
    assert_eq!(router.live_expiry_timers(), 1);
    tokio::time::advance(Duration::from_secs(59)).await;
    a.assert_quiet();
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(a.next().await["payload"]["event"], "token_expired");
    assert!(a.inbox.frames.closing().is_none());
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio::task::yield_now().await;
    assert_eq!(a.inbox.frames.closing(), Some(CloseReason::TOKEN_EXPIRED.into()));
    let tasks = tokio::runtime::Handle::current().metrics();
    settle(&router, &tasks, 0).await;
    assert_eq!(router.live_expiry_timers(), 0, "a timer that fired is gone");
}

// ---------------------------------------------------------------------------
// Clients limited to some rooms
// ---------------------------------------------------------------------------

fn limited_to(rooms: &[&str]) -> Identity {
    let mut identity = Identity::new(Role::User);
    identity.rooms = RoomAccess::Only(rooms.iter().map(|r| arqon_protocol::Name::parse(r).unwrap()).collect());
    identity
}

#[tokio::test]
async fn direct_messages_from_a_rooms_limited_client_reach_only_its_rooms_and_services() {
    let router = router();
    let mut tenant_a = Client::connect_as(&router, limited_to(&["a", "shared"]));
    let mut tenant_b = Client::connect_as(&router, limited_to(&["b"]));
    let mut peer = Client::connect_as(&router, limited_to(&["shared"]));
    let mut service = Client::connect(&router, Role::User);
    let mut nobody = Client::connect_as(&router, limited_to(&[]));
    let to = |c: &Client, n: u32| json!({"to": c.id_str(), "payload": n});

    // Another tenant: the same answer as for a client that is not there.
    let error = tenant_a.message(to(&tenant_b, 1)).await.unwrap();
    assert_eq!(code(&error), "NOT_FOUND");
    assert_eq!(error["error"]["message"], format!("no client {} is connected", tenant_b.id_str()));
    tenant_b.assert_quiet();
    // A client sharing one of its rooms, and an unrestricted one (a service).
    assert!(tenant_a.message(to(&peer, 2)).await.is_none());
    assert_eq!(peer.next().await["payload"], 2);
    assert!(tenant_a.message(to(&service, 3)).await.is_none());
    assert_eq!(service.next().await["payload"], 3);
    // Unrestricted clients reach anyone.
    assert!(service.message(to(&tenant_b, 4)).await.is_none());
    assert_eq!(tenant_b.next().await["payload"], 4);
    // `rooms: []`: no room, but ping, status, help and services.
    assert_eq!(nobody.fail("join_channel", json!({"room": "a", "channel": "c"})).await["code"], "FORBIDDEN");
    assert_eq!(nobody.ok("ping", json!({})).await, json!({"pong": true}));
    assert_eq!(code(&nobody.message(to(&tenant_a, 5)).await.unwrap()), "NOT_FOUND");
    assert!(nobody.message(to(&service, 6)).await.is_none());
    assert_eq!(service.next().await["payload"], 6);
    tenant_a.assert_quiet();
}

#[tokio::test]
async fn status_shows_a_rooms_limited_client_only_its_rooms() {
    let router = router();
    let mut admin = Client::connect(&router, Role::Admin);
    let mut tenant = Client::connect_as(&router, limited_to(&["a"]));
    let mut other = Client::connect_as(&router, limited_to(&["b"]));
    for (room, channel) in [("a", "1"), ("a", "2"), ("b", "1"), ("c", "1")] {
        admin.create(room, channel).await;
    }
    tenant.join("a", "1").await;
    other.join("b", "1").await;
    admin.join("a", "2").await;
    admin.join("b", "1").await;
    tenant.drain();
    let status = tenant.ok("status", json!({})).await;
    assert_eq!((&status["connections"], &status["rooms"], &status["channels"]), (&json!(2), &json!(1), &json!(2)));
    let status = admin.ok("status", json!({})).await;
    assert_eq!((&status["connections"], &status["rooms"], &status["channels"]), (&json!(3), &json!(3), &json!(4)));
}

// ---------------------------------------------------------------------------
// Channel budgets: caps on creation, idle reclaim
// ---------------------------------------------------------------------------

/// Every channel of the router, as "room/channel".
fn channel_names(router: &Router) -> Vec<String> {
    router.channels(None).iter().map(|c| c.key.to_string()).collect()
}

/// Asserts a `FORBIDDEN` answer whose message contains `says`.
fn assert_refused(error: &Value, says: &str) {
    assert_eq!(error["code"], "FORBIDDEN", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

#[tokio::test]
async fn channel_caps_refuse_creation_per_room_and_in_total() {
    let caps =
        RouterConfig { max_channels_per_room: 3, max_channels: 5, max_channels_created_per_client: 0, ..config() };
    let router = router_with(caps);
    let mut a = Client::connect(&router, Role::User);
    for channel in ["a", "b", "c"] {
        a.create("r1", channel).await;
    }
    // Every way of creating meets the room's cap: the command, a publish, a join.
    let error = a.fail("create_channel", json!({"room": "r1", "channel": "d"})).await;
    assert_refused(&error, "room r1 already has 3 channels");
    let error = a.fail("publish", json!({"room": "r1", "channel": "d", "payload": 1})).await;
    assert_refused(&error, "room r1 already has 3 channels");
    let error = a.fail("join_channel", json!({"room": "r1", "channel": "d"})).await;
    assert_refused(&error, "room r1 already has 3 channels");
    let error = a.message(json!({"room": "r1", "channel": "d", "payload": 1})).await.expect("an error");
    assert_refused(&error["error"], "room r1 already has 3 channels");
    // Existing channels are not creations: they still work.
    assert_eq!(a.ok("create_channel", json!({"room": "r1", "channel": "a"})).await["created"], false);
    a.publish("r1", "a", json!(1)).await;
    // The node's cap: 5 channels over all rooms.
    a.create("r2", "a").await;
    a.publish("r2", "b", json!(1)).await;
    let error = a.fail("create_channel", json!({"room": "r3", "channel": "a"})).await;
    assert_refused(&error, "this server already has 5 channels");
    // A refusal leaves no empty room behind.
    assert_eq!(router.counts().rooms, 2);
    assert_eq!(router.counts().channels, 5);
    // Deleting gives the slot back.
    let mut admin = Client::connect(&router, Role::Admin);
    admin.ok("delete_channel", json!({"room": "r1", "channel": "a"})).await;
    a.create("r1", "d").await;
    assert_eq!(channel_names(&router), ["r1/b", "r1/c", "r1/d", "r2/a", "r2/b"]);
}

#[tokio::test]
async fn each_connection_creates_at_most_its_cap_of_channels() {
    let router = router_with(RouterConfig { max_channels_created_per_client: 2, ..config() });
    let mut a = Client::connect(&router, Role::User);
    a.create("r", "one").await;
    a.publish("r", "two", json!(1)).await; // auto-created: counts too
    let error = a.fail("join_channel", json!({"room": "r", "channel": "three"})).await;
    assert_refused(&error, "this connection has already created 2 channels");
    // Over the connection's life: deleting what it made does not reset it.
    let mut admin = Client::connect(&router, Role::Admin);
    admin.ok("delete_channel", json!({"room": "r", "channel": "one"})).await;
    let error = a.fail("create_channel", json!({"room": "r", "channel": "one"})).await;
    assert_refused(&error, "this connection has already created 2 channels");
    // Using channels that exist is not creating.
    a.join("r", "two").await;
    // Others have caps of their own, and so has a new connection of the same user.
    let mut b = Client::connect(&router, Role::User);
    b.create("r", "three").await;
    drop(a);
    let mut again = Client::connect(&router, Role::User);
    again.create("r", "one").await;
    assert_eq!(channel_names(&router), ["r/one", "r/three", "r/two"]);
}

/// A router whose storage keeps nothing over 2,000 bytes per channel, so a
/// large message is delivered but leaves no history.
fn reclaiming_router() -> Router {
    let storage = MemoryStorage::new(1000).with_byte_budget(2_000, 1 << 20);
    Router::new(RouterConfig { idle_reclaim: Duration::from_secs(300), ..config() }, Arc::new(storage))
}

#[tokio::test(start_paused = true)]
async fn idle_auto_created_channels_without_history_are_reclaimed() {
    let router = reclaiming_router();
    let mut a = Client::connect(&router, Role::User);
    let mut stays = Client::connect(&router, Role::User);
    a.join("r", "left").await; // auto-created, then left empty
    a.ok("leave_channel", json!({"room": "r", "channel": "left"})).await;
    a.publish("r", "evicted", json!("x".repeat(3_000))).await; // kept nothing
    a.publish("r", "history", json!(1)).await; // keeps a message
    a.create("r", "explicit").await; // kept however idle
    a.publish("r", "claimed", json!("x".repeat(3_000))).await;
    a.create("r", "claimed").await; // auto-created, then claimed
    stays.join("r", "member").await; // has a member throughout
    assert_eq!(router.reclaim_idle().await, 0, "the first pass only starts the idle clock");
    tokio::time::advance(Duration::from_secs(299)).await;
    assert_eq!(router.reclaim_idle().await, 0, "not idle long enough");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(router.reclaim_idle().await, 2);
    assert_eq!(channel_names(&router), ["r/claimed", "r/explicit", "r/history", "r/member"]);
    // The storage forgot them as well; using the name again makes a new channel.
    assert_eq!(router.counts().channels, 4);
    assert_eq!(a.join("r", "left").await["members"], 1);
}

#[tokio::test(start_paused = true)]
async fn activity_restarts_the_idle_time() {
    let router = reclaiming_router();
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    a.publish("r", "busy", json!("x".repeat(3_000))).await;
    b.join("r", "joined").await;
    assert_eq!(router.reclaim_idle().await, 0);
    tokio::time::advance(Duration::from_secs(200)).await;
    // A publish (kept by no one) and the last member leaving count as use.
    a.publish("r", "busy", json!("x".repeat(3_000))).await;
    b.ok("leave_channel", json!({"room": "r", "channel": "joined"})).await;
    assert_eq!(router.reclaim_idle().await, 0);
    tokio::time::advance(Duration::from_secs(299)).await;
    assert_eq!(router.reclaim_idle().await, 0, "299 s since the last use");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(router.reclaim_idle().await, 2);
    assert_eq!(channel_names(&router), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn the_reclaim_task_runs_until_shutdown() {
    let router = reclaiming_router();
    let mut a = Client::connect(&router, Role::User);
    a.join("r", "idle").await;
    a.ok("leave_channel", json!({"room": "r", "channel": "idle"})).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let router = router.clone();
        async move { router.run_reclaim(async move { drop(stopped.await) }).await }
    });
    // Passes every 75 s from the start: idle from the first, gone by 300 s.
    tokio::time::sleep(Duration::from_secs(290)).await;
    assert_eq!(channel_names(&router), ["r/idle"]);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(channel_names(&router), Vec::<String>::new());
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task).await.expect("the task ends at shutdown").unwrap();
    // With reclaim off, nothing is ever removed and the task ends at once.
    let off = router_with(RouterConfig { idle_reclaim: Duration::ZERO, ..config() });
    let mut b = Client::connect(&off, Role::User);
    b.join("r", "idle").await;
    b.ok("leave_channel", json!({"room": "r", "channel": "idle"})).await;
    tokio::time::timeout(WAIT, off.run_reclaim(std::future::pending())).await.expect("returns at once");
    tokio::time::advance(Duration::from_secs(10_000)).await;
    assert_eq!(off.reclaim_idle().await, 0);
    assert_eq!(channel_names(&off), ["r/idle"]);
}

// ---------------------------------------------------------------------------
// The Broker seam
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct FakeBroker {
    forwarded: Mutex<Vec<Delivery>>,
    interest: Mutex<Vec<(ChannelKey, usize)>>,
    /// A client connected to "another node".
    remote: Mutex<Option<ClientId>>,
    /// Members every channel has on "other nodes".
    remote_members: Mutex<usize>,
    /// Registry and channel notifications, in order.
    log: Mutex<Vec<String>>,
}

impl Broker for FakeBroker {
    fn forward(&self, delivery: Delivery) {
        self.forwarded.lock().unwrap().push(delivery);
    }
    fn knows_client(&self, id: ClientId) -> bool {
        *self.remote.lock().unwrap() == Some(id)
    }
    fn interest(&self, key: &ChannelKey, local_members: usize) {
        self.interest.lock().unwrap().push((key.clone(), local_members));
    }
    fn remote_members(&self, _key: &ChannelKey) -> usize {
        *self.remote_members.lock().unwrap()
    }
    fn client_connected(&self, id: ClientId) {
        self.log.lock().unwrap().push(format!("connected {id}"));
    }
    fn client_disconnected(&self, id: ClientId) {
        self.log.lock().unwrap().push(format!("disconnected {id}"));
    }
    fn channel_created(&self, key: &ChannelKey, _created_at: Timestamp) {
        self.log.lock().unwrap().push(format!("created {key}"));
    }
    fn channel_deleted(&self, key: &ChannelKey) {
        self.log.lock().unwrap().push(format!("deleted {key}"));
    }
}

impl FakeBroker {
    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
    fn take_forwarded(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.forwarded.lock().unwrap())
    }
    fn take_interest(&self) -> Vec<(ChannelKey, usize)> {
        std::mem::take(&mut *self.interest.lock().unwrap())
    }
}

#[tokio::test]
async fn broker_gets_one_forward_per_channel_or_room_publish() {
    let broker = Arc::new(FakeBroker::default());
    let router = Router::with_broker(config(), Arc::new(MemoryStorage::new(1000)), broker.clone());
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    b.join("r", "c").await;
    broker.take_interest();
    // b's member_joined goes to the members on other nodes too.
    let announced = broker.take_forwarded();
    assert!(
        matches!(&announced[..], [Delivery::Channel { from, frame, .. }]
            if *from == b.id && frame.as_str().contains("member_joined")),
        "{announced:?}"
    );

    let id = a.new_id();
    let frame = json!({"id": id.to_string(), "room": "r", "channel": "c", "payload": 1});
    assert!(a.message(frame.clone()).await.is_none());
    assert!(a.message(frame).await.is_none()); // a retry: not forwarded again
    let delivered = b.next().await;
    let forwarded = broker.take_forwarded();
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    let Delivery::Channel { key: k, frame, from, .. } = &forwarded[0] else { panic!("{forwarded:?}") };
    assert_eq!(*k, key("r", "c"));
    assert_eq!(*from, a.id);
    assert_eq!(parse_frame(frame), delivered);

    let published = a.publish("r", "c", json!(2)).await;
    b.next().await;
    let forwarded = broker.take_forwarded();
    assert!(
        matches!(&forwarded[..], [Delivery::Channel { frame, .. }] if parse_frame(frame)["id"] == published.to_string())
    );

    assert!(a.message(json!({"room": "r", "payload": 3})).await.is_none());
    let delivered = b.next().await;
    let forwarded = broker.take_forwarded();
    let [Delivery::Room { room, frame, from }] = &forwarded[..] else { panic!("{forwarded:?}") };
    assert_eq!(room.as_str(), "r");
    assert_eq!(*from, a.id);
    assert_eq!(parse_frame(frame), delivered);

    // Direct to a local client: delivered here, not forwarded.
    assert!(a.message(json!({"to": b.id_str(), "payload": 4})).await.is_none());
    assert_eq!(b.next().await["payload"], 4);
    assert!(broker.take_forwarded().is_empty());
    // Direct to a client the broker knows: forwarded; to one nobody knows: NOT_FOUND.
    let remote = IdGenerator::new().client_id();
    *broker.remote.lock().unwrap() = Some(remote);
    assert!(a.message(json!({"to": remote.to_string(), "payload": 5})).await.is_none());
    let forwarded = broker.take_forwarded();
    let [Delivery::Direct { to, frame }] = &forwarded[..] else { panic!("{forwarded:?}") };
    assert_eq!(*to, remote);
    assert_eq!(parse_frame(frame)["payload"], 5);
    let error = a.message(json!({"to": IdGenerator::new().client_id().to_string()})).await.unwrap();
    assert_eq!(code(&error), "NOT_FOUND");
    assert!(broker.take_forwarded().is_empty());
    // Refused frames forward nothing.
    let mut g = Client::connect(&router, Role::Guest);
    assert_eq!(code(&g.message(json!({"room": "r", "channel": "c"})).await.unwrap()), "FORBIDDEN");
    assert!(broker.take_forwarded().is_empty());
}

#[tokio::test]
async fn broker_hears_local_membership_changes() {
    let broker = Arc::new(FakeBroker::default());
    let router = Router::with_broker(config(), Arc::new(MemoryStorage::new(1000)), broker.clone());
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    let mut admin = Client::connect(&router, Role::Admin);
    let rc = key("r", "c");
    a.join("r", "c").await;
    b.join("r", "c").await;
    b.join("r", "c").await; // already a member: no change
    assert_eq!(broker.take_interest(), [(rc.clone(), 1), (rc.clone(), 2)]);
    a.drain();
    a.ok("leave_channel", json!({"room": "r", "channel": "c"})).await;
    a.ok("leave_channel", json!({"room": "r", "channel": "c"})).await; // not a member: no change
    assert_eq!(broker.take_interest(), [(rc.clone(), 1)]);
    drop(b);
    assert_eq!(broker.take_interest(), [(rc.clone(), 0)]);

    a.join("r", "c").await;
    b = Client::connect(&router, Role::User);
    b.join("r", "d").await;
    broker.take_interest();
    admin.ok("delete_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(broker.take_interest(), [(rc.clone(), 0)]);
    drop(a); // its channel is gone: nothing more to say
    assert!(broker.take_interest().is_empty());
    drop(b);
    assert_eq!(broker.take_interest(), [(key("r", "d"), 0)]);
    // A deletion announced by another node drops this node's interest too.
    let mut c = Client::connect(&router, Role::User);
    c.join("r", "e").await;
    broker.take_interest();
    router.channel_deleted_elsewhere(&key("r", "e")).await;
    assert_eq!(broker.take_interest(), [(key("r", "e"), 0)]);
    drop(c);
    assert!(broker.take_interest().is_empty());
}

#[tokio::test]
async fn deliveries_from_the_broker_reach_local_members_except_the_sender() {
    let broker = Arc::new(FakeBroker::default());
    let router = Router::with_broker(config(), Arc::new(MemoryStorage::new(1000)), broker.clone());
    let mut a = Client::connect(&router, Role::Guest);
    let mut b = Client::connect(&router, Role::Guest);
    let mut c = Client::connect(&router, Role::User);
    let mut elsewhere = Client::connect(&router, Role::User);
    c.join("r", "c").await;
    c.create("r", "d").await;
    a.join("r", "c").await;
    b.join("r", "c").await;
    b.join("r", "d").await;
    elsewhere.join("s", "c").await;
    for client in [&mut a, &mut b, &mut c] {
        client.drain();
    }
    broker.take_forwarded();

    // A frame encoded on another node, sent there by `b` (say, after a reconnect).
    let mut ids = IdGenerator::new();
    let rc = key("r", "c");
    let b_id = b.id;
    let remote_frame = move |ids: &mut IdGenerator, room: &ChannelKey, channel: bool| {
        arqon_protocol::encode::MessageFrame {
            id: ids.message_id(),
            timestamp: Timestamp::now(),
            from: b_id.into(),
            user: None,
            room: Some(&room.room),
            channel: channel.then_some(&room.channel),
            payload: None,
            meta: None,
        }
        .encode()
    };
    let frame = remote_frame(&mut ids, &rc, true);
    let n = router
        .deliver_from_broker(&Delivery::Channel {
            key: rc.clone(),
            frame: frame.clone(),
            from: b.id,
            place: Place::Unstored,
        })
        .await;
    assert_eq!(n, 2);
    for member in [&mut a, &mut c] {
        assert_eq!(member.next().await, parse_frame(&frame));
        member.assert_quiet();
    }
    b.assert_quiet();
    elsewhere.assert_quiet();

    let frame = remote_frame(&mut ids, &rc, false);
    let n =
        router.deliver_from_broker(&Delivery::Room { room: rc.room.clone(), frame: frame.clone(), from: a.id }).await;
    assert_eq!(n, 2); // b once, although in two channels; c
    assert_eq!(b.next().await, parse_frame(&frame));
    assert_eq!(c.next().await, parse_frame(&frame));
    a.assert_quiet();
    b.assert_quiet();

    let frame = remote_frame(&mut ids, &rc, false);
    assert_eq!(router.deliver_from_broker(&Delivery::Direct { to: elsewhere.id, frame: frame.clone() }).await, 1);
    assert_eq!(elsewhere.next().await, parse_frame(&frame));
    let nobody = IdGenerator::new().client_id();
    assert_eq!(router.deliver_from_broker(&Delivery::Direct { to: nobody, frame: frame.clone() }).await, 0);
    let missing = key("r", "missing");
    assert_eq!(
        router
            .deliver_from_broker(&Delivery::Channel { key: missing, frame, from: b.id, place: Place::Unstored })
            .await,
        0
    );
    // Never forwarded again, and never stored.
    assert!(broker.take_forwarded().is_empty());
    assert_eq!(c.ok("history", json!({"room": "r", "channel": "c"})).await["messages"], json!([]));
}

// ---------------------------------------------------------------------------
// The Storage seam
// ---------------------------------------------------------------------------

/// A backend that is down for writes. With `at_once`, it says so from
/// `append_now`, and an `append` after that is a router bug (`INTERNAL`).
struct Down {
    at_once: bool,
}

#[async_trait]
impl Storage for Down {
    async fn create_channel(&self, key: &ChannelKey, at: Timestamp) -> Result<(ChannelRecord, bool), StorageError> {
        Ok((ChannelRecord { key: key.clone(), created_at: at }, true))
    }
    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        Ok(Vec::new())
    }
    async fn delete_channel(&self, _key: &ChannelKey) -> Result<bool, StorageError> {
        Ok(true)
    }
    async fn append(&self, _key: &ChannelKey, _message: StoredMessage) -> Result<Appended, StorageError> {
        Err(if self.at_once {
            StorageError::Backend("append called after append_now was done".into())
        } else {
            StorageError::Unavailable("redis is down".into())
        })
    }
    fn append_now(&self, _key: &ChannelKey, message: StoredMessage) -> AppendNow {
        if self.at_once {
            AppendNow::Done(Err(StorageError::Unavailable("redis is down".into())))
        } else {
            AppendNow::Later(message)
        }
    }
    async fn history(
        &self,
        _key: &ChannelKey,
        _limit: usize,
        _before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        Err(StorageError::Unavailable("redis is down".into()))
    }
    async fn since(&self, _key: &ChannelKey, _after: MessageId) -> Result<Since, StorageError> {
        Err(StorageError::Unavailable("redis is down".into()))
    }
    async fn stats(&self, _key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        Ok(ChannelStats::default())
    }
    fn health(&self) -> Health {
        Health::new("down", false)
    }
}

#[tokio::test]
async fn a_failing_append_is_storage_unavailable_and_delivers_nothing() {
    failing_append_is_storage_unavailable_and_delivers_nothing(Down { at_once: false }).await;
}

#[tokio::test]
async fn an_append_failing_at_once_is_storage_unavailable_and_delivers_nothing() {
    failing_append_is_storage_unavailable_and_delivers_nothing(Down { at_once: true }).await;
}

async fn failing_append_is_storage_unavailable_and_delivers_nothing(storage: Down) {
    let router = Router::new(config(), Arc::new(storage));
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    b.join("r", "c").await;

    let error = a.fail("publish", json!({"room": "r", "channel": "c", "payload": 1})).await;
    assert_eq!(error["code"], "STORAGE_UNAVAILABLE");
    // The first message to the channel, then one that finds the channel
    // known and is routed without waiting: both refused.
    for payload in [2, 3] {
        let id = a.new_id();
        let error =
            a.message(json!({"id": id.to_string(), "room": "r", "channel": "c", "payload": payload})).await.unwrap();
        assert_eq!(code(&error), "STORAGE_UNAVAILABLE");
        assert_eq!(error["request_id"], id.to_string());
    }
    b.assert_quiet();
    assert_eq!(a.fail("history", json!({"room": "r", "channel": "c"})).await["code"], "STORAGE_UNAVAILABLE");
    // Joining with a cursor needs history: refused, and no membership change.
    let mut c = Client::connect(&router, Role::Guest);
    let since = IdGenerator::new().message_id().to_string();
    let error = c.fail("join_channel", json!({"room": "r", "channel": "c", "since": since})).await;
    assert_eq!(error["code"], "STORAGE_UNAVAILABLE");
    b.assert_quiet();
    assert_eq!(c.ok("channel_info", json!({"room": "r", "channel": "c"})).await["members"], 1);
    // Live-only traffic does not need storage.
    assert!(a.message(json!({"room": "r", "payload": 4})).await.is_none());
    assert_eq!(b.next().await["payload"], 4);
    assert_eq!(
        a.ok("status", json!({})).await["storage"],
        json!({"backend": "down", "healthy": false, "journaled": 0, "refused": 0})
    );
}

#[tokio::test]
async fn a_new_router_over_the_same_storage_restores_channels_and_history() {
    let storage = Arc::new(MemoryStorage::new(1000));
    let first = Router::new(config(), storage.clone());
    let mut a = Client::connect(&first, Role::User);
    a.create("r", "empty").await;
    let id = a.publish("r", "c", json!("kept")).await;
    let info = a.ok("channel_info", json!({"room": "r", "channel": "c"})).await;
    drop(a);

    let second = Router::new(config(), storage);
    assert_eq!(second.counts().channels, 0);
    assert_eq!(second.restore().await.unwrap(), 2);
    let mut b = Client::connect(&second, Role::Guest);
    let list = b.ok("list_channels", json!({})).await;
    assert_eq!(
        list["channels"],
        json!([{"room": "r", "channel": "c", "members": 0}, {"room": "r", "channel": "empty", "members": 0}])
    );
    let restored = b.ok("channel_info", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(restored["created_at"], info["created_at"]);
    assert_eq!(restored["last_id"], id.to_string());
    let history = b.ok("history", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(history["messages"][0]["payload"], "kept");
}

#[tokio::test(start_paused = true)]
async fn uptime_follows_the_clock() {
    let router = router();
    let mut a = Client::connect(&router, Role::Guest);
    assert_eq!(a.ok("status", json!({})).await["uptime_s"], 0);
    tokio::time::advance(Duration::from_secs(90)).await;
    assert_eq!(a.ok("status", json!({})).await["uptime_s"], 90);
    assert_eq!(router.uptime_s(), 90);
}

/// Memory storage that cannot delete.
struct Undeletable(MemoryStorage);

#[async_trait]
impl Storage for Undeletable {
    async fn create_channel(&self, key: &ChannelKey, at: Timestamp) -> Result<(ChannelRecord, bool), StorageError> {
        self.0.create_channel(key, at).await
    }
    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        self.0.channels().await
    }
    async fn delete_channel(&self, _key: &ChannelKey) -> Result<bool, StorageError> {
        Err(StorageError::Unavailable("redis is down".into()))
    }
    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        self.0.append(key, message).await
    }
    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        self.0.history(key, limit, before).await
    }
    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        self.0.since(key, after).await
    }
    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        self.0.stats(key).await
    }
    fn health(&self) -> Health {
        self.0.health()
    }
}

#[tokio::test]
async fn a_delete_the_storage_refuses_changes_nothing() {
    let router = Router::new(config(), Arc::new(Undeletable(MemoryStorage::new(1000))));
    let mut admin = Client::connect(&router, Role::Admin);
    let mut b = Client::connect(&router, Role::User);
    b.join("r", "c").await;
    b.publish("r", "c", json!("before")).await;

    let error = admin.fail("delete_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(error["code"], "STORAGE_UNAVAILABLE");
    // Not deleted, so nobody is told, and every member still is one.
    b.assert_quiet();
    let info = admin.ok("channel_info", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(info["members"], 1);
    assert_eq!(info["stored"], 1);
    admin.publish("r", "c", json!("after")).await;
    assert_eq!(b.next().await["payload"], "after");
}

#[tokio::test]
async fn broker_hears_of_clients_and_channels_and_adds_remote_members_to_counts() {
    let broker = Arc::new(FakeBroker::default());
    *broker.remote_members.lock().unwrap() = 5;
    let router = Router::with_broker(config(), Arc::new(MemoryStorage::new(1000)), broker.clone());
    let mut admin = Client::connect(&router, Role::Admin);
    let admin_id = admin.id_str();
    assert_eq!(broker.take_log(), vec![format!("connected {admin_id}")]);
    let joined = admin.join("r", "c").await;
    assert_eq!(joined["members"], 6, "1 local + 5 on other nodes");
    assert_eq!(broker.take_log(), vec!["created r/c".to_owned()]);
    let listed = admin.ok("list_channels", json!({})).await;
    assert_eq!(listed["channels"][0]["members"], 6);
    assert_eq!(admin.ok("channel_info", json!({"room": "r", "channel": "c"})).await["members"], 6);
    admin.ok("delete_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(broker.take_log(), vec!["deleted r/c".to_owned()]);
    admin.drain();
    drop(admin);
    assert_eq!(broker.take_log(), vec![format!("disconnected {admin_id}")]);
}

#[tokio::test]
async fn channels_created_and_deleted_on_other_nodes_are_applied_locally() {
    let broker = Arc::new(FakeBroker::default());
    let router = Router::with_broker(config(), Arc::new(MemoryStorage::new(1000)), broker.clone());
    let key = ChannelKey::parse("far", "away").unwrap();
    router.channel_created_elsewhere(&key, Timestamp::now());
    // Known here now, without being announced back to the other nodes.
    assert_eq!(router.counts().channels, 1);
    assert!(broker.take_log().iter().all(|line| !line.starts_with("created")));
    let mut member = Client::connect(&router, Role::Guest);
    member.join("far", "away").await;
    assert_eq!(router.channel_deleted_elsewhere(&key).await, 1);
    let event = member.next().await;
    assert_eq!(event["payload"], json!({"event": "channel_deleted", "room": "far", "channel": "away"}));
    assert_eq!(router.counts().channels, 0);
    assert!(broker.take_log().iter().all(|line| !line.starts_with("deleted")));
    // Deleting what is already gone tells no one.
    assert_eq!(router.channel_deleted_elsewhere(&key).await, 0);
}

/// A broker whose channel subscriptions complete only when the test says so.
#[derive(Debug, Default)]
struct GatedBroker {
    gate: Arc<tokio::sync::Notify>,
    asked: Mutex<Vec<ChannelKey>>,
}

impl Broker for GatedBroker {
    fn forward(&self, _delivery: Delivery) {}
    fn knows_client(&self, _id: ClientId) -> bool {
        false
    }
    fn interest(&self, _key: &ChannelKey, _local_members: usize) {}
    fn subscribe(&self, key: &ChannelKey) -> arqon_routing::Subscribed {
        self.asked.lock().unwrap().push(key.clone());
        let gate = Arc::clone(&self.gate);
        Box::pin(async move { gate.notified().await })
    }
}

#[tokio::test]
async fn join_is_answered_only_once_the_broker_receives_the_channel() {
    let broker = Arc::new(GatedBroker::default());
    let router = Router::with_broker(config(), Arc::new(MemoryStorage::new(1000)), broker.clone());
    let mut a = Client::connect(&router, Role::User);
    let id = a.new_id();
    let frame = json!({"type": "command", "id": id.to_string(), "command": "join_channel",
                       "args": {"room": "r", "channel": "c"}})
    .to_string();
    {
        let join = a.session.handle_text(&frame);
        tokio::pin!(join);
        // Held up by the broker: no answer yet.
        assert!(tokio::time::timeout(Duration::from_millis(100), &mut join).await.is_err());
        assert_eq!(*broker.asked.lock().unwrap(), [key("r", "c")]);
        broker.gate.notify_one();
        tokio::time::timeout(WAIT, join).await.expect("the join completes once subscribed");
    }
    let reply = a.next().await;
    assert_eq!((reply["type"].as_str(), reply["request_id"].as_str()), (Some("response"), Some(&*id.to_string())));
    assert_eq!(reply["payload"]["members"], 1);
}

#[tokio::test]
async fn member_events_stop_when_the_cluster_wide_count_passes_the_limit() {
    let broker = Arc::new(FakeBroker::default());
    let config = RouterConfig { member_events_max: 2, ..config() };
    let router = Router::with_broker(config, Arc::new(MemoryStorage::new(1000)), broker.clone());
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    a.join("r", "c").await;
    // Two local members and none elsewhere: within the limit, a hears b.
    b.join("r", "c").await;
    assert_eq!(a.next().await["payload"]["event"], "member_joined");
    // Five members on other nodes: the channel is too large for member events.
    *broker.remote_members.lock().unwrap() = 5;
    b.ok("leave_channel", json!({"room": "r", "channel": "c"})).await;
    a.assert_quiet();
}

// ---------------------------------------------------------------------------
// No client can get another closed (protocol v1.1 section 8.5)
// ---------------------------------------------------------------------------

/// Frames queued for `client` and not read, as parsed envelopes.
fn queued(client: &mut Client) -> Vec<Value> {
    std::iter::from_fn(|| client.try_next()).collect()
}

#[tokio::test(start_paused = true)]
async fn direct_floods_are_refused_to_their_senders_and_the_victim_stays() {
    // 30 senders, 200 direct messages of 8 KiB each (48 MB), each sender
    // inside its own rate, at a victim that reads nothing. Its backlog bound
    // is 2 MiB: queued as sent, the flood would close it as a slow consumer.
    let router = router_with(RouterConfig { max_backlog_bytes: 2 << 20, ..config() });
    let mut victim = Client::connect(&router, Role::User);
    let mut senders: Vec<Client> = (0..30).map(|_| Client::connect(&router, Role::User)).collect();
    let pad = "x".repeat(8 * 1024);
    let (mut refused, mut refused_for_backlog, mut refused_for_rate) = (0, 0, 0);
    for sender in &mut senders {
        for _ in 0..200 {
            if let Some(error) = sender.message(json!({"to": victim.id_str(), "payload": pad})).await {
                assert_eq!(code(&error), "RATE_LIMITED", "{error}");
                assert!(error["error"]["retry_after_ms"].as_u64().is_some_and(|ms| ms >= 1), "{error}");
                let message = error["error"]["message"].as_str().unwrap();
                assert!(message.contains(&victim.id_str()), "{message}");
                refused += 1;
                refused_for_backlog += usize::from(message.contains("not reading fast enough"));
                refused_for_rate += usize::from(message.contains("too many direct messages"));
            }
        }
    }
    assert_eq!(victim.inbox.frames.closing(), None, "the victim is not closed for what others sent");
    let got = queued(&mut victim).len();
    assert_eq!(got + refused, 30 * 200);
    // Queued while its backlog was under 1 MiB: a 1 MiB bound plus one message.
    assert!(got <= 1024 / 8 + 1, "{got} direct messages queued");
    assert!(refused_for_backlog > 0);
    // Once it reads again, the per-recipient rate (100/s, burst 200) takes over.
    tokio::time::advance(Duration::from_secs(10)).await;
    for sender in &mut senders {
        for _ in 0..20 {
            if let Some(error) = sender.message(json!({"to": victim.id_str(), "payload": 1})).await {
                assert!(error["error"]["message"].as_str().unwrap().contains("too many direct messages"));
                refused_for_rate += 1;
            }
        }
        let _ = queued(&mut victim);
    }
    assert!(refused_for_rate > 0, "600 messages at once pass a 200 burst");
    assert_eq!(victim.inbox.frames.closing(), None);
}

#[tokio::test(start_paused = true)]
async fn membership_churn_is_coalesced_into_a_summary() {
    let router = router();
    let mut victim = Client::connect(&router, Role::User);
    victim.join("r", "c").await;
    let mut churners: Vec<Client> = (0..30).map(|_| Client::connect(&router, Role::User)).collect();
    // 30 clients join and leave 20 times each: 1,200 member events.
    for _ in 0..20 {
        for churner in &mut churners {
            churner.join("r", "c").await;
            churner.ok("leave_channel", json!({"room": "r", "channel": "c"})).await;
        }
    }
    let events = queued(&mut victim);
    let sent =
        events.iter().filter(|e| e["payload"]["event"] == "member_joined" || e["payload"]["event"] == "member_left");
    // The burst of 50, less the one the victim's own join used.
    assert_eq!(sent.count(), 49, "the burst of member events, then none");
    // A second later, one summary of everything not sent, with the count now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let summary = victim.try_next().expect("a members_changed summary");
    assert_eq!(summary["payload"]["event"], "members_changed");
    assert_eq!(summary["payload"]["members"], 1);
    assert_eq!(summary["payload"]["suppressed"], 1200 - 49);
    victim.assert_quiet();
    assert_eq!(victim.inbox.frames.closing(), None);
    // The budget comes back: single events flow again.
    tokio::time::advance(Duration::from_secs(5)).await;
    churners[0].join("r", "c").await;
    assert_eq!(victim.try_next().unwrap()["payload"]["event"], "member_joined");
}

#[tokio::test]
async fn a_member_may_join_without_member_events() {
    let router = router();
    let mut quiet = Client::connect(&router, Role::User);
    quiet.ok("join_channel", json!({"room": "r", "channel": "c", "member_events": false})).await;
    let mut loud = Client::connect(&router, Role::User);
    loud.join("r", "c").await;
    let mut other = Client::connect(&router, Role::User);
    other.join("r", "c").await;
    assert_eq!(loud.try_next().unwrap()["payload"]["event"], "member_joined");
    quiet.assert_quiet();
    // Messages still arrive.
    other.message(json!({"room": "r", "channel": "c", "payload": "hi"})).await;
    assert_eq!(quiet.try_next().unwrap()["payload"], "hi");
    // Joining again with the default turns events back on.
    quiet.join("r", "c").await;
    other.ok("leave_channel", json!({"room": "r", "channel": "c"})).await;
    assert_eq!(quiet.try_next().unwrap()["payload"]["event"], "member_left");
    let error = quiet.fail("join_channel", json!({"room": "r", "channel": "c", "member_events": "no"})).await;
    assert_eq!(error["code"], "INVALID_ARGS");
}

#[tokio::test]
async fn history_responses_share_the_stored_frames_and_count_against_the_backlog() {
    let router = router_with(RouterConfig { max_backlog_bytes: 1 << 20, ..config() });
    let mut publisher = Client::connect(&router, Role::User);
    let mut member = Client::connect(&router, Role::User);
    member.join("r", "c").await;
    let pad = "x".repeat(1000);
    for n in 0..100 {
        publisher.message(json!({"room": "r", "channel": "c", "payload": {"n": n, "pad": pad}})).await;
    }
    // The frame delivered live and the one in the history response are the
    // same memory: the response is spliced from history, not copied.
    let Ok(Outbound::Frame(live)) = member.inbox.frames.try_recv() else { panic!("the first message") };
    let _ = queued(&mut member);
    let id = member.new_id();
    member
        .send_value(json!({"type": "command", "id": id, "command": "history",
                           "args": {"room": "r", "channel": "c", "limit": 100}}))
        .await;
    let Ok(Outbound::Spliced(response)) = member.inbox.frames.try_recv() else { panic!("a spliced response") };
    assert_eq!(response.items[0].bytes().as_ptr(), live.bytes().as_ptr());
    let parsed = parse_frame(&response.to_frame());
    assert_eq!(parsed["request_id"], id.to_string());
    assert_eq!(parsed["payload"]["messages"].as_array().unwrap().len(), 100);
    assert_eq!(parsed["payload"]["messages"][0]["payload"]["n"], 0);

    // A client that asks for history and never reads: each ~110 KB response
    // counts in full, so it is closed at its 1 MiB backlog, not grown
    // without bound (60 requests once took a server to 1.2 GiB).
    let mut hoarder = Client::connect(&router, Role::User);
    for _ in 0..60 {
        hoarder.send(r#"{"type":"command","command":"history","args":{"room":"r","channel":"c","limit":100}}"#).await;
    }
    assert_eq!(hoarder.inbox.frames.closing(), Some(Closing::slow(SlowCause::Backlog)));
    assert!(router.backlog_budget().used() < 2 << 20, "{}", router.backlog_budget().used());
}

// ---------------------------------------------------------------------------
// Users, presence (PROTOCOL.md section 8.2)
// ---------------------------------------------------------------------------

fn user(name: &str, info: Option<Value>) -> Identity {
    let mut identity = Identity::new(Role::User).with_user(name);
    identity.info = info.map(|v| Arc::from(serde_json::value::to_raw_value(&v).unwrap()));
    identity
}

#[tokio::test]
async fn a_user_holds_many_connections_and_is_addressed_by_name() {
    let router = router();
    let (session, mut inbox) = router.connect(user("ann", None)).unwrap();
    let welcome = match inbox.frames.try_recv() {
        Ok(Outbound::Frame(frame)) => parse_frame(&frame),
        other => panic!("no welcome: {other:?}"),
    };
    assert_eq!(welcome["payload"]["user"], "ann");
    drop(session);
    let mut tab1 = Client::connect_as(&router, user("ann", None));
    let mut tab2 = Client::connect_as(&router, user("ann", None));
    let mut bob = Client::connect_as(&router, user("bob", None));
    let mut anonymous = Client::connect(&router, Role::User);

    assert!(bob.message(json!({"to": "user:ann", "payload": {"hi": 1}})).await.is_none());
    for tab in [&mut tab1, &mut tab2] {
        let got = tab.next().await;
        assert_eq!(got["payload"]["hi"], 1, "{got}");
        assert_eq!(got["from"], bob.id_str());
        assert_eq!(got["user"], "bob", "the server names the sender's user");
    }
    let err = bob.message(json!({"to": "user:nobody", "payload": 1})).await.unwrap();
    assert_eq!(code(&err), "NOT_FOUND");
    // Writing to one's own user reaches the other tabs, never the sender.
    assert!(tab1.message(json!({"to": "user:ann", "payload": "note to self"})).await.is_none());
    assert_eq!(tab2.next().await["payload"], "note to self");
    tab1.assert_quiet();
    let mut alone = Client::connect_as(&router, user("solo", None));
    let err = alone.message(json!({"to": "user:solo", "payload": 1})).await.unwrap();
    assert_eq!(code(&err), "NOT_FOUND", "only the sender itself: nobody to reach");
    // An anonymous sender's messages carry no user; nobody can claim one.
    tab1.join("r", "c").await;
    anonymous.publish("r", "c", json!(1)).await;
    let got = tab1.next().await;
    assert!(got.get("user").is_none(), "{got}");
    let err = anonymous.message(json!({"room": "r", "channel": "c", "user": "ann", "payload": 1})).await.unwrap();
    assert_eq!(code(&err), "INVALID_ENVELOPE");
    tab1.assert_quiet();
}

#[tokio::test]
async fn presence_lists_members_by_client_id_a_page_at_a_time() {
    let router = router();
    let mut clients = vec![
        Client::connect_as(&router, user("ann", Some(json!({"name": "Ann"})))),
        Client::connect_as(&router, user("ann", Some(json!({"name": "Ann"})))),
        Client::connect_as(&router, user("bob", None)),
        Client::connect(&router, Role::Guest),
        Client::connect(&router, Role::Guest),
    ];
    clients[0].create("r", "c").await;
    for client in &mut clients {
        client.drain();
        client.join("r", "c").await;
    }
    // Member events carry the user and its info.
    let mut first = clients.remove(0);
    first.drain();
    let mut late = Client::connect_as(&router, user("cy", Some(json!({"n": 3}))));
    late.join("r", "c").await;
    let joined = first.next().await;
    assert_eq!(joined["payload"]["event"], "member_joined");
    assert_eq!(joined["payload"]["user"], "cy");
    assert_eq!(joined["payload"]["info"], json!({"n": 3}));
    clients.insert(0, first);
    clients.push(late);

    let mut expected: Vec<String> = clients.iter().map(Client::id_str).collect();
    expected.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = json!({"room": "r", "channel": "c", "limit": 2});
        if let Some(after) = &after {
            args["after"] = json!(after);
        }
        clients[3].drain();
        let page = clients[3].ok("presence", args).await;
        assert_eq!(page["total"], 6, "{page}");
        assert_eq!(page["users"], 5, "ann, bob, cy and two anonymous: {page}");
        let members = page["members"].as_array().unwrap();
        if members.is_empty() {
            break;
        }
        assert!(members.len() <= 2);
        for member in members {
            assert!(member["joined_at"].is_string(), "{member}");
            if member["user"] == "ann" {
                assert_eq!(member["info"], json!({"name": "Ann"}));
            }
            seen.push(member["client_id"].as_str().unwrap().to_owned());
        }
        after = seen.last().cloned();
    }
    assert_eq!(seen, expected, "every member once, in client id order");
    let err = clients[3].fail("presence", json!({"room": "r", "channel": "nope"})).await;
    assert_eq!(err["code"], "NOT_FOUND");
    let err = clients[3].fail("presence", json!({"room": "r", "channel": "c", "limit": 0})).await;
    assert_eq!(err["code"], "INVALID_ARGS");
    // A member that leaves (here: disconnects without a word) is gone at once.
    let gone = clients.pop().unwrap();
    drop(gone);
    clients[3].drain();
    let page = clients[3].ok("presence", json!({"room": "r", "channel": "c"})).await;
    assert_eq!((page["total"].as_u64(), page["users"].as_u64()), (Some(5), Some(4)));
}

// ---------------------------------------------------------------------------
// The server API's sessions (PROTOCOL.md section 8.3)
// ---------------------------------------------------------------------------

async fn call(session: &mut Session, command: &str, args: Value) -> Result<Value, (ErrorCode, String)> {
    let text = args.to_string();
    let raw: &arqon_protocol::RawValue = serde_json::from_str(&text).unwrap();
    match session.call(command, Some(raw.into())).await {
        Ok(payload) => Ok(serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{e}: {payload}"))),
        Err(error) => Err((error.code, error.message)),
    }
}

#[tokio::test]
async fn the_api_publishes_as_the_server_and_a_retry_is_recognised() {
    let router = router();
    let mut member = Client::connect_as(&router, user("ann", None));
    member.create("r", "c").await;
    member.join("r", "c").await;
    let mut api = router.api_session(Role::User);
    assert_eq!(router.counts().connections, 1, "an API session is not a connection");
    let id = IdGenerator::new().message_id().to_string();
    let args = json!({"room": "r", "channel": "c", "payload": {"n": 1}, "id": id});
    assert_eq!(call(&mut api, "publish", args.clone()).await.unwrap(), json!({"id": id}));
    assert_eq!(call(&mut api, "publish", args).await.unwrap(), json!({"id": id}), "a retry answers the same");
    let got = member.next().await;
    assert_eq!(got["from"], "server");
    assert!(got.get("user").is_none(), "{got}");
    member.assert_quiet();
    let history = call(&mut api, "history", json!({"room": "r", "channel": "c"})).await.unwrap();
    assert_eq!(history["messages"].as_array().unwrap().len(), 1, "{history}");
    assert_eq!(history["messages"][0]["payload"]["n"], 1);
    // Every client command runs, with the same validation.
    assert_eq!(call(&mut api, "ping", json!({})).await.unwrap()["pong"], true);
    let (code, _) =
        call(&mut api, "publish", json!({"room": "bad room", "channel": "c", "payload": 1})).await.unwrap_err();
    assert_eq!(code, ErrorCode::InvalidName);
    let (code, _) = call(&mut api, "nope", json!({})).await.unwrap_err();
    assert_eq!(code, ErrorCode::UnknownCommand);
    let (code, _) = call(&mut api, "delete_channel", json!({"room": "r", "channel": "c"})).await.unwrap_err();
    assert_eq!(code, ErrorCode::Forbidden, "a user key cannot run admin commands");
}

#[tokio::test]
async fn api_only_commands_reach_rooms_users_and_clients() {
    let router = router();
    let mut tab1 = Client::connect_as(&router, user("ann", None));
    let mut tab2 = Client::connect_as(&router, user("ann", None));
    let mut other = Client::connect_as(&router, user("bob", None));
    tab1.create("r", "a").await;
    tab1.create("r", "b").await;
    tab1.join("r", "a").await;
    other.join("r", "b").await;
    tab1.drain();
    let mut api = router.api_session(Role::Admin);

    let reached = call(&mut api, "broadcast", json!({"room": "r", "payload": "all"})).await.unwrap();
    assert_eq!(reached, json!({"delivered": 2}));
    assert_eq!(tab1.next().await["payload"], "all");
    assert_eq!(other.next().await["payload"], "all");
    let empty = call(&mut api, "broadcast", json!({"room": "empty", "payload": 1})).await.unwrap();
    assert_eq!(empty, json!({"delivered": 0}));

    let sent = call(&mut api, "send", json!({"to": "user:ann", "payload": "dm"})).await.unwrap();
    assert_eq!(sent, json!({"delivered": 2}));
    for tab in [&mut tab1, &mut tab2] {
        let got = tab.next().await;
        assert_eq!((got["payload"].as_str(), got["from"].as_str()), (Some("dm"), Some("server")));
    }
    let (code, _) = call(&mut api, "send", json!({"to": "user:nobody", "payload": 1})).await.unwrap_err();
    assert_eq!(code, ErrorCode::NotFound);
    let (code, _) = call(&mut api, "send", json!({"to": "nobody", "payload": 1})).await.unwrap_err();
    assert_eq!(code, ErrorCode::InvalidArgs);

    // subscribe: the client gets the replay and live messages, no response.
    let first = other.publish("r", "b", json!("before")).await;
    other.publish("r", "b", json!("after")).await;
    let joined = call(
        &mut api,
        "subscribe",
        json!({"client_id": tab2.id_str(), "room": "r", "channel": "b", "since": first.to_string()}),
    )
    .await
    .unwrap();
    assert_eq!(joined["members"], 2, "{joined}");
    let replay = match tab2.next_outbound().await {
        Outbound::Batch(frames) => frames.iter().map(parse_frame).collect::<Vec<_>>(),
        other => panic!("expected the replay, got {other:?}"),
    };
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0]["payload"], "after");
    other.drain();
    other.publish("r", "b", json!("live")).await;
    assert_eq!(tab2.next().await["payload"], "live");
    let stats = call(&mut api, "presence_stats", json!({"room": "r", "channel": "b"})).await.unwrap();
    assert_eq!(stats, json!({"total": 2, "users": 2}));
    let left = call(&mut api, "unsubscribe", json!({"client_id": tab2.id_str(), "room": "r", "channel": "b"})).await;
    assert_eq!(left.unwrap(), json!({"left": true}));
    let event = tab2.next().await;
    assert_eq!(event["payload"]["event"], "channel_left", "{event}");
    let stats = call(&mut api, "presence_stats", json!({"room": "r", "channel": "b"})).await.unwrap();
    assert_eq!(stats, json!({"total": 1, "users": 1}));

    // disconnect: every connection of the user, with the code, after a notice.
    tab1.drain();
    let closed = call(&mut api, "disconnect", json!({"user": "ann", "code": 4001, "reason": "banned"})).await;
    assert_eq!(closed.unwrap(), json!({"disconnected": 2}));
    for tab in [&mut tab1, &mut tab2] {
        let notice = tab.next().await;
        assert_eq!(notice["payload"], json!({"event": "disconnected", "code": 4001, "reason": "banned"}));
        assert_eq!(tab.inbox.frames.closing().map(|c| c.reason.code), Some(4001));
    }
    let (code, _) = call(&mut api, "disconnect", json!({"code": 4000})).await.unwrap_err();
    assert_eq!(code, ErrorCode::InvalidArgs);
    let (code, _) = call(&mut api, "disconnect", json!({"user": "x", "code": 1000})).await.unwrap_err();
    assert_eq!(code, ErrorCode::InvalidArgs);
}

#[tokio::test]
async fn a_batch_runs_each_command_with_its_own_checks() {
    let router = router();
    let mut api = router.api_session(Role::User);
    let batch = json!({"commands": [
        {"command": "create_channel", "args": {"room": "r", "channel": "c"}},
        {"command": "publish", "args": {"room": "r", "channel": "c", "payload": 1}},
        {"command": "delete_channel", "args": {"room": "r", "channel": "c"}},
        {"command": "nope"},
    ]});
    let results = call(&mut api, "batch", batch).await.unwrap();
    let results = results["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["created"], true, "{results:?}");
    assert!(results[1]["id"].is_string());
    assert_eq!(results[2]["error"]["code"], "FORBIDDEN");
    assert_eq!(results[3]["error"]["code"], "UNKNOWN_COMMAND");
    let many: Vec<Value> = (0..101).map(|_| json!({"command": "ping"})).collect();
    let (code, _) = call(&mut api, "batch", json!({"commands": many})).await.unwrap_err();
    assert_eq!(code, ErrorCode::InvalidArgs);
    let (code, _) = call(&mut api, "batch", json!({"commands": [{"command": "batch"}]})).await.unwrap_err();
    assert_eq!(code, ErrorCode::InvalidArgs);
    let (code, _) = call(&mut api, "batch", json!({"commands": "ping"})).await.unwrap_err();
    assert_eq!(code, ErrorCode::InvalidArgs);
}

#[tokio::test]
async fn websocket_clients_cannot_run_api_commands_and_help_says_which() {
    let router = router();
    let mut admin = Client::connect(&router, Role::Admin);
    let err = admin.fail("send", json!({"to": "user:x", "payload": 1})).await;
    assert_eq!(err["code"], "FORBIDDEN");
    assert!(err["message"].as_str().unwrap().contains("/api/send"), "{err}");
    let help = admin.ok("help", json!({})).await;
    let entry = |name: &str| help["commands"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    assert_eq!((entry("send")["api_only"].as_bool(), entry("send")["allowed"].as_bool()), (Some(true), Some(false)));
    assert_eq!(entry("presence")["api_only"], false);
    assert_eq!(entry("presence")["allowed"], true);
}

// ---------------------------------------------------------------------------
// Room options (PROTOCOL.md section 8.4)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn room_options_apply_by_the_most_specific_rule() {
    use arqon_routing::{RoomOptions, RoomRule, RoomRules};
    let rule = |pattern: &str, options: RoomOptions| RoomRule { pattern: pattern.to_owned(), options };
    let rules = RoomRules::new(vec![
        rule("quiet-*", RoomOptions { presence: false, member_events: false, ..RoomOptions::default() }),
        rule("staff", RoomOptions { join_role: Role::Admin, publish_role: Role::Admin, ..RoomOptions::default() }),
        rule("fixed-*", RoomOptions { auto_create: Some(false), ..RoomOptions::default() }),
    ]);
    let router = router_with(RouterConfig { rooms: rules, ..config() });
    let mut a = Client::connect_as(&router, user("ann", None));
    let mut b = Client::connect_as(&router, user("bob", None));
    a.join("quiet-1", "c").await;
    b.join("quiet-1", "c").await;
    a.assert_quiet();
    let err = a.fail("presence", json!({"room": "quiet-1", "channel": "c"})).await;
    assert_eq!(err["code"], "FORBIDDEN");
    let err = a.fail("join_channel", json!({"room": "staff", "channel": "c"})).await;
    assert_eq!(err["code"], "FORBIDDEN");
    let err = a.fail("publish", json!({"room": "staff", "channel": "c", "payload": 1})).await;
    assert_eq!(err["code"], "FORBIDDEN");
    let mut admin = Client::connect(&router, Role::Admin);
    admin.publish("staff", "c", json!(1)).await;
    let err = a.fail("publish", json!({"room": "fixed-1", "channel": "c", "payload": 1})).await;
    assert_eq!(err["code"], "NOT_FOUND", "no auto-create in fixed-*");
    a.publish("other", "c", json!(1)).await;
}

#[tokio::test]
async fn a_rooms_history_size_narrows_history_and_replay() {
    use arqon_routing::{RoomOptions, RoomRule, RoomRules};
    let options = RoomOptions { history_size: Some(2), ..RoomOptions::default() };
    let rules = RoomRules::new(vec![RoomRule { pattern: "short-*".to_owned(), options }]);
    let router = router_with(RouterConfig { rooms: rules, ..config() });
    let mut a = Client::connect(&router, Role::User);
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(a.publish("short-1", "c", json!(n)).await);
        a.publish("long", "c", json!(n)).await;
    }
    let history = a.ok("history", json!({"room": "short-1", "channel": "c"})).await;
    let payloads: Vec<&Value> = history["messages"].as_array().unwrap().iter().map(|m| &m["payload"]).collect();
    assert_eq!(payloads, [&json!(3), &json!(4)]);
    let page = a.ok("history", json!({"room": "short-1", "channel": "c", "before": ids[4].to_string()})).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    let all = a.ok("history", json!({"room": "long", "channel": "c"})).await;
    assert_eq!(all["messages"].as_array().unwrap().len(), 5);
    let mut b = Client::connect(&router, Role::User);
    let joined = b.ok("join_channel", json!({"room": "short-1", "channel": "c", "since": ids[0].to_string()})).await;
    assert_eq!(joined["truncated"], true, "{joined}");
    let replay = match b.next_outbound().await {
        Outbound::Batch(frames) => frames.iter().map(|f| parse_frame(f)["payload"].clone()).collect::<Vec<_>>(),
        other => panic!("expected the replay, got {other:?}"),
    };
    assert_eq!(replay, [json!(3), json!(4)]);
}

/// Records whether each routed message carried its latency; asks for every
/// one to be timed while `every` is set.
#[derive(Debug, Default)]
struct LatencyRecorder {
    timed: Mutex<Vec<bool>>,
    every: std::sync::atomic::AtomicBool,
}

impl arqon_routing::Observer for LatencyRecorder {
    fn observe(&self, event: &arqon_routing::BusEvent<'_>) {
        if let arqon_routing::BusEvent::MessageRouted { latency, .. } = event {
            self.timed.lock().unwrap().push(latency.is_some());
        }
    }

    fn times_every_message(&self) -> bool {
        self.every.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[tokio::test]
async fn routing_latency_is_timed_for_a_sample_unless_the_observer_wants_every_message() {
    use arqon_routing::LATENCY_SAMPLE;
    let recorder = Arc::new(LatencyRecorder::default());
    let router = Router::builder(config(), Arc::new(MemoryStorage::new(1000)))
        .observer(Arc::clone(&recorder) as Arc<dyn arqon_routing::Observer>)
        .build();
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    let sample = usize::from(LATENCY_SAMPLE);
    for n in 0..2 * sample + 1 {
        a.send_value(json!({"type": "message", "room": "r", "channel": "c", "payload": n})).await;
    }
    // The first message of each connection, and one in LATENCY_SAMPLE after it.
    b.send_value(json!({"type": "message", "room": "r", "channel": "c", "payload": "b"})).await;
    let timed: Vec<bool> = std::mem::take(&mut *recorder.timed.lock().unwrap());
    let expected: Vec<bool> = (0..2 * sample + 1).map(|n| n % sample == 0).chain([true]).collect();
    assert_eq!(timed, expected);
    // While the observer asks (someone watches each message), every one.
    recorder.every.store(true, std::sync::atomic::Ordering::Relaxed);
    for n in 0..3 {
        a.send_value(json!({"type": "message", "room": "r", "channel": "c", "payload": n})).await;
    }
    assert_eq!(*recorder.timed.lock().unwrap(), [true, true, true]);
}

/// A client that sees another's message id must not be able to send that
/// client's next id first: the bus would take the other's next message for
/// a retry of its own (neither stored nor delivered). The worst case for the
/// id generator: every frame of the victim arrives in one millisecond.
#[tokio::test]
async fn a_client_cannot_take_the_next_ids_of_anothers_messages() {
    let router = router();
    let mut a = Client::connect(&router, Role::User);
    let mut b = Client::connect(&router, Role::User);
    b.ok("join_channel", json!({"room": "r", "channel": "c"})).await;
    let arrival = Arrival::at(tokio::time::Instant::now(), Timestamp::now());
    let message = |n: u32| json!({"type": "message", "room": "r", "channel": "c", "payload": n}).to_string();
    a.session.handle_text_at(&message(0), arrival).await;
    let seen = b.next().await;
    assert_eq!(seen["payload"], 0, "{seen}");
    let seen = MessageId::parse(seen["id"].as_str().unwrap()).unwrap();
    // b takes the ids a counter would give a next.
    for step in 1..=64 {
        let mut squat = seen.ulid();
        squat.0 += step;
        b.send_value(json!({
            "type": "message", "room": "r", "channel": "c",
            "id": MessageId::from_ulid(squat).to_string(), "payload": "squat",
        }))
        .await;
    }
    for n in 1..=5 {
        a.session.handle_text_at(&message(n), arrival).await;
    }
    for n in 1..=5 {
        let got = b.next().await;
        assert_eq!(got["payload"], n, "a's message {n} was taken for a retry of b's: {got}");
    }
    b.assert_quiet();
}
