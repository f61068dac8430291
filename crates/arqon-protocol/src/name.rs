use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ErrorCode, ProtocolError};

/// Longest room or channel name.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// A room or channel name: 1 to 64 characters of `A-Z a-z 0-9 _ - .`.
///
/// Cheap to clone (shared), and needs no escaping in JSON.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

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
}
