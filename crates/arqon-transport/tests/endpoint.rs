//! The `Endpoint`: connections that another HTTP server upgraded get the
//! listener's checks (connection limits, origin, refusal once shut down) and
//! its per-connection task (echo, then close 1001 at shutdown). The stream
//! here is an in-memory pipe whose client side speaks WebSocket with no
//! handshake, as a stream an embedder's server hands over would.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arqon_outbound::{Budget, Outbound, OutboundSender};
use arqon_protocol::Frame;
use arqon_transport::{
    Accepted, Acceptor, Connection, Endpoint, HeaderMap, Refusal, TransportConfig, UpgradeRequest, VetFuture,
    VetRequest, Vetted,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Echoes text frames.
struct Echo {
    frames: OutboundSender,
}

impl Connection for Echo {
    async fn on_text(&mut self, text: &str) {
        let _ = self.frames.try_send(Outbound::Frame(Frame::from_text(text)));
    }

    fn on_binary(&mut self, _data: &[u8]) {}

    fn on_oversize(&mut self) {}
}

/// Echoes text frames prefixed with how many reads the transport reported
/// before them.
struct ReadCounter {
    frames: OutboundSender,
    reads: usize,
}

impl Connection for ReadCounter {
    fn on_read(&mut self) {
        self.reads += 1;
    }

    async fn on_text(&mut self, text: &str) {
        let _ = self.frames.try_send(Outbound::Frame(Frame::from_text(format!("{}:{text}", self.reads))));
    }

    fn on_binary(&mut self, _data: &[u8]) {}

    fn on_oversize(&mut self) {}
}

/// Echoes a text frame at once unless it starts with `wait`; those are left
/// to await, and echoed after the scheduler has run other tasks. Its
/// `on_text` marks its echo: the transport should never call it.
struct PartlyAtOnce {
    frames: OutboundSender,
}

impl Connection for PartlyAtOnce {
    async fn on_text(&mut self, text: &str) {
        let _ = self.frames.try_send(Outbound::Frame(Frame::from_text(format!("on_text: {text}"))));
    }

    fn on_text_now(&mut self, text: &str) -> Option<impl Future<Output = ()> + Send> {
        let echo = Outbound::Frame(Frame::from_text(text));
        if !text.starts_with("wait") {
            let _ = self.frames.try_send(echo);
            return None;
        }
        let frames = &self.frames;
        Some(async move {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            let _ = frames.try_send(echo);
        })
    }

    fn on_binary(&mut self, _data: &[u8]) {}

    fn on_oversize(&mut self) {}
}

/// Accepts every upgrade with the connection it builds around the
/// connection's outbound queue.
struct AcceptWith<C>(fn(OutboundSender) -> C);

impl<C: Connection> Acceptor for AcceptWith<C> {
    type Conn = C;

    fn accept(&self, _request: &UpgradeRequest<'_>) -> Result<Accepted<C>, Refusal> {
        let (frames_tx, frames) = arqon_outbound::queue(64 * 1024, &Budget::unlimited());
        Ok(Accepted { conn: (self.0)(frames_tx), frames })
    }
}

const ECHO: AcceptWith<Echo> = AcceptWith(|frames| Echo { frames });

/// Vets like a connect hook: asks "the application" (a header here), and
/// accepts only what it vetted.
struct HookAcceptor {
    asked: std::sync::atomic::AtomicUsize,
}

impl Acceptor for HookAcceptor {
    type Conn = Echo;

    fn accept(&self, _request: &UpgradeRequest<'_>) -> Result<Accepted<Echo>, Refusal> {
        Err(Refusal { status: 503, code: "INTERNAL", message: "not vetted".to_owned() })
    }

    fn vets(&self) -> bool {
        true
    }

    fn vet(&self, request: VetRequest) -> VetFuture {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let user = request.headers.get("x-user").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Box::pin(async move {
            tokio::task::yield_now().await; // the application answers later
            match user {
                Some(user) => Ok(Box::new(user) as Vetted),
                None => Err(Refusal { status: 401, code: "UNAUTHORIZED", message: "who are you?".to_owned() }),
            }
        })
    }

    fn accept_vetted(&self, request: &UpgradeRequest<'_>, vetted: Option<Vetted>) -> Result<Accepted<Echo>, Refusal> {
        match vetted.and_then(|v| v.downcast::<String>().ok()) {
            Some(user) if *user == "ann" => ECHO.accept(request),
            _ => self.accept(request),
        }
    }
}

fn request(headers: &HeaderMap) -> UpgradeRequest<'_> {
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    UpgradeRequest { path: "/bus", query: None, headers, peer }
}

/// An endpoint of `acceptor` serving one admitted connection over an
/// in-memory pipe: the endpoint, the serving task and the client's end.
async fn served_over_a_pipe<A: Acceptor>(
    acceptor: A,
) -> (Endpoint, tokio::task::JoinHandle<()>, WebSocketStream<tokio::io::DuplexStream>) {
    let endpoint = Endpoint::new(Arc::new(acceptor), TransportConfig::default());
    let headers = HeaderMap::new();
    let admitted = endpoint.admit(&request(&headers)).await.unwrap();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(admitted.serve(server_io));
    let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    (endpoint, served, client)
}

#[tokio::test]
async fn admitting_applies_the_listeners_limits_and_origin_check() {
    let config = TransportConfig {
        max_connections_per_ip: 1,
        allowed_origins: vec!["https://app.example".to_owned()],
        ..TransportConfig::default()
    };
    let endpoint = Endpoint::new(Arc::new(ECHO), config);
    let headers = HeaderMap::new();
    let first = endpoint.admit(&request(&headers)).await.unwrap();
    assert_eq!(endpoint.admit(&request(&headers)).await.unwrap_err().status, 429);
    // A dropped admission (an upgrade that never completed) frees its slot.
    drop(first);
    let second = endpoint.admit(&request(&headers)).await.unwrap();
    drop(second);
    let mut foreign = HeaderMap::new();
    foreign.insert("origin", HeaderValue::from_static("https://elsewhere.example"));
    assert_eq!(endpoint.admit(&request(&foreign)).await.unwrap_err().status, 403);
    endpoint.shutdown().await;
    assert_eq!(endpoint.admit(&request(&headers)).await.unwrap_err().status, 503);
}

#[tokio::test]
async fn an_upgraded_stream_is_served_until_shutdown_closes_it_1001() {
    let (endpoint, served, mut client) = served_over_a_pipe(ECHO).await;

    client.send(Message::text("hello")).await.unwrap();
    let echoed = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed, Message::text("hello"));

    let shutdown = tokio::spawn({
        let endpoint = endpoint.clone();
        async move { endpoint.shutdown().await }
    });
    let mut code = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(TIMEOUT, client.next()).await {
        if let Message::Close(frame) = message {
            code = frame.map(|f| f.code);
        }
    }
    assert_eq!(code, Some(CloseCode::Away));
    drop(client);
    tokio::time::timeout(TIMEOUT, served).await.unwrap().unwrap();
    tokio::time::timeout(TIMEOUT, shutdown).await.unwrap().unwrap();
}

#[tokio::test]
async fn each_read_is_reported_before_the_frames_it_completed() {
    let (endpoint, served, mut client) =
        served_over_a_pipe(AcceptWith(|frames| ReadCounter { frames, reads: 0 })).await;
    let reads_before = |text: &str, echoed: Message| -> usize {
        let echoed = echoed.into_text().unwrap();
        let (reads, rest) = echoed.split_once(':').unwrap();
        assert_eq!(rest, text);
        reads.parse().unwrap()
    };
    let mut last = 0;
    for text in ["a", "b", "c"] {
        // Sent only once the previous one was handled: another read must
        // have brought it.
        client.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap().unwrap().unwrap();
        let reads = reads_before(text, echoed);
        assert!(reads > last, "{text} was handled after {reads} reads, the frame before it after {last}");
        last = reads;
    }
    drop(client);
    tokio::time::timeout(TIMEOUT, served).await.unwrap().unwrap();
    endpoint.shutdown().await;
}

#[tokio::test]
async fn what_a_handler_leaves_to_await_is_awaited_before_the_next_frame() {
    let (endpoint, served, mut client) = served_over_a_pipe(AcceptWith(|frames| PartlyAtOnce { frames })).await;
    let texts = ["wait 1", "now 2", "wait 3", "wait 4", "now 5"];
    // Sent back to back: the frames after a waiting one are read (often in
    // the same read) while it waits.
    for text in texts {
        client.feed(Message::text(text)).await.unwrap();
    }
    client.flush().await.unwrap();
    for text in texts {
        let echoed = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap(), text);
    }
    drop(client);
    tokio::time::timeout(TIMEOUT, served).await.unwrap().unwrap();
    endpoint.shutdown().await;
}

#[tokio::test]
async fn an_acceptor_that_vets_is_asked_before_admitting_and_its_refusal_is_the_answer() {
    let config =
        TransportConfig { allowed_origins: vec!["https://app.example".to_owned()], ..TransportConfig::default() };
    let acceptor = Arc::new(HookAcceptor { asked: Default::default() });
    let endpoint = Endpoint::new(Arc::clone(&acceptor), config);
    let mut ann = HeaderMap::new();
    ann.insert("x-user", HeaderValue::from_static("ann"));
    assert!(endpoint.admit(&request(&ann)).await.is_ok(), "vetted, then accepted");
    let nobody = HeaderMap::new();
    let refused = endpoint.admit(&request(&nobody)).await.unwrap_err();
    assert_eq!((refused.status, refused.code), (401, "UNAUTHORIZED"));
    // A foreign page's request is refused before the application is asked.
    let mut foreign = ann.clone();
    foreign.insert("origin", HeaderValue::from_static("https://elsewhere.example"));
    assert_eq!(endpoint.admit(&request(&foreign)).await.unwrap_err().status, 403);
    assert_eq!(acceptor.asked.load(std::sync::atomic::Ordering::Relaxed), 2);
}
