//! Issue 5: health, readiness, status, metrics and the telemetry stream.

use std::net::SocketAddr;
use std::time::Duration;

use arqon_e2e::{TIMEOUT, TestServer, http, test_config};
use arqon_telemetry::sample;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    body
}

/// Scrapes until `series` reaches `value` (disconnects are counted when the
/// server notices them, a moment after the client leaves).
async fn wait_for_metric(addr: SocketAddr, series: &str, value: f64) -> String {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let text = scrape(addr).await;
        if sample(&text, series) == Some(value) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} never reached {value}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_sequence_exactly() {
    let server = TestServer::start().await;
    let mon = server.monitoring.unwrap();
    let (mut a, mut b, c) = (server.client().await, server.client().await, server.client().await);
    a.join("m", "c").await;
    b.join("m", "c").await;
    // Nine: the routing latency is timed for a connection's first message
    // and one in eight after it (arqon_routing::LATENCY_SAMPLE).
    for i in 0..9 {
        a.publish_ff("m", "c", json!(i)).await;
    }
    for _ in 0..9 {
        b.recv_message().await;
    }
    a.err("dance", json!({})).await;
    a.send_text("not json").await;
    a.recv_where(|v| v["type"] == "error").await;
    drop(c);
    let text = wait_for_metric(mon, "arqon_connections_closed_total", 1.0).await;
    assert_eq!(sample(&text, "arqon_connections_opened_total"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "arqon_connections"), Some(2.0));
    assert_eq!(sample(&text, r#"arqon_frames_received_total{type="message"}"#), Some(9.0));
    // join, join, dance
    assert_eq!(sample(&text, r#"arqon_frames_received_total{type="command"}"#), Some(3.0));
    assert_eq!(sample(&text, r#"arqon_frames_received_total{type="invalid"}"#), Some(1.0));
    assert_eq!(sample(&text, "arqon_messages_routed_total"), Some(9.0));
    assert_eq!(sample(&text, "arqon_messages_delivered_total"), Some(9.0));
    assert_eq!(sample(&text, "arqon_message_fanout_count"), Some(9.0));
    assert_eq!(sample(&text, "arqon_routing_latency_seconds_count"), Some(2.0));
    assert_eq!(sample(&text, r#"arqon_errors_total{code="UNKNOWN_COMMAND"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"arqon_errors_total{code="INVALID_JSON"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"arqon_errors_total{code="NOT_FOUND"}"#), Some(0.0));
    assert_eq!(
        sample(&text, r#"arqon_command_duration_seconds_count{command="join_channel",outcome="ok"}"#),
        Some(2.0)
    );
    assert_eq!(sample(&text, r#"arqon_storage_operations_total{op="append"}"#), Some(9.0));
    assert_eq!(sample(&text, "arqon_storage_healthy"), Some(1.0));
    assert_eq!(sample(&text, "arqon_rate_limited_total"), Some(0.0));
    for cause in arqon_telemetry::SLOW_CAUSES {
        let series = format!(r#"arqon_slow_consumer_disconnects_total{{cause="{cause}"}}"#);
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    assert!(sample(&text, "arqon_backlog_bytes").is_some());
    assert_eq!(sample(&text, "arqon_backlog_budget_bytes"), Some((1u64 << 30) as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_status_and_http_errors() {
    let server = TestServer::start().await;
    let mon = server.monitoring.unwrap();
    let mut a = server.client().await;
    a.join("s", "one").await;
    let (status, body) = http(mon, "GET", "/health").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = http(mon, "GET", "/ready").await;
    assert_eq!(status, 200);
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["storage"], json!({"backend": "memory", "healthy": true, "journaled": 0, "refused": 0}));
    a.publish_ff("s", "one", json!(1)).await;
    a.ok("ping", json!({})).await;
    let (status, body) = http(mon, "GET", "/status").await;
    assert_eq!(status, 200);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert!(s["version"].is_string() && s["uptime_s"].is_u64());
    assert_eq!(s["connections"], 1);
    assert_eq!(s["rooms"], 1);
    assert_eq!(s["channels"], json!([{"room": "s", "channel": "one", "members": 1}]));
    assert_eq!(s["messages"]["in"], 1);
    assert_eq!(s["storage"]["backend"], "memory");
    let (status, body) = http(mon, "GET", "/nope").await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "NOT_FOUND");
    let (status, body) = http(mon, "POST", "/health").await;
    assert_eq!(status, 405);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "METHOD_NOT_ALLOWED");
    let (status, _) = http(mon, "GET", "/telemetry").await;
    assert_eq!(status, 400);
}

/// `/status` `messages.in` counts every message a client got into the bus,
/// whether sent as a `message` frame or with the `publish` command; a retried
/// publish (same id) is not a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_messages_in_from_publish_commands_and_frames() {
    let server = TestServer::start().await;
    let mon = server.monitoring.unwrap();
    let mut reader = server.client().await;
    reader.join("s", "in").await;
    let mut writer = server.client().await;
    writer.ok("publish", json!({"room": "s", "channel": "in", "payload": 1})).await;
    let id = writer.new_id();
    for _ in 0..2 {
        let frame = json!({"type": "command", "id": id, "command": "publish",
                           "args": {"room": "s", "channel": "in", "payload": 2}});
        writer.send(frame).await;
        let answer = writer.recv_where(|v| v["request_id"] == id.as_str()).await;
        assert_eq!(answer["type"], "response", "{answer}");
    }
    writer.publish_ff("s", "in", json!(3)).await;
    assert_eq!(writer.err("publish", json!({"room": "s", "channel": "in"})).await, "INVALID_ARGS");
    for payload in [1, 2, 3] {
        assert_eq!(reader.recv_message().await["payload"], payload);
    }
    let (status, body) = http(mon, "GET", "/status").await;
    assert_eq!(status, 200);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["messages"], json!({"in": 3, "out": 3}), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_shutting_down() {
    let mut config = test_config();
    config.server.shutdown_grace_ms = 3000;
    let mut server = TestServer::start_with(config).await;
    let mon = server.monitoring.unwrap();
    // A client that never reads keeps the server draining for the grace period.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (stubborn, _) =
        tokio_tungstenite::client_async(server.url(), tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    let mut publisher = server.client().await;
    let mut member = arqon_e2e::TestClient::from_ws(stubborn).await;
    member.join("d", "c").await;
    for i in 0..300 {
        publisher.publish_ff("d", "c", json!({"i": i, "pad": "x".repeat(1000)})).await;
    }
    publisher.ok("ping", json!({})).await;
    assert_eq!(http(mon, "GET", "/ready").await.0, 200);
    server.begin_shutdown();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (status, body) = http(mon, "GET", "/ready").await;
        if status == 503 {
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["accepting"], false);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never became unready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(member);
}

async fn telemetry(mon: SocketAddr, query: &str) -> arqon_e2e::Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{mon}/telemetry{query}")).await.unwrap();
    ws
}

async fn next_event(ws: &mut arqon_e2e::Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next()).await.expect("event in time").unwrap().unwrap();
        if let Message::Text(text) = msg {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

/// Reads the next events and checks them against `expected`, in order: each
/// event's name and, where given, its client id.
async fn expect_events(ws: &mut arqon_e2e::Ws, expected: &[(&str, Option<String>)]) {
    for (name, client) in expected {
        let event = next_event(ws).await;
        assert_eq!(event["event"], *name, "{event}");
        assert!(event["timestamp"].is_string());
        if let Some(client) = client {
            assert_eq!(event["client_id"], client.as_str(), "{event}");
        }
        if *name == "message_routed" {
            assert_eq!(event["fanout"], 1);
            assert_eq!(event["room"], "t");
            assert!(event["bytes"].as_u64().unwrap() > 0 && event["latency_us"].is_u64());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_observer_sees_a_known_sequence_in_order() {
    let server = TestServer::start().await;
    let mon = server.monitoring.unwrap();
    let mut all = telemetry(mon, "").await;
    let mut errors = telemetry(mon, "?events=error").await;
    // Give the upgrade a moment to subscribe before events happen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.join("t", "c").await;
    b.join("t", "c").await;
    // A command's response is queued before its command_executed event, and
    // the two connections run on different threads: b can have its answer
    // before its event exists. Reading the events up to here first keeps the
    // publish below from racing b's command_executed.
    expect_events(
        &mut all,
        &[
            ("connection_opened", Some(a.id.clone())),
            ("connection_opened", Some(b.id.clone())),
            ("channel_created", None),
            ("command_executed", None),
            ("command_executed", None),
        ],
    )
    .await;
    // Two from one connection: while the stream is watched, every message
    // is timed, not only the first of a connection (and one in eight).
    a.publish_ff("t", "c", json!("hello")).await;
    a.publish_ff("t", "c", json!("again")).await;
    b.recv_message().await;
    b.recv_message().await;
    a.err("dance", json!({})).await;
    let b_id = b.id.clone();
    drop(b);
    expect_events(
        &mut all,
        &[
            ("message_routed", None),
            ("message_routed", None),
            // An unknown command never runs: an error, no command_executed.
            ("error", Some(a.id.clone())),
            ("connection_closed", Some(b_id)),
        ],
    )
    .await;
    let only = next_event(&mut errors).await;
    assert_eq!((only["event"].as_str(), only["code"].as_str()), (Some("error"), Some("UNKNOWN_COMMAND")));
    let (status, body) = http(mon, "GET", "/telemetry?events=bogus").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_observer_is_told_what_it_dropped_and_slows_no_one() {
    let mut config = test_config();
    config.monitoring.telemetry_buffer = 64;
    let server = TestServer::start_with(config).await;
    let mon = server.monitoring.unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(mon).await.unwrap();
    let (mut stalled, _) =
        tokio_tungstenite::client_async(format!("ws://{mon}/telemetry?events=message_routed"), stream).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut publisher, mut reader) = (server.client().await, server.client().await);
    reader.join("x", "c").await;
    // Enough events (~130 bytes each) to fill the kernel's socket buffers
    // (up to 4 MiB on the sending side), so that the observer's stream really
    // stalls and its 64-event buffer overflows, however fast the machine.
    const N: u64 = 60_000;
    let window = arqon_e2e::Window::default();
    let progress = window.clone();
    let send = tokio::spawn(async move {
        for i in 0..N {
            window.before_sending(i).await;
            publisher.publish_ff("x", "c", json!(i)).await;
        }
        publisher
    });
    for i in 0..N {
        assert_eq!(reader.recv_message().await["payload"], i);
        progress.received(i + 1);
    }
    send.await.unwrap();
    // The observer resumes: somewhere in what it reads is the count it missed.
    let mut dropped = None;
    for _ in 0..N {
        let msg = tokio::time::timeout(TIMEOUT, stalled.next()).await.expect("event in time").unwrap().unwrap();
        let Message::Text(text) = msg else { continue };
        let event: Value = serde_json::from_str(text.as_str()).unwrap();
        if event["event"] == "dropped" {
            dropped = Some(event);
            break;
        }
    }
    let dropped = dropped.expect("a dropped event");
    assert!(dropped["count"].as_u64().unwrap() > 0, "{dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_monitoring_off_there_is_no_listener_and_the_bus_serves() {
    let mut config = test_config();
    config.monitoring.enabled = false;
    let server = TestServer::start_with(config).await;
    assert!(server.monitoring.is_none());
    let (mut a, mut b) = (server.client().await, server.client().await);
    b.join("quiet", "c").await;
    a.publish_ff("quiet", "c", json!("still delivered")).await;
    assert_eq!(b.recv_message().await["payload"], "still delivered");
    assert_eq!(a.ok("status", json!({})).await["storage"]["healthy"], true);
}

/// Issue 15's finding at small scale: one client's acknowledged large
/// publishes to many auto-created channels leave no more history than the
/// budget (as `/metrics` reports it), and its channels stop at its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_publishes_stay_within_the_budgets_shown_in_metrics() {
    let mut config = test_config();
    config.limits.max_message_bytes = 64 << 10;
    config.limits.history_bytes_per_channel = 128 << 10;
    config.limits.history_bytes_total = 512 << 10;
    config.limits.max_channels_created_per_client = 40;
    let server = TestServer::start_with(config).await;
    let mon = server.monitoring.unwrap();
    let mut a = server.client().await;
    let payload = "x".repeat(60_000);
    for i in 0..40 {
        a.ok("publish", json!({"room": "flood", "channel": format!("c{i}"), "payload": payload})).await;
    }
    let text = scrape(mon).await;
    let held = sample(&text, "arqon_history_bytes").unwrap();
    assert!((0.0..=524_288.0).contains(&held) && held >= 400_000.0, "{held} bytes held\n{text}");
    assert_eq!(sample(&text, "arqon_history_bytes_limit"), Some(524_288.0));
    assert_eq!(sample(&text, "arqon_channels"), Some(40.0));
    assert_eq!(sample(&text, r#"arqon_channels_limit{scope="node"}"#), Some(10_000.0));
    assert_eq!(sample(&text, r#"arqon_channels_limit{scope="room"}"#), Some(1000.0));
    assert_eq!(sample(&text, r#"arqon_channels_limit{scope="connection"}"#), Some(40.0));
    let refused = a.command("publish", json!({"room": "flood", "channel": "c40", "payload": 1})).await;
    assert_eq!(refused["error"]["code"], "FORBIDDEN", "{refused}");
    assert_eq!(sample(&scrape(mon).await, "arqon_channels"), Some(40.0));
}
