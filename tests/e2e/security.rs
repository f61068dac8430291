//! Issue 3: authentication, authorization, limits, origins, TLS, hostile input.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arqon_config::{AuthMode, JwtAlgorithm, RoleRate, StaticToken};
use arqon_e2e::tls::SelfSigned;
use arqon_e2e::{Closed, TIMEOUT, TestClient, TestServer, test_config};
use arqon_protocol::Role;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Tries to connect with an optional bearer header; returns the client or
/// the HTTP status and JSON body of the refusal.
async fn try_connect(url: &str, bearer: Option<&str>, origin: Option<&str>) -> Result<TestClient, (u16, Value)> {
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = bearer {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse().unwrap());
    }
    match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request)).await.expect("answer in time") {
        Ok((ws, _)) => Ok(TestClient::from_ws(ws).await),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().clone().map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or(Value::Null);
            Err((response.status().as_u16(), body))
        }
        Err(other) => panic!("unexpected connect error {other}"),
    }
}

fn refused(result: Result<TestClient, (u16, Value)>) -> (u16, Value) {
    match result {
        Ok(client) => panic!("expected a refusal, connected as {}", client.welcome),
        Err(refusal) => refusal,
    }
}

fn assert_unauthorized(result: Result<TestClient, (u16, Value)>) {
    let (status, body) = refused(result);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    assert!(body["error"]["message"].is_string());
}

fn token_config() -> arqon_config::Config {
    let mut config = test_config();
    config.auth.mode = AuthMode::Token;
    config.auth.tokens = vec![
        StaticToken { token: "admin-token".into(), role: Role::Admin, client: String::new(), rooms: vec![] },
        StaticToken {
            token: "alice-token".into(),
            role: Role::User,
            client: "alice".into(),
            rooms: vec!["lobby".into()],
        },
    ];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_tokens_valid_missing_and_unknown() {
    let server = TestServer::start_with(token_config()).await;
    let admin = try_connect(&server.url(), Some("admin-token"), None).await.unwrap();
    assert_eq!(admin.welcome["payload"]["role"], "admin");
    let alice = try_connect(&server.url(), Some("alice-token"), None).await.unwrap();
    assert_eq!(alice.welcome["payload"]["role"], "user");
    // The token's name is the user; every connection gets its own id, and a
    // second one is not refused (two browser tabs).
    assert_eq!(alice.welcome["payload"]["user"], "alice");
    let again = TestClient::connect(&format!("{}?token=alice-token", server.url())).await;
    assert_ne!(again.id, alice.id);
    assert_eq!(again.welcome["payload"]["user"], "alice");
    assert_unauthorized(try_connect(&server.url(), None, None).await);
    assert_unauthorized(try_connect(&server.url(), Some("nope"), None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_are_guests_when_allowed() {
    let mut config = token_config();
    config.auth.allow_anonymous = true;
    let server = TestServer::start_with(config).await;
    let mut guest = try_connect(&server.url(), None, None).await.unwrap();
    assert_eq!(guest.welcome["payload"]["role"], "guest");
    assert_eq!(guest.err("publish", json!({"room": "r", "channel": "c", "payload": 1})).await, "FORBIDDEN");
    assert_unauthorized(try_connect(&server.url(), Some("wrong"), None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_claim_limits_join_publish_and_reads() {
    let server = TestServer::start_with(token_config()).await;
    let mut admin = try_connect(&server.url(), Some("admin-token"), None).await.unwrap();
    admin.ok("create_channel", json!({"room": "secret", "channel": "c"})).await;
    let mut alice = try_connect(&server.url(), Some("alice-token"), None).await.unwrap();
    alice.join("lobby", "chat").await;
    alice.ok("publish", json!({"room": "lobby", "channel": "chat", "payload": 1})).await;
    for (command, args) in [
        ("join_channel", json!({"room": "secret", "channel": "c"})),
        ("publish", json!({"room": "secret", "channel": "c", "payload": 1})),
        ("history", json!({"room": "secret", "channel": "c"})),
        ("channel_info", json!({"room": "secret", "channel": "c"})),
        ("create_channel", json!({"room": "other", "channel": "c"})),
    ] {
        assert_eq!(alice.err(command, args).await, "FORBIDDEN", "{command}");
    }
    let err = alice.request(json!({"type": "message", "room": "secret", "channel": "c", "payload": 1})).await;
    assert_eq!(err["error"]["code"], "FORBIDDEN");
    let err = alice.request(json!({"type": "message", "room": "secret", "payload": 1})).await;
    assert_eq!(err["error"]["code"], "FORBIDDEN");
    let listed = alice.ok("list_channels", json!({})).await;
    assert_eq!(listed["channels"], json!([{"room": "lobby", "channel": "chat", "members": 1}]));
}

fn jwt_config(algorithm: JwtAlgorithm) -> arqon_config::Config {
    let mut config = test_config();
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwt.algorithm = algorithm;
    config.auth.jwt.secret = SECRET.into();
    config.auth.jwt.public_key_file = format!("{FIXTURES}/jwt_rs256_public.pem");
    config.auth.expiry_grace_ms = 300;
    config
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

fn rs256(claims: &Value, key_file: &str) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{key_file}")).unwrap();
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    jsonwebtoken::encode(&Header::new(jsonwebtoken::Algorithm::RS256), claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_tokens_every_failure_mode() {
    let server = TestServer::start_with(jwt_config(JwtAlgorithm::HS256)).await;
    let url = server.url();
    let good = hs256(&json!({"sub": "bob", "role": "admin", "exp": now_s() + 3600}));
    let bob = try_connect(&url, Some(&good), None).await.unwrap();
    assert_eq!(bob.welcome["payload"]["role"], "admin");
    assert!(bob.id.starts_with("arq_"));
    assert_eq!(bob.welcome["payload"]["user"], "bob");
    // The subject is the user, whatever it looks like; the connection gets a
    // fresh id. The query string works too, and `info` is passed on.
    let id = "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P";
    let by_id = hs256(&json!({"sub": id, "exp": now_s() + 3600, "info": {"name": "Bob"}}));
    let client = TestClient::connect(&format!("{url}?token={by_id}")).await;
    assert_ne!(client.id, id);
    assert_eq!(client.welcome["payload"]["user"], id);
    assert_eq!(client.welcome["payload"]["role"], "user");
    let big_info = hs256(&json!({"sub": "x", "exp": now_s() + 3600, "info": {"blob": "x".repeat(1100)}}));
    assert_unauthorized(try_connect(&url, Some(&big_info), None).await);
    let not_object = hs256(&json!({"sub": "x", "exp": now_s() + 3600, "info": "text"}));
    assert_unauthorized(try_connect(&url, Some(&not_object), None).await);
    assert_unauthorized(try_connect(&url, None, None).await);
    assert_unauthorized(try_connect(&url, Some("not.a.jwt"), None).await);
    assert_unauthorized(try_connect(&url, Some("garbage"), None).await);
    let wrong_key = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "x", "exp": now_s() + 3600}),
        &EncodingKey::from_secret(b"another secret entirely").unwrap(),
    )
    .unwrap();
    assert_unauthorized(try_connect(&url, Some(&wrong_key), None).await);
    assert_unauthorized(try_connect(&url, Some(&hs256(&json!({"sub": "x", "exp": now_s() - 60}))), None).await);
    assert_unauthorized(
        try_connect(&url, Some(&hs256(&json!({"sub": "x", "exp": now_s() + 3600, "nbf": now_s() + 600}))), None).await,
    );
    // An RS256 token is not accepted by an HS256 server.
    let rsa = rs256(&json!({"sub": "x", "exp": now_s() + 3600}), "jwt_rs256_private.pem");
    assert_unauthorized(try_connect(&url, Some(&rsa), None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_and_the_rooms_claim() {
    let server = TestServer::start_with(jwt_config(JwtAlgorithm::RS256)).await;
    let url = server.url();
    let good = rs256(&json!({"sub": "carol", "exp": now_s() + 3600, "rooms": ["lobby"]}), "jwt_rs256_private.pem");
    let mut carol = try_connect(&url, Some(&good), None).await.unwrap();
    carol.join("lobby", "c").await;
    assert_eq!(carol.err("join_channel", json!({"room": "vip", "channel": "c"})).await, "FORBIDDEN");
    let star = rs256(&json!({"sub": "dave", "exp": now_s() + 3600, "rooms": "*"}), "jwt_rs256_private.pem");
    let mut dave = try_connect(&url, Some(&star), None).await.unwrap();
    dave.join("vip", "c").await;
    let forged = rs256(&json!({"sub": "eve", "exp": now_s() + 3600}), "jwt_rs256_other_private.pem");
    assert_unauthorized(try_connect(&url, Some(&forged), None).await);
    assert_unauthorized(try_connect(&url, Some(&hs256(&json!({"sub": "eve", "exp": now_s() + 3600}))), None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_while_connected_is_told_then_closed_1008() {
    let server = TestServer::start_with(jwt_config(JwtAlgorithm::HS256)).await;
    let short = hs256(&json!({"sub": "brief", "exp": now_s() + 2}));
    let mut client = try_connect(&server.url(), Some(&short), None).await.unwrap();
    client.ok("ping", json!({})).await;
    let (frames, closed) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(1008));
    assert!(frames.iter().any(|f| f["payload"]["event"] == "token_expired"), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_command_and_message_kind() {
    let mut config = test_config();
    config.auth.mode = AuthMode::Token;
    config.auth.tokens = [("guest", Role::Guest), ("user", Role::User), ("admin", Role::Admin)]
        .into_iter()
        .map(|(token, role)| StaticToken { token: token.into(), role, client: String::new(), rooms: vec![] })
        .collect();
    let server = TestServer::start_with(config).await;
    let mut setup = try_connect(&server.url(), Some("admin"), None).await.unwrap();
    let peer = try_connect(&server.url(), Some("guest"), None).await.unwrap();
    for role in [Role::Guest, Role::User, Role::Admin] {
        setup.ok("create_channel", json!({"room": "r", "channel": "c"})).await;
        let mut client = try_connect(&server.url(), Some(role.as_str()), None).await.unwrap();
        let cases: Vec<(&str, Value, Role)> = vec![
            ("ping", json!({"type": "command", "command": "ping"}), Role::Guest),
            ("status", json!({"type": "command", "command": "status"}), Role::Guest),
            ("help", json!({"type": "command", "command": "help"}), Role::Guest),
            ("list_channels", json!({"type": "command", "command": "list_channels"}), Role::Guest),
            (
                "channel_info",
                json!({"type": "command", "command": "channel_info", "args": {"room": "r", "channel": "c"}}),
                Role::Guest,
            ),
            (
                "history",
                json!({"type": "command", "command": "history", "args": {"room": "r", "channel": "c"}}),
                Role::Guest,
            ),
            (
                "join_channel",
                json!({"type": "command", "command": "join_channel", "args": {"room": "r", "channel": "c"}}),
                Role::Guest,
            ),
            (
                "leave_channel",
                json!({"type": "command", "command": "leave_channel", "args": {"room": "r", "channel": "c"}}),
                Role::Guest,
            ),
            (
                "create_channel",
                json!({"type": "command", "command": "create_channel", "args": {"room": "r", "channel": "new"}}),
                Role::User,
            ),
            (
                "publish",
                json!({"type": "command", "command": "publish", "args": {"room": "r", "channel": "c", "payload": 1}}),
                Role::User,
            ),
            ("channel message", json!({"type": "message", "room": "r", "channel": "c", "payload": 1}), Role::User),
            ("room message", json!({"type": "message", "room": "r", "payload": 1}), Role::User),
            ("direct message", json!({"type": "message", "to": peer.id, "payload": 1}), Role::User),
            (
                "delete_channel",
                json!({"type": "command", "command": "delete_channel", "args": {"room": "r", "channel": "c"}}),
                Role::Admin,
            ),
        ];
        for (name, mut frame, least) in cases {
            let is_message = frame["type"] == "message";
            let id = client.new_id();
            frame["id"] = json!(id);
            client.send(frame).await;
            if is_message && role >= least {
                // Fire-and-forget: nothing comes back on success.
                client.ok("ping", json!({})).await;
                let errors: Vec<Value> = client.take_pending().into_iter().filter(|f| f["type"] == "error").collect();
                assert!(errors.is_empty(), "{role:?} {name}: {errors:?}");
                continue;
            }
            let answer = client.recv_where(|v| v["request_id"] == id.as_str()).await;
            if role >= least {
                assert_eq!(answer["type"], "response", "{role:?} {name}: {answer}");
            } else {
                assert_eq!(answer["error"]["code"], "FORBIDDEN", "{role:?} {name}: {answer}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_abuse_of_the_rate_limit_closes_1008() {
    let mut config = test_config();
    config.limits.rate_per_s = 1;
    config.limits.burst = 2;
    config.limits.abuse_limit = 20;
    config.limits.roles.insert(Role::Admin, RoleRate { rate_per_s: 0, burst: 1 });
    let server = TestServer::start_with(config).await;
    let mut abuser = server.client().await;
    let mut bystander = server.client().await;
    for _ in 0..40 {
        abuser.send(json!({"type": "command", "command": "ping"})).await;
    }
    let (frames, closed) = abuser.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(1008));
    let limited = frames.iter().filter(|f| f["error"]["code"] == "RATE_LIMITED").count();
    assert!(limited >= 20, "{limited} refusals before the close");
    assert!(
        frames
            .iter()
            .filter(|f| f["error"]["code"] == "RATE_LIMITED")
            .all(|f| f["error"]["retry_after_ms"].as_u64() >= Some(1))
    );
    assert_eq!(bystander.ok("ping", json!({})).await["pong"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_role_rates_apply() {
    let mut config = test_config();
    config.auth.default_role = Role::Admin;
    config.limits.rate_per_s = 1;
    config.limits.burst = 1;
    config.limits.roles.insert(Role::Admin, RoleRate { rate_per_s: 0, burst: 1 });
    let server = TestServer::start_with(config).await;
    let mut admin = server.client().await;
    assert_eq!(admin.welcome["payload"]["limits"]["rate_per_s"], 0);
    for _ in 0..50 {
        admin.ok("ping", json!({})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_total_and_per_ip() {
    let mut config = test_config();
    config.server.max_connections = 2;
    let server = TestServer::start_with(config).await;
    let _a = server.client().await;
    let _b = server.client().await;
    let (status, body) = refused(try_connect(&server.url(), None, None).await);
    assert_eq!(status, 503, "{body}");
    drop(_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _c = try_connect(&server.url(), None, None).await.unwrap();

    let mut config = test_config();
    config.server.max_connections_per_ip = 1;
    let server = TestServer::start_with(config).await;
    let _d = server.client().await;
    let (status, body) = refused(try_connect(&server.url(), None, None).await);
    assert_eq!(status, 429, "{body}");
    assert!(body["error"]["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_origins_get_403() {
    let mut config = test_config();
    config.server.allowed_origins = vec!["https://app.example".into()];
    let server = TestServer::start_with(config).await;
    let (status, body) = refused(try_connect(&server.url(), None, Some("https://evil.example")).await);
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("FORBIDDEN")));
    try_connect(&server.url(), None, Some("https://app.example")).await.unwrap();
    try_connect(&server.url(), None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_upgrades_are_closed_at_the_deadline_while_others_connect() {
    let mut config = test_config();
    config.server.upgrade_timeout_ms = 3000;
    let server = TestServer::start_with(config).await;
    let mut half_open = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        half_open.push(stream);
    }
    let started = tokio::time::Instant::now();
    let mut normal = server.client().await;
    assert_eq!(normal.ok("ping", json!({})).await["pong"], true);
    assert!(started.elapsed() < Duration::from_millis(3000), "a normal client waited {:?}", started.elapsed());
    for mut stream in half_open {
        let mut buf = [0u8; 64];
        // The server hangs up: EOF (0) or a reset, well before our TIMEOUT.
        let read = tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip() {
    let cert = SelfSigned::new("e2e");
    let server = TestServer::start_with(cert.config(test_config())).await;

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(cert.key.cert.der().clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let client_config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let mut ws = ws;
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"));
    ws.send(Message::text(r#"{"type":"command","command":"ping","id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P"}"#))
        .await
        .unwrap();
    let pong = ws.next().await.unwrap().unwrap();
    assert!(pong.to_text().unwrap().contains("\"pong\":true"), "{pong}");
    // Plain WebSocket to a TLS listener does not get in.
    assert!(tokio_tungstenite::connect_async(server.url()).await.is_err());
}

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A malformed frame: random bytes, broken JSON, wrong types, bad fields.
fn malformed(rng: &mut XorShift) -> String {
    const FIELDS: [&str; 14] = [
        "version",
        "id",
        "type",
        "timestamp",
        "room",
        "channel",
        "to",
        "from",
        "command",
        "args",
        "payload",
        "meta",
        "request_id",
        "error",
    ];
    const VALUES: [&str; 12] =
        ["1", "2", "-1", "null", "true", "\"\"", "\"arq_x\"", "[]", "{}", "\"message\"", "\"command\"", "1e309"];
    match rng.below(4) {
        0 => (0..rng.below(64)).map(|_| char::from(32 + rng.below(95) as u8)).collect(),
        1 => {
            let text = r#"{"type":"message","room":"r","channel":"c","payload":{"a":[1,2,{"b":null}]}}"#;
            let cut = rng.below(text.len());
            text[..cut].to_owned()
        }
        2 => {
            let fields: Vec<String> = (0..1 + rng.below(5))
                .map(|_| format!("\"{}\":{}", FIELDS[rng.below(FIELDS.len())], VALUES[rng.below(VALUES.len())]))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        _ => format!("{}{}", "[".repeat(rng.below(300)), "]".repeat(rng.below(300))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_frames_get_errors_while_others_are_served() {
    let server = TestServer::start().await;
    let (mut fuzzer, mut sender, mut receiver) = (server.client().await, server.client().await, server.client().await);
    receiver.join("safe", "c").await;
    const N: usize = 10_000;
    let honest = tokio::spawn(async move {
        for i in 0..500 {
            sender.publish_ff("safe", "c", json!(i)).await;
        }
        sender
    });
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    let (mut errors, mut answers) = (0, 0);
    // In batches, reading the answers in between: a client that never reads
    // would rightly be closed as a slow consumer.
    for _ in 0..N / 100 {
        for _ in 0..100 {
            fuzzer.send_text(malformed(&mut rng)).await;
        }
        fuzzer.ok("ping", json!({})).await;
        for frame in fuzzer.take_pending() {
            answers += 1;
            errors += usize::from(frame["type"] == "error");
            assert!(frame["type"] == "error" || frame["type"] == "message" || frame["type"] == "event", "{frame}");
            if frame["type"] == "error" {
                assert!(frame["error"]["code"].is_string() && frame["error"]["message"].is_string(), "{frame}");
            }
        }
    }
    // A generated frame that happens to be valid (e.g. a bare room message)
    // gets no answer; everything else gets exactly one error.
    assert!(errors >= N * 9 / 10 && answers <= N, "{errors} errors, {answers} answers for {N} frames");
    for i in 0..500 {
        assert_eq!(receiver.recv_message().await["payload"], i);
    }
    honest.await.unwrap();
    assert_eq!(fuzzer.ok("ping", json!({})).await["pong"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_exp_is_required_and_aud_and_iss_are_checked_when_set() {
    let server = TestServer::start_with(jwt_config(JwtAlgorithm::HS256)).await;
    let url = server.url();
    assert_unauthorized(try_connect(&url, Some(&hs256(&json!({"sub": "forever"}))), None).await);
    drop(server);

    let mut config = jwt_config(JwtAlgorithm::HS256);
    config.auth.jwt.require_exp = false;
    let server = TestServer::start_with(config).await;
    let forever = try_connect(&server.url(), Some(&hs256(&json!({"sub": "forever"}))), None).await;
    assert_eq!(forever.unwrap().welcome["payload"]["role"], "user", "allowed when require_exp = false");
    drop(server);

    let mut config = jwt_config(JwtAlgorithm::HS256);
    config.auth.jwt.audience = "bus".into();
    config.auth.jwt.issuer = "https://id.example".into();
    let server = TestServer::start_with(config).await;
    let url = server.url();
    let exp = now_s() + 3600;
    let good = hs256(&json!({"sub": "x", "exp": exp, "aud": "bus", "iss": "https://id.example"}));
    assert!(try_connect(&url, Some(&good), None).await.is_ok());
    let listed = hs256(&json!({"sub": "x", "exp": exp, "aud": ["other", "bus"], "iss": "https://id.example"}));
    assert!(try_connect(&url, Some(&listed), None).await.is_ok(), "aud may be a list naming us");
    for claims in [
        json!({"sub": "x", "exp": exp, "aud": "other", "iss": "https://id.example"}),
        json!({"sub": "x", "exp": exp, "iss": "https://id.example"}),
        json!({"sub": "x", "exp": exp, "aud": "bus", "iss": "https://evil.example"}),
        json!({"sub": "x", "exp": exp, "aud": "bus"}),
    ] {
        assert_unauthorized(try_connect(&url, Some(&hs256(&claims)), None).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_hs256_secret_stops_start_up_naming_the_key() {
    let mut config = jwt_config(JwtAlgorithm::HS256);
    config.auth.jwt.secret = "k".into();
    let Err(error) = arqon_server::Bus::bind(&config).await else { panic!("a one-byte secret was accepted") };
    let message = error.to_string();
    assert!(message.contains("auth.jwt.secret") && message.contains("at least 32 bytes"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_rooms_claim_grants_no_room() {
    let server = TestServer::start_with(jwt_config(JwtAlgorithm::HS256)).await;
    let url = server.url();
    let mut admin =
        try_connect(&url, Some(&hs256(&json!({"sub": "root", "role": "admin", "exp": now_s() + 3600}))), None)
            .await
            .unwrap();
    admin.join("lobby", "c").await;
    let none = hs256(&json!({"sub": "nobody", "exp": now_s() + 3600, "rooms": []}));
    let mut nobody = try_connect(&url, Some(&none), None).await.unwrap();
    assert_eq!(nobody.err("join_channel", json!({"room": "lobby", "channel": "c"})).await, "FORBIDDEN");
    assert_eq!(nobody.err("history", json!({"room": "lobby", "channel": "c"})).await, "FORBIDDEN");
    let err = nobody.request(json!({"type": "message", "room": "lobby", "channel": "c", "payload": 1})).await;
    assert_eq!(err["error"]["code"], "FORBIDDEN");
    assert_eq!(nobody.ok("list_channels", json!({})).await["channels"], json!([]));
    let status = nobody.ok("status", json!({})).await;
    assert_eq!((&status["connections"], &status["rooms"], &status["channels"]), (&json!(0), &json!(0), &json!(0)));
    assert_eq!(nobody.ok("ping", json!({})).await["pong"], true);
    // It may still write to an unrestricted client (the application's service).
    nobody.send(json!({"type": "message", "to": admin.id, "payload": "help"})).await;
    assert_eq!(admin.recv_message().await["payload"], "help");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_request_gets_426_naming_the_websocket_url() {
    let server = TestServer::start_with(test_config()).await;
    for path in ["/", "/ws", "/elsewhere"] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\n\r\n", server.addr);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut response)).await.expect("answered in time").unwrap();
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{response}");
        assert!(response.contains("\r\nUpgrade: websocket\r\n"), "{response}");
        assert!(response.ends_with(&format!("connect a WebSocket client to ws://{}/ws\n", server.addr)), "{response}");
    }
    // WebSocket clients are unaffected, on / and on /ws.
    let mut client = TestClient::connect(&format!("ws://{}/", server.addr)).await;
    assert_eq!(client.ok("ping", json!({})).await["pong"], true);
    let mut client = server.client().await;
    assert_eq!(client.ok("ping", json!({})).await["pong"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_and_pings_count_against_the_rate_limit() {
    let mut config = test_config();
    config.limits.rate_per_s = 1;
    config.limits.burst = 3;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    client.ws.send(Message::binary(vec![1u8, 2])).await.unwrap();
    assert_eq!(client.recv().await["error"]["code"], "UNSUPPORTED_FRAME");
    for payload in ["p1", "p2", "p3"] {
        client.ws.send(Message::Ping(payload.as_bytes().to_vec().into())).await.unwrap();
    }
    client.ws.send(Message::binary(vec![3u8])).await.unwrap();
    // p3 and the second binary frame are over the burst of 3.
    let mut pongs = Vec::new();
    let mut refusals = 0;
    while refusals < 2 || pongs.last().map(Vec::as_slice) != Some(&b"last"[..]) {
        let frame = tokio::time::timeout(TIMEOUT, client.ws.next()).await.expect("a frame in time").unwrap().unwrap();
        match frame {
            Message::Pong(payload) => pongs.push(payload.to_vec()),
            Message::Text(text) => {
                let error: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(error["error"]["code"], "RATE_LIMITED", "{error}");
                refusals += 1;
                if refusals == 2 {
                    // A token comes back within a second: ping again then.
                    let wait = error["error"]["retry_after_ms"].as_u64().unwrap();
                    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
                    client.ws.send(Message::Ping(b"last".to_vec().into())).await.unwrap();
                }
            }
            Message::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pongs, [b"p1".to_vec(), b"p2".to_vec(), b"last".to_vec()], "the over-rate ping got no pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_with_month_long_tokens_leave_no_task_behind() {
    let server = TestServer::start_with(jwt_config(JwtAlgorithm::HS256)).await;
    let tasks = tokio::runtime::Handle::current().metrics();
    let month = now_s() + 30 * 24 * 3600;
    // One connection first, so that the server's own tasks (started as it
    // begins serving) are all running before counting.
    let token = hs256(&json!({"sub": "warm-up", "exp": month}));
    let mut client = try_connect(&server.url(), Some(&token), None).await.unwrap();
    client.ws.close(None).await.unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = tasks.num_alive_tasks();
    for n in 0..200 {
        let token = hs256(&json!({"sub": format!("client-{n}"), "exp": month}));
        let mut client = try_connect(&server.url(), Some(&token), None).await.unwrap();
        assert_eq!(client.ok("ping", json!({})).await["pong"], true);
        client.ws.close(None).await.unwrap();
    }
    // Connection tasks end as their sockets close; bounded wait for the last.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tasks.num_alive_tasks() > idle && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tasks.num_alive_tasks(), idle, "every task a connection started ended with it");
}
