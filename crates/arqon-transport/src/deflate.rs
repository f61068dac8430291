//! permessage-deflate (RFC 7692): negotiating it during the upgrade,
//! compressing what the server sends and inflating what a client sends.
//!
//! No compression state outlives a message, so that an idle connection that
//! negotiated compression costs no more memory than one that did not: the
//! server answers every offer with `server_no_context_takeover` and
//! `client_no_context_takeover`, and compresses and inflates with one
//! compressor and one inflater per thread, reset for each message. That is
//! also what lets a frame delivered to many clients be compressed once: its
//! compressed form does not depend on what the connection sent before, so it
//! is kept with the frame ([`Frame::compressed`]) and every receiver writes
//! the same bytes.
//!
//! A client that limits the server's window (`server_max_window_bits` below
//! 15, which browsers never do) gets frames Huffman-coded without
//! back-references, valid for any window, compressed for it alone.

use std::cell::RefCell;

use arqon_protocol::Frame;
use miniz_oxide::deflate::core::{
    CompressionStrategy, CompressorOxide, TDEFLFlush, TDEFLStatus, compress, create_comp_flags_from_zip_params,
};
use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

use crate::frames::Broken;

/// The extension's registered name.
const NAME: &str = "permessage-deflate";

/// What a sync flush ends with, which the sender removes and the receiver
/// puts back (RFC 7692 7.2.1, 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The inflated buffer grows by at most this at a time, so that a frame
/// that inflates hugely is stopped at the size limit, not allocated.
const INFLATE_STEP: usize = 64 * 1024;

/// Compression settings of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// Whether permessage-deflate is accepted when a client offers it.
    /// Default: true.
    pub enabled: bool,
    /// Frames shorter than this are sent uncompressed even to a client that
    /// negotiated compression: below it deflate saves too little to pay for
    /// the work. Default: 512 bytes (see docs/performance.md).
    pub min_bytes: usize,
    /// deflate level, 1 (fastest) to 9 (smallest). Default: 1.
    pub level: u8,
}

impl Default for Compression {
    fn default() -> Self {
        Compression { enabled: true, min_bytes: 512, level: 1 }
    }
}

/// What was agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// The client limited the server's window: no back-references.
    narrow_window: bool,
    min_bytes: usize,
    level: u8,
}

impl Deflate {
    /// Whether a message of `len` bytes goes out compressed.
    pub(crate) fn applies_to(&self, len: usize) -> bool {
        len >= self.min_bytes
    }

    /// Whether this client takes the compressed form every receiver shares
    /// ([`frame`](Self::frame)); a narrow-window client's is its own.
    pub(crate) fn shares_frames(&self) -> bool {
        !self.narrow_window
    }

    /// A shared frame's compressed payload: made once per frame and kept
    /// with it. Only for clients that [share](Self::shares_frames) it.
    pub(crate) fn frame<'a>(&self, frame: &'a Frame) -> &'a [u8] {
        let level = self.level;
        frame.compressed(|bytes| {
            let mut out = Vec::new();
            compress_message(bytes, &mut out, level, false);
            out.into_boxed_slice()
        })
    }

    /// Compresses one message into `out` (cleared first).
    pub(crate) fn compress_into(&self, message: &[u8], out: &mut Vec<u8>) {
        out.clear();
        compress_message(message, out, self.level, self.narrow_window);
    }
}

/// Chooses the first offer in the request's `Sec-WebSocket-Extensions`
/// headers that the server can honour, and the response header value that
/// accepts it; `None` when compression is off or nothing acceptable was
/// offered (the connection then runs uncompressed).
pub(crate) fn negotiate<'a>(
    offers: impl IntoIterator<Item = &'a str>,
    settings: &Compression,
) -> Option<(Deflate, String)> {
    if !settings.enabled {
        return None;
    }
    let level = settings.level.clamp(1, 9);
    offers.into_iter().flat_map(|value| value.split(',')).find_map(|offer| {
        let server_window = accept_offer(offer)?;
        let mut response = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = server_window {
            response.push_str(&format!("; server_max_window_bits={bits}"));
        }
        let narrow_window = server_window.is_some_and(|bits| bits < 15);
        Some((Deflate { narrow_window, min_bytes: settings.min_bytes, level }, response))
    })
}

/// One offer, if it is permessage-deflate with valid parameters: the
/// server window the client asked for, if it asked.
fn accept_offer(offer: &str) -> Option<Option<u8>> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen = Vec::new();
    let mut server_window = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            // A parameter given twice makes the offer invalid (RFC 7692 7).
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(value)) => server_window = Some(window_bits(value)?),
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(value)) => {
                window_bits(value)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(server_window)
}

/// A window size parameter: a decimal 8 to 15, no leading zero.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// A compressor and the flags it was made with.
type Compressor = (u32, Box<CompressorOxide>);

thread_local! {
    /// The thread's compressors (full window, and Huffman-only), made on
    /// first use, each with the flags it was made with.
    static COMPRESSORS: RefCell<[Option<Compressor>; 2]> = const { RefCell::new([None, None]) };
    /// The thread's inflater, made on first use.
    static INFLATER: RefCell<Option<Box<DecompressorOxide>>> = const { RefCell::new(None) };
}

/// Appends `message` compressed as one permessage-deflate message (sync
/// flush, its tail removed).
fn compress_message(message: &[u8], out: &mut Vec<u8>, level: u8, huffman_only: bool) {
    COMPRESSORS.with_borrow_mut(|compressors| {
        let strategy = if huffman_only { CompressionStrategy::HuffmanOnly } else { CompressionStrategy::Default };
        let flags = create_comp_flags_from_zip_params(i32::from(level), -15, strategy as i32);
        let slot = &mut compressors[usize::from(huffman_only)];
        let compressor = match slot {
            Some((made_with, compressor)) if *made_with == flags => {
                compressor.reset();
                compressor
            }
            _ => &mut slot.insert((flags, Box::new(CompressorOxide::new(flags)))).1,
        };
        let start = out.len();
        out.reserve(message.len() / 2 + 64);
        let mut input = message;
        loop {
            let at = out.len();
            if out.capacity() - at < 64 {
                out.reserve(out.capacity() - start);
            }
            out.resize(out.capacity(), 0);
            let (status, read, written) = compress(compressor, input, &mut out[at..], TDEFLFlush::Sync);
            out.truncate(at + written);
            input = &input[read..];
            // Done once all input is in and the sync flush's empty block
            // is out. A call that only hands over output held back by the
            // previous one (its buffer was full) leaves room in ours but
            // has not flushed yet: it must be called again.
            let room_left = out.len() < out.capacity();
            let flushed = out[start..].ends_with(&TAIL);
            let stuck = input.is_empty() && written == 0;
            if status != TDEFLStatus::Okay || (input.is_empty() && room_left && flushed) || stuck {
                break;
            }
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() == start {
            // An empty message compresses to one empty block (RFC 7692 7.2.3.6).
            out.push(0x00);
        }
    });
}

/// Inflates one compressed message into `out` (cleared first), failing with
/// [`Broken::TooLarge`] as soon as it would exceed `limit` bytes and with
/// [`Broken::Inflate`] if it is not valid deflate data.
///
/// The output is one growing buffer (miniz's non-wrapping mode), so that a
/// back-reference is checked against what this message produced: the
/// thread's inflater serves every connection of the thread, and a crafted
/// message must not reach into another's data. Resetting the inflater is
/// then only a state change, not a 32 KiB window to clear.
pub(crate) fn inflate_message(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), Broken> {
    out.clear();
    let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | inflate_flags::TINFL_FLAG_HAS_MORE_INPUT;
    INFLATER.with_borrow_mut(|inflater| {
        let inflater = inflater.get_or_insert_with(|| Box::new(DecompressorOxide::new()));
        inflater.init();
        let mut written = 0;
        for input in [data, &TAIL[..]] {
            let mut read = 0;
            loop {
                if written == out.len() {
                    // One byte past the limit is enough to know it is exceeded.
                    let grown = (limit + 1).min(written.saturating_mul(2).max(4096)).min(written + INFLATE_STEP);
                    if grown <= written {
                        return Err(Broken::TooLarge);
                    }
                    out.resize(grown, 0);
                }
                let (status, used, produced) = decompress(inflater, &input[read..], out, written, flags);
                read += used;
                written += produced;
                if written > limit {
                    return Err(Broken::TooLarge);
                }
                match status {
                    // A final block: whatever follows is not part of it.
                    TINFLStatus::Done => {
                        out.truncate(written);
                        return Ok(());
                    }
                    TINFLStatus::NeedsMoreInput => break,
                    TINFLStatus::HasMoreOutput => {}
                    _ => return Err(Broken::Inflate),
                }
            }
        }
        out.truncate(written);
        Ok(())
    })
}

/// `message` as a client would compress it, for the reader's tests.
#[cfg(test)]
pub(crate) fn compressed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    compress_message(message, &mut out, 1, false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Compression {
        Compression { enabled: true, min_bytes: 0, level: 1 }
    }

    fn accepted(offers: &[&str]) -> Option<String> {
        negotiate(offers.iter().copied(), &settings()).map(|(_, response)| response)
    }

    #[test]
    fn offers_are_accepted_with_no_context_takeover_both_ways() {
        let plain = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        // Chrome and Firefox offer exactly this.
        assert_eq!(accepted(&["permessage-deflate; client_max_window_bits"]).as_deref(), Some(plain));
        assert_eq!(accepted(&["permessage-deflate"]).as_deref(), Some(plain));
        assert_eq!(accepted(&["PerMessage-Deflate; Server_No_Context_Takeover"]).as_deref(), Some(plain));
        assert_eq!(accepted(&["permessage-deflate; client_max_window_bits=\"10\""]).as_deref(), Some(plain));
        assert_eq!(
            accepted(&["permessage-deflate; server_max_window_bits=10"]).as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
            )
        );
    }

    #[test]
    fn the_first_acceptable_offer_wins_and_bad_ones_are_skipped() {
        let offers =
            ["x-webkit-deflate-frame", "permessage-deflate; foo=1, permessage-deflate; server_max_window_bits=15"];
        let (deflate, response) = negotiate(offers, &settings()).unwrap();
        assert!(response.ends_with("server_max_window_bits=15"));
        assert!(!deflate.narrow_window);
        let (deflate, _) = negotiate(["permessage-deflate; server_max_window_bits=8"], &settings()).unwrap();
        assert!(deflate.narrow_window);
        for bad in [
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; unknown",
        ] {
            assert_eq!(accepted(&[bad]), None, "{bad}");
        }
        assert_eq!(accepted(&[]), None);
        let off = Compression { enabled: false, ..settings() };
        assert!(negotiate(["permessage-deflate"], &off).is_none());
    }

    fn round_trip(message: &[u8], narrow_window: bool) -> Vec<u8> {
        let deflate = Deflate { narrow_window, min_bytes: 0, level: 1 };
        let mut compressed = Vec::new();
        deflate.compress_into(message, &mut compressed);
        assert!(!compressed.ends_with(&TAIL) || compressed.len() < 4);
        let mut out = Vec::new();
        inflate_message(&compressed, message.len(), &mut out).unwrap();
        out
    }

    #[test]
    fn messages_of_every_size_survive_a_round_trip() {
        for len in [0, 1, 100, 4096, 70_000, 300_000] {
            let message: Vec<u8> = (0..len).map(|i| b"{\"payload\":\"abc\"}"[i % 17] ^ (i / 1000) as u8).collect();
            assert_eq!(round_trip(&message, false), message, "{len}");
            assert_eq!(round_trip(&message, true), message, "{len} narrow");
        }
    }

    /// Bytes that do not compress: deflate's stored blocks and output larger
    /// than the input.
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Bytes like an 8-bit greyscale image: smooth, noisy, compressing to
    /// about 90%, so that the compressor's output for one message overflows
    /// its own buffer and comes out over several calls.
    fn image(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let row = (i / 512) as u64;
                let col = (i % 512) as u64;
                (100 + (row * 3 + col) % 60 + x % 24) as u8
            })
            .collect()
    }

    #[test]
    fn a_message_whose_output_comes_out_over_several_calls_is_complete() {
        let deflate = Deflate { narrow_window: false, min_bytes: 0, level: 1 };
        for round in 0..40 {
            for len in [65_536, 131_072] {
                // Runs first (consumed fast, little output), noise after
                // (much output): the last input goes in with the output
                // buffer full, and the flush comes a call later.
                let mut message = vec![7u8; len * round / 40];
                message.extend(image(len - message.len()));
                let mut out = Vec::new();
                deflate.compress_into(&message, &mut out);
                // Inflated by miniz's one-shot decoder, independent of ours.
                let mut stream = out.clone();
                stream.extend_from_slice(&[0x00, 0x00, 0xff, 0xff, 0x03, 0x00]);
                let inflated = miniz_oxide::inflate::decompress_to_vec(&stream);
                assert!(inflated.is_ok_and(|bytes| bytes == message), "round {round}, {len} bytes");
            }
        }
    }

    #[test]
    fn incompressible_messages_survive_a_round_trip() {
        for len in [100, 65_535, 65_536, 131_072, 1 << 20] {
            let message = noise(len);
            assert_eq!(round_trip(&message, false), message, "{len}");
            assert_eq!(round_trip(&message, true), message, "{len} narrow");
        }
    }

    #[test]
    fn what_other_compressors_send_is_inflated_whole() {
        // A one-shot stream ending in a final block, at every level.
        for message in [noise(200_000), b"abc".repeat(100_000)] {
            for level in [0, 1, 6, 9] {
                let deflated = miniz_oxide::deflate::compress_to_vec(&message, level);
                let mut out = Vec::new();
                inflate_message(&deflated, message.len(), &mut out).unwrap();
                assert_eq!(out, message, "level {level}");
            }
        }
    }

    #[test]
    fn the_narrow_window_form_has_no_back_references() {
        let message = vec![b'a'; 10_000];
        let deflate = Deflate { narrow_window: false, min_bytes: 0, level: 1 };
        let mut full = Vec::new();
        deflate.compress_into(&message, &mut full);
        let narrow = Deflate { narrow_window: true, ..deflate };
        let mut huffman = Vec::new();
        narrow.compress_into(&message, &mut huffman);
        // One bit per literal at best without back-references; a handful
        // of bytes with them.
        assert!(huffman.len() >= message.len() / 8, "{}", huffman.len());
        assert!(full.len() < 100, "{}", full.len());
    }

    #[test]
    fn a_shared_frame_is_compressed_once() {
        let frame = Frame::from_text(format!("{{\"payload\":\"{}\"}}", "x".repeat(2000)));
        let deflate = Deflate { narrow_window: false, min_bytes: 0, level: 1 };
        let first = deflate.frame(&frame).as_ptr();
        let again = deflate.frame(&frame.clone()).as_ptr();
        assert_eq!(first, again, "the second receiver reuses the first's bytes");
    }

    #[test]
    fn inflating_past_the_limit_stops_at_the_limit() {
        // A bomb: a few hundred bytes that inflate to 100 MB.
        let bomb = vec![b'0'; 100_000_000];
        let mut compressed = Vec::new();
        Deflate { narrow_window: false, min_bytes: 0, level: 9 }.compress_into(&bomb, &mut compressed);
        assert!(compressed.len() < 200_000, "{}", compressed.len());
        let mut out = Vec::new();
        assert_eq!(inflate_message(&compressed, 1_048_576, &mut out), Err(Broken::TooLarge));
        assert!(out.capacity() <= 2 * 1_048_576 + INFLATE_STEP, "{}", out.capacity());
        // Exactly at the limit is fine.
        let mut compressed = Vec::new();
        Deflate { narrow_window: false, min_bytes: 0, level: 1 }.compress_into(&bomb[..1000], &mut compressed);
        assert_eq!(inflate_message(&compressed, 1000, &mut out), Ok(()));
        assert_eq!(out.len(), 1000);
        assert_eq!(inflate_message(&compressed, 999, &mut out), Err(Broken::TooLarge));
    }

    /// What compressing one message costs and saves, by size: the figures
    /// behind the default `min_bytes` (docs/performance.md). Not a timed
    /// test: run it in release with
    /// `cargo test -p arqon-transport --release --lib deflate_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn deflate_cost_by_message_size() {
        const WORDS: [&str; 12] =
            ["the", "order", "shipped", "user", "status", "online", "price", "42", "17.5", "queue", "ok", "room"];
        let head = r#"{"version":1,"id":"arq_01M96W4SKVHCCXC1N2TQ212ZAZ","type":"message","timestamp":"2026-12-06T23:48:35.579Z","room":"chat","channel":"general","from":"arq_01M96W4SKTZCSZJJG687EK1XA4","user":"ada","payload":{"text":""#;
        for size in [256, 512, 1024, 4096, 16384] {
            let mut message = head.to_owned();
            let mut x = 88172645463325252u64;
            while message.len() < size - 3 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                message.push_str(WORDS[(x % 12) as usize]);
                message.push(' ');
            }
            message.truncate(size - 3);
            message.push_str("\"}}");
            let deflate = Deflate { narrow_window: false, min_bytes: 0, level: 1 };
            let mut out = Vec::new();
            let rounds = 20_000;
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                deflate.compress_into(message.as_bytes(), &mut out);
            }
            let per = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
            let mut inflated = Vec::new();
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                inflate_message(&out, usize::MAX - 1, &mut inflated).unwrap();
            }
            let inflate_per = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
            println!(
                "{size:>6} bytes -> {:>5} ({:.0}% saved): deflate {per:.2} us, inflate {inflate_per:.2} us",
                out.len(),
                100.0 * (1.0 - out.len() as f64 / size as f64)
            );
        }
    }

    #[test]
    fn a_message_cannot_reach_into_the_previous_one() {
        // Two messages from one compressor that keeps its window: the second
        // refers back into the first. Inflated alone (as every message is
        // here), it must fail, not return bytes of whatever the thread
        // inflated before.
        let first = b"secret of another connection: 0123456789abcdef".repeat(4);
        let mut out = Vec::new();
        let mut compressor = CompressorOxide::new(create_comp_flags_from_zip_params(6, -15, 0));
        let mut buf = vec![0; 4096];
        let (_, _, n) = compress(&mut compressor, &first, &mut buf, TDEFLFlush::Sync);
        inflate_message(&buf[..n - 4], 10_000, &mut out).unwrap();
        assert_eq!(out, first);
        let (_, _, n) = compress(&mut compressor, &first, &mut buf, TDEFLFlush::Sync);
        assert!(n < 40, "the second message is a back-reference: {n} bytes");
        assert_eq!(inflate_message(&buf[..n - 4], 10_000, &mut out), Err(Broken::Inflate));
    }

    #[test]
    fn garbage_is_not_inflated() {
        let mut out = Vec::new();
        // Block type 3 is reserved.
        assert_eq!(inflate_message(&[0xff, 0xff, 0xff], 1000, &mut out), Err(Broken::Inflate));
        // A valid message followed by a stray byte after its final block is
        // still the message: nothing past a final block is read.
        assert_eq!(inflate_message(&[0x03, 0x00], 1000, &mut out), Ok(()));
        assert!(out.is_empty());
    }
}
