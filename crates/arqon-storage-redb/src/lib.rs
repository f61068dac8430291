//! A durable embedded history backend for ArqonBus: every channel's history
//! in one [redb](https://www.redb.org) file, so that a single node keeps its
//! history across restarts, and across a crash, without Redis.
//!
//! This crate owns the file: its tables, the numbering of each channel's
//! messages (positions 1, 2, 3, …), the trimming of each channel to its
//! newest `max_len` messages, and when a write reaches the disk
//! ([`Durability`]). It implements [`Storage`] against the public API of
//! `arqon-storage` and the protocol types alone, as a third-party backend
//! crate would, and is checked by the same conformance kit. It must not know
//! of connections, routing, configuration files or the server: the server
//! turns `[storage.redb]` into a [`RedbOptions`] and calls
//! [`RedbStorage::open`].
//!
//! # Layout
//!
//! - [`RedbStorage`]: the backend. Writes (appends, channel creation and
//!   deletion) go to one writer thread, which commits everything queued
//!   since its last commit in one transaction (group commit): many clients
//!   publishing at once share an fsync instead of paying one each. Reads run
//!   on tokio's blocking pool in read transactions, which never wait for the
//!   writer. No redb call runs on an async worker thread.
//! - [`RedbOptions`], [`Durability`]: where the file is, how much each
//!   channel keeps, and when a commit is on disk.
//! - [`RedbError`]: what opening the file or a transaction can fail with;
//!   it becomes a [`StorageError`] at the trait's surface.
//!
//! # Tables
//!
//! | table | key | value |
//! |---|---|---|
//! | `channels` | (room, channel) | creation time, Unix ms |
//! | `tips` | (room, channel) | (oldest kept position, newest position) |
//! | `log` | (room, channel, position) | the message id (its 30 characters) then the frame |
//! | `ids` | (room, channel, message id) | position: exactly the kept messages |
//!
//! docs/storage.md says when to choose this backend and what its durability
//! setting costs.

mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use arqon_protocol::{ChannelKey, Frame, MessageId, Timestamp};
use arqon_storage::{
    After, Appended, ChannelRecord, ChannelStats, Health, Placed, PlacedRead, Since, Storage, StorageError,
    StoredMessage, async_trait,
};
use redb::{Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::writer::{Job, Op, Outcome};

/// Channel records: (room, channel) → creation time in Unix ms.
const CHANNELS: TableDefinition<'static, (&str, &str), i64> = TableDefinition::new("channels");
/// Each channel's kept window: (room, channel) → (oldest kept position,
/// newest position). Missing: nothing was ever appended (or it was deleted).
const TIPS: TableDefinition<'static, (&str, &str), (u64, u64)> = TableDefinition::new("tips");
/// The messages: (room, channel, position) → id text then frame.
const LOG: TableDefinition<'static, (&str, &str, u64), &[u8]> = TableDefinition::new("log");
/// Every kept id: (room, channel, id) → position.
const IDS: TableDefinition<'static, (&str, &str, &str), u64> = TableDefinition::new("ids");

/// Length of a message id's text, `arq_` and 26 characters: the head of
/// every `log` value.
const ID_LEN: usize = 30;

/// When a commit is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is synced to disk (redb `Durability::Immediate`) before
    /// the appends in it are answered: an acknowledged publish survives a
    /// crash of the bus and a power loss. Concurrent appends share one
    /// commit, so the cost is one fsync per batch, not per message.
    #[default]
    Immediate,
    /// Commits are not synced (redb `Durability::None`), except one every
    /// interval (and at a clean close): much cheaper, but a crash of the
    /// process (`kill -9`, a panic, an OOM kill) or of the machine loses
    /// what was committed since the last sync, up to the interval's worth of
    /// acknowledged publishes.
    Interval(Duration),
}

/// How to open a [`RedbStorage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedbOptions {
    /// The database file, created (with its directory) if missing. One bus
    /// at a time: a second process opening it fails (redb locks the file).
    pub path: PathBuf,
    /// Messages kept per channel; older ones are trimmed. Default: `10000`.
    /// `0` keeps nothing (appends succeed and are dropped).
    pub max_len: usize,
    /// When commits reach the disk. Default: [`Durability::Immediate`].
    pub durability: Durability,
}

impl RedbOptions {
    /// Options for the file at `path`, with the defaults otherwise.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RedbOptions { path: path.into(), max_len: 10_000, durability: Durability::Immediate }
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum RedbError {
    /// The directory of the database file could not be created.
    #[error("redb: cannot create the directory of {path}: {source}")]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database file could not be opened or created: unwritable, not a
    /// redb file, corrupt, or open in another process.
    #[error("redb: cannot open {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: Box<redb::DatabaseError>,
    },
    /// A transaction failed (an I/O error of the file, typically).
    #[error("redb: {0}")]
    Database(Box<redb::Error>),
    /// A kept message could not be read back: the file holds data this
    /// crate did not write.
    #[error("redb: a kept message of {channel} is malformed: {what}")]
    Malformed {
        /// `room/channel`.
        channel: String,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The write transaction that held this write failed (the error of the
    /// first failing step, shared by every write of the batch).
    #[error("redb: the write was not kept: {0}")]
    Write(String),
    /// The writer thread could not be started.
    #[error("redb: cannot start the writer thread: {0}")]
    Spawn(std::io::Error),
    /// The writer thread is gone (it stopped after an earlier panic).
    #[error("redb: the writer thread has stopped")]
    WriterStopped,
    /// A blocking read task could not run (the runtime is shutting down).
    #[error("redb: a read could not run: {0}")]
    Read(String),
}

impl<E: Into<redb::Error>> From<E> for RedbError {
    fn from(error: E) -> Self {
        RedbError::Database(Box::new(error.into()))
    }
}

impl From<RedbError> for StorageError {
    /// What may heal by itself (an I/O error, a read refused during
    /// shutdown) is `Unavailable`; what cannot (a file that does not open,
    /// foreign data) is `Backend`.
    fn from(error: RedbError) -> Self {
        let message = error.to_string();
        match error {
            RedbError::Database(_) | RedbError::Write(_) | RedbError::WriterStopped | RedbError::Read(_) => {
                StorageError::Unavailable(message)
            }
            RedbError::CreateDir { .. }
            | RedbError::Open { .. }
            | RedbError::Malformed { .. }
            | RedbError::Spawn(_) => StorageError::Backend(message),
        }
    }
}

/// Channel history in one redb file, trimmed to [`RedbOptions::max_len`]
/// messages per channel, numbered 1, 2, 3, … per channel (positions).
///
/// See the crate documentation for the threads and the tables. Dropping it
/// stops the writer thread after its last commit and closes the file, so
/// that it can be opened again at once.
pub struct RedbStorage {
    db: Arc<Database>,
    path: PathBuf,
    max_len: usize,
    /// The writer's queue; `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<u64>>,
    /// The outcome of the writer's last commit: a file that can be read
    /// but not written (a full disk) is not healthy.
    healthy: Arc<AtomicBool>,
}

impl fmt::Debug for RedbStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStorage")
            .field("path", &self.path)
            .field("max_len", &self.max_len)
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedbStorage {
    /// Opens (or creates) the database file and starts the writer thread.
    ///
    /// Blocking: it reads the file's header, and after a crash redb may
    /// repair the file first (a walk of its trees). Call it at start-up, or
    /// through `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// [`RedbError::CreateDir`] or [`RedbError::Open`] when the file cannot
    /// be created or opened (unwritable path, a corrupt or foreign file, a
    /// file another process has open), each naming the path.
    pub fn open(options: RedbOptions) -> Result<RedbStorage, RedbError> {
        let path = options.path;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| RedbError::CreateDir { path: path.clone(), source })?;
        }
        let db =
            Database::create(&path).map_err(|source| RedbError::Open { path: path.clone(), source: source.into() })?;
        // Every table exists from the start, so that reads never meet a
        // missing one.
        let txn = db.begin_write()?;
        txn.open_table(CHANNELS)?;
        txn.open_table(TIPS)?;
        txn.open_table(LOG)?;
        txn.open_table(IDS)?;
        txn.commit()?;

        let db = Arc::new(db);
        let healthy = Arc::new(AtomicBool::new(true));
        let (jobs, queue) = mpsc::channel();
        let writer = writer::Writer::new(Arc::clone(&db), options.max_len, options.durability, Arc::clone(&healthy));
        let writer = std::thread::Builder::new()
            .name("arqon-redb-writer".to_owned())
            .spawn(move || writer.run(queue))
            .map_err(RedbError::Spawn)?;
        Ok(RedbStorage { db, path, max_len: options.max_len, jobs: Some(jobs), writer: Some(writer), healthy })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a write and waits for its commit.
    async fn write(&self, op: Op) -> Result<Outcome, StorageError> {
        let (reply, answer) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(RedbError::WriterStopped)?;
        jobs.send(Job { op, reply }).map_err(|_| RedbError::WriterStopped)?;
        Ok(answer.await.map_err(|_| RedbError::WriterStopped)??)
    }

    /// Runs `read` in a read transaction on tokio's blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&ReadTransaction) -> Result<T, RedbError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let db = Arc::clone(&self.db);
        let result = tokio::task::spawn_blocking(move || read(&db.begin_read()?))
            .await
            .map_err(|e| RedbError::Read(e.to_string()))?;
        Ok(result?)
    }
}

impl Drop for RedbStorage {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what it holds, make its
        // last commit durable and return; then the file closes with the last
        // `Arc<Database>`.
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "the redb writer thread panicked");
        }
    }
}

/// A channel's key parts as the tables spell them.
fn parts(key: &ChannelKey) -> (&str, &str) {
    (key.room.as_str(), key.channel.as_str())
}

/// A channel's kept window, `(oldest kept, newest)`; `(1, 0)` when nothing
/// was appended. Empty when `oldest > newest`.
fn window(
    tips: &impl ReadableTable<(&'static str, &'static str), (u64, u64)>,
    key: &ChannelKey,
) -> Result<(u64, u64), RedbError> {
    Ok(tips.get(parts(key))?.map_or((1, 0), |tip| tip.value()))
}

/// The `log` value of a message: its id's text, then its frame.
fn encode(message: &StoredMessage) -> Vec<u8> {
    let mut value = Vec::with_capacity(ID_LEN + message.frame.len());
    message.id.write_to(&mut value);
    value.extend_from_slice(message.frame.bytes());
    value
}

/// A `log` value back into its id's text and its message.
fn decode(key: &ChannelKey, value: &[u8]) -> Result<StoredMessage, RedbError> {
    let malformed = |what| RedbError::Malformed { channel: key.to_string(), what };
    let (id, frame) = value.split_at_checked(ID_LEN).ok_or_else(|| malformed("shorter than an id"))?;
    let id =
        std::str::from_utf8(id).ok().and_then(|id| MessageId::parse(id).ok()).ok_or_else(|| malformed("bad id"))?;
    let frame = std::str::from_utf8(frame).map_err(|_| malformed("frame is not UTF-8"))?;
    Ok(StoredMessage { id, frame: Frame::from_text(frame) })
}

/// The read side's tables.
struct Reader {
    tips: ReadOnlyTable<(&'static str, &'static str), (u64, u64)>,
    log: ReadOnlyTable<(&'static str, &'static str, u64), &'static [u8]>,
    ids: ReadOnlyTable<(&'static str, &'static str, &'static str), u64>,
}

impl Reader {
    fn new(txn: &ReadTransaction) -> Result<Self, RedbError> {
        Ok(Reader { tips: txn.open_table(TIPS)?, log: txn.open_table(LOG)?, ids: txn.open_table(IDS)? })
    }

    fn window(&self, key: &ChannelKey) -> Result<(u64, u64), RedbError> {
        window(&self.tips, key)
    }

    /// The position of a kept id.
    fn position(&self, key: &ChannelKey, id: MessageId) -> Result<Option<u64>, RedbError> {
        let (room, channel) = parts(key);
        Ok(self.ids.get((room, channel, id.to_string().as_str()))?.map(|at| at.value()))
    }

    /// Kept messages at positions `from..=to`, at most `limit`, oldest
    /// first, with their positions.
    fn range(
        &self,
        key: &ChannelKey,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, StoredMessage)>, RedbError> {
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        let (room, channel) = parts(key);
        let mut out = Vec::new();
        for entry in self.log.range((room, channel, from)..=(room, channel, to))?.take(limit) {
            let (at, value) = entry?;
            out.push((at.value().2, decode(key, value.value())?));
        }
        Ok(out)
    }

    /// The message at a position, if kept.
    fn at(&self, key: &ChannelKey, position: u64) -> Result<Option<StoredMessage>, RedbError> {
        let (room, channel) = parts(key);
        self.log.get((room, channel, position))?.map(|value| decode(key, value.value())).transpose()
    }
}

fn without_positions(placed: Vec<(u64, StoredMessage)>) -> Vec<StoredMessage> {
    placed.into_iter().map(|(_, message)| message).collect()
}

#[async_trait]
impl Storage for RedbStorage {
    async fn create_channel(
        &self,
        key: &ChannelKey,
        created_at: Timestamp,
    ) -> Result<(ChannelRecord, bool), StorageError> {
        match self.write(Op::Create(key.clone(), created_at)).await? {
            Outcome::Created(record, fresh) => Ok((record, fresh)),
            _ => Err(StorageError::Backend("redb: the writer answered create with another outcome".to_owned())),
        }
    }

    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        self.read(|txn| {
            let table = txn.open_table(CHANNELS)?;
            let mut records = Vec::new();
            for entry in table.iter()? {
                let (key, at) = entry?;
                let (room, channel) = key.value();
                match ChannelKey::parse(room, channel) {
                    Ok(key) => records.push(ChannelRecord { key, created_at: Timestamp::from_unix_ms(at.value()) }),
                    Err(_) => tracing::warn!(room, channel, "ignoring a malformed channel record in the redb file"),
                }
            }
            records.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(records)
        })
        .await
    }

    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        match self.write(Op::Delete(key.clone())).await? {
            Outcome::Deleted(existed) => Ok(existed),
            _ => Err(StorageError::Backend("redb: the writer answered delete with another outcome".to_owned())),
        }
    }

    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        Ok(self.append_placed(key, message).await?.0)
    }

    /// Answered once the commit that holds the message is done (on disk,
    /// with [`Durability::Immediate`]).
    async fn append_placed(
        &self,
        key: &ChannelKey,
        message: StoredMessage,
    ) -> Result<(Appended, Option<u64>), StorageError> {
        match self.write(Op::Append(key.clone(), message)).await? {
            Outcome::Appended(appended, position) => Ok((appended, position)),
            _ => Err(StorageError::Backend("redb: the writer answered append with another outcome".to_owned())),
        }
    }

    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let key = key.clone();
        let found = self
            .read(move |txn| {
                let reader = Reader::new(txn)?;
                let (first, last) = reader.window(&key)?;
                let end = match before {
                    Some(id) => match reader.position(&key, id)? {
                        Some(at) => at - 1,
                        None => return Ok(None),
                    },
                    None => last,
                };
                let limit_back = u64::try_from(limit).unwrap_or(u64::MAX);
                let from = first.max((end + 1).saturating_sub(limit_back));
                Ok(Some(without_positions(reader.range(&key, from, end, limit)?)))
            })
            .await?;
        match (found, before) {
            (Some(messages), _) => Ok(messages),
            (None, Some(id)) => Err(StorageError::UnknownCursor(id)),
            (None, None) => Ok(Vec::new()),
        }
    }

    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        let key = key.clone();
        self.read(move |txn| {
            let reader = Reader::new(txn)?;
            let (first, last) = reader.window(&key)?;
            let (from, truncated) = match reader.position(&key, after)? {
                Some(at) => (at + 1, false),
                None => (first, true),
            };
            Ok(Since { messages: without_positions(reader.range(&key, from, last, usize::MAX)?), truncated })
        })
        .await
    }

    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        let key = key.clone();
        self.read(move |txn| {
            let reader = Reader::new(txn)?;
            let (first, last) = reader.window(&key)?;
            let stored = (last + 1).saturating_sub(first);
            let last_id = if stored > 0 { reader.at(&key, last)?.map(|m| m.id) } else { None };
            Ok(ChannelStats { stored, last_id })
        })
        .await
    }

    fn health(&self) -> Health {
        // A writer thread that is gone (it panicked) can never commit again.
        let writer_alive = self.writer.as_ref().is_some_and(|writer| !writer.is_finished());
        Health::new("redb", writer_alive && self.healthy.load(Ordering::Relaxed))
    }

    /// Positions are the numbers the writer gives each append.
    async fn read_placed(
        &self,
        key: &ChannelKey,
        after: After,
        limit: usize,
    ) -> Result<Option<PlacedRead>, StorageError> {
        let key = key.clone();
        self.read(move |txn| {
            let reader = Reader::new(txn)?;
            let (first, last) = reader.window(&key)?;
            let (from, truncated) = match after {
                After::Id(id) => match reader.position(&key, id)? {
                    Some(at) => (at + 1, false),
                    None => (first, true),
                },
                // Right after the cursor is still kept, or nothing follows it.
                After::Position(at) if at.saturating_add(1) >= first || at >= last => (at.saturating_add(1), false),
                After::Position(_) => (first, true),
            };
            let messages = reader
                .range(&key, from, last, limit)?
                .into_iter()
                .map(|(position, message)| Placed { position, message })
                .collect();
            let tip_id = if last >= first { reader.at(&key, last)?.map(|m| m.id) } else { None };
            Ok(Some(PlacedRead { messages, truncated, tip: last, tip_id }))
        })
        .await
    }

    /// A read transaction: the file answers.
    async fn ping(&self) -> Result<(), StorageError> {
        self.read(|txn| {
            txn.open_table(TIPS)?;
            Ok(())
        })
        .await
    }
}
