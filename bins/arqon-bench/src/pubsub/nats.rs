//! nats-server as the peer (`--peer nats`): the same load, payloads and
//! lean reader against nats-server's WebSocket listener, so that a
//! comparison is measured on the same machine on the same day.
//!
//! NATS's text protocol rides in WebSocket frames, and an operation may span
//! frames: a subscriber feeds each frame's bytes to a [`Parser`] and takes
//! whole operations out. A subscription is in place once a `PING` sent after
//! the `SUB` is answered (the server handles a connection's operations in
//! order). Payloads are the bare benchmark payloads
//! ([`MessageWriter::bare`](crate::frame::MessageWriter::bare)), the same size
//! as the bus's; the subject is `ROOM.CHANNEL`.

use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Reads, Ready, Run, SubResult, announce, setup_slot};
use crate::client::SetupError;
use crate::frame::stamp_payload;
use crate::lean::{Event, LeanWs};

/// `CONNECT` options: no `+OK` per operation, no echo of a client's own
/// messages (publishers do not subscribe, so it changes nothing measured).
const CONNECT: &str = "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":false}\r\n";

/// The subject the run's traffic goes to.
pub(super) fn subject(room: &str, channel: &str) -> String {
    format!("{room}.{channel}")
}

/// Writes the `PUB` operation carrying `payload` to `subject` into `out`
/// (cleared first).
pub(super) fn publish(subject: &str, payload: &str, out: &mut String) {
    out.clear();
    // Writing into a String cannot fail.
    let _ = write!(out, "PUB {subject} {}\r\n{payload}\r\n", payload.len());
}

/// One operation from the server.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// `MSG`: its payload is `parser.bytes(range)`.
    Msg(Range<usize>),
    Ping,
    Pong,
    /// `INFO` or `+OK`: nothing to do.
    Info,
    /// `-ERR` with its text.
    Err(String),
}

/// Whole operations out of a byte stream that arrives in pieces.
#[derive(Debug, Default)]
pub(super) struct Parser {
    buf: Vec<u8>,
    start: usize,
}

impl Parser {
    /// Appends bytes read from the server.
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The payload of a [`Op::Msg`] taken since the last [`Self::feed`].
    pub(super) fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// The next whole operation; `Ok(None)` until more bytes arrive, `Err`
    /// for bytes that are not the NATS protocol.
    pub(super) fn next(&mut self) -> Result<Option<Op>, String> {
        let rest = &self.buf[self.start..];
        let Some(newline) = rest.iter().position(|&b| b == b'\n') else { return Ok(None) };
        if newline == 0 || rest[newline - 1] != b'\r' {
            return Err("a line not ended by CRLF".to_owned());
        }
        let line = &rest[..newline - 1];
        let after_line = self.start + newline + 1;
        if let Some(args) = line.strip_prefix(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let size = args
                .rsplit(|&b| b == b' ')
                .next()
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("MSG without a size: {}", String::from_utf8_lossy(line)))?;
            let end = after_line + size;
            if self.buf.len() < end + 2 {
                return Ok(None);
            }
            if &self.buf[end..end + 2] != b"\r\n" {
                return Err("a MSG payload not followed by CRLF".to_owned());
            }
            self.start = end + 2;
            return Ok(Some(Op::Msg(after_line..end)));
        }
        let op = match line {
            b"PING" => Op::Ping,
            b"PONG" => Op::Pong,
            b"+OK" => Op::Info,
            _ if line.starts_with(b"INFO ") => Op::Info,
            _ if line.starts_with(b"-ERR") => Op::Err(String::from_utf8_lossy(line).into_owned()),
            _ => return Err(format!("unknown operation: {}", String::from_utf8_lossy(line))),
        };
        self.start = after_line;
        Ok(Some(op))
    }
}

/// Connects client number `index`, sends `CONNECT` (and `SUB` to `subject`
/// for a subscriber) and waits for the `PONG` that shows the server has
/// handled them; all within the run's set-up limit.
pub(super) async fn open(run: &Run, index: usize, subject: Option<&str>) -> Result<(LeanWs, Parser), SetupError> {
    let _permit = setup_slot(run).await?;
    let setup = async {
        let mut ws = run.endpoint_for(index, subject.is_some()).connect_lean(index).await?;
        let mut hello = CONNECT.to_owned();
        if let Some(subject) = subject {
            let _ = write!(hello, "SUB {subject} 1\r\n");
        }
        hello.push_str("PING\r\n");
        ws.send_text(&hello).await.map_err(|e| SetupError::new("WRITE_FAILED", e))?;
        let mut parser = Parser::default();
        loop {
            match parser.next().map_err(|e| SetupError::new("NATS_PROTOCOL", e))? {
                Some(Op::Pong) => return Ok((ws, parser)),
                Some(Op::Err(text)) => return Err(SetupError::new("NATS_ERR", text)),
                Some(Op::Ping) => ws.send_text("PONG\r\n").await.map_err(|e| SetupError::new("WRITE_FAILED", e))?,
                Some(Op::Msg(_) | Op::Info) => {}
                None => match ws.next().await {
                    Ok(Event::Binary(range) | Event::Text(range)) => parser.feed(ws.reader.bytes(range)),
                    Ok(Event::Close(code)) => {
                        return Err(SetupError::new(format!("CLOSE_{code}"), "closed during set-up"));
                    }
                    Ok(Event::Eof) => return Err(SetupError::new("CLOSED", "connection closed during set-up")),
                    Ok(Event::Ping(_) | Event::Pong) => {}
                    Err(e) => return Err(SetupError::new("READ_FAILED", e)),
                },
            }
        }
    };
    tokio::time::timeout(run.setup_limit, setup)
        .await
        .unwrap_or_else(|_| Err(SetupError::new("SETUP_TIMEOUT", "set-up")))
}

/// A lean subscriber of the run's subject: every `MSG` checked and timed as
/// the bus's deliveries are.
pub(super) async fn subscriber(
    run: Arc<Run>,
    index: usize,
    ready: Ready,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let mut result = SubResult::new(run.publishers, run.messages);
    let subject = subject(&run.room, &run.channel);
    let Some((mut ws, mut parser)) = announce(&run, index, &ready, open(&run, index, Some(&subject)).await).await
    else {
        return result;
    };
    let mut complete = false;
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    let mut reads = Reads::new(true);
    'frames: while let Some((range, now)) = reads.next(&mut ws, &mut stopped, &run, &mut result, index).await {
        parser.feed(ws.reader.bytes(range));
        loop {
            match parser.next() {
                Ok(Some(Op::Msg(payload))) => match stamp_payload(parser.bytes(payload)) {
                    Some(stamp) => result.count(&run, index, stamp, now, &mut complete),
                    None => result.error("FOREIGN_MESSAGE"),
                },
                Ok(Some(Op::Ping)) => {
                    if ws.send_text("PONG\r\n").await.is_err() {
                        result.error("WRITE_FAILED");
                        break 'frames;
                    }
                }
                Ok(Some(Op::Err(text))) => {
                    eprintln!("subscriber {index}: {text}");
                    result.error("NATS_ERR");
                }
                Ok(Some(Op::Pong | Op::Info)) => {}
                Ok(None) => break,
                Err(e) => {
                    eprintln!("subscriber {index}: {e}");
                    result.error("NATS_PROTOCOL");
                    break 'frames;
                }
            }
        }
    }
    if !complete {
        run.flow.gone(index);
    }
    result.wire_bytes = ws.reader.wire_bytes();
    result
}

/// Counts the `-ERR`s in what nats-server sent a publisher.
pub(super) fn errors_in(bytes: &[u8]) -> usize {
    bytes.windows(4).filter(|w| *w == b"-ERR").count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(parser: &mut Parser) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(op) = parser.next().unwrap() {
            out.push(match op {
                Op::Msg(range) => format!("MSG {}", String::from_utf8_lossy(parser.bytes(range))),
                other => format!("{other:?}"),
            });
        }
        out
    }

    #[test]
    fn operations_split_anywhere_come_out_whole() {
        let stream = b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG bench.c 1 5\r\nhe\r\no\r\nMSG bench.c 1 reply.to 0\r\n\r\n+OK\r\n-ERR 'Slow Consumer'\r\nPONG\r\n";
        let expected = ["Info", "Ping", "MSG he\r\no", "MSG ", "Info", "Err(\"-ERR 'Slow Consumer'\")", "Pong"];
        for cut in 0..stream.len() {
            let mut parser = Parser::default();
            parser.feed(&stream[..cut]);
            let mut seen = ops(&mut parser);
            parser.feed(&stream[cut..]);
            seen.extend(ops(&mut parser));
            assert_eq!(seen, expected, "cut at {cut}");
        }
    }

    #[test]
    fn what_is_not_the_protocol_is_an_error() {
        for bad in [&b"HELLO\r\n"[..], b"PING\n", b"MSG bench.c 1 x\r\n", b"MSG bench.c 1 2\r\nabcd\r\n"] {
            let mut parser = Parser::default();
            parser.feed(bad);
            assert!(parser.next().is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_publish_carries_its_payload_and_size() {
        let mut out = String::new();
        publish("bench.c", r#"{"x":"","p":1,"s":2,"t":3}"#, &mut out);
        assert_eq!(out, "PUB bench.c 26\r\n{\"x\":\"\",\"p\":1,\"s\":2,\"t\":3}\r\n");
        assert_eq!(errors_in(b"-ERR 'a'\r\nPING\r\n-ERR 'b'\r\n"), 2);
    }
}
