//! Shared by this crate's integration tests: real redis-server processes
//! (the end-to-end harness's `RedisProcess`, included by path so that these
//! tests need not build the server), and backends that own what they need
//! (their redis-server, their journal directory) until dropped.
//!
//! The Redis parts exist only with the `redis` feature.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arqon_protocol::{ChannelKey, MessageId, Timestamp};
use arqon_storage::{
    After, AppendNow, Appended, ChannelRecord, ChannelStats, FallbackOptions, FallbackStorage, FsyncPolicy, Health,
    JournalOptions, MemoryStorage, PlacedRead, Since, Storage, StorageError, StoredMessage, async_trait,
};
#[cfg(feature = "redis")]
use arqon_storage::{RedisOptions, RedisStorage};

#[cfg(feature = "redis")]
#[path = "../../../../tests/src/redis.rs"]
#[allow(unreachable_pub, dead_code)]
mod redis_process;

#[cfg(feature = "redis")]
pub use redis_process::{RedisProcess, redis_available};

#[cfg(feature = "redis")]
/// Options for a test backend on `redis`: short timeouts, a key prefix of
/// its own (so that several backends may share one server).
pub fn redis_options(redis: &RedisProcess, max_len: usize) -> RedisOptions {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    RedisOptions {
        url: redis.url(),
        key_prefix: format!("test{}:", NEXT.fetch_add(1, Ordering::Relaxed)),
        max_len,
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(2),
        pool_size: 2,
    }
}

#[cfg(feature = "redis")]
/// Starts a redis-server (blocking this worker briefly, so the runtime must
/// be multi-threaded).
pub fn start_redis() -> RedisProcess {
    tokio::task::block_in_place(RedisProcess::start)
}

/// A backend that owns what it needs, `guard` (a redis-server, a journal
/// directory): dropping it (at the end of a test) stops or removes that. It
/// forwards every method, the provided ones included, so that checks reach
/// the backend's own `append_now` and positions.
#[derive(Debug)]
pub struct Owning<S, G> {
    pub storage: S,
    pub guard: G,
}

/// A fresh Redis backend on a redis-server of its own.
#[cfg(feature = "redis")]
pub async fn redis_backend(capacity: usize) -> Arc<dyn Storage> {
    let redis = start_redis();
    let storage = RedisStorage::connect(redis_options(&redis, capacity)).await.unwrap();
    Arc::new(Owning { storage, guard: redis })
}

/// The degradation wrapper over a fresh Redis backend, as the server runs it
/// (with its journal file).
#[cfg(feature = "redis")]
pub async fn fallback_over_redis(capacity: usize) -> Arc<dyn Storage> {
    let redis = start_redis();
    let primary = RedisStorage::connect(redis_options(&redis, capacity)).await.unwrap();
    let options = FallbackOptions { max_len: capacity, ..FallbackOptions::default() };
    let dir = TempDir::new("redis");
    let storage = FallbackStorage::open(Arc::new(primary), options, &dir.journal()).await.unwrap();
    Arc::new(Owning { storage, guard: (redis, dir) })
}

/// The degradation wrapper over memory with its journal file on disk.
pub async fn journaled_fallback_over_memory(capacity: usize) -> Arc<dyn Storage> {
    let options = FallbackOptions { max_len: capacity, ..FallbackOptions::default() };
    let dir = TempDir::new("memory");
    let storage = FallbackStorage::open(Arc::new(MemoryStorage::new(capacity)), options, &dir.journal()).await.unwrap();
    Arc::new(Owning { storage, guard: dir })
}

/// A directory of its own under the system's temporary one, removed on drop.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TempDir(std::env::temp_dir().join(format!("arqon-storage-test-{what}-{}-{n}", std::process::id())))
    }

    /// A journal file in this directory, synced on every write (the default).
    pub fn journal(&self) -> JournalOptions {
        JournalOptions { dir: self.0.clone(), name: "conformance".to_owned(), fsync: FsyncPolicy::Always }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[async_trait]
impl<S: Storage + std::fmt::Debug, G: std::fmt::Debug + Send + Sync + 'static> Storage for Owning<S, G> {
    async fn create_channel(&self, key: &ChannelKey, at: Timestamp) -> Result<(ChannelRecord, bool), StorageError> {
        self.storage.create_channel(key, at).await
    }
    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        self.storage.channels().await
    }
    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        self.storage.delete_channel(key).await
    }
    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        self.storage.append(key, message).await
    }
    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        self.storage.history(key, limit, before).await
    }
    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        self.storage.since(key, after).await
    }
    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        self.storage.stats(key).await
    }
    fn health(&self) -> Health {
        self.storage.health()
    }
    async fn ping(&self) -> Result<(), StorageError> {
        self.storage.ping().await
    }
    fn append_now(&self, key: &ChannelKey, message: StoredMessage) -> AppendNow {
        self.storage.append_now(key, message)
    }
    async fn append_placed(
        &self,
        key: &ChannelKey,
        message: StoredMessage,
    ) -> Result<(Appended, Option<u64>), StorageError> {
        self.storage.append_placed(key, message).await
    }
    async fn read_placed(
        &self,
        key: &ChannelKey,
        after: After,
        limit: usize,
    ) -> Result<Option<PlacedRead>, StorageError> {
        self.storage.read_placed(key, after, limit).await
    }
}

/// `n` fresh ids, in creation order.
pub fn fresh_ids(n: usize) -> Vec<MessageId> {
    let mut generator = arqon_protocol::IdGenerator::new();
    (0..n).map(|_| generator.message_id()).collect()
}

/// The ids of `messages`, in order.
pub fn ids(messages: &[StoredMessage]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

/// Waits (at most 15 s) until `storage` answers a ping.
pub async fn until_ping(storage: &dyn Storage) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while storage.ping().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no answer in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
