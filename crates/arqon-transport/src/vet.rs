//! Reading an upgrade request's head before the WebSocket handshake, so an
//! acceptor can vet it asynchronously (a connect hook), and answering a
//! refusal as plain HTTP.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName, HeaderValue};

use crate::{Refusal, VetRequest};

/// Longest request head read for vetting.
const HEAD_MAX: usize = 16 * 1024;

/// Reads into `ahead` until it holds a complete request head (or the client
/// stops, or [`HEAD_MAX`]).
pub(crate) async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, ahead: &mut Vec<u8>) -> io::Result<()> {
    while !ahead.windows(4).any(|w| w == b"\r\n\r\n") && ahead.len() < HEAD_MAX {
        if stream.read_buf(ahead).await? == 0 {
            break;
        }
    }
    Ok(())
}

/// The request in `head`, if it is a complete, well-formed one.
pub(crate) fn parse_head(head: &[u8], peer: SocketAddr) -> Option<VetRequest> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(&head[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
        let value = HeaderValue::from_str(value.trim()).ok()?;
        headers.append(name, value);
    }
    Some(VetRequest { path, query, headers, peer })
}

/// Sends `refusal` as an HTTP response and closes, within `deadline`.
pub(crate) async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, refusal: &Refusal, deadline: tokio::time::Instant) {
    let body = crate::error_body(refusal.code, &refusal.message);
    let reason = tokio_tungstenite::tungstenite::http::StatusCode::from_u16(refusal.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Refused");
    let response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        refusal.status,
        body.len()
    );
    let _ = tokio::time::timeout_at(deadline, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_parses_to_path_query_and_headers() {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let head = b"GET /ws?token=a%20b HTTP/1.1\r\nHost: x\r\nCookie: s=1\r\nCookie: t=2\r\n\r\n";
        let request = parse_head(head, peer).unwrap();
        assert_eq!((request.path.as_str(), request.query.as_deref()), ("/ws", Some("token=a%20b")));
        assert_eq!(request.headers.get_all("cookie").iter().count(), 2);
        assert!(parse_head(b"GET /ws HTTP/1.1\r\nHost: x\r\n", peer).is_none(), "incomplete");
        assert!(parse_head(b"GET /ws HTTP/1.1\r\nno colon\r\n\r\n", peer).is_none(), "malformed");
    }
}
