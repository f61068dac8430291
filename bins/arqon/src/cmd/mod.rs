//! The commands: one module each, and [`COMMANDS`], the table the parser and
//! `--help` both read.

mod bench;
mod gentoken;
mod history;
mod ping;
mod presence;
mod publish;
mod status;
mod sub;

use std::fmt::Write as _;
use std::time::Duration;

use arqon_client::{ChannelKey, Client, ClientError, ClientOptions};

use crate::Failure;
use crate::args::{DEFAULT_URL, Invocation};

/// One command: its name, what `--help` says about it, and what it accepts.
#[derive(Debug)]
pub(crate) struct Command {
    /// The word after `arqon`.
    pub(crate) name: &'static str,
    /// The synopsis, without `arqon `.
    pub(crate) usage: &'static str,
    /// One line on what it does.
    pub(crate) summary: &'static str,
    /// Its options, each with a line of help.
    pub(crate) options: &'static [(&'static str, &'static str)],
    /// Its options (all take a value).
    pub(crate) valued: &'static [&'static str],
    /// Fewest and most operands.
    pub(crate) operands: (usize, usize),
}

/// Every command, in the order `--help` lists them.
pub(crate) static COMMANDS: &[Command] = &[
    sub::COMMAND,
    publish::COMMAND,
    history::COMMAND,
    presence::COMMAND,
    status::COMMAND,
    ping::COMMAND,
    bench::COMMAND,
    gentoken::COMMAND,
];

/// Runs the parsed command.
pub(crate) async fn run(invocation: Invocation) -> Result<(), Failure> {
    match invocation.command.name {
        "sub" => sub::run(&invocation).await,
        "pub" => publish::run(&invocation).await,
        "history" => history::run(&invocation).await,
        "presence" => presence::run(&invocation).await,
        "status" => status::run(&invocation).await,
        "ping" => ping::run(&invocation).await,
        "bench" => bench::run(&invocation).await,
        "gentoken" => gentoken::run(&invocation),
        // Not reached: the parser only hands over commands of the table.
        other => Err(Failure::Usage(format!("unknown command {other:?}"))),
    }
}

/// The whole of `arqon --help`.
pub(crate) fn help_text() -> String {
    let mut text = String::from(
        "arqon: the ArqonBus command-line client\n\n\
         Usage: arqon [--url URL] [--token TOKEN] [--ca FILE] [--json] COMMAND [ARGS]\n\n\
         Commands:\n",
    );
    for command in COMMANDS {
        let _ = writeln!(text, "  {:<58} {}", command.usage, command.summary);
        for (option, help) in command.options {
            let _ = writeln!(text, "      {option:<20} {help}");
        }
    }
    let _ = write!(
        text,
        "\nGlobal options:\n\
         \x20 --url URL        the bus's WebSocket URL (default {DEFAULT_URL})\n\
         \x20 --token TOKEN    credentials for a bus with auth.mode token or jwt (sent as Authorization: Bearer)\n\
         \x20 --ca FILE        PEM certificates trusted for wss:// besides the public roots (a self-signed bus)\n\
         \x20 --json           machine output: one JSON value per line on stdout\n\
         \x20 -h, --help       this text;  -V, --version  the version\n\n\
         What the bus sends goes to stdout; notes and errors go to stderr.\n\n\
         Exit codes:\n\
         \x20 0  success\n\
         \x20 1  usage: unknown command or option, bad operand, malformed JSON, bad config for gentoken\n\
         \x20 2  connection: the bus could not be reached, or the connection was lost\n\
         \x20 3  refused: the bus answered with an error (e.g. UNAUTHORIZED, FORBIDDEN, NOT_FOUND)\n\n\
         Example: arqon sub demo/news   (in one terminal)\n\
         \x20        arqon pub demo/news '{{\"text\":\"hello\"}}'   (in another)\n",
    );
    text
}

/// Reads `ROOM/CHANNEL`.
pub(crate) fn channel(text: &str) -> Result<ChannelKey, Failure> {
    let Some((room, channel)) = text.split_once('/') else {
        return Err(Failure::Usage(format!("expected ROOM/CHANNEL, e.g. demo/news, not {text:?}")));
    };
    ChannelKey::parse(room, channel).map_err(|e| Failure::Usage(format!("{text:?}: {}", e.message)))
}

/// Connects to `--url` with `--token`. `reconnect` keeps a subscription
/// alive across a restart of the bus; one-shot commands fail fast instead.
pub(crate) async fn connect(invocation: &Invocation, options: ClientOptions) -> Result<Client, Failure> {
    let tls_roots_pem = match &invocation.ca {
        Some(path) => {
            Some(std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("cannot read --ca {path}: {e}")))?)
        }
        None => None,
    };
    let options = ClientOptions {
        token: invocation.token.clone(),
        connect_timeout: Duration::from_secs(10),
        tls_roots_pem,
        ..options
    };
    Client::connect_with(&invocation.url, options).await.map_err(|error| match error {
        ClientError::Rejected { .. } => {
            Failure::Refused(format!("the bus at {} refused the connection: {error}", invocation.url))
        }
        other => Failure::Connect(format!(
            "cannot connect to {}: {other} (is the server running? start it with: cargo run -p arqonbus)",
            invocation.url
        )),
    })
}

/// Options for a one-shot command: no reconnecting, so a lost connection is
/// reported (exit code 2) rather than waited out.
pub(crate) fn one_shot() -> ClientOptions {
    ClientOptions { reconnect: false, ..ClientOptions::default() }
}

/// Maps a failed request to its exit code: a refusal or an unreadable
/// answer is 3, a lost or silent connection is 2.
pub(crate) fn failed(what: &str, error: ClientError) -> Failure {
    match error {
        ClientError::Rejected { .. } | ClientError::Api { .. } | ClientError::Decode(_) => {
            Failure::Refused(format!("{what}: {error}"))
        }
        ClientError::Encode(_) => Failure::Usage(format!("{what}: {error}")),
        other => Failure::Connect(format!("{what}: {other}")),
    }
}
