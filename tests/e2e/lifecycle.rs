//! Slow consumers, heartbeats and shutdown.

use std::time::Duration;

use arqon_e2e::{Closed, TestClient, TestServer, test_config};
use serde_json::{Value, json};
use tokio::net::TcpSocket;

/// A client whose socket buffers are tiny, so that not reading fills the
/// server's queue quickly.
async fn stubborn_client(server: &TestServer) -> TestClient {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(server.url(), tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    TestClient::from_ws(ws).await
}

/// Publishes `n` messages of about 2 KB to `load/c`, never more than the
/// window ahead of `fast`, which must get every one in order; hands `fast`
/// back.
async fn publish_past(publisher: &mut TestClient, fast: TestClient, n: u64) -> TestClient {
    let payload = "p".repeat(2048);
    let window = arqon_e2e::Window::default();
    let progress = window.clone();
    let reader = tokio::spawn(async move {
        let mut fast = fast;
        for i in 0..n {
            let msg = fast.recv_message().await;
            assert_eq!(msg["payload"]["i"], i);
            progress.received(i + 1);
        }
        fast
    });
    for i in 0..n {
        window.before_sending(i).await;
        publisher.publish_ff("load", "c", json!({"i": i, "pad": payload})).await;
    }
    reader.await.unwrap()
}

/// A client that never reads and one that does join `load/c`; 6,000
/// messages of about 2 KB (12 MB) go past them. Returns (stalled, reader,
/// publisher).
async fn burst_past_a_stalled_client(server: &TestServer) -> (TestClient, TestClient, TestClient) {
    let mut slow = stubborn_client(server).await;
    let (mut fast, mut publisher) = (server.client().await, server.client().await);
    slow.join("load", "c").await;
    fast.join("load", "c").await;
    let fast = publish_past(&mut publisher, fast, 6000).await;
    (slow, fast, publisher)
}

/// Messages `slow` got before its close are `0..k`, in order, none twice.
fn assert_prefix(frames: &[Value]) {
    let got: Vec<&Value> = frames.iter().filter(|f| f["type"] == "message").map(|f| &f["payload"]["i"]).collect();
    for (i, n) in got.iter().enumerate() {
        assert_eq!(**n, i, "the slow client's messages are a prefix, in order");
    }
}

async fn slow_consumer_closes(server: &TestServer, cause: &str) -> f64 {
    let mon = server.monitoring.unwrap();
    let series = format!(r#"arqon_slow_consumer_disconnects_total{{cause="{cause}"}}"#);
    let (_, text) = arqon_e2e::http(mon, "GET", "/metrics").await;
    arqon_telemetry::sample(&text, &series).unwrap_or_else(|| panic!("{series} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_past_its_backlog_bytes_is_closed_with_1008_and_others_get_everything() {
    // A 1 MiB backlog and a write timeout too long to matter: 12 MB to a
    // client that reads nothing passes its socket buffers plus 1 MiB. The
    // publisher never runs more than 500 messages ahead of the reading
    // client, so only the client that never reads can fall behind, however
    // slow this machine is.
    let mut config = test_config();
    config.limits.max_backlog_bytes = 1 << 20;
    config.limits.write_timeout_ms = 600_000;
    let server = TestServer::start_with(config).await;
    let (mut slow, _fast, mut publisher) = burst_past_a_stalled_client(&server).await;
    // Its queued frames were dropped when it was closed; what was already in
    // the socket arrives, then the close frame.
    let (frames, closed) = slow.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(1008));
    assert_prefix(&frames);
    assert!(frames.len() < 6000, "it was cut off, not waited for");
    drop(slow);
    // The closed client leaves the registry as soon as its tasks end.
    let deadline = tokio::time::Instant::now() + arqon_e2e::TIMEOUT;
    while publisher.ok("status", json!({})).await["connections"] != 2 {
        assert!(tokio::time::Instant::now() < deadline, "the slow consumer never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slow_consumer_closes(&server, "backlog").await, 1.0);
    assert_eq!(slow_consumer_closes(&server, "write_timeout").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_socket_takes_nothing_is_dropped_after_the_write_timeout() {
    // The default 64 MiB backlog holds the 12 MB burst; the client's socket
    // fills and stays full, so the write timeout (1 s here) decides. No
    // close frame can pass a full socket: the connection is dropped.
    let mut config = test_config();
    config.limits.write_timeout_ms = 1000;
    let server = TestServer::start_with(config).await;
    let (mut slow, _fast, _publisher) = burst_past_a_stalled_client(&server).await;
    let deadline = tokio::time::Instant::now() + arqon_e2e::TIMEOUT;
    while slow_consumer_closes(&server, "write_timeout").await != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the stalled client was never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (frames, closed) = slow.drain_until_closed().await;
    assert_eq!(closed, Closed::Eof);
    assert_prefix(&frames);
    assert_eq!(slow_consumer_closes(&server, "backlog").await, 0.0);
}

#[tokio::test]
async fn a_burst_larger_than_a_queue_reaches_a_reading_subscriber_whole() {
    // One write carries 3,000 messages (1.3 MB), five times the subscriber's
    // backlog (256 KiB here): the server must let the subscriber's writer
    // drain it while it routes the burst, rather than route all of it first
    // and close a subscriber that reads as fast as it can (1008). On one
    // thread, as here, nothing else could drain it in between.
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut config = test_config();
    config.limits.max_message_bytes = 64 * 1024;
    config.limits.max_backlog_bytes = 256 * 1024;
    let server = TestServer::start_with(config).await;
    let (mut subscriber, mut publisher) = (server.client().await, server.client().await);
    subscriber.join("burst", "c").await;
    const N: u64 = 3000;
    let reader = tokio::spawn(async move {
        for i in 0..N {
            let msg = subscriber.recv_message().await;
            assert_eq!(msg["payload"]["i"], i);
        }
    });
    for i in 0..N {
        let frame =
            json!({"type": "message", "room": "burst", "channel": "c", "payload": {"i": i, "pad": "p".repeat(300)}});
        publisher.ws.feed(Message::text(frame.to_string())).await.unwrap();
    }
    publisher.ws.flush().await.unwrap();
    reader.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_two_heartbeats_and_a_live_one_is_not() {
    let mut config = test_config();
    config.server.heartbeat_s = 1;
    let server = TestServer::start_with(config).await;
    let mut silent = server.client().await;
    let mut live = server.client().await;
    assert_eq!(live.welcome["payload"]["heartbeat_s"], 1);
    // `live` reads (and so answers pings) while `silent` does not.
    let keep = tokio::spawn(async move {
        live.expect_silence(Duration::from_millis(3500)).await;
        live.ok("ping", json!({})).await;
    });
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let closed = silent.closed().await;
    // A peer that answers no ping is dropped without a closing handshake
    // (the writer's own tests pin the timing under a paused clock).
    assert_eq!(closed, Closed::Eof);
    keep.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_the_event_then_closes_with_1001() {
    let server = TestServer::start().await;
    let (mut a, mut b) = (server.client().await, server.client().await);
    a.join("r", "c").await;
    b.join("r", "c").await;
    a.publish_ff("r", "c", json!("last words")).await;
    a.ok("ping", json!({})).await;
    server.shutdown().await;
    for client in [&mut a, &mut b] {
        let (frames, closed) = client.drain_until_closed().await;
        assert_eq!(closed, Closed::Code(1001));
        let last = frames.last().unwrap();
        assert_eq!(last["payload"]["event"], "shutdown", "{frames:?}");
        assert!(last["payload"]["reason"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_refused_and_both_endpoints_work() {
    let server = TestServer::start().await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/nope", server.addr)).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 404);
            let body = String::from_utf8(response.body().clone().unwrap()).unwrap();
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"]["code"], "NOT_FOUND");
        }
        other => panic!("expected HTTP 404, got {other:?}"),
    }
    let mut root = TestClient::connect(&format!("ws://{}/", server.addr)).await;
    assert_eq!(root.ok("ping", json!({})).await["pong"], true);
}
