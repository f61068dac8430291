//! A storage backend of the embedder's own, handed to the bus with
//! `Bus::builder(..).storage(..)`: written against the public `Storage`
//! trait only, as a third-party crate would, and used for everything the
//! configuration's backend would have done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arqon_config::StorageBackend;
use arqon_e2e::{TestServer, http, test_config};
use arqon_protocol::{ChannelKey, MessageId, Timestamp};
use arqon_server::Bus;
use arqon_storage::{
    Appended, ChannelRecord, ChannelStats, Health, MemoryStorage, Since, Storage, StorageError, StoredMessage,
    async_trait,
};
use serde_json::json;

/// Keeps history in memory and counts the appends that reach it.
#[derive(Debug)]
struct Counting {
    inner: MemoryStorage,
    appends: AtomicUsize,
}

#[async_trait]
impl Storage for Counting {
    async fn create_channel(&self, key: &ChannelKey, at: Timestamp) -> Result<(ChannelRecord, bool), StorageError> {
        self.inner.create_channel(key, at).await
    }
    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        self.inner.channels().await
    }
    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        self.inner.delete_channel(key).await
    }
    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.inner.append(key, message).await
    }
    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        self.inner.history(key, limit, before).await
    }
    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        self.inner.since(key, after).await
    }
    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        self.inner.stats(key).await
    }
    fn health(&self) -> Health {
        Health::new("counting", true)
    }
}

#[tokio::test]
async fn a_storage_of_the_embedders_own_serves_the_bus() {
    let storage = Arc::new(Counting { inner: MemoryStorage::new(100), appends: AtomicUsize::new(0) });
    // A channel the backend already knows: the bus restores it before serving.
    let known = ChannelKey::parse("r", "known").unwrap();
    storage.create_channel(&known, Timestamp::from_unix_ms(1_000)).await.unwrap();

    let mut config = test_config();
    config.monitoring.enabled = true;
    // Ignored once a storage is given: no connection is ever attempted.
    config.storage.backend = StorageBackend::Redis;
    config.storage.redis.url = "redis://127.0.0.1:1".to_owned();
    let bus = Bus::builder(&config).storage(Arc::clone(&storage) as Arc<dyn Storage>).bind().await.unwrap();
    assert!(bus.router().channels(None).iter().any(|c| c.key == known), "restored from the given storage");
    let server = TestServer::serve(bus);

    let mut client = server.client().await;
    for i in 0..3 {
        client.ok("publish", json!({"room": "r", "channel": "known", "payload": i})).await;
    }
    let history = client.ok("history", json!({"room": "r", "channel": "known", "limit": 10})).await;
    let payloads: Vec<i64> =
        history["messages"].as_array().unwrap().iter().map(|m| m["payload"].as_i64().unwrap()).collect();
    assert_eq!(payloads, [0, 1, 2]);
    assert_eq!(storage.appends.load(Ordering::SeqCst), 3, "every publish reached the given storage");
    assert_eq!(storage.inner.stats(&known).await.unwrap().stored, 3);

    let (status, body) = http(server.monitoring.unwrap(), "GET", "/status").await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["storage"]["backend"], "counting", "{body}");
    assert_eq!(body["storage"]["healthy"], true, "{body}");
    server.shutdown().await;
}
