//! The synchronous side of the broker: what the router calls inline. Every
//! call is a cache read or a push into a bounded queue; the tasks in `node`
//! do the talking to Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use arqon_protocol::{ChannelKey, ClientId, Name, Timestamp};
use arqon_routing::{
    ActionReport, ActionTarget, Broker, ClientAction, Delivery, PresenceEntry, RemoteAction, RemotePresence, Router,
    Subscribed,
};
use fred::interfaces::ClientLike;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::actions::PendingActions;
use crate::ledger::{Ledger, Transition};
use crate::node::{self, Clients, ClusterHandle};
use crate::view::RemoteView;
use crate::wire::{Control, Names, PresenceRecord};
use crate::{ClusterError, ClusterHealth, ClusterOptions};

/// Ledger transitions found by this node waiting to be read, at most.
const TRANSITIONS_MAX: usize = 10_000;
/// Channel created/deleted announcements waiting to go out, at most.
const CHANNEL_EVENTS_MAX: usize = 4096;

/// What the publishing task sends to the other nodes.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// The router's traffic.
    Traffic(Delivery),
    /// Request `request`: an action for the node(s) holding `target`.
    Action { request: u64, target: ActionTarget, action: ClientAction },
    /// This node's answer to `node`'s request `request`.
    Reply { node: String, request: u64, report: ActionReport },
}

/// Several ArqonBus nodes sharing one Redis act as one bus through it.
///
/// Build it with [`RedisBroker::connect`], give it to the router
/// ([`RouterBuilder::broker`](arqon_routing::RouterBuilder::broker)), then
/// [`RedisBroker::start`] it with that router.
#[derive(Debug, Clone)]
pub struct RedisBroker {
    pub(crate) shared: Arc<Shared>,
    clients: Clients,
    outgoing: Arc<Mutex<Option<mpsc::Receiver<Outgoing>>>>,
}

/// State shared by the broker handle and its tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) node: Arc<str>,
    pub(crate) names: Names,
    pub(crate) options: ClusterOptions,
    pub(crate) forward: mpsc::Sender<Outgoing>,
    pub(crate) view: RwLock<RemoteView>,
    /// This node's actions waiting for other nodes' answers.
    pub(crate) actions: PendingActions,
    /// Where the ledger transitions this node finds go, once the ledger is
    /// on (see [`RedisBroker::ledger`]).
    transitions: Mutex<Option<mpsc::Sender<Transition>>>,
    pub(crate) local: Mutex<Local>,
    pub(crate) subs: Mutex<Subscriptions>,
    /// Wakes the announcing task when `local` has something pending.
    pub(crate) wake: Notify,
    pub(crate) healthy: AtomicBool,
    pub(crate) forwarded: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// Set once a drop has been logged; cleared when healthy traffic resumes.
    overflow_logged: AtomicBool,
    /// Channels whose history may hold messages this node's members did not
    /// get (after an outage, a lagging receiver, or another node's journaled
    /// messages), and until when the heartbeat checks them. At most one
    /// entry per channel with local members.
    pub(crate) suspect: Mutex<HashMap<ChannelKey, Instant>>,
}

/// This node's own clients and memberships (for rewriting its registry
/// after an outage) and the changes not yet announced.
#[derive(Debug, Default)]
pub(crate) struct Local {
    pub(crate) clients: HashSet<ClientId>,
    pub(crate) members: HashMap<ChannelKey, usize>,
    /// Client → connected (true) or gone (false), latest wins.
    pub(crate) client_changes: HashMap<ClientId, bool>,
    /// Users with connections on this node.
    pub(crate) users: HashSet<String>,
    /// This node's members' presence records (JSON) by channel: what the
    /// rejoin rewrites, since Redis may come back without them.
    pub(crate) presence: HashMap<ChannelKey, crate::presence::Records>,
    /// Presence fields not yet written, latest wins (`None`: the member
    /// left). Dropped during an outage: the rejoin rewrites from `presence`.
    pub(crate) presence_changes: HashMap<(ChannelKey, ClientId), Option<Arc<str>>>,
    /// User → present (true) or gone (false), latest wins.
    pub(crate) user_changes: HashMap<String, bool>,
    /// Channels whose local count or subscription need a look.
    pub(crate) dirty: HashSet<ChannelKey>,
    pub(crate) channel_events: VecDeque<Control>,
    /// Channels a join is waiting on, and since when (kept subscribed a
    /// while even if the join fails, then dropped by the heartbeat).
    pub(crate) requested: HashMap<ChannelKey, Instant>,
}

impl Local {
    /// Whether this node wants `key`'s cross-node traffic.
    pub(crate) fn wants(&self, key: &ChannelKey) -> bool {
        self.members.get(key).is_some_and(|n| *n > 0) || self.requested.contains_key(key)
    }
}

/// Which channel and room topics this node is subscribed to.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    pub(crate) channels: HashSet<ChannelKey>,
    /// Subscribed channels per room: the room topic is subscribed while > 0.
    rooms: HashMap<Name, usize>,
    /// Joins waiting for a channel's subscription.
    pub(crate) waiters: HashMap<ChannelKey, Vec<oneshot::Sender<()>>>,
}

impl Subscriptions {
    /// Records `key` as subscribed; returns whether its room topic is needed
    /// now (its first channel).
    pub(crate) fn add(&mut self, key: &ChannelKey) -> bool {
        self.channels.insert(key.clone());
        let rooms = self.rooms.entry(key.room.clone()).or_insert(0);
        *rooms += 1;
        *rooms == 1
    }

    /// Records `key` as unsubscribed; returns whether its room topic is no
    /// longer needed (its last channel).
    pub(crate) fn remove(&mut self, key: &ChannelKey) -> bool {
        if !self.channels.remove(key) {
            return false;
        }
        match self.rooms.get_mut(&key.room) {
            Some(rooms) if *rooms > 1 => {
                *rooms -= 1;
                false
            }
            Some(_) => {
                self.rooms.remove(&key.room);
                true
            }
            None => false,
        }
    }
}

impl RedisBroker {
    /// Connects to Redis (waiting up to `connect_timeout`; an unreachable
    /// Redis is not an error: the node starts cut off and joins when Redis
    /// answers).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Config`] for settings that can never work.
    pub async fn connect(options: ClusterOptions) -> Result<RedisBroker, ClusterError> {
        let node: Arc<str> = if options.node_id.is_empty() {
            Arc::from(format!("node-{}", ulid::Ulid::new().to_string().to_lowercase()))
        } else {
            Arc::from(options.node_id.as_str())
        };
        if node.contains(|c: char| c.is_whitespace() || c == ':') || options.forward_queue == 0 {
            return Err(ClusterError::Config(format!("invalid node id {node:?} or empty forward queue")));
        }
        let clients = Clients::connect(&options).await?;
        let (forward, outgoing) = mpsc::channel(options.forward_queue);
        let shared = Arc::new(Shared {
            names: Names::new(&options.key_prefix),
            node,
            options,
            forward,
            view: RwLock::new(RemoteView::default()),
            actions: PendingActions::default(),
            transitions: Mutex::new(None),
            local: Mutex::new(Local::default()),
            subs: Mutex::new(Subscriptions::default()),
            wake: Notify::new(),
            healthy: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            overflow_logged: AtomicBool::new(false),
            suspect: Mutex::new(HashMap::new()),
        });
        Ok(RedisBroker { shared, clients, outgoing: Arc::new(Mutex::new(Some(outgoing))) })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Starts the tasks that carry traffic and keep the registry, delivering
    /// what arrives to `router` (the router this broker was given to). Joins
    /// the cluster before returning if Redis answers. Call it once; a second
    /// call returns a handle with nothing to run.
    pub async fn start(&self, router: Router) -> ClusterHandle {
        let outgoing = self.outgoing.lock().take();
        node::start(Arc::clone(&self.shared), self.clients.clone(), router, outgoing).await
    }

    /// The cluster-wide membership ledger, for webhooks that fire once per
    /// cluster (docs/cluster.md), and the transitions the node finds by
    /// itself: the members of a dead node it removed, and its own
    /// corrections when it rejoins. From the first call on, the node keeps
    /// its holdings in the ledger in line with its members; call it before
    /// [`RedisBroker::start`], and on every node or none.
    pub fn ledger(&self) -> (Ledger, mpsc::Receiver<Transition>) {
        let (found, transitions) = mpsc::channel(TRANSITIONS_MAX);
        *self.shared.transitions.lock() = Some(found);
        (Ledger { shared: Arc::clone(&self.shared), commands: self.clients.commands().clone() }, transitions)
    }

    /// Health and counters, for status, metrics and telemetry.
    pub fn health(&self) -> ClusterHealth {
        let shared = &self.shared;
        ClusterHealth {
            node_id: shared.node.to_string(),
            healthy: shared.healthy.load(Ordering::Acquire),
            peers: shared.view.read().node_ids(),
            forwarded: shared.forwarded.load(Ordering::Relaxed),
            received: shared.received.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    /// Whether the ledger is on (see [`RedisBroker::ledger`]).
    pub(crate) fn ledger_on(&self) -> bool {
        self.transitions.lock().is_some()
    }

    /// Hands transitions found by this node to the ledger's user.
    pub(crate) fn report(&self, found: Vec<Transition>) {
        let Some(sender) = self.transitions.lock().clone() else { return };
        for transition in found {
            if sender.try_send(transition).is_err() {
                tracing::warn!("cluster: membership transitions are not being read; dropping one");
            }
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Counts deliveries that will not reach other nodes; logs the first of a run.
    pub(crate) fn drop_deliveries(&self, count: u64, why: &'static str) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
        if !self.overflow_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(why, "cluster: deliveries to other nodes are being dropped");
        }
    }

    /// [`Shared::drop_deliveries`] unless `count` is zero.
    pub(crate) fn drop_deliveries_if(&self, count: u64, why: &'static str) {
        if count > 0 {
            self.drop_deliveries(count, why);
        }
    }

    pub(crate) fn delivered_ok(&self, count: u64) {
        self.forwarded.fetch_add(count, Ordering::Relaxed);
        self.overflow_logged.store(false, Ordering::Relaxed);
    }

    /// Has the heartbeat check `keys`' history for a while (see `suspect`).
    pub(crate) fn suspect(&self, keys: impl IntoIterator<Item = ChannelKey>) {
        let until = Instant::now() + 2 * self.options.registry_ttl;
        let mut suspect = self.suspect.lock();
        for key in keys {
            suspect.insert(key, until);
        }
    }

    /// [`Shared::suspect`] for every channel with local members.
    pub(crate) fn suspect_all(&self) {
        let keys: Vec<ChannelKey> = self.local.lock().members.keys().cloned().collect();
        self.suspect(keys);
    }

    /// Drops this node's presence in a deleted channel: its members were
    /// removed without leaving one by one, and the hash is deleted whole.
    pub(crate) fn forget_presence(&self, key: &ChannelKey) {
        let mut local = self.local.lock();
        local.presence.remove(key);
        local.presence_changes.retain(|(changed, _), _| changed != key);
    }

    fn changed(&self, f: impl FnOnce(&mut Local)) {
        f(&mut self.local.lock());
        self.wake.notify_one();
    }
}

impl Broker for RedisBroker {
    fn forward(&self, delivery: Delivery) {
        let shared = &self.shared;
        if !shared.is_healthy() {
            shared.drop_deliveries(1, "redis unreachable");
            return;
        }
        if shared.forward.try_send(Outgoing::Traffic(delivery)).is_err() {
            shared.drop_deliveries(1, "forward queue full");
        }
    }

    fn act(&self, target: ActionTarget, action: ClientAction) -> Option<RemoteAction> {
        let shared = Arc::clone(&self.shared);
        let nodes = {
            let view = shared.view.read();
            match &target {
                ActionTarget::Client(id) => usize::from(view.node_of(*id).is_some()),
                // Every node hears the users topic, and every one answers.
                ActionTarget::User(user) if view.knows_user(user) => view.node_count(),
                ActionTarget::User(_) => 0,
            }
        };
        if nodes == 0 {
            return None;
        }
        let unreachable = ActionReport { unanswered: nodes, ..ActionReport::default() };
        if !shared.is_healthy() {
            return Some(Box::pin(std::future::ready(unreachable)));
        }
        let (request, mut answered) = shared.actions.register(nodes);
        if shared.forward.try_send(Outgoing::Action { request, target, action }).is_err() {
            shared.actions.give_up(request);
            return Some(Box::pin(std::future::ready(unreachable)));
        }
        // A publish, the other node's work (one storage read for a
        // subscribe's replay) and the answer's publish.
        let wait = shared.options.command_timeout * 3;
        Some(Box::pin(async move {
            if let Ok(Ok(report)) = tokio::time::timeout(wait, &mut answered).await {
                return report;
            }
            // Complete at the very last moment, or given up on.
            shared.actions.give_up(request).or_else(|| answered.try_recv().ok()).unwrap_or_default()
        }))
    }

    fn knows_client(&self, id: ClientId) -> bool {
        self.shared.view.read().node_of(id).is_some()
    }

    fn interest(&self, key: &ChannelKey, local_members: usize) {
        self.shared.changed(|local| {
            if local_members == 0 {
                local.members.remove(key);
            } else {
                local.members.insert(key.clone(), local_members);
                // The join happened: its request has served.
                local.requested.remove(key);
            }
            local.dirty.insert(key.clone());
        });
    }

    fn subscribe(&self, key: &ChannelKey) -> Subscribed {
        let shared = &self.shared;
        if !shared.is_healthy() {
            return Box::pin(std::future::ready(()));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut subs = shared.subs.lock();
            if subs.channels.contains(key) {
                return Box::pin(std::future::ready(()));
            }
            subs.waiters.entry(key.clone()).or_default().push(tx);
        }
        shared.changed(|local| {
            local.requested.insert(key.clone(), Instant::now());
            local.dirty.insert(key.clone());
        });
        // Never hold a join up longer than one Redis command may take.
        let timeout = shared.options.command_timeout;
        Box::pin(async move {
            let _ = tokio::time::timeout(timeout, rx).await;
        })
    }

    fn remote_members(&self, key: &ChannelKey) -> usize {
        self.shared.view.read().remote_members(key)
    }

    fn client_connected(&self, id: ClientId) {
        self.shared.changed(|local| {
            local.clients.insert(id);
            local.client_changes.insert(id, true);
        });
    }

    fn client_disconnected(&self, id: ClientId) {
        self.shared.changed(|local| {
            local.clients.remove(&id);
            local.client_changes.insert(id, false);
        });
    }

    fn presence_joined(&self, key: &ChannelKey, entry: PresenceEntry) {
        let record = PresenceRecord {
            node: self.shared.node.to_string(),
            user: entry.user,
            info: entry.info,
            joined_at: entry.joined_at.to_string(),
        };
        let json = serde_json::to_string(&record).unwrap_or_default();
        self.push_presence(key, entry.client_id, Some(Arc::from(json)));
    }

    fn presence_left(&self, key: &ChannelKey, id: ClientId) {
        self.push_presence(key, id, None);
    }

    fn presence(&self, key: &ChannelKey) -> RemotePresence {
        let shared = Arc::clone(&self.shared);
        let commands = self.clients.commands().clone();
        let hash = shared.names.presence(key);
        Box::pin(async move {
            if !shared.is_healthy() {
                return Vec::new();
            }
            let read = commands.custom::<HashMap<String, String>, _>(node::command("HGETALL"), vec![hash]).await;
            let records = match read {
                Ok(records) => records,
                Err(error) => {
                    tracing::debug!(error = %error.details(), "cluster: presence read failed; local members only");
                    return Vec::new();
                }
            };
            let view = shared.view.read();
            records
                .into_iter()
                .filter_map(|(field, json)| {
                    let record: PresenceRecord = serde_json::from_str(&json).ok()?;
                    // Local members come from memory; a dead node's are gone.
                    if record.node == *shared.node || !view.is_alive(&record.node) {
                        return None;
                    }
                    Some(PresenceEntry {
                        client_id: ClientId::parse(&field).ok()?,
                        user: record.user,
                        info: record.info,
                        joined_at: Timestamp::parse(&record.joined_at).ok()?,
                    })
                })
                .collect()
        })
    }

    fn user_present(&self, user: &str, present: bool) {
        self.shared.changed(|local| {
            if present {
                local.users.insert(user.to_owned());
            } else {
                local.users.remove(user);
            }
            local.user_changes.insert(user.to_owned(), present);
        });
    }

    fn knows_user(&self, user: &str) -> bool {
        self.shared.view.read().knows_user(user)
    }

    fn channel_created(&self, key: &ChannelKey, created_at: Timestamp) {
        let event = Control::channel_created(&self.shared.node, key, created_at);
        self.push_channel_event(event);
    }

    fn channel_deleted(&self, key: &ChannelKey) {
        self.shared.forget_presence(key);
        let event = Control::ChannelDeleted {
            node: self.shared.node.to_string(),
            room: key.room.to_string(),
            channel: key.channel.to_string(),
        };
        self.push_channel_event(event);
    }
}

impl RedisBroker {
    fn push_presence(&self, key: &ChannelKey, id: ClientId, record: Option<Arc<str>>) {
        self.shared.changed(|local| {
            match &record {
                Some(json) => {
                    local.presence.entry(key.clone()).or_default().insert(id, Arc::clone(json));
                }
                None => {
                    if let Some(members) = local.presence.get_mut(key) {
                        members.remove(&id);
                        if members.is_empty() {
                            local.presence.remove(key);
                        }
                    }
                }
            }
            local.presence_changes.insert((key.clone(), id), record);
        });
    }

    fn push_channel_event(&self, event: Control) {
        self.shared.changed(|local| {
            if local.channel_events.len() >= CHANNEL_EVENTS_MAX {
                // Other nodes still learn channels from storage on their next sync.
                tracing::warn!("cluster: too many channel announcements pending; dropping one");
                local.channel_events.pop_front();
            }
            local.channel_events.push_back(event);
        });
    }
}
