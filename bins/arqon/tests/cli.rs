//! The real `arqon` binary against a real bus (in-process, port 0): what it
//! prints, what it sends, and the exit code a script sees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Output, Stdio};

use arqon_e2e::tls::SelfSigned;
use arqon_e2e::{TIMEOUT, TestServer, test_config};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_arqon");

fn arqon(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    command
}

/// Runs `arqon ARGS` to the end, within the harness's timeout.
async fn run(args: &[&str]) -> Output {
    tokio::time::timeout(TIMEOUT, arqon(args).output()).await.expect("arqon exits in time").unwrap()
}

/// Runs `arqon ARGS` with `input` on stdin.
async fn run_with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = arqon(args).stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(TIMEOUT, child.wait_with_output()).await.expect("arqon exits in time").unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output).lines().map(|line| serde_json::from_str(line).expect("one JSON value per line")).collect()
}

/// A URL nothing listens on: a port taken from the OS, then freed.
fn unreachable_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("ws://127.0.0.1:{port}/ws")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_prints_what_pub_sends_and_history_keeps_it() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut sub = arqon(&["--url", &url, "--json", "sub", "demo/news", "--count", "3"]).spawn().unwrap();
    // `sub` says on stderr when it has joined; publishing before that could
    // be missed.
    let mut notes = BufReader::new(sub.stderr.take().unwrap()).lines();
    let ready = tokio::time::timeout(TIMEOUT, notes.next_line()).await.expect("sub joins in time").unwrap().unwrap();
    assert!(ready.starts_with("subscribed to demo/news as arq_"), "{ready}");

    let one = run(&["--url", &url, "pub", "demo/news", r#"{"text":"hello"}"#]).await;
    assert_eq!(one.status.code(), Some(0), "{}", stderr(&one));
    let id = stdout(&one).trim().strip_prefix("published to demo/news as ").expect("the id").to_owned();
    // One payload per stdin line; blank lines are skipped.
    let two = run_with_stdin(&["--url", &url, "--json", "pub", "demo/news", "-"], "{\"n\":1}\n\n\"text\"\n").await;
    assert_eq!(two.status.code(), Some(0), "{}", stderr(&two));
    let ids = json_lines(&two);
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0]["room"], "demo");
    assert_eq!(ids[0]["channel"], "news");

    let out = tokio::time::timeout(TIMEOUT, sub.wait_with_output()).await.expect("sub exits after --count").unwrap();
    assert_eq!(out.status.code(), Some(0));
    let got = json_lines(&out);
    let payloads: Vec<&Value> = got.iter().map(|m| &m["payload"]).collect();
    assert_eq!(payloads, [&json!({"text": "hello"}), &json!({"n": 1}), &json!("text")]);
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[1]["id"], ids[0]["id"]);
    assert_eq!(got[0]["room"], "demo");
    assert_eq!(got[0]["channel"], "news");

    let history = run(&["--url", &url, "--json", "history", "demo/news", "--limit", "2"]).await;
    assert_eq!(history.status.code(), Some(0), "{}", stderr(&history));
    let kept = json_lines(&history);
    assert_eq!(kept.iter().map(|m| m["payload"].clone()).collect::<Vec<_>>(), [json!({"n": 1}), json!("text")]);

    // Human output: one line per message, id first, payload as sent.
    let history = run(&["--url", &url, "history", "demo/news"]).await;
    let lines: Vec<String> = stdout(&history).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with(&id) && lines[0].ends_with(r#" {"text":"hello"}"#), "{}", lines[0]);

    // `--since` replays what came after an id.
    let since = run(&["--url", &url, "--json", "sub", "demo/news", "--since", &id, "--count", "2"]).await;
    assert_eq!(since.status.code(), Some(0), "{}", stderr(&since));
    let replayed: Vec<Value> = json_lines(&since).iter().map(|m| m["payload"].clone()).collect();
    assert_eq!(replayed, [json!({"n": 1}), json!("text")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_ping_answer() {
    let server = TestServer::start().await;
    let url = server.url();
    let status = run(&["--url", &url, "--json", "status"]).await;
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let status = &json_lines(&status)[0];
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["storage"]["backend"], "memory");
    assert_eq!(status["connections"], 1);

    let human = run(&["--url", &url, "status"]).await;
    let text = stdout(&human);
    assert!(text.contains("storage.backend: memory\n") && text.contains(&format!("url: {url}\n")), "{text}");

    let ping = run(&["--url", &url, "--json", "ping", "--count", "3", "--interval", "0"]).await;
    assert_eq!(ping.status.code(), Some(0), "{}", stderr(&ping));
    let ping = &json_lines(&ping)[0];
    assert_eq!(ping["count"], 3);
    assert_eq!(ping["rtt_ms"].as_array().unwrap().len(), 3);
    let human = run(&["--url", &url, "ping", "--count", "2", "--interval", "0"]).await;
    let text = stdout(&human);
    assert_eq!(text.lines().filter(|l| l.starts_with("pong seq=")).count(), 2, "{text}");
    assert!(text.contains("2 pings: min/avg/max = "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_counts_every_delivery() {
    let server = TestServer::start().await;
    let url = server.url();
    let bench =
        run(&["--url", &url, "--json", "bench", "--subscribers", "3", "--messages", "40", "--publishers", "2"]).await;
    assert_eq!(bench.status.code(), Some(0), "{}", stderr(&bench));
    let report = &json_lines(&bench)[0];
    assert_eq!(report["deliveries"], 120);
    assert_eq!(report["expected"], 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_get_exit_codes_and_clear_messages() {
    let server = TestServer::start().await;
    let url = server.url();

    let unknown = run(&["frobnicate"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains(r#"unknown command "frobnicate""#), "{}", stderr(&unknown));

    // Bad JSON is refused before connecting: exit 1 even with no bus there.
    let malformed = run(&["--url", &unreachable_url(), "pub", "demo/news", "{text: hello}"]).await;
    assert_eq!(malformed.status.code(), Some(1));
    assert!(stderr(&malformed).contains("the payload is not JSON"), "{}", stderr(&malformed));

    // From stdin, lines before the bad one are published, then it stops.
    let lines = run_with_stdin(&["--url", &url, "pub", "demo/lines", "-"], "{\"ok\":1}\nnope\n{\"ok\":2}\n").await;
    assert_eq!(lines.status.code(), Some(1));
    assert!(stderr(&lines).contains("stdin line 2 is not JSON"), "{}", stderr(&lines));
    let kept = run(&["--url", &url, "--json", "history", "demo/lines"]).await;
    assert_eq!(json_lines(&kept).iter().map(|m| m["payload"].clone()).collect::<Vec<_>>(), [json!({"ok": 1})]);

    let down = unreachable_url();
    let unreachable = run(&["--url", &down, "status"]).await;
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(stderr(&unreachable).contains(&format!("cannot connect to {down}")), "{}", stderr(&unreachable));

    let missing = run(&["--url", &url, "history", "no/such"]).await;
    assert_eq!(missing.status.code(), Some(3));
    assert!(stderr(&missing).contains("NOT_FOUND"), "{}", stderr(&missing));

    let help = run(&["--help"]).await;
    assert_eq!(help.status.code(), Some(0));
    let text = stdout(&help);
    for line in ["1  usage", "2  connection", "3  refused", "gentoken --sub NAME"] {
        assert!(text.contains(line), "--help lacks {line:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gentoken_signs_what_the_server_accepts() {
    let secret = "a-test-secret-of-reasonable-length";
    let mut config = test_config();
    config.auth.mode = arqon_config::AuthMode::Jwt;
    config.auth.jwt.secret = secret.to_owned();
    let server = TestServer::start_with(config).await;
    let url = server.url();

    let dir = std::env::temp_dir().join(format!("arqon-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let same = dir.join("same.toml");
    std::fs::write(&same, format!("[auth]\nmode = \"jwt\"\n\n[auth.jwt]\nsecret = \"{secret}\"\n")).unwrap();
    let other = dir.join("other.toml");
    std::fs::write(&other, "[auth]\nmode = \"jwt\"\n\n[auth.jwt]\nsecret = \"another-secret\"\n").unwrap();
    let same = same.to_str().unwrap();

    let made = run(&["gentoken", "--config", same, "--sub", "alice", "--rooms", "demo", "--ttl", "1h"]).await;
    assert_eq!(made.status.code(), Some(0), "{}", stderr(&made));
    let token = stdout(&made).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");

    let status = run(&["--url", &url, "--token", &token, "status"]).await;
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    // The `rooms` claim is enforced: demo yes, elsewhere no.
    let allowed = run(&["--url", &url, "--token", &token, "pub", "demo/news", "1"]).await;
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
    let elsewhere = run(&["--url", &url, "--token", &token, "pub", "secret/news", "1"]).await;
    assert_eq!(elsewhere.status.code(), Some(3));
    assert!(stderr(&elsewhere).contains("FORBIDDEN"), "{}", stderr(&elsewhere));

    let anonymous = run(&["--url", &url, "status"]).await;
    assert_eq!(anonymous.status.code(), Some(3));
    assert!(stderr(&anonymous).contains("UNAUTHORIZED"), "{}", stderr(&anonymous));

    let forged = run(&["gentoken", "--config", other.to_str().unwrap(), "--sub", "mallory"]).await;
    let forged = stdout(&forged).trim().to_owned();
    let refused = run(&["--url", &url, "--token", &forged, "status"]).await;
    assert_eq!(refused.status.code(), Some(3));
    assert!(stderr(&refused).contains("UNAUTHORIZED"), "{}", stderr(&refused));

    // No secret configured: a usage error naming the key (and the variable).
    let empty = dir.join("empty.toml");
    std::fs::write(&empty, "[auth]\nmode = \"jwt\"\n").unwrap();
    let unsigned = run(&["gentoken", "--config", empty.to_str().unwrap(), "--sub", "alice"]).await;
    assert_eq!(unsigned.status.code(), Some(1));
    assert!(stderr(&unsigned).contains("auth.jwt.secret"), "{}", stderr(&unsigned));
    std::fs::write(&empty, "").unwrap();
    let unsigned = run(&["gentoken", "--config", empty.to_str().unwrap(), "--sub", "alice"]).await;
    assert_eq!(unsigned.status.code(), Some(1));
    assert!(stderr(&unsigned).contains("ARQON_AUTH__JWT__SECRET"), "{}", stderr(&unsigned));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gentoken_signs_rs256_with_the_private_key_given() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
    let public = format!("{fixtures}/jwt_rs256_public.pem");
    let mut config = test_config();
    config.auth.mode = arqon_config::AuthMode::Jwt;
    config.auth.jwt.algorithm = arqon_config::JwtAlgorithm::RS256;
    config.auth.jwt.public_key_file = public.clone();
    let server = TestServer::start_with(config).await;
    let url = server.url();

    let dir = std::env::temp_dir().join(format!("arqon-cli-rs256-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rs256.toml");
    let toml = format!("[auth]\nmode = \"jwt\"\n\n[auth.jwt]\nalgorithm = \"RS256\"\npublic_key_file = \"{public}\"\n");
    std::fs::write(&file, toml).unwrap();
    let file = file.to_str().unwrap();

    let no_key = run(&["gentoken", "--config", file, "--sub", "carol"]).await;
    assert_eq!(no_key.status.code(), Some(1));
    assert!(stderr(&no_key).contains("--key FILE"), "{}", stderr(&no_key));

    for (key, expected) in [("jwt_rs256_private.pem", 0), ("jwt_rs256_other_private.pem", 3)] {
        let key = format!("{fixtures}/{key}");
        let made = run(&["gentoken", "--config", file, "--key", &key, "--sub", "carol"]).await;
        assert_eq!(made.status.code(), Some(0), "{}", stderr(&made));
        let token = stdout(&made).trim().to_owned();
        let status = run(&["--url", &url, "--token", &token, "status"]).await;
        assert_eq!(status.status.code(), Some(expected), "{key}: {}", stderr(&status));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_stops_when_its_reader_goes_away() {
    let server = TestServer::start().await;
    let url = server.url();
    // As in `arqon sub demo/head | head -1`.
    let mut sub = arqon(&["--url", &url, "sub", "demo/head"]).spawn().unwrap();
    let mut notes = BufReader::new(sub.stderr.take().unwrap()).lines();
    tokio::time::timeout(TIMEOUT, notes.next_line()).await.expect("sub joins in time").unwrap().unwrap();
    let mut out = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(run(&["--url", &url, "pub", "demo/head", "1"]).await.status.code(), Some(0));
    let first = tokio::time::timeout(TIMEOUT, out.next_line()).await.unwrap().unwrap().unwrap();
    assert!(first.ends_with(" 1"), "{first}");
    drop(out);
    assert_eq!(run(&["--url", &url, "pub", "demo/head", "2"]).await.status.code(), Some(0));
    let status = tokio::time::timeout(TIMEOUT, sub.wait()).await.expect("sub exits once stdout is closed").unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_needs_the_bus_certificate_with_ca() {
    let tls = SelfSigned::new("cli");
    let server = TestServer::start_with(tls.config(test_config())).await;
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let ca = tls.cert_path.display().to_string();

    let trusted = run(&["--url", &url, "--ca", &ca, "ping", "--count", "1"]).await;
    assert_eq!(trusted.status.code(), Some(0), "{}", stderr(&trusted));
    let unknown = run(&["--url", &url, "ping", "--count", "1"]).await;
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("certificate"), "{}", stderr(&unknown));
    let missing = run(&["--url", &url, "--ca", "/nonexistent/ca.pem", "ping"]).await;
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("cannot read --ca /nonexistent/ca.pem"), "{}", stderr(&missing));
}

/// `arqon presence`: who is in a channel, with their users, for people and
/// for scripts; a page at a time; a room without presence is refused (3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_members_with_their_users() {
    use arqon_client::{Client, ClientOptions};
    use arqon_config::{AuthMode, RoomConfig, StaticToken};

    let mut config = test_config();
    config.auth.mode = AuthMode::Token;
    for (token, user) in [("alice-token-0123456789", "alice"), ("bob-token-0123456789", "bob")] {
        let role = arqon_client::Role::User;
        config.auth.tokens.push(StaticToken { token: token.to_owned(), role, client: user.to_owned(), rooms: vec![] });
    }
    config.rooms.insert("quiet".to_owned(), RoomConfig { presence: Some(false), ..RoomConfig::default() });
    let server = TestServer::start_with(config).await;
    let url = server.url();
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for token in ["alice-token-0123456789", "alice-token-0123456789", "bob-token-0123456789"] {
        let options = ClientOptions { token: Some(token.to_owned()), ..ClientOptions::default() };
        let client = Client::connect_with(&url, options).await.unwrap();
        client.join("demo", "room").await.unwrap();
        ids.push(client.server_info().client_id.to_string());
        clients.push(client);
    }
    ids.sort();
    let alice = ["--url", &url, "--token", "alice-token-0123456789"];

    let json = run(&[&alice[..], &["--json", "presence", "demo/room"]].concat()).await;
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let page = &json_lines(&json)[0];
    assert_eq!((page["total"].clone(), page["users"].clone()), (json!(3), json!(2)));
    let members = page["members"].as_array().unwrap();
    assert_eq!(members.iter().map(|m| m["client_id"].as_str().unwrap()).collect::<Vec<_>>(), ids);
    let mut users: Vec<&str> = members.iter().map(|m| m["user"].as_str().unwrap()).collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "alice", "bob"]);
    assert!(members.iter().all(|m| m["info"].is_null() && m["joined_at"].as_str().unwrap().ends_with('Z')));

    // People: a summary line, then `CLIENT_ID USER JOINED_AT`; a full page
    // says on stderr how to get the next one.
    let human = run(&[&alice[..], &["presence", "demo/room", "--limit", "2"]].concat()).await;
    assert_eq!(human.status.code(), Some(0), "{}", stderr(&human));
    let lines: Vec<String> = stdout(&human).lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "demo/room: 3 connection(s), 2 user(s)");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[1].starts_with(&format!("{} ", ids[0])), "{}", lines[1]);
    assert!(stderr(&human).contains(&format!("--after {}", ids[1])), "{}", stderr(&human));
    let rest = run(&[&alice[..], &["presence", "demo/room", "--limit", "2", "--after", &ids[1]]].concat()).await;
    let lines: Vec<String> = stdout(&rest).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].starts_with(&ids[2]), "{}", lines[1]);

    let quiet = run(&[&alice[..], &["presence", "quiet/room"]].concat()).await;
    assert_eq!(quiet.status.code(), Some(3), "{}", stderr(&quiet));
    assert!(stderr(&quiet).contains("FORBIDDEN"), "{}", stderr(&quiet));
    let bad = run(&[&alice[..], &["presence", "demo/room", "--after", "nope"]].concat()).await;
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    let nobody = run(&["--url", &unreachable_url(), "presence", "demo/room"]).await;
    assert_eq!(nobody.status.code(), Some(2), "{}", stderr(&nobody));
    for client in clients {
        client.close().await;
    }
}
