//! Who is in each channel across the cluster, for the application's
//! webhooks: which members (a user, or an anonymous connection) are present
//! on any node, so that `member_added` and `member_removed`, and
//! `channel_occupied` and `channel_vacated`, happen once for the cluster
//! rather than once per node.
//!
//! Per channel, two Redis hashes that only the Lua scripts here change, so
//! that each change and its verdict are one atomic step:
//! - `PREFIX holders:ROOM:CHANNEL`: `NODE\nMEMBER` → 1, which node holds
//!   which member;
//! - `PREFIX identities:ROOM:CHANNEL`: `MEMBER` → on how many nodes.
//!
//! A member is `u:USER` or `c:CLIENT_ID`. A node enters a member when it
//! gets its first connection in the channel and leaves it with its last;
//! the member is added when the first node enters it and removed when the
//! last one leaves it. A node that rejoins brings its holdings in line with
//! what it really holds (`SYNC`), and the purge of a dead node
//! (`presence::PURGE`) leaves its members for it; both report the
//! transitions they make.

use std::collections::HashSet;
use std::sync::Arc;

use arqon_protocol::{ChannelKey, ClientId};
use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::prelude::Value;

use crate::ClusterError;
use crate::broker::Shared;
use crate::node::command;
use crate::wire;

/// `KEYS`: holders, identities, the node's presence-channel set (where a
/// dead node's holdings are found). `ARGV`: node, member, channel field.
const ENTER: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1] .. '\n' .. ARGV[2], 1) == 0 then return {} end
redis.call('SADD', KEYS[3], ARGV[3])
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) ~= 1 then return {} end
return {ARGV[3], ARGV[2], 1, redis.call('HLEN', KEYS[2]) == 1 and 1 or 0}
";

/// `KEYS`: holders, identities. `ARGV`: node, member, channel field.
const LEAVE: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1] .. '\n' .. ARGV[2]) == 0 then return {} end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) > 0 then return {} end
redis.call('HDEL', KEYS[2], ARGV[2])
return {ARGV[3], ARGV[2], 0, redis.call('HLEN', KEYS[2]) == 0 and 1 or 0}
";

/// The Lua function `SYNC` and the purge of a dead node share: takes node
/// `mark` (`NODE\n`) out of channel `c`'s members but those in `keep`,
/// appending the transitions to `out`.
macro_rules! leave_lua {
    () => {
        r"
local function leave_all(mark, c, holders, identities, keep, out)
  for _, f in ipairs(redis.call('HKEYS', holders)) do
    local m = string.sub(f, #mark + 1)
    if string.sub(f, 1, #mark) == mark and not keep[m] then
      redis.call('HDEL', holders, f)
      if redis.call('HINCRBY', identities, m, -1) <= 0 then
        redis.call('HDEL', identities, m)
        for _, v in ipairs({c, m, 0, redis.call('HLEN', identities) == 0 and 1 or 0}) do out[#out + 1] = v end
      end
    end
  end
end
"
    };
}
pub(crate) use leave_lua;

/// Makes node `ARGV[1]`'s holdings exactly the (channel, member) pairs
/// from `ARGV[4]` on, in the channels listed there and in its
/// presence-channel set `KEYS[1]`. `ARGV[2]`, `ARGV[3]`: the holders' and
/// identities' prefixes.
const SYNC: &str = concat!(
    leave_lua!(),
    r"
local mark = ARGV[1] .. '\n'
local want, channels = {}, {}
local function visit(c)
  if not want[c] then want[c] = {}; channels[#channels + 1] = c end
end
for i = 4, #ARGV, 2 do visit(ARGV[i]); want[ARGV[i]][ARGV[i + 1]] = true end
for _, c in ipairs(redis.call('SMEMBERS', KEYS[1])) do visit(c) end
local out = {}
for _, c in ipairs(channels) do
  local holders, identities = ARGV[2] .. c, ARGV[3] .. c
  leave_all(mark, c, holders, identities, want[c], out)
  for m in pairs(want[c]) do
    if redis.call('HSETNX', holders, mark .. m, 1) == 1 and redis.call('HINCRBY', identities, m, 1) == 1 then
      for _, v in ipairs({c, m, 1, redis.call('HLEN', identities) == 1 and 1 or 0}) do out[#out + 1] = v end
    end
  end
end
return out
"
);

/// A member of a channel, as the ledger counts them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Member {
    /// Every connection of a user is one member.
    User(String),
    /// A connection without a user is a member of its own.
    Client(ClientId),
}

impl Member {
    fn encode(&self) -> String {
        match self {
            Member::User(user) => format!("u:{user}"),
            Member::Client(id) => format!("c:{id}"),
        }
    }

    fn decode(text: &str) -> Option<Member> {
        match text.split_at_checked(2)? {
            ("u:", user) => Some(Member::User(user.to_owned())),
            ("c:", id) => ClientId::parse(id).ok().map(Member::Client),
            _ => None,
        }
    }
}

/// A change the whole cluster sees: a member added to or removed from a
/// channel on every node taken together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The channel.
    pub key: ChannelKey,
    /// Who.
    pub member: Member,
    /// Added (present on a node now, on none before), or removed.
    pub present: bool,
    /// The channel went with it from no member to one (occupied), or from
    /// one to none (vacated).
    pub channel: bool,
}

/// Transitions as the scripts return them: flat `channel, member, present,
/// channel` quadruples.
pub(crate) fn transitions(value: Value) -> Vec<Transition> {
    let Value::Array(items) = value else { return Vec::new() };
    items
        .chunks_exact(4)
        .filter_map(|quad| {
            let text = |v: &Value| v.as_str().map(|s| s.into_owned());
            let key = wire::parse_member_field(&text(&quad[0])?)?;
            let member = Member::decode(&text(&quad[1])?)?;
            Some(Transition { key, member, present: quad[2].as_i64()? == 1, channel: quad[3].as_i64()? == 1 })
        })
        .collect()
}

/// This node's side of the ledger. Get it from
/// [`RedisBroker::ledger`](crate::RedisBroker::ledger).
#[derive(Debug, Clone)]
pub struct Ledger {
    pub(crate) shared: Arc<Shared>,
    pub(crate) commands: Client,
}

impl Ledger {
    /// This node got `member`'s first connection in `key`: the
    /// transition, if the cluster had no connection of it there before.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Redis`] when Redis cannot be reached; the node's
    /// rejoin brings its holdings in line later, and reports then.
    pub async fn enter(&self, key: &ChannelKey, member: &Member) -> Result<Option<Transition>, ClusterError> {
        let keys = vec![Value::from(self.shared.names.presence_channels(&self.shared.node))];
        self.run(ENTER, key, member, keys).await
    }

    /// This node lost `member`'s last connection in `key`: the transition,
    /// if no node has one left.
    ///
    /// # Errors
    ///
    /// As [`Ledger::enter`].
    pub async fn leave(&self, key: &ChannelKey, member: &Member) -> Result<Option<Transition>, ClusterError> {
        self.run(LEAVE, key, member, Vec::new()).await
    }

    async fn run(
        &self,
        script: &'static str,
        key: &ChannelKey,
        member: &Member,
        extra_keys: Vec<Value>,
    ) -> Result<Option<Transition>, ClusterError> {
        let (holders, identities) = self.shared.names.ledger(key);
        let field = wire::member_field(key);
        let mut args = vec![
            Value::from(script),
            Value::Integer(2 + i64::try_from(extra_keys.len()).unwrap_or(0)),
            Value::from(holders),
            Value::from(identities),
        ];
        args.extend(extra_keys);
        args.extend([Value::from(&*self.shared.node), Value::from(member.encode()), Value::from(field)]);
        let value: Value = self.commands.custom(command("EVAL"), args).await?;
        Ok(transitions(value).pop())
    }
}

/// The members this node holds in each channel, from its presence records.
pub(crate) fn holdings(presence: &[(ChannelKey, crate::presence::Records)]) -> HashSet<(ChannelKey, Member)> {
    let mut held = HashSet::new();
    for (key, records) in presence {
        for (id, record) in records {
            let user = serde_json::from_str::<wire::PresenceRecord>(record).ok().and_then(|r| r.user);
            held.insert((key.clone(), user.map_or(Member::Client(*id), Member::User)));
        }
    }
    held
}

/// The arguments of `SYNC` for `node` holding `holdings` (channel, member).
pub(crate) fn sync_args(
    names: &wire::Names,
    node: &str,
    holdings: impl IntoIterator<Item = (ChannelKey, Member)>,
) -> Vec<Value> {
    let (holders, identities) = names.ledger_prefixes();
    let mut args = vec![
        Value::from(SYNC),
        Value::Integer(1),
        Value::from(names.presence_channels(node)),
        Value::from(node),
        Value::from(holders),
        Value::from(identities),
    ];
    for (key, member) in holdings {
        args.push(Value::from(wire::member_field(&key)));
        args.push(Value::from(member.encode()));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip() {
        let id = ClientId::from_ulid(ulid::Ulid(7));
        for member in [Member::User("ann lee".into()), Member::User("u:x".into()), Member::Client(id)] {
            assert_eq!(Member::decode(&member.encode()), Some(member));
        }
        assert_eq!(Member::decode("x:ann"), None);
        assert_eq!(Member::decode("c:not-an-id"), None);
        assert_eq!(Member::decode(""), None);
    }

    #[test]
    fn script_results_become_transitions() {
        let value = Value::Array(vec![
            Value::from("r:c"),
            Value::from("u:ann"),
            Value::Integer(1),
            Value::Integer(1),
            Value::from("r:c"),
            Value::from("bad"),
            Value::Integer(0),
            Value::Integer(0),
        ]);
        let key = ChannelKey::parse("r", "c").unwrap();
        assert_eq!(
            transitions(value),
            [Transition { key, member: Member::User("ann".into()), present: true, channel: true }]
        );
        assert!(transitions(Value::Array(Vec::new())).is_empty());
        assert!(transitions(Value::Integer(-1)).is_empty());
    }
}
