//! The `Endpoint`: connections that another HTTP server upgraded get the
//! listener's checks (connection limits, origin, refusal once shut down) and
//! its per-connection task (echo, then close 1001 at shutdown). The stream
//! here is an in-memory pipe whose client side speaks WebSocket with no
//! handshake, as a stream an embedder's server hands over would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arqon_outbound::{Budget, Outbound, OutboundSender};
use arqon_protocol::Frame;
use arqon_transport::{Accepted, Acceptor, Connection, Endpoint, HeaderMap, Refusal, TransportConfig, UpgradeRequest};
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

struct EchoAcceptor;

impl Acceptor for EchoAcceptor {
    type Conn = Echo;

    fn accept(&self, _request: &UpgradeRequest<'_>) -> Result<Accepted<Echo>, Refusal> {
        let (frames_tx, frames) = arqon_outbound::queue(64 * 1024, &Budget::unlimited());
        Ok(Accepted { conn: Echo { frames: frames_tx }, frames })
    }
}

fn request(headers: &HeaderMap) -> UpgradeRequest<'_> {
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    UpgradeRequest { path: "/bus", query: None, headers, peer }
}

#[tokio::test]
async fn admitting_applies_the_listeners_limits_and_origin_check() {
    let config = TransportConfig {
        max_connections_per_ip: 1,
        allowed_origins: vec!["https://app.example".to_owned()],
        ..TransportConfig::default()
    };
    let endpoint = Endpoint::new(Arc::new(EchoAcceptor), config);
    let headers = HeaderMap::new();
    let first = endpoint.admit(&request(&headers)).unwrap();
    assert_eq!(endpoint.admit(&request(&headers)).unwrap_err().status, 429);
    // A dropped admission (an upgrade that never completed) frees its slot.
    drop(first);
    let second = endpoint.admit(&request(&headers)).unwrap();
    drop(second);
    let mut foreign = HeaderMap::new();
    foreign.insert("origin", HeaderValue::from_static("https://elsewhere.example"));
    assert_eq!(endpoint.admit(&request(&foreign)).unwrap_err().status, 403);
    endpoint.shutdown().await;
    assert_eq!(endpoint.admit(&request(&headers)).unwrap_err().status, 503);
}

#[tokio::test]
async fn an_upgraded_stream_is_served_until_shutdown_closes_it_1001() {
    let endpoint = Endpoint::new(Arc::new(EchoAcceptor), TransportConfig::default());
    let headers = HeaderMap::new();
    let admitted = endpoint.admit(&request(&headers)).unwrap();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(admitted.serve(server_io));
    let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;

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
