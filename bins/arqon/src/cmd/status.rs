//! `arqon status`: what the bus says about itself.

use serde_json::Value;

use crate::Failure;
use crate::args::Invocation;
use crate::cmd::{Command, connect, failed, one_shot};
use crate::output::{flatten, print_line};

pub(crate) const COMMAND: Command = Command {
    name: "status",
    usage: "status",
    summary: "the bus's version, uptime, connections, channels and storage health",
    options: &[],
    valued: &[],
    operands: (0, 0),
};

pub(crate) async fn run(invocation: &Invocation) -> Result<(), Failure> {
    let client = connect(invocation, one_shot()).await?;
    let status = client.command("status", Value::Null).await.map_err(|e| failed("status", e));
    let info = client.server_info();
    client.close().await;
    let status = status?;
    if invocation.json {
        print_line(&status.to_string());
    } else {
        print_line(&format!("url: {}", invocation.url));
        print_line(&format!("you: {} (role {})", info.client_id, info.role));
        for line in flatten(&status) {
            print_line(&line);
        }
    }
    Ok(())
}
