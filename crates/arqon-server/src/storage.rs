//! Turns the storage section of the configuration into a backend.

use std::sync::Arc;
use std::time::Duration;

use arqon_config::{Config, StorageBackend};
use arqon_storage::{FallbackOptions, FallbackStorage, MemoryStorage, RedisOptions, RedisStorage, Storage};

use crate::ServerError;

/// Opens the configured storage backend.
///
/// `redis` is Redis Streams behind the degradation wrapper: the bus starts
/// even while Redis is unreachable (it waits `connect_timeout_ms` for it),
/// keeps serving through an outage and writes what it accepted back to Redis
/// when it returns (docs/storage.md). Only settings that can never work (a
/// URL that does not parse) fail start-up.
pub(crate) async fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, ServerError> {
    Ok(match config.storage.backend {
        StorageBackend::Memory => Arc::new(
            MemoryStorage::new(config.limits.history_per_channel)
                .with_byte_budget(config.limits.history_bytes_per_channel, config.limits.history_bytes_total),
        ),
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
                cache_per_channel,
                max_len: redis.max_len,
                ..FallbackOptions::default()
            };
            Arc::new(FallbackStorage::new(Arc::new(primary), options))
        }
    })
}
