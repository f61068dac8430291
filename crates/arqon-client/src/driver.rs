//! The connection task: owns the socket, correlates answers with requests,
//! tracks channel membership and cursors, and reconnects.
//!
//! [`Client`](crate::Client) handles reach it through one bounded queue of
//! [`Op`]s. Everything it knows lives on this one task, so none of it needs a
//! lock. Frame handlers are synchronous: they queue what they want written in
//! `outbox`, and the loop writes it before waiting for the next input.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arqon_protocol::{ChannelKey, ClientId, ErrorCode, IdGenerator, MessageId, RawValue};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::wire::{self, Inbound, Ws};
use crate::{ClientError, ClientOptions, Event, Incoming, Joined, ServerInfo};

/// What a request resolves to: the response payload, or why there is none.
pub(crate) type Reply = Result<Box<RawValue>, ClientError>;

/// A request from a [`Client`](crate::Client) handle.
#[derive(Debug)]
pub(crate) enum Op {
    /// A command; answered through `reply`.
    Request {
        /// The frame's id, which the answer's `request_id` names.
        id: MessageId,
        /// The encoded frame.
        frame: String,
        /// Membership bookkeeping to do when it succeeds.
        track: Track,
        reply: oneshot::Sender<Reply>,
    },
    /// A fire-and-forget message frame.
    Send { frame: String },
    /// Close the connection and stop.
    Close { done: oneshot::Sender<()> },
}

/// What a successful command means for the channels this client is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Track {
    None,
    Join(ChannelKey),
    Leave(ChannelKey),
}

impl Track {
    /// The bookkeeping for any command, read from its name and arguments, so
    /// that joins made through [`Client::command`](crate::Client::command)
    /// are re-joined after a reconnect too.
    pub(crate) fn of(name: &str, args: &serde_json::Value) -> Track {
        let key = || {
            let room = args.get("room")?.as_str()?;
            let channel = args.get("channel")?.as_str()?;
            ChannelKey::parse(room, channel).ok()
        };
        match (name, key()) {
            ("join_channel", Some(key)) => Track::Join(key),
            ("leave_channel", Some(key)) => Track::Leave(key),
            _ => Track::None,
        }
    }
}

/// What the handles can see of the connection.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) info: ServerInfo,
    pub(crate) connected: bool,
}

/// How often the loop checks the heartbeat deadline, internal request
/// deadlines, abandoned requests and channels waiting for a replay.
const TICK: Duration = Duration::from_millis(100);

/// Message ids remembered per channel to drop a message delivered twice.
/// Above the in-memory history length (1,000), so a replay of everything kept
/// cannot repeat what was delivered.
const RECENT_IDS: usize = 1024;

/// Longest the client waits for its close frame to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A syntactically valid id no bus ever assigns (ULID zero, 1970). Joining
/// with it as `since` replays everything the channel keeps (PROTOCOL.md
/// section 4: an unknown `since` gets everything kept).
const FROM_START: &str = "arq_00000000000000000000000000";

/// Where to resume a channel after a gap: the last message delivered from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Joined, but the channel's newest id at join time is not known yet (the
    /// `channel_info` asked right after joining has not answered).
    Unknown,
    /// Nothing delivered yet, and the channel was empty when joined: resume
    /// from the oldest kept message.
    Start,
    /// The last message delivered from the channel (or its newest message at
    /// join time, if none was delivered since).
    After(MessageId),
}

/// Whether a tracked channel's messages are being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Delivering.
    Live,
    /// The incoming queue overflowed: drop this channel's messages until the
    /// queue drains, then replay from the cursor.
    Gap,
    /// A re-join with `since` is in flight: drop live copies until its
    /// response (the replay that follows it holds them all).
    Syncing,
}

#[derive(Debug)]
struct ChannelState {
    cursor: Cursor,
    /// Where this connection's (re-)join started: what a `channel_gap`
    /// without `last_id` (nothing received here in history order) repairs
    /// from.
    anchor: Cursor,
    phase: Phase,
    recent: RecentIds,
}

impl ChannelState {
    fn new() -> Self {
        ChannelState {
            cursor: Cursor::Unknown,
            anchor: Cursor::Unknown,
            phase: Phase::Live,
            recent: RecentIds::default(),
        }
    }
}

/// The last [`RECENT_IDS`] message ids delivered from one channel.
#[derive(Debug, Default)]
struct RecentIds {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

impl RecentIds {
    fn contains(&self, id: &MessageId) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: MessageId) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > RECENT_IDS
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// A request waiting for its answer.
#[derive(Debug)]
enum Pending {
    /// A handle's request.
    User { reply: oneshot::Sender<Reply>, track: Track },
    /// A re-join with `since` made by the client itself.
    Rejoin {
        key: ChannelKey,
        /// Sent without `since` because the cursor was unknown: messages in
        /// the gap cannot be replayed.
        blind: bool,
        /// Sent with [`FROM_START`]: the bus will say "truncated", but
        /// everything since the join is kept unless it overflowed.
        from_start: bool,
        deadline: Instant,
    },
    /// `channel_info` asked right after joining, to learn the cursor.
    Baseline { key: ChannelKey, deadline: Instant },
}

/// The resynchronisation in progress after a reconnect.
#[derive(Debug)]
struct Resync {
    client_id: ClientId,
    attempts: u32,
    /// Channels whose re-join has not resolved yet. Keyed, not counted, so
    /// that a channel left or deleted meanwhile cannot stall the report.
    waiting: HashSet<ChannelKey>,
    rejoined: Vec<ChannelKey>,
    failed: Vec<(ChannelKey, ClientError)>,
}

/// Why a connection's loop ended.
#[derive(Debug)]
enum Exit {
    /// The connection failed; reconnect (if allowed).
    Lost(ClientError),
    /// The client is closing, at a handle's request (`done`) or because every
    /// handle is gone.
    Close(Option<oneshot::Sender<()>>),
}

/// The connection task's state.
#[derive(Debug)]
pub(crate) struct Driver {
    url: String,
    options: Arc<ClientOptions>,
    ops: mpsc::Receiver<Op>,
    events: mpsc::Sender<Incoming>,
    snapshot: watch::Sender<Snapshot>,
    ids: IdGenerator,
    channels: HashMap<ChannelKey, ChannelState>,
    /// Requests on the wire. Each user entry has a caller waiting on it, and
    /// entries whose caller timed out are pruned every tick.
    pending: HashMap<MessageId, Pending>,
    /// Requests received while disconnected, sent once connected again.
    /// Bounded by `command_capacity`: when full, `ops` is not read, so
    /// handles wait (within their timeouts).
    parked: VecDeque<Op>,
    /// Frames to write before the next read. Not a queue that can grow: it
    /// holds what handling one input produced (one frame per request, or one
    /// re-join per tracked channel) and is emptied before the next input.
    outbox: Vec<String>,
    /// Items other than channel messages dropped on a full queue, not yet
    /// reported.
    lagged: u64,
    resync: Option<Resync>,
    backoff: Backoff,
}

impl Driver {
    pub(crate) fn new(
        url: String,
        options: Arc<ClientOptions>,
        ops: mpsc::Receiver<Op>,
        events: mpsc::Sender<Incoming>,
        snapshot: watch::Sender<Snapshot>,
    ) -> Self {
        let backoff = Backoff::new(options.backoff_initial, options.backoff_max);
        Driver {
            url,
            options,
            ops,
            events,
            snapshot,
            ids: IdGenerator::new(),
            channels: HashMap::new(),
            pending: HashMap::new(),
            parked: VecDeque::new(),
            outbox: Vec::new(),
            lagged: 0,
            resync: None,
            backoff,
        }
    }

    /// Runs until the client closes: serves the first connection, then
    /// reconnects after each loss.
    pub(crate) async fn run(mut self, ws: Ws, info: ServerInfo) {
        let mut connection = (ws, info, None);
        loop {
            let (ws, info, attempts) = connection;
            let error = match self.session(ws, info, attempts).await {
                Exit::Close(done) => return self.finish(ClientError::Closed, done),
                Exit::Lost(error) => error,
            };
            debug!(%error, "connection lost");
            self.lose_connection();
            if !self.options.reconnect {
                return self.finish(error, None);
            }
            self.emit(Incoming::Disconnected { error });
            match self.reconnect().await {
                Ok((ws, info, attempts)) => connection = (ws, info, Some(attempts)),
                Err(Exit::Lost(error)) => return self.finish(error, None),
                Err(Exit::Close(done)) => return self.finish(ClientError::Closed, done),
            }
        }
    }

    /// Stops for good: everything waiting fails with `Closed` (by dropping
    /// its reply), the stream gets its last item and then ends.
    fn finish(mut self, error: ClientError, done: Option<oneshot::Sender<()>>) {
        self.snapshot.send_modify(|s| s.connected = false);
        self.pending.clear();
        self.parked.clear();
        self.emit(Incoming::Closed { error });
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Fails what was in flight and forgets per-connection state; channels
    /// are kept, with their cursors, to be re-joined.
    fn lose_connection(&mut self) {
        self.snapshot.send_modify(|s| s.connected = false);
        for (_, pending) in self.pending.drain() {
            if let Pending::User { reply, .. } = pending {
                let _ = reply.send(Err(ClientError::ConnectionLost));
            }
        }
        self.outbox.clear();
        self.resync = None;
    }

    /// Connects again, with backoff, parking requests meanwhile.
    async fn reconnect(&mut self) -> Result<(Ws, ServerInfo, u32), Exit> {
        let mut attempts = 0u32;
        loop {
            let delay = self.backoff.next_delay();
            self.parking(tokio::time::sleep(delay)).await?;
            attempts = attempts.saturating_add(1);
            let url = self.url.clone();
            let options = Arc::clone(&self.options);
            match self.parking(async move { wire::open(&url, &options).await }).await? {
                Ok((ws, info)) => {
                    self.backoff.reset();
                    return Ok((ws, info, attempts));
                }
                // Credentials the bus refuses will not get better by retrying.
                Err(error @ ClientError::Rejected { code: ErrorCode::Unauthorized, .. }) => {
                    return Err(Exit::Lost(error));
                }
                Err(error) => debug!(%error, attempts, "reconnect attempt failed"),
            }
        }
    }

    /// Runs `fut` while taking requests into `parked`.
    async fn parking<F: Future>(&mut self, fut: F) -> Result<F::Output, Exit> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                output = &mut fut => return Ok(output),
                op = self.ops.recv(), if self.parked.len() < self.options.command_capacity => match op {
                    None => return Err(Exit::Close(None)),
                    Some(Op::Close { done }) => return Err(Exit::Close(Some(done))),
                    Some(op) => {
                        // Drop requests whose caller already gave up.
                        self.parked.retain(|op| !matches!(op, Op::Request { reply, .. } if reply.is_closed()));
                        self.parked.push_back(op);
                    }
                },
            }
        }
    }

    /// Serves one connection until it fails or the client closes.
    async fn session(&mut self, mut ws: Ws, info: ServerInfo, attempts: Option<u32>) -> Exit {
        // A bus announcing no heartbeat (0) sends no pings: silence is then
        // no sign of death, and only TCP and the request timeouts apply.
        let dead_after = (info.heartbeat_s > 0).then(|| Duration::from_secs(info.heartbeat_s) * 2);
        let write_limit = dead_after.unwrap_or(self.options.request_timeout);
        let client_id = info.client_id;
        self.snapshot.send_replace(Snapshot { info, connected: true });
        if let Some(attempts) = attempts {
            self.start_resync(client_id, attempts);
        }
        while let Some(op) = self.parked.pop_front() {
            self.submit(op);
        }
        let mut last_seen = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if let Err(error) = self.flush(&mut ws, write_limit).await {
                return Exit::Lost(error);
            }
            tokio::select! {
                frame = ws.next() => {
                    last_seen = Instant::now();
                    match frame {
                        Some(Ok(tungstenite::Message::Text(text))) => self.on_text(text.as_str()),
                        Some(Ok(tungstenite::Message::Close(close))) => {
                            let why = close.map(|c| format!(" ({} {})", c.code, c.reason)).unwrap_or_default();
                            return Exit::Lost(ClientError::Transport(format!("closed by the bus{why}")));
                        }
                        // tungstenite answers pings itself; any frame shows the link is alive.
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return Exit::Lost(error.into()),
                        None => return Exit::Lost(ClientError::Transport("connection closed".to_owned())),
                    }
                }
                op = self.ops.recv() => match op {
                    Some(Op::Close { done }) => {
                        let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
                        return Exit::Close(Some(done));
                    }
                    Some(op) => self.submit(op),
                    None => {
                        let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
                        return Exit::Close(None);
                    }
                },
                _ = tick.tick() => {
                    // The bus pings every heartbeat: silence for two means a
                    // dead link (or a frozen middlebox) that TCP may take
                    // minutes to notice.
                    if let Some(dead_after) = dead_after
                        && last_seen.elapsed() > dead_after
                    {
                        return Exit::Lost(ClientError::Timeout(dead_after));
                    }
                    if let Err(error) = self.housekeeping() {
                        return Exit::Lost(error);
                    }
                }
            }
        }
    }

    /// Writes the outbox. A write that cannot complete within two heartbeats
    /// (or a request timeout, without heartbeat) means the peer stopped
    /// reading.
    async fn flush(&mut self, ws: &mut Ws, limit: Duration) -> Result<(), ClientError> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let frames = std::mem::take(&mut self.outbox);
        let write = async {
            for frame in frames {
                ws.feed(tungstenite::Message::text(frame)).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(result) => result.map_err(ClientError::from),
            Err(_) => Err(ClientError::Timeout(limit)),
        }
    }

    /// Takes a handle's request while connected.
    fn submit(&mut self, op: Op) {
        match op {
            Op::Request { id, frame, track, reply } => {
                if reply.is_closed() {
                    return;
                }
                self.pending.insert(id, Pending::User { reply, track });
                self.outbox.push(frame);
            }
            Op::Send { frame } => self.outbox.push(frame),
            // Handled by the loops, which own the socket.
            Op::Close { done } => drop(done),
        }
    }

    /// Periodic upkeep while connected.
    fn housekeeping(&mut self) -> Result<(), ClientError> {
        let now = Instant::now();
        let mut expired = false;
        self.pending.retain(|_, pending| match pending {
            // A caller that timed out has dropped its receiver.
            Pending::User { reply, .. } => !reply.is_closed(),
            Pending::Rejoin { deadline, .. } | Pending::Baseline { deadline, .. } => {
                expired |= *deadline <= now;
                true
            }
        });
        if expired {
            // The bus has stopped answering this connection: start over.
            return Err(ClientError::Timeout(self.options.request_timeout));
        }
        self.flush_lagged();
        // Replay channels that overflowed, once the queue is half empty.
        let capacity = self.events.max_capacity();
        if self.events.capacity() * 2 >= capacity {
            let gaps: Vec<ChannelKey> =
                self.channels.iter().filter(|(_, s)| s.phase == Phase::Gap).map(|(k, _)| k.clone()).collect();
            for key in gaps {
                self.send_rejoin(key);
            }
        }
        Ok(())
    }

    /// After a reconnect: re-join every channel from its cursor.
    fn start_resync(&mut self, client_id: ClientId, attempts: u32) {
        let keys: Vec<ChannelKey> = self.channels.keys().cloned().collect();
        self.resync = Some(Resync {
            client_id,
            attempts,
            waiting: keys.iter().cloned().collect(),
            rejoined: Vec::new(),
            failed: Vec::new(),
        });
        for key in keys {
            self.send_rejoin(key);
        }
        self.maybe_finish_resync();
    }

    /// Re-joins a tracked channel with `since` = its cursor.
    fn send_rejoin(&mut self, key: ChannelKey) {
        let Some(state) = self.channels.get_mut(&key) else { return };
        state.phase = Phase::Syncing;
        state.anchor = state.cursor;
        let since = match state.cursor {
            Cursor::After(id) => Some(id),
            Cursor::Start => MessageId::parse(FROM_START).ok(),
            Cursor::Unknown => None,
        };
        #[derive(Serialize)]
        struct Args<'a> {
            room: &'a str,
            channel: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            since: Option<MessageId>,
        }
        let args = Args { room: key.room.as_str(), channel: key.channel.as_str(), since };
        let id = self.ids.message_id();
        match wire::command_frame(id, "join_channel", Some(&args)) {
            Ok(frame) => self.outbox.push(frame),
            Err(error) => warn!(%error, "cannot encode a re-join"),
        }
        let pending = Pending::Rejoin {
            blind: state.cursor == Cursor::Unknown,
            from_start: state.cursor == Cursor::Start,
            key,
            deadline: Instant::now() + self.options.request_timeout,
        };
        self.pending.insert(id, pending);
    }

    fn send_baseline(&mut self, key: ChannelKey) {
        #[derive(Serialize)]
        struct Args<'a> {
            room: &'a str,
            channel: &'a str,
        }
        let id = self.ids.message_id();
        let args = Args { room: key.room.as_str(), channel: key.channel.as_str() };
        match wire::command_frame(id, "channel_info", Some(&args)) {
            Ok(frame) => self.outbox.push(frame),
            Err(error) => warn!(%error, "cannot encode channel_info"),
        }
        self.pending.insert(id, Pending::Baseline { key, deadline: Instant::now() + self.options.request_timeout });
    }

    /// Stops tracking a channel (left, deleted, or not re-joinable).
    fn untrack(&mut self, key: &ChannelKey) {
        self.channels.remove(key);
        if let Some(resync) = &mut self.resync {
            resync.waiting.remove(key);
        }
        self.maybe_finish_resync();
    }

    fn maybe_finish_resync(&mut self) {
        if self.resync.as_ref().is_some_and(|r| r.waiting.is_empty())
            && let Some(resync) = self.resync.take()
        {
            self.emit(Incoming::Reconnected {
                client_id: resync.client_id,
                attempts: resync.attempts,
                rejoined: resync.rejoined,
                failed: resync.failed,
            });
        }
    }

    fn on_text(&mut self, text: &str) {
        let frame: Inbound<'_> = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(error) => {
                warn!(%error, "ignoring a frame that is not an envelope");
                return;
            }
        };
        match &*frame.kind {
            "response" => {
                let payload = frame.payload.unwrap_or(RawValue::NULL).to_owned();
                match frame.request_id {
                    Some(id) => self.on_answer(id, Ok(payload)),
                    None => warn!("ignoring a response without request_id"),
                }
            }
            "error" => {
                let request_id = frame.request_id;
                let error = frame.into_error();
                match request_id {
                    Some(id) if self.pending.contains_key(&id) => self.on_answer(id, Err(error)),
                    _ => self.emit(Incoming::Error { request_id, error }),
                }
            }
            "message" => match frame.into_message() {
                Ok(message) => self.on_message(message),
                Err(error) => warn!(%error, "ignoring a malformed message"),
            },
            "event" => self.on_event(frame.payload),
            other => debug!(kind = other, "ignoring a frame of unknown type"),
        }
    }

    fn on_answer(&mut self, id: MessageId, answer: Reply) {
        let Some(pending) = self.pending.remove(&id) else {
            // A request whose caller gave up, answered late.
            return;
        };
        match pending {
            Pending::User { reply, track } => {
                if answer.is_ok() {
                    match track {
                        Track::Join(key) => {
                            if !self.channels.contains_key(&key) {
                                self.channels.insert(key.clone(), ChannelState::new());
                                self.send_baseline(key);
                            }
                        }
                        Track::Leave(key) => self.untrack(&key),
                        Track::None => {}
                    }
                }
                let _ = reply.send(answer);
            }
            Pending::Rejoin { key, blind, from_start, .. } => self.on_rejoined(key, blind, from_start, answer),
            Pending::Baseline { key, .. } => {
                #[derive(Deserialize)]
                struct Info {
                    last_id: Option<MessageId>,
                }
                let info = answer.ok().and_then(|raw| serde_json::from_str::<Info>(raw.get()).ok());
                if let (Some(info), Some(state)) = (info, self.channels.get_mut(&key))
                    && state.cursor == Cursor::Unknown
                {
                    // Nothing delivered since the join: every message
                    // delivered after this answer is newer than last_id.
                    state.cursor = info.last_id.map_or(Cursor::Start, Cursor::After);
                    state.anchor = state.cursor;
                }
            }
        }
    }

    fn on_rejoined(&mut self, key: ChannelKey, blind: bool, from_start: bool, answer: Reply) {
        if !self.channels.contains_key(&key) {
            // Left or deleted while the re-join was in flight.
            return;
        }
        let joined = answer.and_then(|raw| {
            serde_json::from_str::<Joined>(raw.get()).map_err(|e| ClientError::Decode(format!("join_channel: {e}")))
        });
        let in_resync = self.resync.as_ref().is_some_and(|r| r.waiting.contains(&key));
        match joined {
            Ok(joined) => {
                let mut needs_baseline = false;
                // A later re-join of the same channel (a gap repair) is still
                // in flight: its replay holds the live copies, keep dropping.
                let again = self.pending.values().any(|p| matches!(p, Pending::Rejoin { key: k, .. } if *k == key));
                if let Some(state) = self.channels.get_mut(&key)
                    && !again
                {
                    state.phase = Phase::Live;
                    needs_baseline = state.cursor == Cursor::Unknown;
                }
                if blind || (joined.truncated == Some(true) && !from_start) {
                    self.emit(Incoming::Truncated { channel: key.clone() });
                }
                if needs_baseline {
                    self.send_baseline(key.clone());
                }
                if let Some(resync) = &mut self.resync
                    && resync.waiting.remove(&key)
                {
                    resync.rejoined.push(key);
                }
                self.maybe_finish_resync();
            }
            // The frame was not processed: try again on a later tick.
            Err(ClientError::Rejected { code: ErrorCode::RateLimited, .. }) => {
                if let Some(state) = self.channels.get_mut(&key) {
                    state.phase = Phase::Gap;
                }
            }
            // History cannot be read now: membership matters more than the
            // replay, so join without `since` (and report the possible gap).
            Err(ClientError::Rejected { code: ErrorCode::StorageUnavailable, .. }) if !blind => {
                if let Some(state) = self.channels.get_mut(&key) {
                    state.cursor = Cursor::Unknown;
                }
                self.send_rejoin(key);
            }
            Err(error) => {
                debug!(%error, channel = %key, "re-join failed");
                if in_resync && let Some(resync) = &mut self.resync {
                    resync.failed.push((key.clone(), error));
                } else {
                    self.emit(Incoming::Truncated { channel: key.clone() });
                }
                self.untrack(&key);
            }
        }
    }

    fn on_message(&mut self, message: crate::Message) {
        let Some(key) = message.channel_key() else {
            // Room-wide and direct messages: live only, nothing to replay.
            return self.emit(Incoming::Message(message));
        };
        let Some(state) = self.channels.get_mut(&key) else {
            return self.emit(Incoming::Message(message));
        };
        if state.phase != Phase::Live || state.recent.contains(&message.id) {
            // Syncing or Gap: the replay will bring it. Seen: a duplicate.
            return;
        }
        let id = message.id;
        if self.lagged > 0 {
            Self::try_flush_lagged(&self.events, &mut self.lagged);
        }
        match self.events.try_send(Incoming::Message(message)) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {
                state.cursor = Cursor::After(id);
                state.recent.insert(id);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!(channel = %key, "incoming queue full: pausing the channel until it drains");
                state.phase = Phase::Gap;
            }
        }
    }

    fn on_event(&mut self, payload: Option<&RawValue>) {
        let payload: serde_json::Value =
            payload.and_then(|raw| serde_json::from_str(raw.get()).ok()).unwrap_or_default();
        let name = payload.get("event").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
        let event = match name.as_str() {
            "welcome" => {
                match serde_json::from_value::<ServerInfo>(payload) {
                    Ok(info) => self.snapshot.send_modify(|s| s.info = info),
                    Err(error) => warn!(%error, "ignoring a malformed welcome"),
                }
                return;
            }
            "member_joined" | "member_left" => {
                #[derive(Deserialize)]
                struct Member {
                    room: arqon_protocol::Name,
                    channel: arqon_protocol::Name,
                    client_id: ClientId,
                    #[serde(default)]
                    user: Option<String>,
                    #[serde(default)]
                    info: serde_json::Value,
                }
                match serde_json::from_value::<Member>(payload.clone()) {
                    Ok(m) if name == "member_joined" => Event::MemberJoined {
                        room: m.room,
                        channel: m.channel,
                        client_id: m.client_id,
                        user: m.user,
                        info: m.info,
                    },
                    Ok(m) => Event::MemberLeft {
                        room: m.room,
                        channel: m.channel,
                        client_id: m.client_id,
                        user: m.user,
                        info: m.info,
                    },
                    Err(_) => Event::Other { name, payload },
                }
            }
            "channel_left" => {
                #[derive(Deserialize)]
                struct Left {
                    room: arqon_protocol::Name,
                    channel: arqon_protocol::Name,
                }
                match serde_json::from_value::<Left>(payload.clone()) {
                    Ok(left) => {
                        self.untrack(&ChannelKey::new(left.room.clone(), left.channel.clone()));
                        Event::ChannelLeft { room: left.room, channel: left.channel }
                    }
                    Err(_) => Event::Other { name, payload },
                }
            }
            "disconnected" => {
                #[derive(Deserialize)]
                struct Notice {
                    code: u16,
                    #[serde(default)]
                    reason: Option<String>,
                }
                match serde_json::from_value::<Notice>(payload.clone()) {
                    Ok(n) => Event::Disconnected { code: n.code, reason: n.reason.unwrap_or_default() },
                    Err(_) => Event::Other { name, payload },
                }
            }
            "channel_deleted" => {
                #[derive(Deserialize)]
                struct Deleted {
                    room: arqon_protocol::Name,
                    channel: arqon_protocol::Name,
                }
                match serde_json::from_value::<Deleted>(payload.clone()) {
                    Ok(d) => {
                        self.untrack(&ChannelKey::new(d.room.clone(), d.channel.clone()));
                        Event::ChannelDeleted { room: d.room, channel: d.channel }
                    }
                    Err(_) => Event::Other { name, payload },
                }
            }
            "channel_gap" => {
                #[derive(Deserialize)]
                struct Gap {
                    room: arqon_protocol::Name,
                    channel: arqon_protocol::Name,
                    last_id: Option<MessageId>,
                }
                match serde_json::from_value::<Gap>(payload.clone()) {
                    Ok(gap) => {
                        let event = Event::ChannelGap {
                            room: gap.room.clone(),
                            channel: gap.channel.clone(),
                            last_id: gap.last_id,
                        };
                        // The event first: what the repair replays comes after it.
                        self.emit(Incoming::Event(event));
                        self.repair_gap(ChannelKey::new(gap.room, gap.channel), gap.last_id);
                        return;
                    }
                    Err(_) => Event::Other { name, payload },
                }
            }
            "shutdown" => {
                let reason = payload.get("reason").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
                Event::Shutdown { reason }
            }
            _ => Event::Other { name, payload },
        };
        self.emit(Incoming::Event(event));
    }

    /// `channel_gap`: re-join from `last_id` (or from where this connection
    /// joined). Live copies are dropped until the answer, because the replay
    /// before it holds them; ids already delivered are skipped.
    fn repair_gap(&mut self, key: ChannelKey, last_id: Option<MessageId>) {
        let Some(state) = self.channels.get_mut(&key) else { return };
        state.cursor = last_id.map_or(state.anchor, Cursor::After);
        self.send_rejoin(key);
    }

    /// Queues an item that cannot be replayed; on a full queue it is dropped
    /// and counted, to be reported as `Lagged`.
    fn emit(&mut self, item: Incoming) {
        if self.lagged > 0 && !Self::try_flush_lagged(&self.events, &mut self.lagged) {
            self.lagged += 1;
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(item) {
            self.lagged += 1;
        }
    }

    fn flush_lagged(&mut self) {
        if self.lagged > 0 {
            Self::try_flush_lagged(&self.events, &mut self.lagged);
        }
    }

    /// Reports dropped items; false if the queue is still full.
    fn try_flush_lagged(events: &mpsc::Sender<Incoming>, lagged: &mut u64) -> bool {
        match events.try_send(Incoming::Lagged { dropped: *lagged }) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {
                *lagged = 0;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => false,
        }
    }
}
