//! The [`Client`] handle and its typed commands.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use arqon_protocol::{ChannelKey, ClientId, ErrorCode, IdGenerator, MessageId, Name, RawValue, Target};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{Driver, Op, Reply, Snapshot, Track};
use crate::types::{HistoryPage, Published};
use crate::{
    ChannelCreated, ChannelDeleted, ChannelInfo, ChannelList, ClientError, ClientOptions, Events, Help, Joined, Left,
    Message, Pong, Presence, ServerInfo, Status, wire,
};

/// A connection to an ArqonBus, kept alive in the background.
///
/// Cheap to clone: clones share the one connection task. The task stops
/// (closing the WebSocket) after [`Client::close`] or once every clone is
/// dropped. Incoming messages and events are read from [`Client::events`].
#[derive(Debug, Clone)]
pub struct Client {
    ops: mpsc::Sender<Op>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    options: Arc<ClientOptions>,
    /// Ids for requests: generated here, not on the connection task, so that
    /// a retried publish keeps its id.
    ids: Mutex<IdGenerator>,
    snapshot: watch::Receiver<Snapshot>,
    events: Mutex<Option<Events>>,
}

/// Extra settings for one [`Client::publish_with`].
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// The message id to use. The bus stores a message whose id is already
    /// in the channel's kept history only once, so passing the same id again
    /// makes a publish safe to repeat, even across client restarts.
    /// Default: a fresh id.
    pub id: Option<MessageId>,
    /// Pass-through metadata for receivers, at most 16 keys. Default: none.
    pub meta: BTreeMap<String, String>,
}

impl Client {
    /// Connects with default [`ClientOptions`]. See [`Client::connect_with`].
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, ClientOptions::default()).await
    }

    /// Connects to `url` (`ws://HOST:PORT/ws`), waits for the bus's `welcome`
    /// and starts the connection task.
    ///
    /// The first connection is not retried: an unreachable bus or a refused
    /// token is reported here. Later losses are repaired in the background
    /// when [`ClientOptions::reconnect`] is on. `wss://` URLs need a TLS
    /// feature of tokio-tungstenite, which this crate does not enable.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let (ws, info) = wire::open(url, &options).await?;
        let options = Arc::new(options);
        // Handles -> task: bounded; a full queue makes callers wait, within
        // their request timeout.
        let (ops_tx, ops_rx) = mpsc::channel(options.command_capacity.max(1));
        // Task -> Events: bounded; the task never waits on it. When full,
        // channel messages are replayed later and other items are dropped and
        // counted (see `ClientOptions::event_capacity`).
        let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(1));
        let (snapshot_tx, snapshot_rx) = watch::channel(Snapshot { info: info.clone(), connected: true });
        let driver = Driver::new(url.to_owned(), Arc::clone(&options), ops_rx, events_tx, snapshot_tx);
        tokio::spawn(driver.run(ws, info));
        Ok(Client {
            ops: ops_tx,
            shared: Arc::new(Shared {
                options,
                ids: Mutex::new(IdGenerator::new()),
                snapshot: snapshot_rx,
                events: Mutex::new(Some(Events::new(events_rx))),
            }),
        })
    }

    /// The stream of incoming messages and events. There is one per client:
    /// the first call takes it, later calls (on any clone) return `None`.
    ///
    /// Items queue from the moment the client connects, so nothing is lost
    /// between connecting, joining and calling this.
    pub fn events(&self) -> Option<Events> {
        self.shared.events.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// What the bus said in the `welcome` of the current (or last)
    /// connection. The client id changes on reconnect.
    pub fn server_info(&self) -> ServerInfo {
        self.shared.snapshot.borrow().info.clone()
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.snapshot.borrow().connected
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.shared.options
    }

    /// Closes the connection and stops the connection task. Requests still
    /// waiting fail with [`ClientError::Closed`], and [`Events`] ends after an
    /// [`Incoming::Closed`](crate::Incoming::Closed).
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        let wait = async {
            if self.ops.send(Op::Close { done }).await.is_ok() {
                let _ = closed.await;
            }
        };
        let _ = tokio::time::timeout(self.shared.options.request_timeout, wait).await;
    }

    /// Joins a channel: its messages arrive on [`Client::events`] from now on,
    /// and across reconnects. See [`Client::join_channel`] for `since`.
    pub async fn join(&self, room: impl AsRef<str>, channel: impl AsRef<str>) -> Result<Joined, ClientError> {
        self.join_channel(room, channel, None).await
    }

    /// Leaves a channel; the client stops re-joining it.
    pub async fn leave(&self, room: impl AsRef<str>, channel: impl AsRef<str>) -> Result<Left, ClientError> {
        self.leave_channel(room, channel).await
    }

    /// Sends a fire-and-forget message to a channel, a whole room or one
    /// client. Returns the message's id once the frame is handed to the
    /// connection task; there is no confirmation (use [`Client::publish`]
    /// for that). A refusal arrives later on [`Client::events`] as
    /// [`Incoming::Error`](crate::Incoming::Error) with this id. Sent at most
    /// once: a frame queued when the connection drops may be lost.
    pub async fn send(&self, target: Target, payload: &impl Serialize) -> Result<MessageId, ClientError> {
        let id = self.next_id();
        let frame = wire::message_frame(id, &target, payload, &BTreeMap::new())?;
        self.check_size(&frame)?;
        let timeout = self.shared.options.request_timeout;
        match tokio::time::timeout(timeout, self.ops.send(Op::Send { frame })).await {
            Ok(Ok(())) => Ok(id),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Publishes to a channel and waits until the bus has stored it. Returns
    /// the message id. See [`Client::publish_with`].
    pub async fn publish(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
        payload: &impl Serialize,
    ) -> Result<MessageId, ClientError> {
        self.publish_with(room, channel, payload, PublishOptions::default()).await
    }

    /// Publishes with an explicit id and/or metadata.
    ///
    /// The command's id becomes the message's id, and the bus stores an id
    /// it already keeps only once. So on [`ClientError::ConnectionLost`],
    /// [`ClientError::Timeout`] or `RATE_LIMITED` (after `retry_after_ms`),
    /// the client sends the same frame again, up to
    /// [`ClientOptions::publish_attempts`] times in all: a message is stored
    /// once however often it had to be sent.
    pub async fn publish_with(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
        payload: &impl Serialize,
        options: PublishOptions,
    ) -> Result<MessageId, ClientError> {
        let key = channel_key(room, channel)?;
        #[derive(Serialize)]
        struct Args<'a, P: Serialize> {
            room: &'a Name,
            channel: &'a Name,
            payload: &'a P,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            meta: &'a BTreeMap<String, String>,
        }
        let args = Args { room: &key.room, channel: &key.channel, payload, meta: &options.meta };
        let id = options.id.unwrap_or_else(|| self.next_id());
        let frame = wire::command_frame(id, "publish", Some(&args))?;
        let attempts = self.shared.options.publish_attempts.max(1);
        let mut attempt = 1;
        loop {
            let result = self.request(id, frame.clone(), Track::None).await;
            let retry = match &result {
                Err(ClientError::ConnectionLost | ClientError::Timeout(_)) => Some(0),
                Err(ClientError::Rejected { code: ErrorCode::RateLimited, retry_after_ms, .. }) => {
                    Some(retry_after_ms.unwrap_or(100))
                }
                _ => None,
            };
            match retry {
                Some(wait_ms) if attempt < attempts => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
                }
                _ => return decode::<Published>("publish", &result?).map(|p| p.id),
            }
        }
    }

    /// Runs any command with `args` (a JSON object, or `null` for none) and
    /// returns its response payload. Joins and leaves made this way are
    /// tracked for reconnects like [`Client::join`]'s.
    pub async fn command(&self, name: &str, args: serde_json::Value) -> Result<serde_json::Value, ClientError> {
        let id = self.next_id();
        let track = Track::of(name, &args);
        let args = (!args.is_null()).then_some(&args);
        let frame = wire::command_frame(id, name, args)?;
        let raw = self.request(id, frame, track).await?;
        decode(name, &raw)
    }

    /// `ping`: a round trip to the bus.
    pub async fn ping(&self) -> Result<Pong, ClientError> {
        self.call("ping", None::<&()>, Track::None).await
    }

    /// `status`: version, uptime, counts and storage health.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call("status", None::<&()>, Track::None).await
    }

    /// `help`: every command, its arguments and whether this client may run it.
    pub async fn help(&self) -> Result<Help, ClientError> {
        self.call("help", None::<&()>, Track::None).await
    }

    /// `create_channel` (role `user`): creates a channel, or reports that it
    /// existed.
    pub async fn create_channel(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
    ) -> Result<ChannelCreated, ClientError> {
        let key = channel_key(room, channel)?;
        self.call("create_channel", Some(&KeyArgs::new(&key)), Track::None).await
    }

    /// `delete_channel` (role `admin`): deletes a channel; its members get
    /// [`Event::ChannelDeleted`](crate::Event::ChannelDeleted).
    pub async fn delete_channel(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
    ) -> Result<ChannelDeleted, ClientError> {
        let key = channel_key(room, channel)?;
        self.call("delete_channel", Some(&KeyArgs::new(&key)), Track::None).await
    }

    /// `join_channel`. With `since`, every stored message after that id is
    /// delivered (on [`Client::events`]) before any live one; a `since` the
    /// channel no longer keeps replays everything kept and the answer says
    /// `truncated`. The client re-joins the channel after each reconnect.
    pub async fn join_channel(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
        since: Option<MessageId>,
    ) -> Result<Joined, ClientError> {
        let key = channel_key(room, channel)?;
        #[derive(Serialize)]
        struct Args<'a> {
            room: &'a Name,
            channel: &'a Name,
            #[serde(skip_serializing_if = "Option::is_none")]
            since: Option<MessageId>,
        }
        let args = Args { room: &key.room, channel: &key.channel, since };
        self.call("join_channel", Some(&args), Track::Join(key.clone())).await
    }

    /// `leave_channel`.
    pub async fn leave_channel(&self, room: impl AsRef<str>, channel: impl AsRef<str>) -> Result<Left, ClientError> {
        let key = channel_key(room, channel)?;
        self.call("leave_channel", Some(&KeyArgs::new(&key)), Track::Leave(key.clone())).await
    }

    /// `list_channels`: every channel, or those of one room.
    pub async fn list_channels(&self, room: Option<&str>) -> Result<ChannelList, ClientError> {
        #[derive(Serialize)]
        struct Args {
            room: Name,
        }
        let args = room.map(|room| Name::parse(room).map(|room| Args { room })).transpose()?;
        self.call("list_channels", args.as_ref(), Track::None).await
    }

    /// `channel_info`: members, creation time, stored count, newest id.
    pub async fn channel_info(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
    ) -> Result<ChannelInfo, ClientError> {
        let key = channel_key(room, channel)?;
        self.call("channel_info", Some(&KeyArgs::new(&key)), Track::None).await
    }

    /// `history`: the newest `limit` (1 to 1000; the bus's default is 50)
    /// messages older than `before` (or the newest overall), oldest first.
    pub async fn history(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
        limit: Option<u32>,
        before: Option<MessageId>,
    ) -> Result<Vec<Message>, ClientError> {
        let key = channel_key(room, channel)?;
        #[derive(Serialize)]
        struct Args<'a> {
            room: &'a Name,
            channel: &'a Name,
            #[serde(skip_serializing_if = "Option::is_none")]
            limit: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            before: Option<MessageId>,
        }
        let args = Args { room: &key.room, channel: &key.channel, limit, before };
        let page: HistoryPage = self.call("history", Some(&args), Track::None).await?;
        Ok(page.messages)
    }

    /// `presence` (PROTOCOL.md 8.2): one page of a channel's members,
    /// ordered by client id: at most `limit` (1 to 1000; the bus's default
    /// is 100) after the client id `after` (the last one of the previous
    /// page), with the channel's `total` connections and distinct `users`. A
    /// room whose `presence` option is off answers `FORBIDDEN`.
    pub async fn presence(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
        limit: Option<u32>,
        after: Option<ClientId>,
    ) -> Result<Presence, ClientError> {
        let key = channel_key(room, channel)?;
        let args = PresenceArgs::new(&key, limit, after);
        self.call("presence", Some(&args), Track::None).await
    }

    /// The bus answers a frame over `max_message_bytes` by closing the
    /// connection (1009); refuse it here instead, with the same code, so that
    /// it neither costs a reconnect nor gets retried.
    fn check_size(&self, frame: &str) -> Result<(), ClientError> {
        let max = self.shared.snapshot.borrow().info.limits.max_message_bytes;
        let len = u64::try_from(frame.len()).unwrap_or(u64::MAX);
        if max > 0 && len > max {
            return Err(ClientError::rejected(
                ErrorCode::MessageTooLarge,
                format!("the frame is {len} bytes, over the bus's max_message_bytes ({max}); not sent"),
            ));
        }
        Ok(())
    }

    fn next_id(&self) -> MessageId {
        self.shared.ids.lock().unwrap_or_else(PoisonError::into_inner).message_id()
    }

    /// Runs a command with a fresh id and decodes its payload.
    async fn call<A: Serialize, T: DeserializeOwned>(
        &self,
        name: &str,
        args: Option<&A>,
        track: Track,
    ) -> Result<T, ClientError> {
        let id = self.next_id();
        let frame = wire::command_frame(id, name, args)?;
        decode(name, &self.request(id, frame, track).await?)
    }

    /// Hands a request to the connection task and waits for its answer, all
    /// within the request timeout.
    async fn request(&self, id: MessageId, frame: String, track: Track) -> Reply {
        self.check_size(&frame)?;
        let timeout = self.shared.options.request_timeout;
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            self.ops.send(Op::Request { id, frame, track, reply }).await.map_err(|_| ClientError::Closed)?;
            // A dropped reply means the task stopped.
            answer.await.map_err(|_| ClientError::Closed)?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }
}

/// `{"room", "channel"}`.
#[derive(Serialize)]
pub(crate) struct KeyArgs<'a> {
    room: &'a Name,
    channel: &'a Name,
}

impl<'a> KeyArgs<'a> {
    pub(crate) fn new(key: &'a ChannelKey) -> Self {
        KeyArgs { room: &key.room, channel: &key.channel }
    }
}

/// `presence`'s arguments (also the server API's).
#[derive(Serialize)]
pub(crate) struct PresenceArgs<'a> {
    room: &'a Name,
    channel: &'a Name,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<ClientId>,
}

impl<'a> PresenceArgs<'a> {
    pub(crate) fn new(key: &'a ChannelKey, limit: Option<u32>, after: Option<ClientId>) -> Self {
        PresenceArgs { room: &key.room, channel: &key.channel, limit, after }
    }
}

/// Validates names locally, with the bus's own rules and error code.
pub(crate) fn channel_key(room: impl AsRef<str>, channel: impl AsRef<str>) -> Result<ChannelKey, ClientError> {
    Ok(ChannelKey::parse(room.as_ref(), channel.as_ref())?)
}

pub(crate) fn decode<T: DeserializeOwned>(command: &str, raw: &RawValue) -> Result<T, ClientError> {
    serde_json::from_str(raw.get()).map_err(|e| ClientError::Decode(format!("{command} answer: {e}")))
}
