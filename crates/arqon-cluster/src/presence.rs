//! A node's entries in the shared presence hashes, beyond the changes it
//! announces: rewriting them all when it (re)joins, since Redis may have
//! come back empty, and removing those of a node that is gone, so that a
//! dead node leaves nothing behind in Redis.

use std::collections::HashMap;
use std::sync::Arc;

use arqon_protocol::{ChannelKey, ClientId};
use fred::clients::{Client, Pipeline};
use fred::interfaces::ClientLike;
use fred::prelude::Value;

use crate::ledger::leave_lua;
use crate::node::command;
use crate::wire::{self, Names};

/// Removes node `ARGV[1]`'s entries from the presence hashes listed in its
/// set `KEYS[2]`, then the set, unless its heartbeat in `KEYS[1]` is newer
/// than `ARGV[2]` (it came back: its own rejoin rewrites its entries, and
/// this check and the purge are one atomic step). Unless `ARGV[4]` is empty,
/// also leaves the node's members in the ledger (`ARGV[4]`, `ARGV[5]`: the
/// holders' and identities' prefixes, see `ledger`). Returns `{-1}` when
/// the node is alive, else the entries removed followed by the ledger's
/// transitions.
pub(crate) const PURGE: &str = concat!(
    leave_lua!(),
    r"
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if beat and tonumber(beat) > tonumber(ARGV[2]) then return {-1} end
local out = {0}
local mark = ARGV[1] .. '\n'
for _, field in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local hash = ARGV[3] .. field
  local entries = redis.call('HGETALL', hash)
  for i = 1, #entries, 2 do
    local ok, record = pcall(cjson.decode, entries[i + 1])
    if ok and type(record) == 'table' and record.node == ARGV[1] then
      redis.call('HDEL', hash, entries[i])
      out[1] = out[1] + 1
    end
  end
  if ARGV[4] ~= '' then
    leave_all(mark, field, ARGV[4] .. field, ARGV[5] .. field, {}, out)
  end
end
redis.call('DEL', KEYS[2])
return out
"
);

/// One channel's presence records of this node: client → record (JSON).
pub(crate) type Records = HashMap<ClientId, Arc<str>>;

/// This node's own cutoff: its entries go whatever its heartbeat says.
pub(crate) const ALWAYS: i64 = i64::MAX;

/// What a purge does besides the presence entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ledger {
    /// Also leave the node's members in the ledger.
    Leave,
    /// Leave the ledger alone (a rejoin brings it in line with `SYNC`).
    Keep,
}

/// Queues the removal of `node`'s presence entries everywhere (and its
/// members from the ledger), unless its last heartbeat is after
/// `cutoff_ms` (Unix ms).
pub(crate) async fn queue_purge(
    pipeline: &Pipeline<Client>,
    names: &Names,
    node: &str,
    cutoff_ms: i64,
    ledger: Ledger,
) -> Result<(), fred::error::Error> {
    let (holders, identities) = match ledger {
        Ledger::Leave => names.ledger_prefixes(),
        Ledger::Keep => (String::new(), String::new()),
    };
    let args = vec![
        Value::from(PURGE),
        Value::Integer(2),
        Value::from(names.nodes()),
        Value::from(names.presence_channels(node)),
        Value::from(node),
        Value::Integer(cutoff_ms),
        Value::from(names.presence_prefix()),
        Value::from(holders),
        Value::from(identities),
    ];
    pipeline.custom::<Value, Value>(command("EVAL"), args).await.map(drop)
}

/// The ledger transitions in a purge's result.
pub(crate) fn purge_transitions(result: Value) -> Vec<crate::ledger::Transition> {
    match result {
        Value::Array(mut items) if !items.is_empty() => {
            items.remove(0);
            crate::ledger::transitions(Value::Array(items))
        }
        _ => Vec::new(),
    }
}

/// Queues writing `entries` (this node's members, by channel) back: the
/// records and the set of channels that hold them. Queue a purge of this
/// node's entries first, so that members gone meanwhile go too.
pub(crate) async fn queue_rewrite(
    pipeline: &Pipeline<Client>,
    names: &Names,
    node: &str,
    entries: &[(ChannelKey, Records)],
) -> Result<(), fred::error::Error> {
    for (key, members) in entries {
        let members: Vec<(&ClientId, &Arc<str>)> = members.iter().collect();
        for chunk in members.chunks(1000) {
            let mut args = Vec::with_capacity(1 + 2 * chunk.len());
            args.push(Value::from(names.presence(key)));
            for (id, record) in chunk {
                args.push(Value::from(id.to_string()));
                args.push(Value::from(&***record));
            }
            pipeline.custom::<Value, Value>(command("HSET"), args).await?;
        }
    }
    let keys: Vec<&ChannelKey> = entries.iter().map(|(key, _)| key).collect();
    for chunk in keys.chunks(1000) {
        let args = channel_set_args(names, node, chunk.iter().copied());
        pipeline.custom::<Value, Value>(command("SADD"), args).await?;
    }
    Ok(())
}

/// `KEY room:channel…`: arguments of SADD/SREM on `node`'s set of channels
/// holding its presence entries.
pub(crate) fn channel_set_args<'a>(
    names: &Names,
    node: &str,
    keys: impl IntoIterator<Item = &'a ChannelKey>,
) -> Vec<Value> {
    let mut args = vec![Value::from(names.presence_channels(node))];
    args.extend(keys.into_iter().map(|key| Value::from(wire::member_field(key))));
    args
}
