//! `arqon history ROOM/CHANNEL`: the newest kept messages, oldest first.

use arqon_client::MessageId;

use crate::Failure;
use crate::args::Invocation;
use crate::cmd::{Command, channel, connect, failed, one_shot};
use crate::output::print_message;

pub(crate) const COMMAND: Command = Command {
    name: "history",
    usage: "history ROOM/CHANNEL [--limit N] [--before ID]",
    summary: "print the newest kept messages, oldest first",
    options: &[("--limit N", "how many, 1 to 1000 (default 50)"), ("--before ID", "only messages older than ID")],
    valued: &["--limit", "--before"],
    operands: (1, 1),
};

pub(crate) async fn run(invocation: &Invocation) -> Result<(), Failure> {
    let key = channel(&invocation.opts.operands[0])?;
    let limit = invocation.opts.number("--limit", 50u32, 1, 1000)?;
    let before = match invocation.opts.value("--before") {
        Some(text) => Some(MessageId::parse(text).map_err(|e| Failure::Usage(format!("--before: {}", e.message)))?),
        None => None,
    };
    let client = connect(invocation, one_shot()).await?;
    let page = client.history(&key.room, &key.channel, Some(limit), before).await;
    client.close().await;
    let messages = page.map_err(|e| failed(&format!("history of {key}"), e))?;
    for message in &messages {
        print_message(message, invocation.json);
    }
    if !invocation.json && messages.is_empty() {
        eprintln!("{key} keeps no messages{}", if before.is_some() { " before that id" } else { "" });
    }
    Ok(())
}
