//! Helpers for writing storage tests: real message envelopes, ids in an
//! order that is not id order, and short forms of common calls.
//!
//! The checks use them, and a backend crate may use them for its own tests
//! beyond the contract (as arqon-storage does for the memory backend's byte
//! budgets).

use std::collections::VecDeque;

use arqon_protocol::encode::MessageFrame;
use arqon_protocol::{ChannelKey, IdGenerator, MessageId, Timestamp};
use arqon_storage::{Appended, Storage, StoredMessage};

/// What a failed storage call panics with (followed by the error).
pub(crate) const CALL: &str = "the storage call failed";

/// The channel `room`/`channel`; panics on a name the protocol refuses.
pub fn key(room: &str, channel: &str) -> ChannelKey {
    ChannelKey::parse(room, channel).expect("a valid room and channel name")
}

/// A message as the bus would store it: the real encoded envelope.
pub fn message(key: &ChannelKey, id: MessageId) -> StoredMessage {
    let frame = MessageFrame {
        id,
        timestamp: Timestamp::from_unix_ms(1_700_000_000_000),
        from: IdGenerator::new().client_id().into(),
        user: None,
        room: Some(&key.room),
        channel: Some(&key.channel),
        payload: None,
        meta: None,
    }
    .encode();
    StoredMessage { id, frame }
}

/// `n` fresh ids in an append order that is neither ascending nor descending
/// id order: newest, oldest, second newest, second oldest, ...
pub fn ids_out_of_order(n: usize) -> Vec<MessageId> {
    let mut generator = IdGenerator::new();
    let mut sorted: VecDeque<MessageId> = (0..n).map(|_| generator.message_id()).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(newest) = sorted.pop_back() {
        order.push(newest);
        if let Some(oldest) = sorted.pop_front() {
            order.push(oldest);
        }
    }
    order
}

/// One id that is never appended anywhere.
pub fn stranger() -> MessageId {
    IdGenerator::new().message_id()
}

/// Appends `ids` in order, checking each is stored; returns the messages.
pub async fn fill(storage: &dyn Storage, key: &ChannelKey, ids: &[MessageId]) -> Vec<StoredMessage> {
    let mut stored = Vec::with_capacity(ids.len());
    for &id in ids {
        let msg = message(key, id);
        assert_eq!(storage.append(key, msg.clone()).await.expect(CALL), Appended::Stored, "append {id}");
        stored.push(msg);
    }
    stored
}

/// The ids of `messages`, in order.
pub fn ids_of(messages: &[StoredMessage]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

/// Everything `key` keeps, oldest first (`history` with no limit).
pub async fn all(storage: &dyn Storage, key: &ChannelKey) -> Vec<StoredMessage> {
    storage.history(key, usize::MAX, None).await.expect(CALL)
}
