//! PROTOCOL.md section 6: every error reachable without auth, and the
//! connection (and the server) keep working after each.

use arqon_e2e::{Closed, TestClient, TestServer, test_config};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const VALID_ID: &str = "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P";

/// Sends `text`, expects an error with `code`, then checks the connection
/// still answers and a bystander still gets messages.
async fn refused(a: &mut TestClient, bystander: &mut TestClient, text: &str, code: &str) -> Value {
    a.send_text(text).await;
    let err = a.recv_where(|v| v["type"] == "error").await;
    assert_eq!(err["error"]["code"], code, "{text} -> {err}");
    assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(err["id"].as_str().unwrap().starts_with("arq_"));
    assert_eq!(a.ok("ping", json!({})).await["pong"], true);
    a.publish_ff("err", "watch", json!(text)).await;
    assert_eq!(bystander.recv_message().await["payload"], text);
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_error_is_reported_and_the_connection_survives() {
    let server = TestServer::start().await;
    let (mut a, mut watcher) = (server.client().await, server.client().await);
    watcher.join("err", "watch").await;
    let spoofed = format!(r#"{{"type":"message","room":"r","channel":"c","from":"{VALID_ID}","payload":1}}"#);
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "INVALID_JSON"),
        ("[1,2,3]".into(), "INVALID_JSON"),
        ("\"just a string\"".into(), "INVALID_JSON"),
        (r#"{"type":"message","room":"r","colour":"red"}"#.into(), "INVALID_ENVELOPE"),
        (r#"{"type":"message"}"#.into(), "INVALID_ENVELOPE"),
        (r#"{"type":"event","room":"r"}"#.into(), "INVALID_ENVELOPE"),
        (format!(r#"{{"type":"message","to":"{VALID_ID}","room":"r"}}"#), "INVALID_ENVELOPE"),
        (r#"{"type":"message","room":"r","version":2}"#.into(), "UNSUPPORTED_VERSION"),
        (r#"{"type":"message","room":"r","id":"arq_nope"}"#.into(), "INVALID_ID"),
        (r#"{"type":"message","room":"r","timestamp":"2001-01-01T00:00:00Z"}"#.into(), "INVALID_TIMESTAMP"),
        (r#"{"type":"message","room":"r","timestamp":"noon"}"#.into(), "INVALID_TIMESTAMP"),
        (r#"{"type":"command","command":"dance"}"#.into(), "UNKNOWN_COMMAND"),
        (r#"{"type":"message","room":"no spaces","payload":1}"#.into(), "INVALID_NAME"),
        (r#"{"type":"command","command":"join_channel","args":{"room":"r/x","channel":"c"}}"#.into(), "INVALID_NAME"),
        (r#"{"type":"command","command":"join_channel","args":{"room":"r"}}"#.into(), "INVALID_ARGS"),
        (
            r#"{"type":"command","command":"history","args":{"room":"r","channel":"c","limit":"ten"}}"#.into(),
            "INVALID_ARGS",
        ),
        (spoofed, "FORBIDDEN"),
        (r#"{"type":"command","command":"channel_info","args":{"room":"r","channel":"missing"}}"#.into(), "NOT_FOUND"),
        (format!(r#"{{"type":"message","to":"{VALID_ID}","payload":1}}"#), "NOT_FOUND"),
    ];
    for (text, code) in &cases {
        refused(&mut a, &mut watcher, text, code).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_echoed_whenever_the_id_is_valid() {
    let server = TestServer::start().await;
    let (mut a, mut watcher) = (server.client().await, server.client().await);
    watcher.join("err", "watch").await;
    let bad_field = format!(r#"{{"id":"{VALID_ID}","type":"message","room":"r","colour":1}}"#);
    let err = refused(&mut a, &mut watcher, &bad_field, "INVALID_ENVELOPE").await;
    assert_eq!(err["request_id"], VALID_ID);
    let unknown = format!(r#"{{"id":"{VALID_ID}","type":"command","command":"nope"}}"#);
    let err = refused(&mut a, &mut watcher, &unknown, "UNKNOWN_COMMAND").await;
    assert_eq!(err["request_id"], VALID_ID);
    let err = refused(&mut a, &mut watcher, "not json", "INVALID_JSON").await;
    assert!(err.get("request_id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_are_unsupported_but_harmless() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    a.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let err = a.recv().await;
    assert_eq!(err["error"]["code"], "UNSUPPORTED_FRAME");
    assert_eq!(a.ok("ping", json!({})).await["pong"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_is_answered_then_closed_with_1009() {
    let mut config = test_config();
    config.limits.max_message_bytes = 4096;
    let server = TestServer::start_with(config).await;
    let (mut big, mut other) = (server.client().await, server.client().await);
    // Exactly at the limit is fine.
    let filler = "x".repeat(4096 - r#"{"type":"message","room":"r","channel":"c","payload":""}"#.len());
    big.send_text(format!(r#"{{"type":"message","room":"r","channel":"c","payload":"{filler}"}}"#)).await;
    assert_eq!(big.ok("ping", json!({})).await["pong"], true);
    big.send_text(format!(r#"{{"type":"message","room":"r","channel":"c","payload":"{filler}x"}}"#)).await;
    let (frames, closed) = big.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(1009));
    assert!(frames.iter().any(|f| f["error"]["code"] == "MESSAGE_TOO_LARGE"), "{frames:?}");
    assert_eq!(other.ok("ping", json!({})).await["pong"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_and_huge_strings_get_an_error_not_a_crash() {
    let server = TestServer::start().await;
    let (mut a, mut watcher) = (server.client().await, server.client().await);
    watcher.join("err", "watch").await;
    let deep = format!(
        r#"{{"type":"message","room":"r","channel":"c","payload":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    refused(&mut a, &mut watcher, &deep, "INVALID_JSON").await;
    let deep_envelope = "[".repeat(10_000);
    refused(&mut a, &mut watcher, &deep_envelope, "INVALID_JSON").await;
    let huge_name = format!(r#"{{"type":"message","room":"{}","payload":1}}"#, "r".repeat(1_000_000));
    refused(&mut a, &mut watcher, &huge_name, "INVALID_NAME").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_frames_are_refused_with_retry_after() {
    let mut config = test_config();
    config.limits.rate_per_s = 1;
    config.limits.burst = 3;
    let server = TestServer::start_with(config).await;
    let mut a = server.client().await;
    assert_eq!(a.welcome["payload"]["limits"]["rate_per_s"], 1);
    for _ in 0..3 {
        a.ok("ping", json!({})).await;
    }
    let err = a.command("ping", json!({})).await;
    assert_eq!(err["error"]["code"], "RATE_LIMITED");
    assert!(err["error"]["retry_after_ms"].as_u64().unwrap() >= 1);
    assert!(err["request_id"].is_string());
}
