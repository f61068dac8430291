//! The background tasks of one node: publishing forwarded traffic,
//! announcing local changes (and subscribing to what local members need),
//! receiving from other nodes, and the heartbeat that keeps the registry
//! alive, notices dead nodes and rejoins after a Redis outage.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arqon_protocol::{ChannelKey, ClientId, Timestamp};
use arqon_routing::{ActionReport, ActionTarget, Delivery, Place, Router};
use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy, Value};
use fred::types::{ClusterHash, CustomCommand, Message};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::{Outgoing, Shared};
use crate::wire::{self, Control, Target, Topic};
use crate::{ClusterError, ClusterOptions};
use crate::{ledger, presence};

/// Most forwarded deliveries sent in one pipeline.
const BATCH: usize = 256;
/// Pub/sub messages the receiving side may fall behind by before it loses some.
const RECEIVE_BUFFER: usize = 1 << 16;
/// How often a node cut off from Redis tries again.
const RETRY: Duration = Duration::from_millis(250);

/// The two Redis connections of a node: one for commands and publishing (a
/// single connection, so one node's messages keep their order), one for
/// subscriptions.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    commands: Client,
    subscriber: SubscriberClient,
}

impl Clients {
    /// The client for commands (not the subscriber).
    pub(crate) fn commands(&self) -> &Client {
        &self.commands
    }

    pub(crate) async fn connect(options: &ClusterOptions) -> Result<Clients, ClusterError> {
        let mut config = Config::from_url(&options.url)
            .map_err(|e| ClusterError::Config(format!("invalid redis url: {}", e.details())))?;
        config.fail_fast = false;
        let connection = ConnectionConfig {
            connection_timeout: options.connect_timeout,
            internal_command_timeout: options.command_timeout,
            max_command_attempts: 1,
            ..Default::default()
        };
        let performance = |capacity| PerformanceConfig {
            default_command_timeout: options.command_timeout,
            broadcast_channel_capacity: capacity,
            ..Default::default()
        };
        let mut policy = ReconnectPolicy::new_exponential(0, 1, 1000, 2);
        policy.set_jitter(20);
        let commands =
            Client::new(config.clone(), Some(performance(32)), Some(connection.clone()), Some(policy.clone()));
        let subscriber =
            SubscriberClient::new(config, Some(performance(RECEIVE_BUFFER)), Some(connection), Some(policy));
        drop(commands.connect());
        drop(subscriber.connect());
        drop(subscriber.manage_subscriptions());
        let wait = async { tokio::try_join!(commands.wait_for_connect(), subscriber.wait_for_connect()) };
        if !matches!(tokio::time::timeout(options.connect_timeout, wait).await, Ok(Ok(_))) {
            tracing::warn!(
                "cluster: redis is unreachable at start-up; this node serves its own clients until it answers"
            );
        }
        Ok(Clients { commands, subscriber })
    }
}

/// Stops a node's cluster tasks.
#[derive(Debug)]
pub struct ClusterHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    node: Option<Node>,
}

impl ClusterHandle {
    /// Leaves the cluster: stops the tasks, tells the other nodes this node
    /// is gone (so they forget its clients at once rather than after the
    /// registry TTL) and removes its registry.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(node) = self.node {
            node.leave().await;
        }
    }
}

/// What every task needs.
#[derive(Debug, Clone)]
struct Node {
    shared: Arc<Shared>,
    clients: Clients,
    router: Router,
}

pub(crate) async fn start(
    shared: Arc<Shared>,
    clients: Clients,
    router: Router,
    outgoing: Option<mpsc::Receiver<Outgoing>>,
) -> ClusterHandle {
    let (stop, stopped) = watch::channel(false);
    let Some(outgoing) = outgoing else {
        return ClusterHandle { stop, tasks: Vec::new(), node: None };
    };
    let node = Node { shared, clients, router };
    // Listen before joining, so nothing announced meanwhile is missed.
    let mut messages = node.clients.subscriber.message_rx();
    let base =
        [node.shared.names.control(), node.shared.names.node_topic(&node.shared.node), node.shared.names.users_topic()];
    if node.clients.subscriber.subscribe(base.to_vec()).await.is_ok() && node.resync().await.is_ok() {
        node.shared.healthy.store(true, Ordering::Release);
        tracing::info!(node = %node.shared.node, peers = node.shared.view.read().node_count(), "joined the cluster");
    }
    let tasks = vec![
        tokio::spawn(node.clone().publish(outgoing, stopped.clone())),
        tokio::spawn(node.clone().announce(stopped.clone())),
        tokio::spawn({
            let node = node.clone();
            let stopped = stopped.clone();
            async move {
                let mut stopped = stopped;
                loop {
                    let received = tokio::select! {
                        _ = stopped.wait_for(|s| *s) => return,
                        received = messages.recv() => received,
                    };
                    match received {
                        Ok(message) => node.receive(message).await,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(lost)) => {
                            node.shared.drop_deliveries(lost, "receiving too slowly");
                            // What was lost is in history: fill it from there.
                            node.shared.suspect_all();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        }),
        tokio::spawn(node.clone().heartbeat(stopped)),
    ];
    ClusterHandle { stop, tasks, node: Some(node) }
}

pub(crate) fn command(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
}

/// Items whose flag is set, then the others, each in order.
fn split_by_flag<T>(items: impl IntoIterator<Item = (T, bool)>) -> (Vec<T>, Vec<T>) {
    let (mut set, mut unset) = (Vec::new(), Vec::new());
    for (item, flag) in items {
        if flag { set.push(item) } else { unset.push(item) }
    }
    (set, unset)
}

/// `KEY id…`: arguments of SADD / SREM on a node's client set.
fn client_args(key: String, ids: &[ClientId]) -> Vec<Value> {
    std::iter::once(Value::from(key)).chain(ids.iter().map(|id| Value::from(id.to_string()))).collect()
}

/// `KEY user…`: arguments of SADD/SREM on a node's users.
fn user_args(key: String, users: &[String]) -> Vec<Value> {
    std::iter::once(Value::from(key)).chain(users.iter().map(|u| Value::from(u.as_str()))).collect()
}

/// `KEY field count…`: arguments of HSET on a node's member counts.
fn count_args<'a>(key: String, counts: impl Iterator<Item = (&'a ChannelKey, usize)>) -> Vec<Value> {
    let mut args = vec![Value::from(key)];
    for (key, count) in counts {
        args.push(Value::from(wire::member_field(key)));
        args.push(Value::Integer(i64::try_from(count).unwrap_or(i64::MAX)));
    }
    args
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Node {
    fn control(&self, message: &Control) -> (String, Value) {
        (self.shared.names.control(), Value::from(message.to_json()))
    }

    /// Sends queued deliveries to the other nodes, a pipeline per batch.
    async fn publish(self, mut outgoing: mpsc::Receiver<Outgoing>, mut stopped: watch::Receiver<bool>) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                received = outgoing.recv_many(&mut batch, BATCH) => if received == 0 { return },
            }
            let count = batch.len() as u64;
            if !self.shared.is_healthy() {
                batch.clear();
                self.shared.drop_deliveries(count, "redis unreachable");
                continue;
            }
            let pipeline = self.clients.commands.pipeline();
            let mut queued = 0;
            for item in batch.drain(..) {
                let Some((topic, payload)) = self.encode(item) else { continue };
                if pipeline.publish::<(), _, _>(topic, payload).await.is_ok() {
                    queued += 1;
                }
            }
            match pipeline.all::<Value>().await {
                Ok(_) => {
                    self.shared.delivered_ok(queued);
                    self.shared.drop_deliveries_if(count - queued, "recipient left");
                }
                Err(error) => {
                    self.cut_off(&error);
                    self.shared.drop_deliveries(count, "redis unreachable");
                }
            }
        }
    }

    fn encode(&self, item: Outgoing) -> Option<(String, Bytes)> {
        let names = &self.shared.names;
        let node = &self.shared.node;
        let delivery = match item {
            Outgoing::Traffic(delivery) => delivery,
            Outgoing::Action { request, target, action } => {
                let topic = match &target {
                    ActionTarget::Client(id) => {
                        let Some(owner) = self.shared.view.read().node_of(*id) else {
                            // Gone meanwhile: nothing to do, and nobody to wait for.
                            self.shared.actions.answered(request, ActionReport::default());
                            return None;
                        };
                        names.node_topic(&owner)
                    }
                    ActionTarget::User(_) => names.users_topic(),
                };
                let body = wire::ActionBody::of(&action).to_frame();
                return Some((topic, wire::encode_traffic(node, &Target::Action(request, target), &body)));
            }
            Outgoing::Reply { node: asker, request, report } => {
                let body = wire::ReplyBody::of(&report).to_frame();
                return Some((names.node_topic(&asker), wire::encode_traffic(node, &Target::Reply(request), &body)));
            }
        };
        Some(match delivery {
            Delivery::Channel { key, frame, from, place } => {
                let topic = names.channel_topic(&key);
                (topic, wire::encode_traffic(node, &Target::Channel(key, from, place), &frame))
            }
            Delivery::Room { room, frame, from } => {
                let topic = names.room_topic(&room);
                (topic, wire::encode_traffic(node, &Target::Room(room, from), &frame))
            }
            Delivery::Direct { to, frame } => {
                let owner = self.shared.view.read().node_of(to)?;
                (names.node_topic(&owner), wire::encode_traffic(node, &Target::Direct(to), &frame))
            }
            Delivery::User { user, frame, from } => {
                (names.users_topic(), wire::encode_traffic(node, &Target::User(user, from), &frame))
            }
        })
    }

    /// Marks the node cut off; the heartbeat rejoins when Redis answers.
    fn cut_off(&self, error: &fred::error::Error) {
        if self.shared.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %error.details(), "cluster: redis unreachable; cross-node delivery paused");
        }
    }

    /// Announces local changes, subscribing first to what local members need
    /// (so a member counted elsewhere already receives that node's traffic).
    async fn announce(self, mut stopped: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                _ = self.shared.wake.notified() => {}
            }
            if let Err(error) = self.announce_pending().await {
                self.cut_off(&error);
            }
        }
    }

    async fn announce_pending(&self) -> Result<(), fred::error::Error> {
        let shared = &self.shared;
        let (clients, users, dirty, channel_events, counts, presence, presence_keys) = {
            let mut local = shared.local.lock();
            if !shared.is_healthy() {
                // The rejoin rewrites the whole registry; channel events are
                // learnt from storage then. Only the subscription waits matter.
                local.client_changes.clear();
                local.user_changes.clear();
                local.presence_changes.clear();
                local.channel_events.clear();
                let dirty: Vec<ChannelKey> = local.dirty.drain().collect();
                drop(local);
                self.release_waiters(&dirty);
                return Ok(());
            }
            let clients = std::mem::take(&mut local.client_changes);
            let users = std::mem::take(&mut local.user_changes);
            let dirty: Vec<ChannelKey> = local.dirty.drain().collect();
            let counts: Vec<(ChannelKey, usize, bool)> = dirty
                .iter()
                .map(|key| (key.clone(), local.members.get(key).copied().unwrap_or(0), local.wants(key)))
                .collect();
            let presence = std::mem::take(&mut local.presence_changes);
            // Whether this node still has entries in each channel touched.
            let presence_keys: HashMap<ChannelKey, bool> =
                presence.keys().map(|(key, _)| (key.clone(), local.presence.contains_key(key))).collect();
            (clients, users, dirty, std::mem::take(&mut local.channel_events), counts, presence, presence_keys)
        };
        let wanted: Vec<(ChannelKey, bool)> = counts.iter().map(|(k, _, w)| (k.clone(), *w)).collect();
        let subscribed = self.update_subscriptions(&wanted).await;
        self.release_waiters(&dirty);
        subscribed?;
        let names = &shared.names;
        let node = &*shared.node;
        let pipeline = self.clients.commands.pipeline();
        let (joined, left) = split_by_flag(clients);
        if !joined.is_empty() {
            pipeline.custom::<Value, Value>(command("SADD"), client_args(names.clients(node), &joined)).await?;
        }
        if !left.is_empty() {
            pipeline.custom::<Value, Value>(command("SREM"), client_args(names.clients(node), &left)).await?;
        }
        let (present, gone) = split_by_flag(users);
        if !present.is_empty() {
            pipeline.custom::<Value, Value>(command("SADD"), user_args(names.users(node), &present)).await?;
        }
        if !gone.is_empty() {
            pipeline.custom::<Value, Value>(command("SREM"), user_args(names.users(node), &gone)).await?;
        }
        if !present.is_empty() || !gone.is_empty() {
            let message = Control::Users { node: node.to_owned(), present, gone };
            pipeline.publish::<(), _, _>(names.control(), message.to_json()).await?;
        }
        if !joined.is_empty() || !left.is_empty() {
            let message = Control::Clients {
                node: node.to_owned(),
                joined: joined.iter().map(ToString::to_string).collect(),
                left: left.iter().map(ToString::to_string).collect(),
            };
            pipeline.publish::<(), _, _>(names.control(), message.to_json()).await?;
        }
        if !counts.is_empty() {
            let (set, gone): (Vec<_>, Vec<_>) = counts.iter().partition(|(_, n, _)| *n > 0);
            if !set.is_empty() {
                let args = count_args(names.members(node), set.iter().map(|(key, n, _)| (key, *n)));
                pipeline.custom::<Value, Value>(command("HSET"), args).await?;
            }
            if !gone.is_empty() {
                let mut args = vec![Value::from(names.members(node))];
                args.extend(gone.iter().map(|(key, _, _)| Value::from(wire::member_field(key))));
                pipeline.custom::<Value, Value>(command("HDEL"), args).await?;
            }
            let message = Control::Members {
                node: node.to_owned(),
                counts: counts.iter().map(|(key, n, _)| (wire::member_field(key), *n)).collect(),
            };
            pipeline.publish::<(), _, _>(names.control(), message.to_json()).await?;
        }
        for ((key, id), record) in presence {
            let hash = Value::from(names.presence(&key));
            match record {
                Some(json) => {
                    let args = vec![hash, Value::from(id.to_string()), Value::from(&*json)];
                    pipeline.custom::<Value, Value>(command("HSET"), args).await?;
                }
                None => {
                    pipeline.custom::<Value, Value>(command("HDEL"), vec![hash, Value::from(id.to_string())]).await?;
                }
            }
        }
        let (holding, emptied) = split_by_flag(presence_keys);
        for (verb, keys) in [("SADD", holding), ("SREM", emptied)] {
            if !keys.is_empty() {
                let args = presence::channel_set_args(names, node, &keys);
                pipeline.custom::<Value, Value>(command(verb), args).await?;
            }
        }
        for event in &channel_events {
            if let Control::ChannelDeleted { room, channel, .. } = event
                && let Ok(key) = ChannelKey::parse(room, channel)
            {
                let (holders, identities) = names.ledger(&key);
                let keys = vec![Value::from(names.presence(&key)), Value::from(holders), Value::from(identities)];
                pipeline.custom::<Value, Value>(command("DEL"), keys).await?;
            }
            let (topic, value) = self.control(event);
            pipeline.publish::<(), _, _>(topic, value).await?;
        }
        // On failure the node is cut off, and its rejoin rewrites everything.
        pipeline.all::<Value>().await.map(drop)
    }

    /// Subscribes to channels (and their rooms) now wanted, unsubscribes from
    /// those no longer wanted.
    async fn update_subscriptions(&self, wanted: &[(ChannelKey, bool)]) -> Result<(), fred::error::Error> {
        let names = &self.shared.names;
        let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
        let mut added = Vec::new();
        {
            let mut subs = self.shared.subs.lock();
            for (key, wants) in wanted {
                let has = subs.channels.contains(key);
                if *wants && !has {
                    subscribe.push(names.channel_topic(key));
                    if subs.add(key) {
                        subscribe.push(names.room_topic(&key.room));
                    }
                    added.push(key.clone());
                } else if !*wants && has {
                    unsubscribe.push(names.channel_topic(key));
                    if subs.remove(key) {
                        unsubscribe.push(names.room_topic(&key.room));
                    }
                }
            }
        }
        if !subscribe.is_empty()
            && let Err(error) = self.clients.subscriber.subscribe(subscribe).await
        {
            // Not subscribed after all: forget them so the rejoin retries.
            let mut subs = self.shared.subs.lock();
            for key in &added {
                subs.remove(key);
            }
            return Err(error);
        }
        if !unsubscribe.is_empty() {
            self.clients.subscriber.unsubscribe(unsubscribe).await?;
        }
        Ok(())
    }

    /// Lets joins waiting on these channels go on.
    fn release_waiters(&self, keys: &[ChannelKey]) {
        let mut subs = self.shared.subs.lock();
        for key in keys {
            for waiter in subs.waiters.remove(key).unwrap_or_default() {
                let _ = waiter.send(());
            }
        }
    }

    /// Handles one pub/sub message.
    async fn receive(&self, message: Message) {
        let shared = &self.shared;
        let bytes = match message.value {
            Value::Bytes(bytes) => bytes,
            Value::String(text) => text.into_inner(),
            _ => return,
        };
        match shared.names.classify(&message.channel) {
            Topic::Control => {
                let Ok(control) = serde_json::from_slice::<Control>(&bytes) else {
                    tracing::debug!("cluster: ignored a malformed control message");
                    return;
                };
                if control.node() != &*shared.node {
                    self.apply(control).await;
                }
            }
            Topic::Traffic | Topic::Node(_) => {
                let Some((origin, target, frame)) = wire::decode_traffic(&bytes) else {
                    tracing::debug!("cluster: ignored a malformed forwarded frame");
                    return;
                };
                // Local members got our own traffic directly.
                if origin == &*shared.node {
                    return;
                }
                shared.received.fetch_add(1, Ordering::Relaxed);
                let delivery = match target {
                    Target::Channel(key, from, place) => {
                        if place == Place::Unplaced {
                            // Its node stored it without a place yet: look for
                            // it in history until it turns up.
                            shared.suspect([key.clone()]);
                        }
                        Delivery::Channel { key, frame, from, place }
                    }
                    Target::Room(room, from) => Delivery::Room { room, frame, from },
                    Target::Direct(to) => Delivery::Direct { to, frame },
                    Target::User(user, from) => Delivery::User { user, frame, from },
                    Target::Action(request, target) => {
                        let action =
                            serde_json::from_str::<wire::ActionBody>(frame.as_str()).ok().and_then(|b| b.action());
                        let Some(action) = action else {
                            tracing::debug!("cluster: ignored a malformed action");
                            return;
                        };
                        let report = self.router.act_for_broker(&target, &action).await;
                        let reply = Outgoing::Reply { node: origin.to_owned(), request, report };
                        if shared.forward.try_send(reply).is_err() {
                            // The asking node's wait ends without this answer.
                            shared.drop_deliveries(1, "forward queue full");
                        }
                        return;
                    }
                    Target::Reply(request) => {
                        match serde_json::from_str::<wire::ReplyBody>(frame.as_str()) {
                            Ok(reply) => shared.actions.answered(request, reply.report()),
                            Err(_) => tracing::debug!("cluster: ignored a malformed action reply"),
                        }
                        return;
                    }
                };
                self.router.deliver_from_broker(&delivery).await;
            }
            Topic::Unknown => {}
        }
    }

    /// Applies another node's announcement.
    async fn apply(&self, control: Control) {
        let now = Instant::now();
        match control {
            Control::Heartbeat { node } => {
                let new = self.shared.view.write().seen(&node, now);
                if new {
                    self.spawn_read(node);
                }
            }
            Control::Clients { node, joined, left } => {
                let parse = |ids: Vec<String>| ids.iter().filter_map(|id| ClientId::parse(id).ok()).collect::<Vec<_>>();
                self.shared.view.write().clients(&node, &parse(joined), &parse(left), now);
            }
            Control::Users { node, present, gone } => {
                self.shared.view.write().users(&node, &present, &gone, now);
            }
            Control::Members { node, counts } => {
                let mut view = self.shared.view.write();
                for (field, count) in counts {
                    if let Some(key) = wire::parse_member_field(&field) {
                        view.members(&node, &key, count, now);
                    }
                }
            }
            Control::ChannelCreated { node, room, channel, created_at } => {
                self.shared.view.write().seen(&node, now);
                if let (Ok(key), Ok(at)) = (ChannelKey::parse(&room, &channel), Timestamp::parse(&created_at)) {
                    self.router.channel_created_elsewhere(&key, at);
                }
            }
            Control::ChannelDeleted { node, room, channel } => {
                self.shared.view.write().seen(&node, now);
                if let Ok(key) = ChannelKey::parse(&room, &channel) {
                    self.shared.forget_presence(&key);
                    self.router.channel_deleted_elsewhere(&key).await;
                }
            }
            Control::Sync { node } => {
                self.spawn_read(node);
                let router = self.router.clone();
                tokio::spawn(async move {
                    let _ = router.restore().await;
                });
            }
            Control::Leaving { node } => {
                if self.shared.view.write().remove(&node) {
                    tracing::info!(node = %node, "cluster: node left");
                }
            }
        }
    }

    /// Reads `node`'s registry in the background (not holding up receiving).
    fn spawn_read(&self, node: String) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.read_node(&node).await {
                this.cut_off(&error);
            }
        });
    }

    async fn read_node(&self, node: &str) -> Result<(), fred::error::Error> {
        let names = &self.shared.names;
        let commands = &self.clients.commands;
        let ids: Vec<String> = commands.custom(command("SMEMBERS"), vec![names.clients(node)]).await?;
        let counts: HashMap<String, i64> = commands.custom(command("HGETALL"), vec![names.members(node)]).await?;
        let users: HashSet<String> = commands
            .custom::<Vec<String>, _>(command("SMEMBERS"), vec![names.users(node)])
            .await?
            .into_iter()
            .collect();
        let clients: HashSet<ClientId> = ids.iter().filter_map(|id| ClientId::parse(id).ok()).collect();
        let members: HashMap<ChannelKey, usize> = counts
            .iter()
            .filter_map(|(field, n)| Some((wire::parse_member_field(field)?, usize::try_from(*n).ok()?)))
            .filter(|(_, n)| *n > 0)
            .collect();
        self.shared.view.write().replace(node, clients, members, users, Instant::now());
        Ok(())
    }

    /// (Re)joins: subscribes to everything local members need, rewrites this
    /// node's registry from its own state, reads every live node's registry
    /// and the channel list. Run at start-up and whenever Redis comes back.
    async fn resync(&self) -> Result<(), fred::error::Error> {
        let shared = &self.shared;
        let names = &shared.names;
        let node = &*shared.node;
        let ttl = ms(shared.options.registry_ttl);
        let (clients, members, wanted, users, presence) = {
            let mut local = shared.local.lock();
            local.client_changes.clear();
            local.user_changes.clear();
            local.presence_changes.clear();
            let presence: Vec<(ChannelKey, presence::Records)> =
                local.presence.iter().map(|(key, records)| (key.clone(), records.clone())).collect();
            // Topics subscribed before an outage are renewed by the subscriber
            // client itself; this adds what became wanted meanwhile and drops
            // what no longer is.
            let subscribed: Vec<ChannelKey> = shared.subs.lock().channels.iter().cloned().collect();
            let keys: HashSet<ChannelKey> = subscribed
                .into_iter()
                .chain(local.members.keys().cloned())
                .chain(local.requested.keys().cloned())
                .collect();
            let wanted: Vec<(ChannelKey, bool)> = keys.into_iter().map(|k| (k.clone(), local.wants(&k))).collect();
            let users: Vec<String> = local.users.iter().cloned().collect();
            (local.clients.iter().copied().collect::<Vec<_>>(), local.members.clone(), wanted, users, presence)
        };
        self.update_subscriptions(&wanted).await?;
        // Registered first: from here on no other node purges this one's
        // entries as a dead node's.
        let registered = self.clients.commands.pipeline();
        self.queue_registered(&registered).await?;
        registered.all::<Value>().await?;
        if shared.ledger_on() {
            // Before the purge below drops the set of channels it held in.
            let args = ledger::sync_args(names, node, ledger::holdings(&presence));
            let corrections: Value = self.clients.commands.custom(command("EVAL"), args).await?;
            shared.report(ledger::transitions(corrections));
        }
        // Nodes silent past the TTL: their presence entries go (each purge
        // checks again, atomically, that the node is still silent).
        let cutoff = now_ms() - ttl;
        let silent: Vec<Arc<str>> = self
            .clients
            .commands
            .custom::<Vec<String>, _>(
                command("ZRANGEBYSCORE"),
                vec![Value::from(names.nodes()), Value::from("-inf"), Value::Integer(cutoff)],
            )
            .await?
            .into_iter()
            .filter(|n| n.as_str() != node)
            .map(Arc::from)
            .collect();
        self.purge(&silent, cutoff).await?;
        let pipeline = self.clients.commands.pipeline();
        presence::queue_purge(&pipeline, names, node, presence::ALWAYS, presence::Ledger::Keep).await?;
        presence::queue_rewrite(&pipeline, names, node, &presence).await?;
        pipeline
            .custom::<Value, String>(command("DEL"), vec![names.clients(node), names.members(node), names.users(node)])
            .await?;
        for chunk in clients.chunks(1000) {
            pipeline.custom::<Value, Value>(command("SADD"), client_args(names.clients(node), chunk)).await?;
        }
        for chunk in users.chunks(1000) {
            pipeline.custom::<Value, Value>(command("SADD"), user_args(names.users(node), chunk)).await?;
        }
        let fields: Vec<(&ChannelKey, usize)> = members.iter().map(|(key, n)| (key, *n)).collect();
        for chunk in fields.chunks(1000) {
            let args = count_args(names.members(node), chunk.iter().copied());
            pipeline.custom::<Value, Value>(command("HSET"), args).await?;
        }
        self.queue_heartbeat(&pipeline, ttl).await?;
        // Nodes silent for ten TTLs are gone for good.
        let old = Value::Integer(now_ms() - 10 * ttl);
        pipeline
            .custom::<Value, Value>(
                command("ZREMRANGEBYSCORE"),
                vec![Value::from(names.nodes()), Value::from("-inf"), old],
            )
            .await?;
        let (topic, sync) = self.control(&Control::Sync { node: node.to_owned() });
        pipeline.publish::<(), _, _>(topic, sync).await?;
        pipeline.all::<Value>().await?;
        let live: Vec<String> = self
            .clients
            .commands
            .custom(
                command("ZRANGEBYSCORE"),
                vec![Value::from(names.nodes()), Value::Integer(now_ms() - ttl), Value::from("+inf")],
            )
            .await?;
        for other in live.iter().filter(|n| n.as_str() != node) {
            self.read_node(other).await?;
        }
        if let Err(error) = self.router.restore().await {
            tracing::warn!(error = %error, "cluster: could not reload the channel list");
        }
        Ok(())
    }

    /// Queues this node's heartbeat: its registry entry, key expiry, and the
    /// announcement.
    async fn queue_heartbeat(
        &self,
        pipeline: &fred::clients::Pipeline<Client>,
        ttl: i64,
    ) -> Result<(), fred::error::Error> {
        let names = &self.shared.names;
        let node = &*self.shared.node;
        self.queue_registered(pipeline).await?;
        for key in [names.clients(node), names.members(node), names.users(node)] {
            pipeline.custom::<Value, Value>(command("PEXPIRE"), vec![Value::from(key), Value::Integer(ttl)]).await?;
        }
        let (topic, beat) = self.control(&Control::Heartbeat { node: node.to_owned() });
        pipeline.publish::<(), _, _>(topic, beat).await
    }

    /// Queues this node's entry in the registry of nodes, with the time now.
    async fn queue_registered(&self, pipeline: &fred::clients::Pipeline<Client>) -> Result<(), fred::error::Error> {
        let args =
            vec![Value::from(self.shared.names.nodes()), Value::Integer(now_ms()), Value::from(&*self.shared.node)];
        pipeline.custom::<Value, Value>(command("ZADD"), args).await.map(drop)
    }

    /// Removes the presence entries of nodes found dead (best effort: a
    /// node that rejoins later, or starts, purges whatever is left).
    async fn purge_dead(self, dead: Vec<Arc<str>>) {
        let cutoff = now_ms() - ms(self.shared.options.registry_ttl);
        if let Err(error) = self.purge(&dead, cutoff).await {
            tracing::debug!(error = %error.details(), "cluster: could not remove dead nodes' presence");
        }
    }

    /// Removes the presence entries of `nodes` silent since `cutoff` (Unix
    /// ms), and their members from the ledger, reporting what that changes.
    async fn purge(&self, nodes: &[Arc<str>], cutoff: i64) -> Result<(), fred::error::Error> {
        if nodes.is_empty() {
            return Ok(());
        }
        let ledger = if self.shared.ledger_on() { presence::Ledger::Leave } else { presence::Ledger::Keep };
        let pipeline = self.clients.commands.pipeline();
        for node in nodes {
            presence::queue_purge(&pipeline, &self.shared.names, node, cutoff, ledger).await?;
        }
        let results: Vec<Value> = pipeline.all().await?;
        tracing::debug!(?nodes, "cluster: silent nodes' presence entries removed");
        self.shared.report(results.into_iter().flat_map(presence::purge_transitions).collect());
        Ok(())
    }

    /// Heartbeats, forgets silent nodes and stale subscriptions, and rejoins
    /// after an outage.
    async fn heartbeat(self, mut stopped: watch::Receiver<bool>) {
        let ttl = self.shared.options.registry_ttl;
        let interval = ttl / 3;
        let mut reconnects = self.clients.subscriber.reconnect_rx();
        // The running round of history checks, if any (one at a time).
        let mut checking: Option<JoinHandle<()>> = None;
        loop {
            let wait = if self.shared.is_healthy() { interval } else { RETRY.min(interval) };
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(wait) => {}
                // The subscriber lost its connection: announcements may have
                // been missed meanwhile, so rejoin.
                Ok(_) = reconnects.recv() => {
                    if self.shared.healthy.swap(false, Ordering::AcqRel) {
                        tracing::warn!("cluster: subscriber reconnected; rejoining");
                    }
                }
            }
            self.beat().await;
            if self.shared.is_healthy() && checking.as_ref().is_none_or(JoinHandle::is_finished) {
                checking = Some(tokio::spawn(self.clone().check_suspects()));
            }
            let now = Instant::now();
            let dead = self.shared.view.write().sweep(now, ttl);
            for node in &dead {
                tracing::warn!(node = %node, "cluster: node silent past the registry TTL; forgetting its clients");
            }
            if !dead.is_empty() && self.shared.is_healthy() {
                tokio::spawn(self.clone().purge_dead(dead));
            }
            let mut local = self.shared.local.lock();
            let stale: Vec<ChannelKey> = local
                .requested
                .iter()
                .filter(|(_, at)| now.duration_since(**at) > ttl)
                .map(|(k, _)| k.clone())
                .collect();
            if !stale.is_empty() {
                for key in stale {
                    local.requested.remove(&key);
                    local.dirty.insert(key);
                }
                drop(local);
                self.shared.wake.notify_one();
            }
        }
    }

    async fn beat(&self) {
        let ttl = ms(self.shared.options.registry_ttl);
        if self.shared.is_healthy() {
            let pipeline = self.clients.commands.pipeline();
            let result = async {
                self.queue_heartbeat(&pipeline, ttl).await?;
                pipeline.all::<Value>().await
            }
            .await;
            if let Err(error) = result {
                self.cut_off(&error);
            }
            return;
        }
        let base = vec![
            self.shared.names.control(),
            self.shared.names.node_topic(&self.shared.node),
            self.shared.names.users_topic(),
        ];
        let rejoined = async {
            self.clients.subscriber.subscribe(base).await?;
            self.resync().await
        }
        .await;
        if rejoined.is_ok() {
            // Cross-node copies were lost meanwhile, and the nodes' journals
            // reach history over the next moments: check it for a while.
            self.shared.suspect_all();
            self.shared.healthy.store(true, Ordering::Release);
            tracing::info!(peers = self.shared.view.read().node_count(), "cluster: redis is back; rejoined");
            // Pending local changes were folded into the rewrite.
            self.shared.wake.notify_one();
        }
    }

    /// Delivers to local members what history holds and they did not get,
    /// for every channel under suspicion (see `Shared::suspect`): one read
    /// per channel, usually empty.
    async fn check_suspects(self) {
        let now = Instant::now();
        let keys: Vec<ChannelKey> = {
            let mut suspect = self.shared.suspect.lock();
            suspect.retain(|_, until| *until > now);
            suspect.keys().cloned().collect()
        };
        for key in keys {
            self.router.catch_up(&key).await;
        }
    }

    /// Tells the others this node is gone and removes its registry (best effort).
    async fn leave(&self) {
        let names = &self.shared.names;
        let node = &*self.shared.node;
        if self.shared.is_healthy() {
            let pipeline = self.clients.commands.pipeline();
            let result = async {
                presence::queue_purge(&pipeline, names, node, presence::ALWAYS, presence::Ledger::Leave).await?;
                pipeline
                    .custom::<Value, String>(
                        command("DEL"),
                        vec![names.clients(node), names.members(node), names.users(node)],
                    )
                    .await?;
                pipeline.custom::<Value, String>(command("ZREM"), vec![names.nodes(), node.to_owned()]).await?;
                let (topic, bye) = self.control(&Control::Leaving { node: node.to_owned() });
                pipeline.publish::<(), _, _>(topic, bye).await?;
                pipeline.all::<Value>().await
            }
            .await;
            if let Err(error) = result {
                tracing::debug!(error = %error.details(), "cluster: could not announce leaving");
            }
        }
        let _ = self.clients.subscriber.quit().await;
        let _ = self.clients.commands.quit().await;
    }
}
