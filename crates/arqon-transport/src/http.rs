//! The monitoring HTTP listener: health, readiness, status, metrics, the
//! telemetry WebSocket, and the dashboard page that shows them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::TransportError;
use crate::guard::{Access, Denied};

/// The dashboard: one static page (HTML, CSS and JavaScript, no
/// dependency), built into the binary. It reads `/status`, `/metrics` and
/// `/telemetry` from the listener that serves it.
const DASHBOARD: &str = include_str!("dashboard.html");

/// What `/` answers without the credential.
const LOGIN: &str = include_str!("dashboard_login.html");

static OPEN: Access = Access::Open;

/// A stream of text frames for a telemetry observer.
pub type TextStream = Pin<Box<dyn Stream<Item = String> + Send>>;

/// What the monitoring endpoints report. Implemented by the server.
pub trait Monitor: Send + Sync + 'static {
    /// Whether the bus accepts clients (`/ready` is 200 if so, else 503).
    fn ready(&self) -> bool;
    /// JSON body of `/ready`.
    fn readiness(&self) -> String;
    /// JSON body of `/status`.
    fn status(&self) -> String;
    /// Prometheus text exposition for `/metrics`.
    fn metrics(&self) -> String;
    /// A telemetry feed for `/telemetry?{query}`, or a reason to refuse it.
    fn telemetry(&self, query: Option<&str>) -> Result<TextStream, String>;
    /// Who may open the dashboard (`/`) and `/telemetry`. Default: anyone.
    fn access(&self) -> &Access {
        &OPEN
    }
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    respond(status, "application/json", body)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, crate::error_body(code, message))
}

const PATHS: [&str; 6] = ["/", "/health", "/ready", "/status", "/metrics", "/telemetry"];

/// Headers of every dashboard answer: never cached, never framed, and the
/// page's URL (which may hold `?token=`) never sent on as a referrer.
fn page(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = respond(status, "text/html; charset=utf-8", body);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn dashboard<M: Monitor>(monitor: &Arc<M>, request: &Request<Incoming>) -> Response<Body> {
    match monitor.access().check(request.headers(), request.uri().query()) {
        Ok(()) => page(StatusCode::OK, DASHBOARD),
        Err(Denied::Unauthorized) => page(StatusCode::UNAUTHORIZED, LOGIN),
        Err(Denied::Closed(reason)) => {
            let mut response = respond(StatusCode::FORBIDDEN, "text/plain; charset=utf-8", reason);
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    }
}

fn route<M: Monitor>(monitor: &Arc<M>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if !PATHS.contains(&path.as_str()) {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("no endpoint at {path}"));
    }
    if request.method() != Method::GET {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            &format!("{} is not allowed on {path}; use GET", request.method()),
        );
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match path.as_str() {
        "/" => dashboard(monitor, &request),
        "/health" => json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()),
        "/ready" => {
            let status = if monitor.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json(status, monitor.readiness())
        }
        "/status" => json(StatusCode::OK, monitor.status()),
        "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4", monitor.metrics()),
        _ => telemetry(monitor, request),
    }
}

/// Upgrades `/telemetry` to a WebSocket that streams the monitor's feed.
fn telemetry<M: Monitor>(monitor: &Arc<M>, mut request: Request<Incoming>) -> Response<Body> {
    let is_upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).filter(|_| is_upgrade) else {
        return error(StatusCode::BAD_REQUEST, "INVALID_ENVELOPE", "/telemetry is a WebSocket endpoint");
    };
    match monitor.access().check(request.headers(), request.uri().query()) {
        Ok(()) => {}
        Err(Denied::Unauthorized) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "/telemetry needs monitoring.auth_token: Authorization: Bearer TOKEN or ?token=TOKEN",
            );
        }
        Err(Denied::Closed(reason)) => return error(StatusCode::FORBIDDEN, "FORBIDDEN", &reason),
    }
    let feed = match monitor.telemetry(request.uri().query()) {
        Ok(feed) => feed,
        Err(reason) => return error(StatusCode::BAD_REQUEST, "INVALID_ARGS", &reason),
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
                stream_feed(ws, feed).await;
            }
            Err(e) => tracing::debug!(error = %e, "telemetry upgrade failed"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

async fn stream_feed<S>(ws: WebSocketStream<S>, mut feed: TextStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut incoming) = ws.split();
    loop {
        tokio::select! {
            event = feed.next() => match event {
                Some(text) => if sink.send(Message::text(text)).await.is_err() { return },
                None => { let _ = sink.close().await; return }
            },
            // The observer only ever closes; anything else it sends is ignored.
            frame = incoming.next() => match frame {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Serves the monitoring endpoints on `listener` until `shutdown` resolves.
pub async fn serve_monitoring<M: Monitor>(
    listener: TcpListener,
    monitor: Arc<M>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TransportError> {
    let mut connections = JoinSet::new();
    crate::accept::accept_until(&listener, shutdown, &mut connections, "monitoring", |stream, _| {
        let monitor = Arc::clone(&monitor);
        async move {
            let service = hyper::service::service_fn(move |request| {
                let response = route(&monitor, request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "monitoring connection failed");
            }
        }
    })
    .await;
    connections.abort_all();
    Ok(())
}
