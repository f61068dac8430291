//! The application side of hooks and webhooks in tests: reading one HTTP
//! request that the bus sends, as a small local HTTP server would.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads one request from `stream`: its head (request line and headers,
/// header names in lower case) and its body (by `Content-Length`).
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> (String, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.expect("read a request");
        assert!(n > 0, "the bus closed before a whole request");
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let mut lines = text.split("\r\n");
            let mut head = lines.next().unwrap_or_default().to_owned();
            for line in lines {
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                head.push_str(&format!("\n{}: {}", name.trim().to_lowercase(), value.trim()));
            }
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length: ").and_then(|v| v.parse().ok())).unwrap_or(0);
            while buffer.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.expect("read a body");
                assert!(n > 0, "the bus closed inside a body");
                buffer.extend_from_slice(&chunk[..n]);
            }
            return (head, buffer[end + 4..end + 4 + length].to_vec());
        }
    }
}
