use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ErrorCode, ProtocolError};

/// Longest room or channel name.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// A room or channel name: 1 to 64 characters of `A-Z a-z 0-9 _ - .`.
///
/// Cheap to clone (shared), and needs no escaping in JSON.
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct Name(Arc<str>);

/// Names sharing their text are equal without reading it: a channel's key
/// and the keys its publishers decode to share it (see
/// [`RecentNames::adopt`]), and are compared on every message. (`Arc`'s own
/// pointer shortcut does not apply to `str`.)
impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

/// As the text's, like equality.
impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Name {
    /// Validates a name.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let valid = !text.is_empty()
            && text.len() <= MAX_NAME_LEN
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if valid {
            Ok(Name(Arc::from(text)))
        } else {
            Err(ProtocolError::new(
                ErrorCode::InvalidName,
                format!("invalid name {text:?}: use 1 to 64 characters of A-Z a-z 0-9 _ - ."),
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Name::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A channel's full address: its room and its name within the room.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelKey {
    /// The room (namespace).
    pub room: Name,
    /// The channel within the room.
    pub channel: Name,
}

impl ChannelKey {
    /// Builds a key from validated names.
    pub fn new(room: Name, channel: Name) -> Self {
        ChannelKey { room, channel }
    }

    /// Validates both names.
    pub fn parse(room: &str, channel: &str) -> Result<Self, ProtocolError> {
        Ok(ChannelKey { room: Name::parse(room)?, channel: Name::parse(channel)? })
    }
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.room, self.channel)
    }
}

/// The room and channel names a connection named last, handed out again
/// while it keeps naming the same ones: a publisher usually sends to one
/// channel over and over, and reusing the names spares two allocations per
/// message. What it returns is exactly what [`ChannelKey::parse`] and
/// [`Name::parse`] would (a name equal to one already checked is valid).
///
/// It also keeps the opening of the last message envelope the decoder read
/// up to its payload (see [`crate::decode_with`]), for the same reason.
#[derive(Debug, Default, Clone)]
pub struct RecentNames {
    room: Option<Name>,
    channel: Option<Name>,
    pub(crate) head: crate::decode::Head,
}

impl RecentNames {
    /// [`ChannelKey::parse`], reusing the last names where they match.
    pub fn key(&mut self, room: &str, channel: &str) -> Result<ChannelKey, ProtocolError> {
        Ok(ChannelKey { room: reuse(&mut self.room, room)?, channel: reuse(&mut self.channel, channel)? })
    }

    /// [`Self::key`] of the envelope head's room and channel (`room` and
    /// `channel` are its names): kept with the head, so that a frame that
    /// resumed at the head's end compares no names.
    pub(crate) fn head_key(&mut self, room: &str, channel: &str) -> Result<ChannelKey, ProtocolError> {
        if let Some(key) = self.head.kept_key() {
            return Ok(key.clone());
        }
        let key = self.key(room, channel)?;
        self.head.keep_key(key.clone());
        Ok(key)
    }

    /// [`Name::parse`] of a room, reusing the last room name if it matches.
    pub fn room(&mut self, room: &str) -> Result<Name, ProtocolError> {
        reuse(&mut self.room, room)
    }

    /// Takes `key`'s names for the equal ones kept here (a channel's own
    /// key, say), so that the keys handed out from now on share their
    /// text with it and compare equal by pointer, without reading it.
    pub fn adopt(&mut self, key: &ChannelKey) {
        let take = |kept: &mut Option<Name>, name: &Name| {
            if kept.as_ref() == Some(name) {
                *kept = Some(name.clone());
            }
        };
        take(&mut self.room, &key.room);
        take(&mut self.channel, &key.channel);
        if self.head.kept_key() == Some(key) {
            self.head.keep_key(key.clone());
        }
    }
}

fn reuse(last: &mut Option<Name>, text: &str) -> Result<Name, ProtocolError> {
    if let Some(name) = last
        && name.as_str() == text
    {
        return Ok(name.clone());
    }
    let name = Name::parse(text)?;
    *last = Some(name.clone());
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_alphabet_and_length_bounds() {
        for ok in ["a", "Z", "0", "a_b-c.d", &"x".repeat(64)] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", " ", "a b", "a/b", "é", "a\n", &"x".repeat(65), "a*", "#x"] {
            assert_eq!(Name::parse(bad).unwrap_err().code, ErrorCode::InvalidName, "{bad:?}");
        }
    }

    #[test]
    fn recent_names_are_reused_and_checked_like_fresh_ones() {
        let mut names = RecentNames::default();
        let first = names.key("room", "chat").unwrap();
        let again = names.key("room", "chat").unwrap();
        assert_eq!(first, ChannelKey::parse("room", "chat").unwrap());
        assert_eq!(again, first);
        assert!(std::ptr::eq(first.room.as_str(), again.room.as_str()), "the same room name, not a copy");
        assert!(std::ptr::eq(first.channel.as_str(), again.channel.as_str()));
        let other = names.key("room", "news").unwrap();
        assert_eq!(other, ChannelKey::parse("room", "news").unwrap());
        assert!(std::ptr::eq(first.room.as_str(), other.room.as_str()));
        assert_eq!(names.room("room").unwrap(), Name::parse("room").unwrap());
        for (room, channel) in [("room", "bad name"), ("", "chat"), ("r".repeat(65).as_str(), "chat")] {
            let fresh = ChannelKey::parse(room, channel).unwrap_err();
            let recent = names.key(room, channel).unwrap_err();
            assert_eq!((recent.code, recent.message), (fresh.code, fresh.message));
        }
        assert_eq!(names.key("room", "news").unwrap(), other, "a refused name does not replace a good one");
    }

    #[test]
    fn names_are_equal_and_hash_alike_by_text_whether_or_not_they_share_it() {
        use std::hash::BuildHasher;
        let (a, b, c) = (Name::parse("room").unwrap(), Name::parse("room").unwrap(), Name::parse("rooms").unwrap());
        assert!(!std::ptr::eq(a.as_str(), b.as_str()));
        assert_eq!(a, b);
        assert_eq!(a, a.clone());
        assert_ne!(a, c);
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
        assert_eq!(hasher.hash_one(&a), hasher.hash_one("room"));
    }

    #[test]
    fn adopted_names_are_handed_out_from_then_on_and_unequal_ones_are_not_taken() {
        let same = |a: &ChannelKey, b: &ChannelKey| {
            std::ptr::eq(a.room.as_str(), b.room.as_str()) && std::ptr::eq(a.channel.as_str(), b.channel.as_str())
        };
        let mut names = RecentNames::default();
        let before = names.head_key("room", "chat").unwrap();
        // The channel's own key: equal, another allocation.
        let own = ChannelKey::parse("room", "chat").unwrap();
        assert!(!same(&before, &own));
        names.adopt(&own);
        assert!(same(&names.key("room", "chat").unwrap(), &own));
        assert!(same(&names.head_key("room", "chat").unwrap(), &own));
        // Another key: only what is equal is taken, the head's key stays.
        let elsewhere = ChannelKey::parse("elsewhere", "chat").unwrap();
        names.adopt(&elsewhere);
        assert!(same(&names.head_key("room", "chat").unwrap(), &own));
        let key = names.key("room", "chat").unwrap();
        assert_eq!(key, own);
        assert!(std::ptr::eq(key.room.as_str(), own.room.as_str()));
    }
}
