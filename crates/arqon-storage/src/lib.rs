//! Channel history for ArqonBus: the [`Storage`] trait and its backends.
//!
//! This layer owns what is kept about channels: their records (name,
//! creation time) and each channel's bounded message history, in the order the
//! bus stored it. It knows nothing of connections, routing or sockets, and
//! depends only on `arqon-protocol`; a third-party backend crate needs nothing
//! but this trait and the protocol types.
//!
//! # Layout
//!
//! - [`Storage`]: the trait every backend implements, with its contract.
//! - [`MemoryStorage`]: the default backend, a log per channel bounded in
//!   messages and bytes, under a byte budget over all channels.
//! - `RedisStorage`: history in Redis Streams, one stream per channel, so
//!   that it survives a restart of the bus (`RedisOptions`). Only with the
//!   `redis` cargo feature (on by default), which brings in the `fred`
//!   client; without it this crate depends on no network client at all.
//! - [`FallbackStorage`]: the degradation wrapper over any backend: while
//!   the backend is unreachable it keeps accepting appends into a bounded
//!   journal and writes them back, in order, when the backend returns
//!   ([`FallbackOptions`]); with [`FallbackStorage::open`] that journal is
//!   also a write-ahead file on disk ([`JournalOptions`], [`FsyncPolicy`]),
//!   so an accepted message survives the bus stopping.
//! - [`StoredMessage`], [`ChannelRecord`], [`ChannelStats`], [`Appended`],
//!   [`AppendNow`], [`Since`]: the data the trait speaks; [`Placed`],
//!   [`After`] and [`PlacedRead`] for backends that number each channel's
//!   messages (positions, which cluster nodes use to deliver in history order).
//! - [`append_fast`]: how the router appends: [`Storage::append_now`] first,
//!   [`Storage::append`] only when the backend must wait.
//! - [`StorageError`]: the one error type of this layer.
//! - [`async_trait`](macro@async_trait): re-exported, so a backend crate
//!   implements [`Storage`] with nothing but this crate and `arqon-protocol`.
//!
//! Every rule of the contract is checked by the conformance kit, the crate
//! `arqon-storage-conformance`: a backend crate runs it in its own tests
//! with one line, and this crate runs its backends through it too
//! (`tests/conformance.rs`).
//!
//! docs/storage.md describes the backends, the Redis key layout and the
//! degradation rules for operators and for authors of new backends.

mod fallback;
mod journal;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use arqon_protocol::{ChannelKey, Frame, MessageId, Timestamp};

pub use fallback::{FallbackOptions, FallbackStorage};
pub use journal::{FsyncPolicy, JournalOptions, name_hash};
pub use memory::MemoryStorage;
#[cfg(feature = "redis")]
pub use redis::{RedisOptions, RedisStorage};

/// The attribute [`Storage`] is declared with, re-exported so that a backend
/// crate implements the trait with the very same macro version and needs no
/// dependency beyond this crate and `arqon-protocol`.
pub use async_trait::async_trait;

/// One message as kept in history: its id and the exact frame delivered live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The message id (unique within its channel's kept history).
    pub id: MessageId,
    /// The envelope exactly as delivered (`type: message`).
    pub frame: Frame,
}

/// What a backend records about a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    /// The channel's address.
    pub key: ChannelKey,
    /// When the channel was first created.
    pub created_at: Timestamp,
}

/// Counters shown by `channel_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelStats {
    /// Messages currently kept.
    pub stored: u64,
    /// The newest kept message, if any.
    pub last_id: Option<MessageId>,
}

/// The outcome of [`Storage::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The message was stored as the channel's newest.
    Stored,
    /// A message with this id is already kept: nothing was stored (a retry).
    Duplicate,
}

/// The outcome of [`Storage::append_now`]: the append is done, or the
/// backend needs to wait and hands the message back for [`Storage::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendNow {
    /// The append completed without waiting, exactly as [`Storage::append`]
    /// would have (including its errors).
    Done(Result<Appended, StorageError>),
    /// Nothing was done: the message, untouched, to pass to
    /// [`Storage::append`].
    Later(StoredMessage),
}

/// The messages stored after a cursor, for `join_channel` with `since`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Since {
    /// Every kept message after the cursor, oldest first.
    pub messages: Vec<StoredMessage>,
    /// True when the cursor is no longer (or never was) kept, so `messages`
    /// is everything kept and some messages may be missing before it.
    pub truncated: bool,
}

/// A kept message and its position: its number in the channel's order
/// (1, 2, 3, … with no gaps), for [`Storage::read_placed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The message's position in its channel.
    pub position: u64,
    /// The message.
    pub message: StoredMessage,
}

/// Where [`Storage::read_placed`] starts: after a message id, or after a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// After this message (as `since` does).
    Id(MessageId),
    /// After this position (0: from the first message).
    Position(u64),
}

/// The answer of [`Storage::read_placed`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlacedRead {
    /// Kept messages after the cursor, oldest first, at most the limit asked.
    pub messages: Vec<Placed>,
    /// True when messages right after the cursor are no longer (or never
    /// were) kept, so `messages` starts at the oldest kept one.
    pub truncated: bool,
    /// The channel's newest position (0 before its first message).
    pub tip: u64,
    /// The id of the newest kept message, if any.
    pub tip_id: Option<MessageId>,
}

/// Health as reported by `status`.
///
/// Build one with [`Health::new`]; the struct is `non_exhaustive` so that
/// counters can be added without breaking backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Backend name, e.g. `"memory"` or `"redis"`.
    pub backend: &'static str,
    /// Whether the backend can serve reads and writes right now.
    pub healthy: bool,
    /// Messages accepted but not yet written to the backend (held in the
    /// [`FallbackStorage`] journal). Always 0 for a plain backend.
    pub journaled: u64,
    /// Appends refused since start because the journal was full. Always 0
    /// for a plain backend.
    pub refused: u64,
    /// Bytes of the messages in the journal (each counted as its frame plus
    /// 64). Always 0 for a plain backend.
    pub journal_bytes: u64,
    /// Bytes of the messages [`FallbackStorage`] caches to answer reads
    /// during an outage (counted as for `journal_bytes`). Always 0 for a
    /// plain backend.
    pub cache_bytes: u64,
    /// Bytes of a torn or corrupt journal file tail skipped (reported, never
    /// replayed) at start-up. Always 0 for a plain backend.
    pub journal_skipped: u64,
    /// Bytes of history held in this process's memory, as counted against
    /// `history_bytes_budget` ([`MemoryStorage`]: frames plus a per-message
    /// estimate). 0 for a backend that keeps history elsewhere.
    pub history_bytes: u64,
    /// The most bytes of history this process keeps in memory; 0 when the
    /// backend has no byte budget.
    pub history_bytes_budget: u64,
}

impl Health {
    /// A backend's health with no journal and no history in memory: every
    /// counter zero.
    pub const fn new(backend: &'static str, healthy: bool) -> Self {
        Health {
            backend,
            healthy,
            journaled: 0,
            refused: 0,
            journal_bytes: 0,
            cache_bytes: 0,
            journal_skipped: 0,
            history_bytes: 0,
            history_bytes_budget: 0,
        }
    }
}

/// Everything that can go wrong in this layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// `history` was given a `before` cursor that is not in the kept history.
    #[error("message {0} is not in the kept history")]
    UnknownCursor(MessageId),
    /// The backend cannot serve the request right now (e.g. Redis is down).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with something it should not have.
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// A history backend.
///
/// # Contract
///
/// Every backend must hold these, and the conformance kit
/// (`arqon-storage-conformance`) checks them:
///
/// - Order is append order per channel, never id order.
/// - `append` of an id already kept in that channel returns
///   [`Appended::Duplicate`] and changes nothing.
/// - History is bounded per channel; the oldest messages go first. A
///   backend may also bound it over all channels (the memory backend's byte
///   budget); it then evicts each channel's oldest messages first too, so
///   what a channel keeps is always its newest messages, contiguous.
/// - `history(limit, before)` returns the newest `limit` messages strictly
///   older than `before` (or the newest overall), oldest first; a `before`
///   that is not kept is [`StorageError::UnknownCursor`].
/// - `since(after)` returns every kept message after `after`, oldest first;
///   an unknown cursor returns everything kept with `truncated: true`.
/// - A channel that was never appended to has empty history, not an error.
/// - Methods may be called concurrently; the router serializes appends to one
///   channel, so a backend need not order concurrent appends to one channel.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Records a channel. Idempotent: if it exists, returns its original
    /// record and `false`.
    async fn create_channel(
        &self,
        key: &ChannelKey,
        created_at: Timestamp,
    ) -> Result<(ChannelRecord, bool), StorageError>;

    /// Every recorded channel (loaded by the bus at start-up).
    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError>;

    /// Forgets a channel and its history. Returns whether it existed.
    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError>;

    /// Appends a message as the channel's newest.
    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError>;

    /// Appends a message at once when that needs no waiting; otherwise
    /// hands it back. This is the message path's fast lane: every publish
    /// appends while holding its channel's order lock, and `append` costs a
    /// boxed future per layer (the server's metrics wrapper, then the
    /// backend) even when nothing inside awaits.
    ///
    /// - [`AppendNow::Done`]: the append is complete, with exactly the
    ///   outcome [`append`](Storage::append) would have had: the same
    ///   [`Appended::Duplicate`] for a kept id, the same trimming to the
    ///   channel's bound, the same errors.
    /// - [`AppendNow::Later`]: nothing was done and nothing changed; the
    ///   message comes back untouched and the caller then calls `append`
    ///   with it. Returning `Later` is always correct.
    ///
    /// A backend returns `Done` only when it got there without I/O and
    /// without waiting on anything but short, non-async critical sections
    /// (such as a `parking_lot` mutex never held across an await): it runs
    /// on the async worker thread with the channel's order lock held.
    /// The router's serialization of appends to one channel covers this
    /// method as well as `append`. A wrapper forwards its inner backend's
    /// `append_now` only when going around its own `append` changes nothing
    /// ([`FallbackStorage`] does not: it would overtake its journal).
    ///
    /// The default returns `Later`: backends that must wait (Redis) need not
    /// implement it. Callers use [`append_fast`], which does both steps.
    fn append_now(&self, _key: &ChannelKey, message: StoredMessage) -> AppendNow {
        AppendNow::Later(message)
    }

    /// The newest `limit` messages older than `before` (or overall), oldest first.
    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError>;

    /// Every kept message after `after`, oldest first.
    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError>;

    /// How many messages are kept and the newest id.
    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError>;

    /// Backend name and current health.
    fn health(&self) -> Health;

    /// Appends like [`append`](Storage::append) and also returns the
    /// message's position, when the backend numbers each channel's messages
    /// (1, 2, 3, … in append order, never reused while the channel lives)
    /// and the message was stored there (`None` otherwise, e.g. journaled).
    ///
    /// Called only on cluster nodes, which use positions to deliver every
    /// channel in history order. The default appends and returns no
    /// position, so a backend without positions works unchanged.
    async fn append_placed(
        &self,
        key: &ChannelKey,
        message: StoredMessage,
    ) -> Result<(Appended, Option<u64>), StorageError> {
        Ok((self.append(key, message).await?, None))
    }

    /// Reads up to `limit` kept messages after `after`, with their
    /// positions, and the channel's newest position; `Ok(None)` when the
    /// backend has no positions (the default). `limit` 0 reads only the tip.
    async fn read_placed(
        &self,
        _key: &ChannelKey,
        _after: After,
        _limit: usize,
    ) -> Result<Option<PlacedRead>, StorageError> {
        Ok(None)
    }

    /// Checks that the backend answers right now, with one cheap round trip
    /// (Redis: `PING`). [`FallbackStorage`] calls it to learn that a failed
    /// backend is back before it writes its journal there.
    ///
    /// The default, for backends that cannot fail, answers `Ok` at once.
    async fn ping(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Appends `message` to `key` through `storage`: synchronously when the
/// backend can ([`Storage::append_now`]), else through the awaited
/// [`Storage::append`]. Same outcome either way.
///
/// A free function rather than a provided trait method: a provided `async`
/// method of an `#[async_trait]` trait returns a boxed future, the cost this
/// exists to avoid.
pub async fn append_fast(
    storage: &dyn Storage,
    key: &ChannelKey,
    message: StoredMessage,
) -> Result<Appended, StorageError> {
    match storage.append_now(key, message) {
        AppendNow::Done(appended) => appended,
        AppendNow::Later(message) => storage.append(key, message).await,
    }
}
