//! The server API's HTTP side on the bus listener (PROTOCOL.md section 8.3):
//! a connection whose first request is for `/api/…` is served as HTTP/1.1
//! with keep-alive; the transport checks the method, reads the body within
//! `max_message_bytes` and finds the credential, and the
//! [`Acceptor`](crate::Acceptor) answers.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::{Acceptor, TransportConfig};

/// The path prefix of the server API.
pub const API_PREFIX: &str = "/api/";

/// One server API call, as the transport read it.
#[derive(Debug)]
pub struct ApiRequest {
    /// The command: the path after `/api/`.
    pub command: String,
    /// `Authorization: Bearer …` or `X-API-Key`, if given.
    pub key: Option<String>,
    /// The body (at most `max_message_bytes`).
    pub body: Bytes,
    /// The caller's address.
    pub peer: SocketAddr,
}

/// The answer to an [`ApiRequest`]: an HTTP status and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: String,
}

impl ApiResponse {
    /// An error in the wire's shape, `{"error":{"code","message"}}`.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        ApiResponse { status, body: crate::error_body(code, message) }
    }
}

/// What [`Acceptor::api`] returns.
pub type ApiFuture = Pin<Box<dyn Future<Output = ApiResponse> + Send>>;

/// Bytes read to find the request line before choosing API or WebSocket.
const REQUEST_LINE_MAX: usize = 8192;

/// Reads from `stream` until the request line is complete (or the client
/// stops, or [`REQUEST_LINE_MAX`] bytes); returns what was read.
pub(crate) async fn read_request_line<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut read = Vec::with_capacity(1024);
    while !read.contains(&b'\n') && read.len() < REQUEST_LINE_MAX {
        if stream.read_buf(&mut read).await? == 0 {
            break;
        }
    }
    Ok(read)
}

/// Whether the request whose first bytes are `head` is for the server API.
pub(crate) fn is_api_request(head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let _method = parts.next();
    parts.next().is_some_and(|path| path.starts_with(API_PREFIX.as_bytes()) || path == b"/api")
}

/// Serves HTTP/1.1 API requests on `stream` (whose first bytes, already
/// read, are `head`) until the client closes it or the server stops.
pub(crate) async fn serve_api<S, A>(
    stream: S,
    head: Vec<u8>,
    peer: SocketAddr,
    acceptor: Arc<A>,
    config: Arc<TransportConfig>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Acceptor,
{
    let limit = config.max_message_bytes;
    let origins: Arc<[String]> = config.allowed_origins.clone().into();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let acceptor = Arc::clone(&acceptor);
        let origin = crate::cors::allowed_origin(request.headers(), &origins);
        let preflight = crate::cors::is_preflight(request.method(), request.headers());
        async move {
            if preflight {
                return Ok::<_, Infallible>(crate::cors::preflight(origin));
            }
            let mut response = handle(request, peer, limit, acceptor).await;
            crate::cors::expose(&mut response, origin);
            Ok(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // A kept-alive connection that sends nothing is dropped like a
        // WebSocket client that never finishes its upgrade.
        .header_read_timeout(config.upgrade_timeout)
        .serve_connection(TokioIo::new(Rewind { head, at: 0, io: stream }), service);
    tokio::pin!(connection);
    let stopping = async move {
        // Dropped at once: the guard `wait_for` returns must not be held.
        let _ = stop.wait_for(|stopping| *stopping).await.map(|_| ());
    };
    tokio::select! {
        result = &mut connection => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "API connection ended");
            }
            return;
        }
        () = stopping => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(config.shutdown_grace, connection).await;
}

fn respond(response: ApiResponse) -> Response<Full<Bytes>> {
    let mut http = Response::new(Full::new(Bytes::from(response.body)));
    *http.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    http.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    http
}

async fn handle<A: Acceptor>(
    request: Request<Incoming>,
    peer: SocketAddr,
    limit: usize,
    acceptor: Arc<A>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let command = path.strip_prefix(API_PREFIX).unwrap_or_default().to_owned();
    if request.method() != Method::POST {
        let mut response = respond(ApiResponse::error(
            405,
            "METHOD_NOT_ALLOWED",
            &format!("{} is not allowed on {path}; use POST", request.method()),
        ));
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let key = credential(request.headers());
    let body = match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return respond(ApiResponse::error(
                413,
                "MESSAGE_TOO_LARGE",
                &format!("body exceeds max_message_bytes ({limit})"),
            ));
        }
        Err(e) => return respond(ApiResponse::error(400, "INVALID_ARGS", &format!("unreadable body: {e}"))),
    };
    respond(acceptor.api(ApiRequest { command, key, body, peer }).await)
}

/// `Authorization: Bearer <key>`, else `X-API-Key: <key>`.
fn credential(headers: &hyper::HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).map(|v| v.trim().to_owned())
}

/// A stream that first yields bytes already read from it.
struct Rewind<S> {
    head: Vec<u8>,
    at: usize,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = (this.head.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_requests_are_told_by_their_path() {
        assert!(is_api_request(b"POST /api/publish HTTP/1.1\r\n"));
        assert!(is_api_request(b"GET /api HTTP/1.1\r\n"));
        assert!(!is_api_request(b"GET /ws HTTP/1.1\r\n"));
        assert!(!is_api_request(b"GET /apiary HTTP/1.1\r\n"));
        assert!(!is_api_request(b"GET / HTTP/1.1\r\n"));
        assert!(!is_api_request(b""));
    }
}
