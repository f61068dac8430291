//! Opening connections: source addresses, the WebSocket upgrade, the
//! `welcome` event and joining a channel.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::frame::{Incoming, classify};
use crate::lean::{Event, HeaderOnly, LeanWs};

/// One client connection.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Why a connection could not be set up; `code` is what the report counts.
#[derive(Debug, Clone)]
pub(crate) struct SetupError {
    /// A short upper-case code, e.g. `CONNECT_FAILED`, `HTTP_429`, `INVALID_NAME`.
    pub(crate) code: String,
    /// Details for stderr.
    pub(crate) detail: String,
}

impl SetupError {
    pub(crate) fn new(code: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        SetupError { code: code.into(), detail: detail.to_string() }
    }
}

/// The bus endpoint and how connections are spread over source addresses.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    url: String,
    addr: SocketAddr,
    per_ip: usize,
    compress: bool,
}

/// Read buffer for connections that carry traffic. tungstenite zero-fills
/// this much before every read (even one that finds nothing), so its default
/// of 128 KiB costs more in `memset` than it saves in syscalls; 16 KiB holds
/// about forty 400-byte frames per read.
pub(crate) const BUSY_READ_BUFFER: usize = 16 * 1024;
/// Read buffer for idle connections: tens of thousands of them must not cost
/// the generator gigabytes.
pub(crate) const IDLE_READ_BUFFER: usize = 4 * 1024;

impl Endpoint {
    /// `per_ip` connections per source address 127.0.0.1, .2, …; 0 leaves
    /// the source to the OS. Spreading keeps each address under the bus's
    /// per-IP connection limit and within one address's ephemeral ports.
    pub(crate) fn new(url: &str, addr: SocketAddr, per_ip: usize) -> Self {
        Endpoint { url: url.to_owned(), addr, per_ip, compress: false }
    }

    /// Connections offer permessage-deflate: lean ones inflate what comes
    /// compressed; tungstenite cannot, so it is only for idle connections
    /// (`conns`: nothing they receive is large enough to be compressed).
    pub(crate) fn compressing(mut self, compress: bool) -> Self {
        self.compress = compress;
        self
    }

    /// The bus's address (the server API shares the WebSocket listener).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The source address of the `index`-th connection of a run.
    fn source(&self, index: usize) -> Option<IpAddr> {
        if self.per_ip == 0 || !self.addr.ip().is_loopback() {
            return None;
        }
        let host = u8::try_from(1 + index / self.per_ip).ok()?;
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
    }

    /// Opens the TCP connection number `index` of the run.
    async fn tcp(&self, index: usize) -> Result<TcpStream, SetupError> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| SetupError::new("SOCKET_FAILED", e))?;
        if let Some(source) = self.source(index) {
            socket.bind(SocketAddr::new(source, 0)).map_err(|e| SetupError::new("BIND_FAILED", e))?;
        }
        let stream = socket.connect(self.addr).await.map_err(|e| SetupError::new("CONNECT_FAILED", e))?;
        stream.set_nodelay(true).map_err(|e| SetupError::new("SOCKET_FAILED", e))?;
        Ok(stream)
    }

    /// Completes the WebSocket upgrade over `stream`, offering
    /// permessage-deflate if `offer_deflate`; also says whether the server
    /// accepted it.
    async fn upgrade<S>(
        &self,
        stream: S,
        read_buffer: usize,
        offer_deflate: bool,
    ) -> Result<(WebSocketStream<S>, bool), SetupError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = WebSocketConfig::default().read_buffer_size(read_buffer);
        let mut request = self.url.as_str().into_client_request().map_err(|e| SetupError::new("BAD_URL", e))?;
        if offer_deflate {
            request.headers_mut().insert(
                "Sec-WebSocket-Extensions",
                tokio_tungstenite::tungstenite::http::HeaderValue::from_static(
                    "permessage-deflate; client_max_window_bits",
                ),
            );
        }
        match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok((ws, response)) => {
                let accepted = response
                    .headers()
                    .get("Sec-WebSocket-Extensions")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("permessage-deflate"));
                Ok((ws, accepted))
            }
            Err(WsError::Http(response)) => {
                Err(SetupError::new(format!("HTTP_{}", response.status().as_u16()), "upgrade refused"))
            }
            Err(e) => Err(SetupError::new("HANDSHAKE_FAILED", e)),
        }
    }

    /// Opens connection number `index` and completes the upgrade.
    pub(crate) async fn connect(&self, index: usize, read_buffer: usize) -> Result<Ws, SetupError> {
        let stream = self.tcp(index).await?;
        match self.upgrade(stream, read_buffer, self.compress).await? {
            (_, false) if self.compress => {
                Err(SetupError::new("NOT_COMPRESSED", "the server declined permessage-deflate"))
            }
            (ws, _) => Ok(ws),
        }
    }

    /// Opens connection number `index`, upgrades it with tungstenite, and
    /// hands the socket to the lean client (see [`crate::lean`]).
    pub(crate) async fn connect_lean(&self, index: usize) -> Result<LeanWs, SetupError> {
        let stream = self.tcp(index).await?;
        let (ws, deflate) = self.upgrade(HeaderOnly::new(stream), IDLE_READ_BUFFER, self.compress).await?;
        let seed = u32::try_from(index).unwrap_or(u32::MAX).wrapping_mul(0x9E37_79B9);
        Ok(LeanWs::new(ws.into_inner().into_inner(), seed, deflate))
    }
}

/// Reads the next text frame, skipping control frames; a close or error is
/// a [`SetupError`].
async fn next_text(ws: &mut Ws) -> Result<String, SetupError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                return Err(SetupError::new(format!("CLOSE_{code}"), "closed during set-up"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(SetupError::new("READ_FAILED", e)),
            None => return Err(SetupError::new("CLOSED", "connection closed during set-up")),
        }
    }
}

/// Waits for the `welcome` event, which the bus sends first.
pub(crate) async fn welcome(ws: &mut Ws) -> Result<(), SetupError> {
    let text = next_text(ws).await?;
    match classify(&text) {
        Incoming::Event { name } if name == "welcome" => Ok(()),
        Incoming::Error { code } => Err(SetupError::new(code, "error instead of welcome")),
        _ => Err(SetupError::new("NO_WELCOME", format!("first frame was not welcome: {text}"))),
    }
}

fn join_command(room: &str, channel: &str) -> String {
    format!(r#"{{"type":"command","command":"join_channel","args":{{"room":"{room}","channel":"{channel}"}}}}"#)
}

/// Joins `room`/`channel` and waits for the response. Events that arrive in
/// between (other members joining) are skipped.
pub(crate) async fn join(ws: &mut Ws, room: &str, channel: &str) -> Result<(), SetupError> {
    ws.send(Message::text(join_command(room, channel))).await.map_err(|e| SetupError::new("WRITE_FAILED", e))?;
    loop {
        let text = next_text(ws).await?;
        match classify(&text) {
            Incoming::Response => return Ok(()),
            Incoming::Error { code } => return Err(SetupError::new(code, "join_channel refused")),
            _ => {}
        }
    }
}

/// Connects, waits for `welcome` and, with a channel, joins it; all within
/// `limit`.
pub(crate) async fn open(
    endpoint: &Endpoint,
    index: usize,
    read_buffer: usize,
    channel: Option<(&str, &str)>,
    limit: Duration,
) -> Result<Ws, SetupError> {
    let setup = async {
        let mut ws = endpoint.connect(index, read_buffer).await?;
        welcome(&mut ws).await?;
        if let Some((room, channel)) = channel {
            join(&mut ws, room, channel).await?;
        }
        Ok(ws)
    };
    tokio::time::timeout(limit, setup).await.unwrap_or_else(|_| Err(SetupError::new("SETUP_TIMEOUT", "set-up")))
}

/// [`next_text`] for a lean connection.
async fn next_text_lean(ws: &mut LeanWs) -> Result<String, SetupError> {
    loop {
        match ws.next().await {
            Ok(Event::Text(range)) => return Ok(String::from_utf8_lossy(ws.reader.bytes(range)).into_owned()),
            Ok(Event::Close(code)) => return Err(SetupError::new(format!("CLOSE_{code}"), "closed during set-up")),
            Ok(Event::Eof) => return Err(SetupError::new("CLOSED", "connection closed during set-up")),
            Ok(_) => {}
            Err(e) => return Err(SetupError::new("READ_FAILED", e)),
        }
    }
}

/// [`open`] for the lean client: connects, waits for `welcome`, joins if
/// asked, all within `limit`.
pub(crate) async fn open_lean(
    endpoint: &Endpoint,
    index: usize,
    channel: Option<(&str, &str)>,
    limit: Duration,
) -> Result<LeanWs, SetupError> {
    let setup = async {
        let mut ws = endpoint.connect_lean(index).await?;
        let text = next_text_lean(&mut ws).await?;
        match classify(&text) {
            Incoming::Event { name } if name == "welcome" => {}
            Incoming::Error { code } => return Err(SetupError::new(code, "error instead of welcome")),
            _ => return Err(SetupError::new("NO_WELCOME", format!("first frame was not welcome: {text}"))),
        }
        if let Some((room, channel)) = channel {
            ws.send_text(&join_command(room, channel)).await.map_err(|e| SetupError::new("WRITE_FAILED", e))?;
            loop {
                match classify(&next_text_lean(&mut ws).await?) {
                    Incoming::Response => break,
                    Incoming::Error { code } => return Err(SetupError::new(code, "join_channel refused")),
                    _ => {}
                }
            }
        }
        Ok(ws)
    };
    tokio::time::timeout(limit, setup).await.unwrap_or_else(|_| Err(SetupError::new("SETUP_TIMEOUT", "set-up")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_loopback_addresses() {
        let endpoint = Endpoint::new("ws://127.0.0.1:1/ws", SocketAddr::from(([127, 0, 0, 1], 1)), 1000);
        assert_eq!(endpoint.source(0), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        assert_eq!(endpoint.source(999), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        assert_eq!(endpoint.source(1000), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(endpoint.source(1_000_000), None);
        let os_picks = Endpoint::new("ws://127.0.0.1:1/ws", SocketAddr::from(([127, 0, 0, 1], 1)), 0);
        assert_eq!(os_picks.source(5), None);
    }
}
