//! One connection: a reader (this task) and a writer (a spawned task).
//!
//! The reader reads the client's frames ([`crate::frames`]) from the socket's
//! read half and hands each message to the handler; the writer owns the
//! write half and frames everything the server sends (see [`crate::wire`]),
//! including the protocol replies the reader queues.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arqon_protocol::{CloseReason, IdGenerator, Outbound, OutboundReceiver, Timestamp, encode, scratch};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::frames::{Broken, Event, FrameReader};
use crate::wire::{self, Control, OP_BINARY, OP_PING, OP_TEXT, Replies};
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
/// sent after its upgrade request.
pub(crate) async fn run_connection<S, C>(
    mut read: ReadHalf<S>,
    io: WriteHalf<S>,
    early: Vec<u8>,
    accepted: Accepted<C>,
    config: &TransportConfig,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Connection,
{
    let Accepted { mut conn, frames, close } = accepted;
    let control = Arc::new(Control::default());
    let activity = Arc::new(Activity::default());
    let grace = config.shutdown_grace;
    let writer = Writer {
        io,
        control: Arc::clone(&control),
        frames,
        queued: VecDeque::new(),
        activity: Arc::clone(&activity),
        heartbeat: config.heartbeat,
        grace,
        batch: config.write_batch.max(1),
        ids: IdGenerator::new(),
    };
    let mut writer = tokio::spawn(writer.run(close, stop));
    let mut reader = FrameReader::new(config.max_message_bytes, early);
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
                Ok(true) => activity.touch(),
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
        End::WriterDone(_) => {}
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
            // connection; one allocation per message is the price.
            Event::Text(text) => Box::pin(conn.on_text(text)).await,
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
/// still need to shut it down) and whether a close frame went out.
struct WriterEnd<S> {
    io: WriteHalf<S>,
    sent_close: bool,
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

struct Writer<S> {
    io: WriteHalf<S>,
    control: Arc<Control>,
    frames: OutboundReceiver,
    /// What the writer took from `frames` and has not written yet.
    queued: VecDeque<Outbound>,
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
    async fn run(
        mut self,
        mut close: watch::Receiver<Option<CloseReason>>,
        mut stop: watch::Receiver<bool>,
    ) -> WriterEnd<S> {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let control = Arc::clone(&self.control);
        let mut silent_ticks = 0;
        // The bus's close and shutdown are watched for the writer's whole
        // life by one future each, so the writer registers with each watch
        // once. After that a wake-up (for a frame, mostly) polls them only
        // once their version moved: the shutdown watch is shared by every
        // connection, and taking its lock per frame would make it a lock
        // shared by all connections on the hot path.
        let close_seen = close.clone();
        let closed = async move {
            let reason = close.wait_for(Option::is_some).await.ok().and_then(|reason| *reason);
            match reason {
                Some(reason) => reason,
                // The handler went first (the client closed): nothing to wait for.
                None => std::future::pending().await,
            }
        };
        let stop_seen = stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        tokio::pin!(closed, stopped);
        let (mut close_armed, mut stop_armed) = (false, false);
        let reason = loop {
            tokio::select! {
                biased;
                reason = poll_watch(&mut closed, &mut close_armed, || moved(&close_seen)) => break reason,
                () = poll_watch(&mut stopped, &mut stop_armed, || moved(&stop_seen)) => break CloseReason::SHUTDOWN,
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
                        if control.is_peer_closed() {
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
    /// the replies the reader queued (its close reply last), then nothing.
    async fn answer_close(mut self, replies: Replies) -> WriterEnd<S> {
        self.frames.close();
        self.frames.try_recv_all(&mut self.queued);
        let sent = async {
            self.write_queued().await?;
            self.send_raw(&replies.bytes).await
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
