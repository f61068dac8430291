//! The writer thread: every write of the backend, in batches, one
//! transaction (and, with [`Durability::Immediate`], one fsync) per batch.
//!
//! Appends arrive on a queue while the previous commit syncs; the next batch
//! takes everything queued, up to [`MAX_BATCH`]. So under load many appends
//! share one commit (group commit), and a lone append waits for nothing but
//! its own. A job is answered only after the commit that holds it returned:
//! an acknowledged append is in the file (on disk, with `Immediate`).
//!
//! A batch is one transaction: if any of its writes or its commit fails,
//! nothing of it is kept and every job in it gets the error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use arqon_protocol::{ChannelKey, Timestamp};
use arqon_storage::{Appended, ChannelRecord, StoredMessage};
use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use crate::{CHANNELS, Durability, ID_LEN, IDS, LOG, RedbError, TIPS, encode, parts, window};

/// Most jobs in one transaction: bounds the time a batch holds its jobs'
/// answers back, and the memory of one transaction.
pub(crate) const MAX_BATCH: usize = 1024;

/// A write, as queued.
pub(crate) enum Op {
    Create(ChannelKey, Timestamp),
    Delete(ChannelKey),
    Append(ChannelKey, StoredMessage),
}

/// What a write did.
pub(crate) enum Outcome {
    Created(ChannelRecord, bool),
    Deleted(bool),
    Appended(Appended, Option<u64>),
}

/// A queued write and where to answer it.
pub(crate) struct Job {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<Outcome, RedbError>>,
}

/// The thread's state.
pub(crate) struct Writer {
    db: Arc<Database>,
    max_len: u64,
    durability: Durability,
    healthy: Arc<AtomicBool>,
    /// With [`Durability::Interval`]: commits not synced yet, and when the
    /// last sync was.
    unsynced: bool,
    synced_at: Instant,
}

/// The write side's tables, opened once per batch.
struct Tables<'txn> {
    channels: Table<'txn, (&'static str, &'static str), i64>,
    tips: Table<'txn, (&'static str, &'static str), (u64, u64)>,
    log: Table<'txn, (&'static str, &'static str, u64), &'static [u8]>,
    ids: Table<'txn, (&'static str, &'static str, &'static str), u64>,
}

impl Writer {
    pub(crate) fn new(db: Arc<Database>, max_len: usize, durability: Durability, healthy: Arc<AtomicBool>) -> Self {
        let max_len = u64::try_from(max_len).unwrap_or(u64::MAX);
        Writer { db, max_len, durability, healthy, unsynced: false, synced_at: Instant::now() }
    }

    /// Serves the queue until every sender is gone, then syncs what is not
    /// synced yet. Returns how many batches it committed.
    pub(crate) fn run(mut self, queue: Receiver<Job>) -> u64 {
        let mut batches = 0;
        loop {
            let first = match self.until_sync() {
                None => match queue.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
                Some(wait) => match queue.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        self.sync();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.commit(batch);
            batches += 1;
        }
        self.sync();
        batches
    }

    /// With unsynced commits, how long until the next sync is due.
    fn until_sync(&self) -> Option<Duration> {
        match self.durability {
            Durability::Interval(every) if self.unsynced => Some(every.saturating_sub(self.synced_at.elapsed())),
            _ => None,
        }
    }

    /// Whether the next commit must be durable.
    fn durable_now(&self) -> bool {
        match self.durability {
            Durability::Immediate => true,
            Durability::Interval(every) => self.synced_at.elapsed() >= every,
        }
    }

    /// Applies a batch in one transaction, commits, and answers every job.
    fn commit(&mut self, batch: Vec<Job>) {
        let durable = self.durable_now();
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|job| (job.op, job.reply)).unzip();
        let result = self.apply(&ops, durable);
        self.healthy.store(result.is_ok(), Ordering::Relaxed);
        match result {
            Ok(outcomes) => {
                if durable {
                    self.synced_at = Instant::now();
                    self.unsynced = false;
                } else {
                    self.unsynced = true;
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // The caller may have gone (its request was dropped); the
                    // write stands all the same.
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                tracing::warn!(%error, jobs = replies.len(), "a redb write transaction failed; nothing of it was kept");
                let message = error.to_string();
                for reply in replies {
                    let _ = reply.send(Err(RedbError::Write(message.clone())));
                }
            }
        }
    }

    fn apply(&self, ops: &[Op], durable: bool) -> Result<Vec<Outcome>, RedbError> {
        let mut txn = self.db.begin_write()?;
        set_durability(&mut txn, durable)?;
        let outcomes = {
            let mut tables = Tables {
                channels: txn.open_table(CHANNELS)?,
                tips: txn.open_table(TIPS)?,
                log: txn.open_table(LOG)?,
                ids: txn.open_table(IDS)?,
            };
            ops.iter()
                .map(|op| match op {
                    Op::Create(key, at) => tables.create(key, *at),
                    Op::Delete(key) => tables.delete(key),
                    Op::Append(key, message) => tables.append(key, message, self.max_len),
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        txn.commit()?;
        Ok(outcomes)
    }

    /// With [`Durability::Interval`], makes the commits so far durable with
    /// an empty durable commit.
    fn sync(&mut self) {
        if !self.unsynced {
            return;
        }
        let result = self.db.begin_write().map_err(RedbError::from).and_then(|mut txn| {
            set_durability(&mut txn, true)?;
            Ok(txn.commit()?)
        });
        match result {
            Ok(()) => {
                self.unsynced = false;
                self.synced_at = Instant::now();
            }
            Err(error) => {
                tracing::warn!(%error, "syncing the redb file failed; retrying at the next interval");
                self.synced_at = Instant::now();
            }
        }
        self.healthy.store(!self.unsynced, Ordering::Relaxed);
    }
}

fn set_durability(txn: &mut WriteTransaction, durable: bool) -> Result<(), RedbError> {
    let level = if durable { redb::Durability::Immediate } else { redb::Durability::None };
    txn.set_durability(level).map_err(|e| RedbError::Database(Box::new(e.into())))
}

impl Tables<'_> {
    fn create(&mut self, key: &ChannelKey, created_at: Timestamp) -> Result<Outcome, RedbError> {
        let (room, channel) = parts(key);
        let existing = self.channels.get((room, channel))?.map(|at| at.value());
        if let Some(at) = existing {
            let record = ChannelRecord { key: key.clone(), created_at: Timestamp::from_unix_ms(at) };
            return Ok(Outcome::Created(record, false));
        }
        self.channels.insert((room, channel), created_at.unix_ms())?;
        Ok(Outcome::Created(ChannelRecord { key: key.clone(), created_at }, true))
    }

    /// Forgets the record, the window (so positions start again at 1) and
    /// every kept message and id.
    fn delete(&mut self, key: &ChannelKey) -> Result<Outcome, RedbError> {
        let (room, channel) = parts(key);
        let record = self.channels.remove((room, channel))?.is_some();
        let tip = self.tips.remove((room, channel))?.map(|tip| tip.value());
        if let Some((first, last)) = tip {
            for position in first..=last {
                self.evict(key, position)?;
            }
        }
        Ok(Outcome::Deleted(record || tip.is_some()))
    }

    fn append(&mut self, key: &ChannelKey, message: &StoredMessage, max_len: u64) -> Result<Outcome, RedbError> {
        let (room, channel) = parts(key);
        let id = message.id.to_string();
        if self.ids.get((room, channel, id.as_str()))?.is_some() {
            return Ok(Outcome::Appended(Appended::Duplicate, None));
        }
        let (mut first, last) = window(&self.tips, key)?;
        let position = last + 1;
        self.log.insert((room, channel, position), encode(message).as_slice())?;
        self.ids.insert((room, channel, id.as_str()), position)?;
        while position + 1 - first > max_len {
            self.evict(key, first)?;
            first += 1;
        }
        self.tips.insert((room, channel), (first, position))?;
        Ok(Outcome::Appended(Appended::Stored, Some(position)))
    }

    /// Removes the message at `position` and its id.
    fn evict(&mut self, key: &ChannelKey, position: u64) -> Result<(), RedbError> {
        let (room, channel) = parts(key);
        let removed = self.log.remove((room, channel, position))?;
        if let Some(value) = removed {
            let value = value.value();
            if let Some(id) = value.get(..ID_LEN).and_then(|id| std::str::from_utf8(id).ok()) {
                self.ids.remove((room, channel, id))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::mpsc;

    use arqon_protocol::{Frame, IdGenerator};

    use super::*;

    /// Appends queued while the writer is busy go into one transaction, and
    /// each is still answered with its own outcome.
    #[test]
    fn queued_appends_share_one_commit() {
        let dir = std::env::temp_dir().join(format!("arqon-redb-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Arc::new(Database::create(dir.join("w.redb")).unwrap());
        let writer = Writer::new(db, 100, Durability::Immediate, Arc::new(AtomicBool::new(true)));
        let (jobs, queue) = mpsc::channel();
        let key = ChannelKey::parse("r", "c").unwrap();
        let mut ids = IdGenerator::new();
        let mut answers = Vec::new();
        for _ in 0..300 {
            let id = ids.message_id();
            let message = StoredMessage { id, frame: Frame::from_text(format!(r#"{{"id":"{id}"}}"#)) };
            let (reply, answer) = oneshot::channel();
            jobs.send(Job { op: Op::Append(key.clone(), message), reply }).unwrap();
            answers.push(answer);
        }
        drop(jobs);
        assert_eq!(writer.run(queue), 1, "300 queued appends, one commit");
        for (n, mut answer) in answers.into_iter().enumerate() {
            match answer.try_recv().unwrap().unwrap() {
                Outcome::Appended(appended, position) => {
                    assert_eq!((appended, position), (Appended::Stored, Some(n as u64 + 1)));
                }
                _ => panic!("an append answered with another outcome"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
