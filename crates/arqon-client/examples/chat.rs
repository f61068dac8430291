//! Run with: cargo run -p arqon-client --example chat -- ws://127.0.0.1:9100/ws ROOM CHANNEL [--nick NAME]
//!
//! A terminal chat: every line typed on stdin is published to ROOM/CHANNEL
//! as `{"nick": NAME, "text": LINE}` (the Python SDK's chat speaks the same),
//! and every message of that channel is printed as `[HH:MM:SS] <nick> text`,
//! your own lines included. Survives the bus restarting: the client
//! reconnects and replays what it missed.

use std::collections::HashMap;

use arqon_client::{Client, ClientId, ClientOptions, Event, Incoming, Message, Timestamp};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut nick = std::env::var("USER").unwrap_or_else(|_| "anon".to_owned());
    if let Some(at) = args.iter().position(|a| a == "--nick") {
        if at + 1 >= args.len() {
            eprintln!("--nick needs a name");
            std::process::exit(2);
        }
        nick = args.remove(at + 1);
        args.remove(at);
    }
    let [url, room, channel] = <[String; 3]>::try_from(args).unwrap_or_else(|_| {
        eprintln!("usage: chat URL ROOM CHANNEL [--nick NAME]   (e.g. ws://127.0.0.1:9100/ws lobby general)");
        std::process::exit(2);
    });
    let token = std::env::var("ARQON_TOKEN").ok();
    let client = Client::connect_with(&url, ClientOptions { token, ..ClientOptions::default() }).await?;
    let mut events = client.events().ok_or("events already taken")?;
    let joined = client.join(&room, &channel).await?;
    println!(
        "* you are {nick} ({}) in {room}/{channel} with {} member(s); type a line and press enter",
        short(&client.server_info().client_id),
        joined.members
    );

    // Print what arrives, on its own task, while main reads stdin.
    let printer = tokio::spawn(async move {
        // Nicks learned from messages, to name members who join or leave.
        let mut nicks: HashMap<ClientId, String> = HashMap::new();
        while let Some(item) = events.next().await {
            match item {
                Incoming::Message(message) => println!("{}", line(&message, &mut nicks)),
                Incoming::Event(Event::MemberJoined { client_id, .. }) => {
                    println!("* {} joined", who(&client_id, &nicks))
                }
                Incoming::Event(Event::MemberLeft { client_id, .. }) => println!("* {} left", who(&client_id, &nicks)),
                Incoming::Disconnected { error } => println!("* connection lost ({error}); reconnecting"),
                Incoming::Reconnected { .. } => println!("* reconnected"),
                Incoming::Truncated { .. } => println!("* some messages may have been missed"),
                Incoming::Closed { error } => println!("* closed: {error}"),
                other => println!("* {other:?}"),
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(text) = lines.next_line().await? {
        if text.trim().is_empty() {
            continue;
        }
        match client.publish(&room, &channel, &serde_json::json!({ "nick": nick, "text": text })).await {
            // The bus delivers to every member but the sender: echo it here.
            Ok(_) => println!("[{}] <{nick}> {text}", clock(&Timestamp::now())),
            Err(error) => eprintln!("* not sent: {error}"),
        }
    }
    client.close().await;
    let _ = printer.await;
    Ok(())
}

/// One message as `[HH:MM:SS] <nick> text`. The nick is the payload's
/// `nick`, else the sender's short id; a payload without `text` is shown
/// as the JSON it is.
fn line(message: &Message, nicks: &mut HashMap<ClientId, String>) -> String {
    let value = message.payload_as::<serde_json::Value>().unwrap_or(serde_json::Value::Null);
    let text = match value.get("text").and_then(|t| t.as_str()) {
        Some(text) => text.to_owned(),
        None => message.payload.get().to_owned(),
    };
    let nick = match (value.get("nick").and_then(|n| n.as_str()).filter(|n| !n.is_empty()), message.from_client()) {
        (Some(nick), Some(from)) => {
            nicks.insert(from, nick.to_owned());
            nick.to_owned()
        }
        (Some(nick), None) => nick.to_owned(),
        (None, Some(from)) => short(&from),
        // The application's backend, through the server API.
        (None, None) => message.from_label(),
    };
    format!("[{}] <{nick}> {text}", clock(&message.timestamp))
}

/// A member by nick if one was seen, else by short id.
fn who(id: &ClientId, nicks: &HashMap<ClientId, String>) -> String {
    nicks.get(id).cloned().unwrap_or_else(|| short(id))
}

/// The last 6 characters of a client id: enough to tell people apart.
fn short(id: &ClientId) -> String {
    let id = id.to_string();
    id[id.len().saturating_sub(6)..].to_owned()
}

/// `HH:MM:SS` of an RFC 3339 timestamp (UTC).
fn clock(at: &Timestamp) -> String {
    let text = at.to_string();
    text.get(11..19).unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn message(payload: &str) -> Message {
        let frame = format!(
            r#"{{"id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P","room":"r","channel":"c","from":"arq_01JDQ0AAAAAAAAAAAAAABCDEFG",
               "payload":{payload},"timestamp":"2026-11-29T12:34:56.789Z"}}"#
        );
        serde_json::from_str(&frame).unwrap()
    }

    #[test]
    fn lines_show_the_nick_or_a_short_id_never_a_placeholder() {
        let mut nicks = HashMap::new();
        assert_eq!(line(&message(r#"{"nick":"ana","text":"hi"}"#), &mut nicks), "[12:34:56] <ana> hi");
        let from: ClientId = "arq_01JDQ0AAAAAAAAAAAAAABCDEFG".parse().unwrap();
        assert_eq!(who(&from, &nicks), "ana");
        let mut fresh = HashMap::new();
        assert_eq!(line(&message(r#"{"text":"no nick"}"#), &mut fresh), "[12:34:56] <BCDEFG> no nick");
        assert_eq!(line(&message("42"), &mut fresh), "[12:34:56] <BCDEFG> 42");
        assert_eq!(who(&from, &fresh), "BCDEFG");
    }
}
