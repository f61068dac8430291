//! One channel: its members and the lock that orders its traffic.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arqon_protocol::{ChannelKey, ClientId, Frame, Outbound, Timestamp};
use parking_lot::{Mutex, RwLock};

use crate::client::ClientEntry;
use crate::sequence::Sequence;

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
    pub(crate) order: tokio::sync::Mutex<()>,
    /// Where the members are in history, on a cluster node (crate::sequence);
    /// touched only under `order`.
    pub(crate) sequence: Mutex<Sequence>,
    members: RwLock<HashMap<ClientId, Arc<ClientEntry>>>,
    deleted: AtomicBool,
}

impl Channel {
    pub(crate) fn new(key: ChannelKey, created_at: Timestamp) -> Self {
        Channel {
            key,
            created_at,
            order: tokio::sync::Mutex::new(()),
            sequence: Mutex::new(Sequence::default()),
            members: RwLock::new(HashMap::new()),
            deleted: AtomicBool::new(false),
        }
    }

    pub(crate) fn member_count(&self) -> usize {
        self.members.read().len()
    }

    /// Adds a member; returns (newly added, member count).
    pub(crate) fn add(&self, client: &Arc<ClientEntry>) -> (bool, usize) {
        let mut members = self.members.write();
        let added = members.insert(client.id, Arc::clone(client)).is_none();
        (added, members.len())
    }

    /// Removes a member; returns (was a member, member count after).
    pub(crate) fn remove(&self, id: ClientId) -> (bool, usize) {
        let mut members = self.members.write();
        let removed = members.remove(&id).is_some();
        (removed, members.len())
    }

    /// Marks the channel deleted and takes its members.
    pub(crate) fn retire(&self) -> Vec<Arc<ClientEntry>> {
        self.deleted.store(true, Ordering::Release);
        self.members.write().drain().map(|(_, c)| c).collect()
    }

    /// Takes `order`. Uncontended (the common case) it is taken at once,
    /// skipping the acquire future; otherwise this waits in the mutex's FIFO
    /// queue as `lock()` does. `try_lock` cannot jump that queue: a waiter
    /// exists only while the lock is held, and a release hands the lock to
    /// the first waiter directly.
    pub(crate) async fn lock_order(&self) -> tokio::sync::MutexGuard<'_, ()> {
        match self.order.try_lock() {
            Ok(guard) => guard,
            Err(_) => self.order.lock().await,
        }
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Queues `frame` for every member except `except`; returns how many got it.
    pub(crate) fn deliver(&self, frame: &Frame, except: Option<ClientId>) -> usize {
        let members = self.members.read();
        let mut delivered = 0;
        for (id, member) in members.iter() {
            if Some(*id) != except && member.outlet.push(Outbound::Frame(frame.clone())) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Calls `f` with every member (under the read lock: `f` must not block).
    pub(crate) fn for_each_member(&self, mut f: impl FnMut(&Arc<ClientEntry>)) {
        for member in self.members.read().values() {
            f(member);
        }
    }
}
