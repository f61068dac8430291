//! `arqon pub ROOM/CHANNEL JSON|-`: publish and wait until the bus has
//! stored it.

use arqon_client::{ChannelKey, Client, MessageId, PublishOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::Failure;
use crate::args::Invocation;
use crate::cmd::{Command, channel, connect, failed, one_shot};
use crate::output::print_line;

pub(crate) const COMMAND: Command = Command {
    name: "pub",
    usage: "pub ROOM/CHANNEL JSON|- [--id ID]",
    summary: "publish a JSON payload; with -, one payload per line of stdin",
    options: &[("--id ID", "the message id (publishing an id again stores it once); one payload only")],
    valued: &["--id"],
    operands: (2, 2),
};

pub(crate) async fn run(invocation: &Invocation) -> Result<(), Failure> {
    let key = channel(&invocation.opts.operands[0])?;
    let source = invocation.opts.operands[1].as_str();
    let id = match invocation.opts.value("--id") {
        Some(text) => Some(MessageId::parse(text).map_err(|e| Failure::Usage(format!("--id: {}", e.message)))?),
        None => None,
    };
    if source != "-" {
        // Checked before connecting: a typo costs no round trip.
        let payload = parse_payload(source, None)?;
        let client = connect(invocation, one_shot()).await?;
        let result = publish(&client, &key, &payload, id, invocation.json).await;
        client.close().await;
        return result;
    }
    if id.is_some() {
        return Err(Failure::Usage("--id takes one payload, not stdin lines".to_owned()));
    }
    let client = connect(invocation, one_shot()).await?;
    let result = publish_lines(&client, &key, invocation.json).await;
    client.close().await;
    result
}

/// Publishes each non-empty line of stdin, in order; stops at the first
/// line that is not JSON (those before it are published).
async fn publish_lines(client: &Client, key: &ChannelKey, json: bool) -> Result<(), Failure> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut number = 0u64;
    loop {
        let line = lines.next_line().await.map_err(|e| Failure::Usage(format!("reading stdin: {e}")))?;
        let Some(line) = line else { return Ok(()) };
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let payload = parse_payload(&line, Some(number))?;
        publish(client, key, &payload, None, json).await?;
    }
}

async fn publish(
    client: &Client,
    key: &ChannelKey,
    payload: &Value,
    id: Option<MessageId>,
    json: bool,
) -> Result<(), Failure> {
    let options = PublishOptions { id, ..PublishOptions::default() };
    let id = client
        .publish_with(&key.room, &key.channel, payload, options)
        .await
        .map_err(|e| failed(&format!("publish to {key}"), e))?;
    if json {
        print_line(
            &json!({"id": id.to_string(), "room": key.room.as_str(), "channel": key.channel.as_str()}).to_string(),
        );
    } else {
        print_line(&format!("published to {key} as {id}"));
    }
    Ok(())
}

fn parse_payload(text: &str, line: Option<u64>) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| {
        let place = line.map(|n| format!("stdin line {n}")).unwrap_or_else(|| "the payload".to_owned());
        Failure::Usage(format!(
            "{place} is not JSON ({e}); quote it for the shell, e.g. '{{\"text\":\"hello\"}}' or '\"just a string\"'"
        ))
    })
}
