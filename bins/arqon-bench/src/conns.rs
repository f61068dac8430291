//! `conns`: many idle, subscribed connections, and what they cost the server.
//!
//! Reads the server's RSS (given `--server-pid`), opens `--connections`
//! connections (each joins channel `idle-(i mod K)`, then only reads: pings
//! are answered, events counted), waits `--settle`, reads the RSS again and
//! reports `(after - before) / connections`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Options;
use crate::client::{Endpoint, IDLE_READ_BUFFER, SetupError, open};
use crate::frame::{Incoming, classify};
use crate::procfs;
use crate::report::Report;

/// What one idle connection saw after its set-up.
#[derive(Debug, Default)]
struct Idle {
    errors: BTreeMap<String, u64>,
    events: BTreeMap<String, u64>,
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    endpoint: Endpoint,
    room: String,
    /// Limits handshakes in flight.
    setup: Semaphore,
    /// Time one connection has for its set-up.
    limit: Duration,
}

async fn idle(
    shared: Arc<Shared>,
    index: usize,
    channel: String,
    ready: mpsc::Sender<Result<(), SetupError>>,
    mut stop: watch::Receiver<bool>,
) -> Idle {
    let mut seen = Idle::default();
    let opened = {
        let Ok(_permit) = shared.setup.acquire().await else { return seen };
        open(&shared.endpoint, index, IDLE_READ_BUFFER, Some((&shared.room, &channel)), shared.limit).await
    };
    let mut ws = match opened {
        Ok(ws) => {
            let _ = ready.send(Ok(())).await;
            ws
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return seen;
        }
    };
    drop(ready);
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = ws.next() => message,
        };
        let code = match message {
            Some(Ok(Message::Text(text))) => match classify(text.as_str()) {
                Incoming::Event { name } => {
                    *seen.events.entry(name).or_default() += 1;
                    continue;
                }
                Incoming::Error { code } => code,
                _ => "UNEXPECTED_FRAME".to_owned(),
            },
            Some(Ok(Message::Close(frame))) => format!("CLOSE_{}", frame.map_or(1005, |f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) => "READ_FAILED".to_owned(),
            None => "CLOSED".to_owned(),
        };
        *seen.errors.entry(code.clone()).or_default() += 1;
        if code.starts_with("CLOSE") || code == "READ_FAILED" || code == "CLOSED" {
            break;
        }
    }
    seen
}

/// Runs `conns` as configured.
pub(crate) async fn run(o: &Options) -> Report {
    let deadline = Instant::now() + o.timeout;
    let mut report = Report {
        scenario: o.scenario.name().to_owned(),
        label: o.label.clone(),
        target: o.target.clone(),
        ..Report::default()
    };
    report.params.insert("connections".into(), o.connections.into());
    report.params.insert("channels".into(), o.channels.into());
    report.params.insert("per_ip".into(), o.per_ip.into());
    if o.compress {
        report.params.insert("compress".into(), true.into());
    }
    report.expected = o.connections as u64;
    if o.server_pid.is_none() {
        eprintln!("no --server-pid: connections are opened, but the server's RSS is not measured");
    }
    let rss_before = o.server_pid.and_then(procfs::rss_kib);
    report.rss_before_kib = rss_before;

    let shared = Arc::new(Shared {
        endpoint: Endpoint::new(&o.url, o.addr, o.per_ip).compressing(o.compress),
        room: o.room.clone(),
        setup: Semaphore::new(o.concurrency),
        limit: o.timeout.min(Duration::from_secs(30)),
    });
    // Each connection reports its set-up exactly once: `connections` slots
    // never fill, so no sender waits.
    let (ready_tx, mut ready_rx) = mpsc::channel(o.connections.max(1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let tasks: Vec<JoinHandle<Idle>> = (0..o.connections)
        .map(|i| {
            let channel = format!("idle-{}", i % o.channels);
            tokio::spawn(idle(Arc::clone(&shared), i, channel, ready_tx.clone(), stop_rx.clone()))
        })
        .collect();
    drop(ready_tx);
    let mut failed = 0u64;
    for _ in 0..o.connections {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => report.connections += 1,
            Ok(Some(Err(e))) => {
                if failed < 5 {
                    eprintln!("connection failed: {} ({})", e.code, e.detail);
                }
                failed += 1;
                report.error(e.code, 1);
            }
            Ok(None) => break,
            Err(_) => {
                report.timed_out = true;
                break;
            }
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    report.open_s = Some(open_s);
    report.elapsed_s = open_s;
    report.delivered = report.connections;
    report.lost = report.expected.saturating_sub(report.connections);
    eprintln!("{} connections open and joined in {open_s:.1} s; settling for {:?}", report.connections, o.settle);
    tokio::time::sleep_until((Instant::now() + o.settle).min(deadline)).await;
    let rss_after = o.server_pid.and_then(procfs::rss_kib);
    report.rss_after_kib = rss_after;
    if let (Some(before), Some(after)) = (rss_before, rss_after)
        && report.connections > 0
    {
        report.rss_per_conn_kib = Some(after.saturating_sub(before) as f64 / report.connections as f64);
    }
    let _ = stop_tx.send(true);
    let collect_by = Instant::now() + Duration::from_secs(10);
    for task in tasks {
        match tokio::time::timeout_at(collect_by, task).await {
            Ok(Ok(seen)) => {
                report.errors_from(&seen.errors);
                for (name, n) in seen.events {
                    *report.events.entry(name).or_default() += n;
                }
            }
            Ok(Err(_)) => report.error("IDLE_PANICKED", 1),
            Err(_) => {
                report.error("IDLE_HUNG", 1);
                break;
            }
        }
    }
    if failed > 0 {
        report.failure = Some(format!("{failed} of {} connections could not be set up", o.connections));
    }
    report
}
