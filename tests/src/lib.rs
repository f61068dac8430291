//! Test support for ArqonBus end-to-end tests: start a real server on
//! 127.0.0.1 port 0 and talk to it with real WebSocket clients.
//!
//! Not published; used as a dev-dependency by test binaries only. Every
//! wait is bounded ([`TIMEOUT`]) so a broken server fails a test instead of
//! hanging it.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod api;
pub mod app;
pub mod redis;
pub mod tls;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use arqon_config::Config;
use arqon_protocol::IdGenerator;
use arqon_server::Bus;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest a test waits for any one thing; generous for a slow, busy machine.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A config for tests: port 0, no rate limit, everything else default.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.port = 0;
    config.monitoring.port = 0;
    config.limits.rate_per_s = 0;
    config.limits.bytes_per_s = 0;
    config
}

/// A bare HTTP/1.1 GET (or other method) against `addr`; returns status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await.expect("connect in time").unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw)).await.expect("response in time").unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, body.to_owned())
}

/// Keeps a test's publisher at most `WINDOW` messages ahead of its reader,
/// so that a reader on a slow, busy machine is never closed as a slow
/// consumer (its queue holds 1,024 frames) in a test about something else.
#[derive(Debug, Clone, Default)]
pub struct Window(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Window {
    /// How far the publisher may run ahead.
    pub const WINDOW: u64 = 500;

    /// The reader has received `count` messages.
    pub fn received(&self, count: u64) {
        self.0.store(count, std::sync::atomic::Ordering::Release);
    }

    /// Waits until message number `sent` may be published.
    pub async fn before_sending(&self, sent: u64) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while sent >= self.0.load(std::sync::atomic::Ordering::Acquire) + Self::WINDOW {
            assert!(tokio::time::Instant::now() < deadline, "the reader stopped reading");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A running in-process server.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    /// The monitoring listener, if enabled.
    pub monitoring: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        Self::serve(Bus::bind(&config).await.expect("bind"))
    }

    /// Serves a bus bound by the caller (e.g. with `Bus::builder`).
    pub fn serve(bus: Bus) -> TestServer {
        let addr = bus.local_addr();
        let monitoring = bus.monitoring_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            bus.serve(async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        TestServer { addr, monitoring, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self) -> TestClient {
        TestClient::connect(&self.url()).await
    }

    /// A client connected with `?token=TOKEN`.
    pub async fn client_as(&self, token: &str) -> TestClient {
        TestClient::connect(&format!("{}?token={token}", self.url())).await
    }

    /// Asks the server to shut down without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Asks the server to shut down and waits until it has.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(TIMEOUT, task).await.expect("server stops in time").expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a client observed when the server closed the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The TCP connection ended without a close frame.
    Eof,
}

/// A real WebSocket client that understands envelopes.
#[derive(Debug)]
pub struct TestClient {
    pub ws: Ws,
    pub id: String,
    pub welcome: Value,
    ids: IdGenerator,
    /// Frames read while waiting for something else, in order.
    pending: VecDeque<Value>,
}

impl TestClient {
    pub async fn connect(url: &str) -> TestClient {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Self::from_ws(ws).await
    }

    pub async fn from_ws(ws: Ws) -> TestClient {
        let mut client = TestClient {
            ws,
            id: String::new(),
            welcome: Value::Null,
            ids: IdGenerator::new(),
            pending: VecDeque::new(),
        };
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "event", "{welcome}");
        assert_eq!(welcome["payload"]["event"], "welcome", "{welcome}");
        client.id = welcome["payload"]["client_id"].as_str().unwrap().to_owned();
        client.welcome = welcome;
        client
    }

    pub fn new_id(&mut self) -> String {
        self.ids.message_id().to_string()
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.expect("send");
    }

    pub async fn send(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    /// The next frame (pending first).
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("read ok");
            match msg {
                Message::Text(text) => return serde_json::from_str(text.as_str()).expect("server sent JSON"),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next frame matching `pred`; others are kept for later `recv`s.
    pub async fn recv_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self.pending.iter().position(&pred) {
            return self.pending.remove(pos).unwrap();
        }
        loop {
            let v = self.read_frame().await;
            if pred(&v) {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// Frames read while waiting for something else.
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    /// The next delivered message (events and others are kept).
    pub async fn recv_message(&mut self) -> Value {
        self.recv_where(|v| v["type"] == "message").await
    }

    /// The next event named `name`.
    pub async fn recv_event(&mut self, name: &str) -> Value {
        let name = name.to_owned();
        self.recv_where(move |v| v["type"] == "event" && v["payload"]["event"] == name.as_str()).await
    }

    /// Sends a frame with a fresh id and returns the answer to it.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.new_id();
        frame["id"] = json!(id);
        self.send(frame).await;
        self.recv_where(move |v| v["request_id"] == id.as_str()).await
    }

    /// Runs a command and returns its `response` or `error` frame.
    pub async fn command(&mut self, name: &str, args: Value) -> Value {
        self.request(json!({"type": "command", "command": name, "args": args})).await
    }

    /// Runs a command that must succeed; returns its payload.
    pub async fn ok(&mut self, name: &str, args: Value) -> Value {
        let answer = self.command(name, args.clone()).await;
        assert_eq!(answer["type"], "response", "{name} {args} -> {answer}");
        answer["payload"].clone()
    }

    /// Runs a command that must fail; returns the error code.
    pub async fn err(&mut self, name: &str, args: Value) -> String {
        let answer = self.command(name, args.clone()).await;
        assert_eq!(answer["type"], "error", "{name} {args} -> {answer}");
        answer["error"]["code"].as_str().unwrap().to_owned()
    }

    /// Waits until `channel_info` reports `members` (in a cluster, counts
    /// travel between nodes asynchronously).
    pub async fn until_members(&mut self, room: &str, channel: &str, members: u64) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let info = self.ok("channel_info", json!({"room": room, "channel": channel})).await;
            if info["members"] == members {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "members never reached {members}: {info}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn join(&mut self, room: &str, channel: &str) -> Value {
        self.ok("join_channel", json!({"room": room, "channel": channel})).await
    }

    /// Sends a fire-and-forget message.
    pub async fn publish_ff(&mut self, room: &str, channel: &str, payload: Value) {
        self.send(json!({"type": "message", "room": room, "channel": channel, "payload": payload})).await;
    }

    /// Asserts nothing but pings arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        assert!(self.pending.is_empty(), "pending frames: {:?}", self.pending);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Reads until the server closes; returns how.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next()).await.expect("close in time") {
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => return Closed::Code(code.into()),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Closed::Eof,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads frames until the server closes; returns them and how it closed.
    pub async fn drain_until_closed(&mut self) -> (Vec<Value>, Closed) {
        let mut frames: Vec<Value> = self.pending.drain(..).collect();
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next()).await.expect("close in time") {
                Some(Ok(Message::Text(text))) => frames.push(serde_json::from_str(text.as_str()).unwrap()),
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => return (frames, Closed::Code(code.into())),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (frames, Closed::Eof),
                Some(Ok(_)) => {}
            }
        }
    }
}
