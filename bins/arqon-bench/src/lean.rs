//! A lean WebSocket client for the publish/subscribe hot path.
//!
//! tokio-tungstenite performs the upgrade (and checks the server's answer);
//! after it, the socket is read and written here, because at millions of
//! frames per second the generator must not spend its core on what it does
//! not need: tungstenite zero-fills its read buffer before every read,
//! validates every text frame as UTF-8, registers wakers twice per poll and
//! copies each payload into its own buffer. Here a subscriber parses frame
//! headers in place in one reusable buffer and gets the payload as a byte
//! range; a publisher appends masked frames to one output buffer and writes
//! it in one call.
//!
//! Scope: exactly what the bus sends (RFC 6455, and permessage-deflate when
//! negotiated: a compressed frame is inflated, as a browser would; the
//! server never fragments frames). A continuation frame is reported as an
//! error rather than reassembled.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Read buffer of a lean connection: about 150 frames of the benchmark's
/// size per read; grown only for a larger frame.
const READ_BUFFER: usize = 64 * 1024;
/// Compact the read buffer when less than this is left after its end.
const MIN_READ: usize = 16 * 1024;
/// Refuse frames above this (the bus sends nothing near it).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The socket during the upgrade: every read stops exactly at the end of the
/// HTTP response (found by peeking), so tungstenite buffers no byte of the
/// first WebSocket frames and the socket can be handed over whole.
#[derive(Debug)]
pub(crate) struct HeaderOnly {
    tcp: TcpStream,
    /// How much of `\r\n\r\n` the bytes read so far end with.
    matched: usize,
}

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

impl HeaderOnly {
    /// Wraps a connected socket.
    pub(crate) fn new(tcp: TcpStream) -> Self {
        HeaderOnly { tcp, matched: 0 }
    }

    /// The socket, once the upgrade is done.
    pub(crate) fn into_inner(self) -> TcpStream {
        self.tcp
    }
}

impl AsyncRead for HeaderOnly {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.matched == 4 {
            // Past the response: nothing more may be read through here.
            return Poll::Ready(Ok(()));
        }
        let mut peeked = [0u8; 1024];
        let mut peek_buf = ReadBuf::new(&mut peeked);
        let available = ready!(this.tcp.poll_peek(cx, &mut peek_buf))?;
        let mut matched = this.matched;
        let mut header_bytes = available;
        for (i, &byte) in peeked[..available].iter().enumerate() {
            matched = advance(matched, byte);
            if matched == 4 {
                header_bytes = i + 1;
                break;
            }
        }
        let take = header_bytes.min(buf.remaining());
        let mut exact = ReadBuf::new(&mut peeked[..take]);
        ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut exact))?;
        for &byte in exact.filled() {
            this.matched = advance(this.matched, byte);
        }
        buf.put_slice(exact.filled());
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HeaderOnly {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// What the reader found next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A text frame; its payload is `reader.bytes(range)`.
    Text(Range<usize>),
    /// A binary frame (the bus sends none; nats-server sends only these),
    /// its payload's range.
    Binary(Range<usize>),
    /// A ping, with its payload's range.
    Ping(Range<usize>),
    /// A pong.
    Pong,
    /// A close frame with its code (1005 when it carries none).
    Close(u16),
    /// The peer closed the TCP connection.
    Eof,
}

/// A parsed frame header: opcode, header length, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    /// RSV1: a permessage-deflate message.
    compressed: bool,
    opcode: u8,
    header_len: usize,
    payload_len: usize,
    mask: Option<[u8; 4]>,
}

/// Parses a frame header at the start of `data`; `None` if incomplete.
fn parse_header(data: &[u8]) -> Option<Header> {
    let (&b0, &b1) = (data.first()?, data.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (payload_len, mut header_len) = match b1 & 0x7f {
        126 => (usize::from(u16::from_be_bytes([*data.get(2)?, *data.get(3)?])), 4),
        127 => {
            let bytes: [u8; 8] = data.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).unwrap_or(usize::MAX), 10)
        }
        n => (usize::from(n), 2),
    };
    let mask = if masked {
        let key: [u8; 4] = data.get(header_len..header_len + 4)?.try_into().ok()?;
        header_len += 4;
        Some(key)
    } else {
        None
    };
    Some(Header { fin: b0 & 0x80 != 0, compressed: b0 & 0x40 != 0, opcode: b0 & 0x0f, header_len, payload_len, mask })
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// A connection's inflater (permessage-deflate).
struct Inflater(Box<DecompressorOxide>);

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

/// The reading half: frames parsed in place in one buffer.
#[derive(Debug)]
pub(crate) struct LeanReader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    reads: u64,
    /// Bytes read from the socket: what the wire carried.
    wire_bytes: u64,
    /// The inflater, when permessage-deflate was negotiated.
    inflater: Option<Inflater>,
    /// The last compressed text frame, inflated.
    inflated: Vec<u8>,
    /// Whether the last text frame returned was inflated (its range then
    /// indexes `inflated`).
    last_inflated: bool,
}

impl LeanReader {
    /// The payload bytes of a frame returned by [`LeanReader::next`]; valid
    /// until the next call.
    pub(crate) fn bytes(&self, range: Range<usize>) -> &[u8] {
        if self.last_inflated { &self.inflated[range] } else { &self.buf[range] }
    }

    /// Bytes read from the socket so far.
    pub(crate) fn wire_bytes(&self) -> u64 {
        self.wire_bytes
    }

    /// Inflates a compressed message (RFC 7692 7.2.2: the sync flush's tail
    /// put back) into `inflated`; its range there. One growing output buffer
    /// (miniz's non-wrapping mode): resetting the inflater is then a state
    /// change, not a 32 KiB window to clear.
    fn inflate(&mut self, payload: Range<usize>) -> io::Result<Range<usize>> {
        let Some(Inflater(inflater)) = self.inflater.as_mut() else {
            return Err(protocol_error("a compressed frame without permessage-deflate"));
        };
        inflater.init();
        let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | inflate_flags::TINFL_FLAG_HAS_MORE_INPUT;
        let tail = [0x00, 0x00, 0xff, 0xff];
        let mut written = 0;
        for input in [&self.buf[payload], &tail[..]] {
            let mut read = 0;
            loop {
                if written == self.inflated.len() {
                    if written >= MAX_FRAME {
                        return Err(protocol_error("frame too large"));
                    }
                    self.inflated.resize((written * 2).max(4096), 0);
                }
                let (status, used, produced) = decompress(inflater, &input[read..], &mut self.inflated, written, flags);
                read += used;
                written += produced;
                match status {
                    TINFLStatus::Done => return Ok(0..written),
                    TINFLStatus::NeedsMoreInput => break,
                    TINFLStatus::HasMoreOutput => {}
                    _ => return Err(protocol_error("a compressed frame that does not inflate")),
                }
            }
        }
        Ok(0..written)
    }

    /// Successful reads so far: a new value means fresh bytes arrived (the
    /// subscriber takes one timestamp per read, not per frame).
    pub(crate) fn reads(&self) -> u64 {
        self.reads
    }

    /// The next frame if a whole one is buffered; `None` when more bytes
    /// must be read first. No future per frame: at millions of frames a
    /// second, awaiting each one was a visible share of the generator's CPU.
    pub(crate) fn buffered(&mut self) -> Option<io::Result<Event>> {
        let header = parse_header(&self.buf[self.start..self.end])?;
        let total = header.header_len.saturating_add(header.payload_len);
        if header.payload_len > MAX_FRAME {
            return Some(Err(protocol_error("frame too large")));
        }
        if self.end - self.start < total {
            if total > self.buf.len() {
                self.compact();
                self.buf.resize(total, 0);
            }
            return None;
        }
        let payload = self.start + header.header_len..self.start + total;
        self.start += total;
        if let Some(key) = header.mask {
            arqon_transport::mask(&mut self.buf[payload.clone()], key);
        }
        if !header.fin || header.opcode == 0 {
            return Some(Err(protocol_error("fragmented frames are not supported")));
        }
        self.last_inflated = header.compressed && header.opcode == 0x1;
        Some(match header.opcode {
            0x1 if header.compressed => self.inflate(payload).map(Event::Text),
            0x1 => Ok(Event::Text(payload)),
            0x2 => Ok(Event::Binary(payload)),
            0x8 => {
                let code = self.buf.get(payload.start..payload.start + 2);
                Ok(Event::Close(code.map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]))))
            }
            0x9 => Ok(Event::Ping(payload)),
            0xA => Ok(Event::Pong),
            _ => Err(protocol_error("unknown opcode")),
        })
    }

    /// The next frame. Cancel-safe: a read interrupted by `select!` loses
    /// nothing, since bytes are only consumed once a whole frame is there.
    pub(crate) async fn next(&mut self) -> io::Result<Event> {
        loop {
            if let Some(event) = self.buffered() {
                return event;
            }
            if !self.fill().await? {
                return Ok(Event::Eof);
            }
        }
    }

    /// Reads once from the socket into the buffer; false at the end of the
    /// stream.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.buf.len() - self.end < MIN_READ {
            self.compact();
        }
        let n = self.half.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Ok(false);
        }
        self.end += n;
        self.reads += 1;
        self.wire_bytes += n as u64;
        Ok(true)
    }

    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }
}

/// The writing half: masked frames appended to one buffer, written on flush.
#[derive(Debug)]
pub(crate) struct LeanWriter {
    half: OwnedWriteHalf,
    out: Vec<u8>,
    /// xorshift state for masking keys. RFC 6455 asks for unpredictable
    /// keys to protect proxies from cache poisoning; on loopback against
    /// our own server there is no proxy, and a cheap generator is enough.
    rng: u32,
}

impl LeanWriter {
    fn key(&mut self) -> [u8; 4] {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        x.to_ne_bytes()
    }

    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        self.out.push(0x80 | opcode);
        match payload.len() {
            n @ 0..=125 => self.out.push(0x80 | n as u8),
            n @ 126..=65535 => {
                self.out.push(0x80 | 126);
                self.out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = self.key();
        self.out.extend_from_slice(&key);
        let start = self.out.len();
        self.out.extend_from_slice(payload);
        arqon_transport::mask(&mut self.out[start..], key);
    }

    /// Appends a text frame.
    pub(crate) fn queue_text(&mut self, text: &str) {
        self.queue(0x1, text.as_bytes());
    }

    /// Appends a pong answering a ping with `payload`.
    pub(crate) fn queue_pong(&mut self, payload: &[u8]) {
        self.queue(0xA, payload);
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.half.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}

/// A lean connection: a reader and a writer over one socket.
#[derive(Debug)]
pub(crate) struct LeanWs {
    /// Frames in.
    pub(crate) reader: LeanReader,
    /// Frames out.
    pub(crate) writer: LeanWriter,
    /// A pong queued by [`LeanWs::buffered`], sent by the next
    /// [`LeanWs::next`].
    pong_queued: bool,
}

impl LeanWs {
    /// Takes over a socket right after the upgrade; `seed` varies masking
    /// keys between connections; `deflate`: permessage-deflate was agreed.
    pub(crate) fn new(tcp: TcpStream, seed: u32, deflate: bool) -> Self {
        let (read, write) = tcp.into_split();
        LeanWs {
            reader: LeanReader {
                half: read,
                buf: vec![0; READ_BUFFER],
                start: 0,
                end: 0,
                reads: 0,
                wire_bytes: 0,
                inflater: deflate.then(|| Inflater(Box::new(DecompressorOxide::new()))),
                inflated: Vec::new(),
                last_inflated: false,
            },
            writer: LeanWriter { half: write, out: Vec::with_capacity(4096), rng: seed | 1 },
            pong_queued: false,
        }
    }

    /// The next frame that is not a ping or pong; pings are answered on the
    /// way (the bus closes a client that stays silent for two heartbeats).
    pub(crate) async fn next(&mut self) -> io::Result<Event> {
        loop {
            let event = self.buffered();
            // Pongs for the pings `buffered` found, now or before: sent
            // before returning or waiting for more.
            if self.pong_queued {
                self.writer.flush().await?;
                self.pong_queued = false;
            }
            if let Some(event) = event {
                return event;
            }
            if !self.reader.fill().await? {
                return Ok(Event::Eof);
            }
        }
    }

    /// The next frame that is not a ping or pong if a whole one is
    /// buffered, without waiting; `None` when more bytes must be read.
    /// Pings found on the way are answered by the next [`LeanWs::next`]
    /// (called once the buffer is drained).
    pub(crate) fn buffered(&mut self) -> Option<io::Result<Event>> {
        loop {
            match self.reader.buffered()? {
                Ok(Event::Ping(range)) => {
                    let payload = self.reader.bytes(range).to_vec();
                    self.writer.queue_pong(&payload);
                    self.pong_queued = true;
                }
                Ok(Event::Pong) => {}
                other => return Some(other),
            }
        }
    }

    /// Sends one text frame now.
    pub(crate) async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.writer.queue_text(text);
        self.writer.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_every_length_form() {
        assert_eq!(parse_header(&[0x81]), None);
        assert_eq!(
            parse_header(&[0x81, 5, b'h']),
            Some(Header { fin: true, compressed: false, opcode: 1, header_len: 2, payload_len: 5, mask: None })
        );
        assert_eq!(parse_header(&[0x81, 126, 0x01]), None);
        assert_eq!(parse_header(&[0x81, 126, 0x01, 0x00]).map(|h| (h.header_len, h.payload_len)), Some((4, 256)));
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(parse_header(&long).map(|h| (h.opcode, h.header_len, h.payload_len)), Some((2, 10, 70_000)));
        let masked = [0x89, 0x80 | 2, 1, 2, 3, 4];
        assert_eq!(parse_header(&masked).map(|h| (h.header_len, h.mask)), Some((6, Some([1, 2, 3, 4]))));
        assert_eq!(parse_header(&[0x01, 0]).map(|h| h.fin), Some(false));
        assert_eq!(parse_header(&[0xc1, 0]).map(|h| h.compressed), Some(true));
    }

    #[test]
    fn header_end_is_found_across_reads() {
        let mut m = 0;
        for &b in b"HTTP/1.1 101 OK\r\nA: b\r\n\r" {
            m = advance(m, b);
        }
        assert_eq!(m, 3);
        assert_eq!(advance(m, b'\n'), 4);
        assert_eq!(advance(advance(0, b'\r'), b'\r'), 1);
    }

    /// A lean client and a lean server connected over loopback (the client
    /// inflates if `deflate`).
    async fn connected(deflate: bool) -> (LeanWs, LeanWs) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (server, _) = listener.accept().await.unwrap();
        (LeanWs::new(client.await.unwrap(), 7, deflate), LeanWs::new(server, 9, false))
    }

    #[tokio::test]
    async fn compressed_frames_are_inflated_and_counted_as_wire_bytes() {
        let (mut client, mut server) = connected(true).await;
        let text = "the order shipped ".repeat(100);
        let deflated = miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 1);
        server.writer.queue(0x40 | 0x1, &deflated);
        server.writer.queue_text("plain");
        server.writer.flush().await.unwrap();
        let Event::Text(r) = client.next().await.unwrap() else { panic!() };
        assert_eq!(client.reader.bytes(r), text.as_bytes());
        let Event::Text(r) = client.next().await.unwrap() else { panic!() };
        assert_eq!(client.reader.bytes(r), b"plain");
        // Masked frames from the server side of this test: header, key, payload.
        assert_eq!(client.reader.wire_bytes(), (2 + 4 + deflated.len() + 2 + 4 + 5) as u64);
    }

    #[tokio::test]
    async fn frames_round_trip_over_a_socket() {
        let (mut client, mut server) = connected(false).await;
        // Client frames are masked; the reader unmasks them.
        let big = "y".repeat(70_000);
        client.writer.queue_text("hello");
        client.writer.queue_text(&"x".repeat(300));
        client.writer.queue_text(&big);
        client.writer.queue_pong(b"p");
        assert!(client.writer.out.len() > 70_000);
        client.writer.flush().await.unwrap();
        let Event::Text(r) = server.reader.next().await.unwrap() else { panic!() };
        assert_eq!(server.reader.bytes(r), b"hello");
        let Event::Text(r) = server.reader.next().await.unwrap() else { panic!() };
        assert_eq!(server.reader.bytes(r).len(), 300);
        let Event::Text(r) = server.reader.next().await.unwrap() else { panic!() };
        assert_eq!(server.reader.bytes(r), big.as_bytes());
        assert_eq!(server.reader.next().await.unwrap(), Event::Pong);
        assert!(server.reader.reads() >= 1);
        // A ping is answered by `LeanWs::next`, which returns the next data frame.
        server.writer.queue(0x9, b"hb");
        server.writer.queue_text("after");
        server.writer.flush().await.unwrap();
        let Event::Text(r) = client.next().await.unwrap() else { panic!() };
        assert_eq!(client.reader.bytes(r), b"after");
        let Event::Pong = server.reader.next().await.unwrap() else { panic!() };
        drop(client);
        assert_eq!(server.reader.next().await.unwrap(), Event::Eof);
    }

    #[tokio::test]
    async fn buffered_frames_come_without_waiting_and_a_ping_among_them_is_answered_by_next() {
        let (mut client, mut server) = connected(false).await;
        assert!(client.buffered().is_none(), "nothing read yet");
        server.writer.queue_text("one");
        server.writer.queue(0x9, b"hb");
        server.writer.queue_text("two");
        server.writer.queue_text("three");
        server.writer.flush().await.unwrap();
        // The first frame takes a read; the rest of that read is buffered.
        let Event::Text(r) = client.next().await.unwrap() else { panic!() };
        assert_eq!(client.reader.bytes(r), b"one");
        let mut rest = Vec::new();
        while rest.len() < 2 {
            match client.buffered() {
                Some(Ok(Event::Text(r))) => rest.push(client.reader.bytes(r).to_vec()),
                Some(other) => panic!("unexpected {other:?}"),
                // A read that split the frames: wait for the rest.
                None => {
                    let Event::Text(r) = client.next().await.unwrap() else { panic!() };
                    rest.push(client.reader.bytes(r).to_vec());
                }
            }
        }
        assert_eq!(rest, [b"two".to_vec(), b"three".to_vec()]);
        assert!(client.buffered().is_none());
        // The ping skipped by `buffered` is answered by the next `next`,
        // before it waits for anything else.
        let waiting = tokio::spawn(async move { client.next().await.map(|_| ()) });
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), server.reader.next()).await;
        let Ok(Ok(Event::Pong)) = answer else { panic!("the ping was not answered: {answer:?}") };
        server.writer.queue_text("four");
        server.writer.flush().await.unwrap();
        waiting.await.unwrap().unwrap();
    }
}
