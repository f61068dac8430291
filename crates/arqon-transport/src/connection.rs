//! One connection: a reader (this task) and a writer (a spawned task).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arqon_protocol::{CloseReason, Frame, IdGenerator, Outbound, Timestamp, encode};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
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
    let Accepted {
        mut conn,
        frames,
        close,
    } = accepted;
    let (sink, mut stream) = ws.split();
    let last_seen = Arc::new(LastSeen {
        origin: Instant::now(),
        ms: AtomicU64::new(0),
    });
    let (oversize_tx, oversize_rx) = watch::channel(false);
    let writer = Writer {
        sink,
        frames,
        close,
        stop,
        oversize: oversize_rx,
        last_seen: Arc::clone(&last_seen),
        heartbeat: config.heartbeat,
        grace: config.shutdown_grace,
        batch: config.write_batch.max(1),
        ids: IdGenerator::new(),
    };
    let mut writer = tokio::spawn(writer.run());
    loop {
        tokio::select! {
            message = stream.next() => {
                last_seen.touch();
                match message {
                    Some(Ok(Message::Text(text))) => conn.on_text(text.as_str()).await,
                    Some(Ok(Message::Binary(data))) => conn.on_binary(&data),
                    // tungstenite answers pings itself; any frame counts as life.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        conn.on_oversize();
                        // The writer flushes the error and closes with 1009.
                        let _ = oversize_tx.send(true);
                        let _ = (&mut writer).await;
                        return;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "read failed");
                        break;
                    }
                }
            }
            _ = &mut writer => return,
        }
    }
    // The client left: stop the writer (nothing more can be delivered).
    writer.abort();
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

struct Writer<S> {
    sink: Sink<S>,
    frames: mpsc::Receiver<Outbound>,
    close: watch::Receiver<Option<CloseReason>>,
    stop: watch::Receiver<bool>,
    oversize: watch::Receiver<bool>,
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
    async fn run(mut self) {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                biased;
                _ = self.close.changed() => {
                    if let Some(reason) = *self.close.borrow_and_update() { break reason; }
                }
                _ = self.oversize.changed() => break CloseReason::TOO_LARGE,
                _ = self.stop.changed() => break CloseReason::SHUTDOWN,
                item = self.frames.recv() => match item {
                    Some(item) => if self.write_batch(item).await.is_err() { return; },
                    // Every sender is gone: the bus forgot this client.
                    None => return,
                },
                _ = ticker.tick() => {
                    if self.last_seen.idle() > self.heartbeat * 2 {
                        tracing::debug!("closing idle connection");
                        return;
                    }
                    if self.sink.send(Message::Ping(Default::default())).await.is_err() { return; }
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
                while let Some(item) = self.frames.recv().await {
                    self.feed(item).await?;
                }
                if reason == CloseReason::SHUTDOWN {
                    let frame = encode::shutdown_event(self.ids.message_id(), Timestamp::now(), "server shutting down");
                    self.sink.feed(text(frame)).await?;
                }
            }
            let close = CloseFrame {
                code: CloseCode::from(reason.code),
                reason: reason.reason.into(),
            };
            self.sink.send(Message::Close(Some(close))).await?;
            // Wait for the client's close reply (or give up with the grace).
            Ok::<(), WsError>(())
        };
        match tokio::time::timeout(grace, finish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "close failed"),
            Err(_) => tracing::debug!("close frame not written within the grace period"),
        }
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
        }
    }

    /// Writes `first` and whatever else is queued (up to the batch size),
    /// then flushes once: one syscall for a burst, not one per frame.
    async fn write_batch(&mut self, first: Outbound) -> Result<(), WsError> {
        self.feed(first).await?;
        for _ in 1..self.batch {
            match self.frames.try_recv() {
                Ok(item) => self.feed(item).await?,
                Err(_) => break,
            }
        }
        self.sink.flush().await
    }
}
