//! One channel: its members and the lock that orders its traffic.
//!
//! The ordering invariant lives in this module and only here: "append to
//! history, then deliver" (publish), "read the replay, then become a member"
//! (join), "count what was stored and delivered" (stats) and "forget the
//! history, then the members" (retire) each run under the channel's `order`
//! lock, which nothing outside this module can take; on a cluster node its
//! child module `sequence` keeps cross-node deliveries in history order
//! under the same lock. So history order is live order, a joiner sees
//! neither a gap nor a duplicate between replay and live traffic, and
//! `channel_info`'s `last_id` is a resume point.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arqon_outbound::{Fanout, Outbound};
use arqon_protocol::{ChannelKey, ClientId, Frame, MessageId, Timestamp};
use arqon_storage::{AppendNow, Appended, ChannelStats, Since, Storage, StorageError, StoredMessage, append_fast};
use parking_lot::{Mutex, RwLock};

use crate::RoutingError;
use crate::client::ClientEntry;
use crate::config::RateLimit;
use crate::member_events::{Gate, MemberEventGate};
use crate::outlet::share;
use crate::router::not_found;

/// What [`Channel::join`] did.
#[derive(Debug)]
pub(crate) struct Joined {
    /// The client was not a member before.
    pub(crate) added: bool,
    /// Local members after the join.
    pub(crate) members: usize,
    /// The client is its user's first connection among the members.
    pub(crate) new_user: bool,
}

/// What [`Channel::remove`] did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Removed {
    /// The client was a member.
    pub(crate) removed: bool,
    /// Local members after.
    pub(crate) members: usize,
    /// The client was its user's last connection among the members.
    pub(crate) user_gone: bool,
}

mod order;
mod sequence;

use order::OrderLock;
use sequence::Sequence;

/// A live channel.
///
/// `order` serializes "append to history, then deliver" (and a join's
/// history replay) per channel, so history order and live order agree and a
/// joiner never sees a message twice or misses one. It is per channel, never
/// global, and is the only lock held across an await (the storage call).
#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) key: ChannelKey,
    pub(crate) created_at: Timestamp,
    order: OrderLock,
    /// Where the members are in history, on a cluster node (`sequence`);
    /// touched only under `order`.
    sequence: Mutex<Sequence>,
    members: RwLock<Members>,
    deleted: AtomicBool,
    /// Made by auto-create and never claimed by `create_channel`: the idle
    /// reclaim may remove it (crate::reclaim).
    reclaimable: AtomicBool,
    /// Set by every publish, join and leave; the reclaim pass clears it and
    /// restarts the channel's idle time when it finds it set.
    active: AtomicBool,
    /// When the reclaim pass first saw the channel idle, in milliseconds
    /// since the router started; [`NOT_IDLE`] until then.
    idle_since: AtomicU64,
    /// The member-event rate, made on the first member event.
    member_events: parking_lot::Mutex<Option<MemberEventGate>>,
    /// Members that joined with `member_events: false`.
    quiet: parking_lot::Mutex<HashSet<ClientId>>,
    /// The frames delivered to every member, stored once and queued by
    /// reference (a burst costs memory per frame, not per delivery).
    fanout: parking_lot::Mutex<Fanout>,
}

/// `Channel::idle_since` of a channel not (yet) seen idle.
const NOT_IDLE: u64 = u64::MAX;

impl Channel {
    pub(crate) fn new(key: ChannelKey, created_at: Timestamp) -> Self {
        Channel {
            key,
            created_at,
            order: OrderLock::default(),
            sequence: Mutex::new(Sequence::default()),
            members: RwLock::new(Members::default()),
            deleted: AtomicBool::new(false),
            reclaimable: AtomicBool::new(false),
            active: AtomicBool::new(true),
            idle_since: AtomicU64::new(NOT_IDLE),
            member_events: parking_lot::Mutex::new(None),
            quiet: parking_lot::Mutex::new(HashSet::new()),
            fanout: parking_lot::Mutex::new(Fanout::new()),
        }
    }

    /// A channel made by auto-create, which the idle reclaim may remove.
    pub(crate) fn new_reclaimable(key: ChannelKey, created_at: Timestamp) -> Self {
        let channel = Channel::new(key, created_at);
        channel.reclaimable.store(true, Ordering::Relaxed);
        channel
    }

    /// `create_channel` claimed it: it is kept however idle it gets.
    pub(crate) fn keep(&self) {
        self.reclaimable.store(false, Ordering::Relaxed);
    }

    pub(crate) fn is_reclaimable(&self) -> bool {
        self.reclaimable.load(Ordering::Relaxed)
    }

    /// Records traffic or a membership change: the idle time starts over.
    pub(crate) fn touch(&self) {
        // Relaxed: the reclaim pass decides under the order lock, and a
        // publish, a join and the reclaim all take that lock.
        self.active.store(true, Ordering::Relaxed);
    }

    /// For the reclaim pass at `now_ms`: how long the channel has been idle,
    /// counted from the first pass that found it unused. Activity since the
    /// previous pass restarts the count at `now_ms`.
    pub(crate) fn idle_for(&self, now_ms: u64) -> u64 {
        if self.active.swap(false, Ordering::Relaxed) || self.idle_since.load(Ordering::Relaxed) == NOT_IDLE {
            self.idle_since.store(now_ms, Ordering::Relaxed);
        }
        now_ms.saturating_sub(self.idle_since.load(Ordering::Relaxed))
    }

    /// Whether anything happened since the reclaim pass last looked.
    pub(crate) fn was_touched(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn member_count(&self) -> usize {
        self.members.read().map.len()
    }

    /// Adds a member; returns (newly added, member count, first of its user).
    pub(crate) fn add(&self, client: &Arc<ClientEntry>) -> (bool, usize, bool) {
        let mut members = self.members.write();
        let (added, new_user) = members.insert(client);
        (added, members.map.len(), new_user)
    }

    /// Removes a member.
    pub(crate) fn remove(&self, id: ClientId) -> Removed {
        let mut members = self.members.write();
        let (removed, user_gone) = members.remove(id).unwrap_or_default();
        if removed {
            self.quiet.lock().remove(&id);
        }
        Removed { removed, members: members.map.len(), user_gone }
    }

    /// One page of the members, ordered by client id, from the first after
    /// `after`; and the totals: connections, distinct users (an anonymous
    /// member counts as one user).
    pub(crate) fn presence(&self, after: Option<ClientId>, limit: usize) -> Presence {
        let members = self.members.read();
        let mut page: Vec<&Member> =
            members.map.values().filter(|m| after.is_none_or(|after| m.client.id > after)).collect();
        if page.len() > limit {
            page.select_nth_unstable_by_key(limit, |m| m.client.id);
            page.truncate(limit);
        }
        page.sort_unstable_by_key(|m| m.client.id);
        Presence {
            page: page.into_iter().map(|m| (Arc::clone(&m.client), m.joined_at)).collect(),
            total: members.map.len(),
            users: members.users.len() + members.anonymous,
        }
    }

    /// Every local member, for a presence merged with other nodes'.
    pub(crate) fn presence_entries(&self) -> Vec<crate::PresenceEntry> {
        self.members
            .read()
            .map
            .values()
            .map(|m| crate::PresenceEntry {
                client_id: m.client.id,
                user: m.client.user.as_deref().map(str::to_owned),
                info: m.client.info.as_deref().map(|info| info.get().to_owned()),
                joined_at: m.joined_at,
            })
            .collect()
    }

    /// Connections and distinct users, without a page.
    pub(crate) fn presence_counts(&self) -> (usize, usize) {
        let members = self.members.read();
        (members.map.len(), members.users.len() + members.anonymous)
    }

    /// Whether a member wants member events of this channel (`join_channel`
    /// with `member_events: false` says no).
    pub(crate) fn set_member_events(&self, id: ClientId, wanted: bool) {
        let mut quiet = self.quiet.lock();
        if wanted {
            quiet.remove(&id);
        } else {
            quiet.insert(id);
        }
    }

    /// Decides whether one more member event may go out now (`rate`: the
    /// router's per-channel member-event rate).
    pub(crate) fn admit_member_event(&self, rate: RateLimit) -> Gate {
        self.member_events.lock().get_or_insert_with(|| MemberEventGate::new(rate)).admit()
    }

    /// Member events counted instead of sent since the last summary.
    pub(crate) fn take_suppressed_member_events(&self) -> u64 {
        self.member_events.lock().as_mut().map_or(0, MemberEventGate::take_suppressed)
    }

    /// Queues a member event for every member but `except` and those that
    /// asked for none; returns how many got it.
    pub(crate) fn deliver_member_event(&self, frame: &Frame, except: Option<ClientId>) -> usize {
        let quiet = self.quiet.lock().clone();
        if quiet.is_empty() {
            return self.deliver(frame, except);
        }
        let members = self.members.read();
        let mut delivered = 0;
        for (id, member) in members.map.iter() {
            if Some(*id) != except && !quiet.contains(id) && member.client.outlet.push(Outbound::Frame(frame.clone())) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Appends a message to history, then queues it to every member but
    /// `from`, in order with every other publish to this channel (a node
    /// alone; a cluster node goes through `sequence`). Returns how many
    /// members got it, or `None` for a retry (an id already kept: neither
    /// stored nor delivered).
    pub(crate) async fn publish(
        &self,
        storage: &dyn Storage,
        id: MessageId,
        frame: &Frame,
        from: ClientId,
    ) -> Result<Option<usize>, RoutingError> {
        let _order = self.order.lock().await;
        if self.is_deleted() {
            return Err(not_found(&self.key).into());
        }
        self.touch();
        let stored = StoredMessage { id, frame: frame.clone() };
        // Synchronous when the backend can (memory): no boxed futures per message.
        let appended = append_fast(storage, &self.key, stored).await;
        self.appended(appended, frame, from)
    }

    /// [`Channel::publish`] without waiting: `None`, having done nothing,
    /// when it would have to wait (the order lock is held, the backend
    /// cannot append at once) or the channel is deleted (the waiting path
    /// decides what that means).
    pub(crate) fn publish_now(
        &self,
        storage: &dyn Storage,
        id: MessageId,
        frame: &Frame,
        from: ClientId,
    ) -> Option<Result<Option<usize>, RoutingError>> {
        // Not a queue jump: a waiter that holds the lock's mutex keeps it out.
        let _order = self.order.try_now()?;
        if self.is_deleted() {
            return None;
        }
        let appended = match storage.append_now(&self.key, StoredMessage { id, frame: frame.clone() }) {
            AppendNow::Done(appended) => appended,
            AppendNow::Later(_) => return None,
        };
        self.touch();
        Some(self.appended(appended, frame, from))
    }

    /// Delivers an appended message to the members but `from` (a retry,
    /// not appended again, goes to no one); under the order lock.
    fn appended(
        &self,
        appended: Result<Appended, StorageError>,
        frame: &Frame,
        from: ClientId,
    ) -> Result<Option<usize>, RoutingError> {
        if appended? == Appended::Duplicate {
            return Ok(None);
        }
        Ok(Some(self.deliver(frame, Some(from))))
    }

    /// Makes `client` a member. `replay` reads what it missed (for `since`;
    /// on a cluster node it also brings the other members up to the same
    /// place); `respond` queues the join's response (given the member count
    /// and the replay's `truncated`); then the replay is queued as one item.
    /// All of it under the order lock: before any live message published
    /// after the join, with no gap and no duplicate.
    pub(crate) async fn join<R>(
        &self,
        client: &Arc<ClientEntry>,
        replay: R,
        respond: impl FnOnce(usize, Option<bool>),
    ) -> Result<Joined, RoutingError>
    where
        R: AsyncFnOnce() -> Result<Option<Since>, RoutingError>,
    {
        let _order = self.order.lock().await;
        if self.is_deleted() {
            return Err(not_found(&self.key).into());
        }
        let replay = replay().await?;
        let (added, members, new_user) = self.add(client);
        self.touch();
        respond(members, replay.as_ref().map(|r| r.truncated));
        if let Some(replay) = replay.filter(|r| !r.messages.is_empty()) {
            let frames: Box<[Frame]> = replay.messages.into_iter().map(|m| m.frame).collect();
            client.outlet.push(Outbound::Batch(frames));
        }
        Ok(Joined { added, members, new_user })
    }

    /// The channel's stored count and last id, taken when every message
    /// counted has also been queued to the members.
    pub(crate) async fn stats(&self, storage: &dyn Storage) -> Result<ChannelStats, RoutingError> {
        let _order = self.order.lock().await;
        Ok(storage.stats(&self.key).await?)
    }

    /// Deletes the channel: `forget` (the storage delete and taking it out of
    /// the table) runs first, under the lock, and may decide to keep the
    /// channel after all (`Ok(false)`: the idle reclaim found it used); a
    /// failure there changes nothing. Then the channel is marked deleted and
    /// its members are returned. `None` if it was kept, or if a racing
    /// delete got there first.
    pub(crate) async fn retire<F>(&self, forget: F) -> Result<Option<Vec<Arc<ClientEntry>>>, RoutingError>
    where
        F: Future<Output = Result<bool, RoutingError>>,
    {
        let _order = self.order.lock().await;
        if self.is_deleted() || !forget.await? {
            return Ok(None);
        }
        self.deleted.store(true, Ordering::Release);
        Ok(Some(self.members.write().take()))
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Queues `frame` for every member except `except`; returns how many got it.
    pub(crate) fn deliver(&self, frame: &Frame, except: Option<ClientId>) -> usize {
        let members = &self.members.read().map;
        if members.len() == 1 {
            // One member (fan-in, a one-to-one channel): a shared chunk
            // would hold the one reference the frame itself is, and filling
            // it was a third of this delivery.
            let to = members.iter().find(|(id, _)| Some(**id) != except);
            return to.map_or(0, |(_, member)| usize::from(member.client.outlet.push(Outbound::Frame(frame.clone()))));
        }
        let recipients = members.len() - usize::from(except.is_some_and(|id| members.contains_key(&id)));
        if recipients == 0 {
            return 0;
        }
        let share = share(frame.len(), recipients);
        let appended = self.fanout.lock().append(frame.clone());
        let mut delivered = 0;
        for (id, member) in members.iter() {
            if Some(*id) != except && member.client.outlet.push_fanout(&appended, share) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Calls `f` with every member (under the read lock: `f` must not block).
    pub(crate) fn for_each_member(&self, mut f: impl FnMut(&Arc<ClientEntry>)) {
        for member in self.members.read().map.values() {
            f(&member.client);
        }
    }
}

/// A member and when it joined (shown by `presence`).
#[derive(Debug)]
struct Member {
    client: Arc<ClientEntry>,
    joined_at: Timestamp,
}

/// A channel's members, with the count of distinct users kept as they come
/// and go (so `presence` need not walk them to count).
#[derive(Debug, Default)]
struct Members {
    /// Keyed by server-made ids, looked up per message (the sender is
    /// skipped): foldhash, not SipHash.
    map: HashMap<ClientId, Member, foldhash::fast::RandomState>,
    /// user → its connections among the members.
    users: HashMap<Arc<str>, usize>,
    /// Members without a user.
    anonymous: usize,
}

impl Members {
    /// Adds `client`; returns (added: false if it was a member already,
    /// first connection of its user; an anonymous member is its own user).
    fn insert(&mut self, client: &Arc<ClientEntry>) -> (bool, bool) {
        if self.map.contains_key(&client.id) {
            return (false, false);
        }
        self.map.insert(client.id, Member { client: Arc::clone(client), joined_at: Timestamp::now() });
        let new_user = match &client.user {
            Some(user) => {
                let count = self.users.entry(Arc::clone(user)).or_default();
                *count += 1;
                *count == 1
            }
            None => {
                self.anonymous += 1;
                true
            }
        };
        (true, new_user)
    }

    /// Removes `id`; returns (true, last connection of its user), or `None`
    /// if it was no member.
    fn remove(&mut self, id: ClientId) -> Option<(bool, bool)> {
        let member = self.map.remove(&id)?;
        let user_gone = match &member.client.user {
            Some(user) => match self.users.get_mut(user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => {
                    self.users.remove(user);
                    true
                }
            },
            None => {
                self.anonymous -= 1;
                true
            }
        };
        Some((true, user_gone))
    }

    /// Takes every member, leaving none.
    fn take(&mut self) -> Vec<Arc<ClientEntry>> {
        self.users.clear();
        self.anonymous = 0;
        self.map.drain().map(|(_, m)| m.client).collect()
    }
}

/// One page of a channel's members and its totals.
#[derive(Debug)]
pub(crate) struct Presence {
    pub(crate) page: Vec<(Arc<ClientEntry>, Timestamp)>,
    pub(crate) total: usize,
    pub(crate) users: usize,
}
