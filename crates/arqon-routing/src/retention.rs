//! A room's `history_size` and `history_ttl_s` (PROTOCOL.md section 8.4),
//! applied to what `history` returns and `since` replays: the storage
//! backend keeps what the global limits allow, and a room's options narrow
//! what clients see of it.

use arqon_protocol::Timestamp;
use arqon_storage::{Since, StoredMessage};

use crate::RoomOptions;

/// Whether `message` is past the room's time to live at `now`.
fn expired(options: &RoomOptions, now: Timestamp, message: &StoredMessage) -> bool {
    if options.history_ttl_s == 0 {
        return false;
    }
    let ttl_ms = i64::try_from(options.history_ttl_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    // A frame without a readable time is kept rather than guessed at.
    message.frame.timestamp().is_some_and(|at| now.unix_ms().saturating_sub(at.unix_ms()) > ttl_ms)
}

/// The newest messages of a `history` answer (oldest first) the room lets
/// clients see.
pub(crate) fn history(options: &RoomOptions, now: Timestamp, mut messages: Vec<StoredMessage>) -> Vec<StoredMessage> {
    messages.retain(|m| !expired(options, now, m));
    if let Some(size) = options.history_size
        && messages.len() > size
    {
        messages.drain(..messages.len() - size);
    }
    messages
}

/// `history`'s page of `window` (every visible message, oldest first): the
/// newest `limit` older than `before` (an id outside the window: nothing).
pub(crate) fn page(
    mut window: Vec<StoredMessage>,
    limit: usize,
    before: Option<arqon_protocol::MessageId>,
) -> Vec<StoredMessage> {
    if let Some(before) = before {
        let end = window.iter().position(|m| m.id == before).unwrap_or(0);
        window.truncate(end);
    }
    if window.len() > limit {
        window.drain(..window.len() - limit);
    }
    window
}

/// A `since` replay as the room lets clients see it: a replay that had to
/// leave out expired or trimmed messages says `truncated`.
pub(crate) fn replay(options: &RoomOptions, now: Timestamp, since: Since) -> Since {
    let before = since.messages.len();
    let messages = history(options, now, since.messages);
    Since { truncated: since.truncated || messages.len() < before, messages }
}

#[cfg(test)]
mod tests {
    use arqon_protocol::encode::MessageFrame;
    use arqon_protocol::{IdGenerator, Name};

    use super::*;

    fn message(ids: &mut IdGenerator, at_ms: i64) -> StoredMessage {
        let room = Name::parse("r").unwrap();
        let id = ids.message_id();
        let frame = MessageFrame {
            id,
            timestamp: Timestamp::from_unix_ms(at_ms),
            from: ids.client_id().into(),
            user: None,
            room: Some(&room),
            channel: None,
            payload: None,
            meta: None,
        }
        .encode();
        StoredMessage { id, frame }
    }

    #[test]
    fn size_and_age_narrow_what_is_seen() {
        let mut ids = IdGenerator::new();
        let now = Timestamp::from_unix_ms(100_000);
        let kept: Vec<StoredMessage> = [10_000, 95_000, 96_000, 97_000].iter().map(|&t| message(&mut ids, t)).collect();
        let options = RoomOptions { history_size: Some(2), history_ttl_s: 60, ..RoomOptions::default() };
        let seen = history(&options, now, kept.clone());
        assert_eq!(seen, kept[2..].to_vec());
        let since = replay(&options, now, Since { messages: kept.clone(), truncated: false });
        assert!(since.truncated);
        assert_eq!(since.messages, kept[2..].to_vec());
        let all = replay(&RoomOptions::default(), now, Since { messages: kept.clone(), truncated: false });
        assert!(!all.truncated);
        assert_eq!(all.messages.len(), 4);
        assert_eq!(page(kept.clone(), 2, None), kept[2..].to_vec());
        assert_eq!(page(kept.clone(), 10, Some(kept[2].id)), kept[..2].to_vec());
        assert_eq!(page(kept.clone(), 1, Some(kept[2].id)), kept[1..2].to_vec());
        assert!(page(kept.clone(), 10, Some(ids.message_id())).is_empty(), "a cursor outside the window");
    }
}
