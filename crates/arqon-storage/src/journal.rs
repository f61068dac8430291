//! The write-ahead journal on disk behind [`FallbackStorage`]: what the bus
//! accepted while its backend was unreachable, kept so that it survives the
//! bus stopping (or being killed) before the backend returns.
//!
//! # File format
//!
//! One append-only file of records, each:
//!
//! | bytes | holds |
//! |---|---|
//! | 4 | payload length `n`, little-endian |
//! | 4 | CRC-32 (IEEE) of the payload, little-endian |
//! | `n` | the payload: a kind byte, then the kind's fields |
//!
//! Kinds: `1` append (room, channel, message id, frame), `2` channel
//! recorded (room, channel, creation time), `3` channel deleted (room,
//! channel). Strings are a `u16` length then UTF-8; the frame a `u32`
//! length then its bytes.
//!
//! Reading stops at the first record that is cut short (a torn write) or
//! whose checksum does not match (a corrupt one): that record and everything
//! after it are reported, copied aside to `<file>.corrupt` and cut off, never
//! replayed. Records before it are whole and replayed.
//!
//! The file is emptied once everything in it has been written to the
//! backend, so it holds at most one outage's worth of records.
//!
//! [`FallbackStorage`]: crate::FallbackStorage

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arqon_protocol::{ChannelKey, Frame, MessageId, Timestamp};
use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::{StorageError, StoredMessage};

/// Bytes before each record's payload: length and checksum.
const HEADER: usize = 8;
/// Largest payload accepted when reading: anything longer is corruption
/// (a message frame is bounded far below this by `limits.max_message_bytes`).
const MAX_RECORD: usize = 1 << 30;
/// Journal files tried per name when another bus holds the first one.
const SLOTS: usize = 8;

const APPEND: u8 = 1;
const CREATE: u8 = 2;
const DELETE: u8 = 3;

/// When a journal write is forced to disk, as Redis's `appendfsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every record is on disk (`fdatasync`) before the append is answered:
    /// an acknowledged publish survives `kill -9` of the bus and a power
    /// loss. Concurrent appends share one sync.
    Always,
    /// Records are written to the OS at once and synced every interval: an
    /// acknowledged publish survives `kill -9` of the bus (the OS has the
    /// bytes); a power loss may lose up to one interval of them.
    Interval(Duration),
}

/// Where [`FallbackStorage`](crate::FallbackStorage) keeps its journal on
/// disk, and how often it syncs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalOptions {
    /// Directory of the journal files; created if missing.
    pub dir: PathBuf,
    /// File name stem: one backend target (e.g. one Redis and key prefix)
    /// per name, so that a journal is never written back to another one.
    /// The file is `<dir>/<name>.journal` (or `<name>-1.journal`, … when
    /// another bus holds that one).
    pub name: String,
    /// When writes reach the disk.
    pub fsync: FsyncPolicy,
}

/// One journaled operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A message accepted for a channel.
    Append(ChannelKey, StoredMessage),
    /// A channel recorded.
    Create(ChannelKey, Timestamp),
    /// A channel deleted.
    Delete(ChannelKey),
}

impl Record {
    /// The record as written: header, then payload.
    fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let mut out = vec![0; HEADER];
        let key = match self {
            Record::Append(key, _) => {
                out.push(APPEND);
                key
            }
            Record::Create(key, _) => {
                out.push(CREATE);
                key
            }
            Record::Delete(key) => {
                out.push(DELETE);
                key
            }
        };
        put_str(&mut out, key.room.as_str())?;
        put_str(&mut out, key.channel.as_str())?;
        match self {
            Record::Append(_, message) => {
                put_str(&mut out, &message.id.to_string())?;
                let frame = message.frame.bytes();
                let len = u32::try_from(frame.len()).map_err(|_| too_large())?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(frame);
            }
            Record::Create(_, at) => out.extend_from_slice(&at.unix_ms().to_le_bytes()),
            Record::Delete(_) => {}
        }
        let payload = out.len() - HEADER;
        if payload > MAX_RECORD {
            return Err(too_large());
        }
        let len = u32::try_from(payload).map_err(|_| too_large())?;
        let crc = crc32(&out[HEADER..]);
        out[..4].copy_from_slice(&len.to_le_bytes());
        out[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Parses a payload whose checksum matched; `None` if it is not a record.
    fn decode(payload: &[u8]) -> Option<Record> {
        let mut at = Cursor { bytes: payload, at: 0 };
        let kind = at.take(1)?[0];
        let key = ChannelKey::parse(at.string()?, at.string()?).ok()?;
        let record = match kind {
            APPEND => {
                let id = MessageId::parse(at.string()?).ok()?;
                let len = usize::try_from(u32::from_le_bytes(at.take(4)?.try_into().ok()?)).ok()?;
                let frame = Frame::from_utf8(Bytes::copy_from_slice(at.take(len)?)).ok()?;
                Record::Append(key, StoredMessage { id, frame })
            }
            CREATE => {
                let ms = i64::from_le_bytes(at.take(8)?.try_into().ok()?);
                Record::Create(key, Timestamp::from_unix_ms(ms))
            }
            DELETE => Record::Delete(key),
            _ => return None,
        };
        (at.at == payload.len()).then_some(record)
    }
}

fn too_large() -> StorageError {
    StorageError::Backend("journal: record too large".to_owned())
}

fn put_str(out: &mut Vec<u8>, text: &str) -> Result<(), StorageError> {
    let len = u16::try_from(text.len()).map_err(|_| too_large())?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn string(&mut self) -> Option<&'a str> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        std::str::from_utf8(self.take(usize::from(len))?).ok()
    }
}

/// What [`parse`] found in a journal file.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// The whole records, in file order.
    pub(crate) records: Vec<Record>,
    /// Bytes of whole records: where the bad tail, if any, starts.
    pub(crate) valid: usize,
    /// Bytes after `valid`: a torn or corrupt tail, never replayed.
    pub(crate) skipped: usize,
}

/// Reads records until the end, or until the first one that is cut short,
/// fails its checksum or does not parse.
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + HEADER) else { break };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else { break };
        if crc32(payload) != crc {
            break;
        }
        let Some(record) = Record::decode(payload) else { break };
        parsed.records.push(record);
        at += HEADER + len;
    }
    parsed.valid = at;
    parsed.skipped = bytes.len() - at;
    parsed
}

/// The open journal file, locked against other buses.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    /// `None` once closed. Writes hold this lock (never across an await).
    file: parking_lot::Mutex<Option<Arc<File>>>,
    /// Bytes in the file.
    len: AtomicU64,
    /// Bytes ever written, emptyings included: a position that only grows,
    /// so that a sync done before the file was emptied never counts for a
    /// record written after.
    written: AtomicU64,
    /// How much of `written` is known to be on disk; the lock makes
    /// concurrent appends share one sync (the one in progress covers them
    /// all).
    synced: tokio::sync::Mutex<u64>,
    policy: FsyncPolicy,
    /// A write failed and could not be undone: the file may end in a torn
    /// record, so nothing more is appended (appends are refused).
    broken: AtomicBool,
    /// The interval syncer, stopped on drop.
    syncer: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

/// What [`Journal::open`] read back.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) journal: Arc<Journal>,
    pub(crate) records: Vec<Record>,
    /// Bytes of a torn or corrupt tail that were cut off.
    pub(crate) skipped: u64,
}

impl Journal {
    /// Opens (creating if needed) and locks the journal named in `options`,
    /// reads its whole records back and cuts off a bad tail (reported in
    /// the log, kept aside in `<file>.corrupt`). Needs a Tokio runtime for
    /// the interval syncer.
    pub(crate) fn open(options: &JournalOptions) -> Result<Opened, StorageError> {
        std::fs::create_dir_all(&options.dir).map_err(|e| io_error(&options.dir, &e))?;
        let (path, mut file) = claim(options)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io_error(&path, &e))?;
        let parsed = parse(&bytes);
        if parsed.skipped > 0 {
            let aside = path.with_extension("journal.corrupt");
            tracing::error!(
                path = %path.display(),
                valid_records = parsed.records.len(),
                skipped_bytes = parsed.skipped,
                kept_in = %aside.display(),
                "storage journal ends in a torn or corrupt record: it and everything after it are skipped, not replayed"
            );
            let _ = std::fs::write(&aside, &bytes[parsed.valid..]);
            file.set_len(parsed.valid as u64).map_err(|e| io_error(&path, &e))?;
            file.sync_data().map_err(|e| io_error(&path, &e))?;
        }
        let journal = Arc::new(Journal {
            path,
            file: parking_lot::Mutex::new(Some(Arc::new(file))),
            len: AtomicU64::new(parsed.valid as u64),
            written: AtomicU64::new(parsed.valid as u64),
            synced: tokio::sync::Mutex::new(parsed.valid as u64),
            policy: options.fsync,
            broken: AtomicBool::new(false),
            syncer: parking_lot::Mutex::new(None),
        });
        if let FsyncPolicy::Interval(every) = options.fsync {
            let task = tokio::spawn(sync_every(Arc::downgrade(&journal), every.max(Duration::from_millis(1))));
            *journal.syncer.lock() = Some(task);
        }
        Ok(Opened { journal, records: parsed.records, skipped: parsed.skipped as u64 })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the file.
    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::SeqCst)
    }

    /// Appends `record`; returns once it is as durable as the policy
    /// promises (synced with [`FsyncPolicy::Always`], handed to the OS
    /// otherwise).
    pub(crate) async fn append(&self, record: &Record) -> Result<(), StorageError> {
        let encoded = record.encode()?;
        let written = self.write(&encoded)?;
        if self.policy == FsyncPolicy::Always {
            self.sync_to(written).await?;
        }
        Ok(())
    }

    /// Writes bytes at the end of the file; returns the new `written`.
    fn write(&self, encoded: &[u8]) -> Result<u64, StorageError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable(format!(
                "journal {} failed earlier and takes no more writes",
                self.path.display()
            )));
        }
        let guard = self.file.lock();
        let file = guard.as_ref().ok_or_else(|| closed(&self.path))?;
        let before = self.len.load(Ordering::SeqCst);
        if let Err(error) = (&**file).write_all(encoded) {
            // Undo a partial write, so that the file ends on a whole record.
            if file.set_len(before).is_err() {
                self.broken.store(true, Ordering::SeqCst);
            }
            return Err(io_error(&self.path, &error));
        }
        self.len.store(before + encoded.len() as u64, Ordering::SeqCst);
        Ok(self.written.fetch_add(encoded.len() as u64, Ordering::SeqCst) + encoded.len() as u64)
    }

    /// Makes sure everything up to position `written` is on disk.
    async fn sync_to(&self, written: u64) -> Result<(), StorageError> {
        let mut synced = self.synced.lock().await;
        if *synced >= written {
            return Ok(());
        }
        let target = self.written.load(Ordering::SeqCst);
        let file = self.file.lock().clone().ok_or_else(|| closed(&self.path))?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || file.sync_data().map_err(|e| io_error(&path, &e)))
            .await
            .map_err(|e| StorageError::Backend(format!("journal sync task: {e}")))??;
        *synced = target;
        Ok(())
    }

    /// Syncs everything written so far.
    pub(crate) async fn sync(&self) -> Result<(), StorageError> {
        self.sync_to(self.written.load(Ordering::SeqCst)).await
    }

    /// Empties the file: everything in it has been written to the backend.
    /// `still_empty` is checked under the write lock, so that no record
    /// written meanwhile is lost.
    pub(crate) fn truncate_if(&self, still_empty: impl FnOnce() -> bool) -> Result<bool, StorageError> {
        let guard = self.file.lock();
        let Some(file) = guard.as_ref() else { return Ok(false) };
        if self.len.load(Ordering::SeqCst) == 0 || !still_empty() {
            return Ok(false);
        }
        file.set_len(0).map_err(|e| io_error(&self.path, &e))?;
        self.len.store(0, Ordering::SeqCst);
        Ok(true)
    }

    /// Closes the file (releasing its lock; an empty file is removed
    /// first); later writes fail.
    pub(crate) fn close(&self) {
        if let Some(task) = self.syncer.lock().take() {
            task.abort();
        }
        if let Some(file) = self.file.lock().take() {
            if self.len.load(Ordering::SeqCst) == 0 {
                let _ = std::fs::remove_file(&self.path);
            } else {
                let _ = file.sync_data();
            }
            let _ = file.unlock();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Opens and locks the first free journal file of this name.
fn claim(options: &JournalOptions) -> Result<(PathBuf, File), StorageError> {
    for slot in 0..SLOTS {
        let name =
            if slot == 0 { format!("{}.journal", options.name) } else { format!("{}-{slot}.journal", options.name) };
        let path = options.dir.join(name);
        let file =
            OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(|e| io_error(&path, &e))?;
        match file.try_lock() {
            // The bus that held it may have removed it (empty) before
            // unlocking: then this lock is on a file no one will read.
            Ok(()) if !same_file(&path, &file) => continue,
            Ok(()) => return Ok((path, file)),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&path, &e)),
        }
    }
    Err(StorageError::Backend(format!(
        "journal: {SLOTS} buses already hold the journals named {:?} in {}",
        options.name,
        options.dir.display()
    )))
}

/// Whether `path` still names the open `file`.
#[cfg(unix)]
fn same_file(path: &Path, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(named), Ok(open)) => (named.dev(), named.ino()) == (open.dev(), open.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_path: &Path, _file: &File) -> bool {
    true
}

/// The interval syncer: syncs whatever was written since the last sync.
async fn sync_every(journal: Weak<Journal>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(journal) = journal.upgrade() else { return };
        if let Err(error) = journal.sync().await {
            tracing::warn!(%error, "storage journal sync failed");
        }
    }
}

fn io_error(path: &Path, error: &std::io::Error) -> StorageError {
    StorageError::Unavailable(format!("journal {}: {error}", path.display()))
}

fn closed(path: &Path) -> StorageError {
    StorageError::Unavailable(format!("journal {} is closed", path.display()))
}

/// CRC-32 (IEEE 802.3, the one of zip and PNG), table-driven.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |crc, &byte| TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8))
}

/// A stable 64-bit FNV-1a hash, for journal file names derived from a
/// backend's address.
pub fn name_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key(channel: &str) -> ChannelKey {
        ChannelKey::parse("room", channel).unwrap()
    }

    fn message(n: u64) -> StoredMessage {
        let id = arqon_protocol::IdGenerator::new().message_id();
        StoredMessage { id, frame: Frame::from_text(format!("{{\"n\":{n}}}")) }
    }

    fn records() -> Vec<Record> {
        vec![
            Record::Create(key("a"), Timestamp::from_unix_ms(1_700_000_000_000)),
            Record::Append(key("a"), message(1)),
            Record::Append(key("b"), message(2)),
            Record::Delete(key("b")),
            Record::Append(key("a"), message(3)),
        ]
    }

    fn file(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for record in records {
            bytes.extend(record.encode().unwrap());
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn whole_records_read_back_exactly() {
        let records = records();
        let (bytes, _) = file(&records);
        let parsed = parse(&bytes);
        assert_eq!(parsed.records, records);
        assert_eq!((parsed.valid, parsed.skipped), (bytes.len(), 0));
    }

    #[test]
    fn a_record_cut_anywhere_is_skipped_with_everything_after_it() {
        let records = records();
        let (bytes, ends) = file(&records);
        let mut start = 0;
        for (whole, &end) in ends.iter().enumerate() {
            for cut in start + 1..end {
                let parsed = parse(&bytes[..cut]);
                assert_eq!(parsed.records, records[..whole], "cut at {cut}");
                assert_eq!((parsed.valid, parsed.skipped), (start, cut - start), "cut at {cut}");
            }
            start = end;
        }
    }

    #[test]
    fn a_flipped_byte_stops_the_replay_at_that_record() {
        let records = records();
        let (bytes, ends) = file(&records);
        let mut start = 0;
        for (whole, &end) in ends.iter().enumerate() {
            for at in start..end {
                let mut bad = bytes.clone();
                bad[at] ^= 0x20;
                let parsed = parse(&bad);
                assert_eq!(parsed.records, records[..whole], "flip at {at}");
                assert_eq!((parsed.valid, parsed.skipped), (start, bytes.len() - start), "flip at {at}");
            }
            start = end;
        }
    }

    #[test]
    fn garbage_after_valid_records_is_skipped() {
        let records = records();
        let (mut bytes, _) = file(&records);
        let valid = bytes.len();
        bytes.extend_from_slice(b"\x05\x00\x00\x00garbage that is no record");
        let parsed = parse(&bytes);
        assert_eq!(parsed.records, records);
        assert_eq!((parsed.valid, parsed.skipped), (valid, bytes.len() - valid));
        // Zeros (a file extended but never written, after a crash) too.
        let (mut bytes, _) = file(&records);
        bytes.extend_from_slice(&[0; 64]);
        let parsed = parse(&bytes);
        assert_eq!((parsed.records.len(), parsed.skipped), (records.len(), 64));
    }
}
