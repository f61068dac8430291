//! Counts storage operations and failures for the metrics.

use std::sync::Arc;

use arqon_protocol::{ChannelKey, MessageId, Timestamp};
use arqon_storage::{
    Appended, ChannelRecord, ChannelStats, Health, Since, Storage, StorageError, StoredMessage, async_trait,
};

use crate::observer::Telemetry;

/// A `Storage` that counts every call, by operation and outcome.
pub(crate) struct Instrumented {
    inner: Arc<dyn Storage>,
    telemetry: Arc<Telemetry>,
}

impl std::fmt::Debug for Instrumented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented").field("backend", &self.inner.health().backend).finish()
    }
}

impl Instrumented {
    pub(crate) fn new(inner: Arc<dyn Storage>, telemetry: Arc<Telemetry>) -> Self {
        Instrumented { inner, telemetry }
    }

    fn count<T>(&self, op: &'static str, result: Result<T, StorageError>) -> Result<T, StorageError> {
        // An unknown cursor is the client's mistake, not a storage failure.
        let ok = matches!(result, Ok(_) | Err(StorageError::UnknownCursor(_)));
        self.telemetry.metrics.storage_op(op, ok);
        result
    }
}

#[async_trait]
impl Storage for Instrumented {
    async fn create_channel(
        &self,
        key: &ChannelKey,
        created_at: Timestamp,
    ) -> Result<(ChannelRecord, bool), StorageError> {
        self.count("create_channel", self.inner.create_channel(key, created_at).await)
    }

    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        self.count("channels", self.inner.channels().await)
    }

    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        self.count("delete_channel", self.inner.delete_channel(key).await)
    }

    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        self.count("append", self.inner.append(key, message).await)
    }

    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        self.count("history", self.inner.history(key, limit, before).await)
    }

    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        self.count("since", self.inner.since(key, after).await)
    }

    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        self.count("stats", self.inner.stats(key).await)
    }

    fn health(&self) -> Health {
        self.inner.health()
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.inner.ping().await
    }
}
