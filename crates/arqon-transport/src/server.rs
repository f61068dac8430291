//! The accept loop and graceful shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{self, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::admission::{Admission, Slot, check_origin};
use crate::connection::run_connection;
use crate::wire::Wire;
use crate::{Accepted, Acceptor, Connection, Refusal, TransportConfig, TransportError, UpgradeRequest};

/// Serves WebSocket clients on `listener` until `shutdown` resolves, then
/// tells every connection to close (the `shutdown` event, close 1001) and
/// waits at most `config.shutdown_grace` for them.
pub async fn serve<A: Acceptor>(
    listener: TcpListener,
    acceptor: Arc<A>,
    config: TransportConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TransportError> {
    let config = Arc::new(config);
    let admission = Arc::new(Admission::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    crate::accept::accept_until(&listener, shutdown, &mut connections, "websocket", |stream, peer| {
        let acceptor = Arc::clone(&acceptor);
        let config = Arc::clone(&config);
        let stop = stop_rx.clone();
        let slot = admission.admit(peer.ip(), &config);
        // A task's storage is sized for the largest state of its future, for
        // the task's whole life. The upgrade (TLS, the HTTP handshake, the
        // callback) is several KiB that an idle connection must not keep, so
        // it runs boxed and is freed when done; the connection then runs
        // from its own box.
        async move {
            if let Some(running) = Box::pin(establish(stream, peer, slot, acceptor, config, stop)).await {
                running.await;
            }
        }
    })
    .await;
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(config.shutdown_grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(remaining = connections.len(), "shutdown grace elapsed; dropping connections");
        connections.abort_all();
    }
    Ok(())
}

/// tungstenite only performs the upgrade; the connection it would go on to
/// set up is dropped at once, so its read buffer (allocated eagerly) is
/// kept small.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(256)
}

#[allow(clippy::result_large_err)]
fn refusal_response(refusal: &Refusal) -> ErrorResponse {
    let mut response = http::Response::new(Some(crate::error_body(refusal.code, &refusal.message)));
    *response.status_mut() = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// A connection's reader loop, once upgraded: boxed, so that the task
/// running it is not sized for the upgrade's states as well.
type Running = Pin<Box<dyn Future<Output = ()> + Send>>;

/// TLS (if configured) and the WebSocket upgrade, within one deadline.
async fn establish<A: Acceptor>(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    slot: Result<Slot, Refusal>,
    acceptor: Arc<A>,
    config: Arc<TransportConfig>,
    stop: watch::Receiver<bool>,
) -> Option<Running> {
    // Small frames must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    // One deadline covers TLS and the WebSocket upgrade: a client that opens
    // a socket and goes quiet (slowloris) loses its slot when it expires.
    let deadline = tokio::time::Instant::now() + config.upgrade_timeout;
    match &config.tls {
        None => upgrade(stream, peer, slot, acceptor, Arc::clone(&config), stop, deadline).await,
        Some(tls) => {
            let tls_acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.0));
            match tokio::time::timeout_at(deadline, tls_acceptor.accept(stream)).await {
                Ok(Ok(stream)) => upgrade(stream, peer, slot, acceptor, Arc::clone(&config), stop, deadline).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake deadline elapsed");
                    None
                }
            }
        }
    }
}

async fn upgrade<S, A>(
    mut stream: S,
    peer: std::net::SocketAddr,
    slot: Result<Slot, Refusal>,
    acceptor: Arc<A>,
    config: Arc<TransportConfig>,
    stop: watch::Receiver<bool>,
    deadline: tokio::time::Instant,
) -> Option<Running>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A: Acceptor,
{
    // The server API shares the listener: its requests are told apart by
    // their request line, read before the WebSocket handshake starts.
    let mut ahead = Vec::new();
    if acceptor.serves_api() && slot.is_ok() {
        ahead = read_within(deadline, peer, crate::api::read_request_line(&mut stream)).await?;
        if crate::api::is_api_request(&ahead) {
            return Some(Box::pin(async move {
                // The slot is held for the connection's whole life.
                let _slot = slot;
                crate::api::serve_api(stream, ahead, peer, acceptor, config, stop).await;
            }));
        }
    }
    // A connect hook (the acceptor vets): asked once the request head is in
    // and the listener's own checks pass, before the handshake.
    let mut vetted = None;
    if acceptor.vets() && slot.is_ok() {
        read_within(deadline, peer, crate::vet::read_head(&mut stream, &mut ahead)).await?;
        if let Some(request) = crate::vet::parse_head(&ahead, peer)
            && (request.path == "/ws" || request.path == "/")
            && check_origin(
                request.headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok()),
                &config.allowed_origins,
            )
            .is_ok()
        {
            match tokio::time::timeout_at(deadline, acceptor.vet(request)).await {
                Ok(Ok(answer)) => vetted = Some(answer),
                Ok(Err(refusal)) => {
                    crate::vet::refuse(&mut stream, &refusal, deadline).await;
                    return None;
                }
                Err(_) => {
                    let refusal = Refusal {
                        status: 503,
                        code: "INTERNAL",
                        message: "the connection could not be vetted within the upgrade deadline".to_owned(),
                    };
                    crate::vet::refuse(&mut stream, &refusal, deadline).await;
                    return None;
                }
            }
        }
    }
    let mut admitted: Option<Accepted<A::Conn>> = None;
    let mut deflate = None;
    let refused_by_limit = slot.as_ref().err().cloned();
    // The callback's signature is tungstenite's; its error type is large by design.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let path = request.uri().path();
        if path != "/ws" && path != "/" {
            return Err(refusal_response(&Refusal {
                status: 404,
                code: "NOT_FOUND",
                message: format!("no WebSocket endpoint at {path}; use /ws"),
            }));
        }
        let upgrade = UpgradeRequest { path, query: request.uri().query(), headers: request.headers(), peer };
        match admit_vetted(refused_by_limit, &upgrade, &*acceptor, &config, vetted.take()) {
            Ok(accepted) => {
                admitted = Some(accepted);
                if let Some((agreed, extensions)) = negotiate_compression(request.headers(), &config)
                    && let Ok(value) = http::HeaderValue::from_str(&extensions)
                {
                    response.headers_mut().insert(http::header::SEC_WEBSOCKET_EXTENSIONS, value);
                    deflate = Some(agreed);
                }
                Ok(response)
            }
            Err(refusal) => Err(refusal_response(&refusal)),
        }
    };
    let mut wire = Wire::with_ahead(stream, ahead);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(&mut wire, callback, Some(ws_config()));
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "upgrade failed");
            // A plain HTTP request (a browser, curl) gets 426 rather than
            // an empty reply.
            if let Some(response) = wire.upgrade_required(config.tls.is_some()) {
                let _ = tokio::time::timeout_at(deadline, async {
                    wire.write_all(&response).await?;
                    wire.shutdown().await
                })
                .await;
            }
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "upgrade deadline elapsed");
            return None;
        }
    }
    // The callback ran (the handshake succeeded), so `admitted` and the
    // slot are set.
    let accepted = admitted?;
    let slot = slot.ok()?;
    // From here on the connection reads and writes frames itself.
    let (stream, early) = wire.into_parts();
    Some(Box::pin(run_upgraded(stream, early, accepted, slot, config, deflate, stop)))
}

/// permessage-deflate for a request, as `config.compression` allows: what
/// was agreed and the response's `Sec-WebSocket-Extensions` value.
pub(crate) fn negotiate_compression(
    headers: &http::HeaderMap,
    config: &TransportConfig,
) -> Option<(crate::deflate::Deflate, String)> {
    let offers = headers.get_all(http::header::SEC_WEBSOCKET_EXTENSIONS).iter().filter_map(|v| v.to_str().ok());
    crate::deflate::negotiate(offers, &config.compression)
}

/// Reads part of the upgrade request by `deadline`; `None` (logged) if the
/// client failed or was too slow.
async fn read_within<T>(
    deadline: tokio::time::Instant,
    peer: std::net::SocketAddr,
    read: impl Future<Output = std::io::Result<T>>,
) -> Option<T> {
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "reading the request failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "upgrade deadline elapsed");
            None
        }
    }
}

/// The checks every upgrade passes, whichever HTTP server performs it (this
/// listener, or an embedder's through [`Endpoint`](crate::Endpoint)), in
/// order: the connection limits (`refused_by_limit`, from taking the slot),
/// the browser origin, then the acceptor, handed what its vetting found.
pub(crate) fn admit_vetted<A: Acceptor>(
    refused_by_limit: Option<Refusal>,
    request: &UpgradeRequest<'_>,
    acceptor: &A,
    config: &TransportConfig,
    vetted: Option<crate::Vetted>,
) -> Result<Accepted<A::Conn>, Refusal> {
    if let Some(refusal) = refused_by_limit {
        return Err(refusal);
    }
    let origin = request.headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok());
    check_origin(origin, &config.allowed_origins)?;
    acceptor.accept_vetted(request, vetted)
}

/// Serves an upgraded connection to its end: the one per-connection task of
/// both this listener and [`Endpoint`](crate::Endpoint) (heartbeat, frame
/// limits, close codes, the writer's slow-consumer timeout, shutdown).
/// `early` holds what the client sent after its upgrade request; the slot
/// is held for the connection's whole life; `deflate` is what the upgrade
/// agreed for compression.
pub(crate) async fn run_upgraded<S, C>(
    stream: S,
    early: Vec<u8>,
    accepted: Accepted<C>,
    slot: Slot,
    config: Arc<TransportConfig>,
    deflate: Option<crate::deflate::Deflate>,
    stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    C: Connection,
{
    let _slot = slot;
    let (read, write) = tokio::io::split(stream);
    run_connection(read, write, early, accepted, &config, deflate, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_body_is_json() {
        let response =
            refusal_response(&Refusal { status: 401, code: "UNAUTHORIZED", message: "bad \"token\"\n".to_owned() });
        assert_eq!(response.status(), 401);
        let body = response.body().clone().unwrap();
        assert_eq!(body, r#"{"error":{"code":"UNAUTHORIZED","message":"bad \"token\"\u000a"}}"#);
    }
}
