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
    start_command(arqonbus()).await
}

/// Starts `command` and waits for its ready line.
async fn start_command(mut command: Command) -> (Child, String) {
    let mut child = command.spawn().unwrap();
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
async fn a_port_in_use_names_the_setting_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for (var, key, what) in [
        ("ARQON_SERVER__PORT", "server.port", "WebSocket clients"),
        ("ARQON_MONITORING__PORT", "monitoring.port", "monitoring"),
    ] {
        let output =
            tokio::time::timeout(Duration::from_secs(30), arqonbus().env(var, &port).output()).await.unwrap().unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let expected = format!("cannot listen on 127.0.0.1:{port} ({what})");
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(stderr.contains(&format!("set {key} in the config file or {var}")), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_says_what_is_running_and_where_without_colour_in_a_pipe() {
    let mut child = arqonbus().spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(TIMEOUT, lines.next_line()).await.unwrap().unwrap().unwrap();
    let url = first.strip_prefix("ArqonBus listening on ").unwrap().to_owned();
    let second = tokio::time::timeout(TIMEOUT, lines.next_line()).await.unwrap().unwrap().unwrap();
    let monitoring = second.strip_prefix("Monitoring on ").unwrap().split(' ').next().unwrap().to_owned();
    assert!(monitoring.starts_with("http://127.0.0.1:"), "{second}");
    signal(&child, "TERM");
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.contains('\x1b'), "ANSI codes in a pipe:\n{stderr}");
    let started: Vec<&str> = stderr.lines().filter(|l| l.contains("ArqonBus started")).collect();
    assert_eq!(started.len(), 1, "{stderr}");
    for field in [
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        format!("url={url} "),
        format!("monitoring=\"{monitoring}\""),
        "storage=\"memory\"".to_owned(),
        "auth=none (everyone is user)".to_owned(),
        "tls=false".to_owned(),
        "cluster=off".to_owned(),
    ] {
        assert!(started[0].contains(&field), "{field} missing from: {}", started[0]);
    }
    let git = started[0].split("git=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap();
    assert!(git == "unknown" || (git.len() >= 7 && git.chars().all(|c| c.is_ascii_hexdigit())), "{git}");
    assert!(!stderr.contains("Some("), "{stderr}");
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
    let mut saw_start = false;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value.is_object() && value["level"].is_string(), "{line}");
        saw_client |= line.contains(&client.id);
        if value["message"] == "ArqonBus started" {
            // Addresses as plain strings, not `Some(...)` debug text.
            assert_eq!(value["url"], url.as_str());
            assert!(value["monitoring"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{line}");
            saw_start = true;
        }
    }
    assert!(saw_start, "no start-up line:\n{stderr}");
    assert!(saw_client, "no log line names the client:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_log_format_fails_start_up() {
    let output = arqonbus().env("ARQON_LOG_FORMAT", "xml").output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ARQON_LOG_FORMAT"));
}

/// A build without the `redis` feature refuses a Redis configuration at
/// start-up, saying why, instead of running without the history it asked for.
#[cfg(not(feature = "redis"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_config_fails_start_up_in_a_build_without_redis() {
    let output = arqonbus().env("ARQON_STORAGE__BACKEND", "redis").kill_on_drop(true).output();
    let output = tokio::time::timeout(TIMEOUT, output).await.expect("exits in time").unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("built without the `redis` feature"), "{stderr}");
}

/// The tests against a real Redis: only in a build with it.
#[cfg(feature = "redis")]
mod redis {
    use super::*;

    /// The command of a cluster node over `redis`, with a short registry TTL
    /// and a storage journal of its own.
    fn node_command(redis: &arqon_e2e::redis::RedisProcess, node: &str) -> Command {
        let mut command = arqonbus();
        command
            .env("ARQON_STORAGE__BACKEND", "redis")
            .env("ARQON_STORAGE__REDIS__URL", redis.url())
            .env("ARQON_CLUSTER__ENABLED", "true")
            .env("ARQON_CLUSTER__NODE_ID", node)
            .env("ARQON_CLUSTER__REGISTRY_TTL_MS", "1500")
            .env("ARQON_STORAGE__JOURNAL__PATH", redis.dir().join(format!("journal-{node}")))
            .env("ARQON_LIMITS__RATE_PER_S", "0");
        command
    }

    /// A cluster node over `redis`, started.
    async fn start_node(redis: &arqon_e2e::redis::RedisProcess, node: &str) -> (Child, String) {
        start_command(node_command(redis, node)).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_killed_with_kill_9_leaves_the_others_serving_and_its_clients_recover_elsewhere() {
        if !arqon_e2e::redis::redis_available("a_node_killed_with_kill_9") {
            return;
        }
        let redis = arqon_e2e::redis::RedisProcess::start();
        let (_n0, url0) = start_node(&redis, "n0").await;
        let (_n1, url1) = start_node(&redis, "n1").await;
        let (n2, url2) = start_node(&redis, "n2").await;
        let (mut a, mut b, mut c) =
            (TestClient::connect(&url0).await, TestClient::connect(&url1).await, TestClient::connect(&url2).await);
        for client in [&mut a, &mut b, &mut c] {
            client.join("r", "k").await;
        }
        a.until_members("r", "k", 3).await;
        let publish = |i: u64| json!({"room": "r", "channel": "k", "payload": i});
        for i in 0..20 {
            a.ok("publish", publish(i)).await;
        }
        let mut last_seen_by_c = None;
        for i in 0..20 {
            assert_eq!(b.recv_message().await["payload"], i);
            let message = c.recv_message().await;
            assert_eq!(message["payload"], i);
            last_seen_by_c = Some(message["id"].clone());
        }

        signal(&n2, "KILL");
        let killed = std::time::Instant::now();
        assert!(matches!(c.closed().await, Closed::Eof | Closed::Code(1006)));
        // The others go on as if nothing happened.
        for i in 20..40 {
            a.ok("publish", publish(i)).await;
            assert_eq!(b.recv_message().await["payload"], i);
        }
        // The dead node's member disappears once it has been silent for the TTL,
        // from the counts and from presence on every node.
        a.until_members("r", "k", 2).await;
        b.until_members("r", "k", 2).await;
        for client in [&mut a, &mut b] {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                client.take_pending();
                let presence = client.ok("presence", json!({"room": "r", "channel": "k"})).await;
                let ids: Vec<&str> =
                    presence["members"].as_array().unwrap().iter().filter_map(|m| m["client_id"].as_str()).collect();
                if presence["total"] == 2 && !ids.contains(&c.id.as_str()) {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the dead node's member stayed: {presence}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(killed.elapsed() < Duration::from_secs(15), "took {:?}", killed.elapsed());
        // Nor does it leave anything in Redis: a survivor removes its entries.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut entries = tokio::task::block_in_place(|| redis.command_values(&["HKEYS", "arqon:presence:r:k"]));
            let set = tokio::task::block_in_place(|| redis.command(&["EXISTS", "arqon:node:n2:presence"]));
            if set == ":0" {
                entries.sort();
                let mut expected = vec![a.id.clone(), b.id.clone()];
                expected.sort();
                assert_eq!(entries, expected, "only the live nodes' members are left");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the dead node's entries stayed: {entries:?}, set {set}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Its client reconnects to another node and recovers what it missed.
        let mut moved = TestClient::connect(&url1).await;
        let args = json!({"room": "r", "channel": "k", "since": last_seen_by_c.unwrap()});
        let joined = moved.ok("join_channel", args).await;
        assert!(joined.get("truncated").is_none_or(|t| t == false), "{joined}");
        for i in 20..40 {
            assert_eq!(moved.recv_message().await["payload"], i);
        }
        moved.expect_silence(Duration::from_millis(300)).await;
        let _ = n2;
    }

    /// Membership events a receiver got, in order: (event, client_id).
    type Events = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

    /// A webhook receiver that accepts every batch; its URL and what it got.
    async fn webhook_receiver() -> (String, Events) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let events = Events::default();
        let got = std::sync::Arc::clone(&events);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (_, body) = arqon_e2e::app::read_request(&mut stream).await;
                let batch: serde_json::Value = serde_json::from_slice(&body).unwrap();
                for event in batch["events"].as_array().unwrap() {
                    let id = event["client_id"].as_str().unwrap_or_default().to_owned();
                    got.lock().unwrap().push((event["event"].as_str().unwrap().to_owned(), id));
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes()).await;
            }
        });
        (url, events)
    }

    /// Waits until `events` holds `n`; returns them.
    async fn until_events(events: &Events, n: usize) -> Vec<(String, String)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = events.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(std::time::Instant::now() < deadline, "only {got:?} arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_killed_with_kill_9_has_its_members_removed_once_by_a_survivor() {
        if !arqon_e2e::redis::redis_available("a_node_killed_with_kill_9_has_its_members_removed_once") {
            return;
        }
        let redis = arqon_e2e::redis::RedisProcess::start();
        let (url, events) = webhook_receiver().await;
        let node = |name: &str| {
            let mut command = node_command(&redis, name);
            command
                .env("ARQON_WEBHOOKS__URL", &url)
                .env("ARQON_WEBHOOKS__SECRET", "webhook-secret-0123456789")
                .env("ARQON_WEBHOOKS__FLUSH_MS", "10");
            command
        };
        let (_n0, url0) = start_command(node("n0")).await;
        let (n1, url1) = start_command(node("n1")).await;
        let mut a = TestClient::connect(&url0).await;
        a.join("r", "k").await;
        until_events(&events, 2).await; // channel_occupied, member_added a
        let mut c = TestClient::connect(&url1).await;
        c.join("r", "k").await;
        let got = until_events(&events, 3).await;
        assert_eq!(got[2], ("member_added".to_owned(), c.id.clone()), "{got:?}");

        signal(&n1, "KILL");
        assert!(matches!(c.closed().await, Closed::Eof | Closed::Code(1006)));
        // Silent past the TTL: n0 removes its member, once; a stays.
        let got = until_events(&events, 4).await;
        assert_eq!(got[3], ("member_removed".to_owned(), c.id.clone()), "{got:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(events.lock().unwrap().len(), 4, "once");
        a.ok("leave_channel", json!({"room": "r", "channel": "k"})).await;
        let got = until_events(&events, 6).await;
        assert_eq!(got[4], ("member_removed".to_owned(), a.id.clone()), "{got:?}");
        assert_eq!(got[5].0, "channel_vacated", "{got:?}");
        let _ = n1;
    }

    /// A bus over `redis` with its storage journal in `journal`: short Redis
    /// timeouts, no rate limit, a 1.5 s shutdown grace.
    fn journaled_bus(redis: &arqon_e2e::redis::RedisProcess, journal: &std::path::Path) -> Command {
        let mut command = arqonbus();
        command
            .env("ARQON_STORAGE__BACKEND", "redis")
            .env("ARQON_STORAGE__REDIS__URL", redis.url())
            .env("ARQON_STORAGE__REDIS__COMMAND_TIMEOUT_MS", "300")
            .env("ARQON_STORAGE__REDIS__CONNECT_TIMEOUT_MS", "2000")
            .env("ARQON_STORAGE__JOURNAL__PATH", journal)
            .env("ARQON_SERVER__SHUTDOWN_GRACE_MS", "1500")
            .env("ARQON_LIMITS__RATE_PER_S", "0");
        command
    }

    /// Publishes payload `i` to `r`/`k` with `publish`; returns the id it was
    /// acknowledged with.
    async fn publish_acknowledged(client: &mut TestClient, i: u64) -> String {
        let answer = client.ok("publish", json!({"room": "r", "channel": "k", "payload": i})).await;
        answer["id"].as_str().expect("an acknowledged publish has an id").to_owned()
    }

    /// The ids of `r`/`k`'s history, oldest first.
    async fn history_ids(client: &mut TestClient) -> Vec<String> {
        let history = client.ok("history", json!({"room": "r", "channel": "k", "limit": 1000})).await;
        history["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
    }

    /// Bytes left in the journal files under `dir`.
    fn journal_bytes(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "journal"))
                    .map(|entry| entry.metadata().map_or(0, |m| m.len()))
                    .sum()
            })
            .unwrap_or(0)
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outage {
        /// `kill -STOP` of Redis, `kill -CONT` after the bus stopped.
        Frozen,
        /// `kill -9` of Redis, restarted (with its append-only file) after the
        /// bus stopped.
        Killed,
    }

    /// 5 publishes to a healthy Redis, then 100 during an outage; the bus is
    /// stopped with `stop` (`TERM` or `KILL`) before Redis is back, then Redis
    /// and the bus come back: every acknowledged publish is in history once, in
    /// order, and the journal file is emptied.
    async fn acknowledged_publishes_survive(outage: Outage, stop: &str) {
        let mut redis = tokio::task::block_in_place(arqon_e2e::redis::RedisProcess::start_durable);
        let journal = redis.dir().join("journal");
        let (mut bus, url) = start_command(journaled_bus(&redis, &journal)).await;
        let mut client = TestClient::connect(&url).await;
        let mut acknowledged = Vec::new();
        for i in 0..5 {
            acknowledged.push(publish_acknowledged(&mut client, i).await);
        }
        match outage {
            Outage::Frozen => redis.stop(),
            Outage::Killed => tokio::task::block_in_place(|| redis.kill()),
        }
        for i in 5..105 {
            acknowledged.push(publish_acknowledged(&mut client, i).await);
        }
        assert!(journal_bytes(&journal) > 0, "the outage's publishes are in the journal file");
        signal(&bus, stop);
        let status = tokio::time::timeout(TIMEOUT, bus.wait()).await.expect("exits in time").unwrap();
        if stop == "TERM" {
            assert_eq!(status.code(), Some(0));
        }
        match outage {
            Outage::Frozen => redis.cont(),
            Outage::Killed => tokio::task::block_in_place(|| redis.restart()),
        }
        // The journal is written back before the bus serves: no waiting here.
        let (_bus, url) = start_command(journaled_bus(&redis, &journal)).await;
        let mut client = TestClient::connect(&url).await;
        assert_eq!(history_ids(&mut client).await, acknowledged);
        assert_eq!(journal_bytes(&journal), 0, "the journal file is emptied once written back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_acknowledged_while_redis_is_frozen_survive_sigterm() {
        if arqon_e2e::redis::redis_available("publishes_acknowledged_while_redis_is_frozen_survive_sigterm") {
            acknowledged_publishes_survive(Outage::Frozen, "TERM").await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_acknowledged_while_redis_is_frozen_survive_kill_9() {
        if arqon_e2e::redis::redis_available("publishes_acknowledged_while_redis_is_frozen_survive_kill_9") {
            acknowledged_publishes_survive(Outage::Frozen, "KILL").await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_acknowledged_while_redis_is_dead_survive_sigterm() {
        if arqon_e2e::redis::redis_available("publishes_acknowledged_while_redis_is_dead_survive_sigterm") {
            acknowledged_publishes_survive(Outage::Killed, "TERM").await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_api_publishes_acknowledged_while_redis_is_dead_survive_kill_9_once() {
        if !arqon_e2e::redis::redis_available(
            "server_api_publishes_acknowledged_while_redis_is_dead_survive_kill_9_once",
        ) {
            return;
        }
        const KEY: &str = "process-api-key-0123456789";
        let mut redis = tokio::task::block_in_place(arqon_e2e::redis::RedisProcess::start);
        let journal = redis.dir().join("journal");
        let config = redis.dir().join("api.toml");
        std::fs::write(&config, format!("[[api.keys]]\nname = \"t\"\nkey = \"{KEY}\"\nrole = \"user\"\n")).unwrap();
        let bus_with_api = |redis: &arqon_e2e::redis::RedisProcess| {
            let mut command = journaled_bus(redis, &journal);
            command.arg("--config").arg(&config);
            command
        };
        let addr = |url: &str| -> std::net::SocketAddr {
            url.trim_start_matches("ws://").trim_end_matches("/ws").parse().unwrap()
        };
        let (bus, url) = start_command(bus_with_api(&redis)).await;
        tokio::task::block_in_place(|| redis.kill());
        // The backend publishes with its own ids, as a retrying backend must.
        let bodies: Vec<(String, String)> = (0..20)
            .map(|i| {
                let id = format!("arq_01JDQ8Z6W3T7M5KX2C9V{i:06}");
                let body = json!({"room": "r", "channel": "k", "payload": i, "id": id}).to_string();
                (id, body)
            })
            .collect();
        let mut api = arqon_e2e::api::ApiConn::connect(addr(&url)).await;
        for (id, body) in &bodies {
            let answer = api.post("publish", Some(KEY), body).await;
            assert_eq!((answer.status, answer.body["id"].as_str()), (200, Some(id.as_str())), "{}", answer.text);
        }
        signal(&bus, "KILL");

        tokio::task::block_in_place(|| redis.restart());
        let (_bus, url) = start_command(bus_with_api(&redis)).await;
        // The backend did not hear the answers, say: it sends them all again.
        let mut api = arqon_e2e::api::ApiConn::connect(addr(&url)).await;
        for (id, body) in &bodies {
            let answer = api.post("publish", Some(KEY), body).await;
            assert_eq!((answer.status, answer.body["id"].as_str()), (200, Some(id.as_str())), "{}", answer.text);
        }
        let mut client = TestClient::connect(&url).await;
        let expected: Vec<String> = bodies.into_iter().map(|(id, _)| id).collect();
        assert_eq!(history_ids(&mut client).await, expected, "every acknowledged publish, once, in order");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_writes_the_journal_back_within_the_grace_when_redis_returns() {
        if !arqon_e2e::redis::redis_available("sigterm_writes_the_journal_back_within_the_grace_when_redis_returns") {
            return;
        }
        let mut redis = tokio::task::block_in_place(arqon_e2e::redis::RedisProcess::start);
        let journal = redis.dir().join("journal");
        let mut command = journaled_bus(&redis, &journal);
        command.env("ARQON_SERVER__SHUTDOWN_GRACE_MS", "15000");
        let (mut bus, url) = start_command(command).await;
        let mut client = TestClient::connect(&url).await;
        tokio::task::block_in_place(|| redis.kill());
        for i in 0..20 {
            publish_acknowledged(&mut client, i).await;
        }
        drop(client);
        // Redis comes back only once the bus is stopping.
        signal(&bus, "TERM");
        tokio::task::block_in_place(|| redis.restart());
        let status = tokio::time::timeout(TIMEOUT, bus.wait()).await.expect("exits in time").unwrap();
        assert_eq!(status.code(), Some(0));
        // Written to Redis during the grace, not left for the next start.
        assert_eq!(journal_bytes(&journal), 0);
        assert_eq!(redis.command(&["ZCARD", "arqon:ids:{r:k}"]), ":20");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_journal_tail_is_reported_and_only_whole_records_are_replayed() {
        if !arqon_e2e::redis::redis_available("a_torn_journal_tail_is_reported_and_only_whole_records_are_replayed") {
            return;
        }
        let mut redis = tokio::task::block_in_place(arqon_e2e::redis::RedisProcess::start);
        let journal = redis.dir().join("journal");
        let (bus, url) = start_command(journaled_bus(&redis, &journal)).await;
        let mut client = TestClient::connect(&url).await;
        tokio::task::block_in_place(|| redis.kill());
        let mut acknowledged = Vec::new();
        for i in 0..10 {
            acknowledged.push(publish_acknowledged(&mut client, i).await);
        }
        signal(&bus, "KILL");
        // A crash in the middle of the last write: its record is cut short.
        let file = std::fs::read_dir(&journal)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.extension().is_some_and(|ext| ext == "journal"))
            .unwrap();
        let length = std::fs::metadata(&file).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(length - 5).unwrap();

        tokio::task::block_in_place(|| redis.restart());
        let (mut bus, url) = start_command(journaled_bus(&redis, &journal)).await;
        let mut client = TestClient::connect(&url).await;
        assert_eq!(history_ids(&mut client).await, acknowledged[..9], "the nine whole records, in order");
        bus.kill().await.unwrap();
        let output = bus.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("storage journal ends in a torn or corrupt record"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_and_print_config_exit_without_serving() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/arqonbus.toml");
    let output = arqonbus().args(["--check-config", sample]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("configuration OK") && stdout.contains("arqonbus.toml"), "{stdout}");

    // A bad value, and a TLS file that does not exist: named, exit 1.
    let output = arqonbus().args(["--check-config"]).env("ARQON_SERVER__HEARTBEAT_S", "soon").output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.heartbeat_s"));
    let output = arqonbus()
        .args(["--check-config"])
        .env("ARQON_TLS__CERT", "/nonexistent/cert.pem")
        .env("ARQON_TLS__KEY", "/nonexistent/key.pem")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/cert.pem"));

    // The effective settings, secrets redacted, loadable again.
    let secret = "a-very-long-hs256-secret-of-more-than-32-bytes";
    let output = arqonbus()
        .args(["--print-config", "--config", sample])
        .env("ARQON_AUTH__MODE", "jwt")
        .env("ARQON_AUTH__JWT__SECRET", secret)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(!printed.contains(secret) && printed.contains("<redacted>"), "{printed}");
    assert!(printed.contains("mode = \"jwt\"") && printed.contains("host = \"0.0.0.0\""), "{printed}");
}

/// The embedded redb backend: a single node keeps its history across a
/// `kill -9` and a restart, without Redis. Only in a build with it.
#[cfg(feature = "redb")]
mod redb {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Publishes acknowledged before the stop.
    const PUBLISHES: u64 = 150;

    /// A bus keeping history in `file`, with `fsync` (`always` or
    /// `interval`), no rate limit.
    fn redb_bus(file: &Path, fsync: &str) -> Command {
        let mut command = arqonbus();
        command
            .env("ARQON_STORAGE__BACKEND", "redb")
            .env("ARQON_STORAGE__REDB__PATH", file)
            .env("ARQON_STORAGE__REDB__FSYNC", fsync)
            .env("ARQON_LIMITS__RATE_PER_S", "0");
        command
    }

    /// A database path in a fresh directory on the build's disk (a tmpfs
    /// `/tmp` would make every sync free).
    fn fresh_file(test: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("redb-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("data").join("history.redb")
    }

    /// The ids of `room`/`k`'s history, oldest first.
    async fn history_ids(client: &mut TestClient, room: &str) -> Vec<String> {
        let history = client.ok("history", json!({"room": room, "channel": "k", "limit": 1000})).await;
        history["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
    }

    /// `PUBLISHES` acknowledged publishes over two channels (from two
    /// clients at once, so that commits are shared), the bus stopped with
    /// `stop` (`TERM` or `KILL`) right after the last answer, then started
    /// again on the same file: both channels' history holds every
    /// acknowledged publish, once, in order, and numbering goes on.
    async fn acknowledged_publishes_survive(test: &str, fsync: &str, stop: &str) {
        let file = fresh_file(test);
        let (mut bus, url) = start_command(redb_bus(&file, fsync)).await;
        let publishers = ["a", "b"].map(|room| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut client = TestClient::connect(&url).await;
                let mut acknowledged = Vec::new();
                for i in 0..PUBLISHES / 2 {
                    let answer = client.ok("publish", json!({"room": room, "channel": "k", "payload": i})).await;
                    acknowledged.push(answer["id"].as_str().expect("an acknowledged publish has an id").to_owned());
                }
                acknowledged
            })
        });
        let mut acknowledged = Vec::new();
        for publisher in publishers {
            acknowledged.push(publisher.await.unwrap());
        }
        signal(&bus, stop);
        let status = tokio::time::timeout(TIMEOUT, bus.wait()).await.expect("exits in time").unwrap();
        if stop == "TERM" {
            assert_eq!(status.code(), Some(0));
        }

        let (_bus, url) = start_command(redb_bus(&file, fsync)).await;
        let mut client = TestClient::connect(&url).await;
        for (room, acknowledged) in ["a", "b"].into_iter().zip(&acknowledged) {
            assert_eq!(&history_ids(&mut client, room).await, acknowledged, "{room}/k after {stop}");
        }
        // The channels came back, and a publish after the restart follows the
        // kept history.
        let listed = client.ok("list_channels", json!({"room": "a"})).await;
        assert!(listed.to_string().contains("\"k\""), "{listed}");
        let next = client.ok("publish", json!({"room": "a", "channel": "k", "payload": "after"})).await;
        let ids = history_ids(&mut client, "a").await;
        assert_eq!(ids.len(), acknowledged[0].len() + 1);
        assert_eq!(ids.last().map(String::as_str), next["id"].as_str());
        let _ = std::fs::remove_dir_all(file.parent().unwrap().parent().unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_publishes_survive_kill_9_with_the_redb_backend() {
        acknowledged_publishes_survive("kill", "always", "KILL").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_publishes_survive_sigterm_with_the_redb_backend() {
        acknowledged_publishes_survive("term", "always", "TERM").await;
    }

    /// With `fsync = "interval"` a clean stop still keeps everything: the
    /// file is synced when the bus closes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_keeps_everything_with_interval_fsync_too() {
        acknowledged_publishes_survive("interval-term", "interval", "TERM").await;
    }

    /// `storage.backend = "redb"` without a path, or with one that cannot
    /// be a database file, fails start-up naming the key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redb_backend_without_a_usable_path_fails_start_up_naming_the_key() {
        let output = arqonbus().env("ARQON_STORAGE__BACKEND", "redb").output().await.unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("storage.redb.path"), "{stderr}");

        let file = fresh_file("bad-path");
        let dir = file.parent().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let output = redb_bus(dir, "always").output().await.unwrap();
        assert_ne!(output.status.code(), Some(0));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("storage.redb.path") && stderr.contains(&dir.display().to_string()), "{stderr}");
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}
