//! `arqon ping`: round trips to the bus, timed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::Failure;
use crate::args::Invocation;
use crate::cmd::{Command, connect, failed, one_shot};
use crate::output::print_line;

pub(crate) const COMMAND: Command = Command {
    name: "ping",
    usage: "ping [--count N] [--interval MS]",
    summary: "time round trips (the ping command) and print each",
    options: &[("--count N", "how many (default 4)"), ("--interval MS", "pause between pings (default 200)")],
    valued: &["--count", "--interval"],
    operands: (0, 0),
};

pub(crate) async fn run(invocation: &Invocation) -> Result<(), Failure> {
    let count = invocation.opts.number("--count", 4u32, 1, 100_000)?;
    let interval = invocation.opts.number("--interval", 200u64, 0, 60_000)?;
    let started = Instant::now();
    let client = connect(invocation, one_shot()).await?;
    let connect_ms = ms(started.elapsed());
    let info = client.server_info();
    if !invocation.json {
        print_line(&format!(
            "PING {} (arqonbus {}): connected in {connect_ms:.3} ms",
            invocation.url, info.server_version
        ));
    }
    let mut rtts = Vec::new();
    for seq in 1..=count {
        if seq > 1 {
            tokio::time::sleep(Duration::from_millis(interval)).await;
        }
        let sent = Instant::now();
        if let Err(e) = client.ping().await {
            client.close().await;
            return Err(failed("ping", e));
        }
        let rtt = ms(sent.elapsed());
        if !invocation.json {
            print_line(&format!("pong seq={seq} time={rtt:.3} ms"));
        }
        rtts.push(rtt);
    }
    client.close().await;
    let min = rtts.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rtts.iter().copied().fold(0.0, f64::max);
    let avg = (rtts.iter().sum::<f64>() / f64::from(count) * 1000.0).round() / 1000.0;
    if invocation.json {
        let summary = json!({
            "url": invocation.url, "server_version": info.server_version, "connect_ms": connect_ms,
            "count": count, "rtt_ms": rtts, "min_ms": min, "avg_ms": avg, "max_ms": max,
        });
        print_line(&summary.to_string());
    } else {
        print_line(&format!("{count} pings: min/avg/max = {min:.3}/{avg:.3}/{max:.3} ms"));
    }
    Ok(())
}

/// Milliseconds, to the microsecond.
fn ms(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
