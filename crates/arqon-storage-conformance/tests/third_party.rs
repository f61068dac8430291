//! A backend written as a third-party crate would write it: against the
//! public API of `arqon-storage` and `arqon-protocol` alone (plus std), run
//! through the kit with one line. Passing the same checks as the backends
//! that ship with the bus shows that anyone can write a backend crate
//! against the `Storage` trait.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arqon_protocol::{ChannelKey, MessageId, Timestamp};
use arqon_storage::{
    AppendNow, Appended, ChannelRecord, ChannelStats, FallbackOptions, FallbackStorage, Health, MemoryStorage, Since,
    Storage, StorageError, StoredMessage, append_fast, async_trait,
};
use arqon_storage_conformance::fixtures::{all, key, message, stranger};

/// A deliberately naive backend: linear scans over `Vec`s under one lock.
///
/// This test binary is its own crate, and this type uses nothing but the
/// public API of `arqon-storage` and `arqon-protocol` (plus std). Passing the
/// same suite as [`MemoryStorage`] shows that anyone can write a backend crate
/// against the `Storage` trait alone.
#[derive(Debug)]
struct VecStorage {
    capacity: usize,
    state: Mutex<VecState>,
}

#[derive(Debug, Default)]
struct VecState {
    records: Vec<ChannelRecord>,
    logs: HashMap<ChannelKey, Vec<StoredMessage>>,
}

impl VecStorage {
    fn new(capacity: usize) -> Self {
        VecStorage { capacity, state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, VecState> {
        // No code path panics while holding the lock, so poison carries no meaning.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Storage for VecStorage {
    async fn create_channel(
        &self,
        key: &ChannelKey,
        created_at: Timestamp,
    ) -> Result<(ChannelRecord, bool), StorageError> {
        let mut state = self.state();
        if let Some(existing) = state.records.iter().find(|r| &r.key == key) {
            return Ok((existing.clone(), false));
        }
        let record = ChannelRecord { key: key.clone(), created_at };
        state.records.push(record.clone());
        Ok((record, true))
    }

    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        Ok(self.state().records.clone())
    }

    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        let mut state = self.state();
        let records_before = state.records.len();
        state.records.retain(|r| &r.key != key);
        let had_log = state.logs.remove(key).is_some();
        Ok(had_log || state.records.len() != records_before)
    }

    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        let mut state = self.state();
        let log = state.logs.entry(key.clone()).or_default();
        if log.iter().any(|m| m.id == message.id) {
            return Ok(Appended::Duplicate);
        }
        log.push(message);
        let excess = log.len().saturating_sub(self.capacity);
        log.drain(..excess);
        Ok(Appended::Stored)
    }

    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let state = self.state();
        let log = state.logs.get(key).map_or(&[][..], Vec::as_slice);
        let end = match before {
            Some(id) => log.iter().position(|m| m.id == id).ok_or(StorageError::UnknownCursor(id))?,
            None => log.len(),
        };
        Ok(log[end.saturating_sub(limit)..end].to_vec())
    }

    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        let state = self.state();
        let log = state.logs.get(key).map_or(&[][..], Vec::as_slice);
        Ok(match log.iter().position(|m| m.id == after) {
            Some(at) => Since { messages: log[at + 1..].to_vec(), truncated: false },
            None => Since { messages: log.to_vec(), truncated: true },
        })
    }

    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        let state = self.state();
        let log = state.logs.get(key).map_or(&[][..], Vec::as_slice);
        Ok(ChannelStats { stored: log.len() as u64, last_id: log.last().map(|m| m.id) })
    }

    fn health(&self) -> Health {
        Health::new("vec", true)
    }
}

/// The provided `append_now` (kept by this third-party backend, and by the
/// wrapper, which must not let an append overtake its journal) does nothing
/// and hands back the very message, for `append` to store.
#[tokio::test]
async fn the_default_append_now_hands_the_message_back() {
    let chan = key("r", "later");
    let wrapper = FallbackStorage::new(Arc::new(MemoryStorage::new(10)), FallbackOptions::default());
    let backends: [Arc<dyn Storage>; 2] = [Arc::new(VecStorage::new(10)), Arc::new(wrapper)];
    for storage in backends {
        let backend = storage.health().backend;
        let msg = message(&chan, stranger());
        assert_eq!(storage.append_now(&chan, msg.clone()), AppendNow::Later(msg.clone()), "{backend}");
        assert_eq!(all(&*storage, &chan).await, Vec::new(), "{backend}: Later stored nothing");
        assert_eq!(append_fast(&*storage, &chan, msg.clone()).await, Ok(Appended::Stored), "{backend}");
        assert_eq!(all(&*storage, &chan).await, vec![msg], "{backend}");
    }
}

// The one line a backend crate writes.
arqon_storage_conformance::conformance!(vec_storage, async |capacity| Arc::new(VecStorage::new(capacity))
    as Arc<dyn Storage>);

/// The kit's list of checks is the one its macro runs: a check missing
/// from the macro would go unrun, one missing from `CHECKS` undocumented.
#[test]
fn the_macro_runs_every_listed_check() {
    let source = include_str!("../src/lib.rs");
    let macro_body = source.split("(@list $backend:ident").nth(1).unwrap();
    let listed = macro_body.split('[').nth(1).unwrap().split(']').next().unwrap();
    let listed: Vec<&str> = listed.split(',').map(str::trim).filter(|name| !name.is_empty()).collect();
    assert_eq!(listed, arqon_storage_conformance::CHECKS);
}
