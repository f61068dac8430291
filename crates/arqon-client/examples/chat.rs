//! Run with: cargo run -p arqon-client --example chat -- ws://127.0.0.1:9100/ws ROOM CHANNEL
//!
//! A terminal chat: every line typed on stdin is published to ROOM/CHANNEL,
//! and every message of that channel is printed. Survives the bus
//! restarting: the client reconnects and replays what it missed.

use arqon_client::{Client, ClientOptions, Event, Incoming};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(room), Some(channel)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: chat URL ROOM CHANNEL   (e.g. ws://127.0.0.1:9100/ws lobby general)");
        std::process::exit(2);
    };
    let token = std::env::var("ARQON_TOKEN").ok();
    let client = Client::connect_with(&url, ClientOptions { token, ..ClientOptions::default() }).await?;
    let mut events = client.events().ok_or("events already taken")?;
    let joined = client.join(&room, &channel).await?;
    println!(
        "* you are {} in {room}/{channel} with {} member(s); type a line and press enter",
        client.server_info().client_id,
        joined.members
    );

    // Print what arrives, on its own task, while main reads stdin.
    let printer = tokio::spawn(async move {
        while let Some(item) = events.next().await {
            match item {
                Incoming::Message(message) => {
                    let text = message
                        .payload_as::<serde_json::Value>()
                        .ok()
                        .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_owned))
                        .unwrap_or_else(|| message.payload.get().to_owned());
                    println!("[{}] {}: {text}", message.timestamp, message.from);
                }
                Incoming::Event(Event::MemberJoined { client_id, .. }) => println!("* {client_id} joined"),
                Incoming::Event(Event::MemberLeft { client_id, .. }) => println!("* {client_id} left"),
                Incoming::Disconnected { error } => println!("* connection lost ({error}); reconnecting"),
                Incoming::Reconnected { .. } => println!("* reconnected"),
                Incoming::Truncated { .. } => println!("* some messages may have been missed"),
                Incoming::Closed { error } => println!("* closed: {error}"),
                other => println!("* {other:?}"),
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        if let Err(error) = client.publish(&room, &channel, &serde_json::json!({ "text": line })).await {
            eprintln!("* not sent: {error}");
        }
    }
    client.close().await;
    let _ = printer.await;
    Ok(())
}
