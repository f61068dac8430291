//! How answers are printed: for people by default, and with `--json` as one
//! JSON value per line on stdout, for scripts.

use std::io::Write;

use arqon_client::Message;
use serde_json::{Value, json};

/// A message as a JSON object: the wire's fields, with the payload as sent.
pub(crate) fn message_json(message: &Message) -> Value {
    json!({
        "id": message.id.to_string(),
        "room": message.room.as_ref().map(|r| r.as_str()),
        "channel": message.channel.as_ref().map(|c| c.as_str()),
        "from": message.from_label(),
        "user": message.user,
        // The payload was valid JSON on the wire; `null` only if it was not.
        "payload": serde_json::from_str::<Value>(message.payload.get()).unwrap_or(Value::Null),
        "meta": message.meta,
        "timestamp": message.timestamp.to_string(),
    })
}

/// Prints one message: `ID TIMESTAMP FROM PAYLOAD` (`FROM(USER)` when the
/// sender has a user; `server` for the server API) for people, or its JSON
/// object. Flushed at once so that a pipe sees each message as it arrives.
/// Returns `false` once stdout is closed (`arqon sub ... | head -1`).
pub(crate) fn print_message(message: &Message, json: bool) -> bool {
    let line = if json {
        message_json(message).to_string()
    } else {
        let from = match &message.user {
            Some(user) => format!("{}({user})", message.from_label()),
            None => message.from_label(),
        };
        format!("{} {} {from} {}", message.id, message.timestamp, message.payload.get())
    };
    print_line(&line)
}

/// Prints a line on stdout and flushes it; `false` if stdout is closed.
pub(crate) fn print_line(line: &str) -> bool {
    let mut out = std::io::stdout().lock();
    // A closed pipe is not worth a panic (println! would panic).
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// A JSON object as `key: value` lines, nested keys joined with dots:
/// `storage.backend: memory`.
pub(crate) fn flatten(value: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    walk(value, "", &mut lines);
    lines
}

fn walk(value: &Value, prefix: &str, lines: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                walk(value, &key, lines);
            }
        }
        Value::String(text) => lines.push(format!("{prefix}: {text}")),
        other => lines.push(format!("{prefix}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_objects_flatten_with_dots() {
        let value = json!({"version": "0.1.0", "connections": 2, "storage": {"backend": "memory", "healthy": true}});
        assert_eq!(
            flatten(&value),
            ["connections: 2", "storage.backend: memory", "storage.healthy: true", "version: 0.1.0"]
        );
    }
}
