//! `arqon bench`: a quick fan-out on a running bus: N subscribers on one
//! channel, P publishers sending M messages between them, deliveries per second.
//!
//! A smoke figure for "is this bus healthy and roughly how fast", not a
//! benchmark: `arqon-bench` (bins/arqon-bench) is the real one.

use std::time::{Duration, Instant};

use arqon_client::{ClientOptions, Incoming};
use futures_util::StreamExt;
use serde_json::json;
use tokio::task::JoinSet;

use crate::Failure;
use crate::args::Invocation;
use crate::cmd::{Command, channel, connect, failed};
use crate::output::print_line;

pub(crate) const COMMAND: Command = Command {
    name: "bench",
    usage: "bench [--subscribers N] [--messages M] [--publishers P]",
    summary: "quick fan-out: N subscribers, M messages, print deliveries/s",
    options: &[
        ("--subscribers N", "subscribing connections (default 10)"),
        ("--messages M", "messages published in all (default 1000)"),
        ("--publishers P", "publishing connections, sharing the messages (default 4)"),
        ("--channel R/C", "the channel to use (default bench/run-PID)"),
        ("--timeout S", "give up after S seconds (default 60)"),
    ],
    valued: &["--subscribers", "--messages", "--publishers", "--channel", "--timeout"],
    operands: (0, 0),
};

/// Publishes in flight at once per publisher: enough to hide the round
/// trip, few enough to stay inside the bus's burst allowance.
const IN_FLIGHT: usize = 32;

pub(crate) async fn run(invocation: &Invocation) -> Result<(), Failure> {
    let opts = &invocation.opts;
    let subscribers = opts.number("--subscribers", 10usize, 1, 1000)?;
    let messages = opts.number("--messages", 1000u64, 1, 1_000_000)?;
    let publishers = opts.number("--publishers", 4u64, 1, 100)?;
    let timeout = Duration::from_secs(opts.number("--timeout", 60u64, 1, 3600)?);
    let key = match opts.value("--channel") {
        Some(text) => channel(text)?,
        None => channel(&format!("bench/run-{}", std::process::id()))?,
    };
    let deadline = tokio::time::Instant::now() + timeout;

    // Each subscriber's queue holds every message of the run (bounded by
    // --messages), so none falls behind into a replay from history.
    let capacity = usize::try_from(messages).unwrap_or(usize::MAX).saturating_add(64);
    let sub_options = ClientOptions { reconnect: false, event_capacity: capacity, ..ClientOptions::default() };
    let mut clients = Vec::with_capacity(subscribers);
    let mut counters = JoinSet::new();
    for _ in 0..subscribers {
        let client = connect(invocation, sub_options.clone()).await?;
        let mut events = client.events().ok_or_else(|| Failure::Connect("no event stream".to_owned()))?;
        client.join(&key.room, &key.channel).await.map_err(|e| failed(&format!("join {key}"), e))?;
        counters.spawn(async move {
            let mut received = 0u64;
            let mut last = None;
            while received < messages {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(Incoming::Message(_))) => {
                        received += 1;
                        last = Some(Instant::now());
                    }
                    Ok(Some(Incoming::Closed { .. }) | None) | Err(_) => break,
                    Ok(Some(_)) => {}
                }
            }
            (received, last)
        });
        clients.push(client);
    }

    // Publishers wait out RATE_LIMITED (with the bus's retry_after) as
    // often as it takes, so a rate-limited bus gives a slower run, not a
    // failed one. The rate limit is per connection, hence several.
    let pub_options = ClientOptions { reconnect: false, publish_attempts: 10_000, ..ClientOptions::default() };
    let mut senders = Vec::new();
    for _ in 0..publishers {
        senders.push(connect(invocation, pub_options.clone()).await?);
    }
    let limits = senders[0].server_info().limits;
    if limits.rate_per_s > 0 && !invocation.json {
        eprintln!(
            "note: the bus allows {} frames/s per connection (limits.rate_per_s), which caps each publisher; \
             start it with ARQON_LIMITS__RATE_PER_S=0 to lift that",
            limits.rate_per_s
        );
    }
    let started = Instant::now();
    let mut publishing = JoinSet::new();
    for (index, publisher) in (0u64..).zip(senders.iter().cloned()) {
        let key = key.clone();
        // Publisher `index` sends every `publishers`-th message.
        let share = (index..messages).step_by(usize::try_from(publishers).unwrap_or(1));
        publishing.spawn(async move {
            futures_util::stream::iter(share)
                .map(|seq| {
                    let (publisher, key) = (&publisher, &key);
                    async move { publisher.publish(&key.room, &key.channel, &json!({"seq": seq})).await }
                })
                .buffer_unordered(IN_FLIGHT)
                .fold(Ok(()), |acc, result| async move { acc.and(result.map(|_| ())) })
                .await
        });
    }
    let published = tokio::time::timeout_at(deadline, async {
        let mut outcome = Ok(());
        while let Some(joined) = publishing.join_next().await {
            if let Ok(result) = joined {
                outcome = outcome.and(result);
            }
        }
        outcome
    })
    .await;
    let publish_elapsed = started.elapsed();
    let mut delivered = 0u64;
    let mut last = None;
    while let Some(result) = counters.join_next().await {
        let (received, at) = result.map_err(|e| Failure::Connect(format!("a subscriber task failed: {e}")))?;
        delivered += received;
        last = last.max(at);
    }
    // Best effort: the bench channel is not needed any more (deleting may
    // need a role this connection lacks; the bus reclaims idle channels).
    let _ = senders[0].delete_channel(&key.room, &key.channel).await;
    for client in senders.iter().chain(&clients) {
        client.close().await;
    }
    match published {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(failed("publish", e)),
        Err(_) => return Err(Failure::Refused(format!("publishing {messages} messages took over {timeout:?}"))),
    }

    let expected = messages * subscribers as u64;
    let elapsed = last.map(|at| at.duration_since(started)).unwrap_or(publish_elapsed).max(Duration::from_micros(1));
    let rate = delivered as f64 / elapsed.as_secs_f64();
    let publish_rate = messages as f64 / publish_elapsed.max(Duration::from_micros(1)).as_secs_f64();
    if invocation.json {
        let report = json!({
            "channel": key.to_string(), "subscribers": subscribers, "messages": messages,
            "deliveries": delivered, "expected": expected, "seconds": elapsed.as_secs_f64(),
            "deliveries_per_s": rate, "publishes_per_s": publish_rate,
        });
        print_line(&report.to_string());
    } else {
        print_line(&format!(
            "{subscribers} subscribers x {messages} messages on {key}: {delivered} of {expected} deliveries in {:.3} s \
             = {rate:.0} deliveries/s (published at {publish_rate:.0} msg/s)",
            elapsed.as_secs_f64()
        ));
    }
    if delivered < expected {
        return Err(Failure::Refused(format!("only {delivered} of {expected} deliveries arrived within {timeout:?}")));
    }
    Ok(())
}
