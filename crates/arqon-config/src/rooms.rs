//! `[rooms."pattern"]`: options per room, by exact name or `*` glob
//! (PROTOCOL.md section 8.4, docs/configuration.md "Room options").

use arqon_protocol::Role;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::settings::rule;

/// The options of the rooms one pattern matches; every key may be left out
/// (the default, or the global setting, applies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomConfig {
    /// Messages per channel `history` returns and `since` replays at most;
    /// at most `limits.history_per_channel` (what the storage keeps).
    /// Default: as the storage keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_size: Option<usize>,
    /// Messages older than this many seconds are neither returned by
    /// `history` nor replayed; 0: no expiry. Default: `0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_ttl_s: Option<u64>,
    /// Whether `presence` answers. Default: `true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
    /// Whether members get `member_joined`/`member_left`. Default: `true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_events: Option<bool>,
    /// Least role that may join its channels. Default: `guest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_role: Option<Role>,
    /// Least role that may publish in it. Default: `user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_role: Option<Role>,
    /// Whether publishing to or joining a missing channel creates it.
    /// Default: `channels.auto_create`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_create: Option<bool>,
    /// Whether every join is first put to `hooks.join_url`. Default: `false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_hook: Option<bool>,
}

/// Whether `pattern` is a room name with optional `*` wildcards: the name
/// characters (letters, digits, `-`, `_`, `.`), 1 to 64 of them.
pub fn valid_room_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= 64
        && pattern.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*'))
}

pub(crate) fn validate(
    rooms: &std::collections::BTreeMap<String, RoomConfig>,
    history_per_channel: usize,
    join_url: &str,
) -> Result<(), ConfigError> {
    for (pattern, room) in rooms {
        rule(
            room.join_hook != Some(true) || !join_url.is_empty(),
            "rooms.*.join_hook",
            format!("{pattern}: true"),
            "needs hooks.join_url: there is no hook to ask",
        )?;
        rule(
            valid_room_pattern(pattern),
            "rooms",
            format!("{pattern:?}"),
            "a room pattern is a room name (letters, digits, '-', '_', '.'; at most 64) where '*' may stand for any run",
        )?;
        if let Some(size) = room.history_size {
            rule(
                (1..=history_per_channel).contains(&size),
                "rooms.*.history_size",
                format!("{pattern}: {size}"),
                "must be from 1 to limits.history_per_channel (the storage keeps no more)",
            )?;
        }
    }
    Ok(())
}
