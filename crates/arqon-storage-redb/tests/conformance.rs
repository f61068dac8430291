//! The redb backend through the conformance kit, then what goes beyond the
//! contract: history survives closing and reopening the file, a file that
//! cannot be opened is a clear error, and the cheaper durability keeps the
//! same rules.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use arqon_protocol::Timestamp;
use arqon_storage::{After, Appended, ChannelRecord, ChannelStats, Storage, StorageError};
use arqon_storage_conformance::conformance;
use arqon_storage_conformance::fixtures::{all, fill, ids_of, ids_out_of_order, key};
use arqon_storage_redb::{Durability, RedbError, RedbOptions, RedbStorage};

/// A fresh backend in a directory of its own, removed with the process'
/// temporary files (the directory is leaked so that it outlives the check).
fn fresh(capacity: usize, durability: Durability) -> Arc<dyn Storage> {
    let dir = tempfile::tempdir().unwrap().keep();
    let options = RedbOptions { max_len: capacity, durability, ..RedbOptions::new(dir.join("history.redb")) };
    Arc::new(RedbStorage::open(options).unwrap())
}

// The one line a backend crate writes.
conformance!(redb, async |capacity| fresh(capacity, Durability::Immediate));
conformance!(redb_interval, async |capacity| fresh(capacity, Durability::Interval(Duration::from_millis(50))));

/// Everything kept (channels, messages in order, positions, the bound) is
/// there again after the backend is dropped and the file reopened, and the
/// numbering goes on where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/history.redb");
    let options = RedbOptions { max_len: 5, ..RedbOptions::new(&path) };
    let (chan, other) = (key("r", "kept"), key("s", "other"));
    let ids = ids_out_of_order(7);
    let (kept, other_kept) = {
        let storage = RedbStorage::open(options.clone()).unwrap();
        storage.create_channel(&chan, Timestamp::from_unix_ms(42)).await.unwrap();
        let stored = fill(&storage, &chan, &ids).await;
        let other_kept = fill(&storage, &other, &ids[..2]).await;
        (stored[2..].to_vec(), other_kept)
    };
    assert!(path.is_file(), "the file and its directories were created");

    let storage = RedbStorage::open(options).unwrap();
    assert_eq!(all(&storage, &chan).await, kept, "the newest 5, in append order");
    assert_eq!(all(&storage, &other).await, other_kept);
    assert_eq!(storage.stats(&chan).await.unwrap(), ChannelStats { stored: 5, last_id: Some(ids[6]) });
    assert_eq!(
        storage.channels().await.unwrap(),
        vec![ChannelRecord { key: chan.clone(), created_at: Timestamp::from_unix_ms(42) }]
    );
    // Cursors, duplicates and positions carry over.
    assert_eq!(storage.since(&chan, ids[4]).await.unwrap().messages, kept[3..]);
    let again = fill(&storage, &chan, &[]).await;
    assert!(again.is_empty());
    let retry = arqon_storage_conformance::fixtures::message(&chan, ids[6]);
    assert_eq!(storage.append_placed(&chan, retry).await.unwrap(), (Appended::Duplicate, None));
    let next = ids_out_of_order(1)[0];
    let appended = storage.append_placed(&chan, arqon_storage_conformance::fixtures::message(&chan, next)).await;
    assert_eq!(appended.unwrap(), (Appended::Stored, Some(8)));
    let placed = storage.read_placed(&chan, After::Position(0), 10).await.unwrap().unwrap();
    assert!(placed.truncated, "positions 1 to 3 were trimmed");
    assert_eq!(placed.messages.iter().map(|p| p.position).collect::<Vec<_>>(), [4, 5, 6, 7, 8]);
    assert_eq!((placed.tip, placed.tip_id), (8, Some(next)));
}

/// A path that cannot be a database file fails to open, naming the path.
#[test]
fn an_unusable_path_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();

    // Under a regular file: the directory cannot be created.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let error = RedbStorage::open(RedbOptions::new(file.join("history.redb"))).unwrap_err();
    assert!(matches!(error, RedbError::CreateDir { .. }), "{error:?}");
    assert!(error.to_string().contains("plain-file"), "{error}");

    // A directory where the file should be.
    let error = RedbStorage::open(RedbOptions::new(dir.path())).unwrap_err();
    assert!(matches!(error, RedbError::Open { .. }), "{error:?}");
    assert!(error.to_string().contains(&dir.path().display().to_string()), "{error}");

    // A file that is not a redb database.
    let corrupt = dir.path().join("corrupt.redb");
    std::fs::write(&corrupt, vec![0x5a; 64 * 1024]).unwrap();
    let error = RedbStorage::open(RedbOptions::new(&corrupt)).unwrap_err();
    assert!(matches!(error, RedbError::Open { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.starts_with("redb: cannot open ") && message.contains("corrupt.redb"), "{message}");
    // At the trait's surface: a backend error, with the same text.
    assert_eq!(StorageError::from(error), StorageError::Backend(message));
}

/// One process at a time: a second open of the same file fails while the
/// first is open, and succeeds once it is dropped.
#[test]
fn the_file_is_open_in_one_backend_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let options = RedbOptions::new(dir.path().join("history.redb"));
    let first = RedbStorage::open(options.clone()).unwrap();
    let error = RedbStorage::open(options.clone()).unwrap_err();
    assert!(matches!(error, RedbError::Open { .. }), "{error:?}");
    drop(first);
    RedbStorage::open(options).unwrap();
}

/// Many appends at once to many channels all land, in each channel's
/// order, with consecutive positions: the writer's batches keep every
/// append's own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_keep_their_positions() {
    let storage = fresh(1000, Durability::Immediate);
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                let chan = key("load", &format!("c{c}"));
                let ids = ids_out_of_order(40);
                for (n, &id) in ids.iter().enumerate() {
                    let msg = arqon_storage_conformance::fixtures::message(&chan, id);
                    let placed = storage.append_placed(&chan, msg).await.unwrap();
                    assert_eq!(placed, (Appended::Stored, Some(n as u64 + 1)));
                }
                (chan, ids)
            })
        })
        .collect();
    for task in tasks {
        let (chan, ids) = task.await.unwrap();
        assert_eq!(ids_of(&all(&*storage, &chan).await), ids);
    }
}
