//! The in-memory backend: one bounded log per channel, lost on restart.

use std::cell::RefCell;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use arqon_protocol::{ChannelKey, MessageId, Timestamp};
use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use foldhash::fast::RandomState;
use parking_lot::Mutex;

use crate::{AppendNow, Appended, ChannelRecord, ChannelStats, Health, Since, Storage, StorageError, StoredMessage};

/// Bytes charged for each kept message on top of its frame: an estimate of
/// its slot in the log, its id-index entry and the frame's allocation header,
/// so that many small messages count for what they cost.
pub(crate) const MESSAGE_OVERHEAD_BYTES: usize = 96;

/// The default backend: each channel keeps its newest messages in memory.
///
/// Channels live in a sharded map, and each channel's log sits behind its own
/// mutex, so appends to different channels never wait on one another. Every
/// operation is a short critical section with no await inside; the methods
/// are `async` only because [`Storage`] is, and every append completes in
/// [`Storage::append_now`], so the router never awaits one.
///
/// Cursor lookups (`before`, `since`, duplicate detection) go through a
/// per-channel id index, so they cost O(1) whatever the history length.
///
/// # Budgets
///
/// History is bounded three ways: messages per channel, bytes per channel
/// and bytes over all channels (see [`MemoryStorage::with_byte_budget`]). A
/// message is charged its frame's length plus a fixed bookkeeping estimate
/// of 96 bytes. Past a channel's bounds its oldest messages go; past the
/// total, the oldest messages of the largest channels go, until the total
/// is a sixteenth under the budget (the headroom spares the scan of every
/// channel on each following append).
pub struct MemoryStorage {
    /// Tells this backend's logs from another's in a thread's [`LAST_LOG`].
    instance: u64,
    /// Most messages kept per channel.
    max_per_channel: usize,
    /// Most bytes kept per channel.
    bytes_per_channel: usize,
    /// Most bytes kept over all channels.
    bytes_total: usize,
    /// Bytes kept over all channels: the sum of every live log's `bytes`.
    held: AtomicUsize,
    /// Taken (never waited for) by the one append that trims the total.
    evicting: Mutex<()>,
    /// Channel records, as given to [`Storage::create_channel`].
    records: DashMap<ChannelKey, ChannelRecord, RandomState>,
    /// Channel logs. Kept apart from `records` because `append` may create a
    /// log for a channel that was never recorded. The `Arc` lets a caller
    /// clone the log out and release the map's shard lock before locking it.
    logs: DashMap<ChannelKey, Arc<Mutex<Log>>, RandomState>,
}

impl MemoryStorage {
    /// The bus default for [`MemoryStorage::new`]: 1,000 messages per channel
    /// (PROTOCOL.md §7).
    pub const DEFAULT_MAX_PER_CHANNEL: usize = 1_000;
    /// The bus default byte budget of one channel: 8 MiB.
    pub const DEFAULT_BYTES_PER_CHANNEL: usize = 8 << 20;
    /// The bus default byte budget of all channels together: 256 MiB.
    pub const DEFAULT_BYTES_TOTAL: usize = 256 << 20;

    /// A backend keeping at most `max_per_channel` messages per channel; the
    /// bus default is [`MemoryStorage::DEFAULT_MAX_PER_CHANNEL`] (1,000).
    /// The byte budgets are the defaults (8 MiB per channel, 256 MiB in
    /// all); [`MemoryStorage::with_byte_budget`] changes them.
    ///
    /// When a channel's log is full, each append evicts its oldest message.
    /// `0` keeps no history at all: appends succeed and are dropped at once.
    pub fn new(max_per_channel: usize) -> Self {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        MemoryStorage {
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            max_per_channel,
            bytes_per_channel: Self::DEFAULT_BYTES_PER_CHANNEL,
            bytes_total: Self::DEFAULT_BYTES_TOTAL,
            held: AtomicUsize::new(0),
            evicting: Mutex::new(()),
            records: DashMap::with_hasher(RandomState::default()),
            logs: DashMap::with_hasher(RandomState::default()),
        }
    }

    /// Bounds the history in bytes: at most `per_channel` in one channel and
    /// `total` over all of them. A message larger than `per_channel` is
    /// accepted (and delivered by the bus) but not kept.
    #[must_use]
    pub fn with_byte_budget(mut self, per_channel: usize, total: usize) -> Self {
        self.bytes_per_channel = per_channel;
        self.bytes_total = total;
        self
    }

    /// Bytes of history kept now, over all channels (frames plus the
    /// per-message estimate); never above the total budget once an append
    /// has returned, unless appends run at that moment.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The channel's log, if it has one; the shard lock is released on return.
    fn log(&self, key: &ChannelKey) -> Option<Arc<Mutex<Log>>> {
        self.logs.get(key).map(|log| Arc::clone(log.value()))
    }

    /// The channel's log, created empty if missing.
    fn log_or_create(&self, key: &ChannelKey) -> Arc<Mutex<Log>> {
        // The read path first: creating takes the shard's write lock.
        if let Some(log) = self.log(key) {
            return log;
        }
        let log = self.logs.entry(key.clone()).or_insert_with(|| {
            // Capacity policy: bounded at `max_per_channel` messages and
            // `bytes_per_channel` bytes, evicting the oldest message on
            // overflow (see `Log::push`), and by the total byte budget
            // (`enforce_total`). Memory per channel grows with use, not up
            // front, so idle channels stay cheap.
            Arc::new(Mutex::new(Log::default()))
        });
        Arc::clone(log.value())
    }

    /// Runs `append` on `key`'s log, locked.
    ///
    /// A publisher sends to one channel over and over: the log this thread
    /// appended to last spares the map's lookup (hashing the key, the
    /// shard's lock), a third of an append. Only `delete_channel` takes a
    /// log out of the map, and it marks the log dead, so a remembered log
    /// found dead is looked up again: after a delete and re-create the
    /// append goes to the new log. A looked-up log found dead is an append
    /// racing the delete, which keeps nothing, as if it came just before.
    fn with_append_log<R>(&self, key: &ChannelKey, append: impl FnOnce(&mut Log) -> R) -> R {
        if let Some(log) = self.remembered_log(key) {
            let mut log = log.lock();
            if !log.dead {
                return append(&mut log);
            }
        }
        let log = self.remember_log(key);
        let mut log = log.lock();
        append(&mut log)
    }

    /// The log this thread appended to last, if it is `key`'s in this
    /// backend and still there (it may be dead: see [`Self::with_append_log`]).
    fn remembered_log(&self, key: &ChannelKey) -> Option<Arc<Mutex<Log>>> {
        let remembered = |last: &RefCell<Option<LastLog>>| {
            let last = last.borrow();
            let last = last.as_ref().filter(|last| last.instance == self.instance && last.key == *key)?;
            last.log.upgrade()
        };
        // `None` also while the thread's locals are torn down.
        LAST_LOG.try_with(remembered).ok().flatten()
    }

    /// [`Self::log_or_create`], remembered as this thread's last log.
    fn remember_log(&self, key: &ChannelKey) -> Arc<Mutex<Log>> {
        let log = self.log_or_create(key);
        let remember = LastLog { instance: self.instance, key: key.clone(), log: Arc::downgrade(&log) };
        // Unremembered if the thread's locals are being torn down.
        let _ = LAST_LOG.try_with(|last| *last.borrow_mut() = Some(remember));
        log
    }

    /// The one append both [`Storage::append`] and [`Storage::append_now`]
    /// run, so that the two cannot drift apart.
    fn push(&self, key: &ChannelKey, message: StoredMessage) -> Appended {
        let bounds = Bounds { messages: self.max_per_channel, bytes: self.bytes_per_channel };
        let appended = self.with_append_log(key, |log| {
            let before = log.bytes;
            let appended = log.push(message, bounds);
            self.account(before, log.bytes);
            appended
        });
        // After the log's lock is released: trimming locks other logs.
        self.enforce_total();
        appended
    }

    /// Moves `held` by a log's change in size from `before` to `after`.
    fn account(&self, before: usize, after: usize) {
        if after >= before {
            self.held.fetch_add(after - before, Ordering::AcqRel);
        } else {
            self.held.fetch_sub(before - after, Ordering::AcqRel);
        }
    }

    /// Past the total budget, evicts the oldest messages of the largest
    /// channels until the total is a sixteenth under the budget.
    ///
    /// Called with no log locked; locks one log at a time. One caller trims
    /// at a time; a caller that finds another trimming leaves the work to
    /// it, and the trimmer looks at the total once more after letting go,
    /// so an append that came in meanwhile is not left over the budget.
    fn enforce_total(&self) {
        // Another round only for appends that raced the previous one, and
        // only while rounds free something.
        while self.held.load(Ordering::Acquire) > self.bytes_total {
            let Some(_trimming) = self.evicting.try_lock() else { return };
            if self.trim_to(self.bytes_total - self.bytes_total / 16) == 0 {
                return;
            }
        }
    }

    /// Evicts the oldest messages of the largest channels until `held` is at
    /// most `target` (or nothing is left to evict); returns the bytes freed.
    fn trim_to(&self, target: usize) -> usize {
        // A snapshot of every log with its size, the largest on top. Sizes go
        // stale as appends continue; each pop reads the log's true size.
        let logs: Vec<Arc<Mutex<Log>>> = self.logs.iter().map(|log| Arc::clone(log.value())).collect();
        let mut largest: BinaryHeap<(usize, usize)> =
            logs.iter().enumerate().map(|(at, log)| (log.lock().bytes, at)).filter(|&(bytes, _)| bytes > 0).collect();
        let mut total_freed = 0;
        while self.held.load(Ordering::Acquire) > target {
            let Some((_, at)) = largest.pop() else { break };
            let next = largest.peek().map_or(0, |&(bytes, _)| bytes);
            let mut log = logs[at].lock();
            // At least one message per pop, so the loop always progresses;
            // then down to the next largest channel, so the largest shrink
            // together rather than one channel being emptied.
            loop {
                let freed = log.evict_oldest();
                self.held.fetch_sub(freed, Ordering::AcqRel);
                total_freed += freed;
                if freed == 0 || log.bytes <= next || self.held.load(Ordering::Acquire) <= target {
                    break;
                }
            }
            if log.bytes > 0 {
                largest.push((log.bytes, at));
            }
        }
        total_freed
    }
}

impl Default for MemoryStorage {
    /// A backend with the bus defaults: 1,000 messages and 8 MiB per
    /// channel, 256 MiB in all.
    fn default() -> Self {
        MemoryStorage::new(MemoryStorage::DEFAULT_MAX_PER_CHANNEL)
    }
}

impl fmt::Debug for MemoryStorage {
    // Summarised: dumping every kept message would be useless and huge.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStorage")
            .field("max_per_channel", &self.max_per_channel)
            .field("bytes_per_channel", &self.bytes_per_channel)
            .field("bytes_total", &self.bytes_total)
            .field("held", &self.held_bytes())
            .field("channels", &self.records.len())
            .field("logs", &self.logs.len())
            .finish()
    }
}

thread_local! {
    /// The log this thread appended to last (see [`MemoryStorage::with_append_log`]).
    /// Weak, so that it keeps neither a deleted channel's log nor a dropped
    /// backend's alive.
    static LAST_LOG: RefCell<Option<LastLog>> = const { RefCell::new(None) };
}

struct LastLog {
    /// [`MemoryStorage::instance`] of the backend the log belongs to.
    instance: u64,
    key: ChannelKey,
    log: Weak<Mutex<Log>>,
}

/// A channel's bounds: messages and bytes.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    messages: usize,
    bytes: usize,
}

/// What a kept message is charged against the byte budgets.
fn charge(message: &StoredMessage) -> usize {
    message.frame.len() + MESSAGE_OVERHEAD_BYTES
}

/// One channel's history, oldest first.
///
/// Every message gets a sequence number, one more than the previous append's.
/// Since eviction only ever removes the front, the kept sequence numbers are
/// contiguous: the message with sequence `s` sits at position `s - first_seq`.
/// That is what turns an id into a position in O(1) through `index`.
#[derive(Default)]
struct Log {
    /// Kept messages in append order.
    entries: VecDeque<StoredMessage>,
    /// Sequence number of `entries[0]`.
    first_seq: u64,
    /// Every kept id to its sequence number; exactly the ids in `entries`.
    /// Hashed with foldhash (seeded per map): every append inserts and
    /// evicts one id, and SipHash was a visible share of an append.
    index: HashMap<MessageId, u64, RandomState>,
    /// The sum of [`charge`] over `entries`.
    bytes: usize,
    /// Set when the channel is deleted: the log is out of the map and empty,
    /// and an append that raced the delete keeps nothing in it (as if it had
    /// come just before the delete).
    dead: bool,
}

impl Log {
    /// Position of a kept id in `entries`.
    fn position(&self, id: &MessageId) -> Option<usize> {
        // Sequence numbers of kept entries are >= first_seq and < first_seq + len,
        // so the difference always fits in usize.
        self.index.get(id).and_then(|&seq| usize::try_from(seq - self.first_seq).ok())
    }

    /// Appends as newest unless the id is kept, then evicts the oldest until
    /// within `bounds`.
    fn push(&mut self, message: StoredMessage, bounds: Bounds) -> Appended {
        // A dead log's index is empty: nothing to be a duplicate of.
        if self.dead {
            return Appended::Stored;
        }
        let seq = self.first_seq + self.entries.len() as u64;
        // One lookup for both the duplicate check and the insert.
        match self.index.entry(message.id) {
            std::collections::hash_map::Entry::Occupied(_) => return Appended::Duplicate,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(seq);
            }
        }
        self.bytes += charge(&message);
        self.entries.push_back(message);
        while (self.entries.len() > bounds.messages || self.bytes > bounds.bytes) && self.evict_oldest() > 0 {}
        Appended::Stored
    }

    /// Drops the oldest message; returns the bytes freed (0: none was kept).
    fn evict_oldest(&mut self) -> usize {
        let Some(oldest) = self.entries.pop_front() else { return 0 };
        self.index.remove(&oldest.id);
        self.first_seq += 1;
        let freed = charge(&oldest);
        self.bytes -= freed;
        freed
    }

    /// Empties the log for good (its channel was deleted); returns the
    /// bytes freed.
    fn kill(&mut self) -> usize {
        let freed = self.bytes;
        self.entries = VecDeque::new();
        self.index = HashMap::default();
        self.bytes = 0;
        self.dead = true;
        freed
    }

    /// The newest `limit` messages before `end` (a position), oldest first.
    fn newest_before(&self, end: usize, limit: usize) -> Vec<StoredMessage> {
        self.entries.range(end.saturating_sub(limit)..end).cloned().collect()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn create_channel(
        &self,
        key: &ChannelKey,
        created_at: Timestamp,
    ) -> Result<(ChannelRecord, bool), StorageError> {
        Ok(match self.records.entry(key.clone()) {
            Entry::Occupied(existing) => (existing.get().clone(), false),
            Entry::Vacant(slot) => {
                let record = ChannelRecord { key: key.clone(), created_at };
                slot.insert(record.clone());
                (record, true)
            }
        })
    }

    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        let mut records: Vec<ChannelRecord> = self.records.iter().map(|r| r.value().clone()).collect();
        // The map iterates in hash order; sorted output keeps listings stable.
        records.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(records)
    }

    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        let record = self.records.remove(key);
        let log = self.logs.remove(key);
        if let Some((_, log)) = &log {
            let freed = log.lock().kill();
            self.held.fetch_sub(freed, Ordering::AcqRel);
        }
        Ok(record.is_some() || log.is_some())
    }

    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        Ok(self.push(key, message))
    }

    /// Always done: an append is a short critical section and nothing else.
    fn append_now(&self, key: &ChannelKey, message: StoredMessage) -> AppendNow {
        AppendNow::Done(Ok(self.push(key, message)))
    }

    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let Some(log) = self.log(key) else {
            // No log: nothing is kept, so a cursor cannot name a kept message.
            return match before {
                Some(id) => Err(StorageError::UnknownCursor(id)),
                None => Ok(Vec::new()),
            };
        };
        let log = log.lock();
        let end = match before {
            Some(id) => log.position(&id).ok_or(StorageError::UnknownCursor(id))?,
            None => log.entries.len(),
        };
        Ok(log.newest_before(end, limit))
    }

    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        let Some(log) = self.log(key) else {
            return Ok(Since { messages: Vec::new(), truncated: true });
        };
        let log = log.lock();
        let (start, truncated) = match log.position(&after) {
            Some(at) => (at + 1, false),
            None => (0, true),
        };
        Ok(Since { messages: log.entries.range(start..).cloned().collect(), truncated })
    }

    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        Ok(self.log(key).map_or_else(ChannelStats::default, |log| {
            let log = log.lock();
            ChannelStats { stored: log.entries.len() as u64, last_id: log.entries.back().map(|m| m.id) }
        }))
    }

    fn health(&self) -> Health {
        let mut health = Health::new("memory", true);
        health.history_bytes = self.held_bytes() as u64;
        health.history_bytes_budget = self.bytes_total as u64;
        health
    }
}

#[cfg(test)]
mod tests {
    use arqon_protocol::{Frame, IdGenerator};

    use super::*;

    fn message(id: MessageId) -> StoredMessage {
        StoredMessage { id, frame: Frame::from_text(format!(r#"{{"id":"{id}","type":"message"}}"#)) }
    }

    /// Bounds of `n` messages and no byte limit.
    fn count(n: usize) -> Bounds {
        Bounds { messages: n, bytes: usize::MAX }
    }

    fn ids(n: usize) -> Vec<MessageId> {
        let mut generator = IdGenerator::new();
        (0..n).map(|_| generator.message_id()).collect()
    }

    /// Checks the invariant that makes O(1) cursors correct: the index holds
    /// exactly the kept ids, each mapped to its position plus `first_seq`.
    fn assert_index_consistent(log: &Log) {
        assert_eq!(log.index.len(), log.entries.len());
        for (at, kept) in log.entries.iter().enumerate() {
            assert_eq!(log.index.get(&kept.id), Some(&(log.first_seq + at as u64)));
            assert_eq!(log.position(&kept.id), Some(at));
        }
    }

    #[test]
    fn full_log_evicts_oldest_first() {
        let ids = ids(5);
        let mut log = Log::default();
        for &id in &ids {
            assert_eq!(log.push(message(id), count(3)), Appended::Stored);
        }
        let kept: Vec<MessageId> = log.entries.iter().map(|m| m.id).collect();
        assert_eq!(kept, ids[2..]);
        assert_eq!(log.first_seq, 2);
    }

    #[test]
    fn index_follows_eviction() {
        let ids = ids(25);
        let mut log = Log::default();
        for &id in &ids {
            log.push(message(id), count(10));
            assert_index_consistent(&log);
        }
        for evicted in &ids[..15] {
            assert_eq!(log.position(evicted), None);
        }
        assert_eq!(log.position(&ids[15]), Some(0));
        assert_eq!(log.position(&ids[24]), Some(9));
    }

    #[test]
    fn evicted_id_can_be_stored_again() {
        // Duplicate detection covers the kept history only (PROTOCOL.md §3).
        let ids = ids(3);
        let mut log = Log::default();
        for &id in &ids {
            log.push(message(id), count(2));
        }
        assert_eq!(log.push(message(ids[0]), count(2)), Appended::Stored);
        assert_eq!(log.entries.back().map(|m| m.id), Some(ids[0]));
        assert_index_consistent(&log);
    }

    #[test]
    fn duplicate_changes_nothing() {
        let ids = ids(3);
        let mut log = Log::default();
        for &id in &ids {
            log.push(message(id), count(10));
        }
        let altered = StoredMessage { id: ids[1], frame: Frame::from_text("{}") };
        assert_eq!(log.push(altered, count(10)), Appended::Duplicate);
        let kept: Vec<StoredMessage> = log.entries.iter().cloned().collect();
        let expected: Vec<StoredMessage> = ids.iter().map(|&id| message(id)).collect();
        assert_eq!(kept, expected);
        assert_index_consistent(&log);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let ids = ids(2);
        let mut log = Log::default();
        for &id in &ids {
            assert_eq!(log.push(message(id), count(0)), Appended::Stored);
        }
        assert!(log.entries.is_empty());
        assert!(log.index.is_empty());
    }

    #[test]
    fn newest_before_clamps_to_the_start() {
        let ids = ids(4);
        let mut log = Log::default();
        for &id in &ids {
            log.push(message(id), count(10));
        }
        let got: Vec<MessageId> = log.newest_before(3, 2).iter().map(|m| m.id).collect();
        assert_eq!(got, ids[1..3]);
        let got: Vec<MessageId> = log.newest_before(3, 100).iter().map(|m| m.id).collect();
        assert_eq!(got, ids[..3]);
        assert!(log.newest_before(0, 5).is_empty());
    }

    #[tokio::test]
    async fn reports_memory_backend_and_default_capacity() {
        let storage = MemoryStorage::default();
        let health = storage.health();
        assert_eq!((health.backend, health.healthy), ("memory", true));
        assert_eq!((health.history_bytes, health.history_bytes_budget), (0, 256 << 20));
        assert_eq!(storage.max_per_channel, 1_000);
        assert_eq!(storage.bytes_per_channel, 8 << 20);
    }

    #[tokio::test]
    async fn an_append_after_a_delete_and_re_create_goes_to_the_new_log() {
        let storage = MemoryStorage::new(10);
        let mut ids = IdGenerator::new();
        let key = ChannelKey::parse("r", "c").unwrap();
        let (first, second) = (ids.message_id(), ids.message_id());
        storage.append(&key, message(first)).await.unwrap();
        // Held across the delete, as a read racing it would: the remembered
        // log outlives it, dead.
        let old = storage.log(&key).unwrap();
        storage.delete_channel(&key).await.unwrap();
        storage.create_channel(&key, Timestamp::now()).await.unwrap();
        // This thread remembers the deleted (dead) log from the first append.
        storage.append(&key, message(second)).await.unwrap();
        let kept: Vec<MessageId> = storage.history(&key, 10, None).await.unwrap().iter().map(|m| m.id).collect();
        assert_eq!(kept, vec![second]);
        assert_eq!(storage.held_bytes(), charge(&message(second)));
        assert!(old.lock().entries.is_empty());
    }

    #[tokio::test]
    async fn two_backends_on_one_thread_keep_their_own_logs_of_the_same_channel() {
        let (a, b) = (MemoryStorage::new(10), MemoryStorage::new(10));
        let mut ids = IdGenerator::new();
        let key = ChannelKey::parse("r", "c").unwrap();
        let (to_a, to_b) = (ids.message_id(), ids.message_id());
        a.append(&key, message(to_a)).await.unwrap();
        b.append(&key, message(to_b)).await.unwrap();
        a.append(&ChannelKey::parse("r", "c").unwrap(), message(ids.message_id())).await.unwrap();
        let ids_of = |kept: Vec<StoredMessage>| kept.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids_of(b.history(&key, 10, None).await.unwrap()), vec![to_b]);
        let in_a = ids_of(a.history(&key, 10, None).await.unwrap());
        assert_eq!((in_a.len(), in_a[0]), (2, to_a));
    }

    #[tokio::test]
    async fn the_remembered_log_does_not_keep_a_dropped_backends_history() {
        let storage = MemoryStorage::new(10);
        let key = ChannelKey::parse("r", "c").unwrap();
        storage.append(&key, message(IdGenerator::new().message_id())).await.unwrap();
        assert!(LAST_LOG.with_borrow(|last| last.as_ref().is_some_and(|last| last.log.upgrade().is_some())));
        drop(storage);
        assert!(LAST_LOG.with_borrow(|last| last.as_ref().is_some_and(|last| last.log.upgrade().is_none())));
    }

    #[tokio::test]
    async fn append_now_is_always_done_and_is_append() {
        // Two backends fed the same appends, one through each method: every
        // answer and the kept history (duplicates refused, oldest trimmed at
        // the bound) must agree, and `append_now` must never defer.
        let (awaited, now) = (MemoryStorage::new(3), MemoryStorage::new(3));
        let key = ChannelKey::parse("room", "chan").unwrap();
        let ids = ids(5);
        let (stored, duplicate) = (Ok(Appended::Stored), Ok(Appended::Duplicate));
        let sequence = [
            (ids[0], stored.clone()),
            (ids[1], stored.clone()),
            (ids[0], duplicate.clone()),
            (ids[2], stored.clone()),
            (ids[3], stored.clone()), // full: evicts ids[0]
            (ids[1], duplicate.clone()),
            (ids[4], stored.clone()), // evicts ids[1]
            (ids[0], stored),         // no longer kept, so not a retry
            (ids[4], duplicate),
        ];
        for (id, expected) in sequence {
            assert_eq!(awaited.append(&key, message(id)).await, expected, "append {id}");
            match now.append_now(&key, message(id)) {
                AppendNow::Done(appended) => assert_eq!(appended, expected, "append_now {id}"),
                AppendNow::Later(_) => panic!("memory deferred the append of {id}"),
            }
        }
        let kept = now.history(&key, usize::MAX, None).await.unwrap();
        assert_eq!(kept, awaited.history(&key, usize::MAX, None).await.unwrap());
        let kept: Vec<MessageId> = kept.iter().map(|m| m.id).collect();
        assert_eq!(kept, [ids[3], ids[4], ids[0]]);
    }

    #[tokio::test]
    async fn delete_drops_an_unrecorded_log() {
        // `append` creates a log without a record; delete must still free it.
        let storage = MemoryStorage::new(10);
        let key = ChannelKey::parse("room", "chan").unwrap();
        storage.append(&key, message(ids(1)[0])).await.unwrap();
        assert!(storage.delete_channel(&key).await.unwrap());
        assert!(storage.logs.is_empty());
        assert!(!storage.delete_channel(&key).await.unwrap());
    }
}
