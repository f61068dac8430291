//! The degradation rules of `FallbackStorage`, over a backend that a test
//! switches off and on: what is journaled, what reads answer while degraded,
//! the order of the write-back, the full journal, and dedupe across a lost
//! reply.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arqon_protocol::{ChannelKey, IdGenerator, MessageId, Timestamp};
use arqon_storage::{
    Appended, ChannelRecord, ChannelStats, FallbackOptions, FallbackStorage, FsyncPolicy, Health, JournalOptions,
    MemoryStorage, Since, Storage, StorageError, StoredMessage, async_trait,
};
use arqon_storage_conformance::fixtures::message;

/// A memory backend that fails every call while `down`, and can "lose the
/// reply" of appends: store the message, then fail as a timeout would.
#[derive(Debug)]
struct Switch {
    inner: MemoryStorage,
    down: AtomicBool,
    lose_replies: AtomicBool,
    /// The largest `limit` a `history` call asked for.
    largest_read: std::sync::atomic::AtomicUsize,
}

impl Switch {
    fn new(capacity: usize) -> Arc<Switch> {
        Arc::new(Switch {
            inner: MemoryStorage::new(capacity),
            down: AtomicBool::new(false),
            lose_replies: AtomicBool::new(false),
            largest_read: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StorageError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StorageError::Unavailable("switched off".to_owned()))
        } else {
            Ok(())
        }
    }

    /// Everything the backend keeps for `key`, oldest first.
    async fn kept(&self, key: &ChannelKey) -> Vec<MessageId> {
        ids(&self.inner.history(key, usize::MAX, None).await.unwrap())
    }
}

#[async_trait]
impl Storage for Switch {
    async fn create_channel(&self, key: &ChannelKey, at: Timestamp) -> Result<(ChannelRecord, bool), StorageError> {
        self.check()?;
        self.inner.create_channel(key, at).await
    }
    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        self.check()?;
        self.inner.channels().await
    }
    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        self.check()?;
        self.inner.delete_channel(key).await
    }
    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        self.check()?;
        let appended = self.inner.append(key, message).await?;
        if self.lose_replies.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable("timed out (but stored)".to_owned()));
        }
        Ok(appended)
    }
    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        self.check()?;
        self.largest_read.fetch_max(limit, Ordering::SeqCst);
        self.inner.history(key, limit, before).await
    }
    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        self.check()?;
        self.inner.since(key, after).await
    }
    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        self.check()?;
        self.inner.stats(key).await
    }
    fn health(&self) -> Health {
        Health::new("switch", !self.down.load(Ordering::SeqCst))
    }
    async fn ping(&self) -> Result<(), StorageError> {
        self.check()
    }
}

fn key(channel: &str) -> ChannelKey {
    ChannelKey::parse("r", channel).unwrap()
}

fn fresh_ids(n: usize) -> Vec<MessageId> {
    let mut generator = IdGenerator::new();
    (0..n).map(|_| generator.message_id()).collect()
}

fn ids(messages: &[StoredMessage]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

fn wrap(primary: &Arc<Switch>, options: FallbackOptions) -> FallbackStorage {
    let options = FallbackOptions { retry_interval: Duration::from_millis(10), ..options };
    FallbackStorage::new(Arc::clone(primary) as Arc<dyn Storage>, options)
}

async fn append_all(storage: &dyn Storage, key: &ChannelKey, ids: &[MessageId]) {
    for &id in ids {
        assert_eq!(storage.append(key, message(key, id)).await.unwrap(), Appended::Stored, "append {id}");
    }
}

/// Waits (at most 10 s) until the wrapper reports itself healthy again.
async fn until_healthy(storage: &FallbackStorage) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !storage.health().healthy {
        assert!(tokio::time::Instant::now() < deadline, "not healthy again in time: {:?}", storage.health());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn is_unavailable<T: std::fmt::Debug>(result: Result<T, StorageError>) -> bool {
    matches!(result, Err(StorageError::Unavailable(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_journaled_and_written_back_in_order() {
    let primary = Switch::new(100);
    let storage = wrap(&primary, FallbackOptions { max_len: 100, ..FallbackOptions::default() });
    let chan = key("c");
    let all = fresh_ids(12);
    let (before, during, after) = (&all[..5], &all[5..10], &all[10..]);
    append_all(&storage, &chan, before).await;

    primary.set_down(true);
    append_all(&storage, &chan, during).await;
    let health = storage.health();
    assert!(!health.healthy);
    assert_eq!((health.backend, health.journaled, health.refused), ("switch", 5, 0));
    assert_eq!(primary.inner.history(&chan, 100, None).await.unwrap().len(), 5, "nothing reached the backend");

    // While down, history and since come from memory, continuous across the outage.
    assert_eq!(ids(&storage.history(&chan, 100, None).await.unwrap()), all[..10]);
    assert_eq!(ids(&storage.history(&chan, 3, Some(all[6])).await.unwrap()), all[3..6]);
    let since = storage.since(&chan, all[2]).await.unwrap();
    assert_eq!((ids(&since.messages), since.truncated), (all[3..10].to_vec(), false));
    assert_eq!(storage.stats(&chan).await.unwrap(), ChannelStats { stored: 10, last_id: Some(all[9]) });
    // A retry of a journaled id is recognised.
    assert_eq!(storage.append(&chan, message(&chan, all[7])).await.unwrap(), Appended::Duplicate);

    primary.set_down(false);
    until_healthy(&storage).await;
    assert_eq!(storage.health().journaled, 0);
    assert_eq!(primary.kept(&chan).await, all[..10], "written back in order, once");
    append_all(&storage, &chan, after).await;
    assert_eq!(primary.kept(&chan).await, all, "new appends go straight to the backend, after the journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_while_degraded_are_exact_or_unavailable() {
    let primary = Switch::new(100);
    let chan = key("c");
    let old = fresh_ids(10);
    // Ten messages the wrapper never saw (stored before this process started).
    for &id in &old {
        primary.inner.append(&chan, message(&chan, id)).await.unwrap();
    }
    let storage = wrap(&primary, FallbackOptions { cache_per_channel: 3, max_len: 100, ..FallbackOptions::default() });
    let new = fresh_ids(3);
    append_all(&storage, &chan, &new[..1]).await; // loads the cache: old[8], old[9], new[0]
    primary.set_down(true);
    append_all(&storage, &chan, &new[1..]).await; // journaled
    let held = [old[8], old[9], new[0], new[1], new[2]];

    assert_eq!(ids(&storage.history(&chan, 5, None).await.unwrap()), held, "fits in memory");
    assert!(is_unavailable(storage.history(&chan, 6, None).await), "would reach past memory");
    assert_eq!(ids(&storage.history(&chan, 2, Some(new[0])).await.unwrap()), held[..2]);
    assert!(is_unavailable(storage.history(&chan, 3, Some(new[0])).await));
    let since = storage.since(&chan, old[9]).await.unwrap();
    assert_eq!((ids(&since.messages), since.truncated), (held[2..].to_vec(), false));
    assert!(is_unavailable(storage.since(&chan, old[0]).await), "a cursor older than memory");
    assert!(is_unavailable(storage.since(&chan, fresh_ids(1)[0]).await), "an unknown cursor");
    assert!(is_unavailable(storage.history(&chan, 1, Some(fresh_ids(1)[0])).await));
    assert_eq!(storage.stats(&chan).await.unwrap(), ChannelStats { stored: 13, last_id: Some(new[2]) });
    // A channel this process holds nothing of.
    assert!(is_unavailable(storage.history(&key("other"), 10, None).await));
    assert!(is_unavailable(storage.stats(&key("other")).await));

    primary.set_down(false);
    until_healthy(&storage).await;
    let mut everything = old.clone();
    everything.extend(&new);
    assert_eq!(ids(&storage.history(&chan, 100, None).await.unwrap()), everything);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_channel_is_answered_whole_while_degraded() {
    let primary = Switch::new(100);
    let storage = wrap(&primary, FallbackOptions { max_len: 100, ..FallbackOptions::default() });
    let chan = key("small");
    let all = fresh_ids(4);
    append_all(&storage, &chan, &all[..2]).await;
    primary.set_down(true);
    append_all(&storage, &chan, &all[2..]).await;
    // Memory holds all the backend keeps (it was empty when first seen), so
    // even an unknown cursor is answered, as the backend would.
    assert_eq!(ids(&storage.history(&chan, 50, None).await.unwrap()), all);
    let stranger = fresh_ids(1)[0];
    assert_eq!(storage.history(&chan, 50, Some(stranger)).await, Err(StorageError::UnknownCursor(stranger)));
    let since = storage.since(&chan, stranger).await.unwrap();
    assert_eq!((ids(&since.messages), since.truncated), (all.clone(), true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_refuses_appends_and_counts_them() {
    let primary = Switch::new(100);
    let storage = wrap(&primary, FallbackOptions { journal_capacity: 3, max_len: 100, ..FallbackOptions::default() });
    let chan = key("c");
    let all = fresh_ids(6);
    primary.set_down(true);
    append_all(&storage, &chan, &all[..3]).await;
    for &id in &all[3..5] {
        assert!(is_unavailable(storage.append(&chan, message(&chan, id)).await), "refused {id}");
    }
    // A retry of an accepted message is still recognised, not refused.
    assert_eq!(storage.append(&chan, message(&chan, all[1])).await.unwrap(), Appended::Duplicate);
    let health = storage.health();
    assert_eq!((health.healthy, health.journaled, health.refused), (false, 3, 2));

    primary.set_down(false);
    until_healthy(&storage).await;
    assert_eq!(primary.kept(&chan).await, all[..3], "every accepted message, none refused");
    append_all(&storage, &chan, &all[5..]).await;
    let health = storage.health();
    assert_eq!((health.healthy, health.journaled, health.refused), (true, 0, 2), "the count stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_written_exactly_once() {
    let primary = Switch::new(100);
    let storage = wrap(&primary, FallbackOptions { max_len: 100, ..FallbackOptions::default() });
    let chan = key("c");
    let all = fresh_ids(5);
    append_all(&storage, &chan, &all[..2]).await;
    // The backend stores all[2] but its reply is lost: the wrapper cannot
    // know, so it journals it; then the backend is really down for all[3].
    primary.lose_replies.store(true, Ordering::SeqCst);
    append_all(&storage, &chan, &all[2..3]).await;
    primary.set_down(true);
    primary.lose_replies.store(false, Ordering::SeqCst);
    append_all(&storage, &chan, &all[3..4]).await;
    assert_eq!(storage.health().journaled, 2);

    primary.set_down(false);
    until_healthy(&storage).await;
    append_all(&storage, &chan, &all[4..]).await;
    assert_eq!(primary.kept(&chan).await, all, "all[2] once, in its place");
    // Memory was reloaded after the duplicate, so degraded reads stay exact.
    primary.set_down(true);
    assert_eq!(ids(&storage.history(&chan, 50, None).await.unwrap()), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_id_retried_during_an_outage_is_kept_once() {
    let primary = Switch::new(100);
    let storage = wrap(&primary, FallbackOptions { cache_per_channel: 2, max_len: 100, ..FallbackOptions::default() });
    let chan = key("c");
    let all = fresh_ids(5);
    append_all(&storage, &chan, &all).await;
    primary.set_down(true);
    // all[0] is kept by the backend but no longer in memory: while down the
    // wrapper cannot tell it is a retry and accepts it...
    assert_eq!(storage.append(&chan, message(&chan, all[0])).await.unwrap(), Appended::Stored);
    primary.set_down(false);
    until_healthy(&storage).await;
    // ...and the backend's dedupe keeps history exactly once.
    assert_eq!(primary.kept(&chan).await, all);
    primary.set_down(true);
    assert_eq!(ids(&storage.history(&chan, 2, None).await.unwrap()), all[3..], "memory reloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_at_start_up_then_caught_up() {
    let primary = Switch::new(100);
    primary.set_down(true);
    let storage = wrap(&primary, FallbackOptions { max_len: 100, ..FallbackOptions::default() });
    assert!(!storage.health().healthy, "starts degraded");
    assert_eq!(storage.channels().await.unwrap(), Vec::new(), "start-up must not fail");
    let chan = key("c");
    let at = Timestamp::from_unix_ms(42);
    let record = ChannelRecord { key: chan.clone(), created_at: at };
    assert_eq!(storage.create_channel(&chan, at).await.unwrap(), (record.clone(), true));
    let all = fresh_ids(3);
    append_all(&storage, &chan, &all).await;
    // Older history may sit in the unreachable backend: no partial answer.
    assert!(is_unavailable(storage.history(&chan, 50, None).await));
    assert_eq!(storage.channels().await.unwrap(), vec![record.clone()], "channels seen by this process");

    primary.set_down(false);
    until_healthy(&storage).await;
    assert_eq!(primary.inner.channels().await.unwrap(), vec![record]);
    assert_eq!(primary.kept(&chan).await, all);
    assert_eq!(ids(&storage.history(&chan, 50, None).await.unwrap()), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_during_an_outage_is_written_back_before_later_appends() {
    let primary = Switch::new(100);
    let storage = wrap(&primary, FallbackOptions { max_len: 100, ..FallbackOptions::default() });
    let chan = key("c");
    storage.create_channel(&chan, Timestamp::from_unix_ms(1)).await.unwrap();
    let all = fresh_ids(5);
    append_all(&storage, &chan, &all[..2]).await;
    primary.set_down(true);
    append_all(&storage, &chan, &all[2..3]).await;
    assert!(storage.delete_channel(&chan).await.unwrap());
    assert_eq!(storage.health().journaled, 0, "the deleted channel's journal is dropped");
    let recreated = Timestamp::from_unix_ms(2);
    assert!(storage.create_channel(&chan, recreated).await.unwrap().1);
    append_all(&storage, &chan, &all[3..]).await;
    assert_eq!(ids(&storage.history(&chan, 50, None).await.unwrap()), all[3..], "a fresh channel");

    primary.set_down(false);
    until_healthy(&storage).await;
    assert_eq!(primary.kept(&chan).await, all[3..]);
    assert_eq!(primary.inner.channels().await.unwrap(), vec![ChannelRecord { key: chan, created_at: recreated }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_during_the_write_back_stay_behind_the_journal() {
    let primary = Switch::new(10_000);
    let storage = Arc::new(wrap(&primary, FallbackOptions { max_len: 10_000, ..FallbackOptions::default() }));
    let chans = [key("a"), key("b")];
    let all = fresh_ids(4000);
    primary.set_down(true);
    for (n, &id) in all[..2000].iter().enumerate() {
        let chan = &chans[n % 2];
        storage.append(chan, message(chan, id)).await.unwrap();
    }
    primary.set_down(false);
    // Keep appending while the journal is written back.
    for (n, &id) in all[2000..].iter().enumerate() {
        let chan = &chans[n % 2];
        storage.append(chan, message(chan, id)).await.unwrap();
        if n % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    until_healthy(&storage).await;
    for (c, chan) in chans.iter().enumerate() {
        let expected: Vec<MessageId> = all.iter().skip(c).step_by(2).copied().collect();
        assert_eq!(primary.kept(chan).await, expected, "{chan}");
    }
}

/// A journal directory of its own, removed on drop.
struct JournalDir(std::path::PathBuf);

impl JournalDir {
    fn new() -> JournalDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        JournalDir(std::env::temp_dir().join(format!("arqon-journal-test-{}-{n}", std::process::id())))
    }

    fn options(&self, fsync: FsyncPolicy) -> JournalOptions {
        JournalOptions { dir: self.0.clone(), name: "switch".to_owned(), fsync }
    }

    fn file(&self) -> std::path::PathBuf {
        self.0.join("switch.journal")
    }

    fn len(&self) -> u64 {
        std::fs::metadata(self.file()).map_or(0, |m| m.len())
    }
}

impl Drop for JournalDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn open(primary: &Arc<Switch>, dir: &JournalDir, fsync: FsyncPolicy) -> FallbackStorage {
    let options =
        FallbackOptions { max_len: 100, retry_interval: Duration::from_millis(10), ..FallbackOptions::default() };
    FallbackStorage::open(Arc::clone(primary) as Arc<dyn Storage>, options, &dir.options(fsync)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_on_disk_outlives_the_process_and_is_written_back_before_open_returns() {
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Interval(Duration::from_millis(5))] {
        let dir = JournalDir::new();
        let primary = Switch::new(100);
        let chan = key("c");
        let all = fresh_ids(10);
        let created = Timestamp::from_unix_ms(5);
        primary.set_down(true);
        let storage = open(&primary, &dir, fsync).await;
        assert!(storage.create_channel(&chan, created).await.unwrap().1);
        append_all(&storage, &chan, &all).await;
        // A second bus cannot take the same file while this one holds it.
        let other = open(&primary, &dir, fsync).await;
        assert_eq!(other.health().journaled, 0, "{fsync:?}: the other bus got a journal of its own");
        drop(other);
        drop(storage); // the bus stops (or dies) with the backend still down

        assert!(dir.len() > 0, "{fsync:?}");
        primary.set_down(false);
        let storage = open(&primary, &dir, fsync).await;
        // Written back before `open` returned, not later.
        assert_eq!(primary.kept(&chan).await, all, "{fsync:?}");
        assert_eq!(
            primary.inner.channels().await.unwrap(),
            vec![ChannelRecord { key: chan.clone(), created_at: created }]
        );
        let health = storage.health();
        assert_eq!((health.healthy, health.journaled, health.journal_bytes, health.journal_skipped), (true, 0, 0, 0));
        assert_eq!(dir.len(), 0, "{fsync:?}: emptied once written back");
        drop(storage);
        assert!(!dir.file().exists(), "{fsync:?}: an empty journal file is removed when closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_reopened_while_the_backend_is_down_is_served_then_written_back() {
    let dir = JournalDir::new();
    let primary = Switch::new(100);
    let chan = key("c");
    let all = fresh_ids(8);
    primary.set_down(true);
    let storage = open(&primary, &dir, FsyncPolicy::Always).await;
    append_all(&storage, &chan, &all[..5]).await;
    assert_eq!(storage.close(Duration::from_millis(50)).await, 5, "the backend is down: all five stay on disk");
    drop(storage);

    let storage = open(&primary, &dir, FsyncPolicy::Always).await;
    assert_eq!(storage.health().journaled, 5);
    assert_eq!(ids(&storage.history(&chan, 5, None).await.unwrap()), all[..5], "served from the reloaded journal");
    assert_eq!(storage.append(&chan, message(&chan, all[2])).await.unwrap(), Appended::Duplicate);
    append_all(&storage, &chan, &all[5..]).await;
    primary.set_down(false);
    until_healthy(&storage).await;
    assert_eq!(primary.kept(&chan).await, all);
    assert_eq!(dir.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_or_corrupt_journal_tail_is_reported_and_skipped() {
    // (what is done to the file of 5 records of `size` bytes, whole records left)
    type Damage = fn(&mut Vec<u8>, usize);
    let cases: [(&str, Damage, usize); 3] = [
        ("cut mid-record", |bytes, size| bytes.truncate(4 * size + size / 2), 4),
        ("a byte flipped in the third record", |bytes, size| bytes[2 * size + size / 2] ^= 0x01, 2),
        ("garbage after the records", |bytes, _| bytes.extend_from_slice(b"\x10\x00\x00\x00not a record at all"), 5),
    ];
    for (what, damage, whole) in cases {
        let dir = JournalDir::new();
        let primary = Switch::new(100);
        let chan = key("c");
        let all = fresh_ids(5);
        primary.set_down(true);
        let storage = open(&primary, &dir, FsyncPolicy::Always).await;
        append_all(&storage, &chan, &all).await;
        drop(storage);
        let mut bytes = std::fs::read(dir.file()).unwrap();
        // The records are all alike in size (same frame length, same id length).
        let size = bytes.len() / 5;
        assert_eq!(size * 5, bytes.len());
        damage(&mut bytes, size);
        std::fs::write(dir.file(), &bytes).unwrap();

        primary.set_down(false);
        let storage = open(&primary, &dir, FsyncPolicy::Always).await;
        assert_eq!(primary.kept(&chan).await, all[..whole], "{what}: the valid prefix is written back");
        let skipped = (bytes.len() - whole * size) as u64;
        assert_eq!(storage.health().journal_skipped, skipped, "{what}: reported");
        let aside = std::fs::read(dir.0.join("switch.journal.corrupt")).unwrap();
        assert_eq!(aside, bytes[whole * size..], "{what}: kept aside");
        assert_eq!(dir.len(), 0, "{what}: the file holds nothing to replay again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_write_that_fails_refuses_the_append() {
    let dir = JournalDir::new();
    let primary = Switch::new(100);
    let chan = key("c");
    let all = fresh_ids(2);
    primary.set_down(true);
    let storage = open(&primary, &dir, FsyncPolicy::Always).await;
    append_all(&storage, &chan, &all[..1]).await;
    storage.close(Duration::ZERO).await; // the file is gone from under the storage
    assert!(is_unavailable(storage.append(&chan, message(&chan, all[1])).await));
    assert_eq!(storage.health().journaled, 1, "never accepted what is not on disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_and_the_cache_are_bounded_in_bytes() {
    let primary = Switch::new(100);
    let (a, b) = (key("a"), key("b"));
    let all = fresh_ids(12);
    let cost = message(&a, all[0]).frame.len() as u64 + 64;
    let options =
        FallbackOptions { max_len: 100, journal_bytes: 3 * cost, cache_bytes: 4 * cost, ..FallbackOptions::default() };
    let storage = wrap(&primary, options);
    append_all(&storage, &a, &all[..6]).await;
    assert_eq!(storage.health().cache_bytes, 4 * cost, "the cache stops at its budget");
    // A channel written now takes room from the idle one, not from itself.
    append_all(&storage, &b, &all[6..8]).await;
    assert_eq!(storage.health().cache_bytes, 4 * cost);
    primary.set_down(true);
    assert_eq!(ids(&storage.history(&b, 2, None).await.unwrap()), all[6..8], "b's newest are cached");
    assert!(is_unavailable(storage.history(&a, 6, None).await), "a's evicted messages are not answered from memory");

    append_all(&storage, &b, &all[8..11]).await;
    assert!(is_unavailable(storage.append(&b, message(&b, all[11])).await), "past the journal's byte budget");
    let health = storage.health();
    assert_eq!((health.journaled, health.journal_bytes, health.refused), (3, 3 * cost, 1));
    primary.set_down(false);
    until_healthy(&storage).await;
    assert_eq!(primary.kept(&b).await, all[6..11]);
    let health = storage.health();
    assert_eq!(health.journal_bytes, 0);
    assert!(health.cache_bytes <= 4 * cost, "{health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_loaded_in_pages_and_no_further_than_its_byte_budget() {
    let chan = key("c");
    let old = fresh_ids(100);
    let new = fresh_ids(1);
    let cost = message(&chan, old[0]).frame.len() as u64 + 64;
    for (cache_bytes, cached) in [(u64::MAX, 60), (20 * cost, 20)] {
        let primary = Switch::new(1000);
        for &id in &old {
            primary.inner.append(&chan, message(&chan, id)).await.unwrap();
        }
        let options =
            FallbackOptions { cache_per_channel: 60, cache_bytes, max_len: 1000, ..FallbackOptions::default() };
        let storage = wrap(&primary, options);
        append_all(&storage, &chan, &new).await; // loads the cache, then appends
        let largest = primary.largest_read.load(Ordering::SeqCst);
        assert!(largest <= 32, "read in small pages, not {largest} at once");
        assert_eq!(storage.health().cache_bytes, cached as u64 * cost);
        primary.set_down(true);
        let mut newest: Vec<MessageId> = old[old.len() + 1 - cached..].to_vec();
        newest.extend(&new);
        assert_eq!(ids(&storage.history(&chan, cached, None).await.unwrap()), newest, "budget {cache_bytes}");
        assert!(is_unavailable(storage.history(&chan, cached + 1, None).await));
        assert_eq!(storage.stats(&chan).await.unwrap(), ChannelStats { stored: 101, last_id: Some(new[0]) });
    }
}
