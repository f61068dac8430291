//! Counts storage operations and failures for the metrics.

use std::sync::Arc;

use arqon_protocol::{ChannelKey, MessageId, Timestamp};
use arqon_storage::{
    After, AppendNow, Appended, ChannelRecord, ChannelStats, Health, PlacedRead, Since, Storage, StorageError,
    StoredMessage, async_trait,
};
use arqon_telemetry::StorageOp;

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

    fn count<T>(&self, op: StorageOp, result: Result<T, StorageError>) -> Result<T, StorageError> {
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
        self.count(StorageOp::CreateChannel, self.inner.create_channel(key, created_at).await)
    }

    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        self.count(StorageOp::Channels, self.inner.channels().await)
    }

    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        self.count(StorageOp::DeleteChannel, self.inner.delete_channel(key).await)
    }

    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        self.count(StorageOp::Append, self.inner.append(key, message).await)
    }

    /// Counted here only when the inner backend finished the append; when it
    /// hands the message back, the caller's `append` counts it, so each
    /// append is counted once whichever way it went.
    fn append_now(&self, key: &ChannelKey, message: StoredMessage) -> AppendNow {
        match self.inner.append_now(key, message) {
            AppendNow::Done(appended) => AppendNow::Done(self.count(StorageOp::Append, appended)),
            later @ AppendNow::Later(_) => later,
        }
    }

    async fn append_placed(
        &self,
        key: &ChannelKey,
        message: StoredMessage,
    ) -> Result<(Appended, Option<u64>), StorageError> {
        self.count(StorageOp::Append, self.inner.append_placed(key, message).await)
    }

    async fn read_placed(
        &self,
        key: &ChannelKey,
        after: After,
        limit: usize,
    ) -> Result<Option<PlacedRead>, StorageError> {
        // A positioned `since` (join replays, gap fills): counted as one.
        self.count(StorageOp::Since, self.inner.read_placed(key, after, limit).await)
    }

    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        self.count(StorageOp::History, self.inner.history(key, limit, before).await)
    }

    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        self.count(StorageOp::Since, self.inner.since(key, after).await)
    }

    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        self.count(StorageOp::Stats, self.inner.stats(key).await)
    }

    fn health(&self) -> Health {
        self.inner.health()
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use arqon_protocol::{Frame, IdGenerator};
    use arqon_storage::{FallbackOptions, FallbackStorage, MemoryStorage, append_fast};

    use super::*;

    /// Appends two messages and one retry through `append_fast` over
    /// `Instrumented(inner)`, checking which way `inner` took, and returns
    /// the counted appends (ok, failed).
    async fn appends_counted(inner: Arc<dyn Storage>, done_at_once: bool) -> (Option<f64>, Option<f64>) {
        let telemetry = Arc::new(Telemetry::new(16));
        let storage = Instrumented::new(inner, Arc::clone(&telemetry));
        let key = ChannelKey::parse("room", "chan").unwrap();
        let mut ids = IdGenerator::new();
        let message = |id| StoredMessage { id, frame: Frame::from_text(format!(r#"{{"id":"{id}"}}"#)) };
        let (first, second) = (ids.message_id(), ids.message_id());

        let now = storage.append_now(&key, message(first));
        assert_eq!(matches!(now, AppendNow::Done(_)), done_at_once, "{now:?}");
        if let AppendNow::Later(back) = now {
            storage.append(&key, back).await.unwrap();
        }
        assert_eq!(append_fast(&storage, &key, message(second)).await, Ok(Appended::Stored));
        assert_eq!(append_fast(&storage, &key, message(first)).await, Ok(Appended::Duplicate));

        let text = telemetry.metrics.render();
        let ok = arqon_telemetry::sample(&text, r#"arqon_storage_operations_total{op="append"}"#);
        let failed = arqon_telemetry::sample(&text, r#"arqon_storage_failures_total{op="append"}"#);
        (ok, failed)
    }

    #[tokio::test]
    async fn an_append_done_at_once_is_counted_once() {
        let counted = appends_counted(Arc::new(MemoryStorage::new(10)), true).await;
        assert_eq!(counted, (Some(3.0), Some(0.0)));
    }

    #[tokio::test]
    async fn an_append_handed_back_is_counted_once() {
        // The wrapper keeps the default `append_now`: always handed back.
        let wrapper = FallbackStorage::new(Arc::new(MemoryStorage::new(10)), FallbackOptions::default());
        let counted = appends_counted(Arc::new(wrapper), false).await;
        assert_eq!(counted, (Some(3.0), Some(0.0)));
    }
}
