//! The real `arqonbus` process: start-up, bad configuration, signals, exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use arqon_e2e::{Closed, TIMEOUT, TestClient};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_arqonbus");

fn arqonbus() -> Command {
    let mut command = Command::new(BIN);
    command
        .env_remove("ARQON_LOG")
        .env("ARQON_SERVER__PORT", "0")
        .env("ARQON_MONITORING__PORT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Starts the server and returns it with its WebSocket URL.
async fn start() -> (Child, String) {
    let mut child = arqonbus().spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line()).await.expect("ready in time").unwrap().unwrap();
    let url = line.strip_prefix("ArqonBus listening on ").expect("the ready line").to_owned();
    (child, url)
}

fn signal(child: &Child, name: &str) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_shutdown_closes_1001_and_exits_zero() {
    let (mut child, url) = start().await;
    let mut client = TestClient::connect(&url).await;
    assert_eq!(client.ok("ping", json!({})).await["pong"], true);
    signal(&child, "TERM");
    let (frames, closed) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(1001));
    assert_eq!(frames.last().unwrap()["payload"]["event"], "shutdown");
    let status = tokio::time::timeout(TIMEOUT, child.wait()).await.expect("exits in time").unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_stops_cleanly() {
    let (mut child, _url) = start().await;
    signal(&child, "INT");
    let status = tokio::time::timeout(TIMEOUT, child.wait()).await.expect("exits in time").unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_fails_start_up_naming_key_and_value() {
    let output = arqonbus().env("ARQON_LIMITS__MAX_MESSAGE_BYTES", "lots").output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limits.max_message_bytes") && stderr.contains("lots"), "{stderr}");

    let output = arqonbus().args(["--config", "/nonexistent/arqon.toml"]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/arqon.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_is_read() {
    let dir = std::env::temp_dir().join(format!("arqon-process-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("arqon.toml");
    std::fs::write(&path, "[server]\nheartbeat_s = 7\n\n[auth]\ndefault_role = \"guest\"\n").unwrap();
    let mut command = arqonbus();
    command.arg("--config").arg(&path);
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line()).await.unwrap().unwrap().unwrap();
    let url = line.strip_prefix("ArqonBus listening on ").unwrap();
    let client = TestClient::connect(url).await;
    assert_eq!(client.welcome["payload"]["heartbeat_s"], 7);
    assert_eq!(client.welcome["payload"]["role"], "guest");
    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_and_usage_errors() {
    let output = arqonbus().arg("--help").output().await.unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--config") && help.contains("ARQON_LOG"), "{help}");
    let output = arqonbus().arg("--bogus").output().await.unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--bogus"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = tokio::time::timeout(Duration::from_secs(30), arqonbus().env("ARQON_SERVER__PORT", &port).output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot listen on"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_client_id() {
    let mut command = arqonbus();
    command.env("ARQON_LOG_FORMAT", "json").env("ARQON_LOG", "debug");
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line()).await.unwrap().unwrap().unwrap();
    let url = line.strip_prefix("ArqonBus listening on ").unwrap().to_owned();
    let mut client = TestClient::connect(&url).await;
    client.ok("ping", json!({})).await;
    client.send_text("oops").await;
    client.recv().await;
    signal(&child, "TERM");
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let mut saw_client = false;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value.is_object() && value["level"].is_string(), "{line}");
        saw_client |= line.contains(&client.id);
    }
    assert!(saw_client, "no log line names the client:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_log_format_fails_start_up() {
    let output = arqonbus().env("ARQON_LOG_FORMAT", "xml").output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ARQON_LOG_FORMAT"));
}
