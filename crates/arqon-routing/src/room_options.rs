//! Per-room options (PROTOCOL.md section 8.4): rules by exact room name or
//! `*` glob, the most specific match winning.

use arqon_protocol::Role;

/// What a room allows; unmatched rooms get [`RoomOptions::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomOptions {
    /// Messages `history` returns and `since` replays at most, per channel
    /// (`None`: as many as the storage backend keeps).
    pub history_size: Option<usize>,
    /// Messages older than this many seconds are neither returned by
    /// `history` nor replayed (0: no expiry).
    pub history_ttl_s: u64,
    /// Whether `presence` answers (else `FORBIDDEN`). Default: true.
    pub presence: bool,
    /// Whether members get `member_joined`/`member_left`. Default: true.
    pub member_events: bool,
    /// Least role that may join its channels. Default: guest.
    pub join_role: Role,
    /// Least role that may publish to it. Default: user.
    pub publish_role: Role,
    /// Overrides [`RouterConfig::auto_create`](crate::RouterConfig::auto_create)
    /// in this room (`None`: as configured).
    pub auto_create: Option<bool>,
    /// Whether every join is first put to the router's
    /// [`JoinGuard`](crate::JoinGuard) (the application's join hook).
    /// Without a guard such joins are refused. Default: false.
    pub join_hook: bool,
}

impl Default for RoomOptions {
    fn default() -> Self {
        RoomOptions {
            history_size: None,
            history_ttl_s: 0,
            presence: true,
            member_events: true,
            join_role: Role::Guest,
            publish_role: Role::User,
            auto_create: None,
            join_hook: false,
        }
    }
}

/// One rule: a room name, or a pattern where `*` stands for any run of
/// characters (`chat-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRule {
    /// The room name or glob.
    pub pattern: String,
    /// The options of the rooms it matches.
    pub options: RoomOptions,
}

/// The rules of a bus, in any order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomRules {
    rules: Vec<RoomRule>,
    defaults: RoomOptions,
}

impl RoomRules {
    /// Rules to pick from.
    pub fn new(rules: Vec<RoomRule>) -> Self {
        RoomRules { rules, defaults: RoomOptions::default() }
    }

    /// The options of `room`: an exact rule, else the matching glob with
    /// the most literal characters (the longest pattern on a tie), else the
    /// defaults.
    pub fn for_room(&self, room: &str) -> &RoomOptions {
        if self.rules.is_empty() {
            return &self.defaults;
        }
        if let Some(exact) = self.rules.iter().find(|r| !r.pattern.contains('*') && r.pattern == room) {
            return &exact.options;
        }
        self.rules
            .iter()
            .filter(|r| r.pattern.contains('*') && glob_matches(&r.pattern, room))
            .max_by_key(|r| (r.pattern.bytes().filter(|b| *b != b'*').count(), r.pattern.len()))
            .map_or(&self.defaults, |r| &r.options)
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*` at all: an exact name.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, presence: bool) -> RoomRule {
        RoomRule { pattern: pattern.to_owned(), options: RoomOptions { presence, ..RoomOptions::default() } }
    }

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob_matches("chat-*", "chat-1"));
        assert!(glob_matches("chat-*", "chat-"));
        assert!(!glob_matches("chat-*", "chat"));
        assert!(glob_matches("*-eu", "orders-eu"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxbyy"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("ab*ab", "abab"));
        assert!(!glob_matches("ab*ab", "aba"));
        assert!(glob_matches("lobby", "lobby") && !glob_matches("lobby", "lobby2"));
    }

    #[test]
    fn the_most_specific_rule_wins() {
        let rules = RoomRules::new(vec![rule("*", false), rule("chat-*", true), rule("chat-vip", false)]);
        assert!(!rules.for_room("chat-vip").presence);
        assert!(rules.for_room("chat-1").presence);
        assert!(!rules.for_room("orders").presence);
        assert!(RoomRules::default().for_room("x").presence);
    }
}
