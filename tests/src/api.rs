//! A keep-alive HTTP/1.1 client for the server API, just enough for tests:
//! one request at a time, `Content-Length` bodies.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TIMEOUT;

/// One kept-alive connection to the bus listener.
#[derive(Debug)]
pub struct ApiConn {
    addr: SocketAddr,
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// An answer: status, and the body parsed as JSON (`Value::Null` if empty
/// or not JSON, with the text kept in `text`).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: String,
}

impl ApiConn {
    pub async fn connect(addr: SocketAddr) -> ApiConn {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await.expect("connect in time").unwrap();
        ApiConn { addr, stream, buffer: Vec::new() }
    }

    /// `POST /api/{command}` with `body` and the key, if any.
    pub async fn post(&mut self, command: &str, key: Option<&str>, body: &str) -> Answer {
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        self.raw("POST", &format!("/api/{command}"), &auth, body).await
    }

    /// Any request; `headers` are extra header lines, each ending in CRLF.
    pub async fn raw(&mut self, method: &str, path: &str, headers: &str, body: &str) -> Answer {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await.unwrap();
        tokio::time::timeout(TIMEOUT, self.read_response()).await.expect("a response in time")
    }

    async fn read_response(&mut self) -> Answer {
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if self.buffer.len() >= end + 4 + length {
                    let text = String::from_utf8_lossy(&self.buffer[end + 4..end + 4 + length]).into_owned();
                    self.buffer.drain(..end + 4 + length);
                    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
                    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                    return Answer { status, body, text, headers: head };
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the connection; buffered: {:?}", String::from_utf8_lossy(&self.buffer));
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server closed the connection (reads EOF within `TIMEOUT`).
    pub async fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk)).await, Ok(Ok(0) | Err(_)))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
