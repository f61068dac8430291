//! `arqon sub ROOM/CHANNEL`: join a channel and print its messages as they
//! arrive, across restarts of the bus.

use arqon_client::{ClientOptions, Event, Incoming, MessageId};

use crate::Failure;
use crate::args::Invocation;
use crate::cmd::{Command, channel, connect, failed};
use crate::output::print_message;

pub(crate) const COMMAND: Command = Command {
    name: "sub",
    usage: "sub ROOM/CHANNEL [--since ID] [--count N]",
    summary: "join a channel and print its messages until Ctrl-C",
    options: &[("--since ID", "first replay the kept messages newer than ID"), ("--count N", "exit after N messages")],
    valued: &["--since", "--count"],
    operands: (1, 1),
};

pub(crate) async fn run(invocation: &Invocation) -> Result<(), Failure> {
    let key = channel(&invocation.opts.operands[0])?;
    let since = match invocation.opts.value("--since") {
        Some(text) => Some(MessageId::parse(text).map_err(|e| Failure::Usage(format!("--since: {}", e.message)))?),
        None => None,
    };
    let count = invocation.opts.number("--count", u64::MAX, 1, u64::MAX)?;
    // Reconnecting: the client re-joins with `since` = the last message
    // printed, so nothing is lost or printed twice across a restart.
    let client = connect(invocation, ClientOptions::default()).await?;
    let mut events = client.events().ok_or_else(|| Failure::Connect("no event stream".to_owned()))?;
    let joined =
        client.join_channel(&key.room, &key.channel, since).await.map_err(|e| failed(&format!("join {key}"), e))?;
    // A note on stderr, so that stdout holds messages only; scripts (and the
    // tests) wait for it before publishing.
    eprintln!(
        "subscribed to {key} as {} ({} member(s)); waiting for messages, Ctrl-C to stop",
        client.server_info().client_id,
        joined.members
    );
    if joined.truncated == Some(true) {
        eprintln!("note: {key} no longer keeps that id; replaying from its oldest kept message");
    }
    let mut printed = 0u64;
    while printed < count {
        let Some(item) = events.recv().await else { break };
        match item {
            Incoming::Message(message) => {
                if !print_message(&message, invocation.json) {
                    // Nobody reads stdout any more (`| head -1`): done.
                    break;
                }
                printed += 1;
            }
            Incoming::Event(Event::MemberJoined { client_id, user, .. }) => {
                eprintln!("* {client_id}{} joined {key}", user_suffix(user.as_deref()));
            }
            Incoming::Event(Event::MemberLeft { client_id, user, .. }) => {
                eprintln!("* {client_id}{} left {key}", user_suffix(user.as_deref()));
            }
            Incoming::Event(Event::ChannelDeleted { .. }) => {
                client.close().await;
                return Err(Failure::Refused(format!("{key} was deleted")));
            }
            Incoming::Event(Event::ChannelLeft { room, channel }) if room == key.room && channel == key.channel => {
                client.close().await;
                return Err(Failure::Refused(format!("the application took this client out of {key}")));
            }
            Incoming::Event(Event::Disconnected { code, reason }) => {
                client.close().await;
                return Err(Failure::Refused(format!("disconnected by the application ({code} {reason})")));
            }
            Incoming::Event(Event::ChannelGap { .. }) => {
                eprintln!("* the bus lost touch with its cluster: what follows fills in what {key} missed")
            }
            Incoming::Event(Event::Shutdown { reason }) => eprintln!("* the bus is stopping ({reason})"),
            Incoming::Disconnected { error } => eprintln!("* connection lost ({error}); reconnecting"),
            Incoming::Reconnected { .. } => eprintln!("* reconnected; replaying what was missed"),
            Incoming::Truncated { .. } => eprintln!("* some messages of {key} may have been missed"),
            Incoming::Lagged { dropped } => eprintln!("* {dropped} events dropped (output too slow)"),
            Incoming::Closed { error } => return Err(Failure::Connect(format!("connection closed: {error}"))),
            other => eprintln!("* {other:?}"),
        }
    }
    client.close().await;
    Ok(())
}

/// ` (USER)` after a client id, when it has a user.
fn user_suffix(user: Option<&str>) -> String {
    user.map(|user| format!(" ({user})")).unwrap_or_default()
}
