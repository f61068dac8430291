//! The socket under a connection. tungstenite performs the upgrade (the HTTP
//! request and response) over a [`Wire`]; after that the read half belongs to
//! the connection's [`FrameReader`](crate::frames::FrameReader) and the write
//! half to its writer, which frames everything the server sends itself.
//!
//! Server frames are never masked, so writing one is a 2 to 10-byte header
//! and the payload: the writer puts a whole batch of queued frames into one
//! buffer and writes it with one call. The replies the protocol requires
//! (pongs, the close reply) come from the reader; they wait in a small
//! [`Control`] buffer that the writer sends between two batches, so that
//! every byte on the wire goes out through one writer, whole frames at a
//! time.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use arqon_protocol::CloseReason;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Continuation frame opcode (RFC 6455 5.2).
pub(crate) const OP_CONTINUATION: u8 = 0x0;
/// Text data frame opcode.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Binary data frame opcode.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub(crate) const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub(crate) const OP_PONG: u8 = 0xa;

/// RSV1 on a data frame: the message is compressed (permessage-deflate,
/// RFC 7692); or-ed into the opcode given to [`put_header`].
pub(crate) const COMPRESSED: u8 = 0x40;

/// Most control bytes (pongs, the close reply) waiting for the writer; a peer
/// that pings faster than its connection drains is cut off beyond this.
const CONTROL_LIMIT: usize = 64 * 1024;

/// Appends an unmasked, final frame header for a payload of `len` bytes;
/// `opcode` may carry [`COMPRESSED`].
pub(crate) fn put_header(buf: &mut Vec<u8>, opcode: u8, len: usize) {
    buf.push(0x80 | opcode);
    if len < 126 {
        buf.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        buf.push(126);
        buf.extend_from_slice(&len.to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a close frame: the code and the reason (at most 123 bytes, cut at a
/// character boundary).
pub(crate) fn put_close(buf: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    put_header(buf, OP_CLOSE, 2 + reason.len());
    buf.extend_from_slice(&code.to_be_bytes());
    buf.extend_from_slice(reason);
}

/// What the reader has for the writer: the protocol replies it owes the
/// client, and the close a broken frame calls for.
#[derive(Debug, Default)]
pub(crate) struct Control {
    state: Mutex<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    bytes: Vec<u8>,
    waker: Option<Waker>,
    /// The client sent a close frame: its reply is the last of `bytes`, and
    /// nothing may be sent after it.
    peer_closed: bool,
    /// The client broke the protocol: the writer closes with this reason.
    failed: Option<CloseReason>,
}

/// What [`Control::poll_take`] found: bytes to send, whether they end with
/// the reply to the client's close, and the close a broken frame calls for.
#[derive(Debug)]
pub(crate) struct Replies {
    pub(crate) bytes: Vec<u8>,
    pub(crate) peer_closed: bool,
    pub(crate) failed: Option<CloseReason>,
}

impl Control {
    /// Queues the pong for a ping; fails when the client pings faster than
    /// its connection drains.
    pub(crate) fn pong(&self, payload: &[u8]) -> io::Result<()> {
        self.update(|state| {
            if state.bytes.len() + payload.len() > CONTROL_LIMIT {
                return Err(io::Error::other("control replies not drained"));
            }
            put_header(&mut state.bytes, OP_PONG, payload.len());
            state.bytes.extend_from_slice(payload);
            Ok(())
        })
    }

    /// The client sent a close frame: queues the reply (with `code`, or
    /// none), after which nothing more goes out.
    pub(crate) fn peer_closed(&self, code: Option<u16>) {
        self.update(|state| {
            match code {
                Some(code) => put_close(&mut state.bytes, code, ""),
                None => put_header(&mut state.bytes, OP_CLOSE, 0),
            }
            state.peer_closed = true;
        });
    }

    /// The reader met a frame that calls for a close (1002, 1007, 1009): the
    /// writer sends what is queued, then closes with `reason`.
    pub(crate) fn fail(&self, reason: CloseReason) {
        self.update(|state| state.failed = Some(reason));
    }

    /// Whether the client sent a close frame.
    pub(crate) fn is_peer_closed(&self) -> bool {
        self.state.lock().peer_closed
    }

    /// Changes the state, then wakes the writer (outside the lock) to look.
    fn update<T>(&self, change: impl FnOnce(&mut ControlState) -> T) -> T {
        let (out, waker) = {
            let mut state = self.state.lock();
            let out = change(&mut state);
            (out, state.waker.take())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        out
    }

    /// Takes the waiting replies, or registers the writer to be woken.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Replies> {
        let mut state = self.state.lock();
        if state.bytes.is_empty() && state.failed.is_none() && !state.peer_closed {
            match &state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        Poll::Ready(Replies {
            bytes: std::mem::take(&mut state.bytes),
            peer_closed: state.peer_closed,
            failed: state.failed.take(),
        })
    }

    /// Waits for replies to send.
    pub(crate) async fn take(&self) -> Replies {
        std::future::poll_fn(|cx| self.poll_take(cx)).await
    }
}

/// The stream tungstenite performs the upgrade over. Its reads stop at the
/// end of the HTTP request: whatever the client sent after it (its first
/// frames, if it did not wait for the response) stays here for the
/// connection's [`FrameReader`](crate::frames::FrameReader) instead of
/// disappearing into tungstenite's buffer.
#[derive(Debug)]
pub(crate) struct Wire<S> {
    io: S,
    /// Bytes read and not handed to tungstenite.
    ahead: Vec<u8>,
    /// How much of `\r\n\r\n` (the end of the request head) the bytes
    /// handed over so far end with; 4 once the head is complete.
    matched: usize,
    /// The request head as handed over, up to [`HEAD_KEPT`] bytes: read
    /// when the upgrade fails, to answer a plain HTTP request.
    head: Vec<u8>,
}

/// Bytes of the request head kept for [`Wire::upgrade_required`].
const HEAD_KEPT: usize = 8192;

/// Bytes one read takes during the upgrade.
const UPGRADE_READ_BYTES: usize = 4096;

/// After `byte`, how much of `\r\n\r\n` has been seen, given `matched` before it.
fn advance(matched: usize, byte: u8) -> usize {
    const END: &[u8; 4] = b"\r\n\r\n";
    if byte == END[matched] {
        matched + 1
    } else if byte == b'\r' {
        1
    } else {
        0
    }
}

impl<S> Wire<S> {
    /// A wire whose first bytes, `ahead`, were already read from `io`.
    pub(crate) fn with_ahead(io: S, ahead: Vec<u8>) -> Self {
        Wire { io, ahead, matched: 0, head: Vec::new() }
    }

    /// After a failed upgrade: the `426 Upgrade Required` response to send
    /// when the client made a complete plain HTTP request (one without
    /// `Upgrade: websocket`), naming the WebSocket URL (`wss` with `tls`);
    /// `None` for anything else (a broken WebSocket handshake, a partial
    /// request), which gets no answer.
    pub(crate) fn upgrade_required(&self, tls: bool) -> Option<Vec<u8>> {
        if self.matched != 4 {
            return None;
        }
        let head = String::from_utf8_lossy(&self.head);
        let header = |name: &str| {
            head.split("\r\n").skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
            })
        };
        if header("upgrade").is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket"))) {
            return None;
        }
        // The Host header is the client's own word: only a plausible host
        // (and port) is echoed back.
        let host = header("host")
            .filter(|h| !h.is_empty() && h.len() <= 255)
            .filter(|h| h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)))
            .unwrap_or("HOST:PORT");
        let scheme = if tls { "wss" } else { "ws" };
        // Plain text: this is no refusal of the bus (those carry a wire
        // error code), just directions for a person with a browser or curl.
        let body =
            format!("This is an ArqonBus WebSocket endpoint: connect a WebSocket client to {scheme}://{host}/ws\n");
        Some(
            format!(
                "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
                 Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    /// After the upgrade: the socket, and the bytes the client sent after
    /// its request.
    pub(crate) fn into_parts(self) -> (S, Vec<u8>) {
        (self.io, self.ahead)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Wire<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.matched == 4 {
            // tungstenite reads no further than a complete request.
            return Poll::Ready(Err(io::Error::other("read past the upgrade request")));
        }
        if this.ahead.is_empty() {
            this.ahead.reserve(UPGRADE_READ_BYTES);
            if std::task::ready!(std::pin::pin!(this.io.read_buf(&mut this.ahead)).poll(cx))? == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let mut n = 0;
        while n < this.ahead.len().min(buf.remaining()) && this.matched < 4 {
            this.matched = advance(this.matched, this.ahead[n]);
            n += 1;
        }
        buf.put_slice(&this.ahead[..n]);
        let keep = n.min(HEAD_KEPT.saturating_sub(this.head.len()));
        this.head.extend_from_slice(&this.ahead[..keep]);
        this.ahead.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Wire<S> {
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

    #[tokio::test]
    async fn the_upgrade_reads_stop_at_the_end_of_the_request() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let request = "GET /ws HTTP/1.1\r\nHost: x\r\nX-A: \r\r\n\r\n";
        let early = [0x81u8, 0x80, 1, 2, 3, 4];
        client.write_all(request.as_bytes()).await.unwrap();
        client.write_all(&early).await.unwrap();
        let mut wire = Wire::with_ahead(server, Vec::new());
        let mut got = Vec::new();
        let mut small = [0u8; 7];
        while !got.ends_with(b"\r\n\r\n") {
            let n = wire.read(&mut small).await.unwrap();
            assert!(n > 0, "the stream ended early");
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, request.as_bytes(), "nothing past the request was handed over");
        assert!(wire.read(&mut small).await.is_err(), "a read past the request fails");
        let (_, ahead) = wire.into_parts();
        assert_eq!(ahead, early, "the early frame is kept for the frame reader");
    }

    async fn head_of(request: &str) -> Wire<tokio::io::DuplexStream> {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(request.as_bytes()).await.unwrap();
        drop(client);
        let mut wire = Wire::with_ahead(server, Vec::new());
        let mut buf = [0u8; 64];
        while wire.matched < 4 && wire.read(&mut buf).await.unwrap() > 0 {}
        wire
    }

    #[tokio::test]
    async fn plain_http_requests_get_426_naming_the_websocket_url() {
        let wire = head_of("GET / HTTP/1.1\r\nHost: bus.example:9100\r\nAccept: */*\r\n\r\n").await;
        let response = String::from_utf8(wire.upgrade_required(false).expect("a plain request")).unwrap();
        assert!(response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{response}");
        assert!(response.contains("\r\nUpgrade: websocket\r\n"), "{response}");
        assert!(response.ends_with(
            "\r\n\r\nThis is an ArqonBus WebSocket endpoint: connect a WebSocket client to ws://bus.example:9100/ws\n"
        ));
        let wire = head_of("GET / HTTP/1.1\r\nhost: <script>\r\n\r\n").await;
        let response = String::from_utf8(wire.upgrade_required(true).unwrap()).unwrap();
        assert!(response.ends_with("to wss://HOST:PORT/ws\n"), "a host that is no host name is not echoed: {response}");
        // A WebSocket handshake gone wrong, or a request cut short, is not
        // answered this way.
        let wire = head_of("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\r\n").await;
        assert_eq!(wire.upgrade_required(false), None);
        let wire = head_of("GET / HTTP/1.1\r\nHost: x\r\n").await;
        assert_eq!(wire.upgrade_required(false), None);
    }

    #[test]
    fn the_end_of_the_head_is_found_across_partial_matches() {
        let mut matched = 0;
        for &byte in b"a\r\n\r\r\nb\r\n\r" {
            matched = advance(matched, byte);
            assert_ne!(matched, 4);
        }
        assert_eq!(advance(matched, b'\n'), 4);
    }

    #[test]
    fn pongs_stop_at_the_limit_and_the_close_reply_comes_last() {
        let control = Control::default();
        let mut cx = Context::from_waker(Waker::noop());
        let payload = [7u8; 125];
        // Bounded, so that without a limit this fails instead of running on.
        let queued = (0..1000).take_while(|_| control.pong(&payload).is_ok()).count();
        // A pong is 2 header bytes and its payload; the limit counts queued bytes.
        assert_eq!(queued, (CONTROL_LIMIT - 125) / 127 + 1, "a client that pings faster than it drains is refused");
        let Poll::Ready(replies) = control.poll_take(&mut cx) else { panic!("pongs were queued") };
        assert_eq!(&replies.bytes[..2], [0x8a, 125]);
        assert!(!replies.peer_closed);
        assert!(control.poll_take(&mut cx).is_pending(), "taken replies are gone");
        control.pong(b"p").unwrap();
        control.peer_closed(Some(1000));
        let Poll::Ready(replies) = control.poll_take(&mut cx) else { panic!("replies were queued") };
        assert_eq!(replies.bytes, [0x8a, 1, b'p', 0x88, 2, 0x03, 0xe8]);
        assert!(replies.peer_closed && control.is_peer_closed());
    }

    #[test]
    fn headers_by_length() {
        let mut buf = Vec::new();
        put_header(&mut buf, OP_TEXT, 5);
        assert_eq!(buf, [0x81, 5]);
        buf.clear();
        put_header(&mut buf, OP_BINARY, 126);
        assert_eq!(buf, [0x82, 126, 0, 126]);
        buf.clear();
        put_header(&mut buf, OP_TEXT, 65_536);
        assert_eq!(buf, [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        buf.clear();
        put_close(&mut buf, 1008, "slow consumer");
        assert_eq!(&buf[..4], [0x88, 15, 0x03, 0xf0]);
        assert_eq!(&buf[4..], b"slow consumer");
    }
}
