//! The bus core: channel table, client registry and fan-out.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arqon_outbound::{Budget, Outbound};
use arqon_protocol::{
    ChannelKey, ClientId, ErrorCode, Frame, IdGenerator, MessageId, Name, ProtocolError, RawValue, Role, Timestamp,
};
use arqon_storage::{Health, Storage, StoredMessage};
use dashmap::DashMap;
use foldhash::fast::RandomState;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::broker::{ActionReport, ActionTarget, Broker, ClientAction, Delivery, Place};
use crate::channel::Channel;
use crate::client::{ClientEntry, RoomAccess};
use crate::observer::{BusEvent, NoObserver, Observer};
use crate::outlet::{Inbox, Outlet, share};
use crate::rate::TokenBucket;
use crate::session::Session;
use crate::{RouterConfig, RoutingError};

/// Who a connecting client is, as established by the transport (or by the
/// embedding service).
#[derive(Debug, Clone)]
pub struct Identity {
    /// What the client may do.
    pub role: Role,
    /// Who the client is (a token's subject), shared by every connection of
    /// that user; `None` for an anonymous client. The connection itself
    /// always gets a fresh client id (PROTOCOL.md section 8.2).
    pub user: Option<Arc<str>>,
    /// Application data about the user (a JWT's `info` claim), shown in
    /// presence as is.
    pub info: Option<Arc<RawValue>>,
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
        Identity { role, user: None, info: None, rooms: RoomAccess::All, expires_in: None }
    }

    /// The same identity as the user `user`.
    pub fn with_user(mut self, user: impl Into<Arc<str>>) -> Self {
        self.user = Some(user.into());
        self
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
    join_guard: Option<Arc<dyn crate::JoinGuard>>,
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

    /// Asks `guard` about every join in a room whose `join_hook` option is on.
    pub fn join_guard(mut self, guard: Arc<dyn crate::JoinGuard>) -> Self {
        self.join_guard = Some(guard);
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
                budget: Budget::new(self.config.backlog_budget_bytes),
                config: self.config,
                storage: self.storage,
                clients: DashMap::with_hasher(RandomState::default()),
                users: DashMap::with_hasher(RandomState::default()),
                rooms: DashMap::with_hasher(RandomState::default()),
                client_ids: Mutex::new(IdGenerator::new()),
                channel_count: AtomicUsize::new(0),
                started: Instant::now(),
                expiry_timers: Arc::new(AtomicUsize::new(0)),
                broker: self.broker,
                observer: self.observer,
                join_guard: self.join_guard,
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
    /// Memory held by every client's backlog (PROTOCOL.md section 8.1).
    budget: Arc<Budget>,
    clients: DashMap<ClientId, Arc<ClientEntry>, RandomState>,
    /// user → that user's connections on this node.
    users: DashMap<Arc<str>, Vec<ClientId>, RandomState>,
    /// room → channel name → channel. A room exists while it has channels.
    pub(crate) rooms: DashMap<Name, HashMap<Name, Arc<Channel>, RandomState>, RandomState>,
    client_ids: Mutex<IdGenerator>,
    /// Channels in `rooms`, kept with every insert and removal so that the
    /// `max_channels` check needs no walk over the rooms.
    channel_count: AtomicUsize,
    pub(crate) started: Instant,
    /// Credential expiry timers whose task is still alive.
    expiry_timers: Arc<AtomicUsize>,
    broker: Option<Arc<dyn Broker>>,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) join_guard: Option<Arc<dyn crate::JoinGuard>>,
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
    ///
    /// `storage` is any [`Storage`] behind an `Arc`: a backend of
    /// `arqon-storage`, or one of your own crate, written against the trait
    /// and checked with the conformance kit `arqon-storage-conformance`
    /// (docs/storage.md, "Write your own backend"). The router appends to it
    /// on every publish and reads history, `since` replays and channel
    /// records from it.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use arqon_routing::{Router, RouterConfig};
    /// use arqon_storage::{FallbackOptions, FallbackStorage, MemoryStorage, Storage};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // Any implementation of the trait; here the degradation wrapper over memory.
    /// let memory = Arc::new(MemoryStorage::new(1000));
    /// let storage: Arc<dyn Storage> = Arc::new(FallbackStorage::new(memory, FallbackOptions::default()));
    /// let router = Router::builder(RouterConfig::default(), storage).build();
    /// assert_eq!(router.storage_health().backend, "memory");
    /// # }
    /// ```
    pub fn builder(config: RouterConfig, storage: Arc<dyn Storage>) -> RouterBuilder {
        RouterBuilder { config, storage, broker: None, observer: Arc::new(NoObserver), join_guard: None }
    }

    /// The budget of memory held by every client's backlog: bytes used
    /// now, its limit, and how many clients it closed.
    pub fn backlog_budget(&self) -> &Budget {
        &self.inner.budget
    }

    /// Loads the channels the storage backend remembers (after a restart);
    /// returns how many.
    pub async fn restore(&self) -> Result<usize, RoutingError> {
        let records = self.inner.storage.channels().await?;
        let count = records.len();
        for record in records {
            self.adopt(&record.key, record.created_at);
        }
        Ok(count)
    }

    /// Registers a client. Returns its session (feed it the client's frames)
    /// and its inbox (write what arrives there to the client). The `welcome`
    /// event is already queued.
    pub fn connect(&self, identity: Identity) -> Result<(Session, Inbox), RoutingError> {
        let id = self.inner.client_ids.lock().client_id();
        let user = identity.user.clone();
        let expires_in = identity.expires_in;
        let (entry, inbox) = self.entry(id, identity, false);
        match self.inner.clients.entry(id) {
            dashmap::Entry::Occupied(_) => return Err(RoutingError::DuplicateClient(id)),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Arc::clone(&entry));
            }
        }
        if let Some(user) = user {
            let mut ids = self.inner.users.entry(Arc::clone(&user)).or_default();
            ids.push(id);
            if ids.len() == 1
                && let Some(broker) = &self.inner.broker
            {
                broker.user_present(&user, true);
            }
        }
        self.inner.observer.observe(&BusEvent::ConnectionOpened { client_id: id, role: entry.role });
        if let Some(broker) = &self.inner.broker {
            broker.client_connected(id);
        }
        let expiry = expires_in.map(|after| self.start_expiry(&entry, after));
        let mut session = Session::new(self.clone(), entry);
        session.expiry = expiry;
        session.send_welcome();
        Ok((session, inbox))
    }

    /// A session for the application's backend (the server API, PROTOCOL.md
    /// section 8.3) with `role`: not a connection (no welcome, not listed,
    /// not counted), its messages come `from: "server"`, it may run the
    /// API-only commands, and it answers one command at a time through
    /// [`Session::call`]. Drop it when done.
    pub fn api_session(&self, role: Role) -> Session {
        let id = self.inner.client_ids.lock().client_id();
        let (entry, _inbox) = self.entry(id, Identity::new(role), true);
        Session::new(self.clone(), entry)
    }

    fn entry(&self, id: ClientId, identity: Identity, server: bool) -> (Arc<ClientEntry>, Inbox) {
        let (outlet, inbox) = Outlet::new(self.inner.config.max_backlog_bytes, &self.inner.budget);
        let entry = Arc::new(ClientEntry {
            id,
            role: identity.role,
            user: identity.user,
            info: identity.info,
            server,
            joined: parking_lot::Mutex::new(std::collections::HashSet::new()),
            gone: std::sync::atomic::AtomicBool::new(false),
            rooms: identity.rooms,
            outlet,
            channels_created: AtomicUsize::new(0),
            direct_inbound: parking_lot::Mutex::new(TokenBucket::new(
                u64::from(self.inner.config.direct_rate.rate_per_s),
                u64::from(self.inner.config.direct_rate.burst),
            )),
        });
        (entry, inbox)
    }

    /// Credential expiry timers still running: one per connected client
    /// whose credentials expire, and none once it has left (the session
    /// aborts its timer when dropped). For monitoring and leak tests.
    pub fn live_expiry_timers(&self) -> usize {
        self.inner.expiry_timers.load(Ordering::Acquire)
    }

    /// Starts the task that tells `entry` its credentials expired after
    /// `after`, then closes it; the session owns the returned timer.
    fn start_expiry(&self, entry: &Arc<ClientEntry>, after: std::time::Duration) -> ExpiryTimer {
        let live = LiveTimer::new(&self.inner.expiry_timers);
        let client = Arc::downgrade(entry);
        let grace = self.inner.config.expiry_grace;
        // From now, not from the task's first poll.
        let deadline = Instant::now() + after;
        let task = tokio::spawn(async move {
            // Counted while the task's future exists: dropped when it ends
            // and when it is aborted.
            let _live = live;
            expire(client, deadline, grace).await;
        });
        ExpiryTimer(task.abort_handle())
    }

    /// Counts as a client with `access` may see them: every count for an
    /// unrestricted client; for one limited to some rooms, its rooms that
    /// have channels, their channels, and the distinct clients (on this
    /// node) in those channels.
    pub(crate) fn counts_for(&self, access: &RoomAccess) -> BusCounts {
        let RoomAccess::Only(allowed) = access else { return self.counts() };
        let (mut rooms, mut channels) = (0, 0);
        let mut members = std::collections::HashSet::new();
        for room in allowed {
            let Some(room) = self.inner.rooms.get(room) else { continue };
            rooms += 1;
            channels += room.len();
            for channel in room.values() {
                channel.for_each_member(|m| {
                    members.insert(m.id);
                });
            }
        }
        BusCounts { connections: members.len(), rooms, channels }
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

    /// The limits and policies this router was built with.
    pub fn config(&self) -> &RouterConfig {
        &self.inner.config
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
            Delivery::User { user, frame, from } => self
                .user_clients(user)
                .iter()
                .filter(|c| c.id != *from)
                .map(|c| self.deliver_direct_local(c.id, frame))
                .sum(),
        }
    }

    /// Carries out, on this node's connections of `target`, an action the
    /// application asked of another node's server API (see
    /// [`Broker::act`](crate::Broker::act)); reports what it did, for that
    /// node to answer with.
    pub async fn act_for_broker(&self, target: &ActionTarget, action: &ClientAction) -> ActionReport {
        crate::actions::act_here(self, target, action).await
    }

    /// Another node created a channel: make it known here (no storage write,
    /// nothing forwarded back).
    pub fn channel_created_elsewhere(&self, key: &ChannelKey, created_at: Timestamp) {
        self.adopt(key, created_at);
    }

    /// Makes a channel created elsewhere (storage after a restart, another
    /// node) known here, unless it is. Not subject to the channel caps, and
    /// never reclaimed by this node: it is not this node's to remove.
    fn adopt(&self, key: &ChannelKey, created_at: Timestamp) {
        let mut room = self.inner.rooms.entry(key.room.clone()).or_default();
        if let std::collections::hash_map::Entry::Vacant(slot) = room.entry(key.channel.clone()) {
            slot.insert(Arc::new(Channel::new(key.clone(), created_at)));
            self.inner.channel_count.fetch_add(1, Ordering::AcqRel);
        }
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
        let forget = async {
            if forget_history {
                self.inner.storage.delete_channel(key).await?;
            }
            // The key may name a new channel once this one is retired,
            // which is not ours to remove: hence under the lock.
            self.unlist(key);
            Ok(true)
        };
        let Some(members) = channel.retire(forget).await? else {
            return Ok(None);
        };
        self.retired(key);
        Ok(Some(members))
    }

    /// Takes the channel at `key` out of the table. Only for
    /// [`Channel::retire`]'s `forget`, under the order lock, with the
    /// channel not deleted yet, so the entry under its key is this very
    /// channel.
    pub(crate) fn unlist(&self, key: &ChannelKey) {
        if let Some(mut room) = self.inner.rooms.get_mut(&key.room)
            && room.remove(&key.channel).is_some()
        {
            self.inner.channel_count.fetch_sub(1, Ordering::AcqRel);
        }
        self.inner.rooms.remove_if(&key.room, |_, channels| channels.is_empty());
    }

    /// What follows [`Channel::retire`], once the order lock is released.
    pub(crate) fn retired(&self, key: &ChannelKey) {
        self.inner.observer.observe(&BusEvent::ChannelDeleted { key });
        // Its members are no longer members here: the cluster's counts and
        // subscriptions must not outlive the channel.
        if let Some(broker) = &self.inner.broker {
            broker.interest(key, 0);
        }
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
        let share = share(frame.len(), members.len());
        members.iter().filter(|m| m.outlet.push_shared(Outbound::Frame(frame.clone()), share)).count()
    }

    /// Members of `key` on this node plus, with a broker, on the others.
    pub(crate) fn cluster_members(&self, key: &ChannelKey, local: usize) -> usize {
        local + self.inner.broker.as_ref().map_or(0, |b| b.remote_members(key))
    }

    // ---- internals used by sessions and commands ----

    pub(crate) fn lookup(&self, key: &ChannelKey) -> Option<Arc<Channel>> {
        self.inner.rooms.get(&key.room)?.get(&key.channel).cloned()
    }

    /// The channel, creating it if `create` allows and no channel cap is
    /// reached. Returns (channel, created).
    pub(crate) async fn ensure_channel(
        &self,
        key: &ChannelKey,
        create: Create<'_>,
    ) -> Result<(Arc<Channel>, bool), RoutingError> {
        if let Some(channel) = self.lookup(key) {
            if let Create::Explicit(_) = create {
                channel.keep();
            }
            return Ok((channel, false));
        }
        let creator = match create {
            Create::No => return Err(not_found(key).into()),
            Create::Auto(creator) | Create::Explicit(creator) => creator,
        };
        let made = {
            let mut room = self.inner.rooms.entry(key.room.clone()).or_default();
            match room.get(&key.channel) {
                Some(existing) => Ok((Arc::clone(existing), false)),
                None => self.take_slot(key, room.len(), creator).map(|()| {
                    let channel = Arc::new(match create {
                        Create::Explicit(_) => Channel::new(key.clone(), Timestamp::now()),
                        _ => Channel::new_reclaimable(key.clone(), Timestamp::now()),
                    });
                    room.insert(key.channel.clone(), Arc::clone(&channel));
                    (channel, true)
                }),
            }
        };
        let (channel, created) = match made {
            Ok(made) => made,
            Err(refusal) => {
                // The room may have been made for this channel alone.
                self.inner.rooms.remove_if(&key.room, |_, channels| channels.is_empty());
                return Err(refusal.into());
            }
        };
        if let Create::Explicit(_) = create {
            channel.keep();
        }
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

    /// Counts a new channel against the caps: `room_len` channels in its
    /// room, the creator's and the node's. Takes the slots (both counters
    /// move) only when every cap allows. Called under the room's map lock,
    /// so the per-room count cannot change meanwhile.
    fn take_slot(&self, key: &ChannelKey, room_len: usize, creator: &ClientEntry) -> Result<(), ProtocolError> {
        let config = &self.inner.config;
        let per_room = config.max_channels_per_room;
        if per_room > 0 && room_len >= per_room {
            return Err(refused(format!("room {} already has {per_room} channels, the most allowed", key.room)));
        }
        let per_client = config.max_channels_created_per_client;
        let under = |cap: usize| move |n: usize| (cap == 0 || n < cap).then_some(n + 1);
        if creator.channels_created.fetch_update(Ordering::AcqRel, Ordering::Acquire, under(per_client)).is_err() {
            return Err(refused(format!(
                "this connection has already created {per_client} channels, the most allowed"
            )));
        }
        let total = config.max_channels;
        if self.inner.channel_count.fetch_update(Ordering::AcqRel, Ordering::Acquire, under(total)).is_err() {
            creator.channels_created.fetch_sub(1, Ordering::AcqRel);
            return Err(refused(format!("this server already has {total} channels, the most allowed")));
        }
        Ok(())
    }

    /// Publishes to `key`, creating the channel as `create` allows. A
    /// channel removed (reclaimed or deleted) between its lookup and its
    /// order lock is made afresh once, as if the publish had come just
    /// after the removal, rather than answered `NOT_FOUND` on a bus that
    /// auto-creates.
    pub(crate) async fn publish_to(
        &self,
        key: &ChannelKey,
        create: Create<'_>,
        from: ClientId,
        id: MessageId,
        frame: &Frame,
        last: &mut Option<Arc<Channel>>,
    ) -> Result<Option<usize>, RoutingError> {
        let channel = match last.as_ref().filter(|channel| is_cached(channel, key)) {
            Some(channel) => Arc::clone(channel),
            None => {
                let (channel, _) = self.ensure_channel(key, create).await?;
                *last = Some(Arc::clone(&channel));
                channel
            }
        };
        match self.publish(&channel, from, id, frame.clone()).await {
            Err(_) if channel.is_deleted() && !matches!(create, Create::No) => {
                let (channel, _) = self.ensure_channel(key, create).await?;
                *last = Some(Arc::clone(&channel));
                self.publish(&channel, from, id, frame.clone()).await
            }
            outcome => outcome,
        }
    }

    /// [`Router::publish_to`] without waiting, to the sender's `last`
    /// channel: `None`, having done nothing, when that would wait (or
    /// `last` is not `key`'s channel, or publishing goes through the
    /// cluster).
    pub(crate) fn publish_now(
        &self,
        key: &ChannelKey,
        from: ClientId,
        id: MessageId,
        frame: &Frame,
        last: Option<&Arc<Channel>>,
    ) -> Option<Result<Option<usize>, RoutingError>> {
        if self.inner.broker.is_some() {
            return None;
        }
        last.filter(|channel| is_cached(channel, key))?.publish_now(&*self.inner.storage, id, frame, from)
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
        if let Some(broker) = &self.inner.broker {
            // Across nodes, in history order.
            return self.publish_placed(channel, from, StoredMessage { id, frame }, broker).await;
        }
        channel.publish(&*self.inner.storage, id, &frame, from).await
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

    /// Delivers a direct message from a client with access `from`. A
    /// client it may not reach ([`RoomAccess::may_reach`]) gets the same
    /// answer as an absent one, so that the refusal tells the sender nothing
    /// about clients outside its rooms. A rooms-limited client cannot reach
    /// clients on other nodes (their rooms are not known here).
    pub(crate) fn publish_direct(&self, from: &RoomAccess, to: ClientId, frame: Frame) -> Result<usize, RoutingError> {
        let absent = || ProtocolError::new(ErrorCode::NotFound, format!("no client {to} is connected")).into();
        if let Some(client) = self.inner.clients.get(&to).map(|c| Arc::clone(&c)) {
            if !from.may_reach(&client.rooms) {
                return Err(absent());
            }
            self.admit_direct(&client)?;
            return Ok(usize::from(client.outlet.push(Outbound::Frame(frame))));
        }
        match &self.inner.broker {
            Some(broker) if *from == RoomAccess::All && broker.knows_client(to) => {
                broker.forward(Delivery::Direct { to, frame });
                Ok(1)
            }
            _ => Err(absent()),
        }
    }

    /// Delivers a direct message to every connection of `user` on this
    /// node (`to: "user:NAME"`), each with the protection of a direct
    /// message; `NOT_FOUND` when the user has none the sender may reach.
    pub(crate) fn publish_user(&self, from: &ClientEntry, user: &str, frame: &Frame) -> Result<usize, RoutingError> {
        let absent = || ProtocolError::new(ErrorCode::NotFound, format!("user {user:?} has no connection")).into();
        // The sender never receives its own message, even when it writes to
        // its own user (its other tabs do).
        let targets: Vec<_> =
            self.user_clients(user).into_iter().filter(|c| c.id != from.id && from.rooms.may_reach(&c.rooms)).collect();
        // Connections on other nodes, for a sender that may reach anyone
        // (their rooms are not known here): counted as one, since how many
        // the other nodes reach is theirs to know.
        let remote = match &self.inner.broker {
            Some(broker) if from.rooms == RoomAccess::All && broker.knows_user(user) => {
                broker.forward(Delivery::User { user: user.to_owned(), frame: frame.clone(), from: from.id });
                1
            }
            _ => 0,
        };
        if targets.is_empty() {
            return if remote > 0 { Ok(remote) } else { Err(absent()) };
        }
        let mut delivered = 0;
        let mut refused = None;
        for client in &targets {
            match self.admit_direct(client) {
                Ok(()) => delivered += usize::from(client.outlet.push(Outbound::Frame(frame.clone()))),
                Err(error) => refused = Some(error),
            }
        }
        match refused {
            // Every connection refused it: the sender learns why and when to retry.
            Some(error) if delivered == 0 && remote == 0 => Err(error.into()),
            _ => Ok(delivered + remote),
        }
    }

    /// The options of `room` (PROTOCOL.md section 8.4).
    pub fn room_options(&self, room: &Name) -> &crate::RoomOptions {
        self.inner.config.rooms.for_room(room.as_str())
    }

    /// Whether publishing to or joining a missing channel of `room` creates it.
    pub(crate) fn auto_create(&self, room: &Name) -> bool {
        self.auto_create_with(self.room_options(room))
    }

    /// [`Router::auto_create`] for a room whose options are at hand.
    pub(crate) fn auto_create_with(&self, options: &crate::RoomOptions) -> bool {
        options.auto_create.unwrap_or(self.inner.config.auto_create)
    }

    /// A connected client of this node.
    pub(crate) fn client(&self, id: ClientId) -> Option<Arc<ClientEntry>> {
        self.inner.clients.get(&id).map(|c| Arc::clone(&c))
    }

    /// Every connection of `user` on this node.
    pub(crate) fn user_clients(&self, user: &str) -> Vec<Arc<ClientEntry>> {
        match self.inner.users.get(user) {
            Some(ids) => ids.iter().filter_map(|id| self.client(*id)).collect(),
            None => Vec::new(),
        }
    }

    /// A fresh id for a frame the bus itself sends (member events, API
    /// deliveries).
    pub(crate) fn message_id(&self) -> MessageId {
        self.inner.client_ids.lock().message_id()
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
        let share = share(frame.len(), reached.len());
        reached.values().filter(|m| m.outlet.push_shared(Outbound::Frame(frame.clone()), share)).count()
    }

    /// A direct message from another node: the same protection as a local
    /// one, but the sender cannot be told, so a refused one is dropped and
    /// logged.
    fn deliver_direct_local(&self, to: ClientId, frame: &Frame) -> usize {
        let Some(client) = self.inner.clients.get(&to).map(|c| Arc::clone(&c)) else {
            return 0;
        };
        if let Err(refused) = self.admit_direct(&client) {
            tracing::debug!(client_id = %to, reason = %refused, "dropped a direct message from another node");
            return 0;
        }
        usize::from(client.outlet.push(Outbound::Frame(frame.clone())))
    }

    /// Whether `client` may be sent one more direct message: a recipient is
    /// protected from senders it did not choose, so that together they can
    /// neither make it a slow consumer nor flood it (PROTOCOL.md section 8.1:
    /// a client is closed only for its own reading).
    fn admit_direct(&self, client: &ClientEntry) -> Result<(), ProtocolError> {
        let config = &self.inner.config;
        if config.direct_backlog_bytes > 0 && client.outlet.backlog_bytes() >= config.direct_backlog_bytes {
            return Err(ProtocolError::new(
                ErrorCode::RateLimited,
                format!("client {} is not reading fast enough; direct message refused", client.id),
            )
            .with_retry_after(DIRECT_BACKLOG_RETRY));
        }
        client.direct_inbound.lock().take_one().map_err(|wait| {
            ProtocolError::new(
                ErrorCode::RateLimited,
                format!("client {} receives too many direct messages; direct message refused", client.id),
            )
            .with_retry_after(wait)
        })
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

    pub(crate) fn unregister(&self, client: &ClientEntry) {
        let id = client.id;
        self.inner.clients.remove(&id);
        if let Some(user) = &client.user
            && let dashmap::Entry::Occupied(mut ids) = self.inner.users.entry(Arc::clone(user))
        {
            ids.get_mut().retain(|c| *c != id);
            if ids.get().is_empty() {
                ids.remove();
                if let Some(broker) = &self.inner.broker {
                    broker.user_present(user, false);
                }
            }
        }
        if let Some(broker) = &self.inner.broker {
            broker.client_disconnected(id);
        }
    }

    pub(crate) fn broker(&self) -> Option<&Arc<dyn Broker>> {
        self.inner.broker.as_ref()
    }
}

/// A session's credential expiry timer; aborts the timer's task when dropped.
#[derive(Debug)]
pub(crate) struct ExpiryTimer(tokio::task::AbortHandle);

impl Drop for ExpiryTimer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One live expiry task in [`Router::live_expiry_timers`]'s count.
struct LiveTimer(Arc<AtomicUsize>);

impl LiveTimer {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        LiveTimer(Arc::clone(count))
    }
}

impl Drop for LiveTimer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tells a client its credentials expired, then closes it after `grace`.
/// Holds no strong reference: a client that leaves first is simply gone.
async fn expire(client: std::sync::Weak<ClientEntry>, deadline: Instant, grace: std::time::Duration) {
    tokio::time::sleep_until(deadline).await;
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

/// How [`Router::ensure_channel`] may make a missing channel, and whose
/// creation it counts as.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Create<'a> {
    /// Never: a missing channel is `NOT_FOUND`.
    No,
    /// Auto-create (publish, join): the idle reclaim may remove it later.
    Auto(&'a ClientEntry),
    /// `create_channel`: kept however idle it gets; an existing
    /// auto-created channel is claimed (kept) too.
    Explicit(&'a ClientEntry),
}

/// Whether the sender's last channel is `key`'s and not deleted since (a
/// deletion that races a publish makes the publish fail, as a lookup would).
fn is_cached(last: &Channel, key: &ChannelKey) -> bool {
    last.key == *key && !last.is_deleted()
}

/// A channel cap refused a creation.
fn refused(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::Forbidden, message)
}

/// What a sender refused for a recipient's backlog is told to wait: about
/// the time a reading client takes to drain a megabyte.
const DIRECT_BACKLOG_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

pub(crate) fn not_found(key: &ChannelKey) -> ProtocolError {
    ProtocolError::new(ErrorCode::NotFound, format!("channel {key} does not exist"))
}
