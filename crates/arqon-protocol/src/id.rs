use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

use crate::{ErrorCode, ProtocolError};

const PREFIX: &str = "arq_";
const ULID_LEN: usize = 26;
/// `arq_` + 26 characters.
const ID_LEN: usize = PREFIX.len() + ULID_LEN;

/// Parses `arq_` + an upper-case Crockford ULID, strictly.
fn parse_ulid(text: &str) -> Option<Ulid> {
    let body = text.strip_prefix(PREFIX)?;
    if text.len() != ID_LEN {
        return None;
    }
    let bytes = body.as_bytes();
    // The first character carries only 3 bits: anything above '7' overflows 128 bits.
    if bytes[0] > b'7' {
        return None;
    }
    // `Ulid::from_string` also accepts lower case and I/L/O aliases; the
    // contract does not, so check the alphabet first.
    let upper_crockford =
        |b: &u8| matches!(b, b'0'..=b'9' | b'A'..=b'H' | b'J' | b'K' | b'M' | b'N' | b'P'..=b'T' | b'V'..=b'Z');
    if !bytes.iter().all(upper_crockford) {
        return None;
    }
    Ulid::from_string(body).ok()
}

/// Crockford's base32, as ULIDs are written.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID and its 26 characters: re-encoding another ULID rewrites only the
/// characters from the first one that differs (ids made one after another
/// share all but their last few). Writing every character was a few percent
/// of a message's CPU, for two ids per delivered frame.
#[derive(Clone, Copy)]
struct Encoded {
    value: u128,
    text: [u8; ULID_LEN],
}

impl Encoded {
    const ZERO: Encoded = Encoded { value: 0, text: [b'0'; ULID_LEN] };

    fn to(mut self, value: u128) -> Encoded {
        let differ = self.value ^ value;
        if differ == 0 {
            return self;
        }
        // Character i holds bits 125 - 5i up to 129 - 5i (the first only
        // bits 125 to 127): the highest differing bit, 127 - leading zeros,
        // falls in character (2 + leading zeros) / 5.
        let first = (differ.leading_zeros() as usize + 2) / 5;
        for (i, digit) in self.text.iter_mut().enumerate().skip(first) {
            let shift = 5 * (ULID_LEN - 1 - i);
            *digit = ALPHABET[((value >> shift) & 31) as usize];
        }
        self.value = value;
        self
    }
}

macro_rules! arq_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Ulid);

        impl $name {
            /// Parses the wire form, `arq_` + 26 upper-case Crockford base32 characters.
            pub fn parse(text: &str) -> Result<Self, ProtocolError> {
                parse_ulid(text).map($name).ok_or_else(|| {
                    ProtocolError::new(
                        ErrorCode::InvalidId,
                        format!(concat!("invalid ", $what, " {:?}: expected arq_ followed by a 26-character upper-case ULID"), text),
                    )
                })
            }

            /// Wraps a ULID.
            pub const fn from_ulid(ulid: Ulid) -> Self {
                $name(ulid)
            }

            /// The ULID inside.
            pub const fn ulid(self) -> Ulid {
                self.0
            }

            /// Writes the wire form into `out` without allocating.
            pub fn write_to(self, out: &mut Vec<u8>) {
                // One per id type and thread: a frame's sender is the same
                // for a read's worth of messages, and consecutive message
                // ids of one connection differ in their last characters.
                thread_local! {
                    static LAST: std::cell::Cell<Encoded> = const { std::cell::Cell::new(Encoded::ZERO) };
                }
                let encoded = LAST.get().to(self.0.0);
                LAST.set(encoded);
                out.extend_from_slice(PREFIX.as_bytes());
                out.extend_from_slice(&encoded.text);
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(PREFIX)?;
                // The one encoder `write_to` uses, from zero: every character.
                let text = Encoded::ZERO.to(self.0.0).text;
                f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = ProtocolError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

arq_id!(
    /// The id of a message or frame: `arq_` + ULID.
    MessageId,
    "id"
);
arq_id!(
    /// The id of a connected client: shaped like a message id.
    ClientId,
    "client id"
);

/// Monotonic id source: ids from one generator sort in the order made, even
/// within one millisecond, and cannot be guessed from the ones before.
///
/// A new millisecond starts from 80 fresh random bits; a later id in the same
/// millisecond (or after the clock went back) is the previous one plus a
/// random step of 1 to 2^32, never plus one. Plus one would let a client that
/// saw another's message id send the next one first: the bus would then take
/// the other's message for a retry of it (PROTOCOL.md section 3) and neither
/// store nor deliver it.
///
/// Not shared: each connection owns one, so id generation takes no lock.
#[derive(Default)]
pub struct IdGenerator {
    /// The last id made (0 before the first).
    last: u128,
}

impl fmt::Debug for IdGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdGenerator").finish_non_exhaustive()
    }
}

/// The random part of a ULID: its low 80 bits.
const RANDOM_BITS: u32 = 80;

impl IdGenerator {
    /// A fresh generator.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next ULID; strictly greater than the previous one.
    pub fn next_ulid(&mut self) -> Ulid {
        self.next_at(crate::Timestamp::now())
    }

    /// The next ULID with its time part from `now` (unless the clock went
    /// back, when the previous id's time carries on).
    fn next_at(&mut self, now: crate::Timestamp) -> Ulid {
        use rand::Rng as _;
        let mut rng = rand::rng();
        // ULIDs hold 48 bits of milliseconds: years 1970 to 10889.
        let ms = u128::from(u64::try_from(now.unix_ms()).unwrap_or(0) & 0xFFFF_FFFF_FFFF);
        // One draw: its top 80 bits for a fresh id, its low 32 for a step.
        let random: u128 = rng.random();
        let fresh = (ms << RANDOM_BITS) | (random >> (128 - RANDOM_BITS));
        let next = if fresh > self.last {
            fresh
        } else {
            let step = (random & u128::from(u32::MAX)) + 1;
            // Past the last ULID there is none greater: the fresh one then.
            self.last.checked_add(step).unwrap_or(fresh)
        };
        self.last = next;
        Ulid(next)
    }

    /// The next message id.
    pub fn message_id(&mut self) -> MessageId {
        MessageId(self.next_ulid())
    }

    /// The next message id, its time part taken from `now` (a clock read
    /// already made for the message's timestamp: the two agree, and the
    /// message path reads the clock once). Strictly greater than the
    /// previous id, as [`message_id`](Self::message_id).
    pub fn message_id_at(&mut self, now: crate::Timestamp) -> MessageId {
        MessageId(self.next_at(now))
    }

    /// The next client id.
    pub fn client_id(&mut self) -> ClientId {
        ClientId(self.next_ulid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example() {
        let id = MessageId::parse("arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P").unwrap();
        assert_eq!(id.to_string(), "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "arq_",
            "01JDQ8Z6W3T7M5KX2C9V4B8N1P",
            "arq_01jdq8z6w3t7m5kx2c9v4b8n1p",
            "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1",
            "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1PP",
            "arq_81JDQ8Z6W3T7M5KX2C9V4B8N1P",
            "arq_01JDQ8Z6W3T7M5KX2C9V4B8NIP",
            "msg_01JDQ8Z6W3T7M5KX2C9V4B8N1P",
            "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1é",
        ] {
            let err = MessageId::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidId, "{bad}");
        }
    }

    #[test]
    fn generator_is_monotonic() {
        let mut ids = IdGenerator::new();
        let mut last = ids.message_id();
        for _ in 0..10_000 {
            let next = ids.message_id();
            assert!(next > last);
            last = next;
        }
    }

    #[test]
    fn ids_at_a_timestamp_carry_it_and_stay_monotonic() {
        let mut ids = IdGenerator::new();
        let now = crate::Timestamp::now();
        let first = ids.message_id_at(now);
        assert_eq!(first.ulid().timestamp_ms(), u64::try_from(now.unix_ms()).unwrap());
        let mut last = first;
        for _ in 0..1_000 {
            let next = ids.message_id_at(now);
            assert!(next > last, "the same millisecond still gives growing ids");
            last = next;
        }
        assert!(ids.message_id() > last);
    }

    #[test]
    fn ids_of_one_millisecond_grow_by_steps_no_one_can_guess() {
        let mut ids = IdGenerator::new();
        let now = crate::Timestamp::from_unix_ms(1_765_000_000_000);
        let made: Vec<u128> = (0..2_000).map(|_| ids.message_id_at(now).ulid().0).collect();
        let steps: Vec<u128> = made.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(steps.iter().all(|&step| step > 0), "strictly growing");
        // Plus one (what a counter does) would let a client send another's
        // next id first; one in 2^32 by chance, so never here.
        assert!(!steps.contains(&1), "a step of one");
        let distinct: std::collections::HashSet<&u128> = steps.iter().collect();
        assert!(distinct.len() > steps.len() * 9 / 10, "steps are random, not a pattern");
        assert!(made.iter().all(|&id| id >> 80 == 1_765_000_000_000), "every id carries the millisecond");
        // A clock that goes back keeps the order.
        let earlier = ids.message_id_at(crate::Timestamp::from_unix_ms(1_700_000_000_000)).ulid().0;
        assert!(earlier > made[made.len() - 1]);
        // Generators do not follow one another.
        let mut other = IdGenerator::new();
        assert_ne!(other.message_id_at(now).ulid().0 >> 40, made[0] >> 40);
    }

    #[test]
    fn write_to_matches_display() {
        let id = IdGenerator::new().message_id();
        let mut out = Vec::new();
        id.write_to(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), id.to_string());
    }

    /// `write_to` rewrites only the characters that changed since the
    /// thread's last id: every kind of change must still give the exact text.
    #[test]
    fn write_to_matches_display_whatever_came_before() {
        let written = |id: MessageId| {
            let mut out = Vec::new();
            id.write_to(&mut out);
            String::from_utf8(out).unwrap()
        };
        let mut ids = IdGenerator::new();
        let mut values: Vec<u128> = (0..200).map(|_| ids.message_id().ulid().0).collect();
        // Each bit on its own (every character boundary), all ones, zero, and
        // a pseudo-random walk that jumps anywhere.
        values.extend((0..128).map(|bit| 1u128 << bit));
        values.extend([u128::MAX, 0, u128::MAX, 1, 0]);
        let mut x = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834_u128;
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x);
            values.push(x.wrapping_add(1));
            values.push(x ^ 0xFFFF);
        }
        for value in values {
            let id = MessageId::from_ulid(Ulid(value));
            assert_eq!(written(id), id.to_string(), "{value:#x}");
            // And both are the ulid crate's text.
            assert_eq!(written(id), format!("arq_{}", Ulid(value)), "{value:#x}");
            // Once more: the same value, unchanged text.
            assert_eq!(written(id), id.to_string(), "{value:#x} again");
        }
        // Client ids keep their own last text.
        let client = ClientId::from_ulid(Ulid(7));
        let mut out = Vec::new();
        client.write_to(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), client.to_string());
    }
}
