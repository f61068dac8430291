//! Reading what a client sends (RFC 6455 section 5) once the upgrade is done.
//!
//! A connection's bytes are read into a per-thread buffer (one 16 KiB buffer
//! serves every connection of a thread in turn) and each complete frame is
//! unmasked where it lies and handed over borrowed: no copy and no
//! allocation per frame. Only the tail of a frame cut by a read stays with
//! the connection between reads, and an idle connection holds no buffer at
//! all. Fragmented messages, rare for a bus client, are assembled in a buffer
//! of their own.
//!
//! Every rule that ends a connection is checked here, as soon as the bytes
//! that break it have arrived, and maps to its close code: reserved bits or
//! opcodes, an unmasked frame, a fragmented or oversized control frame, a
//! stray or missing continuation, a one-byte close payload (1002); a text
//! message or close reason that is not UTF-8 (1007); a frame or message over
//! the size limit (1009).
//!
//! With permessage-deflate negotiated, a message whose first frame has RSV1
//! set is inflated once whole, into a buffer bounded by the size limit (a
//! message that would inflate past it is 1009, never allocated), and is
//! then checked like any other; data that does not inflate is 1007.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::pin;
use std::task::{Context, Poll};

use arqon_protocol::CloseReason;
use arqon_protocol::scratch::{self, Pool};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::wire::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

/// Bytes one read takes at most: a busy connection gets many frames per
/// system call (a publisher's 64 KiB is about 200 small messages; 16 KiB
/// reads made three times the system calls in fan-in). The buffer is the
/// thread's, lent to a connection only while it reads and handles frames.
const READ_BYTES: usize = 64 * 1024;

/// Between reads, the tail of a cut frame moves to a buffer of its own
/// (and the read buffer goes back to the thread) unless it fills more than
/// this share of the buffer: a large frame on its way keeps its buffer,
/// while a client that sends a few kilobytes and stops pins no more than
/// about what it sent.
const KEEP_SHARE: usize = 4;

/// A read buffer grown beyond this (for a large frame) is freed after use
/// rather than kept by the thread.
const KEEP_BUFFER: usize = 2 * READ_BYTES;

/// Largest payload of a control frame (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

thread_local! {
    static READ_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The read buffer of each thread, while no connection holds it: a pool of
/// its own, since the handler encodes (with the protocol's scratch pool)
/// while the reader holds this one.
static READS: Pool = Pool::new(&READ_BUFFER, KEEP_BUFFER);

fn take_buffer() -> Vec<u8> {
    let buffer = READS.take();
    if buffer.capacity() >= READ_BYTES { buffer } else { Vec::with_capacity(READ_BYTES) }
}

/// What a client sent, borrowed from the reader until the next call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A whole text message (valid UTF-8).
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A ping with its payload, to be answered with a pong carrying it.
    Ping(&'a [u8]),
    /// A pong: nothing to do beyond counting it as life.
    Pong,
    /// The client's close frame, with the code the reply carries: the
    /// client's own, or 1002 for a code no endpoint may send; `None` for a
    /// close without a code, answered by one without a code.
    Close(Option<u16>),
}

/// A frame that ends the connection, with the close code it calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Broken {
    /// A frame that breaks RFC 6455.
    #[error("protocol violation")]
    Protocol,
    /// A text message or close reason that is not UTF-8.
    #[error("invalid UTF-8")]
    Utf8,
    /// A frame or message over the size limit.
    #[error("message too large")]
    TooLarge,
    /// A compressed message that is not valid deflate data.
    #[error("invalid compressed data")]
    Inflate,
}

impl Broken {
    /// The close frame the server sends for it.
    pub(crate) fn close_reason(self) -> CloseReason {
        match self {
            Broken::Protocol => CloseReason { code: 1002, reason: "protocol violation" },
            Broken::Utf8 => CloseReason { code: 1007, reason: "invalid UTF-8" },
            Broken::TooLarge => CloseReason::TOO_LARGE,
            Broken::Inflate => CloseReason { code: 1007, reason: "invalid compressed data" },
        }
    }
}

/// A frame's header, once all of it has arrived.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: u8,
    /// RSV1 on a message's first frame: the message is compressed.
    compressed: bool,
    /// Header bytes, mask included.
    len: usize,
    payload: usize,
    mask: [u8; 4],
}

impl Header {
    /// Parses the header at the start of `data`: `None` until all of it is
    /// there, an error as soon as the bytes that break a rule are. RSV1 is
    /// allowed only with permessage-deflate (`deflate`), and only on a
    /// message's first frame; no other reserved bit ever.
    fn parse(data: &[u8], max_message: usize, deflate: bool) -> Result<Option<Header>, Broken> {
        let [b0, b1, ..] = *data else { return Ok(None) };
        let compressed = b0 & 0x70 == 0x40 && deflate;
        if b0 & 0x70 != 0 && !compressed {
            return Err(Broken::Protocol);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let short_len = usize::from(b1 & 0x7f);
        match opcode {
            OP_TEXT | OP_BINARY => {}
            OP_CONTINUATION if !compressed => {}
            OP_CLOSE | OP_PING | OP_PONG if !compressed && fin && short_len <= MAX_CONTROL_PAYLOAD => {}
            _ => return Err(Broken::Protocol),
        }
        if b1 & 0x80 == 0 {
            // Every frame from a client is masked (RFC 6455 5.1).
            return Err(Broken::Protocol);
        }
        let (payload, at) = match short_len {
            126 => match data.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match data.get(2..10).and_then(|bytes| <[u8; 8]>::try_from(bytes).ok()) {
                Some(bytes) => (u64::from_be_bytes(bytes), 10),
                None => return Ok(None),
            },
            n => (n as u64, 2),
        };
        if payload > i64::MAX as u64 {
            // The most significant bit of a 64-bit length must be 0.
            return Err(Broken::Protocol);
        }
        let payload = usize::try_from(payload).map_err(|_| Broken::TooLarge)?;
        // A compressed frame is checked again once inflated; what is read
        // of it is bounded all the same (deflate grows what it cannot
        // compress by a little).
        if payload > wire_limit(max_message, deflate) {
            return Err(Broken::TooLarge);
        }
        match data.get(at..at + 4) {
            Some(&[a, b, c, d]) => {
                Ok(Some(Header { fin, opcode, compressed, len: at + 4, payload, mask: [a, b, c, d] }))
            }
            _ => Ok(None),
        }
    }
}

/// XORs `data` with a frame's masking key, 32 bytes at a time (a loop the
/// compiler turns into vector instructions), then eight: masking and
/// unmasking are the same operation (RFC 6455 5.3). Public for clients
/// built on this crate's framing, such as the load generator.
pub fn mask(data: &mut [u8], key: [u8; 4]) {
    let [a, b, c, d] = key;
    let block_key: [u8; 32] = std::array::from_fn(|i| key[i % 4]);
    let (blocks, rest) = data.as_chunks_mut::<32>();
    for block in blocks {
        for (byte, k) in block.iter_mut().zip(block_key) {
            *byte ^= k;
        }
    }
    // Every chunk starts at a multiple of 4, so the key starts over with it.
    let word_key = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let (words, tail) = rest.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ word_key).to_ne_bytes();
    }
    for (i, byte) in tail.iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// Close codes a peer may send (RFC 6455 7.4): 1004-1006, 1014, 1015 and
/// anything outside 1000-4999 other than the registered ones may not.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// The reply code for a close frame's payload, or what is wrong with it.
fn close_reply(payload: &[u8]) -> Result<Option<u16>, Broken> {
    match payload {
        [] => Ok(None),
        [_] => Err(Broken::Protocol),
        [a, b, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|_| Broken::Utf8)?;
            let code = u16::from_be_bytes([*a, *b]);
            Ok(Some(if close_code_allowed(code) { code } else { 1002 }))
        }
    }
}

/// Most payload bytes a frame (or a fragmented message, assembled) may
/// carry on the wire: the size limit, plus deflate's worst-case growth when
/// compression is negotiated.
fn wire_limit(max_message: usize, deflate: bool) -> usize {
    if deflate { max_message.saturating_add(max_message / 64 + 1024) } else { max_message }
}

fn text(bytes: &[u8]) -> Result<&str, Broken> {
    // Every text frame is checked whole here; simdutf8 accepts exactly
    // what std's check does, in a few times fewer instructions.
    simdutf8::basic::from_utf8(bytes).map_err(|_| Broken::Utf8)
}

/// A whole message as its event: inflated into `inflated` first if it was
/// compressed.
fn message<'a>(
    is_text: bool,
    compressed: bool,
    bytes: &'a [u8],
    max_message: usize,
    inflated: &'a mut Vec<u8>,
) -> Result<Option<Event<'a>>, Broken> {
    let bytes = if compressed {
        *inflated = scratch::take();
        crate::deflate::inflate_message(bytes, max_message, inflated)?;
        &inflated[..]
    } else {
        bytes
    };
    if is_text { text(bytes).map(|t| Some(Event::Text(t))) } else { Ok(Some(Event::Binary(bytes))) }
}

/// A fragmented message on its way in.
#[derive(Debug)]
struct Fragments {
    text: bool,
    /// The message is compressed: its text is checked once inflated.
    compressed: bool,
    bytes: Vec<u8>,
    /// How much of `bytes` is known to be UTF-8 (text only): invalid text
    /// fails at the fragment that breaks it, not at the end.
    checked: usize,
}

impl Fragments {
    fn push(&mut self, more: &[u8], max_message: usize) -> Result<(), Broken> {
        if self.bytes.len() + more.len() > wire_limit(max_message, self.compressed) {
            return Err(Broken::TooLarge);
        }
        self.bytes.extend_from_slice(more);
        if self.text && !self.compressed {
            self.checked = match std::str::from_utf8(&self.bytes[self.checked..]) {
                Ok(_) => self.bytes.len(),
                // A character cut between two fragments: check it with the next.
                Err(e) if e.error_len().is_none() => self.checked + e.valid_up_to(),
                Err(_) => return Err(Broken::Utf8),
            };
        }
        Ok(())
    }
}

/// Reads and checks a client's frames; see the module documentation.
#[derive(Debug)]
pub(crate) struct FrameReader {
    /// Bytes read; the next frame starts at `start`.
    buf: Vec<u8>,
    start: usize,
    /// Bytes the frame at `start` needs in all, once its header is known,
    /// so that the next read makes room for all of it.
    want: usize,
    fragments: Option<Fragments>,
    /// The last fragmented message completed (what its event borrows).
    assembled: Vec<u8>,
    /// The last compressed message, inflated (what its event borrows).
    inflated: Vec<u8>,
    max_message: usize,
    /// permessage-deflate was negotiated.
    deflate: bool,
}

impl FrameReader {
    /// A reader for frames of at most `max_message` payload bytes (and
    /// messages of at most that many once assembled), starting with bytes
    /// that arrived with the upgrade request.
    pub(crate) fn new(max_message: usize, early: Vec<u8>, deflate: bool) -> Self {
        FrameReader {
            buf: early,
            start: 0,
            want: 0,
            fragments: None,
            assembled: Vec::new(),
            inflated: Vec::new(),
            max_message,
            deflate,
        }
    }

    /// The next complete message or control frame among the bytes read,
    /// `None` when more must be read first.
    pub(crate) fn next_event(&mut self) -> Result<Option<Event<'_>>, Broken> {
        if !self.assembled.is_empty() {
            self.assembled = Vec::new();
        }
        if self.inflated.capacity() > 0 {
            scratch::give(std::mem::take(&mut self.inflated));
        }
        loop {
            let Some(header) = Header::parse(&self.buf[self.start..], self.max_message, self.deflate)? else {
                return Ok(None);
            };
            let total = header.len + header.payload;
            if self.buf.len() - self.start < total {
                self.want = total;
                return Ok(None);
            }
            self.want = 0;
            let at = self.start + header.len;
            let payload = at..at + header.payload;
            self.start += total;
            mask(&mut self.buf[payload.clone()], header.mask);
            match header.opcode {
                OP_TEXT | OP_BINARY if self.fragments.is_some() => return Err(Broken::Protocol),
                OP_TEXT | OP_BINARY if header.fin => {
                    let is_text = header.opcode == OP_TEXT;
                    return message(
                        is_text,
                        header.compressed,
                        &self.buf[payload],
                        self.max_message,
                        &mut self.inflated,
                    );
                }
                OP_TEXT | OP_BINARY => {
                    let mut fragments = Fragments {
                        text: header.opcode == OP_TEXT,
                        compressed: header.compressed,
                        bytes: Vec::new(),
                        checked: 0,
                    };
                    fragments.push(&self.buf[payload], self.max_message)?;
                    self.fragments = Some(fragments);
                }
                OP_CONTINUATION => {
                    let fragments = self.fragments.as_mut().ok_or(Broken::Protocol)?;
                    fragments.push(&self.buf[payload], self.max_message)?;
                    if header.fin {
                        let Some(Fragments { text: is_text, compressed, bytes, .. }) = self.fragments.take() else {
                            return Err(Broken::Protocol);
                        };
                        self.assembled = bytes;
                        return message(is_text, compressed, &self.assembled, self.max_message, &mut self.inflated);
                    }
                }
                OP_PING => return Ok(Some(Event::Ping(&self.buf[payload]))),
                OP_PONG => return Ok(Some(Event::Pong)),
                OP_CLOSE => return close_reply(&self.buf[payload]).map(|code| Some(Event::Close(code))),
                _ => return Err(Broken::Protocol),
            }
        }
    }

    /// Reads more bytes: `Ok(false)` when the client closed its side.
    pub(crate) async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> io::Result<bool> {
        poll_fn(|cx| self.poll_fill(cx, io)).await
    }

    fn poll_fill<R: AsyncRead + Unpin>(&mut self, cx: &mut Context<'_>, io: &mut R) -> Poll<io::Result<bool>> {
        self.make_room();
        match pin!(io.read_buf(&mut self.buf)).poll(cx) {
            Poll::Ready(read) => Poll::Ready(read.map(|n| n > 0)),
            Poll::Pending => {
                // Waiting for the client: hold no more than the cut frame.
                self.settle();
                Poll::Pending
            }
        }
    }

    /// Before a read: a read-sized buffer, the unread bytes at its start, and
    /// room for the whole frame whose header has arrived.
    fn make_room(&mut self) {
        if self.buf.capacity() < READ_BYTES {
            let mut buffer = take_buffer();
            buffer.extend_from_slice(&self.buf[self.start..]);
            self.buf = buffer;
        } else if self.start > 0 {
            self.buf.drain(..self.start);
        }
        self.start = 0;
        let spare = self.buf.capacity() - self.buf.len();
        if self.want > self.buf.capacity() && spare < READ_BYTES {
            // Grow toward the frame as its bytes arrive (at most doubling,
            // and only once the room left is less than a read) rather than
            // reserving all of it on the word of a header: a few bytes must
            // not buy a megabyte.
            let more = (self.want - self.buf.len()).min(self.buf.capacity());
            self.buf.reserve(more);
        }
    }

    /// Between reads (every complete frame handled): gives the read buffer
    /// back to the thread, keeping only the tail of a cut frame.
    pub(crate) fn settle(&mut self) {
        if self.buf.capacity() < READ_BYTES {
            return;
        }
        let tail = &self.buf[self.start..];
        if tail.len() > self.buf.capacity() / KEEP_SHARE {
            return;
        }
        let kept = if tail.is_empty() { Vec::new() } else { tail.to_vec() };
        READS.give(std::mem::replace(&mut self.buf, kept));
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: header, mask and masked payload.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, k)| b ^ k));
        out
    }

    fn reader(bytes: Vec<u8>) -> FrameReader {
        FrameReader::new(1024, bytes, false)
    }

    /// Every event in `bytes`, in order, then the error that stopped them.
    fn events(bytes: Vec<u8>) -> (Vec<String>, Option<Broken>) {
        events_of(reader(bytes))
    }

    /// Every event a reader that negotiated permessage-deflate finds in
    /// `bytes`, then the error that stopped them.
    fn inflated_events(bytes: Vec<u8>, max_message: usize) -> (Vec<String>, Option<Broken>) {
        events_of(FrameReader::new(max_message, bytes, true))
    }

    fn events_of(mut reader: FrameReader) -> (Vec<String>, Option<Broken>) {
        let mut seen = Vec::new();
        loop {
            match reader.next_event() {
                Ok(Some(event)) => seen.push(format!("{event:?}")),
                Ok(None) => return (seen, None),
                Err(broken) => return (seen, Some(broken)),
            }
        }
    }

    #[test]
    fn compressed_messages_are_inflated_whole_or_fragmented() {
        let text = "{\"payload\":\"".to_owned() + &"hello ".repeat(50) + "\"}";
        let deflated = crate::deflate::compressed(text.as_bytes());
        let (half, rest) = deflated.split_at(deflated.len() / 2);
        let mut bytes = frame(0xc1, &deflated); // FIN, RSV1, text
        bytes.extend(frame(0x81, b"plain")); // uncompressed messages still pass
        bytes.extend(frame(0x42, half)); // RSV1, binary, not final
        bytes.extend(frame(0x89, b"p")); // a ping between the fragments
        bytes.extend(frame(0x80, rest)); // the last continuation, no RSV1
        let (seen, broken) = inflated_events(bytes, 1024);
        assert_eq!(broken, None);
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(seen[0], format!("{:?}", Event::Text(&text)));
        assert_eq!(seen[1], format!("{:?}", Event::Text("plain")));
        assert_eq!(seen[3], format!("{:?}", Event::Binary(text.as_bytes())));
    }

    #[test]
    fn compression_rules_are_enforced() {
        let deflated = crate::deflate::compressed(b"hello");
        // RSV1 without the extension, on a continuation, on a control
        // frame; RSV2 and RSV3 always.
        assert_eq!(events(frame(0xc1, &deflated)).1, Some(Broken::Protocol));
        let mut continued = frame(0x41, &deflated[..1]);
        continued.extend(frame(0xc0, &deflated[1..]));
        assert_eq!(inflated_events(continued, 1024).1, Some(Broken::Protocol));
        assert_eq!(inflated_events(frame(0xc9, b""), 1024).1, Some(Broken::Protocol));
        assert_eq!(inflated_events(frame(0xa1, &deflated), 1024).1, Some(Broken::Protocol));
        assert_eq!(inflated_events(frame(0x91, &deflated), 1024).1, Some(Broken::Protocol));
        // Data that does not inflate is 1007.
        let (_, broken) = inflated_events(frame(0xc1, &[0xff, 0xff, 0xff]), 1024);
        assert_eq!(broken, Some(Broken::Inflate));
        assert_eq!(Broken::Inflate.close_reason().code, 1007);
        // Text that inflates to invalid UTF-8 is 1007 too.
        let (_, broken) = inflated_events(frame(0xc1, &crate::deflate::compressed(&[0xc3, 0x28])), 1024);
        assert_eq!(broken, Some(Broken::Utf8));
    }

    #[test]
    fn a_compressed_message_that_inflates_past_the_limit_is_1009() {
        // 1 MiB of zeros compresses to about a kilobyte: a small frame that
        // must not become a large allocation.
        let bomb = crate::deflate::compressed(&vec![0; 1 << 20]);
        assert!(bomb.len() < 8 * 1024, "{}", bomb.len());
        let (seen, broken) = inflated_events(frame(0xc2, &bomb), 64 * 1024);
        assert!(seen.is_empty());
        assert_eq!(broken, Some(Broken::TooLarge));
        // The same split into fragments.
        let (first, rest) = bomb.split_at(10);
        let mut fragmented = frame(0x42, first);
        fragmented.extend(frame(0x80, rest));
        assert_eq!(inflated_events(fragmented, 64 * 1024).1, Some(Broken::TooLarge));
        // Exactly the limit inflates.
        let at_limit = crate::deflate::compressed(&vec![0; 64 * 1024]);
        let (seen, broken) = inflated_events(frame(0xc2, &at_limit), 64 * 1024);
        assert_eq!((seen.len(), broken), (1, None));
    }

    #[test]
    fn unmasks_every_length_and_alignment() {
        // Every split between 32-byte blocks, words and the byte tail.
        for len in (0..=100).chain([125, 126, 300, 65_536, 65_539]) {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut masked: Vec<u8> = payload.iter().zip(MASK.iter().cycle()).map(|(b, k)| b ^ k).collect();
            mask(&mut masked, MASK);
            assert_eq!(masked, payload, "length {len}");
        }
    }

    #[test]
    fn reads_frames_of_each_length_form() {
        for len in [0, 125, 126, 1000] {
            let text = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let mut reader = FrameReader::new(70_000, frame(0x81, text.as_bytes()), false);
            assert_eq!(reader.next_event(), Ok(Some(Event::Text(&text))));
            assert_eq!(reader.next_event(), Ok(None));
        }
        let big = vec![7u8; 65_536];
        let mut reader = FrameReader::new(70_000, frame(0x82, &big), false);
        assert_eq!(reader.next_event(), Ok(Some(Event::Binary(&big))));
    }

    #[test]
    fn several_frames_in_one_read_come_out_in_order() {
        let mut bytes = frame(0x81, b"one");
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x8a, b""));
        bytes.extend(frame(0x82, &[1, 2]));
        bytes.extend(frame(0x81, b"two"));
        let (seen, broken) = events(bytes);
        assert_eq!(seen, ["Text(\"one\")", "Ping([112])", "Pong", "Binary([1, 2])", "Text(\"two\")"]);
        assert_eq!(broken, None);
    }

    #[test]
    fn a_cut_frame_waits_for_the_rest_at_every_cut() {
        let whole = frame(0x81, "a frame cut anywhere ✓".as_bytes());
        for cut in 0..whole.len() {
            let mut reader = reader(whole[..cut].to_vec());
            assert_eq!(reader.next_event(), Ok(None), "cut at {cut}");
            reader.buf.extend_from_slice(&whole[cut..]);
            assert_eq!(reader.next_event(), Ok(Some(Event::Text("a frame cut anywhere ✓"))), "cut at {cut}");
        }
    }

    #[test]
    fn fragments_are_assembled_with_control_frames_between_them() {
        let mut bytes = frame(0x01, "hé".as_bytes()[..2].as_ref());
        bytes.extend(frame(0x89, b"mid"));
        // The second fragment completes the "é" cut by the first.
        bytes.extend(frame(0x00, &"hé".as_bytes()[2..]));
        bytes.extend(frame(0x80, b"llo"));
        let (seen, broken) = events(bytes);
        assert_eq!(seen, ["Ping([109, 105, 100])", "Text(\"héllo\")"]);
        assert_eq!(broken, None);
        let mut bytes = frame(0x02, &[1]);
        bytes.extend(frame(0x80, &[2]));
        assert_eq!(events(bytes), (vec!["Binary([1, 2])".to_owned()], None));
    }

    #[test]
    fn protocol_violations_are_1002() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        let mut stray_continuation = frame(0x80, b"x");
        stray_continuation.truncate(2);
        let mut text_inside_fragments = frame(0x01, b"a");
        text_inside_fragments.extend(frame(0x81, b"b"));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("reserved bit 1", frame(0xc1, b"x")),
            ("reserved bit 3", frame(0x91, b"x")),
            ("reserved opcode 3", frame(0x83, b"")),
            ("reserved opcode 11", frame(0x8b, b"")),
            ("unmasked", unmasked),
            ("fragmented ping", frame(0x09, b"")),
            ("ping over 125 bytes", frame(0x89, &[0; 126])),
            ("continuation without a start", frame(0x80, b"x")),
            ("text inside a fragmented message", text_inside_fragments),
            ("one-byte close payload", frame(0x88, &[3])),
            ("64-bit length with the top bit set", {
                let mut f = vec![0x82, 0x80 | 127];
                f.extend_from_slice(&(1u64 << 63).to_be_bytes());
                f
            }),
        ];
        for (what, bytes) in cases {
            assert_eq!(events(bytes).1, Some(Broken::Protocol), "{what}");
        }
        // Decided from the first two bytes: no need to wait for the payload.
        assert_eq!(events(frame(0xc1, &[0; 500])[..2].to_vec()).1, Some(Broken::Protocol));
        assert_eq!(events(stray_continuation).1, None, "two bytes of a valid header wait for more");
    }

    #[test]
    fn a_text_frame_is_accepted_exactly_when_std_accepts_its_utf8() {
        let pieces: [&[u8]; 12] = [
            b"a",
            "\u{e9}".as_bytes(),
            "\u{20ac}".as_bytes(),
            "\u{1d11e}".as_bytes(),
            b"\xc0\xaf",         // overlong
            b"\xed\xa0\x80",     // a surrogate
            b"\xf4\x90\x80\x80", // above U+10FFFF
            b"\xe2\x82",         // cut short
            b"\x80",             // a lone continuation byte
            b"\xff",
            b"\xf0\x9f\x98", // cut short, four-byte form
            b"\x00\x7f",     // ASCII edges
        ];
        // Before, across and after the validator's 32- and 64-byte blocks.
        for lead in 0..140 {
            for piece in pieces {
                for trail in [0, 1, 7, 70] {
                    let mut bytes = vec![b'x'; lead];
                    bytes.extend_from_slice(piece);
                    bytes.extend(std::iter::repeat_n("\u{e9}".as_bytes(), trail).flatten());
                    let std_says = std::str::from_utf8(&bytes).is_ok();
                    assert_eq!(text(&bytes).is_ok(), std_says, "{bytes:?}");
                    if std_says {
                        assert_eq!(text(&bytes).unwrap().as_bytes(), &bytes[..]);
                    }
                }
            }
        }
    }

    #[test]
    fn invalid_utf8_is_1007_and_fails_at_the_fragment_that_breaks_it() {
        assert_eq!(events(frame(0x81, &[b'a', 0xff])).1, Some(Broken::Utf8));
        // The first fragment is already invalid: no need for the rest.
        let (seen, broken) = events(frame(0x01, &[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xf4, 0x90]));
        assert_eq!((seen.len(), broken), (0, Some(Broken::Utf8)));
        // A character cut at the end of a fragment is not an error yet...
        let cut = frame(0x01, &[b'a', 0xe2, 0x82]);
        assert_eq!(events(cut.clone()).1, None);
        // ...but one that never completes is, at the end of the message.
        let mut never = cut;
        never.extend(frame(0x80, b""));
        assert_eq!(events(never).1, Some(Broken::Utf8));
        let mut reason = vec![0x03, 0xe8];
        reason.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(events(frame(0x88, &reason)).1, Some(Broken::Utf8), "close reason");
    }

    #[test]
    fn over_the_limit_is_1009_from_the_header_alone() {
        let mut header_only = frame(0x82, &[0; 1025]);
        header_only.truncate(4);
        assert_eq!(events(header_only).1, Some(Broken::TooLarge));
        let mut assembled = frame(0x01, &[b'a'; 600]);
        assembled.extend(frame(0x80, &[b'a'; 600]));
        assert_eq!(events(assembled).1, Some(Broken::TooLarge));
        assert_eq!(events(frame(0x81, &[b'a'; 1024])).1, None, "exactly the limit is allowed");
    }

    #[test]
    fn close_replies_echo_allowed_codes_and_answer_others_with_1002() {
        let close = |code: u16| {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(b"bye");
            let mut reader = reader(frame(0x88, &payload));
            match reader.next_event() {
                Ok(Some(Event::Close(reply))) => reply,
                other => panic!("code {code}: {other:?}"),
            }
        };
        for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 3999, 4000, 4999] {
            assert_eq!(close(code), Some(code));
        }
        for code in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65_535] {
            assert_eq!(close(code), Some(1002), "code {code}");
        }
        assert_eq!(events(frame(0x88, b"")).0, ["Close(None)"]);
    }

    /// Runs the reader over `bytes` delivered in pieces cut at `cuts` (as
    /// separate reads would), returning the events and the error, if any.
    fn events_in_pieces(bytes: &[u8], cuts: &[usize], max_message: usize) -> (Vec<String>, Option<Broken>) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(bytes.len());
        points.sort_unstable();
        let mut reader = FrameReader::new(max_message, Vec::new(), false);
        let (mut seen, mut from) = (Vec::new(), 0);
        for to in points {
            reader.buf.extend_from_slice(&bytes[from..to]);
            from = to;
            loop {
                match reader.next_event() {
                    Ok(Some(event)) => seen.push(format!("{event:?}")),
                    Ok(None) => break,
                    Err(broken) => return (seen, Some(broken)),
                }
                assert!(reader.start <= reader.buf.len());
            }
            reader.settle();
        }
        (seen, None)
    }

    proptest::proptest! {
        #[test]
        fn no_input_makes_the_reader_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..4),
        ) {
            let _ = events_in_pieces(&bytes, &cuts, 256);
        }

        #[test]
        fn valid_messages_come_out_whole_however_the_bytes_are_cut(
            messages in proptest::collection::vec(message(), 1..12),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..6),
        ) {
            let (bytes, expected) = encode_messages(&messages);
            let (seen, broken) = events_in_pieces(&bytes, &cuts, 1024);
            proptest::prop_assert_eq!(broken, None);
            proptest::prop_assert_eq!(seen, expected);
        }

        #[test]
        fn corrupted_frames_never_make_the_reader_panic(
            messages in proptest::collection::vec(message(), 1..8),
            flips in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), 1..=255u8),
                1..5,
            ),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..4),
        ) {
            let (mut bytes, _) = encode_messages(&messages);
            for (at, mask) in flips {
                let at = at % bytes.len();
                bytes[at] ^= mask;
            }
            let _ = events_in_pieces(&bytes, &cuts, 1024);
        }
    }

    /// A message for the property tests: text or binary, its text, and
    /// where (and whether) it is split into two fragments.
    fn message() -> impl proptest::strategy::Strategy<Value = (bool, String, u8)> {
        (proptest::prelude::any::<bool>(), "\\PC{0,40}", proptest::prelude::any::<u8>())
    }

    /// The client frames for `messages` and the events they must produce.
    fn encode_messages(messages: &[(bool, String, u8)]) -> (Vec<u8>, Vec<String>) {
        let (mut bytes, mut expected) = (Vec::new(), Vec::new());
        for (as_text, text, split) in messages {
            let payload = text.as_bytes();
            let at = usize::from(*split) % (payload.len() + 1);
            let (opcode, event) = if *as_text {
                (0x1, format!("{:?}", Event::Text(text)))
            } else {
                (0x2, format!("{:?}", Event::Binary(payload)))
            };
            if split % 2 == 0 {
                // Two fragments with a ping between them.
                bytes.extend(frame(opcode, &payload[..at]));
                bytes.extend(frame(0x89, b"p"));
                expected.push(format!("{:?}", Event::Ping(b"p")));
                bytes.extend(frame(0x80, &payload[at..]));
            } else {
                bytes.extend(frame(0x80 | opcode, payload));
            }
            expected.push(event);
        }
        (bytes, expected)
    }

    #[tokio::test]
    async fn reads_across_many_socket_reads_and_keeps_no_buffer_when_idle() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(256);
        let messages: Vec<String> = (0..300).map(|i| format!("message {i} {}", "x".repeat(i % 200))).collect();
        let sent = messages.clone();
        let writer = tokio::spawn(async move {
            for message in &sent {
                client.write_all(&frame(0x81, message.as_bytes())).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(1024, Vec::new(), false);
        let mut got = Vec::new();
        loop {
            while let Some(event) = reader.next_event().unwrap() {
                match event {
                    Event::Text(text) => got.push(text.to_owned()),
                    other => panic!("unexpected {other:?}"),
                }
            }
            reader.settle();
            assert!(reader.buf.capacity() < READ_BYTES, "a read buffer kept between reads");
            if got.len() == messages.len() {
                break;
            }
            assert!(reader.fill(&mut server).await.unwrap(), "closed early");
        }
        assert_eq!(got, messages);
        writer.await.unwrap();
        reader.settle();
        assert_eq!(reader.buf.capacity(), 0, "nothing kept once every frame was handled");
    }

    #[tokio::test]
    async fn a_frame_larger_than_a_read_is_read_whole() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(1024);
        let big = "y".repeat(50_000);
        let bytes = frame(0x81, big.as_bytes());
        let writer = tokio::spawn(async move { client.write_all(&bytes).await.unwrap() });
        let mut reader = FrameReader::new(100_000, Vec::new(), false);
        let text = loop {
            if let Some(Event::Text(text)) = reader.next_event().unwrap() {
                break text.to_owned();
            }
            reader.settle();
            assert!(reader.fill(&mut server).await.unwrap());
        };
        assert_eq!(text, big);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_stops_mid_frame_pins_about_what_it_sent_not_a_read_buffer() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(1024 * 1024);
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let bytes = frame(0x82, &body);
        let cut = 14 + 10_000;
        client.write_all(&bytes[..cut]).await.unwrap();
        let mut reader = FrameReader::new(1_048_576, Vec::new(), false);
        loop {
            assert_eq!(reader.next_event(), Ok(None));
            reader.settle();
            if reader.buf.len() - reader.start == cut {
                break;
            }
            assert!(reader.fill(&mut server).await.unwrap());
        }
        assert!(reader.buf.capacity() <= cut, "{} bytes kept for {cut} received", reader.buf.capacity());
        client.write_all(&bytes[cut..]).await.unwrap();
        let got = loop {
            if let Some(Event::Binary(got)) = reader.next_event().unwrap() {
                break got.to_vec();
            }
            reader.settle();
            assert!(reader.fill(&mut server).await.unwrap());
        };
        assert_eq!(got, body);
    }

    #[tokio::test]
    async fn a_header_alone_does_not_reserve_the_whole_frame() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        // More than a quarter of a read, so the reader keeps its buffer while it waits.
        let mut bytes = frame(0x82, &vec![0; 900_000]);
        bytes.truncate(14 + READ_BYTES / 2);
        client.write_all(&bytes).await.unwrap();
        let mut reader = FrameReader::new(1_048_576, Vec::new(), false);
        for _ in 0..3 {
            assert_eq!(reader.next_event(), Ok(None));
            reader.settle();
            let _ = tokio::time::timeout(std::time::Duration::from_millis(20), reader.fill(&mut server)).await;
        }
        let received = 14 + READ_BYTES / 2;
        assert!(
            reader.buf.capacity() <= 4 * received,
            "reserved {} bytes for {received} received",
            reader.buf.capacity()
        );
    }

    #[tokio::test]
    async fn the_end_of_the_stream_is_reported() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let mut reader = FrameReader::new(1024, Vec::new(), false);
        assert!(!reader.fill(&mut server).await.unwrap());
    }
}
