//! `arqon presence ROOM/CHANNEL`: who is in a channel (PROTOCOL.md 8.2).

use arqon_client::{ClientId, PresenceMember};
use serde_json::{Value, json};

use crate::Failure;
use crate::args::Invocation;
use crate::cmd::{Command, channel, connect, failed, one_shot};
use crate::output::print_line;

pub(crate) const COMMAND: Command = Command {
    name: "presence",
    usage: "presence ROOM/CHANNEL [--limit N] [--after ID]",
    summary: "who is in a channel: connections, their users, when they joined",
    options: &[
        ("--limit N", "members per page, 1 to 1000 (default 100)"),
        ("--after ID", "start after this client id (the last of the previous page)"),
    ],
    valued: &["--limit", "--after"],
    operands: (1, 1),
};

pub(crate) async fn run(invocation: &Invocation) -> Result<(), Failure> {
    let key = channel(&invocation.opts.operands[0])?;
    let limit = invocation.opts.number("--limit", 100u32, 1, 1000)?;
    let after = match invocation.opts.value("--after") {
        Some(text) => Some(ClientId::parse(text).map_err(|e| Failure::Usage(format!("--after: {}", e.message)))?),
        None => None,
    };
    let client = connect(invocation, one_shot()).await?;
    let page = client.presence(&key.room, &key.channel, Some(limit), after).await;
    client.close().await;
    let page = page.map_err(|e| failed(&format!("presence of {key}"), e))?;
    if invocation.json {
        let members: Vec<Value> = page.members.iter().map(member_json).collect();
        print_line(&json!({"members": members, "total": page.total, "users": page.users}).to_string());
        return Ok(());
    }
    print_line(&format!("{key}: {} connection(s), {} user(s)", page.total, page.users));
    for member in &page.members {
        print_line(&member_line(member));
    }
    // A full page may not be the last: say how to get the next one.
    if let Some(last) = page.members.last()
        && u32::try_from(page.members.len()).is_ok_and(|n| n >= limit)
    {
        eprintln!("more members may follow: --after {}", last.client_id);
    }
    Ok(())
}

/// `CLIENT_ID USER JOINED_AT [INFO]`, `-` for no user.
fn member_line(member: &PresenceMember) -> String {
    let mut line = format!("{} {} {}", member.client_id, member.user.as_deref().unwrap_or("-"), member.joined_at);
    if !member.info.is_null() {
        line.push(' ');
        line.push_str(&member.info.to_string());
    }
    line
}

fn member_json(member: &PresenceMember) -> Value {
    json!({
        "client_id": member.client_id.to_string(),
        "user": member.user,
        "info": member.info,
        "joined_at": member.joined_at.to_string(),
    })
}
