//! Serving WebSocket connections that an HTTP server of the embedder's own
//! (hyper, axum) has upgraded: the bus mounted on one path of its listener.
//!
//! The embedder's server routes the request and performs the HTTP side of
//! the upgrade; [`Endpoint::admit`] applies the listener's checks
//! (connection limits, origin, the [`Acceptor`]) and [`Admitted::serve`]
//! runs the listener's own per-connection task on the upgraded stream.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::{HeaderMap, header};

use crate::admission::check_origin;
use crate::admission::{Admission, Slot};
use crate::deflate::Deflate;
use crate::server::{admit_vetted, negotiate_compression, run_upgraded};
use crate::{Acceptor, Refusal, TransportConfig, UpgradeRequest, VetFuture, VetRequest, Vetted};

/// Any upgraded stream, boxed: `hyper::upgrade::Upgraded` in hyper-util's
/// `TokioIo`, a `TcpStream`, a TLS stream.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Io for S {}

/// A connection's task, waiting for its stream and for what was agreed on
/// compression.
type Serve = Box<dyn FnOnce(Box<dyn Io>, Option<Deflate>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// An acceptor with its connection type erased, so that [`Endpoint`] and
/// [`Admitted`] need no type parameter.
trait Admit: Send + Sync {
    fn vets(&self) -> bool;

    fn vet(&self, request: VetRequest) -> VetFuture;

    fn admit(
        &self,
        request: &UpgradeRequest<'_>,
        vetted: Option<Vetted>,
        slot: Slot,
        config: &Arc<TransportConfig>,
        stop: watch::Receiver<bool>,
    ) -> Result<Serve, Refusal>;
}

impl<A: Acceptor> Admit for Arc<A> {
    fn vets(&self) -> bool {
        (**self).vets()
    }

    fn vet(&self, request: VetRequest) -> VetFuture {
        (**self).vet(request)
    }

    fn admit(
        &self,
        request: &UpgradeRequest<'_>,
        vetted: Option<Vetted>,
        slot: Slot,
        config: &Arc<TransportConfig>,
        stop: watch::Receiver<bool>,
    ) -> Result<Serve, Refusal> {
        let accepted = admit_vetted(None, request, &**self, config, vetted)?;
        let config = Arc::clone(config);
        // hyper keeps what the client sent after its request inside the
        // upgraded stream: nothing is read early here.
        Ok(Box::new(move |stream, deflate| {
            Box::pin(run_upgraded(stream, Vec::new(), accepted, slot, config, deflate, stop))
        }))
    }
}

/// The bus's WebSocket endpoint, for mounting on a path of an HTTP server of
/// one's own. Cheap to clone: every clone is the same endpoint.
///
/// For each request on the mounted path: check that it is a WebSocket
/// upgrade ([`websocket_accept`]), [`admit`](Endpoint::admit) it (connection
/// limits, `allowed_origins`, the acceptor; a [`Refusal`] is the HTTP
/// answer), answer `101 Switching Protocols`, then
/// [`serve`](Admitted::serve) the upgraded stream. The connection then gets
/// what the listener of [`serve`](crate::serve) gives its own: frame size
/// limit (close 1009), protocol errors (1002, 1007), heartbeat and idle
/// close, the write timeout for slow consumers, and on
/// [`shutdown`](Endpoint::shutdown) the `shutdown` event and close 1001.
///
/// The listener's other duties are the embedder's: TLS, the upgrade deadline
/// (`upgrade_timeout`) and the path.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    acceptor: Box<dyn Admit>,
    config: Arc<TransportConfig>,
    admission: Arc<Admission>,
    stop: watch::Sender<bool>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("connections", &self.inner.admission.live())
            .field("stopped", &*self.inner.stop.borrow())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint that admits clients with `acceptor`, within the limits
    /// and timings of `config` (all but `tls` and `upgrade_timeout`, which
    /// are the embedder's server's: see [`Endpoint`]).
    pub fn new<A: Acceptor>(acceptor: Arc<A>, config: TransportConfig) -> Endpoint {
        let (stop, _) = watch::channel(false);
        Endpoint {
            inner: Arc::new(Inner {
                acceptor: Box::new(acceptor),
                config: Arc::new(config),
                admission: Arc::new(Admission::default()),
                stop,
            }),
        }
    }

    /// Decides whether the client behind `request` may connect: the
    /// connection limits (503, 429), the acceptor's vetting if it has one
    /// (the bus's connect hook, which the application answers
    /// asynchronously), the browser origin (403), then the acceptor
    /// (authentication, say). Once shut down, every request is refused
    /// (503).
    ///
    /// An [`Admitted`] holds its connection slot until it is served to the
    /// end or dropped (an upgrade that never completes).
    pub async fn admit(&self, request: &UpgradeRequest<'_>) -> Result<Admitted, Refusal> {
        let inner = &self.inner;
        let stopped =
            || Refusal { status: 503, code: "UNAVAILABLE", message: "the server is shutting down".to_owned() };
        if *inner.stop.borrow() {
            return Err(stopped());
        }
        let slot = inner.admission.admit(request.peer.ip(), &inner.config)?;
        let vetted = if inner.acceptor.vets() {
            // The application is not asked about a foreign page's request.
            let origin = request.headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
            check_origin(origin, &inner.config.allowed_origins)?;
            let ask = VetRequest {
                path: request.path.to_owned(),
                query: request.query.map(str::to_owned),
                headers: request.headers.clone(),
                peer: request.peer,
            };
            let vetted = inner.acceptor.vet(ask).await?;
            // The endpoint may have shut down while the application answered.
            if *inner.stop.borrow() {
                return Err(stopped());
            }
            Some(vetted)
        } else {
            None
        };
        let serve = inner.acceptor.admit(request, vetted, slot, &inner.config, inner.stop.subscribe())?;
        let compression = negotiate_compression(request.headers, &inner.config);
        Ok(Admitted { serve, compression, deflate: None })
    }

    /// Tells every connection to close (the `shutdown` event, close 1001),
    /// refuses new ones, and waits until the connections have ended, at
    /// most `shutdown_grace`.
    pub async fn shutdown(&self) {
        // send_replace: `send` would keep the old value with no connection
        // subscribed, and later upgrades would still be admitted.
        self.inner.stop.send_replace(true);
        let admission = &self.inner.admission;
        let drained = tokio::time::timeout(self.inner.config.shutdown_grace, async {
            while admission.live() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(remaining = admission.live(), "shutdown grace elapsed with connections still open");
        }
    }
}

/// A client [`Endpoint::admit`] let in, waiting for its upgraded stream.
pub struct Admitted {
    serve: Serve,
    /// What the client's offer and the configuration allow.
    compression: Option<(Deflate, String)>,
    /// What the embedder accepted.
    deflate: Option<Deflate>,
}

impl fmt::Debug for Admitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted").finish_non_exhaustive()
    }
}

impl Admitted {
    /// Accepts permessage-deflate, if the client offered it and the
    /// configuration allows it: the value of the `Sec-WebSocket-Extensions`
    /// header that the `101` response must then carry. The connection is
    /// compressed only after this call, so an embedder that never makes it
    /// (and so never sends the header) gets an uncompressed connection.
    pub fn accept_compression(&mut self) -> Option<String> {
        let (deflate, header) = self.compression.take()?;
        self.deflate = Some(deflate);
        Some(header)
    }

    /// Serves the connection on `stream`, the upgraded connection (after
    /// the `101` response), until it ends: the client leaves, the bus
    /// closes it, or the endpoint shuts down. With hyper:
    /// `admitted.serve(TokioIo::new(hyper::upgrade::on(request).await?))`.
    pub async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        (self.serve)(Box::new(stream), self.deflate).await;
    }
}

/// The `Sec-WebSocket-Accept` value that answers a WebSocket upgrade
/// request with these headers, or why it is none (HTTP 426): an
/// `Upgrade: websocket` header, `Sec-WebSocket-Version: 13` and a
/// `Sec-WebSocket-Key`. The `101` response carries it with `Upgrade:
/// websocket` and `Connection: Upgrade`.
pub fn websocket_accept(headers: &HeaderMap) -> Result<String, Refusal> {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    let refuse = |code, message: &str| Refusal { status: 426, code, message: message.to_owned() };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(refuse("INVALID_ARGS", "this is an ArqonBus WebSocket endpoint: connect a WebSocket client"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err(refuse("UNSUPPORTED_VERSION", "only WebSocket version 13 is supported"));
    }
    let key =
        headers.get(header::SEC_WEBSOCKET_KEY).ok_or_else(|| refuse("INVALID_ARGS", "Sec-WebSocket-Key is missing"))?;
    Ok(derive_accept_key(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    #[test]
    fn the_accept_key_of_rfc_6455() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(websocket_accept(&headers).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(websocket_accept(&headers).unwrap_err().status, 426);
        headers.remove(header::UPGRADE);
        assert_eq!(websocket_accept(&headers).unwrap_err().status, 426);
    }
}
