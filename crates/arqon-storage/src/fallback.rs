//! The degradation wrapper: a backend outage never stops the bus and never
//! loses an accepted message.
//!
//! # States
//!
//! - **Up**: every operation goes to the backend. Each successful append is
//!   also copied into a small per-channel cache in memory (the newest
//!   [`FallbackOptions::cache_per_channel`] messages).
//! - **Down**: entered on the first failed operation (or at start-up when
//!   the backend is unreachable), logged once. Appends go to the *journal*,
//!   in memory (and first to its file, see "On disk"), and are accepted at
//!   once; reads are answered from the cache
//!   and the journal when that answer is exact, else they fail with
//!   [`StorageError::Unavailable`]. A background task pings the backend
//!   every [`FallbackOptions::retry_interval`].
//! - **Recovering**: the backend answers again; the task writes the journal
//!   back channel by channel, oldest first. A channel with nothing journaled
//!   uses the backend directly again; one that still has journaled messages
//!   keeps journaling, behind them, so its order never changes. Once the
//!   whole journal is written the state is Up again (logged once). A failure
//!   on the way goes back to Down; what was written stays written.
//!
//! The journal is bounded by [`FallbackOptions::journal_capacity`] messages
//! and [`FallbackOptions::journal_bytes`] bytes in all (the cache by
//! [`FallbackOptions::cache_bytes`], evicting). When it is full, appends are
//! *refused* with
//! [`StorageError::Unavailable`] (the bus answers `STORAGE_UNAVAILABLE` and
//! does not deliver the message), counted in [`Health::refused`]: the bus
//! never accepts a message it may later have to drop.
//!
//! # On disk
//!
//! Built with [`FallbackStorage::open`], every journaled operation is also
//! written to a journal file (module `journal`) before it is answered, so
//! that an accepted message survives the bus stopping before the backend
//! returns: `open` reads the file back and writes it to the backend before
//! it returns (or, the backend being down, journals it again in memory),
//! [`FallbackStorage::close`] spends a shutdown grace writing the journal
//! back and leaves the rest on disk, and the file is emptied each time the
//! whole journal has been written back. [`FallbackStorage::new`] keeps the
//! journal in memory only.
//!
//! docs/storage.md states the same rules for operators, with the exact
//! answers of `history` and `join_channel since` while degraded.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use arqon_protocol::{ChannelKey, MessageId, Timestamp};
use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;

use crate::journal::{Journal, JournalOptions, Record};
use crate::{
    After, Appended, ChannelRecord, ChannelStats, Health, PlacedRead, Since, Storage, StorageError, StoredMessage,
};

/// What a message is counted as in the byte budgets: its frame plus this,
/// for its id, its place in the maps and the entry itself.
const ENTRY_OVERHEAD: u64 = 64;

/// The bytes a message counts for in [`FallbackOptions::journal_bytes`] and
/// [`FallbackOptions::cache_bytes`].
fn cost(message: &StoredMessage) -> u64 {
    message.frame.len() as u64 + ENTRY_OVERHEAD
}

/// Every operation goes to the backend.
const UP: u8 = 0;
/// The backend failed: appends are journaled, reads served from memory.
const DOWN: u8 = 1;
/// The backend answers again and the journal is being written back.
const RECOVERING: u8 = 2;

/// How much [`FallbackStorage`] holds in memory, and how often it retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackOptions {
    /// Most messages journaled at once, over all channels, while the backend
    /// is unreachable. An append beyond it is refused with
    /// [`StorageError::Unavailable`] and counted in [`Health::refused`].
    /// `0` journals nothing: every append is refused while the backend is
    /// down. Default: `100000`.
    pub journal_capacity: usize,
    /// Most bytes journaled at once (each message counts its frame plus 64
    /// bytes), beside `journal_capacity`: past either, appends are refused.
    /// Default: `268435456` (256 MiB).
    pub journal_bytes: u64,
    /// Newest messages per channel kept in memory while the backend is up,
    /// to answer `history` and `since` during an outage. `0` keeps none:
    /// reads then fail while the backend is down, except within the journal.
    /// Capped at `max_len`. Default: `1000`.
    pub cache_per_channel: usize,
    /// Most bytes the caches of all channels hold together (counted as for
    /// `journal_bytes`); past it, oldest cached messages are evicted, from
    /// channels not being written first. Default: `67108864` (64 MiB).
    pub cache_bytes: u64,
    /// The backend's own bound on messages per channel, so that answers from
    /// memory keep exactly what the backend would. Default: `10000` (the
    /// Redis default).
    pub max_len: usize,
    /// Pause between two attempts to reach a backend that failed.
    /// Default: 250 ms.
    pub retry_interval: Duration,
}

impl Default for FallbackOptions {
    fn default() -> Self {
        FallbackOptions {
            journal_capacity: 100_000,
            journal_bytes: 256 << 20,
            cache_per_channel: 1_000,
            cache_bytes: 64 << 20,
            max_len: 10_000,
            retry_interval: Duration::from_millis(250),
        }
    }
}

/// A wrapper over any [`Storage`] that keeps the bus accepting and
/// delivering while that backend is unreachable, and writes everything back
/// to it, in order, when it returns.
///
/// See the module documentation above (and docs/storage.md) for the states
/// and the exact answers while degraded. [`Storage::health`] reports
/// `healthy: false` from the first failure until the journal is written back,
/// and carries the journal's size and the count of refused appends.
///
/// Built with [`FallbackStorage::new`], the journal lives in this process:
/// if the bus stops while the backend is still down, journaled messages are
/// lost, and an error log says how many. Built with
/// [`FallbackStorage::open`], it is also on disk and survives the process.
pub struct FallbackStorage {
    shared: Arc<Shared>,
    /// The task that pings a failed backend and writes the journal back.
    supervisor: JoinHandle<()>,
}

impl fmt::Debug for FallbackStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackStorage")
            .field("backend", &self.shared.primary.health().backend)
            .field("state", &self.shared.state())
            .field("journaled", &self.shared.journaled.load(Ordering::Relaxed))
            .field("refused", &self.shared.refused.load(Ordering::Relaxed))
            .field("journal_bytes", &self.shared.journal_bytes.load(Ordering::Relaxed))
            .field("cache_bytes", &self.shared.cache_bytes.load(Ordering::Relaxed))
            .field("disk", &self.shared.disk.as_ref().map(|disk| disk.path().to_owned()))
            .field("channels", &self.shared.mirrors.len())
            .finish()
    }
}

impl FallbackStorage {
    /// Wraps `primary`, with the journal in memory only. Starts Down (and
    /// logs it) if `primary` reports itself unhealthy. Must be called within
    /// a Tokio runtime: it spawns the task that watches over the backend,
    /// which stops when this value is dropped.
    pub fn new(primary: Arc<dyn Storage>, options: FallbackOptions) -> Self {
        Self::start(Self::shared(primary, options, None, 0))
    }

    /// Wraps `primary`, with the journal also on disk as `journal` says:
    /// every journaled append, channel record and deletion is written to
    /// the file (and synced as its policy says) before it is answered.
    ///
    /// Reads back what an earlier run left in the file, skipping (and
    /// reporting) a torn or corrupt tail, and, when `primary` answers,
    /// writes it all to `primary` before returning, so that a bus serves
    /// only once its journal is written back. If `primary` does not answer,
    /// the records are journaled in memory again and written back when it
    /// returns. Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`StorageError::Unavailable`] when the journal file cannot be created,
    /// read or locked (the bus must not start accepting what it cannot
    /// keep).
    pub async fn open(
        primary: Arc<dyn Storage>,
        options: FallbackOptions,
        journal: &JournalOptions,
    ) -> Result<Self, StorageError> {
        let opened = Journal::open(journal)?;
        let path = opened.journal.path().to_owned();
        let shared = Self::shared(primary, options, Some(opened.journal), opened.skipped);
        let count = opened.records.len();
        if count > 0 {
            // Before the supervisor starts: it must not find the journal
            // written back (and empty the file) while records are still
            // being taken back.
            shared.state.store(DOWN, Ordering::SeqCst);
            for record in opened.records {
                shared.reload(record).await;
            }
        }
        let storage = Self::start(shared);
        if count == 0 {
            return Ok(storage);
        }
        let shared = &storage.shared;
        if !shared.primary.health().healthy || shared.primary.ping().await.is_err() {
            tracing::warn!(
                records = count,
                path = %path.display(),
                "storage journal from an earlier run kept: the backend is unreachable, it is written back when it answers"
            );
            return Ok(storage);
        }
        shared.state.store(RECOVERING, Ordering::SeqCst);
        match shared.flush_all().await {
            Ok(flushed) if shared.finish_recovery() => tracing::info!(
                records = count,
                written = flushed.stored,
                already_there = flushed.duplicates,
                path = %path.display(),
                "storage journal from an earlier run written back"
            ),
            // The supervisor goes on from here.
            Ok(_) => {}
            Err(error) => shared.degrade(&error),
        }
        Ok(storage)
    }

    /// The state, Down if `primary` reports itself unhealthy (logged).
    fn shared(
        primary: Arc<dyn Storage>,
        mut options: FallbackOptions,
        disk: Option<Arc<Journal>>,
        skipped: u64,
    ) -> Arc<Shared> {
        options.cache_per_channel = options.cache_per_channel.min(options.max_len);
        let backend = primary.health().backend;
        let up = primary.health().healthy;
        let shared = Arc::new(Shared {
            primary,
            options,
            state: AtomicU8::new(if up { UP } else { DOWN }),
            journaled: AtomicU64::new(0),
            journal_bytes: AtomicU64::new(0),
            cache_bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            journal_full: AtomicBool::new(false),
            mirrors: DashMap::new(),
            records: DashMap::new(),
            wake: Notify::new(),
            disk,
            skipped: AtomicU64::new(skipped),
        });
        if !up {
            tracing::warn!(backend, "storage backend unavailable at start-up: journaling appends until it answers");
        }
        shared
    }

    /// Starts the task that watches over the backend.
    fn start(shared: Arc<Shared>) -> Self {
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared)));
        FallbackStorage { shared, supervisor }
    }

    /// Stops, for a shutdown: spends up to `within` writing the journal
    /// back (the backend may be back, or come back meanwhile), then syncs
    /// what is left to disk and closes the file. Returns how many journaled
    /// messages were left: on disk for the next start when the journal is
    /// there (see [`FallbackStorage::open`]), else lost.
    pub async fn close(&self, within: Duration) -> u64 {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + within;
        // The supervisor writes the journal back as soon as the backend
        // answers; wait for it to be done, bounded by the deadline.
        while shared.state() != UP && tokio::time::Instant::now() < deadline {
            shared.wake.notify_one();
            let _ = tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(10))).await;
        }
        let left = shared.journaled.load(Ordering::SeqCst);
        if let Some(disk) = &shared.disk {
            let synced = disk.sync().await;
            if shared.state() != UP {
                tracing::warn!(
                    journaled = left,
                    path = %disk.path().display(),
                    synced = synced.is_ok(),
                    "storage backend still unreachable at shutdown: the journal stays on disk and is written back at the next start (a message whose append timed out may be in the backend already: it is recognised then, not stored twice)"
                );
            }
            disk.close();
        }
        left
    }
}

impl Drop for FallbackStorage {
    fn drop(&mut self) {
        self.supervisor.abort();
        let journaled = self.shared.journaled.load(Ordering::SeqCst);
        match &self.shared.disk {
            Some(disk) => disk.close(),
            None if journaled > 0 => tracing::error!(
                journaled,
                backend = self.shared.primary.health().backend,
                "storage closed while the backend was unreachable: up to this many journaled messages are lost (one whose append timed out may have reached the backend after all)"
            ),
            None => {}
        }
    }
}

/// What a write-back did.
#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    /// Messages the backend stored.
    stored: u64,
    /// Messages the backend already kept (an append whose reply was lost,
    /// or a record replayed from disk that had been written already).
    duplicates: u64,
}

/// State shared by the storage handle and its supervisor task.
struct Shared {
    primary: Arc<dyn Storage>,
    options: FallbackOptions,
    /// [`UP`], [`DOWN`] or [`RECOVERING`].
    state: AtomicU8,
    /// Messages in the journal, over all channels; at most
    /// `options.journal_capacity` (reserved before a message is journaled).
    journaled: AtomicU64,
    /// Bytes of the journal's messages ([`cost`]); at most
    /// `options.journal_bytes`, reserved with `journaled`.
    journal_bytes: AtomicU64,
    /// Bytes of every channel's cache ([`cost`]); kept at most
    /// `options.cache_bytes` by [`Shared::settle`].
    cache_bytes: AtomicU64,
    /// Appends refused because the journal was full.
    refused: AtomicU64,
    /// Whether the journal is full, so that it is logged once per episode.
    journal_full: AtomicBool,
    /// What this process knows of each channel's history. An entry is made
    /// on a channel's first append or record change; reads do not make one.
    /// Capacity: the cache part is bounded per channel and in bytes, the
    /// journal part by `journaled` and `journal_bytes`.
    mirrors: DashMap<ChannelKey, Arc<Mutex<Mirror>>>,
    /// Channel records as last seen from (or sent to) the backend, served
    /// by `channels` while it is down.
    records: DashMap<ChannelKey, ChannelRecord>,
    /// Wakes the supervisor when the state leaves Up.
    wake: Notify,
    /// The journal on disk, if any: written before a journaled operation is
    /// answered, emptied when everything is written back.
    disk: Option<Arc<Journal>>,
    /// Bytes of a torn or corrupt journal tail skipped at start-up.
    skipped: AtomicU64,
}

impl Shared {
    fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }

    fn mirror(&self, key: &ChannelKey) -> Arc<Mutex<Mirror>> {
        if let Some(mirror) = self.mirrors.get(key) {
            return Arc::clone(mirror.value());
        }
        Arc::clone(self.mirrors.entry(key.clone()).or_default().value())
    }

    fn existing_mirror(&self, key: &ChannelKey) -> Option<Arc<Mutex<Mirror>>> {
        self.mirrors.get(key).map(|mirror| Arc::clone(mirror.value()))
    }

    /// Enters Down after a failed backend operation; logs only the
    /// transition from Up, never each failure.
    fn degrade(&self, error: &StorageError) {
        match self.state.swap(DOWN, Ordering::SeqCst) {
            UP => {
                tracing::warn!(
                    backend = self.primary.health().backend,
                    %error,
                    on_disk = self.disk.is_some(),
                    "storage backend unavailable: journaling appends until it is back"
                );
                self.wake.notify_one();
            }
            RECOVERING => tracing::debug!(%error, "storage backend failed again while the journal was written back"),
            _ => {}
        }
    }

    /// Recovering → Up once the whole journal is written (and nothing failed
    /// since the write-back started), emptying the journal file; whether it
    /// is Up now.
    fn finish_recovery(&self) -> bool {
        if self.journaled.load(Ordering::SeqCst) != 0
            || self.state.compare_exchange(RECOVERING, UP, Ordering::SeqCst, Ordering::SeqCst).is_err()
        {
            return false;
        }
        if let Some(disk) = &self.disk {
            // Up with an empty journal means every record in the file is in
            // the backend; anything journaled after a new failure (Down) is
            // written under the file's lock, after this check or not at all.
            match disk.truncate_if(|| self.state() == UP && self.journaled.load(Ordering::SeqCst) == 0) {
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "could not empty the storage journal file"),
            }
        }
        true
    }

    /// Reserves room for one journaled message of `bytes`, or counts a
    /// refusal. The journal file counts too: it also holds what was
    /// journaled then dropped (a deleted channel's messages) until it is
    /// emptied, so past twice the byte budget it takes nothing more.
    fn reserve(&self, bytes: u64) -> bool {
        let capacity = self.options.journal_capacity as u64;
        let budget = self.options.journal_bytes;
        let disk_full = self.disk.as_ref().is_some_and(|disk| disk.len() >= budget.saturating_mul(2));
        let counted = !disk_full
            && self
                .journaled
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < capacity).then_some(n + 1))
                .is_ok();
        let fits = counted
            && self
                .journal_bytes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                    (b.saturating_add(bytes) <= budget).then_some(b + bytes)
                })
                .is_ok();
        if counted && !fits {
            self.journaled.fetch_sub(1, Ordering::SeqCst);
        }
        if !fits {
            self.refused.fetch_add(1, Ordering::SeqCst);
            if !self.journal_full.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    capacity,
                    bytes = budget,
                    "storage journal is full: appends are refused with STORAGE_UNAVAILABLE until the backend is back"
                );
            }
        }
        fits
    }

    /// Releases `n` journal places holding `bytes`.
    fn release(&self, n: u64, bytes: u64) {
        self.journaled.fetch_sub(n, Ordering::SeqCst);
        self.journal_bytes.fetch_sub(bytes, Ordering::SeqCst);
        if self.journal_full.load(Ordering::SeqCst)
            && self.journaled.load(Ordering::SeqCst) < self.options.journal_capacity as u64
            && self.journal_bytes.load(Ordering::SeqCst) < self.options.journal_bytes
            && self.journal_full.swap(false, Ordering::SeqCst)
        {
            tracing::info!("storage journal has room again: appends are accepted");
        }
    }

    /// Whether operations on this channel may go to the backend: it is not
    /// known to be down, and nothing of this channel waits in the journal.
    fn direct(&self, mirror: &Mirror) -> bool {
        self.state() != DOWN && !mirror.has_work()
    }

    /// After the cache of `mirror` changed from `before` bytes: counts the
    /// change in the total, evicts this channel's oldest cached messages
    /// beyond `cache_per_channel`, then, while the total is over
    /// `cache_bytes`, the oldest cached message of another channel (the
    /// first of a few, not busy, that has one) or else of this one. So the
    /// total never grows past the budget, and a channel idle since it filled
    /// the cache gives way to the ones being written.
    fn settle(&self, mirror: &mut Mirror, before: u64) {
        let after = mirror.cached_bytes;
        if after >= before {
            self.cache_bytes.fetch_add(after - before, Ordering::SeqCst);
        } else {
            self.cache_bytes.fetch_sub(before - after, Ordering::SeqCst);
        }
        while mirror.cached() > self.options.cache_per_channel {
            let freed = mirror.pop_front();
            self.cache_bytes.fetch_sub(freed, Ordering::SeqCst);
        }
        while self.cache_bytes.load(Ordering::SeqCst) > self.options.cache_bytes {
            let freed = match self.evict_elsewhere() {
                0 if mirror.cached() > 0 => mirror.pop_front(),
                0 => break,
                freed => freed,
            };
            self.cache_bytes.fetch_sub(freed, Ordering::SeqCst);
        }
    }

    /// Evicts the oldest cached message of another channel: the first with
    /// one among the first few whose lock is free (the caller holds its own
    /// channel's lock, so that one is never taken here). Returns the bytes
    /// freed, 0 if none was found.
    fn evict_elsewhere(&self) -> u64 {
        /// Channels looked at per eviction, so that an append never walks
        /// every channel.
        const LOOK_AT: usize = 8;
        for entry in self.mirrors.iter().take(LOOK_AT) {
            if let Ok(mut other) = entry.value().try_lock()
                && other.cached() > 0
            {
                return other.pop_front();
            }
        }
        0
    }

    /// Loads the backend's newest messages into the channel's cache and
    /// learns how many it keeps; journaled messages stay behind them.
    ///
    /// Reads newest first, in pages that start small and double, and stops
    /// at `cache_per_channel` messages or once they reach `cache_bytes`: a
    /// channel of large messages is never read whole into memory just to be
    /// evicted.
    async fn seed(&self, key: &ChannelKey, mirror: &mut Mirror) -> Result<(), StorageError> {
        /// The first page; each next one is twice as long.
        const FIRST_PAGE: usize = 16;
        let capacity = self.options.cache_per_channel;
        let mut pages: Vec<Vec<StoredMessage>> = Vec::new();
        let (mut held, mut bytes, mut page) = (0, 0, FIRST_PAGE);
        let mut before = None;
        // Whether the backend has nothing older than what was read.
        let mut whole = false;
        while held < capacity && bytes < self.options.cache_bytes {
            let limit = page.min(capacity - held);
            let read = match self.primary.history(key, limit, before).await {
                Ok(read) => read,
                // The cursor was trimmed meanwhile: what was read is still
                // the newest; the count below comes from the backend.
                Err(StorageError::UnknownCursor(_)) => break,
                Err(error) => return Err(error),
            };
            held += read.len();
            bytes += read.iter().map(cost).sum::<u64>();
            whole = read.len() < limit;
            before = read.first().map(|message| message.id);
            pages.push(read);
            if whole {
                break;
            }
            page = page.saturating_mul(2);
        }
        let kept: Vec<StoredMessage> = pages.into_iter().rev().flatten().collect();
        let count = if whole { kept.len() as u64 } else { self.primary.stats(key).await?.stored };
        let before = mirror.cached_bytes;
        mirror.reseed(kept, count);
        self.settle(mirror, before);
        Ok(())
    }

    async fn append_direct(
        &self,
        key: &ChannelKey,
        mirror: &mut Mirror,
        message: &StoredMessage,
    ) -> Result<(Appended, Option<u64>), StorageError> {
        if !mirror.seeded {
            self.seed(key, mirror).await?;
        }
        let (appended, position) = self.primary.append_placed(key, message.clone()).await?;
        if appended == Appended::Stored {
            let before = mirror.cached_bytes;
            mirror.push(message.clone());
            mirror.cached_bytes += cost(message);
            mirror.confirm_newest(self.options.max_len);
            self.settle(mirror, before);
        }
        Ok((appended, position))
    }

    /// Writes `record` to the journal on disk, if there is one.
    async fn write_ahead(&self, record: impl FnOnce() -> Record) -> Result<(), StorageError> {
        match &self.disk {
            Some(disk) => disk.append(&record()).await,
            None => Ok(()),
        }
    }

    /// Accepts a message into the journal (or recognises a retry): on disk
    /// first, if the journal is there, then in memory.
    async fn journal(
        &self,
        key: &ChannelKey,
        mirror: &mut Mirror,
        message: StoredMessage,
    ) -> Result<Appended, StorageError> {
        if mirror.kept_position(&message.id, self.options.max_len).is_some() {
            return Ok(Appended::Duplicate);
        }
        let bytes = cost(&message);
        if !self.reserve(bytes) {
            return Err(StorageError::Unavailable(format!(
                "the backend is unreachable and the journal is full ({} messages, {} bytes)",
                self.options.journal_capacity, self.options.journal_bytes
            )));
        }
        if let Err(error) = self.write_ahead(|| Record::Append(key.clone(), message.clone())).await {
            self.release(1, bytes);
            tracing::error!(%error, "storage journal write failed: the append is refused");
            return Err(error);
        }
        mirror.push_pending(message);
        Ok(Appended::Stored)
    }

    /// Journals a channel record (the backend is down for this channel).
    fn journal_create(&self, key: &ChannelKey, mirror: &mut Mirror, created_at: Timestamp) -> ChannelRecord {
        let record = ChannelRecord { key: key.clone(), created_at };
        self.records.insert(key.clone(), record.clone());
        mirror.create_pending = Some(created_at);
        record
    }

    /// Journals a deletion: the channel's journaled messages need not be
    /// written any more.
    fn journal_delete(&self, key: &ChannelKey, mirror: &mut Mirror) {
        self.release(mirror.pending as u64, mirror.pending_bytes);
        self.records.remove(key);
        let before = mirror.cached_bytes;
        mirror.clear();
        self.settle(mirror, before);
        mirror.delete_pending = true;
    }

    /// Takes back one record an earlier run left in the journal file, as
    /// the journaling paths of `append`, `create_channel` and
    /// `delete_channel` would have taken it (it is on disk already).
    async fn reload(&self, record: Record) {
        match record {
            Record::Append(key, message) => {
                let mirror = self.mirror(&key);
                let mut m = mirror.lock().await;
                if m.kept_position(&message.id, self.options.max_len).is_none() {
                    // Accepted already: past the bounds if they shrank.
                    self.journaled.fetch_add(1, Ordering::SeqCst);
                    self.journal_bytes.fetch_add(cost(&message), Ordering::SeqCst);
                    m.push_pending(message);
                }
            }
            Record::Create(key, created_at) => {
                if !self.records.contains_key(&key) {
                    let mirror = self.mirror(&key);
                    let mut m = mirror.lock().await;
                    self.journal_create(&key, &mut m, created_at);
                }
            }
            Record::Delete(key) => {
                let mirror = self.mirror(&key);
                let mut m = mirror.lock().await;
                self.journal_delete(&key, &mut m);
            }
        }
    }

    /// Writes every channel's journaled work back.
    async fn flush_all(&self) -> Result<Flushed, StorageError> {
        let mirrors: Vec<(ChannelKey, Arc<Mutex<Mirror>>)> =
            self.mirrors.iter().map(|entry| (entry.key().clone(), Arc::clone(entry.value()))).collect();
        let mut flushed = Flushed::default();
        for (key, mirror) in mirrors {
            let channel = self.flush_channel(&key, &mirror).await?;
            flushed.stored += channel.stored;
            flushed.duplicates += channel.duplicates;
        }
        Ok(flushed)
    }

    /// Writes one channel's journal back, oldest first: a pending deletion,
    /// then a pending record, then the messages. The lock is taken per
    /// message, so appends to the channel wait for one backend call at most
    /// (and journal behind what is left).
    async fn flush_channel(&self, key: &ChannelKey, mirror: &Mutex<Mirror>) -> Result<Flushed, StorageError> {
        let mut flushed = Flushed::default();
        loop {
            let mut guard = mirror.lock().await;
            let m = &mut *guard;
            if m.delete_pending {
                self.primary.delete_channel(key).await?;
                m.delete_pending = false;
            }
            if let Some(created_at) = m.create_pending {
                let (record, _) = self.primary.create_channel(key, created_at).await?;
                self.records.insert(key.clone(), record);
                m.create_pending = None;
            }
            let Some(next) = m.oldest_pending().cloned() else {
                if flushed.duplicates > 0 {
                    // A duplicate was a message that had reached the backend
                    // after all (its reply was lost), or an id the backend
                    // kept from before: reload the cache so that it is again
                    // exactly the backend's newest messages.
                    if let Err(error) = self.seed(key, m).await {
                        let before = m.cached_bytes;
                        m.forget_cache();
                        self.settle(m, before);
                        return Err(error);
                    }
                }
                return Ok(flushed);
            };
            let bytes = cost(&next);
            match self.primary.append(key, next).await? {
                Appended::Stored => flushed.stored += 1,
                Appended::Duplicate => flushed.duplicates += 1,
            }
            let before = m.cached_bytes;
            m.confirm_oldest_pending(bytes, self.options.max_len);
            self.settle(m, before);
            self.release(1, bytes);
        }
    }
}

/// Watches over the backend: sleeps while Up; while Down, pings it every
/// `retry_interval` and, once it answers, writes the journal back.
async fn supervise(shared: Arc<Shared>) {
    loop {
        if shared.state() == UP {
            // A `degrade` between the check and the wait leaves a permit, so
            // no wake-up is lost.
            shared.wake.notified().await;
            continue;
        }
        tokio::time::sleep(shared.options.retry_interval).await;
        if shared.primary.ping().await.is_err() {
            continue;
        }
        if shared.state.compare_exchange(DOWN, RECOVERING, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            tracing::debug!(
                journaled = shared.journaled.load(Ordering::SeqCst),
                "storage backend answers again: writing the journal back"
            );
        }
        match shared.flush_all().await {
            Ok(flushed) => {
                // Only the journal being empty *and* no failure since the
                // flush started (state still Recovering) makes us healthy.
                if shared.finish_recovery() {
                    tracing::info!(
                        backend = shared.primary.health().backend,
                        written = flushed.stored,
                        already_there = flushed.duplicates,
                        refused = shared.refused.load(Ordering::SeqCst),
                        "storage backend healthy again: journal written back"
                    );
                }
            }
            Err(error) => shared.degrade(&error),
        }
    }
}

fn partial() -> StorageError {
    StorageError::Unavailable(
        "the backend is unreachable and the answer reaches past the messages held in memory".to_owned(),
    )
}

/// One channel as this process knows it: a contiguous run of its newest
/// messages, oldest first. The front part (the *cache*) is known to be in
/// the backend; the last `pending` entries (the *journal*) are not yet.
///
/// Positions work as in the memory backend: every entry has a sequence
/// number, contiguous from `first_seq`, and `index` maps ids to them.
#[derive(Debug, Default)]
struct Mirror {
    entries: VecDeque<StoredMessage>,
    first_seq: u64,
    index: HashMap<MessageId, u64>,
    /// How many of the newest entries are journaled, not yet in the backend.
    pending: usize,
    /// Messages the backend keeps for this channel, if known: learnt when
    /// the cache is seeded and counted forward on each write.
    primary_count: Option<u64>,
    /// Whether the cache was loaded from the backend (else it may be
    /// missing older messages the backend keeps, and `primary_count` is
    /// unknown).
    seeded: bool,
    /// The channel was deleted while the backend was down.
    delete_pending: bool,
    /// The channel was recorded while the backend was down.
    create_pending: Option<Timestamp>,
    /// Bytes ([`cost`]) of the cached entries.
    cached_bytes: u64,
    /// Bytes ([`cost`]) of the journaled entries.
    pending_bytes: u64,
}

impl Mirror {
    fn has_work(&self) -> bool {
        self.pending > 0 || self.delete_pending || self.create_pending.is_some()
    }

    /// Entries known to be in the backend.
    fn cached(&self) -> usize {
        self.entries.len() - self.pending
    }

    fn oldest_pending(&self) -> Option<&StoredMessage> {
        self.entries.get(self.cached()).filter(|_| self.pending > 0)
    }

    fn position(&self, id: &MessageId) -> Option<usize> {
        self.index.get(id).and_then(|&seq| usize::try_from(seq - self.first_seq).ok())
    }

    /// First position inside the kept window (the newest `max_len`).
    fn window_start(&self, max_len: usize) -> usize {
        self.entries.len().saturating_sub(max_len)
    }

    /// Position of a kept id: one inside the window.
    fn kept_position(&self, id: &MessageId, max_len: usize) -> Option<usize> {
        self.position(id).filter(|&at| at >= self.window_start(max_len))
    }

    /// Whether the entries hold the channel's whole kept history: the
    /// window is full, or the cache holds everything the backend keeps.
    fn complete(&self, max_len: usize) -> bool {
        self.entries.len() >= max_len || self.primary_count == Some(self.cached() as u64)
    }

    /// Adds an entry at the end; the caller counts its bytes as cached or
    /// journaled.
    fn push(&mut self, message: StoredMessage) {
        let seq = self.first_seq + self.entries.len() as u64;
        self.index.insert(message.id, seq);
        self.entries.push_back(message);
    }

    /// Adds a journaled entry.
    fn push_pending(&mut self, message: StoredMessage) {
        self.pending_bytes += cost(&message);
        self.pending += 1;
        self.push(message);
    }

    /// The backend now keeps one more message of this channel: the newest
    /// cached entry.
    fn confirm_newest(&mut self, max_len: usize) {
        self.primary_count = self.primary_count.map(|n| (n + 1).min(max_len as u64));
    }

    /// The oldest journaled entry, of `bytes`, was written to the backend:
    /// it is now the newest cached one.
    fn confirm_oldest_pending(&mut self, bytes: u64, max_len: usize) {
        self.pending -= 1;
        self.pending_bytes -= bytes;
        self.cached_bytes += bytes;
        self.confirm_newest(max_len);
    }

    /// Drops the oldest entry, which must be cached (journaled entries are
    /// never evicted); returns its bytes.
    fn pop_front(&mut self) -> u64 {
        if self.cached() == 0 {
            return 0;
        }
        let Some(oldest) = self.entries.pop_front() else { return 0 };
        // The id may have been appended again later (after leaving the
        // window); only forget it if the index still points here.
        if self.index.get(&oldest.id) == Some(&self.first_seq) {
            self.index.remove(&oldest.id);
        }
        self.first_seq += 1;
        let bytes = cost(&oldest);
        self.cached_bytes -= bytes;
        bytes
    }

    /// Replaces the cache with `kept` (the backend's newest, oldest first),
    /// of `count` kept in all, keeping the journal behind it. The caller
    /// evicts ([`Shared::settle`]).
    fn reseed(&mut self, kept: Vec<StoredMessage>, count: u64) {
        let journal: Vec<StoredMessage> = self.entries.drain(self.cached()..).collect();
        self.entries.clear();
        self.index.clear();
        self.first_seq = 0;
        self.cached_bytes = kept.iter().map(cost).sum();
        kept.into_iter().chain(journal).for_each(|message| self.push(message));
        self.primary_count = Some(count);
        self.seeded = true;
    }

    /// Drops the cache (it may not match the backend); the journal stays.
    fn forget_cache(&mut self) {
        while self.cached() > 0 {
            self.pop_front();
        }
        self.primary_count = None;
        self.seeded = false;
    }

    /// Forgets everything: the channel was deleted, so the backend will keep
    /// nothing of it (once a pending deletion is written).
    fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
        self.first_seq = 0;
        self.pending = 0;
        self.cached_bytes = 0;
        self.pending_bytes = 0;
        self.primary_count = Some(0);
        self.seeded = true;
        self.create_pending = None;
    }

    fn history(
        &self,
        limit: usize,
        before: Option<MessageId>,
        max_len: usize,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let (complete, start_of_window) = (self.complete(max_len), self.window_start(max_len));
        let end = match before {
            None => self.entries.len(),
            Some(id) => match self.kept_position(&id, max_len) {
                Some(at) => at,
                None if complete => return Err(StorageError::UnknownCursor(id)),
                None => return Err(partial()),
            },
        };
        let start = end.saturating_sub(limit).max(start_of_window);
        if end - start < limit && !complete {
            // Older messages may exist in the backend only.
            return Err(partial());
        }
        Ok(self.entries.range(start..end).cloned().collect())
    }

    fn since(&self, after: &MessageId, max_len: usize) -> Result<Since, StorageError> {
        match self.kept_position(after, max_len) {
            Some(at) => Ok(Since { messages: self.entries.range(at + 1..).cloned().collect(), truncated: false }),
            None if self.complete(max_len) => Ok(Since {
                messages: self.entries.range(self.window_start(max_len)..).cloned().collect(),
                truncated: true,
            }),
            None => Err(partial()),
        }
    }

    fn stats(&self, max_len: usize) -> Result<ChannelStats, StorageError> {
        let stored = if self.complete(max_len) {
            (self.entries.len() - self.window_start(max_len)) as u64
        } else {
            let kept = self.primary_count.ok_or_else(partial)?;
            (kept + self.pending as u64).min(max_len as u64)
        };
        let last_id = self.entries.back().map(|message| message.id);
        if stored > 0 && last_id.is_none() {
            return Err(partial());
        }
        Ok(ChannelStats { stored, last_id })
    }
}

impl FallbackStorage {
    /// Where a read of this channel goes: to the backend when its answer is
    /// complete there (`true`), else to memory. Returns the channel's mirror,
    /// if this process has one, for the memory answer.
    async fn route(&self, key: &ChannelKey) -> (Option<Arc<Mutex<Mirror>>>, bool) {
        let mirror = self.shared.existing_mirror(key);
        let direct = match &mirror {
            Some(mirror) => self.shared.direct(&*mirror.lock().await),
            None => self.shared.state() != DOWN,
        };
        (mirror, direct)
    }

    /// The backend's answer unless it failed (which degrades); `None` means
    /// "answer from memory".
    fn backend_answer<T>(&self, answer: Result<T, StorageError>) -> Option<Result<T, StorageError>> {
        match answer {
            Err(error @ (StorageError::Unavailable(_) | StorageError::Backend(_))) => {
                self.shared.degrade(&error);
                None
            }
            answer => Some(answer),
        }
    }
}

/// Answers from the channel's mirror; a channel this process holds nothing
/// of cannot be answered while the backend is down.
async fn from_memory<T>(
    mirror: Option<Arc<Mutex<Mirror>>>,
    answer: impl FnOnce(&Mirror) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    match mirror {
        Some(mirror) => answer(&*mirror.lock().await),
        None => Err(partial()),
    }
}

#[async_trait]
impl Storage for FallbackStorage {
    async fn create_channel(
        &self,
        key: &ChannelKey,
        created_at: Timestamp,
    ) -> Result<(ChannelRecord, bool), StorageError> {
        let shared = &self.shared;
        let mirror = shared.mirror(key);
        let mut m = mirror.lock().await;
        if shared.direct(&m) {
            match shared.primary.create_channel(key, created_at).await {
                Ok((record, created)) => {
                    shared.records.insert(key.clone(), record.clone());
                    return Ok((record, created));
                }
                Err(error) => shared.degrade(&error),
            }
        }
        if let Some(known) = shared.records.get(key) {
            return Ok((known.clone(), false));
        }
        shared.write_ahead(|| Record::Create(key.clone(), created_at)).await?;
        Ok((shared.journal_create(key, &mut m, created_at), true))
    }

    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        let shared = &self.shared;
        if shared.state() == UP {
            match shared.primary.channels().await {
                Ok(records) => {
                    for record in &records {
                        shared.records.insert(record.key.clone(), record.clone());
                    }
                    return Ok(records);
                }
                Err(error) => shared.degrade(&error),
            }
        }
        let mut records: Vec<ChannelRecord> = shared.records.iter().map(|r| r.value().clone()).collect();
        records.sort_by(|a, b| a.key.cmp(&b.key));
        tracing::warn!(
            known = records.len(),
            "storage backend unavailable: listing only the channels this process has seen"
        );
        Ok(records)
    }

    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        let shared = &self.shared;
        let mirror = shared.mirror(key);
        let mut m = mirror.lock().await;
        if shared.direct(&m) {
            match shared.primary.delete_channel(key).await {
                Ok(existed) => {
                    shared.records.remove(key);
                    let before = m.cached_bytes;
                    m.clear();
                    shared.settle(&mut m, before);
                    return Ok(existed);
                }
                Err(error) => shared.degrade(&error),
            }
        }
        shared.write_ahead(|| Record::Delete(key.clone())).await?;
        shared.journal_delete(key, &mut m);
        // Whether the backend had it cannot be known now; the bus deletes
        // only channels it knows, so report it as existing.
        Ok(true)
    }

    // `append_now` keeps the default (`Later`): an append here locks the
    // channel's mirror (an async mutex the flush holds across backend calls)
    // and, while Up, waits on the backend; forwarding the backend's
    // `append_now` would bypass the mirror and could overtake the journal.
    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        let shared = &self.shared;
        let mirror = shared.mirror(key);
        let mut m = mirror.lock().await;
        if shared.direct(&m) {
            match shared.append_direct(key, &mut m, &message).await {
                Ok((appended, _)) => return Ok(appended),
                // The message may or may not have reached the backend: it is
                // journaled, and the backend's dedupe by id settles it when
                // the journal is written back.
                Err(error) => shared.degrade(&error),
            }
        }
        shared.journal(key, &mut m, message).await
    }

    /// As `append`, with the backend's position when it went there
    /// directly; otherwise `append` itself (the journal) answers, without a
    /// position. (Between the two the mirror is unlocked: the router's order
    /// lock still serializes appends to the channel, and a message that
    /// reaches the backend that way merely has no position.)
    async fn append_placed(
        &self,
        key: &ChannelKey,
        message: StoredMessage,
    ) -> Result<(Appended, Option<u64>), StorageError> {
        let shared = &self.shared;
        {
            let mirror = shared.mirror(key);
            let mut m = mirror.lock().await;
            if shared.direct(&m) {
                match shared.append_direct(key, &mut m, &message).await {
                    Ok(placed) => return Ok(placed),
                    Err(error) => shared.degrade(&error),
                }
            }
        }
        Ok((self.append(key, message).await?, None))
    }

    /// Positions come from the backend only: journaled messages have none yet.
    async fn read_placed(
        &self,
        key: &ChannelKey,
        after: After,
        limit: usize,
    ) -> Result<Option<PlacedRead>, StorageError> {
        self.shared.primary.read_placed(key, after, limit).await
    }

    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let (mirror, direct) = self.route(key).await;
        if direct && let Some(answer) = self.backend_answer(self.shared.primary.history(key, limit, before).await) {
            return answer;
        }
        let max_len = self.shared.options.max_len;
        from_memory(mirror, |m| m.history(limit, before, max_len)).await
    }

    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        let (mirror, direct) = self.route(key).await;
        if direct && let Some(answer) = self.backend_answer(self.shared.primary.since(key, after).await) {
            return answer;
        }
        let max_len = self.shared.options.max_len;
        from_memory(mirror, |m| m.since(&after, max_len)).await
    }

    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        let (mirror, direct) = self.route(key).await;
        if direct && let Some(answer) = self.backend_answer(self.shared.primary.stats(key).await) {
            return answer;
        }
        let max_len = self.shared.options.max_len;
        from_memory(mirror, |m| m.stats(max_len)).await
    }

    fn health(&self) -> Health {
        let shared = &self.shared;
        let mut health = Health::new(shared.primary.health().backend, shared.state() == UP);
        health.journaled = shared.journaled.load(Ordering::SeqCst);
        health.refused = shared.refused.load(Ordering::SeqCst);
        health.journal_bytes = shared.journal_bytes.load(Ordering::SeqCst);
        health.cache_bytes = shared.cache_bytes.load(Ordering::SeqCst);
        health.journal_skipped = shared.skipped.load(Ordering::SeqCst);
        health
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.shared.primary.ping().await
    }
}
