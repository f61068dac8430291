//! Turns the storage section of the configuration into a backend.
//!
//! The Redis backend exists only with the `redis` feature; without it,
//! `storage.backend = "redis"` fails start-up with
//! [`ServerError::NotBuiltIn`]. Likewise the redb backend with the `redb`
//! feature ([`ServerError::RedbNotBuiltIn`]).

use std::sync::Arc;
#[cfg(feature = "redis")]
use std::time::Duration;

#[cfg(feature = "redis")]
use arqon_config::JournalFsync;
use arqon_config::{Config, StorageBackend};
#[cfg(feature = "redis")]
use arqon_storage::{FallbackOptions, FsyncPolicy, JournalOptions, RedisOptions, RedisStorage, name_hash};
use arqon_storage::{FallbackStorage, MemoryStorage, Storage};

use crate::ServerError;

/// The opened backend, and the degradation wrapper again when there is one,
/// for the shutdown to write its journal back ([`FallbackStorage::close`]).
pub(crate) type Opened = (Arc<dyn Storage>, Option<Arc<FallbackStorage>>);

/// Opens the configured storage backend.
///
/// `redis` is Redis Streams behind the degradation wrapper: the bus starts
/// even while Redis is unreachable (it waits `connect_timeout_ms` for it),
/// keeps serving through an outage and writes what it accepted back to Redis
/// when it returns (docs/storage.md). What it accepts meanwhile is written to
/// the journal file in `storage.journal.path` before it is answered; a
/// journal left by an earlier run is written to Redis here, before the bus
/// serves (if Redis answers). Only settings that can never work (a URL that
/// does not parse, a journal file that cannot be opened, a binary built
/// without the `redis` feature) fail start-up.
pub(crate) async fn open_storage(config: &Config) -> Result<Opened, ServerError> {
    Ok(match config.storage.backend {
        StorageBackend::Memory => (
            Arc::new(
                MemoryStorage::new(config.limits.history_per_channel)
                    .with_byte_budget(config.limits.history_bytes_per_channel, config.limits.history_bytes_total),
            ),
            None,
        ),
        #[cfg(not(feature = "redb"))]
        StorageBackend::Redb => {
            return Err(ServerError::RedbNotBuiltIn { setting: r#"storage.backend = "redb""# });
        }
        #[cfg(feature = "redb")]
        StorageBackend::Redb => (open_redb(config).await?, None),
        #[cfg(not(feature = "redis"))]
        StorageBackend::Redis => return Err(ServerError::NotBuiltIn { setting: r#"storage.backend = "redis""# }),
        #[cfg(feature = "redis")]
        StorageBackend::Redis => {
            let redis = &config.storage.redis;
            let primary = RedisStorage::connect(RedisOptions {
                url: redis.url.clone(),
                key_prefix: redis.key_prefix.clone(),
                max_len: redis.max_len,
                connect_timeout: Duration::from_millis(redis.connect_timeout_ms),
                command_timeout: Duration::from_millis(redis.command_timeout_ms),
                pool_size: redis.pool_size,
            })
            .await?;
            // In a cluster other nodes append too, so this node's memory
            // never holds a channel's exact history: no outage reads from it.
            let cache_per_channel = if config.cluster.enabled { 0 } else { redis.cache_per_channel };
            let options = FallbackOptions {
                journal_capacity: redis.journal_capacity,
                journal_bytes: redis.journal_bytes,
                cache_per_channel,
                cache_bytes: redis.cache_bytes,
                max_len: redis.max_len,
                ..FallbackOptions::default()
            };
            let fallback = Arc::new(FallbackStorage::open(Arc::new(primary), options, &journal_options(config)).await?);
            (Arc::clone(&fallback) as Arc<dyn Storage>, Some(fallback))
        }
    })
}

/// `redb`: the file at `storage.redb.path`, opened on the blocking pool
/// (opening after a crash may repair the file first). A file that cannot be
/// opened fails start-up, naming the key and the path.
#[cfg(feature = "redb")]
async fn open_redb(config: &Config) -> Result<Arc<dyn Storage>, ServerError> {
    use arqon_config::JournalFsync;
    use arqon_storage::StorageError;
    use arqon_storage_redb::{Durability, RedbOptions, RedbStorage};

    let redb = &config.storage.redb;
    let options = RedbOptions {
        path: redb.path.clone().into(),
        max_len: redb.max_len,
        durability: match redb.fsync {
            JournalFsync::Always => Durability::Immediate,
            JournalFsync::Interval => Durability::Interval(std::time::Duration::from_millis(redb.fsync_interval_ms)),
        },
    };
    let opened = tokio::task::spawn_blocking(move || RedbStorage::open(options))
        .await
        .map_err(|e| StorageError::Backend(format!("storage.redb.path: opening the file did not finish: {e}")))?;
    match opened {
        Ok(storage) => Ok(Arc::new(storage)),
        Err(error) => Err(StorageError::Backend(format!("storage.redb.path = {:?}: {error}", redb.path)).into()),
    }
}

#[cfg(feature = "redis")]
/// Where the journal goes: a file named after the Redis server and key
/// prefix it is for (never written back to another), without the URL's
/// credentials, so that a new password finds the same file.
fn journal_options(config: &Config) -> JournalOptions {
    let redis = &config.storage.redis;
    let journal = &config.storage.journal;
    let url = &redis.url;
    let target = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}{}", &url[..scheme + 3], &url[at + 1..]),
        _ => url.clone(),
    };
    JournalOptions {
        dir: journal.path.clone().into(),
        name: format!("redis-{:016x}", name_hash(&format!("{target}\n{}", redis.key_prefix))),
        fsync: match journal.fsync {
            JournalFsync::Always => FsyncPolicy::Always,
            JournalFsync::Interval => FsyncPolicy::Interval(Duration::from_millis(journal.fsync_interval_ms)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration that asks for Redis from a build without it fails
    /// start-up, naming the setting and the missing feature.
    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn redis_storage_without_the_feature_fails_start_up_clearly() {
        let mut config = Config::default();
        config.storage.backend = StorageBackend::Redis;
        let Err(error) = open_storage(&config).await else { panic!("opened Redis storage without the feature") };
        let message = error.to_string();
        assert!(message.contains(r#"storage.backend = "redis""#), "{message}");
        assert!(message.contains("built without the `redis` feature"), "{message}");

        config.storage.backend = StorageBackend::Memory;
        config.cluster.enabled = true;
        let Err(error) = crate::Bus::bind(&config).await else { panic!("a cluster node without the feature") };
        let message = error.to_string();
        assert!(message.contains("cluster.enabled = true"), "{message}");
        assert!(message.contains("built without the `redis` feature"), "{message}");
    }

    /// A configuration that asks for redb from a build without it fails
    /// start-up, naming the setting and the missing feature.
    #[cfg(not(feature = "redb"))]
    #[tokio::test]
    async fn redb_storage_without_the_feature_fails_start_up_clearly() {
        let mut config = Config::default();
        config.storage.backend = StorageBackend::Redb;
        config.storage.redb.path = "history.redb".to_owned();
        let Err(error) = open_storage(&config).await else { panic!("opened redb storage without the feature") };
        let message = error.to_string();
        assert!(message.contains(r#"storage.backend = "redb""#), "{message}");
        assert!(message.contains("built without the `redb` feature"), "{message}");
    }

    /// redb opens the configured file; a path that cannot be a database
    /// fails start-up naming the key and the path.
    #[cfg(feature = "redb")]
    #[tokio::test]
    async fn redb_storage_opens_the_configured_file_or_names_the_key() {
        let dir = std::env::temp_dir().join(format!("arqon-server-redb-{}", std::process::id()));
        let mut config = Config::default();
        config.storage.backend = StorageBackend::Redb;
        config.storage.redb.path = dir.join("history.redb").display().to_string();
        let (storage, fallback) = open_storage(&config).await.expect("redb opens");
        assert_eq!(storage.health().backend, "redb");
        assert!(fallback.is_none());
        drop(storage);

        // The directory itself is not a database file.
        config.storage.redb.path = dir.display().to_string();
        let Err(error) = open_storage(&config).await else { panic!("opened a directory as a redb file") };
        let message = error.to_string();
        assert!(message.starts_with("storage backend error: storage.redb.path = "), "{message}");
        assert!(message.contains(&config.storage.redb.path), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The memory backend needs no feature, and the error type keeps its
    /// message for builds that have one.
    #[tokio::test]
    async fn memory_storage_opens_in_every_build() {
        let (storage, fallback) = open_storage(&Config::default()).await.expect("memory opens");
        assert_eq!(storage.health().backend, "memory");
        assert!(fallback.is_none());
        let message = ServerError::NotBuiltIn { setting: "x" }.to_string();
        assert!(
            message.starts_with("x needs Redis, but this binary was built without the `redis` feature"),
            "{message}"
        );
    }
}
