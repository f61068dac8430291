//! The storage conformance suite: every backend must pass every check here.
//!
//! Each check is an async function taking a factory, `async |capacity|` to a
//! fresh, empty `Arc<dyn Storage>` keeping at most `capacity` messages per
//! channel. The factory is async so that a backend needing set-up (connecting
//! to Redis, picking a fresh key prefix) fits as well as the memory one. The
//! `conformance!` macro turns the checks into one `#[tokio::test]` each for a
//! backend; plugging a new backend in is one line at the bottom of this file.
//!
//! Every check appends ids in an order that is not id order, so a backend that
//! sorts by id instead of keeping append order fails everywhere.
//!
//! The Redis backends spawn a redis-server of their own per check (see
//! `support`); without one installed they skip with a notice, except under
//! `CI=true`, where they fail.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use arqon_protocol::encode::MessageFrame;
use arqon_protocol::{ChannelKey, IdGenerator, MessageId, Timestamp};
use arqon_storage::{
    AppendNow, Appended, ChannelRecord, ChannelStats, FallbackOptions, FallbackStorage, Health, MemoryStorage, Since,
    Storage, StorageError, StoredMessage, append_fast, async_trait,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn key(room: &str, channel: &str) -> ChannelKey {
    ChannelKey::parse(room, channel).unwrap()
}

/// A message as the bus would store it: the real encoded envelope.
fn message(key: &ChannelKey, id: MessageId) -> StoredMessage {
    let frame = MessageFrame {
        id,
        timestamp: Timestamp::from_unix_ms(1_700_000_000_000),
        from: IdGenerator::new().client_id(),
        room: Some(&key.room),
        channel: Some(&key.channel),
        payload: None,
        meta: None,
    }
    .encode();
    StoredMessage { id, frame }
}

/// `n` fresh ids in an append order that is neither ascending nor descending
/// id order: newest, oldest, second newest, second oldest, ...
fn ids_out_of_order(n: usize) -> Vec<MessageId> {
    let mut generator = IdGenerator::new();
    let mut sorted: VecDeque<MessageId> = (0..n).map(|_| generator.message_id()).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(newest) = sorted.pop_back() {
        order.push(newest);
        if let Some(oldest) = sorted.pop_front() {
            order.push(oldest);
        }
    }
    order
}

/// One id that is never appended anywhere.
fn stranger() -> MessageId {
    IdGenerator::new().message_id()
}

/// Appends `ids` in order, checking each is stored; returns the messages.
async fn fill(storage: &dyn Storage, key: &ChannelKey, ids: &[MessageId]) -> Vec<StoredMessage> {
    let mut stored = Vec::with_capacity(ids.len());
    for &id in ids {
        let msg = message(key, id);
        assert_eq!(storage.append(key, msg.clone()).await.unwrap(), Appended::Stored, "append {id}");
        stored.push(msg);
    }
    stored
}

fn ids_of(messages: &[StoredMessage]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

async fn all(storage: &dyn Storage, key: &ChannelKey) -> Vec<StoredMessage> {
    storage.history(key, usize::MAX, None).await.unwrap()
}

// ---------------------------------------------------------------------------
// The checks, one per bullet of the `Storage` contract (and a few more)
// ---------------------------------------------------------------------------

/// Order is append order, never id order, and frames come back unchanged.
async fn append_order_is_kept(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "order");
    let ids = ids_out_of_order(20);
    let stored = fill(&*storage, &chan, &ids).await;

    assert_eq!(all(&*storage, &chan).await, stored);
    let since = storage.since(&chan, ids[4]).await.unwrap();
    assert_eq!(since.messages, stored[5..]);
    assert_eq!(storage.stats(&chan).await.unwrap().last_id, ids.last().copied());
}

/// A kept id is a retry: `Duplicate`, nothing stored, order unchanged.
async fn duplicate_changes_nothing(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "dup");
    let ids = ids_out_of_order(5);
    let stored = fill(&*storage, &chan, &ids).await;

    for &again in [ids[0], ids[2], ids[4]].iter() {
        // A retry may carry a different frame; the kept one must win.
        let retry = message(&key("r", "elsewhere"), again);
        assert_eq!(storage.append(&chan, retry).await.unwrap(), Appended::Duplicate);
    }
    assert_eq!(all(&*storage, &chan).await, stored);
    let stats = storage.stats(&chan).await.unwrap();
    assert_eq!(stats, ChannelStats { stored: 5, last_id: Some(ids[4]) });
}

/// A full channel evicts its oldest message; cursors naming it are unknown.
async fn history_is_bounded(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(10).await;
    let chan = key("r", "bounded");
    let ids = ids_out_of_order(11);
    let stored = fill(&*storage, &chan, &ids[..10]).await;
    assert_eq!(all(&*storage, &chan).await, stored, "exactly full: nothing evicted yet");

    fill(&*storage, &chan, &ids[10..]).await;
    let kept = all(&*storage, &chan).await;
    assert_eq!(ids_of(&kept), ids[1..]);
    assert_eq!(storage.stats(&chan).await.unwrap(), ChannelStats { stored: 10, last_id: Some(ids[10]) });

    let evicted = ids[0];
    assert_eq!(storage.history(&chan, 5, Some(evicted)).await, Err(StorageError::UnknownCursor(evicted)));
    let since = storage.since(&chan, evicted).await.unwrap();
    assert_eq!(since, Since { messages: kept.clone(), truncated: true });
    // The oldest kept message is still a valid cursor.
    let since = storage.since(&chan, ids[1]).await.unwrap();
    assert_eq!(since, Since { messages: kept[1..].to_vec(), truncated: false });
}

/// `history(limit, before)`: the newest `limit` strictly older, oldest first.
async fn history_limit_and_before(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "paging");
    let ids = ids_out_of_order(10);
    let stored = fill(&*storage, &chan, &ids).await;

    let history = |limit, before| storage.history(&chan, limit, before);
    assert_eq!(history(3, None).await.unwrap(), stored[7..]);
    assert_eq!(history(10, None).await.unwrap(), stored);
    assert_eq!(history(50, None).await.unwrap(), stored, "limit beyond what is kept");
    assert_eq!(history(3, Some(ids[6])).await.unwrap(), stored[3..6]);
    assert_eq!(history(1, Some(ids[9])).await.unwrap(), stored[8..9]);
    assert_eq!(history(50, Some(ids[6])).await.unwrap(), stored[..6], "limit beyond what is older");
    assert_eq!(history(5, Some(ids[0])).await.unwrap(), Vec::new(), "nothing older than the oldest");

    // Paging backwards with `before` = oldest of the previous page covers all, once.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = history(4, before).await.unwrap();
        let Some(oldest) = page.first() else { break };
        before = Some(oldest.id);
        pages.splice(0..0, page);
    }
    assert_eq!(pages, stored);

    let unknown = stranger();
    assert_eq!(history(3, Some(unknown)).await, Err(StorageError::UnknownCursor(unknown)));
}

/// `since(after)`: exactly the messages after a kept cursor, not truncated.
async fn since_returns_what_follows(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "since");
    let ids = ids_out_of_order(8);
    let stored = fill(&*storage, &chan, &ids).await;

    let since = storage.since(&chan, ids[2]).await.unwrap();
    assert_eq!(since, Since { messages: stored[3..].to_vec(), truncated: false });
    let since = storage.since(&chan, ids[7]).await.unwrap();
    assert_eq!(since, Since { messages: Vec::new(), truncated: false }, "cursor is the newest");
    let since = storage.since(&chan, stranger()).await.unwrap();
    assert_eq!(since, Since { messages: stored, truncated: true }, "cursor never kept");
}

/// `stats`: how many are kept and the newest (last appended) id.
async fn stats_count_and_newest(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "stats");
    let ids = ids_out_of_order(6);
    for (n, &id) in ids.iter().enumerate() {
        fill(&*storage, &chan, &[id]).await;
        let stats = storage.stats(&chan).await.unwrap();
        assert_eq!(stats, ChannelStats { stored: n as u64 + 1, last_id: Some(id) });
    }
}

/// `create_channel` is idempotent and keeps the original record.
async fn create_channel_is_idempotent(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "created");
    let first = Timestamp::from_unix_ms(1_000);
    let later = Timestamp::from_unix_ms(2_000);
    let original = ChannelRecord { key: chan.clone(), created_at: first };

    assert_eq!(storage.create_channel(&chan, first).await.unwrap(), (original.clone(), true));
    assert_eq!(storage.create_channel(&chan, later).await.unwrap(), (original.clone(), false));
    assert_eq!(storage.channels().await.unwrap(), vec![original]);
}

/// `channels` lists every record, across rooms.
async fn channels_lists_every_record(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    assert_eq!(storage.channels().await.unwrap(), Vec::new(), "a fresh backend has none");

    let mut expected = Vec::new();
    for (n, (room, channel)) in [("a", "one"), ("a", "two"), ("b", "one")].into_iter().enumerate() {
        let record = ChannelRecord { key: key(room, channel), created_at: Timestamp::from_unix_ms(n as i64) };
        storage.create_channel(&record.key, record.created_at).await.unwrap();
        expected.push(record);
    }
    // The trait promises no listing order.
    let mut listed = storage.channels().await.unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(listed, expected);
}

/// `delete_channel` forgets record and history, and says whether it existed.
async fn delete_channel_forgets_everything(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let doomed = key("r", "doomed");
    let survivor = key("r", "survivor");
    for chan in [&doomed, &survivor] {
        storage.create_channel(chan, Timestamp::from_unix_ms(5)).await.unwrap();
    }
    let ids = ids_out_of_order(4);
    fill(&*storage, &doomed, &ids).await;
    let kept = fill(&*storage, &survivor, &ids_out_of_order(2)).await;

    assert!(storage.delete_channel(&doomed).await.unwrap());
    assert_eq!(all(&*storage, &doomed).await, Vec::new());
    assert_eq!(storage.stats(&doomed).await.unwrap(), ChannelStats::default());
    assert_eq!(storage.since(&doomed, ids[0]).await.unwrap(), Since { messages: Vec::new(), truncated: true });
    let listed: Vec<ChannelKey> = storage.channels().await.unwrap().into_iter().map(|r| r.key).collect();
    assert_eq!(listed, vec![survivor.clone()]);
    assert!(!storage.delete_channel(&doomed).await.unwrap(), "second delete");
    assert_eq!(all(&*storage, &survivor).await, kept, "other channels untouched");

    // A deleted channel starts from scratch: its old ids are not duplicates.
    let created = Timestamp::from_unix_ms(9);
    let (record, fresh) = storage.create_channel(&doomed, created).await.unwrap();
    assert!(fresh);
    assert_eq!(record.created_at, created);
    fill(&*storage, &doomed, &ids[..1]).await;
}

/// A channel never appended to: empty history, zero stats, truncated since.
async fn unknown_channel_is_empty(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let ghost = key("r", "ghost");

    assert_eq!(storage.history(&ghost, 50, None).await.unwrap(), Vec::new());
    assert_eq!(storage.stats(&ghost).await.unwrap(), ChannelStats::default());
    assert_eq!(storage.since(&ghost, stranger()).await.unwrap(), Since { messages: Vec::new(), truncated: true });
    // A cursor cannot name a kept message where nothing is kept.
    let cursor = stranger();
    assert_eq!(storage.history(&ghost, 50, Some(cursor)).await, Err(StorageError::UnknownCursor(cursor)));
    assert!(!storage.delete_channel(&ghost).await.unwrap());

    // Recorded but never appended to: the same.
    storage.create_channel(&ghost, Timestamp::from_unix_ms(0)).await.unwrap();
    assert_eq!(storage.history(&ghost, 50, None).await.unwrap(), Vec::new());
    assert_eq!(storage.stats(&ghost).await.unwrap(), ChannelStats::default());
}

/// Channels share nothing: history, cursors, duplicates, capacity.
async fn channels_are_isolated(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(3).await;
    let left = key("r", "left");
    let right = key("r", "right");
    // Same channel name in another room is another channel.
    let other_room = key("s", "left");
    let ids = ids_out_of_order(3);

    let left_kept = fill(&*storage, &left, &ids).await;
    // The same ids elsewhere are not duplicates (ids are unique per channel).
    let right_kept = fill(&*storage, &right, &ids[..1]).await;
    let other_kept = fill(&*storage, &other_room, &ids[1..]).await;

    assert_eq!(all(&*storage, &left).await, left_kept, "three and not evicted by the others");
    assert_eq!(all(&*storage, &right).await, right_kept);
    assert_eq!(all(&*storage, &other_room).await, other_kept);

    let only_left = ids_out_of_order(1)[0];
    fill(&*storage, &left, &[only_left]).await;
    assert_eq!(storage.history(&right, 5, Some(only_left)).await, Err(StorageError::UnknownCursor(only_left)));
    assert!(storage.since(&right, only_left).await.unwrap().truncated);
    assert_eq!(storage.stats(&right).await.unwrap(), ChannelStats { stored: 1, last_id: Some(ids[0]) });
}

/// Appends to different channels from many tasks at once all land, in order.
async fn concurrent_appends_all_land(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 50;
    let storage = new(PER_TASK).await;

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                let chan = key("load", &format!("c{t}"));
                let ids = ids_out_of_order(PER_TASK);
                for &id in &ids {
                    let appended = storage.append(&chan, message(&chan, id)).await.unwrap();
                    assert_eq!(appended, Appended::Stored);
                    // Hand the worker over so tasks interleave, not run back to back.
                    tokio::task::yield_now().await;
                }
                (chan, ids)
            })
        })
        .collect();

    for task in tasks {
        let (chan, ids) = task.await.unwrap();
        assert_eq!(ids_of(&all(&*storage, &chan).await), ids, "{chan}");
        assert_eq!(storage.stats(&chan).await.unwrap().stored, PER_TASK as u64);
    }
}

/// `append_now` then, if handed the message back, `append`: what
/// `append_fast` does, checking on the way that `Later` returns the message
/// untouched.
async fn append_now_or_later(storage: &dyn Storage, key: &ChannelKey, msg: StoredMessage) -> Appended {
    match storage.append_now(key, msg.clone()) {
        AppendNow::Done(appended) => appended.unwrap(),
        AppendNow::Later(back) => {
            assert_eq!(back, msg, "Later must hand back the very message");
            storage.append(key, back).await.unwrap()
        }
    }
}

/// `append_now` (done at once or handed back) keeps `append`'s rules:
/// duplicates, trimming at the bound, append order.
async fn append_now_keeps_the_append_rules(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(3).await;
    let chan = key("r", "now");
    let ids = ids_out_of_order(5);
    let stored: Vec<StoredMessage> = ids.iter().map(|&id| message(&chan, id)).collect();
    for msg in &stored[..3] {
        assert_eq!(append_now_or_later(&*storage, &chan, msg.clone()).await, Appended::Stored, "{}", msg.id);
    }
    let retry = message(&key("r", "elsewhere"), ids[1]);
    assert_eq!(append_now_or_later(&*storage, &chan, retry).await, Appended::Duplicate);
    assert_eq!(all(&*storage, &chan).await, stored[..3]);

    for msg in &stored[3..] {
        assert_eq!(append_now_or_later(&*storage, &chan, msg.clone()).await, Appended::Stored, "{}", msg.id);
    }
    assert_eq!(all(&*storage, &chan).await, stored[2..], "trimmed to the newest 3");
    // The helper the router uses gives the same answers.
    assert_eq!(append_fast(&*storage, &chan, stored[4].clone()).await, Ok(Appended::Duplicate));
    assert_eq!(all(&*storage, &chan).await, stored[2..]);
}

/// A fresh backend reports itself healthy, under a name.
async fn fresh_backend_is_healthy(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let health = new(100).await.health();
    assert!(!health.backend.is_empty());
    assert!(health.healthy, "{}", health.backend);
    assert_eq!((health.journaled, health.refused), (0, 0), "{}", health.backend);
}

/// One `#[tokio::test]` per check for a backend, in a module named after it.
/// With `requires AVAILABLE,` before the factory, each test first calls
/// `AVAILABLE(test name)` and returns early (skips) when it is false.
///
/// Adding a check: write the function above and add its name here.
macro_rules! conformance {
    (@list $backend:ident, $available:expr, $factory:expr) => {
        conformance!(@each $backend, $available, $factory, [
            append_order_is_kept,
            duplicate_changes_nothing,
            history_is_bounded,
            history_limit_and_before,
            since_returns_what_follows,
            stats_count_and_newest,
            create_channel_is_idempotent,
            channels_lists_every_record,
            delete_channel_forgets_everything,
            unknown_channel_is_empty,
            channels_are_isolated,
            concurrent_appends_all_land,
            append_now_keeps_the_append_rules,
            fresh_backend_is_healthy,
        ]);
    };
    (@each $backend:ident, $available:expr, $factory:expr, [$($check:ident),* $(,)?]) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    if !($available)(concat!(stringify!($backend), "::", stringify!($check))) {
                        return;
                    }
                    super::$check(&$factory).await;
                }
            )*
        }
    };
    ($backend:ident, requires $available:path, $factory:expr) => {
        conformance!(@list $backend, $available, $factory);
    };
    ($backend:ident, $factory:expr) => {
        conformance!(@list $backend, (|_: &str| true), $factory);
    };
}

// ---------------------------------------------------------------------------
// A third-party backend
// ---------------------------------------------------------------------------

/// A deliberately naive backend: linear scans over `Vec`s under one lock.
///
/// This test binary is its own crate, and this type uses nothing but the
/// public API of `arqon-storage` and `arqon-protocol` (plus std). Passing the
/// same suite as [`MemoryStorage`] shows that anyone can write a backend crate
/// against the `Storage` trait alone.
#[derive(Debug)]
struct VecStorage {
    capacity: usize,
    state: Mutex<VecState>,
}

#[derive(Debug, Default)]
struct VecState {
    records: Vec<ChannelRecord>,
    logs: HashMap<ChannelKey, Vec<StoredMessage>>,
}

impl VecStorage {
    fn new(capacity: usize) -> Self {
        VecStorage { capacity, state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, VecState> {
        // No code path panics while holding the lock, so poison carries no meaning.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Storage for VecStorage {
    async fn create_channel(
        &self,
        key: &ChannelKey,
        created_at: Timestamp,
    ) -> Result<(ChannelRecord, bool), StorageError> {
        let mut state = self.state();
        if let Some(existing) = state.records.iter().find(|r| &r.key == key) {
            return Ok((existing.clone(), false));
        }
        let record = ChannelRecord { key: key.clone(), created_at };
        state.records.push(record.clone());
        Ok((record, true))
    }

    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        Ok(self.state().records.clone())
    }

    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        let mut state = self.state();
        let records_before = state.records.len();
        state.records.retain(|r| &r.key != key);
        let had_log = state.logs.remove(key).is_some();
        Ok(had_log || state.records.len() != records_before)
    }

    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        let mut state = self.state();
        let log = state.logs.entry(key.clone()).or_default();
        if log.iter().any(|m| m.id == message.id) {
            return Ok(Appended::Duplicate);
        }
        log.push(message);
        let excess = log.len().saturating_sub(self.capacity);
        log.drain(..excess);
        Ok(Appended::Stored)
    }

    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let state = self.state();
        let log = state.logs.get(key).map_or(&[][..], Vec::as_slice);
        let end = match before {
            Some(id) => log.iter().position(|m| m.id == id).ok_or(StorageError::UnknownCursor(id))?,
            None => log.len(),
        };
        Ok(log[end.saturating_sub(limit)..end].to_vec())
    }

    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        let state = self.state();
        let log = state.logs.get(key).map_or(&[][..], Vec::as_slice);
        Ok(match log.iter().position(|m| m.id == after) {
            Some(at) => Since { messages: log[at + 1..].to_vec(), truncated: false },
            None => Since { messages: log.to_vec(), truncated: true },
        })
    }

    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        let state = self.state();
        let log = state.logs.get(key).map_or(&[][..], Vec::as_slice);
        Ok(ChannelStats { stored: log.len() as u64, last_id: log.last().map(|m| m.id) })
    }

    fn health(&self) -> Health {
        Health::new("vec", true)
    }
}

/// The provided `append_now` (kept by this third-party backend, and by the
/// wrapper, which must not let an append overtake its journal) does nothing
/// and hands back the very message, for `append` to store.
#[tokio::test]
async fn the_default_append_now_hands_the_message_back() {
    let chan = key("r", "later");
    let wrapper = FallbackStorage::new(Arc::new(MemoryStorage::new(10)), FallbackOptions::default());
    let backends: [Arc<dyn Storage>; 2] = [Arc::new(VecStorage::new(10)), Arc::new(wrapper)];
    for storage in backends {
        let backend = storage.health().backend;
        let msg = message(&chan, stranger());
        assert_eq!(storage.append_now(&chan, msg.clone()), AppendNow::Later(msg.clone()), "{backend}");
        assert_eq!(all(&*storage, &chan).await, Vec::new(), "{backend}: Later stored nothing");
        assert_eq!(append_fast(&*storage, &chan, msg.clone()).await, Ok(Appended::Stored), "{backend}");
        assert_eq!(all(&*storage, &chan).await, vec![msg], "{backend}");
    }
}

// ---------------------------------------------------------------------------
// The memory backend's byte budgets
// ---------------------------------------------------------------------------

/// Bytes the memory backend charges a message on top of its frame.
const OVERHEAD: usize = 96;

/// A message whose frame is `len` bytes of valid JSON.
fn sized(id: MessageId, len: usize) -> StoredMessage {
    let head = format!(r#"{{"id":"{id}","type":"message","payload":""#);
    let text = format!("{head}{}\"}}", "x".repeat(len - head.len() - 2));
    assert_eq!(text.len(), len);
    StoredMessage { id, frame: arqon_protocol::Frame::from_text(text) }
}

/// The issue's finding, at the storage: 300 appends of 1 MiB over 100
/// channels never leave more than the total budget held, and the count the
/// backend reports is the sum of what it keeps.
#[tokio::test]
async fn large_appends_to_many_channels_stay_within_the_total_budget() {
    const MIB: usize = 1 << 20;
    let total = 24 * MIB;
    let storage = MemoryStorage::new(1000).with_byte_budget(8 * MIB, total);
    let mut ids = IdGenerator::new();
    let channels: Vec<ChannelKey> = (0..100).map(|i| key("flood", &format!("c{i}"))).collect();
    for round in 0..3 {
        for chan in &channels {
            assert_eq!(storage.append(chan, sized(ids.message_id(), MIB)).await, Ok(Appended::Stored));
            let held = storage.held_bytes();
            assert!(held <= total, "round {round}, {chan}: {held} bytes held over a budget of {total}");
        }
    }
    let mut kept = 0;
    for chan in &channels {
        kept += all(&storage, chan).await.iter().map(|m| m.frame.len() + OVERHEAD).sum::<usize>();
    }
    assert_eq!(storage.held_bytes(), kept, "the counter is what the logs keep");
    let health = storage.health();
    assert_eq!((health.history_bytes, health.history_bytes_budget), (kept as u64, total as u64));
    // Trimmed to a sixteenth under the budget, not emptied.
    assert!(kept >= total - total / 16 - MIB - OVERHEAD, "only {kept} bytes kept");
}

/// Past the total, the largest channel loses its oldest messages; the small
/// ones, including the one just appended to, keep theirs.
#[tokio::test]
async fn the_largest_channel_is_trimmed_first() {
    let (big, small) = (key("r", "big"), key("r", "small"));
    let others: Vec<ChannelKey> = (0..4).map(|i| key("r", &format!("other{i}"))).collect();
    let mut generator = IdGenerator::new();
    let mut ids = || generator.message_id();
    // 10 x 10,000 + 5 x 2 x 1,000 bytes of frames; the budget has room for
    // 4,000 more bytes, then 15 more messages' overhead.
    let total = 10 * (10_000 + OVERHEAD) + 10 * (1_000 + OVERHEAD) + 4_000;
    let storage = MemoryStorage::new(1000).with_byte_budget(1 << 20, total);
    let big_ids: Vec<MessageId> = (0..10).map(|_| ids()).collect();
    for &id in &big_ids {
        storage.append(&big, sized(id, 10_000)).await.unwrap();
    }
    let mut small_ids = Vec::new();
    for chan in others.iter().chain([&small]) {
        for _ in 0..2 {
            let id = ids();
            storage.append(chan, sized(id, 1_000)).await.unwrap();
            small_ids.push((chan.clone(), id));
        }
    }
    assert_eq!(all(&storage, &big).await.len(), 10, "under the budget, nothing goes");
    // 5,000 bytes more: over the total, which must come down to 15/16 of it.
    let newest = ids();
    storage.append(&small, sized(newest, 5_000)).await.unwrap();
    let target = total - total / 16;
    assert!(storage.held_bytes() <= target, "{} held, target {target}", storage.held_bytes());
    let kept_big = ids_of(&all(&storage, &big).await);
    let evicted = 10 - kept_big.len();
    assert!((1..10).contains(&evicted), "{evicted} of big's messages evicted");
    assert_eq!(kept_big, big_ids[evicted..], "big keeps its newest, contiguous");
    for (chan, id) in &small_ids {
        assert!(ids_of(&all(&storage, chan).await).contains(id), "{chan} lost {id}");
    }
    assert_eq!(ids_of(&all(&storage, &small).await).last(), Some(&newest));
}

/// A channel trimmed by the total budget answers cursors as the contract
/// says: an evicted `since` is truncated, an evicted `before` unknown, an
/// evicted id may be stored again.
#[tokio::test]
async fn trimming_by_the_total_keeps_the_cursor_contract() {
    let (chan, other) = (key("r", "trimmed"), key("r", "other"));
    let ids = ids_out_of_order(8);
    let total = 6 * (1_000 + OVERHEAD);
    let storage = MemoryStorage::new(1000).with_byte_budget(1 << 20, total);
    for &id in &ids[..6] {
        storage.append(&chan, sized(id, 1_000)).await.unwrap();
    }
    // Over the total through another channel: `chan`, the largest, pays.
    storage.append(&other, sized(ids[6], 1_000)).await.unwrap();
    let kept = ids_of(&all(&storage, &chan).await);
    let evicted = 6 - kept.len();
    assert!((1..6).contains(&evicted), "{evicted} evicted");
    assert_eq!(kept, ids[evicted..6]);
    let since = storage.since(&chan, ids[0]).await.unwrap();
    assert!(since.truncated);
    assert_eq!(ids_of(&since.messages), kept);
    let since = storage.since(&chan, ids[evicted]).await.unwrap();
    assert!(!since.truncated);
    assert_eq!(ids_of(&since.messages), ids[evicted + 1..6]);
    assert_eq!(storage.history(&chan, 10, Some(ids[0])).await, Err(StorageError::UnknownCursor(ids[0])));
    assert_eq!(storage.stats(&chan).await.unwrap(), ChannelStats { stored: kept.len() as u64, last_id: Some(ids[5]) });
    assert_eq!(storage.append(&chan, sized(ids[0], 1_000)).await, Ok(Appended::Stored), "no longer kept");
}

/// Each channel keeps at most its byte budget, its newest messages; one
/// message over that budget is kept by no one and leaves nothing older to
/// replay past it.
#[tokio::test]
async fn each_channel_keeps_at_most_its_byte_budget() {
    let chan = key("r", "c");
    let ids = ids_out_of_order(6);
    let storage = MemoryStorage::new(1000).with_byte_budget(3 * (1_000 + OVERHEAD), 1 << 30);
    for &id in &ids[..5] {
        assert_eq!(storage.append(&chan, sized(id, 1_000)).await, Ok(Appended::Stored));
    }
    assert_eq!(ids_of(&all(&storage, &chan).await), ids[2..5]);
    assert_eq!(storage.held_bytes(), 3 * (1_000 + OVERHEAD));
    assert_eq!(storage.append(&chan, sized(ids[5], 4_000)).await, Ok(Appended::Stored));
    assert_eq!(all(&storage, &chan).await, Vec::new());
    assert_eq!(storage.held_bytes(), 0);
    let since = storage.since(&chan, ids[4]).await.unwrap();
    assert!(since.truncated, "the oversized message is missing after ids[4]");
}

/// Appends from several threads at once, to channels of their own and to
/// shared ones, leave the counter equal to what is kept and within the
/// budget once they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_keep_the_count_exact() {
    let total = 64 * (10_000 + OVERHEAD);
    let storage = Arc::new(MemoryStorage::new(1000).with_byte_budget(1 << 20, total));
    let tasks: Vec<_> = (0..4)
        .map(|task| {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                let mut ids = IdGenerator::new();
                for i in 0..100 {
                    let chan = if i % 2 == 0 {
                        key("shared", &format!("s{}", i % 10))
                    } else {
                        key("own", &format!("t{task}-{i}"))
                    };
                    assert_eq!(storage.append(&chan, sized(ids.message_id(), 10_000)).await, Ok(Appended::Stored));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut kept = 0;
    for record in (0..10).map(|i| key("shared", &format!("s{i}"))).chain(
        (0..4).flat_map(|task| (0..100).filter(|i| i % 2 == 1).map(move |i| key("own", &format!("t{task}-{i}")))),
    ) {
        kept += all(&*storage, &record).await.iter().map(|m| m.frame.len() + OVERHEAD).sum::<usize>();
    }
    assert_eq!(storage.held_bytes(), kept);
    assert!(kept <= total, "{kept} kept over a budget of {total}");
}

/// Deleting a channel gives its bytes back to the total.
#[tokio::test]
async fn delete_returns_the_bytes() {
    let storage = MemoryStorage::new(1000);
    let (a, b) = (key("r", "a"), key("r", "b"));
    let ids = ids_out_of_order(3);
    storage.append(&a, sized(ids[0], 2_000)).await.unwrap();
    storage.append(&b, sized(ids[1], 3_000)).await.unwrap();
    storage.append(&b, sized(ids[2], 500)).await.unwrap();
    assert_eq!(storage.held_bytes(), 5_500 + 3 * OVERHEAD);
    assert!(storage.delete_channel(&b).await.unwrap());
    assert_eq!(storage.held_bytes(), 2_000 + OVERHEAD);
    assert!(storage.delete_channel(&a).await.unwrap());
    assert_eq!(storage.held_bytes(), 0);
}

// ---------------------------------------------------------------------------
// The backends under test: one line each
// ---------------------------------------------------------------------------

conformance!(memory, async |capacity| Arc::new(MemoryStorage::new(capacity)) as Arc<dyn Storage>);
conformance!(third_party_vec, async |capacity| Arc::new(VecStorage::new(capacity)) as Arc<dyn Storage>);
conformance!(fallback_over_memory, async |capacity| {
    let options = FallbackOptions { max_len: capacity, ..FallbackOptions::default() };
    Arc::new(FallbackStorage::new(Arc::new(MemoryStorage::new(capacity)), options)) as Arc<dyn Storage>
});
conformance!(redis, requires support::redis_available, support::redis_backend);
conformance!(fallback_over_redis, requires support::redis_available, support::fallback_over_redis);
