//! The checks: one async function per rule of the [`Storage`] contract
//! (and a few more), each taking a factory, `async |capacity|` to a fresh,
//! empty `Arc<dyn Storage>` that keeps at most `capacity` messages per
//! channel.
//!
//! [`conformance!`](crate::conformance) runs each as a test of its own; call
//! one directly to run it elsewhere. Every check appends ids in an order that
//! is not id order, so a backend that sorts by id instead of keeping append
//! order fails everywhere.

use std::sync::Arc;

use arqon_protocol::{ChannelKey, Timestamp};
use arqon_storage::{
    After, AppendNow, Appended, ChannelRecord, ChannelStats, Since, Storage, StorageError, StoredMessage, append_fast,
};

use crate::fixtures::{CALL, all, fill, ids_of, ids_out_of_order, key, message, stranger};

/// Order is append order, never id order, and frames come back unchanged.
pub async fn append_order_is_kept(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "order");
    let ids = ids_out_of_order(20);
    let stored = fill(&*storage, &chan, &ids).await;

    assert_eq!(all(&*storage, &chan).await, stored);
    let since = storage.since(&chan, ids[4]).await.expect(CALL);
    assert_eq!(since.messages, stored[5..]);
    assert_eq!(storage.stats(&chan).await.expect(CALL).last_id, ids.last().copied());
}

/// A kept id is a retry: `Duplicate`, nothing stored, order unchanged.
pub async fn duplicate_changes_nothing(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "dup");
    let ids = ids_out_of_order(5);
    let stored = fill(&*storage, &chan, &ids).await;

    for &again in [ids[0], ids[2], ids[4]].iter() {
        // A retry may carry a different frame; the kept one must win.
        let retry = message(&key("r", "elsewhere"), again);
        assert_eq!(storage.append(&chan, retry).await.expect(CALL), Appended::Duplicate);
    }
    assert_eq!(all(&*storage, &chan).await, stored);
    let stats = storage.stats(&chan).await.expect(CALL);
    assert_eq!(stats, ChannelStats { stored: 5, last_id: Some(ids[4]) });
}

/// A full channel evicts its oldest message; cursors naming it are unknown.
pub async fn history_is_bounded(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(10).await;
    let chan = key("r", "bounded");
    let ids = ids_out_of_order(11);
    let stored = fill(&*storage, &chan, &ids[..10]).await;
    assert_eq!(all(&*storage, &chan).await, stored, "exactly full: nothing evicted yet");

    fill(&*storage, &chan, &ids[10..]).await;
    let kept = all(&*storage, &chan).await;
    assert_eq!(ids_of(&kept), ids[1..]);
    assert_eq!(storage.stats(&chan).await.expect(CALL), ChannelStats { stored: 10, last_id: Some(ids[10]) });

    let evicted = ids[0];
    assert_eq!(storage.history(&chan, 5, Some(evicted)).await, Err(StorageError::UnknownCursor(evicted)));
    let since = storage.since(&chan, evicted).await.expect(CALL);
    assert_eq!(since, Since { messages: kept.clone(), truncated: true });
    // The oldest kept message is still a valid cursor.
    let since = storage.since(&chan, ids[1]).await.expect(CALL);
    assert_eq!(since, Since { messages: kept[1..].to_vec(), truncated: false });
}

/// `history(limit, before)`: the newest `limit` strictly older, oldest first.
pub async fn history_limit_and_before(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "paging");
    let ids = ids_out_of_order(10);
    let stored = fill(&*storage, &chan, &ids).await;

    let history = |limit, before| storage.history(&chan, limit, before);
    assert_eq!(history(3, None).await.expect(CALL), stored[7..]);
    assert_eq!(history(10, None).await.expect(CALL), stored);
    assert_eq!(history(50, None).await.expect(CALL), stored, "limit beyond what is kept");
    assert_eq!(history(3, Some(ids[6])).await.expect(CALL), stored[3..6]);
    assert_eq!(history(1, Some(ids[9])).await.expect(CALL), stored[8..9]);
    assert_eq!(history(50, Some(ids[6])).await.expect(CALL), stored[..6], "limit beyond what is older");
    assert_eq!(history(5, Some(ids[0])).await.expect(CALL), Vec::new(), "nothing older than the oldest");

    // Paging backwards with `before` = oldest of the previous page covers all, once.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = history(4, before).await.expect(CALL);
        let Some(oldest) = page.first() else { break };
        before = Some(oldest.id);
        pages.splice(0..0, page);
    }
    assert_eq!(pages, stored);

    let unknown = stranger();
    assert_eq!(history(3, Some(unknown)).await, Err(StorageError::UnknownCursor(unknown)));
}

/// `since(after)`: exactly the messages after a kept cursor, not truncated.
pub async fn since_returns_what_follows(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "since");
    let ids = ids_out_of_order(8);
    let stored = fill(&*storage, &chan, &ids).await;

    let since = storage.since(&chan, ids[2]).await.expect(CALL);
    assert_eq!(since, Since { messages: stored[3..].to_vec(), truncated: false });
    let since = storage.since(&chan, ids[7]).await.expect(CALL);
    assert_eq!(since, Since { messages: Vec::new(), truncated: false }, "cursor is the newest");
    let since = storage.since(&chan, stranger()).await.expect(CALL);
    assert_eq!(since, Since { messages: stored, truncated: true }, "cursor never kept");
}

/// `stats`: how many are kept and the newest (last appended) id.
pub async fn stats_count_and_newest(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "stats");
    let ids = ids_out_of_order(6);
    for (n, &id) in ids.iter().enumerate() {
        fill(&*storage, &chan, &[id]).await;
        let stats = storage.stats(&chan).await.expect(CALL);
        assert_eq!(stats, ChannelStats { stored: n as u64 + 1, last_id: Some(id) });
    }
}

/// `create_channel` is idempotent and keeps the original record.
pub async fn create_channel_is_idempotent(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "created");
    let first = Timestamp::from_unix_ms(1_000);
    let later = Timestamp::from_unix_ms(2_000);
    let original = ChannelRecord { key: chan.clone(), created_at: first };

    assert_eq!(storage.create_channel(&chan, first).await.expect(CALL), (original.clone(), true));
    assert_eq!(storage.create_channel(&chan, later).await.expect(CALL), (original.clone(), false));
    assert_eq!(storage.channels().await.expect(CALL), vec![original]);
}

/// `channels` lists every record, across rooms.
pub async fn channels_lists_every_record(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    assert_eq!(storage.channels().await.expect(CALL), Vec::new(), "a fresh backend has none");

    let mut expected = Vec::new();
    for (n, (room, channel)) in [("a", "one"), ("a", "two"), ("b", "one")].into_iter().enumerate() {
        let record = ChannelRecord { key: key(room, channel), created_at: Timestamp::from_unix_ms(n as i64) };
        storage.create_channel(&record.key, record.created_at).await.expect(CALL);
        expected.push(record);
    }
    // The trait promises no listing order.
    let mut listed = storage.channels().await.expect(CALL);
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(listed, expected);
}

/// `delete_channel` forgets record and history, and says whether it existed.
pub async fn delete_channel_forgets_everything(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let doomed = key("r", "doomed");
    let survivor = key("r", "survivor");
    for chan in [&doomed, &survivor] {
        storage.create_channel(chan, Timestamp::from_unix_ms(5)).await.expect(CALL);
    }
    let ids = ids_out_of_order(4);
    fill(&*storage, &doomed, &ids).await;
    let kept = fill(&*storage, &survivor, &ids_out_of_order(2)).await;

    assert!(storage.delete_channel(&doomed).await.expect(CALL));
    assert_eq!(all(&*storage, &doomed).await, Vec::new());
    assert_eq!(storage.stats(&doomed).await.expect(CALL), ChannelStats::default());
    assert_eq!(storage.since(&doomed, ids[0]).await.expect(CALL), Since { messages: Vec::new(), truncated: true });
    let listed: Vec<ChannelKey> = storage.channels().await.expect(CALL).into_iter().map(|r| r.key).collect();
    assert_eq!(listed, vec![survivor.clone()]);
    assert!(!storage.delete_channel(&doomed).await.expect(CALL), "second delete");
    assert_eq!(all(&*storage, &survivor).await, kept, "other channels untouched");

    // A deleted channel starts from scratch: its old ids are not duplicates.
    let created = Timestamp::from_unix_ms(9);
    let (record, fresh) = storage.create_channel(&doomed, created).await.expect(CALL);
    assert!(fresh);
    assert_eq!(record.created_at, created);
    fill(&*storage, &doomed, &ids[..1]).await;
}

/// A channel never appended to: empty history, zero stats, truncated since.
pub async fn unknown_channel_is_empty(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let ghost = key("r", "ghost");

    assert_eq!(storage.history(&ghost, 50, None).await.expect(CALL), Vec::new());
    assert_eq!(storage.stats(&ghost).await.expect(CALL), ChannelStats::default());
    assert_eq!(storage.since(&ghost, stranger()).await.expect(CALL), Since { messages: Vec::new(), truncated: true });
    // A cursor cannot name a kept message where nothing is kept.
    let cursor = stranger();
    assert_eq!(storage.history(&ghost, 50, Some(cursor)).await, Err(StorageError::UnknownCursor(cursor)));
    assert!(!storage.delete_channel(&ghost).await.expect(CALL));

    // Recorded but never appended to: the same.
    storage.create_channel(&ghost, Timestamp::from_unix_ms(0)).await.expect(CALL);
    assert_eq!(storage.history(&ghost, 50, None).await.expect(CALL), Vec::new());
    assert_eq!(storage.stats(&ghost).await.expect(CALL), ChannelStats::default());
}

/// Channels share nothing: history, cursors, duplicates, capacity.
pub async fn channels_are_isolated(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(3).await;
    let left = key("r", "left");
    let right = key("r", "right");
    // Same channel name in another room is another channel.
    let other_room = key("s", "left");
    let ids = ids_out_of_order(3);

    let left_kept = fill(&*storage, &left, &ids).await;
    // The same ids elsewhere are not duplicates (ids are unique per channel).
    let right_kept = fill(&*storage, &right, &ids[..1]).await;
    let other_kept = fill(&*storage, &other_room, &ids[1..]).await;

    assert_eq!(all(&*storage, &left).await, left_kept, "three and not evicted by the others");
    assert_eq!(all(&*storage, &right).await, right_kept);
    assert_eq!(all(&*storage, &other_room).await, other_kept);

    let only_left = ids_out_of_order(1)[0];
    fill(&*storage, &left, &[only_left]).await;
    assert_eq!(storage.history(&right, 5, Some(only_left)).await, Err(StorageError::UnknownCursor(only_left)));
    assert!(storage.since(&right, only_left).await.expect(CALL).truncated);
    assert_eq!(storage.stats(&right).await.expect(CALL), ChannelStats { stored: 1, last_id: Some(ids[0]) });
}

/// Appends to different channels from many tasks at once all land, in order.
pub async fn concurrent_appends_all_land(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 50;
    let storage = new(PER_TASK).await;

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                let chan = key("load", &format!("c{t}"));
                let ids = ids_out_of_order(PER_TASK);
                for &id in &ids {
                    let appended = storage.append(&chan, message(&chan, id)).await.expect(CALL);
                    assert_eq!(appended, Appended::Stored);
                    // Hand the worker over so tasks interleave, not run back to back.
                    tokio::task::yield_now().await;
                }
                (chan, ids)
            })
        })
        .collect();

    for task in tasks {
        let (chan, ids) = task.await.expect("an append task panicked");
        assert_eq!(ids_of(&all(&*storage, &chan).await), ids, "{chan}");
        assert_eq!(storage.stats(&chan).await.expect(CALL).stored, PER_TASK as u64);
    }
}

/// `append_now` then, if handed the message back, `append`: what
/// `append_fast` does, checking on the way that `Later` returns the message
/// untouched.
async fn append_now_or_later(storage: &dyn Storage, key: &ChannelKey, msg: StoredMessage) -> Appended {
    match storage.append_now(key, msg.clone()) {
        AppendNow::Done(appended) => appended.expect(CALL),
        AppendNow::Later(back) => {
            assert_eq!(back, msg, "Later must hand back the very message");
            storage.append(key, back).await.expect(CALL)
        }
    }
}

/// `append_now` (done at once or handed back) keeps `append`'s rules:
/// duplicates, trimming at the bound, append order.
pub async fn append_now_keeps_the_append_rules(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(3).await;
    let chan = key("r", "now");
    let ids = ids_out_of_order(5);
    let stored: Vec<StoredMessage> = ids.iter().map(|&id| message(&chan, id)).collect();
    for msg in &stored[..3] {
        assert_eq!(append_now_or_later(&*storage, &chan, msg.clone()).await, Appended::Stored, "{}", msg.id);
    }
    let retry = message(&key("r", "elsewhere"), ids[1]);
    assert_eq!(append_now_or_later(&*storage, &chan, retry).await, Appended::Duplicate);
    assert_eq!(all(&*storage, &chan).await, stored[..3]);

    for msg in &stored[3..] {
        assert_eq!(append_now_or_later(&*storage, &chan, msg.clone()).await, Appended::Stored, "{}", msg.id);
    }
    assert_eq!(all(&*storage, &chan).await, stored[2..], "trimmed to the newest 3");
    // The helper the router uses gives the same answers.
    assert_eq!(append_fast(&*storage, &chan, stored[4].clone()).await, Ok(Appended::Duplicate));
    assert_eq!(all(&*storage, &chan).await, stored[2..]);
}

/// A fresh backend reports itself healthy, under a name.
pub async fn fresh_backend_is_healthy(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let health = storage.health();
    assert!(!health.backend.is_empty(), "a backend has a name");
    assert!(health.healthy, "{}", health.backend);
    assert_eq!((health.journaled, health.refused), (0, 0), "{}", health.backend);
    assert_eq!(storage.ping().await, Ok(()), "{}: a fresh backend answers a ping", health.backend);
}

/// Positions, for backends that have them: `append_placed` numbers a
/// channel's messages 1, 2, 3, … in append order (a duplicate gets none) and
/// `read_placed` reads them back with the same numbers. A backend without
/// positions must say so consistently: no position from `append_placed`,
/// `None` from `read_placed`, and the messages appended all the same.
pub async fn positions_are_consistent(new: &impl AsyncFn(usize) -> Arc<dyn Storage>) {
    let storage = new(100).await;
    let chan = key("r", "placed");
    let ids = ids_out_of_order(4);
    let mut positions = Vec::new();
    for &id in &ids {
        let (appended, position) = storage.append_placed(&chan, message(&chan, id)).await.expect(CALL);
        assert_eq!(appended, Appended::Stored, "append_placed {id}");
        positions.push(position);
    }
    let (again, position) = storage.append_placed(&chan, message(&chan, ids[1])).await.expect(CALL);
    assert_eq!((again, position), (Appended::Duplicate, None), "a retry is a duplicate and has no position");
    assert_eq!(ids_of(&all(&*storage, &chan).await), ids, "append_placed appends like append");

    let read = storage.read_placed(&chan, After::Position(0), 10).await.expect(CALL);
    let Some(read) = read else {
        assert_eq!(positions, vec![None; ids.len()], "read_placed says no positions, append_placed gave some");
        return;
    };
    let numbered: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(positions, numbered.iter().copied().map(Some).collect::<Vec<_>>(), "positions are 1, 2, 3, …");
    let read_back: Vec<(u64, _)> = read.messages.iter().map(|p| (p.position, p.message.id)).collect();
    assert_eq!(read_back, numbered.iter().copied().zip(ids.iter().copied()).collect::<Vec<_>>());
    assert!(!read.truncated, "nothing was evicted");
    assert_eq!((read.tip, read.tip_id), (ids.len() as u64, ids.last().copied()));

    // After an id, and after a position, with a limit.
    let after_id = storage.read_placed(&chan, After::Id(ids[1]), 1).await.expect(CALL).expect("positions");
    let after_id: Vec<u64> = after_id.messages.iter().map(|p| p.position).collect();
    assert_eq!(after_id, [3]);
    let after_pos = storage.read_placed(&chan, After::Position(2), 10).await.expect(CALL).expect("positions");
    assert_eq!(ids_of(&after_pos.messages.into_iter().map(|p| p.message).collect::<Vec<_>>()), ids[2..]);
}
