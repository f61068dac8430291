//! Turns the storage section of the configuration into a backend.

use std::sync::Arc;

use arqon_config::{Config, StorageBackend};
use arqon_storage::{MemoryStorage, Storage};

use crate::ServerError;

/// Opens the configured storage backend.
pub(crate) async fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, ServerError> {
    Ok(match config.storage.backend {
        StorageBackend::Memory => Arc::new(MemoryStorage::new(config.limits.history_per_channel)),
    })
}
