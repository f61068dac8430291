//! One connection: a reader (this task) and a writer (a spawned task).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::VecDeque;

use arqon_protocol::{CloseReason, Frame, IdGenerator, Outbound, OutboundReceiver, Timestamp, encode};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::{Accepted, Connection, TransportConfig};

/// Milliseconds since the connection started when the client last sent
/// anything; shared by reader (writes) and writer (reads, for idle close).
struct LastSeen {
    origin: Instant,
    ms: AtomicU64,
}

impl LastSeen {
    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.ms.load(Ordering::Relaxed)))
    }
}

/// RFC 6455 7.4.1: a text message that is not UTF-8.
const INVALID_UTF8: CloseReason = CloseReason { code: 1007, reason: "invalid UTF-8" };
/// RFC 6455 7.4.1: a frame that breaks the protocol (reserved bits or
/// opcodes, a fragmented or oversized control frame, a stray continuation).
const PROTOCOL_ERROR: CloseReason = CloseReason { code: 1002, reason: "protocol violation" };

/// How the reader's loop ended.
enum End<S> {
    /// The connection is gone (TCP closed or failed without a handshake).
    Gone,
    /// The client sent a close frame; tungstenite queued the reply.
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
    ws: WebSocketStream<S>,
    accepted: Accepted<C>,
    config: &TransportConfig,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Connection,
{
    let Accepted { mut conn, frames, close } = accepted;
    let (sink, mut stream) = ws.split();
    let last_seen = Arc::new(LastSeen { origin: Instant::now(), ms: AtomicU64::new(0) });
    // The reader tells the writer to close after a read error that calls for
    // a close frame (1002, 1007, 1009).
    let (failed_tx, failed_rx) = watch::channel(None);
    let grace = config.shutdown_grace;
    let writer = Writer {
        sink,
        frames,
        close,
        stop,
        failed: failed_rx,
        last_seen: Arc::clone(&last_seen),
        heartbeat: config.heartbeat,
        grace,
        batch: config.write_batch.max(1),
        queued: VecDeque::new(),
        ids: IdGenerator::new(),
    };
    let mut writer = tokio::spawn(writer.run());
    let end = loop {
        tokio::select! {
            message = stream.next() => {
                last_seen.touch();
                match message {
                    Some(Ok(Message::Text(text))) => conn.on_text(text.as_str()).await,
                    Some(Ok(Message::Binary(data))) => conn.on_binary(&data),
                    // tungstenite answers pings itself; any frame counts as life.
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
            drop(conn);
            // Reading on makes tungstenite write its queued close reply and
            // then end the stream, so the server closes TCP after a clean
            // handshake (RFC 6455 7.1.1) instead of dropping it mid-way.
            let _ = tokio::time::timeout(grace, drain(&mut stream)).await;
            writer.abort();
        }
        End::Failed(reason) => {
            // The writer flushes what is queued (e.g. the MESSAGE_TOO_LARGE
            // error) and the close frame. The read half is unusable after an
            // error (tokio-tungstenite fuses it), so the close reply is
            // awaited on the raw socket.
            let _ = failed_tx.send(Some(reason));
            let done = writer.await;
            drop(conn);
            if let Ok(done) = done {
                linger(done.sink, stream, grace).await;
            }
        }
        End::WriterDone(Some(done)) if done.sent_close => {
            drop(conn);
            // We started the closing handshake: wait for the client's reply,
            // discarding whatever it sent meanwhile.
            let _ = tokio::time::timeout(grace, drain(&mut stream)).await;
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

/// Reads until the stream ends; tungstenite answers or completes the closing
/// handshake as it reads.
async fn drain<S>(stream: &mut SplitStream<WebSocketStream<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while stream.next().await.is_some() {}
}

/// Closes the socket after the close frame went out: shuts down our sending
/// side, then reads and discards until the client closes too (or `grace`
/// elapses). Closing a socket with unread input resets the connection, and a
/// reset can destroy the close frame (and the error before it) on its way to
/// the client; that is what an oversize message leaves behind.
async fn linger<S>(sink: Sink<S>, stream: SplitStream<WebSocketStream<S>>, grace: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut ws) = sink.reunite(stream) else { return };
    let io = ws.get_mut();
    let _ = tokio::time::timeout(grace, async {
        let _ = io.shutdown().await;
        let mut buf = vec![0; 4096];
        while let Ok(1..) = io.read(&mut buf).await {}
    })
    .await;
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

/// What the writer hands back when it stops: the write half (the reader may
/// need it to reunite the socket) and whether a close frame went out.
struct WriterEnd<S> {
    sink: Sink<S>,
    sent_close: bool,
}

struct Writer<S> {
    sink: Sink<S>,
    frames: OutboundReceiver,
    /// What the writer took from `frames` and has not written yet.
    queued: VecDeque<Outbound>,
    close: watch::Receiver<Option<CloseReason>>,
    stop: watch::Receiver<bool>,
    failed: watch::Receiver<Option<CloseReason>>,
    last_seen: Arc<LastSeen>,
    heartbeat: Duration,
    grace: Duration,
    batch: usize,
    ids: IdGenerator,
}

fn text(frame: Frame) -> Message {
    // Frames are UTF-8 by construction; the check is a fast ASCII scan.
    match Utf8Bytes::try_from(frame.bytes().clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Text(Utf8Bytes::from(frame.as_str())),
    }
}

impl<S> Writer<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(mut self) -> WriterEnd<S> {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                biased;
                _ = self.close.changed() => {
                    if let Some(reason) = *self.close.borrow_and_update() { break reason; }
                }
                _ = self.failed.changed() => {
                    if let Some(reason) = *self.failed.borrow_and_update() { break reason; }
                }
                _ = self.stop.changed() => break CloseReason::SHUTDOWN,
                more = self.frames.recv_all(&mut self.queued) => {
                    // Every sender is gone: the bus forgot this client.
                    if !more { return self.end(false); }
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
                    if self.last_seen.idle() > self.heartbeat * 2 {
                        tracing::debug!("closing idle connection");
                        return self.end(false);
                    }
                    if self.sink.send(Message::Ping(Default::default())).await.is_err() { return self.end(false); }
                }
            }
        };
        let grace = self.grace;
        let finish = async {
            if reason == CloseReason::SLOW_CONSUMER {
                // The client is not reading: what is queued is dropped.
                self.frames.close();
            } else {
                // Deliver what is already queued (e.g. the MESSAGE_TOO_LARGE
                // error) before closing.
                self.frames.close();
                while self.frames.recv_all(&mut self.queued).await {
                    while let Some(item) = self.queued.pop_front() {
                        self.feed(item).await?;
                    }
                }
                if reason == CloseReason::SHUTDOWN {
                    let frame = encode::shutdown_event(self.ids.message_id(), Timestamp::now(), "server shutting down");
                    self.sink.feed(text(frame)).await?;
                }
            }
            let close = CloseFrame { code: CloseCode::from(reason.code), reason: reason.reason.into() };
            self.sink.send(Message::Close(Some(close))).await?;
            // The reader waits for the client's close reply.
            Ok::<(), WsError>(())
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

    fn end(self, sent_close: bool) -> WriterEnd<S> {
        WriterEnd { sink: self.sink, sent_close }
    }

    async fn feed(&mut self, item: Outbound) -> Result<(), WsError> {
        match item {
            Outbound::Frame(frame) => self.sink.feed(text(frame)).await,
            Outbound::Batch(frames) => {
                for frame in frames {
                    self.sink.feed(text(frame)).await?;
                }
                Ok(())
            }
            Outbound::Binary(data) => self.sink.feed(Message::Binary(data)).await,
        }
    }

    /// Writes what `recv_all` took, flushing every `batch` frames: one
    /// syscall for a burst, not one per frame.
    async fn write_queued(&mut self) -> Result<(), WsError> {
        let mut fed = 0;
        while let Some(item) = self.queued.pop_front() {
            self.feed(item).await?;
            fed += 1;
            if fed % self.batch == 0 {
                self.sink.flush().await?;
            }
        }
        self.sink.flush().await
    }
}
