//! `commands`: command round trips at a fixed rate, open loop.
//!
//! One connection sends `ping` (or `join_channel` immediately followed by
//! `leave_channel` of the same channel) every 1/R seconds, whether or not
//! earlier answers arrived, so a slow answer cannot hide behind the schedule.
//! Each command's `id` encodes its index (`arq_` + the index as a ULID), the
//! reader finds it in the answer's `request_id` and times the round trip.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arqon_protocol::MessageId;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use ulid::Ulid;

use crate::Clock;
use crate::cli::{CommandKind, Options};
use crate::client::{BUSY_READ_BUFFER, Endpoint, open};
use crate::frame::{Incoming, classify, request_id_fast};
use crate::histogram::Histogram;
use crate::pace::Pacer;
use crate::report::{Latency, Report};

/// Not yet sent.
const UNSENT: u64 = u64::MAX;

/// The command names of one tick.
fn names(kind: CommandKind) -> &'static [&'static str] {
    match kind {
        CommandKind::Ping => &["ping"],
        CommandKind::Join => &["join_channel", "leave_channel"],
    }
}

fn command_id(index: usize) -> MessageId {
    MessageId::from_ulid(Ulid(index as u128))
}

fn index_of(request_id: &str) -> Option<usize> {
    usize::try_from(MessageId::parse(request_id).ok()?.ulid().0).ok()
}

fn command_frame(name: &str, index: usize, room: &str, channel: &str) -> String {
    let id = command_id(index);
    match name {
        "ping" => format!(r#"{{"type":"command","id":"{id}","command":"ping"}}"#),
        _ => format!(
            r#"{{"type":"command","id":"{id}","command":"{name}","args":{{"room":"{room}","channel":"{channel}"}}}}"#
        ),
    }
}

/// What the reader saw.
#[derive(Debug, Default)]
struct Answers {
    per_command: Vec<Histogram>,
    answered: u64,
    duplicates: u64,
    errors: BTreeMap<String, u64>,
}

/// Runs `commands` as configured.
pub(crate) async fn run(o: &Options, clock: Clock) -> Report {
    let deadline = Instant::now() + o.timeout;
    let names = names(o.command);
    let ticks = usize::try_from(o.messages).unwrap_or(usize::MAX);
    let total = ticks.saturating_mul(names.len());
    let mut report = Report {
        scenario: o.scenario.name().to_owned(),
        label: o.label.clone(),
        target: o.target.clone(),
        expected: total as u64,
        ..Report::default()
    };
    report.params.insert("command".into(), names.join("+").into());
    report.params.insert("rate_per_s".into(), o.rate.unwrap_or(0.0).into());
    report.params.insert("ticks".into(), ticks.into());

    let endpoint = Endpoint::new(&o.url, o.addr, o.per_ip);
    let ws = match open(&endpoint, 0, BUSY_READ_BUFFER, None, o.timeout.min(Duration::from_secs(30))).await {
        Ok(ws) => ws,
        Err(e) => {
            report.error(e.code.clone(), 1);
            report.failure = Some(format!("could not connect: {} ({})", e.code, e.detail));
            report.lost = report.expected;
            return report;
        }
    };
    report.connections = 1;
    let (mut sink, mut stream) = ws.split();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(UNSENT)).collect());
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let reader_clock = clock.clone();
    let reader_sent_at = Arc::clone(&sent_at);
    let per_tick = names.len();
    let reader = tokio::spawn(async move {
        let mut answers = Answers { per_command: vec![Histogram::default(); per_tick], ..Answers::default() };
        let mut seen = vec![false; total];
        while answers.answered < total as u64 {
            let message = tokio::select! {
                biased;
                _ = stop_rx.changed() => break,
                message = stream.next() => message,
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    let code = format!("CLOSE_{}", frame.map_or(1005, |f| u16::from(f.code)));
                    *answers.errors.entry(code).or_default() += 1;
                    break;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    *answers.errors.entry("CLOSED".into()).or_default() += 1;
                    break;
                }
            };
            let now = reader_clock.now_ns();
            let Some(index) = request_id_fast(text.as_str()).and_then(index_of).filter(|&i| i < total) else {
                match classify(text.as_str()) {
                    Incoming::Event { .. } => {}
                    Incoming::Error { code } => *answers.errors.entry(code).or_default() += 1,
                    _ => *answers.errors.entry("UNMATCHED_ANSWER".into()).or_default() += 1,
                }
                continue;
            };
            if std::mem::replace(&mut seen[index], true) {
                answers.duplicates += 1;
                continue;
            }
            answers.answered += 1;
            // Only an error needs a real parse, for its code.
            if text.as_str().contains(r#""type":"error""#)
                && let Incoming::Error { code } = classify(text.as_str())
            {
                *answers.errors.entry(code).or_default() += 1;
                continue;
            }
            let sent = reader_sent_at[index].load(Ordering::Acquire);
            if sent != UNSENT {
                answers.per_command[index % per_tick].record(now.saturating_sub(sent));
            }
        }
        answers
    });

    let rate = o.rate.unwrap_or(1000.0);
    let begin = Instant::now();
    let start_ns = clock.now_ns();
    let mut sent = 0u64;
    let mut pacer = Pacer::start(rate, o.messages);
    if pacer.is_err() {
        report.error("PACER_FAILED", 1);
    }
    'send: for tick in 0..ticks {
        let Ok(pacer) = &mut pacer else { break };
        let due = begin + Duration::from_secs_f64(tick as f64 / rate);
        if due >= deadline {
            report.timed_out = true;
            break;
        }
        if !pacer.tick().await {
            break;
        }
        for (k, name) in names.iter().enumerate() {
            let index = tick * per_tick + k;
            let frame = command_frame(name, index, &o.room, &o.channel);
            sent_at[index].store(clock.now_ns(), Ordering::Release);
            if sink.send(Message::text(frame)).await.is_err() {
                report.error("WRITE_FAILED", 1);
                break 'send;
            }
            sent += 1;
        }
    }
    report.published = sent;
    // Wait for the last answers: at most --drain, never past the deadline.
    let mut reader = reader;
    let answers = match tokio::time::timeout_at((Instant::now() + o.drain).min(deadline), &mut reader).await {
        Ok(joined) => joined.ok(),
        Err(_) => {
            // Stop waiting; the reader returns what it has (the rest is lost).
            let _ = stop_tx.send(true);
            tokio::time::timeout(Duration::from_secs(2), reader).await.ok().and_then(Result::ok)
        }
    };
    report.elapsed_s = (clock.now_ns() - start_ns) as f64 / 1e9;
    let Some(answers) = answers else {
        report.error("UNANSWERED", 1);
        report.lost = report.expected;
        return report;
    };
    report.delivered = answers.answered;
    report.lost = report.expected.saturating_sub(answers.answered);
    report.duplicates = answers.duplicates;
    report.errors_from(&answers.errors);
    for (name, histogram) in names.iter().zip(&answers.per_command) {
        if let Some(latency) = Latency::from_histogram(histogram) {
            report.commands.insert((*name).to_owned(), latency);
        }
    }
    report.latency = answers.per_command.first().and_then(Latency::from_histogram);
    if report.elapsed_s > 0.0 {
        report.published_per_s = Some(sent as f64 / report.elapsed_s);
    }
    drop(sink);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_index() {
        for index in [0usize, 1, 4999, 123_456_789] {
            let frame = command_frame("join_channel", index, "bench", "c");
            let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
            let id = v["id"].as_str().unwrap();
            assert!(MessageId::parse(id).is_ok(), "{id}");
            assert_eq!(index_of(id), Some(index));
            assert_eq!(v["args"]["channel"], "c");
        }
        assert!(command_frame("ping", 3, "r", "c").contains(r#""command":"ping"}"#));
        assert_eq!(index_of("arq_nonsense"), None);
    }
}
