//! The Redis Streams backend: history that survives a restart of the bus.
//!
//! # Key layout
//!
//! With the default prefix `arqon:`, a channel `room`/`chan` owns three keys,
//! all carrying the hash tag `{room:chan}` (so that they share a cluster
//! slot and one Lua script may touch all three), plus one field of a
//! registry hash shared by all channels:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `arqon:channels` | hash | field `room:chan` → creation time (Unix ms) |
//! | `arqon:log:{room:chan}` | stream | one entry per message: fields `id` (the `arq_` id) and `frame` (the envelope); entry id `<seq>-0` |
//! | `arqon:ids:{room:chan}` | sorted set | member `arq_` id, score `seq`: exactly the kept messages |
//! | `arqon:seq:{room:chan}` | string | the channel's last `seq` (an `INCR` counter) |
//!
//! Room and channel names cannot contain `:`, `{` or `}`, so no two channels
//! share a key.
//!
//! # Sequence numbers
//!
//! Every append takes the next number of the channel's counter and uses it as
//! the stream entry id, `<seq>-0`. Because appends are numbered 1, 2, 3, …
//! with no gaps, the kept window is simply the seq range
//! `last - max_len + 1 ..= last`: reads compute it in O(1) even though
//! `XADD … MAXLEN ~` trims the stream only approximately (whole radix-tree
//! nodes, so the stream may physically hold up to about a hundred entries
//! more than `max_len`; they are outside the window and never returned).
//!
//! The seq is also the message's *position* ([`Storage::append_placed`],
//! [`Storage::read_placed`]): cluster nodes compare positions to deliver
//! every channel in history order (docs/cluster.md).
//!
//! # Id lookup and dedupe
//!
//! The sorted set maps an `arq_` id to its seq in O(1) (`ZSCORE`), which
//! turns a `before` or `since` cursor into a stream range without scanning.
//! The append script checks it first, so appending an id that is kept is a
//! no-op answered [`Appended::Duplicate`]: appends are idempotent, and a
//! command that timed out but did run in Redis is harmless to send again. The
//! same script trims the set to the window (`ZREMRANGEBYSCORE`, O(log n) per
//! append), so set and stream always agree on what is kept.
//!
//! Every operation on a channel is one Lua script (`EVALSHA`, falling back to
//! `EVAL` after a Redis restart emptied the script cache), hence atomic and
//! one round trip.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arqon_protocol::{ChannelKey, Frame, MessageId, Timestamp};
use async_trait::async_trait;
use fred::prelude::{
    Builder, ClientLike, Config, ConnectionConfig, Error as FredError, ErrorKind, HashesInterface, Options,
    PerformanceConfig, Pool, ReconnectPolicy, Value,
};
use fred::types::config::UnresponsiveConfig;
use fred::types::{ClusterHash, CustomCommand};

use crate::{
    After, Appended, ChannelRecord, ChannelStats, Health, Placed, PlacedRead, Since, Storage, StorageError,
    StoredMessage,
};

/// Commands waiting to be written, per pooled connection, before further
/// commands fail at once with a backpressure error instead of queueing: a
/// stalled Redis must not grow the bus's memory without bound. Such a failure
/// is an ordinary "unavailable" error, which [`FallbackStorage`] answers by
/// journaling.
///
/// [`FallbackStorage`]: crate::FallbackStorage
const COMMAND_BUFFER: usize = 4096;

/// Longest pause between reconnection attempts to a Redis that went away;
/// attempts never stop. fred sleeps before every attempt, the first one
/// included, so the pauses start at 1 ms and double up to this.
const RECONNECT_MAX_DELAY_MS: u32 = 250;

/// How to reach Redis and how much history to keep there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Server address, `redis://[[user]:password@]host[:port][/db]`.
    /// Default: `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every key this backend writes, so that several buses (or
    /// other applications) can share one Redis. Default: `arqon:`.
    pub key_prefix: String,
    /// Messages kept per channel; older ones are trimmed. At least 1.
    /// Default: `10000`.
    pub max_len: usize,
    /// How long start-up waits for the first connection. Redis being
    /// unreachable for longer is not an error: the backend starts unhealthy
    /// and keeps reconnecting in the background. Default: 2 s.
    pub connect_timeout: Duration,
    /// Longest any one command may take; a command past it fails (and is not
    /// retried), so that a frozen Redis cannot stall the bus. Not zero.
    /// Default: 1 s.
    pub command_timeout: Duration,
    /// Connections to Redis; commands are spread over them round-robin. At
    /// least 1. Default: `2`.
    pub pool_size: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "arqon:".to_owned(),
            max_len: 10_000,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(1),
            pool_size: 2,
        }
    }
}

/// History in Redis Streams: one stream per channel, trimmed to
/// [`RedisOptions::max_len`], with a sorted set per channel for id lookups.
///
/// The module documentation above and docs/storage.md describe the key
/// layout. Every command has a timeout and is sent at most once (fred's
/// default would retry a command whose connection dropped, which could store
/// a message twice); every append is idempotent by message id.
///
/// On its own this backend fails while Redis is unreachable: operations
/// return [`StorageError::Unavailable`] within the command timeout. Wrap it
/// in [`FallbackStorage`](crate::FallbackStorage) to keep the bus serving.
pub struct RedisStorage {
    pool: Pool,
    /// Per-command options: timeout, one attempt, fail fast when the
    /// connection is down.
    command: Options,
    prefix: String,
    max_len: usize,
    /// The outcome of the last command (or of the start-up connection).
    healthy: AtomicBool,
    scripts: Scripts,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("prefix", &self.prefix)
            .field("max_len", &self.max_len)
            .field("pool_size", &self.pool.size())
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisStorage {
    /// Builds the client and waits up to `connect_timeout` for Redis.
    ///
    /// An unreachable Redis is not an error: the backend is returned
    /// unhealthy and keeps reconnecting in the background (one warning is
    /// logged). Needs a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`StorageError::Backend`] for settings that can never work: a URL that
    /// does not parse, a zero `max_len`, `pool_size` or `command_timeout`.
    pub async fn connect(options: RedisOptions) -> Result<RedisStorage, StorageError> {
        if options.max_len == 0 || options.pool_size == 0 || options.command_timeout.is_zero() {
            return Err(StorageError::Backend(
                "redis: max_len, pool_size and command_timeout must be above zero".to_owned(),
            ));
        }
        let mut config = Config::from_url(&options.url)
            .map_err(|e| StorageError::Backend(format!("redis: invalid url: {}", e.details())))?;
        // Keep reconnecting even if the very first connection fails: Redis
        // down at start-up must not stop the bus (FallbackStorage covers it).
        config.fail_fast = false;
        let performance = PerformanceConfig { default_command_timeout: options.command_timeout, ..Default::default() };
        let connection = ConnectionConfig {
            connection_timeout: options.connect_timeout,
            internal_command_timeout: options.command_timeout,
            // A command whose connection dropped is never written again: the
            // first attempt may have run (fred's default is 3 attempts).
            max_command_attempts: 1,
            // Bounded queue: beyond it commands fail with backpressure
            // instead of piling up while Redis is slow.
            max_command_buffer_len: COMMAND_BUFFER,
            // A connection that has left a command unanswered this long is
            // closed and reopened, which also catches half-open TCP
            // connections that would otherwise look healthy forever.
            unresponsive: UnresponsiveConfig {
                max_timeout: Some(options.command_timeout.saturating_mul(4).max(Duration::from_secs(2))),
                interval: (options.command_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(1)),
            },
            ..Default::default()
        };
        let mut reconnect = ReconnectPolicy::new_exponential(0, 1, RECONNECT_MAX_DELAY_MS, 2);
        reconnect.set_jitter(20);
        let pool = Builder::from_config(config)
            .set_performance_config(performance)
            .set_connection_config(connection)
            .set_policy(reconnect)
            .build_pool(options.pool_size)
            .map_err(|e| StorageError::Backend(format!("redis: {}", e.details())))?;
        // The connection tasks run (and reconnect) in the background until
        // `quit`, which `Drop` sends.
        drop(pool.connect());
        let connected =
            matches!(tokio::time::timeout(options.connect_timeout, pool.wait_for_connect()).await, Ok(Ok(())));
        if !connected {
            tracing::warn!(
                timeout_ms = options.connect_timeout.as_millis() as u64,
                "redis is unreachable at start-up; history is unavailable until it answers (reconnecting in the background)"
            );
        }
        Ok(RedisStorage {
            pool,
            command: Options {
                timeout: Some(options.command_timeout),
                max_attempts: Some(1),
                fail_fast: true,
                ..Default::default()
            },
            prefix: options.key_prefix,
            max_len: options.max_len,
            healthy: AtomicBool::new(connected),
            scripts: Scripts::new(),
        })
    }

    /// The registry hash: every channel's record.
    fn registry_key(&self) -> String {
        format!("{}channels", self.prefix)
    }

    /// The registry field of a channel, `room:channel`.
    fn field(key: &ChannelKey) -> String {
        format!("{}:{}", key.room, key.channel)
    }

    /// The channel's stream, id set and counter, in the order the scripts
    /// expect them (`KEYS[1..3]`).
    fn channel_keys(&self, key: &ChannelKey) -> Vec<String> {
        let tag = format!("{{{}:{}}}", key.room, key.channel);
        ["log", "ids", "seq"].iter().map(|kind| format!("{}{kind}:{tag}", self.prefix)).collect()
    }

    /// `max_len` as a script argument.
    fn max_len_arg(&self) -> Value {
        Value::Integer(i64::try_from(self.max_len).unwrap_or(i64::MAX))
    }

    /// Records the outcome of a command in [`Storage::health`].
    fn observe<T>(&self, result: Result<T, FredError>) -> Result<T, StorageError> {
        match result {
            Ok(value) => {
                self.healthy.store(true, Ordering::Relaxed);
                Ok(value)
            }
            Err(error) => {
                let error = classify(&error);
                if matches!(error, StorageError::Unavailable(_)) {
                    self.healthy.store(false, Ordering::Relaxed);
                }
                Err(error)
            }
        }
    }

    /// Runs a script: `EVALSHA`, loading it first if its digest is not known
    /// yet, and `EVAL` if Redis lost its script cache (it restarted).
    ///
    /// Sent as custom commands because fred 10.1 applies per-command
    /// options (timeout, fail fast, one attempt) to every interface of a
    /// `WithOptions` client except the Lua one.
    async fn run(&self, script: &Script, keys: Vec<String>, args: Vec<Value>) -> Result<Value, StorageError> {
        let client = self.pool.next_connected().with_options(&self.command);
        let result = async {
            let sha = match script.sha.get() {
                Some(sha) => sha.clone(),
                None => {
                    let load = CustomCommand::new_static("SCRIPT", ClusterHash::Random, false);
                    let sha: String =
                        client.custom(load, vec![Value::from_static_str("LOAD"), script.body.clone()]).await?;
                    script.sha.get_or_init(|| sha).clone()
                }
            };
            // EVALSHA sha numkeys key… arg…: the first key is argument 2.
            let call = |name: &'static str, first: Value| {
                let mut all = Vec::with_capacity(2 + keys.len() + args.len());
                all.push(first);
                all.push(Value::Integer(keys.len() as i64));
                all.extend(keys.iter().map(|key| Value::from(key.as_str())));
                all.extend(args.iter().cloned());
                (CustomCommand::new_static(name, ClusterHash::Offset(2), false), all)
            };
            let (evalsha, all) = call("EVALSHA", Value::from(sha));
            match client.custom::<Value, Value>(evalsha, all).await {
                // NOSCRIPT: the script did not run, so running it again is safe.
                Err(error) if error.details().starts_with("NOSCRIPT") => {
                    let (eval, all) = call("EVAL", script.body.clone());
                    client.custom(eval, all).await
                }
                other => other,
            }
        }
        .await;
        self.observe(result)
    }
}

impl Drop for RedisStorage {
    fn drop(&mut self) {
        // Close the connections (and stop reconnecting) if a runtime is still
        // there to send QUIT; at process exit the OS closes them anyway.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            runtime.spawn(async move {
                let _ = pool.quit().await;
            });
        }
    }
}

/// Maps a client error to this layer's error. Anything that can heal by
/// itself (timeouts, lost connections, backpressure, a Redis still loading
/// its data) is `Unavailable`; what cannot (a wrong key type, a broken
/// script, a reply that does not parse) is `Backend`.
fn classify(error: &FredError) -> StorageError {
    let permanent = matches!(
        error.kind(),
        ErrorKind::Config | ErrorKind::Url | ErrorKind::InvalidArgument | ErrorKind::InvalidCommand | ErrorKind::Parse
    ) || error.details().contains("script");
    let message = format!("redis: {}", error.details());
    if permanent { StorageError::Backend(message) } else { StorageError::Unavailable(message) }
}

/// A reply that is not what the script returns: a bug or foreign data.
fn malformed(what: &str) -> StorageError {
    StorageError::Backend(format!("redis: unexpected reply to {what}"))
}

fn parse_id(value: &Value, what: &str) -> Result<MessageId, StorageError> {
    value.as_str().and_then(|text| MessageId::parse(&text).ok()).ok_or_else(|| malformed(what))
}

fn integer(value: &Value, what: &str) -> Result<i64, StorageError> {
    value.as_i64().ok_or_else(|| malformed(what))
}

/// A kept message from the flat `id, frame, id, frame, …` list the read
/// scripts return.
fn messages(values: impl Iterator<Item = Value>, what: &str) -> Result<Vec<StoredMessage>, StorageError> {
    let mut out = Vec::new();
    let mut values = values;
    while let Some(id) = values.next() {
        let frame = values.next().and_then(Value::into_bytes).ok_or_else(|| malformed(what))?;
        let id = id.as_str().and_then(|text| MessageId::parse(&text).ok()).ok_or_else(|| malformed(what))?;
        let frame = Frame::from_utf8(frame).map_err(|_| malformed(what))?;
        out.push(StoredMessage { id, frame });
    }
    Ok(out)
}

#[async_trait]
impl Storage for RedisStorage {
    async fn create_channel(
        &self,
        key: &ChannelKey,
        created_at: Timestamp,
    ) -> Result<(ChannelRecord, bool), StorageError> {
        let args = vec![Value::from(Self::field(key)), Value::Integer(created_at.unix_ms())];
        let reply = self.run(&self.scripts.create, vec![self.registry_key()], args).await?.into_array();
        let [created, at] = <[Value; 2]>::try_from(reply).map_err(|_| malformed("create"))?;
        let at = at.as_i64().ok_or_else(|| malformed("create"))?;
        let record = ChannelRecord { key: key.clone(), created_at: Timestamp::from_unix_ms(at) };
        Ok((record, integer(&created, "create")? == 1))
    }

    async fn channels(&self) -> Result<Vec<ChannelRecord>, StorageError> {
        let client = self.pool.next_connected().with_options(&self.command);
        let fields: HashMap<String, i64> = self.observe(client.hgetall(self.registry_key()).await)?;
        let mut records: Vec<ChannelRecord> = fields
            .into_iter()
            .filter_map(|(field, at)| {
                let parsed = field.split_once(':').and_then(|(room, channel)| ChannelKey::parse(room, channel).ok());
                if parsed.is_none() {
                    tracing::warn!(field, "ignoring a malformed channel record in redis");
                }
                parsed.map(|key| ChannelRecord { key, created_at: Timestamp::from_unix_ms(at) })
            })
            .collect();
        records.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(records)
    }

    async fn delete_channel(&self, key: &ChannelKey) -> Result<bool, StorageError> {
        let mut keys = vec![self.registry_key()];
        keys.extend(self.channel_keys(key));
        let reply = self.run(&self.scripts.delete, keys, vec![Value::from(Self::field(key))]).await?;
        Ok(integer(&reply, "delete")? > 0)
    }

    async fn append(&self, key: &ChannelKey, message: StoredMessage) -> Result<Appended, StorageError> {
        Ok(self.append_placed(key, message).await?.0)
    }

    /// The seq the script assigned is the position.
    async fn append_placed(
        &self,
        key: &ChannelKey,
        message: StoredMessage,
    ) -> Result<(Appended, Option<u64>), StorageError> {
        let args =
            vec![Value::from(message.id.to_string()), Value::Bytes(message.frame.to_bytes()), self.max_len_arg()];
        let reply = self.run(&self.scripts.append, self.channel_keys(key), args).await?;
        match u64::try_from(integer(&reply, "append")?).map_err(|_| malformed("append"))? {
            0 => Ok((Appended::Duplicate, None)),
            seq => Ok((Appended::Stored, Some(seq))),
        }
    }

    async fn read_placed(
        &self,
        key: &ChannelKey,
        after: After,
        limit: usize,
    ) -> Result<Option<PlacedRead>, StorageError> {
        let (kind, cursor) = match after {
            After::Id(id) => ("id", Value::from(id.to_string())),
            After::Position(at) => ("pos", Value::Integer(i64::try_from(at).unwrap_or(i64::MAX))),
        };
        let limit = Value::Integer(i64::try_from(limit.min(self.max_len)).unwrap_or(i64::MAX));
        let args = vec![Value::from_static_str(kind), cursor, limit, self.max_len_arg()];
        let reply = self.run(&self.scripts.read_placed, self.channel_keys(key), args).await?.into_array();
        let mut reply = reply.into_iter();
        let mut next = || reply.next().ok_or_else(|| malformed("read_placed"));
        let truncated = integer(&next()?, "read_placed")? == 1;
        let tip = u64::try_from(integer(&next()?, "read_placed")?).map_err(|_| malformed("read_placed"))?;
        let tip_id = match next()? {
            Value::Null => None,
            id => Some(parse_id(&id, "read_placed")?),
        };
        let mut placed = Vec::new();
        while let Some(position) = reply.next() {
            let position = u64::try_from(integer(&position, "read_placed")?).map_err(|_| malformed("read_placed"))?;
            let mut message = messages(reply.by_ref().take(2), "read_placed")?;
            let message = message.pop().ok_or_else(|| malformed("read_placed"))?;
            placed.push(Placed { position, message });
        }
        Ok(Some(PlacedRead { messages: placed, truncated, tip, tip_id }))
    }

    async fn history(
        &self,
        key: &ChannelKey,
        limit: usize,
        before: Option<MessageId>,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let limit = i64::try_from(limit.min(self.max_len)).unwrap_or(i64::MAX);
        let cursor = before.map(|id| id.to_string()).unwrap_or_default();
        let args = vec![Value::Integer(limit), Value::from(cursor), self.max_len_arg()];
        match self.run(&self.scripts.history, self.channel_keys(key), args).await? {
            // The script answers nil for a cursor that is not kept.
            Value::Null => Err(StorageError::UnknownCursor(before.ok_or_else(|| malformed("history"))?)),
            reply => messages(reply.into_array().into_iter(), "history"),
        }
    }

    async fn since(&self, key: &ChannelKey, after: MessageId) -> Result<Since, StorageError> {
        let args = vec![Value::from(after.to_string()), self.max_len_arg()];
        let mut reply = self.run(&self.scripts.since, self.channel_keys(key), args).await?.into_array().into_iter();
        let truncated = integer(&reply.next().ok_or_else(|| malformed("since"))?, "since")? == 1;
        Ok(Since { messages: messages(reply, "since")?, truncated })
    }

    async fn stats(&self, key: &ChannelKey) -> Result<ChannelStats, StorageError> {
        let mut keys = self.channel_keys(key);
        keys.remove(0); // the stats script needs the id set and the counter only
        let reply = self.run(&self.scripts.stats, keys, vec![self.max_len_arg()]).await?.into_array();
        let [stored, newest] = <[Value; 2]>::try_from(reply).map_err(|_| malformed("stats"))?;
        let last_id = match newest {
            Value::Null => None,
            id => Some(id.as_str().and_then(|text| MessageId::parse(&text).ok()).ok_or_else(|| malformed("stats"))?),
        };
        let stored = u64::try_from(integer(&stored, "stats")?).map_err(|_| malformed("stats"))?;
        Ok(ChannelStats { stored, last_id })
    }

    fn health(&self) -> Health {
        Health::new("redis", self.healthy.load(Ordering::Relaxed))
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let client = self.pool.next_connected().with_options(&self.command);
        self.observe(client.ping::<Value>(None).await).map(drop)
    }
}

/// One Lua script and its digest, learnt from `SCRIPT LOAD` on first use.
struct Script {
    body: Value,
    sha: OnceLock<String>,
}

impl Script {
    fn new(parts: &[&str]) -> Self {
        Script { body: Value::from(parts.concat()), sha: OnceLock::new() }
    }
}

/// The scripts, one per operation.
struct Scripts {
    append: Script,
    history: Script,
    since: Script,
    stats: Script,
    create: Script,
    delete: Script,
    read_placed: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            append: Script::new(&[APPEND]),
            history: Script::new(&[WINDOW, HISTORY]),
            since: Script::new(&[WINDOW, SINCE]),
            stats: Script::new(&[STATS]),
            create: Script::new(&[CREATE]),
            delete: Script::new(&[DELETE]),
            read_placed: Script::new(&[WINDOW, READ_PLACED]),
        }
    }
}

/// `KEYS`: stream, id set, counter. `ARGV`: id, frame, max_len.
/// Returns the message's seq (its position) when stored, 0 when the id is
/// kept already.
const APPEND: &str = r"
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 0
end
local max_len = tonumber(ARGV[3])
local seq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', max_len, seq .. '-0', 'id', ARGV[1], 'frame', ARGV[2])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (seq - max_len + 1))
return seq
";

/// Shared by the read scripts (`KEYS` as for [`APPEND`], the last `ARGV` is
/// max_len): the kept seq window `lo..=last`, `kept` false when nothing is.
/// The window also starts no earlier than the oldest id in the set, so that
/// a larger `max_len` after a restart never reveals entries the set lost.
const WINDOW: &str = r"
local max_len = tonumber(ARGV[#ARGV])
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local kept = #oldest > 0
local lo = last - max_len + 1
if kept and tonumber(oldest[2]) > lo then lo = tonumber(oldest[2]) end
local function push_entries(out, entries, from, to, step)
  for i = from, to, step do
    local fields = entries[i][2]
    local id, frame
    for j = 1, #fields, 2 do
      if fields[j] == 'id' then id = fields[j + 1] elseif fields[j] == 'frame' then frame = fields[j + 1] end
    end
    out[#out + 1] = id
    out[#out + 1] = frame
  end
end
";

/// `ARGV`: limit, before id (empty for none), max_len. Returns the flat list
/// `id, frame, …` oldest first, or nil when `before` is not kept.
const HISTORY: &str = r"
local hi = last
if ARGV[2] ~= '' then
  local at = redis.call('ZSCORE', KEYS[2], ARGV[2])
  if not at or tonumber(at) < lo then return false end
  hi = tonumber(at) - 1
end
local out = {}
local limit = tonumber(ARGV[1])
if not kept or hi < lo or limit == 0 then return out end
local entries = redis.call('XREVRANGE', KEYS[1], hi .. '-0', lo .. '-0', 'COUNT', limit)
push_entries(out, entries, #entries, 1, -1)
return out
";

/// `ARGV`: after id, max_len. Returns `truncated (0|1), id, frame, …`.
const SINCE: &str = r"
local at = redis.call('ZSCORE', KEYS[2], ARGV[1])
local start, truncated = lo, 1
if at and tonumber(at) >= lo then
  start, truncated = tonumber(at) + 1, 0
end
local out = {truncated}
if kept and start <= last then
  local entries = redis.call('XRANGE', KEYS[1], start .. '-0', last .. '-0')
  push_entries(out, entries, 1, #entries, 1)
end
return out
";

/// `ARGV`: cursor kind (`id` or `pos`), cursor, limit, max_len. Returns
/// `truncated (0|1), last seq, newest id or nil, seq, id, frame, …`: up to
/// `limit` kept entries after the cursor. Positions not kept any more right
/// after a `pos` cursor make it truncated, as an unknown `id` does.
const READ_PLACED: &str = r"
local start, truncated = lo, 1
if ARGV[1] == 'id' then
  local at = redis.call('ZSCORE', KEYS[2], ARGV[2])
  if at and tonumber(at) >= lo then start, truncated = tonumber(at) + 1, 0 end
else
  local after = tonumber(ARGV[2])
  if after + 1 >= lo or after >= last then start, truncated = after + 1, 0 end
end
local newest = redis.call('ZRANGE', KEYS[2], -1, -1)
local out = {truncated, last, newest[1] or false}
local limit = tonumber(ARGV[3])
if kept and start <= last and limit > 0 then
  local entries = redis.call('XRANGE', KEYS[1], start .. '-0', last .. '-0', 'COUNT', limit)
  for i = 1, #entries do
    out[#out + 1] = tonumber(string.match(entries[i][1], '^(%d+)'))
    push_entries(out, entries, i, i, 1)
  end
end
return out
";

/// `KEYS`: id set, counter. `ARGV`: max_len. Returns `{kept, newest id or nil}`.
const STATS: &str = r"
local max_len = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local count = redis.call('ZCOUNT', KEYS[1], last - max_len + 1, '+inf')
local newest = redis.call('ZRANGE', KEYS[1], -1, -1)
return {count, newest[1] or false}
";

/// `KEYS`: registry. `ARGV`: field, created_at. Returns `{created, created_at}`.
const CREATE: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  return {1, tonumber(ARGV[2])}
end
return {0, tonumber(redis.call('HGET', KEYS[1], ARGV[1]))}
";

/// `KEYS`: registry, stream, id set, counter. `ARGV`: field. Returns how
/// many of record and keys existed.
const DELETE: &str = r"
return redis.call('HDEL', KEYS[1], ARGV[1]) + redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
";
