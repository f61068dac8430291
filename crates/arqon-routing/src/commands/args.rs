//! Command argument parsing, with the contract's order: every name is
//! checked (`INVALID_NAME`) before any other argument problem (`INVALID_ARGS`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use arqon_protocol::{
    ChannelKey, ClientId, ErrorCode, MAX_META_KEYS, MessageId, Name, ProtocolError, RawJson, RawValue,
};
use serde::Serialize;

/// What type an argument has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ArgKind {
    /// A room or channel name.
    Name,
    /// A message id (`arq_` + ULID).
    MessageId,
    /// An integer from 1 to 1000.
    Limit,
    /// Any JSON value.
    Json,
    /// An object of at most 16 string values.
    Meta,
    /// `true` or `false`.
    Bool,
    /// A client id (`arq_` + ULID).
    ClientId,
    /// A string of at most 256 bytes.
    Text,
    /// An application close code, 4000 to 4999.
    CloseCode,
}

/// One argument of a command, as `help` shows it.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ArgSpec {
    pub(crate) name: &'static str,
    #[serde(rename = "type")]
    pub(crate) kind: ArgKind,
    pub(crate) required: bool,
    pub(crate) description: &'static str,
}

impl ArgSpec {
    pub(crate) const fn required(name: &'static str, kind: ArgKind, description: &'static str) -> Self {
        ArgSpec { name, kind, required: true, description }
    }

    pub(crate) const fn optional(name: &'static str, kind: ArgKind, description: &'static str) -> Self {
        ArgSpec { name, kind, required: false, description }
    }
}

/// Longest [`ArgKind::Text`] argument, in bytes.
pub(crate) const MAX_TEXT_BYTES: usize = 256;

/// Largest `limit` a command accepts.
pub(crate) const MAX_LIMIT: u64 = 1000;

#[derive(Debug)]
enum Value<'a> {
    Name(Name),
    Id(MessageId),
    Client(ClientId),
    Text(String),
    Int(u64),
    Bool(bool),
    Raw(&'a RawValue),
}

/// Validated arguments of one command call.
#[derive(Debug, Default)]
pub(crate) struct Args<'a> {
    values: BTreeMap<&'static str, Value<'a>>,
}

fn invalid(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidArgs, message)
}

impl<'a> Args<'a> {
    /// Checks `raw` (an object, or absent) against `specs`.
    pub(crate) fn parse(raw: Option<RawJson<'a>>, specs: &'static [ArgSpec]) -> Result<Self, ProtocolError> {
        let given: BTreeMap<Cow<'a, str>, &'a RawValue> = match raw {
            Some(raw) => {
                serde_json::from_str(raw.get()).map_err(|e| invalid(format!("args must be an object: {e}")))?
            }
            None => BTreeMap::new(),
        };
        // Names first: INVALID_NAME outranks INVALID_ARGS.
        let mut values = BTreeMap::new();
        for spec in specs.iter().filter(|s| s.kind == ArgKind::Name) {
            if let Some(raw) = given.get(spec.name)
                && let Ok(text) = serde_json::from_str::<Cow<'_, str>>(raw.get())
            {
                values.insert(spec.name, Value::Name(Name::parse(&text)?));
            }
        }
        if let Some(unknown) = given.keys().find(|k| !specs.iter().any(|s| s.name == k.as_ref())) {
            let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
            return Err(invalid(format!(
                "unknown argument {unknown:?} (this command takes: {})",
                if known.is_empty() { "nothing".to_owned() } else { known.join(", ") }
            )));
        }
        for spec in specs {
            let Some(raw) = given.get(spec.name).copied() else {
                if spec.required {
                    return Err(invalid(format!("missing argument {:?} ({})", spec.name, spec.description)));
                }
                continue;
            };
            let value = match spec.kind {
                ArgKind::Name => match values.remove(spec.name) {
                    Some(name) => name,
                    None => return Err(invalid(format!("argument {:?} must be a string", spec.name))),
                },
                ArgKind::MessageId => serde_json::from_str::<Cow<'_, str>>(raw.get())
                    .ok()
                    .and_then(|text| MessageId::parse(&text).ok())
                    .map(Value::Id)
                    .ok_or_else(|| invalid(format!("argument {:?} must be a message id (arq_ + ULID)", spec.name)))?,
                ArgKind::Limit => serde_json::from_str::<u64>(raw.get())
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .map(Value::Int)
                    .ok_or_else(|| {
                        invalid(format!("argument {:?} must be an integer from 1 to {MAX_LIMIT}", spec.name))
                    })?,
                ArgKind::Json => Value::Raw(raw),
                ArgKind::ClientId => serde_json::from_str::<Cow<'_, str>>(raw.get())
                    .ok()
                    .and_then(|text| ClientId::parse(&text).ok())
                    .map(Value::Client)
                    .ok_or_else(|| invalid(format!("argument {:?} must be a client id (arq_ + ULID)", spec.name)))?,
                ArgKind::Text => serde_json::from_str::<String>(raw.get())
                    .ok()
                    .filter(|text| text.len() <= MAX_TEXT_BYTES)
                    .map(Value::Text)
                    .ok_or_else(|| {
                        invalid(format!("argument {:?} must be a string of at most {MAX_TEXT_BYTES} bytes", spec.name))
                    })?,
                ArgKind::CloseCode => serde_json::from_str::<u64>(raw.get())
                    .ok()
                    .filter(|n| (4000..=4999).contains(n))
                    .map(Value::Int)
                    .ok_or_else(|| {
                        invalid(format!("argument {:?} must be a close code from 4000 to 4999", spec.name))
                    })?,
                ArgKind::Bool => serde_json::from_str::<bool>(raw.get())
                    .map(Value::Bool)
                    .map_err(|_| invalid(format!("argument {:?} must be true or false", spec.name)))?,
                ArgKind::Meta => {
                    let ok = serde_json::from_str::<BTreeMap<Cow<'_, str>, Cow<'_, str>>>(raw.get())
                        .is_ok_and(|m| m.len() <= MAX_META_KEYS);
                    if !ok {
                        return Err(invalid(format!(
                            "argument {:?} must be an object of at most {MAX_META_KEYS} string values",
                            spec.name
                        )));
                    }
                    Value::Raw(raw)
                }
            };
            values.insert(spec.name, value);
        }
        Ok(Args { values })
    }

    pub(crate) fn name(&self, key: &str) -> Option<&Name> {
        match self.values.get(key) {
            Some(Value::Name(name)) => Some(name),
            _ => None,
        }
    }

    /// `room` + `channel`; only called by commands whose spec requires both.
    pub(crate) fn channel_key(&self) -> Result<ChannelKey, ProtocolError> {
        match (self.name("room"), self.name("channel")) {
            (Some(room), Some(channel)) => Ok(ChannelKey::new(room.clone(), channel.clone())),
            _ => Err(invalid("room and channel are required".to_owned())),
        }
    }

    pub(crate) fn message_id(&self, key: &str) -> Option<MessageId> {
        match self.values.get(key) {
            Some(Value::Id(id)) => Some(*id),
            _ => None,
        }
    }

    pub(crate) fn client_id(&self, key: &str) -> Option<ClientId> {
        match self.values.get(key) {
            Some(Value::Client(id)) => Some(*id),
            _ => None,
        }
    }

    pub(crate) fn text(&self, key: &str) -> Option<&str> {
        match self.values.get(key) {
            Some(Value::Text(text)) => Some(text),
            _ => None,
        }
    }

    pub(crate) fn int(&self, key: &str) -> Option<u64> {
        match self.values.get(key) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Option<bool> {
        match self.values.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub(crate) fn raw(&self, key: &str) -> Option<RawJson<'a>> {
        match self.values.get(key) {
            Some(Value::Raw(raw)) => Some(RawJson::from(*raw)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SPECS: [ArgSpec; 4] = [
        ArgSpec::required("room", ArgKind::Name, "room"),
        ArgSpec::required("channel", ArgKind::Name, "channel"),
        ArgSpec::optional("limit", ArgKind::Limit, "limit"),
        ArgSpec::optional("before", ArgKind::MessageId, "cursor"),
    ];

    fn parse(json: &str) -> Result<(), ProtocolError> {
        let raw: &RawValue = serde_json::from_str(json).unwrap();
        Args::parse(Some(raw.into()), &SPECS).map(|_| ())
    }

    #[test]
    fn names_are_checked_before_anything_else() {
        let err = parse(r#"{"room":"a b","bogus":1}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidName);
        let err = parse(r#"{"room":"r","channel":"c","limit":0}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgs);
        assert!(err.message.contains("limit"), "{}", err.message);
    }

    #[test]
    fn each_problem_names_its_field() {
        for (json, field) in [
            (r#"{"room":"r"}"#, "channel"),
            (r#"{"room":"r","channel":5}"#, "channel"),
            (r#"{"room":"r","channel":"c","limit":1001}"#, "limit"),
            (r#"{"room":"r","channel":"c","limit":"5"}"#, "limit"),
            (r#"{"room":"r","channel":"c","before":"x"}"#, "before"),
            (r#"{"room":"r","channel":"c","extra":true}"#, "extra"),
        ] {
            let err = parse(json).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgs, "{json}");
            assert!(err.message.contains(field), "{json}: {}", err.message);
        }
        assert!(parse(r#"{"room":"r","channel":"c","limit":1000}"#).is_ok());
    }
}
