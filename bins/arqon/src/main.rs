//! `arqon`, the ArqonBus command-line client: subscribe to a channel, publish
//! to it, read its history, ask the bus for its status, time round trips, run
//! a quick fan-out bench, and sign JWTs with the secret or key of the bus's
//! own config. Run `arqon --help`.
//!
//! # Layout
//!
//! - `args`: a small hand-written option parser (no CLI crate: builds stay
//!   quick) and the global options `--url`, `--token`, `--ca`, `--json`.
//! - `cmd`: one module per command, and [`cmd::COMMANDS`], the table both
//!   the dispatcher and `--help` read, so help never drifts.
//! - `output`: how messages and answers are printed, for people or, with
//!   `--json`, for scripts (one JSON value per line on stdout).
//!
//! Everything the bus sends back goes to stdout; notes (joined, reconnecting)
//! and errors go to stderr. Exit codes are [`Failure::code`]'s.
//!
//! It talks to the bus through `arqon-client` only, and reads the server's
//! configuration through `arqon-config` (for `gentoken`); it never links the
//! server.

mod args;
mod cmd;
mod output;

use std::process::ExitCode;

/// Why a command failed, which decides the exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad command line or bad input (unknown command, malformed JSON, an
    /// invalid name or number): exit code 1.
    Usage(String),
    /// The bus could not be reached, or the connection was lost: exit code 2.
    Connect(String),
    /// The bus refused the request or answered with an error: exit code 3.
    Refused(String),
}

impl Failure {
    /// 1 for usage, 2 for connection, 3 for a refusal; see `arqon --help`.
    pub(crate) fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 1,
            Failure::Connect(_) => 2,
            Failure::Refused(_) => 3,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Connect(m) | Failure::Refused(m) => m,
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let invocation = match args::Invocation::parse(&argv) {
        Ok(args::Parse::Run(invocation)) => invocation,
        Ok(args::Parse::Help) => {
            print!("{}", cmd::help_text());
            return ExitCode::SUCCESS;
        }
        Ok(args::Parse::Version) => {
            println!("arqon {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(failure) => return fail(&failure),
    };
    // Two workers: `bench` runs many clients; everything else is one
    // connection and barely notices.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&Failure::Connect(format!("cannot start the async runtime: {e}"))),
    };
    match runtime.block_on(cmd::run(invocation)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(&failure),
    }
}

fn fail(failure: &Failure) -> ExitCode {
    eprintln!("arqon: {}", failure.message());
    if let Failure::Usage(_) = failure {
        eprintln!("Run 'arqon --help' for usage.");
    }
    ExitCode::from(failure.code())
}
