//! Issue 16 part 4: webhooks to a real local HTTP receiver: per-user
//! membership events in order, signed; a receiver that fails is retried; one
//! that is down never slows delivery, and what cannot be sent is counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arqon_config::{AuthMode, StaticToken};
use arqon_e2e::tls::SelfSigned;
use arqon_e2e::{TIMEOUT, TestServer, http, test_config};
use arqon_protocol::Role;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &str = "webhook-secret-0123456789";

/// Bodies accepted, each with its signature header.
type Accepted = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A receiver: answers `failures` requests with 500, then 200; keeps every
/// body it accepted with its signature header.
#[derive(Clone, Default)]
struct Receiver {
    accepted: Accepted,
    refused: Arc<Mutex<usize>>,
    handshakes_failed: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start(failures: usize) -> (Receiver, String) {
        Self::start_on(failures, None).await
    }

    /// The same over TLS, with `cert` (for `localhost`).
    async fn start_tls(failures: usize, cert: &SelfSigned) -> (Receiver, String) {
        Self::start_on(failures, Some(cert.acceptor())).await
    }

    async fn start_on(failures: usize, tls: Option<tokio_rustls::TlsAcceptor>) -> (Receiver, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("https://localhost:{port}/hooks/arqon"),
            None => format!("http://127.0.0.1:{port}/hooks/arqon"),
        };
        let receiver = Receiver::default();
        let state = receiver.clone();
        tokio::spawn(async move {
            let mut left = failures;
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                match &tls {
                    // A handshake the bus gives up on is no request.
                    Some(tls) => match tls.accept(stream).await {
                        Ok(mut stream) => state.answer(&mut stream, &mut left).await,
                        Err(_) => *state.handshakes_failed.lock().unwrap() += 1,
                    },
                    None => state.answer(&mut { stream }, &mut left).await,
                }
            }
        });
        (receiver, url)
    }

    /// Reads one request and answers it: 500 while `left` failures remain.
    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: &mut S, left: &mut usize) {
        let (head, body) = arqon_e2e::app::read_request(stream).await;
        assert!(head.starts_with("POST /hooks/arqon HTTP/1.1"), "{head}");
        let signature =
            head.lines().find_map(|l| l.strip_prefix("x-arqon-signature: ").map(str::to_owned)).unwrap_or_default();
        let status = if *left > 0 {
            *left -= 1;
            *self.refused.lock().unwrap() += 1;
            "500 Internal Server Error"
        } else {
            self.accepted.lock().unwrap().push((signature, body));
            "200 OK"
        };
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// Every event accepted so far, in order, each batch's signature checked.
    fn events(&self) -> Vec<Value> {
        let accepted = self.accepted.lock().unwrap();
        let mut events = Vec::new();
        for (signature, body) in accepted.iter() {
            assert_eq!(*signature, arqon_server::webhook_signature(SECRET.as_bytes(), body), "signed");
            let batch: Value = serde_json::from_slice(body).unwrap();
            events.extend(batch["events"].as_array().unwrap().iter().cloned());
        }
        events
    }

    /// Waits until `n` events arrived; returns them as (event, user) pairs.
    async fn until(&self, n: usize) -> Vec<(String, Value)> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let events = self.events();
            if events.len() >= n {
                return events.iter().map(|e| (e["event"].as_str().unwrap().to_owned(), e["user"].clone())).collect();
            }
            assert!(tokio::time::Instant::now() < deadline, "only {events:?} arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn config(url: &str) -> arqon_config::Config {
    with_webhooks(test_config(), url)
}

/// `config` with ann's and bob's tokens and webhooks to `url`.
fn with_webhooks(mut config: arqon_config::Config, url: &str) -> arqon_config::Config {
    config.auth.mode = AuthMode::Token;
    let token = |token: &str, user: &str| StaticToken {
        token: token.to_owned(),
        role: Role::User,
        client: user.to_owned(),
        rooms: Vec::new(),
    };
    config.auth.tokens = vec![token("ann-token", "ann"), token("bob-token", "bob")];
    config.webhooks.url = url.to_owned();
    config.webhooks.secret = SECRET.to_owned();
    config.webhooks.flush_ms = 10;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_webhooks_are_per_user_in_order_and_signed() {
    let (receiver, url) = Receiver::start(1).await;
    let server = TestServer::start_with(config(&url)).await;
    let mut tab1 = server.client_as("ann-token").await;
    tab1.join("chat", "main").await;
    let mut tab2 = server.client_as("ann-token").await;
    tab2.join("chat", "main").await; // ann's second tab: no member_added
    let mut bob = server.client_as("bob-token").await;
    bob.join("chat", "main").await;
    tab1.ok("leave_channel", json!({"room": "chat", "channel": "main"})).await; // ann still there
    drop(tab2); // ann's last connection: member_removed
    // The disconnect is noticed when the socket closes: wait for it, so the
    // order below is the order of events on the bus.
    receiver.until(4).await;
    bob.ok("leave_channel", json!({"room": "chat", "channel": "main"})).await; // vacated
    let events = receiver.until(6).await;
    let user = |name: &str| json!(name);
    assert_eq!(
        events,
        vec![
            ("channel_occupied".to_owned(), Value::Null),
            ("member_added".to_owned(), user("ann")),
            ("member_added".to_owned(), user("bob")),
            ("member_removed".to_owned(), user("ann")),
            ("member_removed".to_owned(), user("bob")),
            ("channel_vacated".to_owned(), Value::Null),
        ]
    );
    assert!(*receiver.refused.lock().unwrap() >= 1, "the first POST was refused and retried");
    let all = receiver.events();
    assert!(all.iter().all(|e| e["room"] == "chat" && e["channel"] == "main" && e["time_ms"].is_i64()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_never_slows_delivery_and_drops_are_counted() {
    // A port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut config = config(&format!("http://127.0.0.1:{port}/down"));
    config.webhooks.retries = 1;
    config.webhooks.queue = 4;
    config.webhooks.events.push("message_published".to_owned());
    let server = TestServer::start_with(config).await;
    let (mut ann, mut bob) = (server.client_as("ann-token").await, server.client_as("bob-token").await);
    ann.join("r", "c").await;
    bob.join("r", "c").await;
    // 200 acknowledged publishes, each an event the queue cannot hold.
    for n in 0..200 {
        bob.ok("publish", json!({"room": "r", "channel": "c", "payload": n})).await;
    }
    for n in 0..200 {
        assert_eq!(ann.recv_message().await["payload"], n);
    }
    let monitoring = server.monitoring.unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_, metrics) = http(monitoring, "GET", "/metrics").await;
        let count = |reason: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(&format!("arqon_webhook_events_dropped_total{{reason=\"{reason}\"}}")))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if count("queue_full") > 0.0 && count("failed") > 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "drops not counted:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The events of ann and bob joining `chat/main` and of the shutdown closing
/// them: the joins' three first (the two joins ran on two threads, so their
/// events may cross), then the two removals and the vacated channel, in any
/// order.
fn assert_joined_then_closed(receiver: &Receiver) {
    let events: Vec<(String, Value)> =
        receiver.events().iter().map(|e| (e["event"].as_str().unwrap().to_owned(), e["user"].clone())).collect();
    assert_eq!(events.len(), 6, "{events:?}");
    let sorted = |mut part: Vec<(String, Value)>| {
        part.sort_by_key(|(name, user)| (name.clone(), user.to_string()));
        part
    };
    let event = |name: &str, user: Value| (name.to_owned(), user);
    let joined = [
        event("channel_occupied", Value::Null),
        event("member_added", json!("ann")),
        event("member_added", json!("bob")),
    ];
    assert_eq!(sorted(events[..3].to_vec()), joined, "{events:?}");
    let closed = [
        event("channel_vacated", Value::Null),
        event("member_removed", json!("ann")),
        event("member_removed", json!("bob")),
    ];
    assert_eq!(sorted(events[3..].to_vec()), closed, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_at_shutdown_are_sent_before_the_bus_stops() {
    let (receiver, url) = Receiver::start(0).await;
    let mut config = config(&url);
    // A batch would wait a minute to fill: only the shutdown sends it.
    config.webhooks.flush_ms = 60_000;
    let server = TestServer::start_with(config).await;
    let (mut ann, mut bob) = (server.client_as("ann-token").await, server.client_as("bob-token").await);
    ann.join("chat", "main").await;
    bob.join("chat", "main").await;
    assert!(receiver.events().is_empty(), "nothing sent before the shutdown");
    // The clients answer the bus's close, as browsers do.
    let closing = [ann, bob].map(|mut client| tokio::spawn(async move { client.drain_until_closed().await }));
    server.shutdown().await;
    for client in closing {
        client.await.unwrap();
    }
    // Sent by the time the bus stopped, the shutdown's own disconnects too.
    assert_joined_then_closed(&receiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_to_close_does_not_take_the_grace_from_the_webhooks() {
    let (receiver, url) = Receiver::start(0).await;
    let mut config = config(&url);
    config.webhooks.flush_ms = 60_000;
    config.server.shutdown_grace_ms = 1500;
    let server = TestServer::start_with(config).await;
    // ann never answers the close: the bus waits for her the whole grace.
    let mut ann = server.client_as("ann-token").await;
    ann.join("chat", "main").await;
    let mut bob = server.client_as("bob-token").await;
    bob.join("chat", "main").await;
    let bob_closing = tokio::spawn(async move { bob.drain_until_closed().await });
    server.shutdown().await;
    bob_closing.await.unwrap();
    // Everything went while ann held on: the webhooks did not wait for the
    // connections to end before sending.
    assert_joined_then_closed(&receiver);
    drop(ann);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_does_not_hold_up_the_shutdown() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            streams.push(stream);
        }
    });
    let mut config = config(&url);
    config.webhooks.flush_ms = 60_000;
    config.server.shutdown_grace_ms = 300;
    let server = TestServer::start_with(config).await;
    let mut ann = server.client_as("ann-token").await;
    ann.join("chat", "main").await;
    // Each POST could take 5 s and be retried 5 times: the grace bounds it
    // (TestServer::shutdown fails past its own timeout).
    server.shutdown().await;
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_go_over_https_to_a_receiver_whose_ca_is_configured() {
    let cert = SelfSigned::new("webhooks-https");
    let (receiver, url) = Receiver::start_tls(0, &cert).await;
    let mut config = config(&url);
    config.webhooks.ca_file = cert.cert_path.display().to_string();
    let server = TestServer::start_with(config).await;
    let mut ann = server.client_as("ann-token").await;
    ann.join("chat", "main").await;
    let events = receiver.until(2).await;
    assert_eq!(events[1], ("member_added".to_owned(), json!("ann")));
    assert!(receiver.events().iter().all(|e| e["room"] == "chat"), "signed and whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_receiver_with_an_unknown_ca_gets_nothing_and_the_drop_is_counted() {
    let cert = SelfSigned::new("webhooks-untrusted");
    let (receiver, url) = Receiver::start_tls(0, &cert).await;
    let mut config = config(&url); // no ca_file: the self-signed certificate is not trusted
    config.webhooks.retries = 1;
    let server = TestServer::start_with(config).await;
    let mut ann = server.client_as("ann-token").await;
    ann.join("chat", "main").await;
    let monitoring = server.monitoring.unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_, metrics) = http(monitoring, "GET", "/metrics").await;
        if metrics.lines().any(|l| l.starts_with("arqon_webhook_events_dropped_total{reason=\"failed\"} 2")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the failed batch was not counted:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.events().is_empty());
    assert!(*receiver.handshakes_failed.lock().unwrap() >= 2, "each attempt was refused at the handshake");
    ann.ok("ping", json!({})).await;
}

#[test]
fn a_webhook_ca_file_without_certificates_fails_start_up_naming_it() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ca = std::env::temp_dir().join(format!("arqon-not-a-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, "no certificate here\n").unwrap();
    let mut config = config("https://localhost:1/x");
    config.webhooks.ca_file = ca.display().to_string();
    let error = runtime.block_on(arqon_server::Bus::bind(&config)).unwrap_err().to_string();
    assert!(error.contains("webhooks.ca_file") && error.contains("holds no certificate"), "{error}");
    let _ = std::fs::remove_file(ca);
}

#[cfg(feature = "redis")]
mod cluster {
    use std::time::Instant;

    use arqon_e2e::redis::{RedisProcess, redis_available};

    use super::*;
    use crate::cluster::{node_config, until_status};

    /// `n` nodes over `redis`, webhooks to `url`, each knowing the others.
    async fn start_nodes(redis: &RedisProcess, url: &str, n: usize) -> Vec<TestServer> {
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(TestServer::start_with(with_webhooks(node_config(redis, &format!("node-{i}")), url)).await);
        }
        for node in &nodes {
            until_status(node, |s| s["cluster"]["peers"].as_array().map(Vec::len) == Some(n - 1)).await;
        }
        nodes
    }

    fn pairs(events: &[(String, Value)]) -> Vec<(&str, Value)> {
        events.iter().map(|(e, u)| (e.as_str(), u.clone())).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn member_webhooks_fire_once_for_the_whole_cluster() {
        if !redis_available("member_webhooks_fire_once_for_the_whole_cluster") {
            return;
        }
        let redis = RedisProcess::start();
        let (receiver, url) = Receiver::start(0).await;
        let nodes = start_nodes(&redis, &url, 2).await;
        let main = json!({"room": "chat", "channel": "main"});
        let mut tab1 = nodes[0].client_as("ann-token").await;
        tab1.join("chat", "main").await;
        receiver.until(2).await;
        // ann's second tab, on the other node: nothing new for the cluster.
        let mut tab2 = nodes[1].client_as("ann-token").await;
        tab2.join("chat", "main").await;
        let mut bob = nodes[1].client_as("bob-token").await;
        bob.join("chat", "main").await;
        receiver.until(3).await;
        // ann's tab on node 0 leaves, the one on node 1 stays: nothing.
        tab1.ok("leave_channel", main.clone()).await;
        drop(tab2); // ann's last connection anywhere
        receiver.until(4).await;
        bob.ok("leave_channel", main.clone()).await;
        let events = receiver.until(6).await;
        assert_eq!(
            pairs(&events),
            [
                ("channel_occupied", Value::Null),
                ("member_added", json!("ann")),
                ("member_added", json!("bob")),
                ("member_removed", json!("ann")),
                ("member_removed", json!("bob")),
                ("channel_vacated", Value::Null),
            ]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(receiver.events().len(), 6, "no other event: {:?}", receiver.events());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_members_of_a_dead_node_are_removed_once_by_a_survivor() {
        if !redis_available("the_members_of_a_dead_node_are_removed_once_by_a_survivor") {
            return;
        }
        let redis = RedisProcess::start();
        // What a node killed long ago left: an old heartbeat, and in the
        // ledger ann (held there only) and bob (held by another node too).
        redis.command(&["ZADD", "arqon:nodes", "1000", "ghost"]);
        redis.command(&["SADD", "arqon:node:ghost:presence", "chat:main"]);
        redis.command(&["HSET", "arqon:holders:chat:main", "ghost\nu:ann", "1", "ghost\nu:bob", "1"]);
        redis.command(&["HSET", "arqon:holders:chat:main", "elsewhere\nu:bob", "1"]);
        redis.command(&["HSET", "arqon:identities:chat:main", "u:ann", "1", "u:bob", "2"]);
        let (receiver, url) = Receiver::start(0).await;
        let nodes = start_nodes(&redis, &url, 2).await;
        // One of the two nodes started first and removed them; never both.
        let events = receiver.until(1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(receiver.events().len(), 1, "{:?}", receiver.events());
        assert_eq!(pairs(&events), [("member_removed", json!("ann"))]);
        assert_eq!(redis.command_values(&["HGETALL", "arqon:identities:chat:main"]), ["u:bob", "1"]);
        assert_eq!(redis.command_values(&["HKEYS", "arqon:holders:chat:main"]), ["elsewhere\nu:bob"]);
        drop(nodes);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_who_left_while_redis_was_away_is_removed_when_it_is_back() {
        if !redis_available("a_member_who_left_while_redis_was_away_is_removed_when_it_is_back") {
            return;
        }
        let mut redis = RedisProcess::start_durable(); // it comes back with its data
        let (receiver, url) = Receiver::start(0).await;
        let nodes = start_nodes(&redis, &url, 1).await;
        let mut ann = nodes[0].client_as("ann-token").await;
        ann.join("chat", "main").await;
        receiver.until(2).await;
        redis.kill();
        until_status(&nodes[0], |s| s["cluster"]["healthy"] == false).await;
        ann.ok("leave_channel", json!({"room": "chat", "channel": "main"})).await;
        redis.restart();
        until_status(&nodes[0], |s| s["cluster"]["healthy"] == true).await;
        let events = receiver.until(4).await;
        assert_eq!(pairs(&events[2..]), [("member_removed", json!("ann")), ("channel_vacated", Value::Null)]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(receiver.events().len(), 4, "once: {:?}", receiver.events());
        let deadline = Instant::now() + TIMEOUT;
        while redis.command(&["EXISTS", "arqon:identities:chat:main"]) != ":0" {
            assert!(Instant::now() < deadline, "the ledger kept ann");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
