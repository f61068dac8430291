//! `fanout`, `fanin` and `latency`: publishers send stamped messages to one
//! channel, subscribers check every delivery and time it.
//!
//! A run goes: subscribers connect and join (their read loops start at once,
//! so member events never pile up), publishers connect, then everyone starts
//! together. Each subscriber keeps one bit per expected message, so loss,
//! duplicates and reordering are exact; its latency histogram and counters
//! are its own (no lock on the delivery path) and are merged at the end.
//!
//! Flow control: at "max rate" a publisher could run arbitrarily far ahead of
//! the subscribers; the bus absorbs that in each client's backlog (64 MiB by
//! default) and closes a client only past it, or when its socket takes
//! nothing for the write timeout (close 1008, protocol section 8.1). The
//! [`Flow`] window keeps the publishers at most `--window` messages ahead of
//! the slowest live subscriber, so the measured rate is the rate the whole
//! path sustains, not the rate at which the bus buffers. `--window 0` turns
//! it off (open loop).
//!
//! Subscribers are lean (the default) or, with `--subscriber ordinary`, read
//! like an application ([`crate::ordinary`]); both kinds check and time
//! every delivery the same way and report a close by the bus. With
//! `--peer nats` the same run drives nats-server instead ([`nats`]).

mod nats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::Clock;
use crate::cli::{Options, Peer, Scenario, SubscriberKind};
use crate::client::{BUSY_READ_BUFFER, Endpoint, SetupError, open, open_lean};
use crate::frame::{Incoming, MessageWriter, Stamp, classify, stamp_fast};
use crate::histogram::Histogram;
use crate::lean::{Event, LeanReader, LeanWs};
use crate::ordinary;
use crate::pace::Pacer;
use crate::procfs::CpuMeter;
use crate::report::{Latency, Report};

/// Keeps publishers at most `window` messages ahead of the slowest live
/// subscriber.
#[derive(Debug)]
pub(crate) struct Flow {
    window: u64,
    published: AtomicU64,
    /// Messages each subscriber has read; `u64::MAX` once it is gone (a dead
    /// subscriber must not stall the others).
    received: Vec<AtomicU64>,
    /// A blocked publisher waits until the slowest subscriber has read this
    /// many messages (a quarter window of room); each subscriber notifies as
    /// its count reaches it. Only ever raised, so no waiter can be skipped
    /// (at worst one wakes later than it could have).
    wake_at: AtomicU64,
    notify: Notify,
}

impl Flow {
    fn new(window: u64, subscribers: usize) -> Self {
        Flow {
            window,
            published: AtomicU64::new(0),
            received: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            wake_at: AtomicU64::new(0),
            notify: Notify::new(),
        }
    }

    fn min_received(&self) -> u64 {
        self.received.iter().map(|r| r.load(Ordering::SeqCst)).min().unwrap_or(u64::MAX)
    }

    /// Deliveries so far, over live and finished subscribers alike.
    fn progress(&self) -> u64 {
        self.received.iter().map(|r| r.load(Ordering::Relaxed)).filter(|&n| n != u64::MAX).sum()
    }

    /// Takes one slot if the window has room. `cached_min` spares a scan of
    /// every subscriber while the window is clearly open. Concurrent
    /// publishers may overshoot by one each, far below the queue's slack.
    fn try_admit(&self, cached_min: &mut u64) -> bool {
        if self.window > 0 {
            let published = self.published.load(Ordering::SeqCst);
            if published.saturating_sub(*cached_min) >= self.window {
                *cached_min = self.min_received();
                if published.saturating_sub(*cached_min) >= self.window {
                    return false;
                }
            }
        }
        self.published.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Waits for a slot. Once blocked, waits for a quarter window of room,
    /// so that a publisher wakes once per quarter window, not per delivery.
    async fn admit(&self, cached_min: &mut u64) {
        while !self.try_admit(cached_min) {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let target = (self.published.load(Ordering::SeqCst) + (self.window / 4).max(1)).saturating_sub(self.window);
            self.wake_at.fetch_max(target, Ordering::SeqCst);
            // Re-check after publishing the target (SeqCst on both sides): a
            // subscriber that got there first is seen here, any other one
            // reaches the target later and notifies.
            *cached_min = self.min_received();
            if *cached_min >= target {
                continue;
            }
            notified.await;
        }
    }

    fn on_received(&self, subscriber: usize) {
        let count = self.received[subscriber].fetch_add(1, Ordering::SeqCst) + 1;
        if count == self.wake_at.load(Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    fn gone(&self, subscriber: usize) {
        self.received[subscriber].store(u64::MAX, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// One publisher's messages as seen by one subscriber: a bit per sequence
/// number.
#[derive(Debug, Clone)]
struct Track {
    seen: Vec<u64>,
    highest: Option<u64>,
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct SubResult {
    tracks: Vec<Track>,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    latency: Histogram,
    errors: BTreeMap<String, u64>,
    events: BTreeMap<String, u64>,
    last_ns: u64,
    /// The close code, if the bus closed this subscriber.
    closed: Option<u16>,
    /// Bytes this subscriber read off the wire (lean subscribers).
    wire_bytes: u64,
}

impl SubResult {
    fn new(publishers: usize, messages: u64) -> Self {
        let words = usize::try_from(messages.div_ceil(64)).unwrap_or(usize::MAX);
        SubResult { tracks: vec![Track { seen: vec![0; words], highest: None }; publishers], ..SubResult::default() }
    }

    fn error(&mut self, code: impl Into<String>) {
        *self.errors.entry(code.into()).or_default() += 1;
    }

    /// The bus closed the connection with `code`.
    fn close(&mut self, code: u16) {
        self.closed = Some(code);
        self.error(format!("CLOSE_{code}"));
    }

    /// Counts the subscriber as done once it has every expected message.
    fn note_complete(&self, run: &Run, complete: &mut bool) {
        if !*complete && self.unique == run.publishers as u64 * run.messages {
            // Keep the connection (and keep reading) until the run stops:
            // leaving now would send member events to the others while they
            // are still being measured.
            *complete = true;
            run.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Adds this subscriber's counts, errors, close and events to `report`
    /// (latency and timing are merged by the caller).
    fn count_into(&self, report: &mut Report) {
        report.delivered += self.unique;
        report.wire_bytes += self.wire_bytes;
        report.duplicates += self.duplicates;
        report.out_of_order += self.out_of_order;
        report.errors_from(&self.errors);
        if let Some(code) = self.closed {
            *report.closed.entry(code.to_string()).or_default() += 1;
        }
        for (name, n) in &self.events {
            *report.events.entry(name.clone()).or_default() += n;
        }
    }

    /// Records a delivery to subscriber `index` that arrived at `now_ns`,
    /// moves the run's window, and counts the subscriber as done once it has
    /// every message.
    fn count(&mut self, run: &Run, index: usize, stamp: Stamp, now_ns: u64, complete: &mut bool) {
        self.on_message(stamp, now_ns, run.messages);
        run.flow.on_received(index);
        self.note_complete(run, complete);
    }

    /// Records a delivery; false if it was not a new one.
    fn on_message(&mut self, stamp: Stamp, now_ns: u64, messages: u64) -> bool {
        let Some(track) = self.tracks.get_mut(stamp.publisher as usize) else {
            self.error("UNEXPECTED_MESSAGE");
            return false;
        };
        if stamp.seq >= messages {
            self.error("UNEXPECTED_MESSAGE");
            return false;
        }
        let (word, bit) = ((stamp.seq / 64) as usize, 1u64 << (stamp.seq % 64));
        if track.seen[word] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        track.seen[word] |= bit;
        if track.highest.is_some_and(|h| stamp.seq < h) {
            self.out_of_order += 1;
        }
        track.highest = Some(track.highest.map_or(stamp.seq, |h| h.max(stamp.seq)));
        self.unique += 1;
        self.latency.record(now_ns.saturating_sub(stamp.sent_ns));
        self.last_ns = now_ns;
        true
    }
}

/// What one publisher did.
#[derive(Debug, Default)]
struct PubResult {
    sent: u64,
    last_ns: u64,
    errors: BTreeMap<String, u64>,
}

/// Shared by every task of a run.
#[derive(Debug)]
struct Run {
    /// The server driven: the bus, or nats-server.
    peer: Peer,
    endpoint: Endpoint,
    /// Where subscribers connect, round-robin; empty: `endpoint`.
    sub_endpoints: Vec<Endpoint>,
    clock: Clock,
    flow: Flow,
    room: String,
    channel: String,
    publishers: usize,
    messages: u64,
    payload: usize,
    /// Payloads padded with words (`--text`).
    text: bool,
    rate: Option<f64>,
    /// Subscribers that have every expected message.
    finished: AtomicUsize,
    /// Tells publishers to stop sending (checked per message).
    halt: AtomicBool,
    /// Limits handshakes in flight.
    setup: Semaphore,
    setup_limit: Duration,
    /// Publishers use the server API with this key (`api` scenario).
    api_key: Option<String>,
}

impl Run {
    /// Subscribers (`subscriber` true) spread over `--sub-url`s when given.
    fn endpoint_for(&self, index: usize, subscriber: bool) -> &Endpoint {
        match self.sub_endpoints.len() {
            0 => &self.endpoint,
            n if subscriber => &self.sub_endpoints[index % n],
            _ => &self.endpoint,
        }
    }
}

type Ready = mpsc::Sender<Result<(), SetupError>>;

/// One of the `--concurrency` handshakes allowed in flight.
async fn setup_slot(run: &Run) -> Result<tokio::sync::SemaphorePermit<'_>, SetupError> {
    run.setup.acquire().await.map_err(|_| SetupError::new("SETUP", "closed"))
}

/// Sets up a publisher or subscriber on the lean client, one of at most
/// `--concurrency` handshakes at a time.
async fn setup_lean(run: &Run, index: usize, join: bool) -> Result<LeanWs, SetupError> {
    let _permit = setup_slot(run).await?;
    let channel = join.then_some((run.room.as_str(), run.channel.as_str()));
    open_lean(run.endpoint_for(index, join), index, channel, run.setup_limit).await
}

/// Counts a frame that is not a benchmark message.
fn other_frame(result: &mut SubResult, frame: Incoming) {
    match frame {
        Incoming::Message(_) | Incoming::Response => {}
        Incoming::Event { name } => *result.events.entry(name).or_default() += 1,
        Incoming::Error { code } => result.error(code),
        Incoming::ForeignMessage => result.error("FOREIGN_MESSAGE"),
        Incoming::Unreadable => result.error("UNREADABLE_FRAME"),
    }
}

/// Tells the run how a subscriber's set-up went; `None` if it failed (the
/// window then no longer waits for it).
async fn announce<T>(run: &Run, index: usize, ready: &Ready, opened: Result<T, SetupError>) -> Option<T> {
    match opened {
        Ok(conn) => {
            let _ = ready.send(Ok(())).await;
            Some(conn)
        }
        Err(e) => {
            run.flow.gone(index);
            let _ = ready.send(Err(e)).await;
            None
        }
    }
}

/// What a lean subscriber does with what its reader found.
enum Read {
    /// A data frame: its payload's range.
    Data(std::ops::Range<usize>),
    /// Nothing to count (a ping, a pong, an unexpected frame already noted).
    Skip,
    /// The connection ended (recorded in the result).
    End,
}

/// A lean subscriber's data frames, each with the time its read returned:
/// frames that arrived in one read arrived together, so the clock is read
/// once per read, not per frame.
struct Reads {
    /// Binary frames carry data (nats-server's).
    binary: bool,
    seen: u64,
    now_ns: u64,
}

impl Reads {
    fn new(binary: bool) -> Self {
        Reads { binary, seen: u64::MAX, now_ns: 0 }
    }

    /// The next data frame's range and arrival; `None` once `stopped` fires
    /// or the connection ends (recorded in `result`).
    async fn next<F: Future + Unpin>(
        &mut self,
        ws: &mut LeanWs,
        stopped: &mut F,
        run: &Run,
        result: &mut SubResult,
        index: usize,
    ) -> Option<(std::ops::Range<usize>, u64)> {
        loop {
            // One stop future for the whole loop, polled only when no frame
            // is ready: creating and polling one per frame costs more than
            // the frame.
            // A buffered frame first, without a future; then wait for one,
            // or for the stop.
            let event = match ws.buffered() {
                Some(event) => event,
                None => tokio::select! {
                    biased;
                    event = ws.next() => event,
                    _ = &mut *stopped => return None,
                },
            };
            match sort_read(result, index, event, self.binary) {
                Read::Data(range) => {
                    if ws.reader.reads() != self.seen {
                        self.seen = ws.reader.reads();
                        self.now_ns = run.clock.now_ns();
                    }
                    return Some((range, self.now_ns));
                }
                Read::Skip => {}
                Read::End => return None,
            }
        }
    }
}

/// Sorts a lean subscriber's read into [`Read`], recording closes and
/// failures; `binary` says whether binary frames carry data (nats-server's).
fn sort_read(result: &mut SubResult, index: usize, event: std::io::Result<Event>, binary: bool) -> Read {
    match event {
        Ok(Event::Text(range)) => Read::Data(range),
        Ok(Event::Binary(range)) if binary => Read::Data(range),
        Ok(Event::Binary(_)) => {
            result.error("UNEXPECTED_BINARY");
            Read::Skip
        }
        Ok(Event::Ping(_) | Event::Pong) => Read::Skip,
        Ok(Event::Close(code)) => {
            result.close(code);
            Read::End
        }
        Ok(Event::Eof) => {
            result.error("CLOSED");
            Read::End
        }
        Err(e) => {
            eprintln!("subscriber {index}: read failed: {e}");
            result.error("READ_FAILED");
            Read::End
        }
    }
}

async fn subscriber(run: Arc<Run>, index: usize, ready: Ready, mut stop: watch::Receiver<bool>) -> SubResult {
    let mut result = SubResult::new(run.publishers, run.messages);
    let Some(mut ws) = announce(&run, index, &ready, setup_lean(&run, index, true).await).await else {
        return result;
    };
    let mut complete = false;
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    let mut reads = Reads::new(false);
    while let Some((range, now)) = reads.next(&mut ws, &mut stopped, &run, &mut result, index).await {
        let bytes = ws.reader.bytes(range);
        let stamp = match stamp_fast(bytes) {
            Some(stamp) => stamp,
            None => match classify(&String::from_utf8_lossy(bytes)) {
                Incoming::Message(stamp) => stamp,
                other => {
                    other_frame(&mut result, other);
                    continue;
                }
            },
        };
        result.count(&run, index, stamp, now, &mut complete);
    }
    if !complete {
        run.flow.gone(index);
    }
    result.wire_bytes = ws.reader.wire_bytes();
    result
}

/// A subscriber that reads like an application: tokio-tungstenite with its
/// default configuration, one `next()` per message, each message parsed into
/// a `serde_json::Value` (see [`crate::ordinary`]), one clock reading per
/// message. Pings are answered by tungstenite on the next read.
async fn ordinary_subscriber(run: Arc<Run>, index: usize, ready: Ready, mut stop: watch::Receiver<bool>) -> SubResult {
    let mut result = SubResult::new(run.publishers, run.messages);
    let opened = async {
        let _permit = setup_slot(&run).await?;
        let channel = Some((run.room.as_str(), run.channel.as_str()));
        open(run.endpoint_for(index, true), index, ordinary::READ_BUFFER, channel, run.setup_limit).await
    }
    .await;
    let Some(mut ws) = announce(&run, index, &ready, opened).await else {
        return result;
    };
    let mut complete = false;
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    loop {
        let message = tokio::select! {
            biased;
            message = ws.next() => message,
            _ = &mut stopped => break,
        };
        match message {
            Some(Ok(Message::Text(text))) => match ordinary::classify_value(text.as_str()) {
                Incoming::Message(stamp) => {
                    result.count(&run, index, stamp, run.clock.now_ns(), &mut complete);
                }
                other => other_frame(&mut result, other),
            },
            Some(Ok(Message::Close(frame))) => {
                result.close(frame.map_or(1005, |f| u16::from(f.code)));
                break;
            }
            Some(Ok(Message::Binary(_))) => result.error("UNEXPECTED_BINARY"),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                eprintln!("subscriber {index}: read failed: {e}");
                result.error("READ_FAILED");
                break;
            }
            None => {
                result.error("CLOSED");
                break;
            }
        }
    }
    if !complete {
        run.flow.gone(index);
    }
    result
}

/// A subscriber that joins and then never reads: the bus should close it
/// (1008) once its outbound queue overflows, without slowing the others.
/// When the run stops it reads what reached it (at most 3 s) to learn
/// whether it was closed; returns `stalled:CLOSE_<code>` or
/// `stalled:not_closed`, reported among the events (this is the expected
/// outcome, not an error).
async fn stalled(run: Arc<Run>, index: usize, ready: Ready, mut stop: watch::Receiver<bool>) -> Option<String> {
    let opened = {
        let permit = run.setup.acquire().await.ok()?;
        let channel = Some((run.room.as_str(), run.channel.as_str()));
        let opened = open(run.endpoint_for(index, true), index, BUSY_READ_BUFFER, channel, run.setup_limit).await;
        drop(permit);
        opened
    };
    let mut ws = match opened {
        Ok(ws) => {
            let _ = ready.send(Ok(())).await;
            ws
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return None;
        }
    };
    let _ = stop.wait_for(|s| *s).await;
    let fate = async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => {
                    return format!("stalled:CLOSE_{}", frame.map_or(1005, |f| u16::from(f.code)));
                }
                Ok(_) => {}
                Err(_) => return "stalled:READ_FAILED".to_owned(),
            }
        }
        "stalled:CLOSED".to_owned()
    };
    Some(tokio::time::timeout(Duration::from_secs(3), fate).await.unwrap_or_else(|_| "stalled:not_closed".to_owned()))
}

/// Counts what the bus sends a publisher: nothing, unless something fails.
/// (nats-server's pings go unanswered: a run ends long before it would
/// give up on a publisher.)
async fn publisher_reader(
    mut reader: LeanReader,
    peer: Peer,
    mut stop: watch::Receiver<bool>,
) -> BTreeMap<String, u64> {
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    loop {
        let event = tokio::select! {
            biased;
            event = reader.next() => event,
            _ = &mut stopped => break,
        };
        let (code, fatal) = match event {
            Ok(Event::Text(range) | Event::Binary(range)) if peer == Peer::Nats => {
                let refused = nats::errors_in(reader.bytes(range)) as u64;
                if refused > 0 {
                    *errors.entry("publisher:NATS_ERR".to_owned()).or_default() += refused;
                }
                continue;
            }
            Ok(Event::Text(range)) => match classify(&String::from_utf8_lossy(reader.bytes(range))) {
                Incoming::Error { code } => (code, false),
                _ => continue,
            },
            // A publisher writes all the time, which keeps it alive without
            // answering pings.
            Ok(Event::Ping(_) | Event::Pong) => continue,
            Ok(Event::Binary(_)) => ("UNEXPECTED_BINARY".to_owned(), false),
            Ok(Event::Close(code)) => (format!("CLOSE_{code}"), true),
            Ok(Event::Eof) => ("CLOSED".to_owned(), true),
            Err(_) => ("READ_FAILED".to_owned(), true),
        };
        *errors.entry(format!("publisher:{code}")).or_default() += 1;
        if fatal {
            break;
        }
    }
    errors
}

async fn publisher(
    run: Arc<Run>,
    publisher: u32,
    index: usize,
    ready: Ready,
    mut start: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) -> PubResult {
    let mut result = PubResult::default();
    let opened = match run.peer {
        Peer::Bus => setup_lean(&run, index, false).await,
        Peer::Nats => nats::open(&run, index, None).await.map(|(ws, _)| ws),
    };
    let ws = match opened {
        Ok(ws) => {
            let _ = ready.send(Ok(())).await;
            ws
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return result;
        }
    };
    let LeanWs { reader, mut writer, .. } = ws;
    let reader = tokio::spawn(publisher_reader(reader, run.peer, stop.clone()));
    if start.wait_for(|s| *s).await.is_err() {
        reader.abort();
        return result;
    }
    let message = match run.peer {
        Peer::Bus => MessageWriter::new(&run.room, &run.channel, run.payload),
        Peer::Nats => MessageWriter::bare(run.payload),
    }
    .with_text(run.text);
    let subject = nats::subject(&run.room, &run.channel);
    let mut text = String::with_capacity(run.payload + 128);
    let mut payload = String::with_capacity(run.payload + 16);
    let Ok(mut pacer) = start_pacer(&run) else {
        reader.abort();
        *result.errors.entry("publisher:PACER_FAILED".to_owned()).or_default() += 1;
        return result;
    };
    let mut cached_min = 0;
    let mut unflushed = 0u32;
    let mut stop_admit = stop.clone();
    let mut write_failed = false;
    for seq in 0..run.messages {
        if run.halt.load(Ordering::Relaxed) {
            break;
        }
        if let Some(pacer) = &mut pacer
            && !pacer.tick().await
        {
            break;
        }
        if !run.flow.try_admit(&mut cached_min) {
            // About to wait: what is buffered must reach the bus first.
            if writer.flush().await.is_err() {
                write_failed = true;
                break;
            }
            unflushed = 0;
            tokio::select! {
                _ = run.flow.admit(&mut cached_min) => {}
                _ = stop_admit.wait_for(|s| *s) => break,
            }
        }
        let sent_ns = run.clock.now_ns();
        let stamp = Stamp { publisher, seq, sent_ns };
        match run.peer {
            Peer::Bus => message.write(&mut text, stamp),
            Peer::Nats => {
                message.write(&mut payload, stamp);
                nats::publish(&subject, &payload, &mut text);
            }
        }
        writer.queue_text(&text);
        result.sent += 1;
        result.last_ns = sent_ns;
        unflushed += 1;
        // Paced runs send each message at once; max-rate runs batch writes.
        if (run.rate.is_some() || unflushed >= 32) && writer.flush().await.is_err() {
            write_failed = true;
            break;
        }
        if run.rate.is_some() || unflushed >= 32 {
            unflushed = 0;
        }
    }
    if write_failed || writer.flush().await.is_err() {
        *result.errors.entry("publisher:WRITE_FAILED".into()).or_default() += 1;
    }
    // Hold the connection until the run stops: closing now would be a
    // departure in the middle of the measurement.
    let mut stop = stop;
    let _ = stop.wait_for(|s| *s).await;
    if let Ok(errors) = reader.await {
        for (code, n) in errors {
            *result.errors.entry(code).or_default() += n;
        }
    }
    drop(writer);
    result
}

/// A server API publisher: one kept-alive HTTP connection, one `publish` at
/// a time (paced by `--rate` and the window like a WebSocket publisher).
async fn api_publisher(
    run: Arc<Run>,
    publisher: u32,
    ready: Ready,
    mut start: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> PubResult {
    let mut result = PubResult::default();
    let key = run.api_key.clone().unwrap_or_default();
    let mut conn = match crate::api::ApiConn::connect(run.endpoint.addr(), &key).await {
        Ok(conn) => {
            let _ = ready.send(Ok(())).await;
            conn
        }
        Err(e) => {
            let _ = ready.send(Err(SetupError { code: "API_CONNECT".into(), detail: e.to_string() })).await;
            return result;
        }
    };
    if start.wait_for(|s| *s).await.is_err() {
        return result;
    }
    let message = MessageWriter::api(&run.room, &run.channel, run.payload);
    let mut text = String::with_capacity(run.payload + 128);
    let Ok(mut pacer) = start_pacer(&run) else {
        *result.errors.entry("publisher:PACER_FAILED".to_owned()).or_default() += 1;
        return result;
    };
    let mut cached_min = 0;
    for seq in 0..run.messages {
        if run.halt.load(Ordering::Relaxed) {
            break;
        }
        if let Some(pacer) = &mut pacer
            && !pacer.tick().await
        {
            break;
        }
        tokio::select! {
            _ = run.flow.admit(&mut cached_min) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let sent_ns = run.clock.now_ns();
        message.write(&mut text, Stamp { publisher, seq, sent_ns });
        match conn.publish(&text).await {
            Ok(200) => {
                result.sent += 1;
                result.last_ns = sent_ns;
            }
            Ok(status) => *result.errors.entry(format!("publisher:HTTP_{status}")).or_default() += 1,
            Err(_) => {
                *result.errors.entry("publisher:API_CONNECTION_LOST".into()).or_default() += 1;
                break;
            }
        }
    }
    let _ = stop.wait_for(|s| *s).await;
    result
}

/// The clock of a paced publisher (`--rate`); none at full speed.
fn start_pacer(run: &Run) -> Result<Option<Pacer>, std::io::Error> {
    run.rate.map(|rate| Pacer::start(rate, run.messages)).transpose()
}

async fn collect<T: Default>(handle: JoinHandle<T>, limit: Duration, report: &mut Report, what: &str) -> T {
    match tokio::time::timeout(limit, handle).await {
        Ok(Ok(value)) => value,
        Ok(Err(_)) => {
            report.error(format!("{what}_PANICKED"), 1);
            T::default()
        }
        Err(_) => {
            report.error(format!("{what}_HUNG"), 1);
            T::default()
        }
    }
}

fn params(o: &Options) -> BTreeMap<String, serde_json::Value> {
    let mut p = BTreeMap::new();
    p.insert("publishers".into(), o.publishers.into());
    p.insert("subscribers".into(), o.subscribers.into());
    p.insert("subscriber".into(), o.subscriber.name().into());
    p.insert("messages_per_publisher".into(), o.messages.into());
    p.insert("payload_bytes".into(), o.payload.into());
    p.insert("window".into(), o.window.into());
    if let Some(rate) = o.rate {
        p.insert("rate_per_s".into(), rate.into());
    }
    if o.stalled > 0 {
        p.insert("stalled".into(), o.stalled.into());
    }
    if o.compress {
        p.insert("compress".into(), true.into());
    }
    if o.peer == Peer::Nats {
        p.insert("peer".into(), "nats".into());
    }
    if o.text {
        p.insert("text_payload".into(), true.into());
    }
    if !o.sub_urls.is_empty() {
        let urls: Vec<serde_json::Value> = o.sub_urls.iter().map(|(url, _)| url.clone().into()).collect();
        p.insert("subscriber_urls".into(), urls.into());
    }
    p
}

/// Runs `fanout`, `fanin` or `latency` as configured.
pub(crate) async fn run(o: &Options, clock: Clock) -> Report {
    let deadline = Instant::now() + o.timeout;
    let mut report = Report {
        scenario: o.scenario.name().to_owned(),
        label: o.label.clone(),
        target: o.target.clone(),
        params: params(o),
        ..Report::default()
    };
    debug_assert!(matches!(o.scenario, Scenario::Fanout | Scenario::Fanin | Scenario::Latency | Scenario::Api));
    let run = Arc::new(Run {
        peer: o.peer,
        endpoint: Endpoint::new(&o.url, o.addr, o.per_ip).compressing(o.compress),
        sub_endpoints: o
            .sub_urls
            .iter()
            .map(|(url, addr)| Endpoint::new(url, *addr, o.per_ip).compressing(o.compress))
            .collect(),
        clock,
        flow: Flow::new(o.window, o.subscribers),
        room: o.room.clone(),
        channel: o.channel.clone(),
        publishers: o.publishers,
        messages: o.messages,
        payload: o.payload,
        text: o.text,
        rate: o.rate,
        finished: AtomicUsize::new(0),
        halt: AtomicBool::new(false),
        setup: Semaphore::new(o.concurrency),
        setup_limit: o.timeout.min(Duration::from_secs(30)),
        api_key: o.api_key.clone(),
    });
    let clients = o.subscribers + o.stalled + o.publishers;
    // Every client reports its set-up exactly once, so a queue of `clients`
    // slots never fills and no sender ever waits.
    let (ready_tx, mut ready_rx) = mpsc::channel(clients);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (start_tx, start_rx) = watch::channel(false);

    let subscribers: Vec<JoinHandle<SubResult>> = (0..o.subscribers)
        .map(|i| {
            let (run, ready, stop) = (Arc::clone(&run), ready_tx.clone(), stop_rx.clone());
            match o.subscriber {
                SubscriberKind::Lean if o.peer == Peer::Nats => tokio::spawn(nats::subscriber(run, i, ready, stop)),
                SubscriberKind::Lean => tokio::spawn(subscriber(run, i, ready, stop)),
                SubscriberKind::Ordinary => tokio::spawn(ordinary_subscriber(run, i, ready, stop)),
            }
        })
        .collect();
    let stalled_tasks: Vec<JoinHandle<Option<String>>> = (0..o.stalled)
        .map(|i| tokio::spawn(stalled(Arc::clone(&run), o.subscribers + i, ready_tx.clone(), stop_rx.clone())))
        .collect();
    // Subscribers first: every publisher's first message must find them joined.
    let mut failed = 0u64;
    let mut wait_ready = async |n: usize, report: &mut Report| -> bool {
        for _ in 0..n {
            match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
                Ok(Some(Ok(()))) => report.connections += 1,
                Ok(Some(Err(e))) => {
                    if failed < 5 {
                        eprintln!("connection failed: {} ({})", e.code, e.detail);
                    }
                    failed += 1;
                    report.error(e.code, 1);
                }
                Ok(None) | Err(_) => return false,
            }
        }
        true
    };
    let mut set_up = wait_ready(o.subscribers + o.stalled, &mut report).await;
    let publishers: Vec<JoinHandle<PubResult>> = (0..o.publishers)
        .map(|p| {
            let index = o.subscribers + o.stalled + p;
            let id = u32::try_from(p).unwrap_or(u32::MAX);
            let (ready, start, stop) = (ready_tx.clone(), start_rx.clone(), stop_rx.clone());
            match run.api_key.is_some() {
                true => tokio::spawn(api_publisher(Arc::clone(&run), id, ready, start, stop)),
                false => tokio::spawn(publisher(Arc::clone(&run), id, index, ready, start, stop)),
            }
        })
        .collect();
    drop(ready_tx);
    set_up = set_up && wait_ready(o.publishers, &mut report).await;
    if !set_up {
        report.timed_out = true;
        report.failure = Some("set-up did not finish before --timeout".to_owned());
    } else if failed > 0 {
        report.failure = Some(format!("{failed} of {clients} connections could not be set up"));
    }

    let server_cpu = CpuMeter::start(o.server_pid);
    let generator_cpu = CpuMeter::start(None);
    let rss_at_start = o.server_pid.and_then(crate::procfs::rss_kib);
    let start_ns = run.clock.now_ns();
    if report.failure.is_none() {
        let _ = start_tx.send(true);
        let mut last_progress = (0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = Instant::now();
            if run.finished.load(Ordering::SeqCst) == o.subscribers {
                break;
            }
            if now >= deadline {
                report.timed_out = true;
                break;
            }
            let progress = run.flow.progress();
            if progress != last_progress.0 {
                last_progress = (progress, now);
            } else if now - last_progress.1 >= o.drain {
                eprintln!("no delivery for {:?}: giving up on the missing messages", o.drain);
                break;
            }
        }
    }
    report.server_cpu_pct = server_cpu.percent();
    report.generator_cpu_pct = generator_cpu.percent();
    let peak = o.server_pid.and_then(crate::procfs::peak_rss_kib);
    report.rss_growth_kib = rss_at_start.zip(peak).map(|(start, peak)| peak.saturating_sub(start));
    run.halt.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    drop(start_tx);

    let grace = Duration::from_secs(5);
    let mut last_send_ns = start_ns;
    for handle in publishers {
        let result = collect(handle, grace, &mut report, "PUBLISHER").await;
        report.published += result.sent;
        last_send_ns = last_send_ns.max(result.last_ns);
        report.errors_from(&result.errors);
    }
    let mut latency = Histogram::default();
    let mut last_ns = start_ns;
    for handle in subscribers {
        let result = collect(handle, grace, &mut report, "SUBSCRIBER").await;
        result.count_into(&mut report);
        latency.merge(&result.latency);
        last_ns = last_ns.max(result.last_ns);
    }
    for handle in stalled_tasks {
        if let Some(fate) = collect(handle, grace, &mut report, "STALLED").await {
            *report.events.entry(fate).or_default() += 1;
        }
    }
    report.expected = o.subscribers as u64 * o.publishers as u64 * o.messages;
    report.lost = report.expected.saturating_sub(report.delivered);
    let elapsed = (last_ns - start_ns) as f64 / 1e9;
    report.elapsed_s = elapsed;
    if report.delivered > 0 && elapsed > 0.0 {
        report.deliveries_per_s = Some(report.delivered as f64 / elapsed);
    }
    if report.delivered > 0 && report.wire_bytes > 0 {
        report.wire_bytes_per_delivery = Some(report.wire_bytes as f64 / report.delivered as f64);
    }
    let publishing = (last_send_ns - start_ns) as f64 / 1e9;
    if report.published > 0 && publishing > 0.0 {
        report.published_per_s = Some(report.published as f64 / publishing);
    }
    report.latency = Latency::from_histogram(&latency);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_loss_duplicates_and_order() {
        let mut r = SubResult::new(2, 100);
        let s = |publisher, seq| Stamp { publisher, seq, sent_ns: 10 };
        assert!(r.on_message(s(0, 0), 20, 100));
        assert!(r.on_message(s(0, 5), 20, 100));
        assert!(r.on_message(s(0, 3), 20, 100));
        assert!(!r.on_message(s(0, 3), 20, 100));
        assert!(r.on_message(s(1, 99), 20, 100));
        assert!(!r.on_message(s(1, 100), 20, 100));
        assert!(!r.on_message(s(2, 0), 20, 100));
        assert_eq!((r.unique, r.duplicates, r.out_of_order), (4, 1, 1));
        assert_eq!(r.errors["UNEXPECTED_MESSAGE"], 2);
        assert_eq!(r.latency.count(), 4);
        assert_eq!(r.latency.max(), 10);
    }

    #[test]
    fn window_admits_until_the_slowest_catches_up() {
        let flow = Flow::new(4, 2);
        let mut min = 0;
        for _ in 0..4 {
            assert!(flow.try_admit(&mut min));
        }
        assert!(!flow.try_admit(&mut min));
        flow.on_received(0);
        assert!(!flow.try_admit(&mut min), "the other subscriber is still behind");
        flow.gone(1);
        assert!(flow.try_admit(&mut min));
        assert_eq!(flow.progress(), 1);
        let open = Flow::new(0, 1);
        assert!((0..10_000).all(|_| open.try_admit(&mut 0)));
    }

    /// A bus that welcomes one subscriber, answers its join, sends it two of
    /// the three messages it expects, then closes it 1008.
    async fn closing_bus(listener: tokio::net::TcpListener) {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        ws.send(Message::text(r#"{"type":"event","payload":{"event":"welcome"}}"#)).await.unwrap();
        let join = ws.next().await.unwrap().unwrap();
        assert!(join.to_text().unwrap().contains("join_channel"), "{join:?}");
        ws.send(Message::text(r#"{"type":"response","payload":{}}"#)).await.unwrap();
        let writer = MessageWriter::new("bench", "c", 64);
        let mut text = String::new();
        for seq in 0..2 {
            writer.write(&mut text, Stamp { publisher: 0, seq, sent_ns: 0 });
            ws.send(Message::text(text.clone())).await.unwrap();
        }
        let close = CloseFrame { code: CloseCode::Policy, reason: "slow consumer".into() };
        ws.send(Message::Close(Some(close))).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }

    #[tokio::test]
    async fn a_subscriber_closed_by_the_bus_is_counted_by_code() {
        for kind in [SubscriberKind::Lean, SubscriberKind::Ordinary] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let bus = tokio::spawn(closing_bus(listener));
            let run = Arc::new(Run {
                peer: Peer::Bus,
                endpoint: Endpoint::new(&format!("ws://{addr}/ws"), addr, 0),
                sub_endpoints: Vec::new(),
                clock: Clock::new(),
                flow: Flow::new(512, 1),
                room: "bench".into(),
                channel: "c".into(),
                publishers: 1,
                messages: 3,
                payload: 64,
                text: false,
                rate: None,
                finished: AtomicUsize::new(0),
                halt: AtomicBool::new(false),
                setup: Semaphore::new(1),
                setup_limit: Duration::from_secs(30),
                api_key: None,
            });
            let (ready_tx, mut ready_rx) = mpsc::channel(1);
            let (_stop_tx, stop_rx) = watch::channel(false);
            let task = match kind {
                SubscriberKind::Lean => tokio::spawn(subscriber(Arc::clone(&run), 0, ready_tx, stop_rx)),
                SubscriberKind::Ordinary => tokio::spawn(ordinary_subscriber(Arc::clone(&run), 0, ready_tx, stop_rx)),
            };
            assert!(ready_rx.recv().await.unwrap().is_ok(), "{kind:?}");
            let result = tokio::time::timeout(Duration::from_secs(30), task).await.unwrap().unwrap();
            assert_eq!((result.unique, result.closed), (2, Some(1008)), "{kind:?}");
            assert_eq!(result.errors, BTreeMap::from([("CLOSE_1008".to_owned(), 1)]), "{kind:?}");
            // Gone: the window no longer waits for it.
            assert_eq!(run.flow.received[0].load(Ordering::SeqCst), u64::MAX, "{kind:?}");
            let mut report = Report::default();
            result.count_into(&mut report);
            result.count_into(&mut report);
            assert_eq!(report.closed, BTreeMap::from([("1008".to_owned(), 2)]), "{kind:?}");
            assert_eq!((report.delivered, report.errors["CLOSE_1008"]), (4, 2), "{kind:?}");
            tokio::time::timeout(Duration::from_secs(30), bus).await.unwrap().unwrap();
        }
    }
}
