//! One connection: a reader (this task) and a writer (a spawned task).
//!
//! The reader drives tungstenite over the socket's read half; the writer owns
//! the write half and frames everything the server sends itself (see
//! [`crate::wire`]), including the protocol replies tungstenite produces
//! while reading.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arqon_protocol::{CloseReason, IdGenerator, Outbound, OutboundReceiver, Timestamp, encode, scratch};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::wire::{self, Control, OP_BINARY, OP_PING, OP_TEXT, Replies, Wire};
use crate::{Accepted, Connection, TransportConfig};

/// Whether the client sent anything since the writer's last heartbeat tick;
/// set by the reader, taken by the writer (for idle close). A flag rather
/// than a time: reading the clock for every frame showed in profiles.
#[derive(Default)]
struct Activity(AtomicBool);

impl Activity {
    fn touch(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// Heartbeat intervals without a frame from the client after which the
/// connection counts as dead.
const SILENT_TICKS: u32 = 2;

/// RFC 6455 7.4.1: a text message that is not UTF-8.
const INVALID_UTF8: CloseReason = CloseReason { code: 1007, reason: "invalid UTF-8" };
/// RFC 6455 7.4.1: a frame that breaks the protocol (reserved bits or
/// opcodes, a fragmented or oversized control frame, a stray continuation).
const PROTOCOL_ERROR: CloseReason = CloseReason { code: 1002, reason: "protocol violation" };

/// A payload at least this long is written from its own buffer instead of
/// being copied into the batch buffer.
const LARGE_PAYLOAD: usize = 16 * 1024;

/// The batch buffer is written out when it reaches this size.
const FLUSH_BYTES: usize = 64 * 1024;

/// Frames being gathered for one write: the bytes, and how many frames.
struct Batch {
    buf: Vec<u8>,
    framed: usize,
}

/// How the reader's loop ended.
enum End<S> {
    /// The connection is gone (TCP closed or failed without a handshake).
    Gone,
    /// The client sent a close frame; tungstenite produces the reply.
    ClientClosed,
    /// The client broke a rule that ends the connection with this close.
    Failed(CloseReason),
    /// The writer finished first (the bus closed the connection, shutdown,
    /// idle timeout, or a write failed).
    WriterDone(Option<WriterEnd<S>>),
}

/// Runs a connection to its end. Returns when the client is gone, the bus
/// closed it, or shutdown finished with it.
pub(crate) async fn run_connection<S, C>(
    mut ws: WebSocketStream<Wire<S>>,
    accepted: Accepted<C>,
    config: &TransportConfig,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Connection,
{
    let Accepted { mut conn, frames, close } = accepted;
    // The upgrade is done: from here on the writer owns the write half.
    let Some((io, control)) = ws.get_mut().take_writer() else { return };
    let activity = Arc::new(Activity::default());
    let grace = config.shutdown_grace;
    let writer = Writer {
        io,
        control,
        frames,
        queued: VecDeque::new(),
        close,
        stop,
        activity: Arc::clone(&activity),
        heartbeat: config.heartbeat,
        grace,
        batch: config.write_batch.max(1),
        ids: IdGenerator::new(),
    };
    let mut writer = tokio::spawn(writer.run());
    let end = loop {
        tokio::select! {
            message = ws.next() => {
                activity.touch();
                match message {
                    // Boxed: the handler's future (over 1 KiB for the bus)
                    // would otherwise be part of this loop's state, kept by
                    // every idle connection; one allocation per message is the
                    // price.
                    Some(Ok(Message::Text(text))) => Box::pin(conn.on_text(text.as_str())).await,
                    Some(Ok(Message::Binary(data))) => conn.on_binary(&data),
                    // tungstenite queues the pong itself; any frame counts as life.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) => break End::ClientClosed,
                    None => break End::Gone,
                    Some(Err(e)) => match close_for(&e) {
                        Some(reason) => {
                            tracing::debug!(error = %e, code = reason.code, "closing a connection that broke the protocol");
                            if reason == CloseReason::TOO_LARGE {
                                conn.on_oversize();
                            }
                            break End::Failed(reason);
                        }
                        None => {
                            tracing::debug!(error = %e, "read failed");
                            break End::Gone;
                        }
                    },
                }
            }
            done = &mut writer => break End::WriterDone(done.ok()),
        }
    };
    // Once the connection is ending, the bus forgets the client at once
    // (dropping its handler); only the socket waits for the handshake, for
    // at most the grace period.
    match end {
        // Nothing more can be delivered: stop the writer.
        End::Gone => writer.abort(),
        End::ClientClosed => {
            // Marked before the handler goes, so that the writer, seeing the
            // queue's last sender gone, waits for the close reply.
            ws.get_ref().control().set_peer_closed();
            drop(conn);
            // Reading on makes tungstenite produce its close reply (the
            // writer sends it after what was queued, then stops) and then end
            // the stream, so the server closes TCP after a clean handshake
            // (RFC 6455 7.1.1) instead of dropping it mid-way.
            let closing = async {
                drain(&mut ws).await;
                ws.get_ref().control().set_reply_done();
                let _ = (&mut writer).await;
            };
            if tokio::time::timeout(grace, closing).await.is_err() {
                writer.abort();
            }
        }
        End::Failed(reason) => {
            // The writer flushes what is queued (e.g. the MESSAGE_TOO_LARGE
            // error) and the close frame. The reader is unusable after an
            // error (tokio-tungstenite fuses it), so the close reply is
            // awaited on the raw socket.
            ws.get_ref().control().fail(reason);
            let done = writer.await;
            drop(conn);
            if let Ok(done) = done {
                linger(done.io, &mut ws, grace).await;
            }
        }
        End::WriterDone(Some(done)) if done.sent_close => {
            drop(conn);
            // We started the closing handshake: wait for the client's reply,
            // discarding whatever it sent meanwhile (tungstenite's own reply
            // to it goes nowhere: the writer is done).
            let _ = tokio::time::timeout(grace, drain(&mut ws)).await;
        }
        End::WriterDone(_) => {}
    }
}

/// The close a read error calls for, or `None` when the peer is simply gone.
fn close_for(error: &WsError) -> Option<CloseReason> {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => Some(CloseReason::TOO_LARGE),
        WsError::Utf8(_) => Some(INVALID_UTF8),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(PROTOCOL_ERROR),
        _ => None,
    }
}

/// Reads until the stream ends; tungstenite produces the close reply or
/// completes the closing handshake as it reads.
async fn drain<S>(ws: &mut WebSocketStream<Wire<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while ws.next().await.is_some() {}
}

/// Closes the socket after the close frame went out: shuts down our sending
/// side, then reads and discards until the client closes too (or `grace`
/// elapses). Closing a socket with unread input resets the connection, and a
/// reset can destroy the close frame (and the error before it) on its way to
/// the client; that is what an oversize message leaves behind.
async fn linger<S>(mut io: WriteHalf<S>, ws: &mut WebSocketStream<Wire<S>>, grace: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let read = ws.get_mut().read_half();
    let _ = tokio::time::timeout(grace, async {
        let _ = io.shutdown().await;
        let mut buf = vec![0; 4096];
        while let Ok(1..) = read.read(&mut buf).await {}
    })
    .await;
}

/// What the writer hands back when it stops: the write half (the reader may
/// still need to shut it down) and whether a close frame went out.
struct WriterEnd<S> {
    io: WriteHalf<S>,
    sent_close: bool,
}

struct Writer<S> {
    io: WriteHalf<S>,
    control: Arc<Control>,
    frames: OutboundReceiver,
    /// What the writer took from `frames` and has not written yet.
    queued: VecDeque<Outbound>,
    close: watch::Receiver<Option<CloseReason>>,
    stop: watch::Receiver<bool>,
    activity: Arc<Activity>,
    heartbeat: Duration,
    grace: Duration,
    batch: usize,
    ids: IdGenerator,
}

impl<S> Writer<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(mut self) -> WriterEnd<S> {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let control = Arc::clone(&self.control);
        let mut silent_ticks = 0;
        // A watch whose sender is gone reports so at once, every time: stop
        // polling it (the handler, holding `close`, goes before the writer
        // when the client closes). Shutdown ends the loop either way.
        let mut close_open = true;
        let reason = loop {
            tokio::select! {
                biased;
                changed = self.close.changed(), if close_open => {
                    if changed.is_err() { close_open = false; }
                    if let Some(reason) = *self.close.borrow_and_update() { break reason; }
                }
                _ = self.stop.changed() => break CloseReason::SHUTDOWN,
                replies = control.take() => {
                    if let Some(reason) = replies.failed {
                        break reason;
                    }
                    if replies.peer_closed {
                        return self.answer_close(replies).await;
                    }
                    // Pongs go out between two batches.
                    if self.send_raw(&replies.bytes).await.is_err() { return self.end(false); }
                }
                more = self.frames.recv_all(&mut self.queued) => {
                    if !more {
                        // The client closed (the reader marks that before it
                        // drops the handler): its close reply is on its way.
                        if control.peer_closed() {
                            let replies = control.take().await;
                            return self.answer_close(replies).await;
                        }
                        // Every sender is gone: the bus forgot this client.
                        return self.end(false);
                    }
                    // Woken for a lone frame: let the tasks that feed this
                    // queue run once more first, so that under load one
                    // write (one syscall) carries several frames.
                    if self.queued.len() == 1 {
                        tokio::task::yield_now().await;
                        self.frames.try_recv_all(&mut self.queued);
                    }
                    if self.write_queued().await.is_err() { return self.end(false); }
                }
                _ = ticker.tick() => {
                    silent_ticks = if self.activity.take() { 0 } else { silent_ticks + 1 };
                    if silent_ticks >= SILENT_TICKS {
                        tracing::debug!("closing idle connection");
                        return self.end(false);
                    }
                    let mut ping = Vec::with_capacity(2);
                    wire::put_header(&mut ping, OP_PING, 0);
                    if self.send_raw(&ping).await.is_err() { return self.end(false); }
                }
            }
        };
        let grace = self.grace;
        let finish = async {
            self.frames.close();
            if reason == CloseReason::SLOW_CONSUMER {
                // The client is not reading: what is queued is dropped.
                self.queued.clear();
            } else {
                // Deliver what is already queued (e.g. the MESSAGE_TOO_LARGE
                // error) before closing.
                while self.frames.recv_all(&mut self.queued).await {
                    self.write_queued().await?;
                }
                if reason == CloseReason::SHUTDOWN {
                    let frame = encode::shutdown_event(self.ids.message_id(), Timestamp::now(), "server shutting down");
                    self.queued.push_back(Outbound::Frame(frame));
                    self.write_queued().await?;
                }
            }
            let mut close = Vec::with_capacity(4 + reason.reason.len());
            wire::put_close(&mut close, reason.code, reason.reason);
            // The reader waits for the client's close reply.
            self.send_raw(&close).await
        };
        let sent_close = match tokio::time::timeout(grace, finish).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "close failed");
                false
            }
            Err(_) => {
                tracing::debug!("close frame not written within the grace period");
                false
            }
        };
        self.end(sent_close)
    }

    /// The client closed: what was queued before its close goes out, then
    /// what tungstenite writes until the reader is done (its close reply,
    /// maybe after a pong), then nothing more.
    async fn answer_close(mut self, mut replies: Replies) -> WriterEnd<S> {
        self.frames.close();
        self.frames.try_recv_all(&mut self.queued);
        let control = Arc::clone(&self.control);
        let sent = async {
            self.write_queued().await?;
            loop {
                self.send_raw(&replies.bytes).await?;
                if replies.reply_done {
                    return Ok::<(), std::io::Error>(());
                }
                replies = control.take().await;
            }
        }
        .await
        .is_ok();
        self.end(sent)
    }

    fn end(self, sent_close: bool) -> WriterEnd<S> {
        WriterEnd { io: self.io, sent_close }
    }

    /// Writes bytes that are already framed, and flushes.
    async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Frames everything in `queued` into one buffer and writes it, in
    /// writes of at most `batch` frames or `FLUSH_BYTES`, then flushes.
    async fn write_queued(&mut self) -> std::io::Result<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let mut batch = Batch { buf: scratch::take(), framed: 0 };
        while let Some(item) = self.queued.pop_front() {
            match item {
                Outbound::Frame(frame) => self.put(&mut batch, OP_TEXT, frame.bytes()).await?,
                Outbound::Batch(frames) => {
                    for frame in frames {
                        self.put(&mut batch, OP_TEXT, frame.bytes()).await?;
                    }
                }
                Outbound::Binary(data) => self.put(&mut batch, OP_BINARY, &data).await?,
            }
        }
        wire::write_out(&mut self.io, &mut batch.buf).await?;
        scratch::give(batch.buf);
        self.io.flush().await
    }

    /// Appends one frame to the batch, writing the batch out when it is full;
    /// a large payload is written straight from its own storage after what
    /// the batch holds.
    async fn put(&mut self, batch: &mut Batch, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        wire::put_header(&mut batch.buf, opcode, payload.len());
        if payload.len() < LARGE_PAYLOAD {
            batch.buf.extend_from_slice(payload);
        } else {
            wire::write_out(&mut self.io, &mut batch.buf).await?;
            self.io.write_all(payload).await?;
        }
        batch.framed += 1;
        if batch.framed >= self.batch || batch.buf.len() >= FLUSH_BYTES {
            wire::write_out(&mut self.io, &mut batch.buf).await?;
            batch.framed = 0;
        }
        Ok(())
    }
}
