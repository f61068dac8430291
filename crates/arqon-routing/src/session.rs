//! One connected client's view of the bus: reads its frames, answers them.

use std::borrow::Cow;
use std::sync::Arc;

use arqon_outbound::Outbound;
use arqon_protocol::encode::{self, MessageFrame};
use arqon_protocol::{
    ChannelKey, ClientFrame, ClientId, CloseReason, ErrorCode, Frame, FrameBody, IdGenerator, MessageId, ProtocolError,
    RawJson, RecentNames, Role, Sender, Target, Timestamp,
};
use serde::Serialize;

use crate::channel::Channel;
use crate::client::ClientEntry;
use crate::commands;
use crate::observer::{BusEvent, FrameKind, LATENCY_SAMPLE};
use crate::rate::{Limiter, Limits, Verdict};
use crate::router::{Create, Router};

/// When a frame arrived: the instant its rate limits and routing latency
/// count from, and the wall-clock time a message is stamped with. A transport
/// takes one per read from its socket and hands it over with each frame that
/// read completed ([`Session::handle_text_at`]): frames that arrived together
/// share it, and the clock is read once per read rather than once per frame.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    instant: tokio::time::Instant,
    timestamp: Timestamp,
}

impl Arrival {
    /// Now.
    pub fn now() -> Self {
        Arrival { instant: tokio::time::Instant::now(), timestamp: Timestamp::now() }
    }

    /// At `instant`, stamped `timestamp` (a transport that keeps its own
    /// clock, or a frame taken from a queue some time after it arrived).
    pub fn at(instant: tokio::time::Instant, timestamp: Timestamp) -> Self {
        Arrival { instant, timestamp }
    }
}

/// A connected client's session. Feed it every frame the client sends; it
/// answers through the client's [`Inbox`](crate::Inbox). Dropping it
/// disconnects the client (leaving its channels).
#[derive(Debug)]
pub struct Session {
    pub(crate) router: Router,
    pub(crate) client: Arc<ClientEntry>,
    pub(crate) ids: IdGenerator,
    /// Every frame the client sends (text, binary, ping) passes through it.
    limiter: Limiter,
    /// When the frame being handled arrived (for routing latency).
    received: tokio::time::Instant,
    /// Messages routed since the last one timed (see [`Session::timed`]).
    untimed: u8,
    /// The credentials' expiry timer, if any: aborted when the session ends,
    /// so that nothing the connection started outlives it.
    pub(crate) expiry: Option<crate::router::ExpiryTimer>,
    /// The response payload of the command being run, on an API session
    /// (which answers through [`Session::call`], not a frame).
    pub(crate) captured: Option<String>,
    /// What a client that sends messages keeps between them; made on its
    /// first message, so that a connection that only listens (most of them)
    /// does not carry it.
    recent: Option<Box<Recent>>,
}

/// A sender's last target, reused while it keeps sending there.
#[derive(Debug, Default)]
struct Recent {
    /// The room and channel names it sent to last (no allocation per message).
    names: RecentNames,
    /// The channel it published to last, while it is not deleted: the next
    /// message skips the channel table.
    channel: Option<Arc<Channel>>,
}

#[derive(Serialize)]
struct Welcome<'a> {
    event: &'static str,
    client_id: ClientId,
    user: Option<&'a str>,
    role: Role,
    server_version: &'a str,
    heartbeat_s: u64,
    limits: WelcomeLimits,
}

#[derive(Serialize)]
struct WelcomeLimits {
    max_message_bytes: usize,
    rate_per_s: u32,
    burst: u32,
    bytes_per_s: u64,
    bytes_burst: u64,
    max_backlog_bytes: usize,
}

impl Session {
    pub(crate) fn new(router: Router, client: Arc<ClientEntry>) -> Self {
        let config = &router.inner.config;
        let rate = config.rate_for(client.role);
        let limiter = Limiter::new(Limits {
            frames_per_s: rate.rate_per_s,
            frame_burst: rate.burst,
            bytes_per_s: config.bytes_per_s,
            byte_burst: config.bytes_burst,
            abuse_limit: config.abuse_limit,
            abuse_window: config.abuse_window,
        });
        Session {
            router,
            client,
            ids: IdGenerator::new(),
            limiter,
            received: tokio::time::Instant::now(),
            untimed: 0,
            expiry: None,
            captured: None,
            recent: None,
        }
    }

    /// This client's id.
    pub fn client_id(&self) -> ClientId {
        self.client.id
    }

    /// This client's role.
    pub fn role(&self) -> Role {
        self.client.role
    }

    pub(crate) fn send_welcome(&self) {
        let config = &self.router.inner.config;
        let mut ids = IdGenerator::new();
        let welcome = Welcome {
            event: "welcome",
            client_id: self.client.id,
            user: self.client.user.as_deref(),
            role: self.client.role,
            server_version: &config.server_version,
            heartbeat_s: config.heartbeat_s,
            limits: WelcomeLimits {
                max_message_bytes: config.max_message_bytes,
                rate_per_s: config.rate_for(self.client.role).rate_per_s,
                burst: config.rate_for(self.client.role).burst,
                bytes_per_s: config.bytes_per_s,
                bytes_burst: config.bytes_burst,
                max_backlog_bytes: config.max_backlog_bytes,
            },
        };
        self.push(encode::event(ids.message_id(), Timestamp::now(), &welcome));
    }

    /// Handles one text frame from the client, arrived now.
    pub async fn handle_text(&mut self, text: &str) {
        self.handle_text_at(text, Arrival::now()).await;
    }

    /// Handles one text frame from the client that arrived at `arrival`: the
    /// frame's rate limits and routing latency count from it, and a message
    /// is stamped with its time.
    pub async fn handle_text_at(&mut self, text: &str, arrival: Arrival) {
        if let Some(rest) = self.handle_text_now(text, arrival) {
            rest.await;
        }
    }

    /// [`Session::handle_text_at`] as far as it goes without waiting, which
    /// for a message to a channel the client sent to before is all of it:
    /// returns the rest to await, if any. A transport that boxes each
    /// frame's future then boxes only that rest (commands, a first message
    /// to a channel, a publish that must wait for the channel or storage).
    /// Await the rest before handing over the client's next frame: a
    /// client's frames are handled in the order it sent them.
    pub fn handle_text_now(&mut self, text: &str, arrival: Arrival) -> Option<impl Future<Output = ()> + Send> {
        self.received = arrival.instant;
        // Checked before parsing; the id is recovered only to let the client
        // correlate the refusal.
        if !self.admit(text.len(), "frame not processed", || arqon_protocol::extract_id(text)) {
            return None;
        }
        let now = arrival.timestamp;
        let decoded = match self.recent.as_mut() {
            Some(recent) => arqon_protocol::decode_with(text, now, &mut recent.names),
            // Kept from the first message on (a connection that only sends
            // commands keeps nothing).
            None => {
                let mut fresh = RecentNames::default();
                let decoded = arqon_protocol::decode_with(text, now, &mut fresh);
                if let Ok(ClientFrame { body: FrameBody::Message { .. }, .. }) = &decoded {
                    self.recent = Some(Box::new(Recent { names: fresh, channel: None }));
                }
                decoded
            }
        };
        let frame = match decoded {
            Ok(frame) => frame,
            Err(error) => {
                self.observe(&BusEvent::FrameReceived { kind: FrameKind::Invalid });
                self.send_error(&error);
                return None;
            }
        };
        let kind = match frame.body {
            FrameBody::Message { .. } => FrameKind::Message,
            FrameBody::Command { .. } => FrameKind::Command,
        };
        self.observe(&BusEvent::FrameReceived { kind });
        let request_id = frame.id;
        let later = match self.dispatch_now(frame, now) {
            Ok(None) => return None,
            Ok(Some(later)) => later,
            Err(error) => {
                self.send_error(&error.with_request_id(request_id));
                return None;
            }
        };
        Some(async move {
            if let Err(error) = self.dispatch_later(later, now).await {
                self.send_error(&error.with_request_id(request_id));
            }
        })
    }

    /// Answers a binary frame of `len` bytes: not part of the protocol, but
    /// counted against the client's frame and byte rates like any frame.
    pub fn handle_binary(&mut self, len: usize) {
        self.received = tokio::time::Instant::now();
        if !self.admit(len, "frame not processed", || None) {
            return;
        }
        self.observe(&BusEvent::FrameReceived { kind: FrameKind::Binary });
        self.send_error(&ProtocolError::new(
            ErrorCode::UnsupportedFrame,
            "binary frames are not supported; send JSON text frames",
        ));
    }

    /// Counts a ping of `len` payload bytes against the client's rates;
    /// returns whether the transport may answer it with a pong. An over-rate
    /// ping gets `RATE_LIMITED` instead and counts as a refusal.
    pub fn handle_ping(&mut self, len: usize) -> bool {
        self.received = tokio::time::Instant::now();
        self.admit(len, "ping not answered", || None)
    }

    /// Runs a frame of `bytes` bytes, received at `self.received`, past the
    /// client's limits. Over them, the
    /// client gets `RATE_LIMITED` with `retry_after_ms` (`what` says what
    /// became of the frame) and, once it keeps sending over its rate, is
    /// closed with 1008.
    fn admit(&mut self, bytes: usize, what: &str, request_id: impl FnOnce() -> Option<MessageId>) -> bool {
        let Verdict::Refused { retry_after, abusive } = self.limiter.admit(bytes, self.received) else {
            return true;
        };
        self.observe(&BusEvent::RateLimited { client_id: self.client.id });
        let retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX).max(1);
        let error = ProtocolError::new(ErrorCode::RateLimited, format!("rate limit exceeded; {what}"))
            .with_request_id(request_id());
        self.send_error_with(&error, Some(retry_after_ms));
        if abusive {
            tracing::info!(client_id = %self.client.id, "closing a client that kept exceeding its rate limit");
            self.client.outlet.close(CloseReason::ABUSE);
        }
        false
    }

    /// Answers a frame over `max_message_bytes` (best effort: the transport
    /// closes with 1009 right after).
    pub fn handle_oversize(&mut self) {
        self.observe(&BusEvent::FrameReceived { kind: FrameKind::Oversize });
        let limit = self.router.inner.config.max_message_bytes;
        self.send_error(&ProtocolError::new(
            ErrorCode::MessageTooLarge,
            format!("frame exceeds max_message_bytes ({limit})"),
        ));
        self.client.outlet.close(CloseReason::TOO_LARGE);
    }

    /// Runs a frame as far as it goes without waiting; returns what is left.
    fn dispatch_now<'a>(&mut self, frame: ClientFrame<'a>, now: Timestamp) -> Result<Option<Later<'a>>, ProtocolError> {
        let own = frame.from_is(self.client.id);
        let (target, payload) = match frame.body {
            FrameBody::Message { target, payload } => (target, payload),
            FrameBody::Command { name, args } => return Ok(Some(Later::Command { name, args, id: frame.id, own })),
        };
        if !own {
            return Err(spoofed_from());
        }
        self.require(Role::User, "sending messages")?;
        let id = frame.id.unwrap_or_else(|| self.ids.message_id_at(now));
        let out = self.prepare_message(&target, id, now, payload, frame.meta)?;
        match self.route_now(&target, &out) {
            Routing::Done(fanout) => {
                self.routed(&target, &out, fanout?);
                Ok(None)
            }
            Routing::Waits(_) => Ok(Some(Later::Publish { target, out })),
        }
    }

    /// Runs what [`Session::dispatch_now`] left.
    async fn dispatch_later(&mut self, later: Later<'_>, now: Timestamp) -> Result<(), ProtocolError> {
        match later {
            Later::Command { name, args, id, own } => {
                if !own {
                    // Checked once the command is known to exist and its
                    // args parse, as before: the precedence of errors.
                    let command = find_command(&name, self.client.server)?;
                    commands::Args::parse(args, command.args)?;
                    return Err(spoofed_from());
                }
                self.run_command(&name, args, id, now).await
            }
            Later::Publish { target, out } => {
                // `dispatch_now` found the channel's publish must wait: go
                // straight to waiting rather than try at once again.
                let fanout = match &target {
                    Target::Channel(key) => self.publish_later(key, &out).await?,
                    _ => self.route(&target, &out).await?,
                };
                self.routed(&target, &out, fanout);
                Ok(())
            }
        }
    }

    /// Runs one command for this session: lookup, args, role, then the
    /// command itself, observed (one path for WebSocket frames and the
    /// server API).
    async fn run_command(
        &mut self,
        name: &str,
        args: Option<RawJson<'_>>,
        request_id: Option<MessageId>,
        now: Timestamp,
    ) -> Result<(), ProtocolError> {
        let command = find_command(name, self.client.server)?;
        let args = commands::Args::parse(args, command.args)?;
        if self.client.role < command.role {
            return Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!("{} needs role {} (you are {})", command.name, command.role, self.client.role),
            ));
        }
        let started = std::time::Instant::now();
        let mut ctx = commands::Ctx { session: self, request_id, now };
        // Boxed: a command's future is the largest the session awaits,
        // and the transport boxes the whole handler per frame; inline,
        // it would push every message's allocation past the
        // allocator's small-size fast path.
        let result = Box::pin(commands::run(command, &mut ctx, args)).await.map_err(|e| e.into_protocol());
        self.observe(&BusEvent::CommandExecuted {
            command: command.name,
            error: result.as_ref().err().map(|e| e.code),
            duration: started.elapsed(),
        });
        result
    }

    /// Runs one command for the application's backend (a session from
    /// [`Router::api_session`](crate::Router::api_session)): `args` is the
    /// command's args object; the answer is the response `payload` as JSON
    /// text, or the error the WebSocket path would send.
    pub async fn call(&mut self, command: &str, args: Option<RawJson<'_>>) -> Result<String, ProtocolError> {
        self.received = tokio::time::Instant::now();
        self.observe(&BusEvent::FrameReceived { kind: FrameKind::Command });
        self.captured = None;
        self.run_command(command, args, None, Timestamp::now()).await?;
        Ok(self.captured.take().unwrap_or_else(|| "{}".to_owned()))
    }

    /// Routes a message; shared by fire-and-forget messages and `publish`.
    pub(crate) async fn send_message(
        &mut self,
        target: &Target,
        id: MessageId,
        now: Timestamp,
        payload: Option<RawJson<'_>>,
        meta: Option<RawJson<'_>>,
    ) -> Result<Routed, ProtocolError> {
        let out = self.prepare_message(target, id, now, payload, meta)?;
        let fanout = self.route(target, &out).await?;
        Ok(self.routed(target, &out, fanout))
    }

    /// Checks that this client may send to `target` and encodes the message.
    fn prepare_message(
        &self,
        target: &Target,
        id: MessageId,
        now: Timestamp,
        payload: Option<RawJson<'_>>,
        meta: Option<RawJson<'_>>,
    ) -> Result<Outgoing, ProtocolError> {
        let router = &self.router;
        let (from, user) = match self.client.server {
            true => (Sender::Server, None),
            false => (Sender::Client(self.client.id), self.client.user.as_deref()),
        };
        let (room, channel) = names(target);
        // Looked up once per message: its publish role and auto-create.
        let options = room.map(|room| router.room_options(room));
        if let (Some(room), Some(options)) = (room, options) {
            self.require_room(room)?;
            let least = options.publish_role;
            if self.client.role < least {
                return Err(ProtocolError::new(
                    ErrorCode::Forbidden,
                    format!("publishing in room {room} needs role {least} (you are {})", self.client.role),
                ));
            }
        }
        let frame = MessageFrame { id, timestamp: now, from, user, room, channel, payload, meta }.encode();
        let creates = options.is_some_and(|options| router.auto_create_with(options));
        Ok(Outgoing { id, frame, creates })
    }

    /// Routes a message, waiting if it must; returns how many connections it
    /// was queued for (`None` for a retry).
    async fn route(&mut self, target: &Target, out: &Outgoing) -> Result<Option<usize>, ProtocolError> {
        match self.route_now(target, out) {
            Routing::Done(fanout) => fanout,
            Routing::Waits(key) => self.publish_later(key, out).await,
        }
    }

    /// Routes a message without waiting, or says which channel's publish
    /// must wait, having done nothing.
    fn route_now<'t>(&mut self, target: &'t Target, out: &Outgoing) -> Routing<'t> {
        let router = &self.router;
        let fanout = match target {
            Target::Channel(key) => {
                let last = self.recent.as_ref().and_then(|recent| recent.channel.as_ref());
                match router.publish_now(key, self.client.id, out.id, &out.frame, last) {
                    Some(fanout) => fanout,
                    None => return Routing::Waits(key),
                }
            }
            Target::Room(room) => router.publish_room(room, self.client.id, out.frame.clone()).map(Some),
            Target::Client(to) => router.publish_direct(&self.client.rooms, *to, out.frame.clone()).map(Some),
            Target::User(user) => router.publish_user(&self.client, user, &out.frame).map(Some),
        };
        Routing::Done(fanout.map_err(|e| e.into_protocol()))
    }

    /// Publishes to `key`, waiting as needed (for the channel's creation,
    /// its order lock, the storage).
    async fn publish_later(&mut self, key: &ChannelKey, out: &Outgoing) -> Result<Option<usize>, ProtocolError> {
        let create = if out.creates { Create::Auto(&self.client) } else { Create::No };
        let mut unkept = None;
        let last = self.recent.as_mut().map_or(&mut unkept, |recent| &mut recent.channel);
        let router = &self.router;
        let fanout = router.publish_to(key, create, self.client.id, out.id, &out.frame, last).await;
        // The channel is now the sender's last: its key's names become the
        // ones the sender's next frames decode to, so that checking the
        // cached channel compares pointers, not text.
        if let Some(Recent { names, channel: Some(channel) }) = self.recent.as_deref_mut() {
            names.adopt(&channel.key);
        }
        fanout.map_err(|e| e.into_protocol())
    }

    /// Reports a routed message (`fanout`: `None` for a recognised retry,
    /// which was neither stored nor delivered).
    fn routed(&mut self, target: &Target, out: &Outgoing, fanout: Option<usize>) -> Routed {
        if let Some(fanout) = fanout {
            if let Target::Channel(key) = target {
                self.observe(&BusEvent::MessagePublished { key, frame: &out.frame });
            }
            let (room, channel) = names(target);
            let (bytes, latency) = (out.frame.len(), self.timed().then(|| self.received.elapsed()));
            self.observe(&BusEvent::MessageRouted { room, channel, fanout, bytes, latency });
        }
        Routed { id: out.id, fanout: fanout.unwrap_or(0) }
    }

    /// Whether to time the message being routed: the first of this
    /// connection and one in [`LATENCY_SAMPLE`] after it, or every one while
    /// the observer asks for that ([`Observer::times_every_message`]). A
    /// clock read was 3% of a message's CPU in fan-in, and a latency
    /// histogram needs a sample, not every message.
    fn timed(&mut self) -> bool {
        if self.untimed == 0 || self.router.inner.observer.times_every_message() {
            self.untimed = LATENCY_SAMPLE - 1;
            true
        } else {
            self.untimed -= 1;
            false
        }
    }

    /// Checks the client's room access (e.g. a token's `rooms` claim).
    pub(crate) fn require_room(&self, room: &arqon_protocol::Name) -> Result<(), ProtocolError> {
        if self.client.rooms.allows(room) {
            Ok(())
        } else {
            Err(ProtocolError::new(ErrorCode::Forbidden, format!("your credentials do not allow room {room}")))
        }
    }

    pub(crate) fn require(&self, role: Role, what: &str) -> Result<(), ProtocolError> {
        if self.client.role >= role {
            Ok(())
        } else {
            Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!("{what} needs role {role} (you are {})", self.client.role),
            ))
        }
    }

    /// Queues a frame for this client.
    pub(crate) fn push(&self, frame: Frame) {
        self.client.outlet.push(Outbound::Frame(frame));
    }

    fn send_error(&mut self, error: &ProtocolError) {
        self.send_error_with(error, error.retry_after_ms);
    }

    fn send_error_with(&mut self, error: &ProtocolError, retry_after_ms: Option<u64>) {
        self.observe(&BusEvent::Error { client_id: self.client.id, code: error.code });
        let frame = encode::error(
            self.ids.message_id(),
            Timestamp::now(),
            error.request_id,
            error.code,
            &error.message,
            retry_after_ms,
        );
        self.push(frame);
    }
}

impl Session {
    fn observe(&self, event: &BusEvent<'_>) {
        self.router.inner.observer.observe(event);
    }
}

/// The command `name`, if the caller may run it: API-only commands are for
/// the server API (`server`).
fn find_command(name: &str, server: bool) -> Result<&'static commands::Spec, ProtocolError> {
    let Some(command) = commands::find(name) else {
        return Err(ProtocolError::new(
            ErrorCode::UnknownCommand,
            format!("unknown command {name:?}; send \"help\" for the list"),
        ));
    };
    if command.surface == commands::Surface::Api && !server {
        return Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("{name} is a server API command (POST /api/{name} with an API key)"),
        ));
    }
    Ok(command)
}

/// What [`Session::handle_text_now`] leaves to await.
enum Later<'a> {
    /// A command (every command may wait); `own`: its `from`, if any, is
    /// the client's.
    Command { name: Cow<'a, str>, args: Option<RawJson<'a>>, id: Option<MessageId>, own: bool },
    /// A message to a channel whose publish must wait.
    Publish { target: Target, out: Outgoing },
}

/// What routing a message without waiting came to.
enum Routing<'t> {
    /// Routed: how many connections it was queued for (`None` for a retry).
    Done(Result<Option<usize>, ProtocolError>),
    /// The publish to this channel must wait.
    Waits(&'t ChannelKey),
}

/// A message checked and encoded, ready to route.
struct Outgoing {
    id: MessageId,
    /// The delivered frame, shared by every receiver and history.
    frame: Frame,
    /// Its room auto-creates a missing channel.
    creates: bool,
}

/// The room and channel a message to `target` names.
fn names(target: &Target) -> (Option<&arqon_protocol::Name>, Option<&arqon_protocol::Name>) {
    match target {
        Target::Channel(key) => (Some(&key.room), Some(&key.channel)),
        Target::Room(room) => (Some(room), None),
        Target::Client(_) | Target::User(_) => (None, None),
    }
}

/// What routing a message did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Routed {
    /// The message id.
    pub(crate) id: MessageId,
    /// Connections it was queued for (0 for a recognised retry).
    pub(crate) fanout: usize,
}

fn spoofed_from() -> ProtocolError {
    ProtocolError::new(ErrorCode::Forbidden, "from must be your own client id (or absent)")
}

impl Drop for Session {
    fn drop(&mut self) {
        // The timer must not outlive the connection (a 30-day token would
        // keep its task, and the memory it holds, for 30 days).
        drop(self.expiry.take());
        crate::membership::leave_all(&self.router, &self.client);
        if self.client.server {
            // An API session was never a connection.
            return;
        }
        self.router.unregister(&self.client);
        // Every slow-consumer close, whoever decided it (a push past the
        // backlog limit, the budget, the transport's write timeout), is
        // reported here, once, with its cause.
        if let Some(cause) = self.client.outlet.closing().and_then(|closing| closing.cause) {
            self.observe(&BusEvent::SlowConsumer { client_id: self.client.id, cause });
        }
        self.observe(&BusEvent::ConnectionClosed { client_id: self.client.id });
    }
}
