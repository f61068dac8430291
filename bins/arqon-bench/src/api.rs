//! The `api` scenario's publishers: `POST /api/publish` over kept-alive
//! HTTP/1.1 connections (PROTOCOL.md section 8.3), one request at a time per
//! connection, as an application backend's HTTP client sends them.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One kept-alive connection to the bus listener's server API.
#[derive(Debug)]
pub(crate) struct ApiConn {
    stream: TcpStream,
    /// The request head up to the `Content-Length` value.
    head: String,
    request: Vec<u8>,
    buffer: Vec<u8>,
}

impl ApiConn {
    pub(crate) async fn connect(addr: SocketAddr, key: &str) -> io::Result<ApiConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let head = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: "
        );
        Ok(ApiConn { stream, head, request: Vec::with_capacity(1024), buffer: Vec::with_capacity(1024) })
    }

    /// Publishes `body` (the command's args); returns the HTTP status.
    pub(crate) async fn publish(&mut self, body: &str) -> io::Result<u16> {
        self.request.clear();
        self.request.extend_from_slice(self.head.as_bytes());
        self.request.extend_from_slice(body.len().to_string().as_bytes());
        self.request.extend_from_slice(b"\r\n\r\n");
        self.request.extend_from_slice(body.as_bytes());
        self.stream.write_all(&self.request).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> io::Result<u16> {
        loop {
            if let Some((status, length)) = parse_head(&self.buffer) {
                let (end, content_length) = length;
                if self.buffer.len() >= end + content_length {
                    self.buffer.drain(..end + content_length);
                    return Ok(status);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the bus closed the API connection"));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The status, the end of the head and the body's length, once the head is
/// complete.
fn parse_head(buffer: &[u8]) -> Option<(u16, (usize, usize))> {
    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buffer[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    Some((status, (end, length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed_by_content_length() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 8\r\n\r\n{\"id\":1}";
        assert_eq!(parse_head(response), Some((200, (70, 8))));
        assert_eq!(parse_head(b"HTTP/1.1 401 Unauthorized\r\n"), None, "head not complete");
    }
}
