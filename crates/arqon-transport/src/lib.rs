//! The network edge of ArqonBus: WebSocket listening and one reader plus one
//! writer task per connection.
//!
//! This layer owns sockets and the WebSocket protocol: the upgrade (with a
//! deadline and path check), frame size limits (close 1009), protocol
//! violations (close 1002; invalid UTF-8, 1007), the closing handshake in both
//! directions, heartbeat pings and idle close, batching queued frames into few
//! writes (the connection reads and frames everything itself; tungstenite
//! only performs the upgrade), and graceful shutdown (the `shutdown` event,
//! then close 1001), and permessage-deflate (RFC 7692) for clients that
//! offer it, with no compression state kept between messages. It
//! does not know what a frame means: an [`Acceptor`] decides who may connect
//! and a [`Connection`] handles each text frame, so the same loop serves the
//! bus, a test echo or a compliance harness (`examples/echo.rs`, which
//! `scripts/autobahn.sh` runs the Autobahn|Testsuite against). The writer
//! drains an `arqon-outbound` backlog and closes a connection whose socket
//! accepts no byte for the write timeout (PROTOCOL.md section 8.1). It
//! depends only on `arqon-protocol` and `arqon-outbound`, never on routing.
//!
//! # Layout
//!
//! - [`serve`]: the accept loop; shutdown is an argument.
//! - [`Endpoint`], [`Admitted`], [`websocket_accept`]: the same connections
//!   on a path of an HTTP server of the embedder's own (hyper, axum), which
//!   performs the upgrade; the per-connection task is the listener's.
//! - [`Acceptor`], [`Connection`], [`Accepted`], [`UpgradeRequest`],
//!   [`Refusal`]: what the embedding layer implements and returns.
//! - [`serve_monitoring`], [`Monitor`]: the HTTP monitoring listener
//!   (health, readiness, status, metrics, telemetry WebSocket, and the
//!   dashboard page at `/`); [`Access`]: who may open the dashboard and
//!   the telemetry stream.
//! - [`TransportConfig`]: limits and timings; [`Compression`]: its
//!   permessage-deflate settings.
//! - [`TransportError`]: this layer's error.

mod accept;
mod admission;
mod api;
mod connection;
mod cors;
mod deflate;
mod embed;
mod frames;
mod guard;
mod http;
mod server;
mod tls;
mod vet;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use arqon_outbound::OutboundReceiver;

pub use api::{API_PREFIX, ApiFuture, ApiRequest, ApiResponse};
pub use deflate::Compression;
pub use embed::{Admitted, Endpoint, websocket_accept};
pub use frames::mask;
pub use guard::Access;
pub use http::{Monitor, TextStream, serve_monitoring};
pub use server::serve;
pub use tls::{TlsConfig, tls_config};
pub use tokio_tungstenite::tungstenite::http::HeaderMap;

/// Limits and timings of the WebSocket listener.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest frame (and message) a client may send. Default: 1 MiB.
    pub max_message_bytes: usize,
    /// Ping interval; a connection silent for two intervals is closed.
    /// Default: 20 s.
    pub heartbeat: Duration,
    /// Time a client has to complete the WebSocket upgrade. Default: 10 s.
    pub upgrade_timeout: Duration,
    /// How long shutdown waits for connections to drain and close, and how
    /// long a close frame may take to write. Default: 5 s.
    pub shutdown_grace: Duration,
    /// Frames per socket write at most: the writer frames a burst of queued
    /// frames into one buffer and writes it in pieces of this many (or 64 KiB).
    /// Default: 256 (against 64: fan-out 1 -> 100 went from 4.4 to 4.9 M
    /// deliveries/s, medians of 4 interleaved runs).
    pub write_batch: usize,
    /// Open connections at most (0: no limit); over it, upgrades get HTTP
    /// 503. Default: 100000.
    pub max_connections: usize,
    /// Open connections per client IP at most (0: no limit); over it,
    /// upgrades get HTTP 429. Default: 1000.
    pub max_connections_per_ip: usize,
    /// Browser origins allowed to connect (`*` for any). Empty: no check.
    /// Requests without an `Origin` header (non-browser clients) always pass.
    /// Default: empty.
    pub allowed_origins: Vec<String>,
    /// TLS: when set, the listener speaks `wss://`. Default: none.
    pub tls: Option<TlsConfig>,
    /// A connection whose backlog is not empty and whose socket accepts no
    /// byte for this long is closed as a slow consumer (PROTOCOL.md section
    /// 8.1); zero: never. Default: 10 s.
    pub write_timeout: Duration,
    /// permessage-deflate (RFC 7692) for clients that offer it. Default:
    /// on, for frames of 512 bytes or more.
    pub compression: Compression,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_message_bytes: 1_048_576,
            heartbeat: Duration::from_secs(20),
            upgrade_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            write_batch: 256,
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            allowed_origins: Vec::new(),
            tls: None,
            write_timeout: Duration::from_secs(10),
            compression: Compression::default(),
        }
    }
}

/// What the client asked for when upgrading.
#[derive(Debug)]
pub struct UpgradeRequest<'a> {
    /// Request path, e.g. `/ws`.
    pub path: &'a str,
    /// Raw query string, if any (e.g. `token=…`).
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The peer's address.
    pub peer: SocketAddr,
}

/// An upgrade request as [`Acceptor::vet`] gets it: owned, so it can be
/// carried across an await.
#[derive(Debug, Clone)]
pub struct VetRequest {
    /// Request path, e.g. `/ws`.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Request headers.
    pub headers: HeaderMap,
    /// The peer's address.
    pub peer: SocketAddr,
}

/// What [`Acceptor::vet`] found out, handed to [`Acceptor::accept_vetted`].
pub type Vetted = Box<dyn std::any::Any + Send>;

/// The future of [`Acceptor::vet`].
pub type VetFuture = std::pin::Pin<Box<dyn Future<Output = Result<Vetted, Refusal>> + Send>>;

/// Why an upgrade is refused: an HTTP status and a JSON error body
/// `{"error":{"code":…,"message":…}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code.
    pub status: u16,
    /// Wire error code, e.g. `UNAUTHORIZED`.
    pub code: &'static str,
    /// Explanation for the client.
    pub message: String,
}

/// A connection the acceptor let in: its handler and the backlog the writer
/// task drains.
#[derive(Debug)]
pub struct Accepted<C> {
    /// Handles the client's frames.
    pub conn: C,
    /// Frames to write to the client, in order, then the reason to close
    /// (a backlog bounded in bytes, `arqon_outbound::queue`).
    pub frames: OutboundReceiver,
}

/// Decides, per upgrade request, whether a client may connect.
pub trait Acceptor: Send + Sync + 'static {
    /// The per-connection handler.
    type Conn: Connection;

    /// Admits or refuses a client. Runs during the handshake; must not block.
    fn accept(&self, request: &UpgradeRequest<'_>) -> Result<Accepted<Self::Conn>, Refusal>;

    /// Whether [`Acceptor::vet`] must be asked before each upgrade (a
    /// connect hook to the application). Default: no.
    fn vets(&self) -> bool {
        false
    }

    /// Asks, before the WebSocket handshake and without blocking the
    /// listener, whatever the acceptor must ask elsewhere about `request`
    /// (say, the application's connect hook over HTTP). A refusal is sent
    /// as the HTTP answer; otherwise the answer reaches
    /// [`Acceptor::accept_vetted`]. Called only when [`Acceptor::vets`]
    /// says so, once the request passed the listener's own checks (path,
    /// connection limits, origin), within the upgrade deadline.
    fn vet(&self, request: VetRequest) -> VetFuture {
        let _ = request;
        Box::pin(std::future::ready(Ok(Box::new(()) as Vetted)))
    }

    /// [`Acceptor::accept`] with what [`Acceptor::vet`] answered (`None`
    /// when it was not asked). Default: `accept`.
    fn accept_vetted(
        &self,
        request: &UpgradeRequest<'_>,
        vetted: Option<Vetted>,
    ) -> Result<Accepted<Self::Conn>, Refusal> {
        let _ = vetted;
        self.accept(request)
    }

    /// Whether `/api/…` requests are served ([`Acceptor::api`]). Default:
    /// no; such a request is then refused like any unknown path.
    fn serves_api(&self) -> bool {
        false
    }

    /// Answers one server API call (PROTOCOL.md section 8.3). Called only
    /// when [`Acceptor::serves_api`] says so.
    fn api(&self, request: ApiRequest) -> ApiFuture {
        let _ = request;
        Box::pin(std::future::ready(ApiResponse::error(404, "NOT_FOUND", "this server has no API")))
    }
}

/// Handles one client's frames. Dropping it means the client is gone.
pub trait Connection: Send + 'static {
    /// Bytes arrived: called once per read from the socket, before the
    /// frames that read completed are handed over, so that a handler which
    /// timestamps frames can read the clock once per read rather than once
    /// per frame. Default: nothing.
    fn on_read(&mut self) {}

    /// A text frame arrived.
    fn on_text(&mut self, text: &str) -> impl Future<Output = ()> + Send;

    /// A text frame arrived: the transport calls this, not
    /// [`Connection::on_text`] directly. The transport boxes each frame's
    /// future (so that an idle connection does not keep one), so a handler
    /// that often finishes without waiting overrides this: it handles what
    /// needs no waiting at once and returns the rest, if any, to await.
    /// Default: all of [`Connection::on_text`].
    fn on_text_now(&mut self, text: &str) -> Option<impl Future<Output = ()> + Send> {
        Some(self.on_text(text))
    }

    /// A binary frame arrived.
    fn on_binary(&mut self, data: &[u8]);

    /// A ping arrived; returns whether to answer it with a pong. A handler
    /// that rate-limits its client counts pings here too (an over-rate ping
    /// goes unanswered). Default: always answer.
    fn on_ping(&mut self, _payload: &[u8]) -> bool {
        true
    }

    /// A frame over `max_message_bytes` arrived; the transport closes with
    /// 1009 after writing whatever this queues.
    fn on_oversize(&mut self);
}

/// The JSON body of every HTTP refusal and error this layer sends:
/// `{"error":{"code":…,"message":…}}`, the shape of the wire's error object.
pub(crate) fn error_body(code: &str, message: &str) -> String {
    fn json_string(text: &str, out: &mut String) {
        out.push('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    let mut out = String::with_capacity(code.len() + message.len() + 32);
    out.push_str("{\"error\":{\"code\":");
    json_string(code, &mut out);
    out.push_str(",\"message\":");
    json_string(message, &mut out);
    out.push_str("}}");
    out
}

/// Everything that can go wrong in the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Socket-level failure (e.g. the listener could not accept).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_json() {
        let body = error_body("NOT_FOUND", "no \"x\"");
        assert_eq!(body, r#"{"error":{"code":"NOT_FOUND","message":"no \"x\""}}"#);
    }
}
