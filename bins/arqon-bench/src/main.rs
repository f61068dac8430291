//! `arqon-bench`: the ArqonBus load generator.
//!
//! Speaks protocol v1 over WebSocket to a running bus and measures what the
//! issue's targets name: fan-out and fan-in throughput, latency at a fixed
//! rate, the server's memory per idle connection and command round trips;
//! with subscribers that read like the generator's lean client or like an
//! ordinary application, whose own read rate `readrate` measures.
//! Every run is bounded by a count and by `--timeout`, prints a human table
//! and one JSON line, and never hides a lost or errored delivery: the exit
//! status is 1 if there was any (unless `--allow-loss`).
//!
//! Run with: `cargo run --release -p arqon-bench -- fanout --url ws://127.0.0.1:9100/ws`
//! (`--help` lists scenarios and options; `benches/run.sh` runs the suite).
//!
//! # Layout
//!
//! - `cli`: options and defaults per scenario.
//! - `client`: connecting (spread over 127.0.0.x source addresses), the
//!   `welcome` event, joining.
//! - `frame`: stamped payloads and the cheap reading of deliveries.
//! - `lean`: the lean WebSocket client of publishers and subscribers.
//! - `ordinary`: the ordinary subscriber (tokio-tungstenite, a
//!   `serde_json::Value` per message) and `readrate`.
//! - `pubsub`: `fanout`, `fanin`, `latency`, `api` (its HTTP publishers in
//!   `api`); `conns`; `commands`.
//! - `histogram`, `report`, `procfs`: measuring and reporting one run.
//! - `summarize`: the table of repeated runs; `figures` (medians and
//!   ranges, raw or checked in), `reference` (peers and targets), `charts`
//!   (SVG) and `overview` (the one-screen table) behind `summarize --out`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

mod api;
mod charts;
mod cli;
mod client;
mod commands;
mod conns;
mod figures;
mod frame;
mod histogram;
mod lean;
mod ordinary;
mod overview;
mod pace;
mod procfs;
mod pubsub;
mod reference;
mod report;
mod summarize;

use cli::{Invocation, Options, Scenario};

/// Everything that stops the generator before it can report.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// Bad command line.
    #[error("{0}\n\nRun `arqon-bench --help` for usage.")]
    Usage(String),
    /// The tokio runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// A results file could not be read or written.
    #[error("{0}")]
    Results(String),
    /// A chart could not be drawn.
    #[error("cannot draw a chart: {0}")]
    Chart(String),
}

/// The generator's monotonic clock: nanoseconds since the process started
/// measuring. Publishers stamp payloads with it and subscribers read it, all
/// in this one process, so no clock synchronization is involved.
#[derive(Debug, Clone)]
pub(crate) struct Clock(Arc<Instant>);

impl Clock {
    fn new() -> Self {
        Clock(Arc::new(Instant::now()))
    }

    /// Nanoseconds since the clock started.
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

fn run(options: &Options) -> Result<report::Report, BenchError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = options.threads {
        builder.worker_threads(threads);
    }
    let runtime = builder.build().map_err(BenchError::Runtime)?;
    let clock = Clock::new();
    let load_avg = procfs::load_average();
    let mut report = runtime.block_on(async {
        match options.scenario {
            Scenario::Fanout | Scenario::Fanin | Scenario::Latency | Scenario::Api => pubsub::run(options, clock).await,
            Scenario::Conns => conns::run(options).await,
            Scenario::Commands => commands::run(options, clock).await,
            Scenario::Readrate => ordinary::run(options).await,
        }
    });
    // Tens of thousands of idle tasks may still be winding down: do not wait.
    runtime.shutdown_background();
    report.load_avg = load_avg;
    Ok(report)
}

fn main() -> ExitCode {
    let invocation = match cli::parse(std::env::args().skip(1)) {
        Ok(invocation) => invocation,
        Err(e) => {
            eprintln!("arqon-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match invocation {
        Invocation::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Invocation::Summarize(request) => match summarize::run(&request) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("arqon-bench: {e}");
                ExitCode::FAILURE
            }
        },
        Invocation::Run(options) => match run(&options) {
            Ok(report) => {
                report.print();
                if report.is_clean() || options.allow_loss {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("arqon-bench: lost, duplicated, reordered or errored traffic (see above)");
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("arqon-bench: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
