//! One connection: a reader (this task) and a writer (a spawned task).
//!
//! The reader reads the client's frames ([`crate::frames`]) from the socket's
//! read half and hands each message to the handler; the writer owns the
//! write half and frames everything the server sends (see [`crate::wire`]),
//! including the protocol replies the reader queues.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arqon_outbound::{Closing, Outbound, OutboundReceiver, Popped, Recv, SlowCause, Spliced};
use arqon_protocol::{CloseReason, IdGenerator, Timestamp, encode, scratch};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::deflate::Deflate;
use crate::frames::{Broken, Event, FrameReader};
use crate::wire::{self, COMPRESSED, Control, OP_BINARY, OP_PING, OP_TEXT, Replies};
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

/// What [`Writer::append_plain`] stopped at.
enum Next {
    /// The batch is full: write it out.
    Full,
    /// Nothing more is queued.
    Empty,
    /// An item that needs more than appending (compression, a large payload,
    /// a batch of frames, spliced pieces, binary data).
    Item(Outbound),
}

/// How the reader's loop ended.
enum End<S> {
    /// The connection is gone (TCP closed or failed without a handshake).
    Gone,
    /// The client sent a close frame; its reply is queued.
    ClientClosed,
    /// The client sent a frame that ends the connection; the close is queued.
    Failed,
    /// The writer finished first (the bus closed the connection, shutdown,
    /// idle timeout, or a write failed).
    WriterDone(Option<WriterEnd<S>>),
}

/// What handling the frames read so far came to.
enum Handled {
    /// Every complete frame was handled: read more.
    More,
    /// The client sent a close frame; its reply is queued.
    Closed,
    /// The client pings faster than its connection drains.
    Flooded,
}

/// Runs a connection to its end. Returns when the client is gone, the bus
/// closed it, or shutdown finished with it. `early` holds what the client
/// sent after its upgrade request; `deflate`, what was agreed for
/// permessage-deflate, if anything.
pub(crate) async fn run_connection<S, C>(
    mut read: ReadHalf<S>,
    io: WriteHalf<S>,
    early: Vec<u8>,
    accepted: Accepted<C>,
    config: &TransportConfig,
    deflate: Option<Deflate>,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Connection,
{
    let Accepted { mut conn, frames } = accepted;
    let control = Arc::new(Control::default());
    let activity = Arc::new(Activity::default());
    let grace = config.shutdown_grace;
    let writer = Writer {
        io,
        control: Arc::clone(&control),
        frames,
        activity: Arc::clone(&activity),
        heartbeat: config.heartbeat,
        write_timeout: config.write_timeout,
        grace,
        batch: config.write_batch.max(1),
        ids: IdGenerator::new(),
        deflate,
    };
    let mut writer = tokio::spawn(writer.run(stop));
    let mut reader = FrameReader::new(config.max_message_bytes, early, deflate.is_some());
    let end = loop {
        match handle(&mut reader, &mut conn, &control).await {
            Ok(Handled::More) => {}
            Ok(Handled::Closed) => break End::ClientClosed,
            Ok(Handled::Flooded) => break End::Gone,
            Err(broken) => {
                tracing::debug!(error = %broken, "closing a connection that broke the protocol");
                if broken == Broken::TooLarge {
                    conn.on_oversize();
                }
                // Before the handler goes: the writer, seeing the queue's
                // last sender gone, must know that a close is due.
                control.fail(broken.close_reason());
                break End::Failed;
            }
        }
        // No settle() here: a read that finds nothing gives the buffer back
        // itself, and one that finds bytes would only take it again.
        tokio::select! {
            filled = reader.fill(&mut read) => match filled {
                // Any frame counts as life, pongs included.
                Ok(true) => {
                    activity.touch();
                    conn.on_read();
                }
                Ok(false) => break End::Gone,
                Err(e) => {
                    tracing::debug!(error = %e, "read failed");
                    break End::Gone;
                }
            },
            done = &mut writer => break End::WriterDone(done.ok()),
        }
    };
    // Once the connection is ending, the bus forgets the client at once
    // (dropping its handler); only the socket waits for the handshake, for
    // at most the grace period.
    drop(conn);
    match end {
        // Nothing more can be delivered: stop the writer.
        End::Gone => writer.abort(),
        End::ClientClosed => {
            // The writer sends what was queued before the close, then the
            // reply, then stops; the server then closes TCP first, after a
            // clean handshake (RFC 6455 7.1.1).
            if tokio::time::timeout(grace, &mut writer).await.is_err() {
                writer.abort();
            }
        }
        End::Failed => {
            // The writer flushes what is queued (e.g. the MESSAGE_TOO_LARGE
            // error) and the close frame; the client's reply is awaited on
            // the raw socket.
            if let Ok(done) = writer.await {
                linger(done.io, &mut read, grace).await;
            }
        }
        End::WriterDone(Some(done)) if done.sent_close => {
            // We started the closing handshake: wait for the client's reply,
            // discarding whatever it sent meanwhile.
            let _ = tokio::time::timeout(grace, await_close(&mut reader, &mut read)).await;
        }
        End::WriterDone(done) => {
            tracing::debug!(closed = ?done.and_then(|done| done.closed), "the writer ended the connection");
        }
    }
}

/// Hands every complete message read so far to the handler, and queues the
/// replies to control frames.
async fn handle<C: Connection>(reader: &mut FrameReader, conn: &mut C, control: &Control) -> Result<Handled, Broken> {
    while let Some(event) = reader.next_event()? {
        // One read can hold hundreds of messages, each fanned out to queues
        // that only the members' writers drain: give way to them as any
        // tokio resource would (every 128 units by default), so that a burst
        // cannot fill a reading member's queue (slow-consumer close) before
        // its writer runs.
        tokio::task::coop::consume_budget().await;
        match event {
            // Boxed: the handler's future (over 1 KiB for the bus) would
            // otherwise be part of the connection's state, kept by every idle
            // connection; one allocation per frame that waits is the price.
            Event::Text(text) => {
                // Boxed in the same statement: a future held in a local
                // across the await would take room in this one's state.
                let rest = conn.on_text_now(text).map(Box::pin);
                if let Some(rest) = rest {
                    rest.await;
                }
            }
            Event::Binary(data) => conn.on_binary(data),
            // The handler may refuse an over-rate ping; the control limit
            // still cuts off a client that pings faster than it drains.
            Event::Ping(payload) if !conn.on_ping(payload) => {}
            Event::Ping(payload) => {
                if control.pong(payload).is_err() {
                    return Ok(Handled::Flooded);
                }
            }
            Event::Pong => {}
            Event::Close(code) => {
                control.peer_closed(code);
                return Ok(Handled::Closed);
            }
        }
    }
    Ok(Handled::More)
}

/// Reads until the client's close frame (or the end of the stream).
async fn await_close<R: AsyncRead + Unpin>(reader: &mut FrameReader, read: &mut R) {
    loop {
        loop {
            match reader.next_event() {
                Ok(Some(Event::Close(_))) | Err(_) => return,
                Ok(Some(_)) => {}
                Ok(None) => break,
            }
        }
        if !matches!(reader.fill(read).await, Ok(true)) {
            return;
        }
    }
}

/// Closes the socket after the close frame went out: shuts down our sending
/// side, then reads and discards until the client closes too (or `grace`
/// elapses). Closing a socket with unread input resets the connection, and a
/// reset can destroy the close frame (and the error before it) on its way to
/// the client; that is what an oversize message leaves behind.
async fn linger<S>(mut io: WriteHalf<S>, read: &mut ReadHalf<S>, grace: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(grace, async {
        let _ = io.shutdown().await;
        let mut buf = vec![0; 4096];
        while let Ok(1..) = read.read(&mut buf).await {}
    })
    .await;
}

/// What the writer hands back when it stops: the write half (the reader may
/// still need to shut it down), whether a close frame went out, and why the
/// writer closed the connection, if it did.
struct WriterEnd<S> {
    io: WriteHalf<S>,
    sent_close: bool,
    closed: Option<Closing>,
}

/// Polls `wait`, a future over a watch, the first time (registering the
/// task with the watch) and after that only when `moved` says the watch
/// changed.
fn poll_watch<'a, F: Future + Unpin>(
    wait: &'a mut F,
    armed: &'a mut bool,
    moved: impl Fn() -> bool + 'a,
) -> impl Future<Output = F::Output> + 'a {
    std::future::poll_fn(move |cx| {
        if *armed && !moved() {
            return std::task::Poll::Pending;
        }
        *armed = true;
        std::pin::Pin::new(&mut *wait).poll(cx)
    })
}

/// Whether a watch has a value this receiver has not seen (or lost its
/// sender): an atomic read, no lock.
fn moved<T>(seen: &watch::Receiver<T>) -> bool {
    seen.has_changed().unwrap_or(true)
}

/// Why a write did not complete.
#[derive(Debug)]
enum WriteError {
    /// The socket failed.
    Io(std::io::Error),
    /// The socket accepted no byte for the write timeout.
    Stalled,
    /// The bus closed this client as a slow consumer meanwhile: what is left
    /// is not written.
    Evicted,
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}

struct Writer<S> {
    io: WriteHalf<S>,
    control: Arc<Control>,
    frames: OutboundReceiver,
    activity: Arc<Activity>,
    heartbeat: Duration,
    /// Longest a write may wait for the socket to accept a byte; zero: forever.
    write_timeout: Duration,
    grace: Duration,
    batch: usize,
    ids: IdGenerator,
    /// permessage-deflate, when the client negotiated it.
    deflate: Option<Deflate>,
}

impl<S> Writer<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(mut self, mut stop: watch::Receiver<bool>) -> WriterEnd<S> {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let control = Arc::clone(&self.control);
        let mut silent_ticks = 0;
        // Shutdown is watched for the writer's whole life by one future, so
        // the writer registers with the watch once. After that a wake-up (for
        // a frame, mostly) polls it only once its version moved: the watch is
        // shared by every connection, and taking its lock per frame would
        // make it a lock shared by all connections on the hot path. The
        // bus's own close comes through the queue, after what it queued.
        let stop_seen = stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stopped);
        let mut stop_armed = false;
        let closing = loop {
            tokio::select! {
                biased;
                () = poll_watch(&mut stopped, &mut stop_armed, || moved(&stop_seen)) => break Closing::from(CloseReason::SHUTDOWN),
                replies = control.take() => {
                    if let Some(reason) = replies.failed {
                        break Closing::from(reason);
                    }
                    if replies.peer_closed {
                        return self.answer_close(replies).await;
                    }
                    // Pongs go out between two batches.
                    if let Err(e) = self.send_raw(&replies.bytes).await { return self.failed(e).await; }
                }
                recv = self.frames.recv_all() => match recv {
                    Recv::Items => {
                        // Woken for a lone frame: let the tasks that feed this
                        // queue run once more first, so that under load one
                        // write (one syscall) carries several frames.
                        if self.frames.taken() == 1 {
                            tokio::task::yield_now().await;
                            self.frames.try_recv_all();
                        }
                        if let Err(e) = self.write_queued().await { return self.failed(e).await; }
                    }
                    Recv::Closed(closing) => break closing,
                    Recv::Ended => {
                        // The client closed (the reader marks that before it
                        // drops the handler): its close reply is on its way.
                        if control.is_peer_closed() {
                            let replies = control.take().await;
                            return self.answer_close(replies).await;
                        }
                        // Every sender is gone: the bus forgot this client.
                        return self.end(false, None);
                    }
                },
                _ = ticker.tick() => {
                    silent_ticks = if self.activity.take() { 0 } else { silent_ticks + 1 };
                    if silent_ticks >= SILENT_TICKS {
                        // A peer that answers no ping is gone: no close
                        // handshake to wait for.
                        tracing::debug!("closing idle connection");
                        return self.end(false, None);
                    }
                    let mut ping = Vec::with_capacity(2);
                    wire::put_header(&mut ping, OP_PING, 0);
                    if let Err(e) = self.send_raw(&ping).await { return self.failed(e).await; }
                }
            }
        };
        self.close_with(closing).await
    }

    /// Closes the connection with `closing`: delivers what the bus queued
    /// before it (unless the client is a slow consumer: that is dropped),
    /// then the `shutdown` event if it is one, then the close frame, all
    /// within the grace period.
    async fn close_with(mut self, closing: Closing) -> WriterEnd<S> {
        // Later pushes fail; the first reason set wins.
        self.frames.close(closing);
        let grace = self.grace;
        let finish = async {
            if closing.cause.is_none() {
                // Deliver what is already queued (e.g. the MESSAGE_TOO_LARGE
                // error) before closing.
                self.write_queued().await?;
                while self.frames.recv_all().await == Recv::Items {
                    self.write_queued().await?;
                }
                if closing.reason == CloseReason::SHUTDOWN {
                    let frame = encode::shutdown_event(self.ids.message_id(), Timestamp::now(), "server shutting down");
                    self.put_all(&[(OP_TEXT, frame.bytes())]).await?;
                }
            }
            let reason = closing.reason;
            let mut close = Vec::with_capacity(4 + reason.reason.len());
            wire::put_close(&mut close, reason.code, reason.reason);
            // The reader waits for the client's close reply.
            self.send_raw(&close).await
        };
        let sent_close = match tokio::time::timeout(grace, finish).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = ?e, "close failed");
                false
            }
            Err(_) => {
                tracing::debug!("close frame not written within the grace period");
                false
            }
        };
        self.end(sent_close, Some(closing))
    }

    /// A write failed: a stalled socket is a slow consumer (no close frame
    /// can get through it), a bus eviction closes as the bus asked, anything
    /// else means the connection is gone.
    async fn failed(mut self, error: WriteError) -> WriterEnd<S> {
        match error {
            WriteError::Stalled => {
                tracing::debug!("closing a connection whose socket accepted nothing for the write timeout");
                let closing = Closing::slow(SlowCause::WriteTimeout);
                self.frames.close(closing);
                // What the queue says now: the bus may have closed it first.
                let closed = self.frames.closing();
                self.end(false, closed)
            }
            WriteError::Evicted => match self.frames.closing() {
                Some(closing) => self.close_with(closing).await,
                None => self.end(false, None),
            },
            WriteError::Io(e) => {
                tracing::debug!(error = %e, "write failed");
                self.end(false, None)
            }
        }
    }

    /// The client closed: what was queued before its close goes out, then
    /// the replies the reader queued (its close reply last), then nothing.
    async fn answer_close(mut self, replies: Replies) -> WriterEnd<S> {
        // Later pushes fail.
        self.frames.close(CloseReason::NORMAL);
        self.frames.try_recv_all();
        let sent = async {
            self.write_queued().await?;
            self.send_raw(&replies.bytes).await
        }
        .await
        .is_ok();
        self.end(sent, None)
    }

    fn end(self, sent_close: bool, closed: Option<Closing>) -> WriterEnd<S> {
        WriterEnd { io: self.io, sent_close, closed }
    }

    /// Writes `bytes` whole, failing with [`WriteError::Stalled`] when the
    /// socket accepts no byte for the write timeout (PROTOCOL.md section
    /// 8.1): each partial write restarts the clock.
    async fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), WriteError> {
        while !bytes.is_empty() {
            let written = if self.write_timeout.is_zero() {
                self.io.write(bytes).await?
            } else {
                tokio::time::timeout(self.write_timeout, self.io.write(bytes))
                    .await
                    .map_err(|_| WriteError::Stalled)??
            };
            if written == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            bytes = &bytes[written..];
        }
        Ok(())
    }

    /// Flushes (TLS holds bytes back until then), within the write timeout.
    async fn flush(&mut self) -> Result<(), WriteError> {
        if self.write_timeout.is_zero() {
            return Ok(self.io.flush().await?);
        }
        tokio::time::timeout(self.write_timeout, self.io.flush()).await.map_err(|_| WriteError::Stalled)??;
        Ok(())
    }

    /// Writes bytes that are already framed, and flushes.
    async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// Frames everything the writer took from the queue into one buffer and
    /// writes it, in writes of at most `batch` frames or `FLUSH_BYTES`, then
    /// flushes. Each item stops counting against the backlog as it is framed.
    async fn write_queued(&mut self) -> Result<(), WriteError> {
        if self.frames.taken() == 0 {
            return Ok(());
        }
        let mut batch = Batch { buf: scratch::take(), framed: 0 };
        loop {
            let item = match self.append_plain(&mut batch) {
                Next::Full => {
                    self.write_batch(&mut batch).await?;
                    continue;
                }
                Next::Empty => break,
                Next::Item(item) => item,
            };
            match item {
                Outbound::Frame(frame) => self.put_frame(&mut batch, &frame).await?,
                Outbound::Batch(frames) => {
                    for frame in &frames {
                        self.put_frame(&mut batch, frame).await?;
                    }
                }
                Outbound::Binary(data) => self.put_message(&mut batch, OP_BINARY, &data).await?,
                Outbound::Spliced(spliced) => match self.deflate {
                    Some(deflate) if deflate.applies_to(spliced.len()) => {
                        let mut whole = scratch::take();
                        spliced.parts().for_each(|part| whole.extend_from_slice(part));
                        self.put_compressed(&mut batch, deflate, OP_TEXT, &whole).await?;
                        scratch::give(whole);
                    }
                    _ => self.put_spliced(&mut batch, &spliced).await?,
                },
            }
        }
        self.write_out(&mut batch.buf).await?;
        scratch::give(batch.buf);
        self.flush().await
    }

    /// Appends queued frames that go out as they are (uncompressed, smaller
    /// than [`LARGE_PAYLOAD`]) to the batch, with no future per frame: the
    /// common case. Stops when the batch is full, when nothing is queued, or
    /// at the first item that needs more than appending, which it returns.
    fn append_plain(&mut self, batch: &mut Batch) -> Next {
        let deflate = self.deflate;
        let plain = |frame: &arqon_protocol::Frame| {
            frame.len() < LARGE_PAYLOAD && !deflate.is_some_and(|d| d.applies_to(frame.len()))
        };
        loop {
            if self.is_full(batch) {
                return Next::Full;
            }
            // A run's frames are lent, not cloned: copied into the batch.
            let popped = self.frames.pop_with(|popped| {
                let frame = match &popped {
                    Popped::Frame(frame) => *frame,
                    Popped::Item(Outbound::Frame(frame)) => frame,
                    Popped::Item(_) => return Some(popped.into_item()),
                };
                if !plain(frame) {
                    return Some(popped.into_item());
                }
                wire::put_header(&mut batch.buf, OP_TEXT, frame.len());
                batch.buf.extend_from_slice(frame.bytes());
                batch.framed += 1;
                None
            });
            match popped {
                None => return Next::Empty,
                Some(Some(item)) => return Next::Item(item),
                Some(None) => {}
            }
        }
    }

    /// Appends a shared frame: compressed if the client negotiated it and
    /// the frame is long enough, with the compressed bytes every receiver
    /// shares.
    async fn put_frame(&mut self, batch: &mut Batch, frame: &arqon_protocol::Frame) -> Result<(), WriteError> {
        match self.deflate {
            Some(deflate) if deflate.applies_to(frame.len()) && deflate.shares_frames() => {
                self.put(batch, COMPRESSED | OP_TEXT, deflate.frame(frame)).await
            }
            Some(deflate) if deflate.applies_to(frame.len()) => {
                self.put_compressed(batch, deflate, OP_TEXT, frame.bytes()).await
            }
            _ => self.put(batch, OP_TEXT, frame.bytes()).await,
        }
    }

    /// Appends a message for this client alone, compressed if the client
    /// negotiated it and the message is long enough.
    async fn put_message(&mut self, batch: &mut Batch, opcode: u8, payload: &[u8]) -> Result<(), WriteError> {
        match self.deflate {
            Some(deflate) if deflate.applies_to(payload.len()) => {
                self.put_compressed(batch, deflate, opcode, payload).await
            }
            _ => self.put(batch, opcode, payload).await,
        }
    }

    /// Compresses a message for this client alone and appends it.
    async fn put_compressed(
        &mut self,
        batch: &mut Batch,
        deflate: Deflate,
        opcode: u8,
        message: &[u8],
    ) -> Result<(), WriteError> {
        let mut compressed = scratch::take();
        deflate.compress_into(message, &mut compressed);
        let written = self.put(batch, COMPRESSED | opcode, &compressed).await;
        scratch::give(compressed);
        written
    }

    /// Appends one text message made of shared pieces: one header, then each
    /// piece, large ones written straight from their own storage as in
    /// [`put`](Self::put).
    async fn put_spliced(&mut self, batch: &mut Batch, spliced: &Spliced) -> Result<(), WriteError> {
        wire::put_header(&mut batch.buf, OP_TEXT, spliced.len());
        // Whether the message was partly written already: then the batch is
        // ended with it, where a slow-consumer close may stop the writing (a
        // frame's boundary, never inside it).
        let mut wrote = false;
        for part in spliced.parts() {
            if part.len() < LARGE_PAYLOAD {
                batch.buf.extend_from_slice(part);
                if batch.buf.len() >= FLUSH_BYTES {
                    self.write_out(&mut batch.buf).await?;
                    wrote = true;
                }
            } else {
                self.write_out(&mut batch.buf).await?;
                self.write_all(part).await?;
                wrote = true;
            }
        }
        batch.framed += 1;
        if wrote || self.is_full(batch) {
            self.write_batch(batch).await?;
        }
        Ok(())
    }

    /// Frames and writes a few frames that did not come through the queue.
    async fn put_all(&mut self, frames: &[(u8, &[u8])]) -> Result<(), WriteError> {
        let mut batch = Batch { buf: scratch::take(), framed: 0 };
        for (opcode, payload) in frames {
            self.put(&mut batch, *opcode, payload).await?;
        }
        self.write_out(&mut batch.buf).await?;
        scratch::give(batch.buf);
        self.flush().await
    }

    /// Writes the batch buffer whole, then clears it.
    async fn write_out(&mut self, buf: &mut Vec<u8>) -> Result<(), WriteError> {
        self.write_all(buf).await?;
        buf.clear();
        Ok(())
    }

    /// Appends one frame to the batch, writing the batch out when it is full;
    /// a large payload is written straight from its own storage after what
    /// the batch holds.
    async fn put(&mut self, batch: &mut Batch, opcode: u8, payload: &[u8]) -> Result<(), WriteError> {
        wire::put_header(&mut batch.buf, opcode, payload.len());
        if payload.len() < LARGE_PAYLOAD {
            batch.buf.extend_from_slice(payload);
        } else {
            self.write_out(&mut batch.buf).await?;
            self.write_all(payload).await?;
        }
        batch.framed += 1;
        if self.is_full(batch) {
            self.write_batch(batch).await?;
        }
        Ok(())
    }

    /// Whether the batch holds as many frames or bytes as one write takes.
    fn is_full(&self, batch: &Batch) -> bool {
        batch.framed >= self.batch || batch.buf.len() >= FLUSH_BYTES
    }

    /// Writes a full batch out. Between two writes, a slow-consumer close
    /// from the bus stops the writing.
    async fn write_batch(&mut self, batch: &mut Batch) -> Result<(), WriteError> {
        self.write_out(&mut batch.buf).await?;
        batch.framed = 0;
        if self.frames.is_evicted() {
            return Err(WriteError::Evicted);
        }
        Ok(())
    }
}

/// The writer's timing rules under tokio's paused clock: exact instants,
/// no real sleeps. The socket is an in-memory pipe whose far end the test
/// reads, or leaves unread to stall the writer.
#[cfg(test)]
mod tests {
    use arqon_outbound::{Budget, OutboundSender};
    use arqon_protocol::Frame;
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio::task::JoinHandle;

    use super::*;

    const HEARTBEAT: Duration = Duration::from_secs(20);
    const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
    const GRACE: Duration = Duration::from_secs(5);

    struct Harness {
        /// The client's end of the socket.
        client: DuplexStream,
        frames: OutboundSender,
        activity: Arc<Activity>,
        stop: watch::Sender<bool>,
        writer: JoinHandle<WriterEnd<DuplexStream>>,
        started: Instant,
    }

    /// A writer over a pipe that buffers `pipe_bytes` before it stalls.
    fn harness(pipe_bytes: usize, max_backlog: usize) -> Harness {
        let (server, client) = tokio::io::duplex(pipe_bytes);
        let (read, io) = tokio::io::split(server);
        // The read half is not needed: the writer owns only the write half.
        drop(read);
        let (frames, rx) = arqon_outbound::queue(max_backlog, &Budget::unlimited());
        let activity = Arc::new(Activity::default());
        let (stop, stopped) = watch::channel(false);
        let writer = Writer {
            io,
            control: Arc::new(Control::default()),
            frames: rx,
            activity: Arc::clone(&activity),
            heartbeat: HEARTBEAT,
            write_timeout: WRITE_TIMEOUT,
            grace: GRACE,
            batch: 256,
            ids: IdGenerator::new(),
            deflate: None,
        };
        let writer = tokio::spawn(writer.run(stopped));
        Harness { client, frames, activity, stop, writer, started: Instant::now() }
    }

    fn text(bytes: usize) -> Outbound {
        Outbound::Frame(Frame::from_text("x".repeat(bytes)))
    }

    /// Reads one frame's opcode and payload from the client's end.
    async fn read_frame(client: &mut DuplexStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.expect("a frame header");
        let len = match head[1] & 0x7f {
            126 => usize::from(client.read_u16().await.expect("length")),
            127 => usize::try_from(client.read_u64().await.expect("length")).expect("fits"),
            short => usize::from(short),
        };
        let mut payload = vec![0; len];
        client.read_exact(&mut payload).await.expect("the payload");
        (head[0] & 0x0f, payload)
    }

    fn close_code(payload: &[u8]) -> u16 {
        u16::from_be_bytes([payload[0], payload[1]])
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_accepts_nothing_is_closed_after_exactly_the_write_timeout() {
        let h = harness(1024, 0);
        // 64 KiB for a pipe that holds 1 KiB: the write stalls at once.
        h.frames.try_send(text(64 * 1024)).unwrap();
        let end = h.writer.await.unwrap();
        assert_eq!(h.started.elapsed(), WRITE_TIMEOUT);
        assert_eq!(end.closed, Some(Closing::slow(SlowCause::WriteTimeout)));
        assert!(!end.sent_close, "no close frame fits through a stalled socket");
        assert_eq!(h.frames.closing(), Some(Closing::slow(SlowCause::WriteTimeout)), "the bus learns why");
        drop(h.client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_keeps_accepting_is_never_timed_out() {
        let mut h = harness(1024, 0);
        h.frames.try_send(text(64 * 1024)).unwrap();
        // The client reads 512 bytes every 9 s: each partial write restarts
        // the clock, so 128 reads (19 minutes) go by without a close.
        let mut got = 0;
        while got < 64 * 1024 {
            tokio::time::sleep(Duration::from_secs(9)).await;
            // Heartbeats must not close it either: the client is alive.
            h.activity.touch();
            let mut buf = [0u8; 512];
            got += h.client.read(&mut buf).await.unwrap();
        }
        assert!(!h.writer.is_finished());
        assert_eq!(h.frames.closing(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_gets_one_ping_and_is_dropped_at_the_second_heartbeat() {
        let mut h = harness(64 * 1024, 0);
        let (opcode, payload) = read_frame(&mut h.client).await;
        assert_eq!((opcode, payload.len()), (OP_PING, 0));
        assert_eq!(h.started.elapsed(), HEARTBEAT);
        let end = h.writer.await.unwrap();
        assert_eq!(h.started.elapsed(), 2 * HEARTBEAT);
        assert_eq!(end.closed, None);
        assert!(!end.sent_close, "a peer that answers no ping gets no closing handshake");
        let mut rest = Vec::new();
        drop(end);
        h.client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"", "nothing after the ping");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_sends_anything_each_interval_stays() {
        let mut h = harness(64 * 1024, 0);
        for tick in 1..=10u32 {
            h.activity.touch();
            let (opcode, _) = read_frame(&mut h.client).await;
            assert_eq!(opcode, OP_PING);
            assert_eq!(h.started.elapsed(), HEARTBEAT * tick);
        }
        assert!(!h.writer.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_consumer_close_from_the_bus_drops_the_backlog_and_sends_1008() {
        let mut h = harness(64 * 1024, 0);
        h.frames.try_send(text(10)).unwrap();
        assert_eq!(read_frame(&mut h.client).await, (OP_TEXT, vec![b'x'; 10]));
        // The client stops reading; the bus queues more, then gives up on it.
        h.frames.try_send(text(20)).unwrap();
        h.frames.close(Closing::slow(SlowCause::Backlog));
        let end = h.writer.await.unwrap();
        assert_eq!(end.closed, Some(Closing::slow(SlowCause::Backlog)));
        let (opcode, payload) = read_frame(&mut h.client).await;
        assert_eq!(opcode, crate::wire::OP_CLOSE, "the queued frame was dropped, not written");
        assert_eq!(close_code(&payload), 1008);
        assert_eq!(&payload[2..], b"slow consumer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_spliced_message_goes_out_as_one_text_message() {
        let mut h = harness(256 * 1024, 0);
        let items: Box<[Frame]> = (0..3).map(|n| Frame::from_text(format!("{n}").repeat(20_000))).collect();
        let spliced = Spliced { head: Frame::from_text("[\""), items, tail: b"\"]" };
        let expected = spliced.to_frame();
        h.frames.try_send(Outbound::Spliced(Box::new(spliced))).unwrap();
        h.frames.try_send(text(5)).unwrap();
        let (opcode, payload) = read_frame(&mut h.client).await;
        assert_eq!((opcode, payload.len()), (OP_TEXT, expected.len()));
        assert_eq!(payload, expected.bytes());
        assert_eq!(read_frame(&mut h.client).await, (OP_TEXT, vec![b'x'; 5]));
    }

    #[tokio::test(start_paused = true)]
    async fn plain_frames_runs_and_items_that_need_more_go_out_in_queue_order() {
        let mut h = harness(16 * 1024, 0);
        let mut fanout = arqon_outbound::Fanout::new();
        let mut expected = Vec::new();
        // Plain frames past several batches' worth of bytes, a run of a
        // channel's frames (lent to the writer), a payload written straight
        // from its storage, a replay batch, each between plain frames.
        for n in 0..150 {
            let frame = Frame::from_text(format!("{n:04}").repeat(250));
            expected.push(frame.bytes().to_vec());
            h.frames.try_send(Outbound::Frame(frame)).unwrap();
            match n {
                40 => {
                    for m in 0..5 {
                        let frame = Frame::from_text(format!("run {m}"));
                        expected.push(frame.bytes().to_vec());
                        h.frames.try_send_fanout(&fanout.append(frame), 1).unwrap();
                    }
                }
                80 => {
                    let large = Frame::from_text("L".repeat(LARGE_PAYLOAD + 1));
                    expected.push(large.bytes().to_vec());
                    h.frames.try_send(Outbound::Frame(large)).unwrap();
                }
                120 => {
                    let replay: Box<[Frame]> = (0..3).map(|m| Frame::from_text(format!("replay {m}"))).collect();
                    expected.extend(replay.iter().map(|f| f.bytes().to_vec()));
                    h.frames.try_send(Outbound::Batch(replay)).unwrap();
                }
                _ => {}
            }
        }
        for (at, want) in expected.iter().enumerate() {
            let (opcode, payload) = read_frame(&mut h.client).await;
            assert_eq!(opcode, OP_TEXT);
            assert!(payload == *want, "frame {at}: {} bytes, expected {}", payload.len(), want.len());
        }
        assert_eq!(h.frames.backlog_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_consumer_close_stops_a_backlog_of_plain_frames_between_two_writes() {
        slow_consumer_close_stops_a_backlog(|n| Outbound::Frame(Frame::from_text(format!("{n:04}").repeat(250)))).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_consumer_close_stops_a_backlog_of_spliced_messages_between_two_writes() {
        slow_consumer_close_stops_a_backlog(|n| {
            let items: Box<[Frame]> = Box::new([Frame::from_text(format!("{n:04}").repeat(250))]);
            Outbound::Spliced(Box::new(Spliced { head: Frame::from_text("[\""), items, tail: b"\"]" }))
        })
        .await;
    }

    /// About 300 KB of 1 KB items, taken at once (several writes of 64 KiB):
    /// the client reads a little, then the bus gives up on it. The write
    /// under way finishes; the rest of the backlog is dropped.
    async fn slow_consumer_close_stops_a_backlog(item: impl Fn(usize) -> Outbound) {
        let mut h = harness(64 * 1024, 0);
        for n in 0..300 {
            h.frames.try_send(item(n)).unwrap();
        }
        for _ in 0..10 {
            assert_eq!(read_frame(&mut h.client).await.0, OP_TEXT);
        }
        h.frames.close(Closing::slow(SlowCause::Backlog));
        let mut written = 10;
        let close = loop {
            match read_frame(&mut h.client).await {
                (OP_TEXT, _) => written += 1,
                (opcode, payload) => break (opcode, payload),
            }
        };
        assert_eq!(close.0, crate::wire::OP_CLOSE);
        assert_eq!(close_code(&close.1), 1008);
        assert!(written < 150, "{written} of 300 items written after the close");
        assert_eq!(h.writer.await.unwrap().closed, Some(Closing::slow(SlowCause::Backlog)));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_writes_the_backlog_then_the_event_then_1001() {
        let mut h = harness(64 * 1024, 0);
        h.frames.try_send(text(10)).unwrap();
        tokio::task::yield_now().await;
        h.frames.try_send(text(11)).unwrap();
        h.stop.send(true).unwrap();
        let end = h.writer.await.unwrap();
        assert_eq!(end.closed, Some(Closing::from(CloseReason::SHUTDOWN)));
        assert!(end.sent_close);
        assert_eq!(read_frame(&mut h.client).await, (OP_TEXT, vec![b'x'; 10]));
        assert_eq!(read_frame(&mut h.client).await, (OP_TEXT, vec![b'x'; 11]));
        let (opcode, event) = read_frame(&mut h.client).await;
        assert_eq!(opcode, OP_TEXT);
        assert!(String::from_utf8(event).unwrap().contains(r#""event":"shutdown""#));
        let (opcode, payload) = read_frame(&mut h.client).await;
        assert_eq!((opcode, close_code(&payload)), (crate::wire::OP_CLOSE, 1001));
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_frame_that_cannot_be_written_is_given_up_after_the_grace() {
        let h = harness(16, 0);
        // Shutdown finds a backlog that the client's full socket cannot take:
        // the writer gives up at the grace period, before the write timeout
        // would, and the shutdown is not held up by this client.
        h.frames.try_send(text(100)).unwrap();
        h.stop.send(true).unwrap();
        let end = h.writer.await.unwrap();
        assert_eq!(h.started.elapsed(), GRACE);
        assert!(!end.sent_close);
        assert_eq!(end.closed, Some(Closing::from(CloseReason::SHUTDOWN)));
    }
}
