//! The socket under a connection, split in two: tungstenite reads client
//! frames from the read half, the connection's writer owns the write half and
//! frames what it sends itself.
//!
//! Server frames are never masked, so writing one is a 2 to 10-byte header
//! and the payload: the writer puts a whole batch of queued frames into one
//! buffer and writes it with one call, instead of passing each frame through
//! tungstenite's `Sink` (a UTF-8 check, a copy into its buffer and a lock per
//! frame). tungstenite still does all the reading, and with it the replies the
//! protocol requires (pongs, the close reply): what it writes after the
//! upgrade lands in a small [`Control`] buffer that the writer sends between
//! two batches, so that every byte on the wire goes out through one writer,
//! whole frames at a time.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use arqon_protocol::CloseReason;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

/// Text data frame opcode (RFC 6455 5.2).
pub(crate) const OP_TEXT: u8 = 0x1;
/// Binary data frame opcode.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub(crate) const OP_PING: u8 = 0x9;

/// Most control bytes (pongs, the close reply) waiting for the writer; a peer
/// that pings faster than its connection drains is cut off beyond this.
const CONTROL_LIMIT: usize = 64 * 1024;

/// Appends an unmasked, final frame header for a payload of `len` bytes.
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

/// What the reader has for the writer: protocol replies tungstenite wrote
/// while reading, and the close a read error calls for.
#[derive(Debug, Default)]
pub(crate) struct Control {
    state: Mutex<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    bytes: Vec<u8>,
    waker: Option<Waker>,
    /// The client sent a close frame: after the close reply, nothing more
    /// may be sent.
    peer_closed: bool,
    /// The client broke the protocol: the writer closes with this reason.
    failed: Option<CloseReason>,
    /// After the client's close: the reader has finished reading, so
    /// tungstenite's close reply (if any) is in `bytes` or already taken.
    reply_done: bool,
}

/// What [`Control::poll_take`] found: bytes to send, whether the client has
/// closed, whether everything tungstenite will write after that close is in
/// `bytes` (or was taken before), and the close a read error calls for.
#[derive(Debug)]
pub(crate) struct Replies {
    pub(crate) bytes: Vec<u8>,
    pub(crate) peer_closed: bool,
    pub(crate) reply_done: bool,
    pub(crate) failed: Option<CloseReason>,
}

impl Control {
    /// Marks that the client sent a close frame; the close reply follows.
    pub(crate) fn set_peer_closed(&self) {
        self.state.lock().peer_closed = true;
    }

    /// The reader met a read error that calls for a close frame (1002, 1007,
    /// 1009): the writer sends what is queued, then closes with `reason`.
    pub(crate) fn fail(&self, reason: CloseReason) {
        self.update(|state| state.failed = Some(reason));
    }

    /// After the client's close, the reader is done reading: tungstenite has
    /// written its close reply, or never will.
    pub(crate) fn set_reply_done(&self) {
        self.update(|state| state.reply_done = true);
    }

    /// Whether the client sent a close frame.
    pub(crate) fn peer_closed(&self) -> bool {
        self.state.lock().peer_closed
    }

    fn push(&self, bytes: &[u8]) -> io::Result<()> {
        self.update(|state| {
            if state.bytes.len() + bytes.len() > CONTROL_LIMIT {
                return Err(io::Error::other("control replies not drained"));
            }
            state.bytes.extend_from_slice(bytes);
            Ok(())
        })
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
        if state.bytes.is_empty() && state.failed.is_none() && !state.reply_done {
            match &state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        Poll::Ready(Replies {
            bytes: std::mem::take(&mut state.bytes),
            peer_closed: state.peer_closed,
            reply_done: state.reply_done,
            failed: state.failed.take(),
        })
    }

    /// Waits for replies to send.
    pub(crate) async fn take(&self) -> Replies {
        std::future::poll_fn(|cx| self.poll_take(cx)).await
    }
}

/// The stream tungstenite is given: reads come from the socket; writes go to
/// the socket during the upgrade (the HTTP response), and to [`Control`]
/// once the writer has taken the write half.
#[derive(Debug)]
pub(crate) struct Wire<S> {
    read: ReadHalf<S>,
    write: Option<WriteHalf<S>>,
    control: Arc<Control>,
    /// Bytes read ahead and not yet handed to tungstenite, with how many of
    /// them were handed already; empty (no allocation) most of the time.
    ahead: Vec<u8>,
    ahead_at: usize,
}

impl<S: AsyncRead + AsyncWrite> Wire<S> {
    pub(crate) fn new(stream: S) -> Self {
        let (read, write) = tokio::io::split(stream);
        Wire { read, write: Some(write), control: Arc::default(), ahead: Vec::new(), ahead_at: 0 }
    }
}

impl<S> Wire<S> {
    /// Hands the write half to the connection's writer; from now on what
    /// tungstenite writes goes to the returned [`Control`].
    pub(crate) fn take_writer(&mut self) -> Option<(WriteHalf<S>, Arc<Control>)> {
        self.write.take().map(|write| (write, Arc::clone(&self.control)))
    }

    pub(crate) fn control(&self) -> &Control {
        &self.control
    }

    pub(crate) fn read_half(&mut self) -> &mut ReadHalf<S> {
        &mut self.read
    }
}

thread_local! {
    /// Where a connection's socket is read into when tungstenite's own buffer
    /// is smaller: one read takes up to this much, whatever the connection's
    /// buffer, and only the part tungstenite has not taken yet is kept by the
    /// connection (see [`Wire`]'s `AsyncRead`).
    static READ_AHEAD: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Bytes one read of a busy connection takes at most.
const READ_AHEAD_BYTES: usize = 16 * 1024;

impl<S: AsyncRead> AsyncRead for Wire<S> {
    /// tungstenite's read buffer is small (idle connections keep it), so a
    /// busy connection would take few frames per read system call. Reads
    /// therefore go through a per-thread 16 KiB buffer: what does not fit in
    /// tungstenite's buffer is kept in `ahead` and handed over on the next
    /// calls, and freed once handed over.
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.ahead_at < this.ahead.len() {
            let n = buf.remaining().min(this.ahead.len() - this.ahead_at);
            buf.put_slice(&this.ahead[this.ahead_at..this.ahead_at + n]);
            this.ahead_at += n;
            if this.ahead_at == this.ahead.len() {
                this.ahead = Vec::new();
                this.ahead_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_AHEAD_BYTES {
            return Pin::new(&mut this.read).poll_read(cx, buf);
        }
        let mut scratch = READ_AHEAD.with(Cell::take);
        if scratch.len() < READ_AHEAD_BYTES {
            scratch = vec![0; READ_AHEAD_BYTES];
        }
        let mut into = ReadBuf::new(&mut scratch);
        let polled = Pin::new(&mut this.read).poll_read(cx, &mut into);
        if let Poll::Ready(Ok(())) = polled {
            let read = into.filled();
            let n = buf.remaining().min(read.len());
            buf.put_slice(&read[..n]);
            if n < read.len() {
                this.ahead = read[n..].to_vec();
                this.ahead_at = 0;
            }
        }
        READ_AHEAD.with(|cell| cell.set(scratch));
        polled
    }
}

impl<S: AsyncWrite> AsyncWrite for Wire<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.write {
            Some(write) => Pin::new(write).poll_write(cx, buf),
            None => Poll::Ready(self.control.push(buf).map(|()| buf.len())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.write {
            Some(write) => Pin::new(write).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.write {
            Some(write) => Pin::new(write).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Writes `buf` whole, then clears it.
pub(crate) async fn write_out<W: AsyncWrite + Unpin>(io: &mut W, buf: &mut Vec<u8>) -> io::Result<()> {
    io.write_all(buf).await?;
    buf.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_ahead_and_hands_over_in_order() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut wire = Wire::new(server);
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        let mut small = [0u8; 1000];
        loop {
            let n = wire.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert!(wire.ahead.is_empty(), "nothing kept once handed over");
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
