//! The bus core: channel table, client registry and fan-out.

use std::collections::HashMap;
use std::sync::Arc;

use arqon_protocol::{
    ChannelKey, ClientId, ErrorCode, Frame, IdGenerator, MessageId, Name, Outbound, ProtocolError, Role, Timestamp,
};
use arqon_storage::{Appended, Health, Storage, StoredMessage, append_fast};
use dashmap::DashMap;
use foldhash::fast::RandomState;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::broker::{Broker, Delivery, Place};
use crate::channel::Channel;
use crate::client::{ClientEntry, RoomAccess};
use crate::observer::{BusEvent, NoObserver, Observer};
use crate::outlet::{Inbox, Outlet};
use crate::session::Session;
use crate::{RouterConfig, RoutingError};

/// Who a connecting client is, as established by the transport (or by the
/// embedding service).
#[derive(Debug, Clone)]
pub struct Identity {
    /// What the client may do.
    pub role: Role,
    /// A fixed client id (e.g. a token's subject); `None` assigns a fresh one.
    pub client_id: Option<ClientId>,
    /// Rooms the client may use. Default: all.
    pub rooms: RoomAccess,
    /// Time left before the client's credentials expire; when it runs out
    /// the client gets a `token_expired` event and, after
    /// [`RouterConfig::expiry_grace`], is closed with 1008.
    pub expires_in: Option<std::time::Duration>,
}

impl Identity {
    /// An identity with `role`, a fresh id, every room, no expiry.
    pub fn new(role: Role) -> Self {
        Identity { role, client_id: None, rooms: RoomAccess::All, expires_in: None }
    }
}

/// Counts shown by `status` and by monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusCounts {
    /// Connected clients.
    pub connections: usize,
    /// Rooms with at least one channel.
    pub rooms: usize,
    /// Channels.
    pub channels: usize,
}

/// One channel as listed by `list_channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    /// Its address.
    pub key: ChannelKey,
    /// Local member count.
    pub members: usize,
}

/// Builds a [`Router`] with optional parts.
pub struct RouterBuilder {
    config: RouterConfig,
    storage: Arc<dyn Storage>,
    broker: Option<Arc<dyn Broker>>,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for RouterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RouterBuilder {
    /// Forwards traffic to other nodes through `broker`.
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Reports every [`BusEvent`] to `observer` (metrics, telemetry).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The bus.
    pub fn build(self) -> Router {
        Router {
            inner: Arc::new(Inner {
                config: self.config,
                storage: self.storage,
                clients: DashMap::with_hasher(RandomState::default()),
                rooms: DashMap::with_hasher(RandomState::default()),
                client_ids: Mutex::new(IdGenerator::new()),
                started: Instant::now(),
                broker: self.broker,
                observer: self.observer,
            }),
        }
    }
}

/// The message bus, without any network: clone it freely (it is a handle).
#[derive(Debug, Clone)]
pub struct Router {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: RouterConfig,
    pub(crate) storage: Arc<dyn Storage>,
    clients: DashMap<ClientId, Arc<ClientEntry>, RandomState>,
    /// room → channel name → channel. A room exists while it has channels.
    rooms: DashMap<Name, HashMap<Name, Arc<Channel>, RandomState>, RandomState>,
    client_ids: Mutex<IdGenerator>,
    pub(crate) started: Instant,
    broker: Option<Arc<dyn Broker>>,
    pub(crate) observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("storage", &self.storage.health().backend)
            .field("clients", &self.clients.len())
            .field("rooms", &self.rooms.len())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A bus over `storage`, alone on this node, observed by no one.
    pub fn new(config: RouterConfig, storage: Arc<dyn Storage>) -> Self {
        Self::builder(config, storage).build()
    }

    /// A bus over `storage` that also forwards traffic through `broker` to
    /// other nodes (see [`Broker`]).
    pub fn with_broker(config: RouterConfig, storage: Arc<dyn Storage>, broker: Arc<dyn Broker>) -> Self {
        Self::builder(config, storage).broker(broker).build()
    }

    /// Starts building a bus with optional parts.
    pub fn builder(config: RouterConfig, storage: Arc<dyn Storage>) -> RouterBuilder {
        RouterBuilder { config, storage, broker: None, observer: Arc::new(NoObserver) }
    }

    /// Frames queued towards all clients, not yet written.
    pub fn queued_frames(&self) -> usize {
        self.inner.clients.iter().map(|c| c.outlet.queued()).sum()
    }

    /// Loads the channels the storage backend remembers (after a restart);
    /// returns how many.
    pub async fn restore(&self) -> Result<usize, RoutingError> {
        let records = self.inner.storage.channels().await?;
        let count = records.len();
        for record in records {
            self.inner
                .rooms
                .entry(record.key.room.clone())
                .or_default()
                .entry(record.key.channel.clone())
                .or_insert_with(|| Arc::new(Channel::new(record.key.clone(), record.created_at)));
        }
        Ok(count)
    }

    /// Registers a client. Returns its session (feed it the client's frames)
    /// and its inbox (write what arrives there to the client). The `welcome`
    /// event is already queued.
    pub fn connect(&self, identity: Identity) -> Result<(Session, Inbox), RoutingError> {
        let id = match identity.client_id {
            Some(id) => id,
            None => self.inner.client_ids.lock().client_id(),
        };
        let (outlet, inbox) = Outlet::new(self.inner.config.outbound_queue, id, Arc::clone(&self.inner.observer));
        let entry = Arc::new(ClientEntry { id, role: identity.role, rooms: identity.rooms, outlet });
        match self.inner.clients.entry(id) {
            dashmap::Entry::Occupied(_) => return Err(RoutingError::DuplicateClient(id)),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Arc::clone(&entry));
            }
        }
        self.inner.observer.observe(&BusEvent::ConnectionOpened { client_id: id, role: identity.role });
        if let Some(broker) = &self.inner.broker {
            broker.client_connected(id);
        }
        if let Some(expires_in) = identity.expires_in {
            tokio::spawn(expire(Arc::downgrade(&entry), expires_in, self.inner.config.expiry_grace));
        }
        let session = Session::new(self.clone(), entry);
        session.send_welcome();
        Ok((session, inbox))
    }

    /// Current counts.
    pub fn counts(&self) -> BusCounts {
        let (mut rooms, mut channels) = (0, 0);
        for room in self.inner.rooms.iter() {
            rooms += 1;
            channels += room.len();
        }
        BusCounts { connections: self.inner.clients.len(), rooms, channels }
    }

    /// Every channel (optionally of one room), sorted by room then channel.
    pub fn channels(&self, room: Option<&Name>) -> Vec<ChannelSummary> {
        let mut out = Vec::new();
        let mut collect = |channels: &HashMap<Name, Arc<Channel>, RandomState>| {
            out.extend(channels.values().map(|c| ChannelSummary {
                key: c.key.clone(),
                members: self.cluster_members(&c.key, c.member_count()),
            }));
        };
        match room {
            Some(room) => {
                if let Some(channels) = self.inner.rooms.get(room) {
                    collect(&channels);
                }
            }
            None => self.inner.rooms.iter().for_each(|r| collect(r.value())),
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// The storage backend's health.
    pub fn storage_health(&self) -> Health {
        self.inner.storage.health()
    }

    /// Seconds since the router started.
    pub fn uptime_s(&self) -> u64 {
        self.inner.started.elapsed().as_secs()
    }

    /// Delivers traffic that arrived from another node through the broker to
    /// this node's local clients, stored channel messages in history order
    /// (crate::sequence). Never forwards it again.
    pub async fn deliver_from_broker(&self, delivery: &Delivery) -> usize {
        match delivery {
            Delivery::Channel { key, frame, from, place: Place::At(position, id) } => {
                self.deliver_placed(key, frame, *from, *position, *id).await
            }
            // Found in history later, at its place.
            Delivery::Channel { place: Place::Unplaced, .. } => 0,
            Delivery::Channel { key, frame, from, place: Place::Unstored } => {
                self.lookup(key).map_or(0, |channel| channel.deliver(frame, Some(*from)))
            }
            Delivery::Room { room, frame, from } => self.deliver_room_local(room, frame, Some(*from)),
            Delivery::Direct { to, frame } => self.deliver_direct_local(*to, frame),
        }
    }

    /// Another node created a channel: make it known here (no storage write,
    /// nothing forwarded back).
    pub fn channel_created_elsewhere(&self, key: &ChannelKey, created_at: Timestamp) {
        self.inner
            .rooms
            .entry(key.room.clone())
            .or_default()
            .entry(key.channel.clone())
            .or_insert_with(|| Arc::new(Channel::new(key.clone(), created_at)));
    }

    /// Another node deleted a channel (and its history): drop it here and
    /// tell its local members with `channel_deleted`. Returns how many were told.
    pub async fn channel_deleted_elsewhere(&self, key: &ChannelKey) -> usize {
        let Some(channel) = self.lookup(key) else { return 0 };
        match self.retire(&channel, false).await {
            Ok(Some(members)) => self.notify_deleted(key, &members),
            _ => 0,
        }
    }

    /// Takes `channel` out of the table under its order lock and returns its
    /// former members, or `None` if a racing delete got there first. With
    /// `forget_history` the storage delete comes first, so that a refusal
    /// changes nothing and no member loses its membership without being told.
    async fn retire(
        &self,
        channel: &Channel,
        forget_history: bool,
    ) -> Result<Option<Vec<Arc<ClientEntry>>>, RoutingError> {
        let key = &channel.key;
        let members = {
            let _order = channel.order.lock().await;
            // The key may name a new channel by now, which is not ours to remove.
            if channel.is_deleted() {
                return Ok(None);
            }
            if forget_history {
                self.inner.storage.delete_channel(key).await?;
            }
            if let Some(mut room) = self.inner.rooms.get_mut(&key.room) {
                room.remove(&key.channel);
            }
            self.inner.rooms.remove_if(&key.room, |_, channels| channels.is_empty());
            channel.retire()
        };
        self.inner.observer.observe(&BusEvent::ChannelDeleted { key });
        // Its members are no longer members here: the cluster's counts and
        // subscriptions must not outlive the channel.
        if let Some(broker) = &self.inner.broker {
            broker.interest(key, 0);
        }
        Ok(Some(members))
    }

    /// Sends `channel_deleted` (one shared frame) to former members.
    pub(crate) fn notify_deleted(&self, key: &ChannelKey, members: &[Arc<ClientEntry>]) -> usize {
        #[derive(serde::Serialize)]
        struct ChannelDeleted<'a> {
            event: &'static str,
            room: &'a Name,
            channel: &'a Name,
        }
        let frame = arqon_protocol::encode::event(
            IdGenerator::new().message_id(),
            Timestamp::now(),
            &ChannelDeleted { event: "channel_deleted", room: &key.room, channel: &key.channel },
        );
        members.iter().filter(|m| m.outlet.push(Outbound::Frame(frame.clone()))).count()
    }

    /// Members of `key` on this node plus, with a broker, on the others.
    pub(crate) fn cluster_members(&self, key: &ChannelKey, local: usize) -> usize {
        local + self.inner.broker.as_ref().map_or(0, |b| b.remote_members(key))
    }

    // ---- internals used by sessions and commands ----

    pub(crate) fn lookup(&self, key: &ChannelKey) -> Option<Arc<Channel>> {
        self.inner.rooms.get(&key.room)?.get(&key.channel).cloned()
    }

    /// The channel, creating it if allowed. Returns (channel, created).
    pub(crate) async fn ensure_channel(
        &self,
        key: &ChannelKey,
        may_create: bool,
    ) -> Result<(Arc<Channel>, bool), RoutingError> {
        if let Some(channel) = self.lookup(key) {
            return Ok((channel, false));
        }
        if !may_create {
            return Err(not_found(key).into());
        }
        let (channel, created) = {
            let mut room = self.inner.rooms.entry(key.room.clone()).or_default();
            match room.get(&key.channel) {
                Some(existing) => (Arc::clone(existing), false),
                None => {
                    let channel = Arc::new(Channel::new(key.clone(), Timestamp::now()));
                    room.insert(key.channel.clone(), Arc::clone(&channel));
                    (channel, true)
                }
            }
        };
        if created {
            self.inner.observer.observe(&BusEvent::ChannelCreated { key });
            if let Some(broker) = &self.inner.broker {
                broker.channel_created(key, channel.created_at);
            }
            // The live channel exists from here on; persisting the record is
            // for restarts, so a failure is logged, not fatal.
            if let Err(e) = self.inner.storage.create_channel(key, channel.created_at).await {
                tracing::warn!(channel = %key, error = %e, "could not persist channel record");
            }
        }
        Ok((channel, created))
    }

    /// Appends a channel message to history, then delivers it to every member
    /// but the sender. Returns how many received it, or `None` for a retry.
    pub(crate) async fn publish(
        &self,
        channel: &Channel,
        from: ClientId,
        id: MessageId,
        frame: Frame,
    ) -> Result<Option<usize>, RoutingError> {
        let _order = channel.lock_order().await;
        if channel.is_deleted() {
            return Err(not_found(&channel.key).into());
        }
        let stored = StoredMessage { id, frame: frame.clone() };
        if let Some(broker) = &self.inner.broker {
            // Across nodes, in history order.
            return self.publish_placed(channel, from, stored, broker).await;
        }
        // Synchronous when the backend can (memory): no boxed futures per message.
        if append_fast(&*self.inner.storage, &channel.key, stored).await? == Appended::Duplicate {
            return Ok(None);
        }
        Ok(Some(channel.deliver(&frame, Some(from))))
    }

    /// Delivers a room-wide message: each member of any channel once.
    pub(crate) fn publish_room(&self, room: &Name, from: ClientId, frame: Frame) -> Result<usize, RoutingError> {
        if !self.inner.rooms.contains_key(room) {
            return Err(ProtocolError::new(ErrorCode::NotFound, format!("room {room} has no channels")).into());
        }
        let delivered = self.deliver_room_local(room, &frame, Some(from));
        if let Some(broker) = &self.inner.broker {
            broker.forward(Delivery::Room { room: room.clone(), frame, from });
        }
        Ok(delivered)
    }

    /// Delivers a direct message.
    pub(crate) fn publish_direct(&self, to: ClientId, frame: Frame) -> Result<usize, RoutingError> {
        if self.inner.clients.contains_key(&to) {
            return Ok(self.deliver_direct_local(to, &frame));
        }
        match &self.inner.broker {
            Some(broker) if broker.knows_client(to) => {
                broker.forward(Delivery::Direct { to, frame });
                Ok(1)
            }
            _ => Err(ProtocolError::new(ErrorCode::NotFound, format!("no client {to} is connected")).into()),
        }
    }

    fn deliver_room_local(&self, room: &Name, frame: &Frame, except: Option<ClientId>) -> usize {
        let channels: Vec<Arc<Channel>> = match self.inner.rooms.get(room) {
            Some(channels) => channels.values().cloned().collect(),
            None => return 0,
        };
        let mut reached: HashMap<ClientId, Arc<ClientEntry>> = HashMap::new();
        for channel in &channels {
            channel.for_each_member(|m| {
                if Some(m.id) != except {
                    reached.entry(m.id).or_insert_with(|| Arc::clone(m));
                }
            });
        }
        reached.values().filter(|m| m.outlet.push(Outbound::Frame(frame.clone()))).count()
    }

    fn deliver_direct_local(&self, to: ClientId, frame: &Frame) -> usize {
        let Some(client) = self.inner.clients.get(&to).map(|c| Arc::clone(&c)) else {
            return 0;
        };
        usize::from(client.outlet.push(Outbound::Frame(frame.clone())))
    }

    /// Removes a channel and takes its members.
    pub(crate) async fn delete_channel(&self, key: &ChannelKey) -> Result<Vec<Arc<ClientEntry>>, RoutingError> {
        let channel = self.lookup(key).ok_or_else(|| not_found(key))?;
        let members = self.retire(&channel, true).await?.ok_or_else(|| not_found(key))?;
        if let Some(broker) = &self.inner.broker {
            broker.channel_deleted(key);
        }
        Ok(members)
    }

    pub(crate) fn unregister(&self, id: ClientId) {
        self.inner.clients.remove(&id);
        if let Some(broker) = &self.inner.broker {
            broker.client_disconnected(id);
        }
    }

    pub(crate) fn broker(&self) -> Option<&Arc<dyn Broker>> {
        self.inner.broker.as_ref()
    }
}

/// Tells a client its credentials expired, then closes it after `grace`.
/// Holds no strong reference: a client that leaves first is simply gone.
async fn expire(client: std::sync::Weak<ClientEntry>, after: std::time::Duration, grace: std::time::Duration) {
    tokio::time::sleep(after).await;
    let Some(entry) = client.upgrade() else { return };
    #[derive(serde::Serialize)]
    struct TokenExpired {
        event: &'static str,
    }
    let frame = arqon_protocol::encode::event(
        IdGenerator::new().message_id(),
        Timestamp::now(),
        &TokenExpired { event: "token_expired" },
    );
    entry.outlet.push(Outbound::Frame(frame));
    drop(entry);
    tokio::time::sleep(grace).await;
    if let Some(entry) = client.upgrade() {
        entry.outlet.close(arqon_protocol::CloseReason::TOKEN_EXPIRED);
    }
}

pub(crate) fn not_found(key: &ChannelKey) -> ProtocolError {
    ProtocolError::new(ErrorCode::NotFound, format!("channel {key} does not exist"))
}
