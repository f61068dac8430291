//! Command dispatch through `Session::handle_text`: decode, table lookup,
//! argument parsing, execution and the encoded answer in the inbox.
//!
//! Run with: `cargo bench -p arqon-benches --bench commands`

use std::hint::black_box;
use std::time::{Duration, Instant};

use arqon_benches::{channel_command, connect, drain, router, runtime};
use criterion::{Criterion, Throughput};

fn commands(c: &mut Criterion) {
    let rt = runtime();
    let router = router();
    let (mut session, mut inbox) = connect(&router);
    drain(&mut inbox);
    // A few other members, so join and leave announce themselves as they
    // would in a small channel.
    let mut others: Vec<_> = (0..10).map(|_| connect(&router)).collect();
    let join = channel_command("join_channel", "cmd");
    let leave = channel_command("leave_channel", "cmd");
    for (other, other_inbox) in &mut others {
        rt.block_on(other.handle_text(&join));
        drain(other_inbox);
    }
    let ping = r#"{"type":"command","id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P","command":"ping"}"#;
    let status = r#"{"type":"command","command":"status"}"#;

    let mut group = c.benchmark_group("commands");
    group.throughput(Throughput::Elements(1));
    for (name, frames) in [("ping", vec![ping]), ("status", vec![status]), ("join_then_leave", vec![&join, &leave])] {
        rt.block_on(async {
            for frame in &frames {
                session.handle_text(frame).await;
            }
        });
        assert_eq!(drain(&mut inbox), frames.len(), "{name}: one answer per command");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        for frame in &frames {
                            session.handle_text(black_box(frame)).await;
                        }
                        drain(&mut inbox);
                        for (_, other_inbox) in &mut others {
                            drain(other_inbox);
                        }
                    }
                    spent = start.elapsed();
                });
                spent
            })
        });
    }
    group.finish();
}

/// `presence` on a channel of 10,000 members, a page of 100 (PROTOCOL.md
/// 8.2; issue 16's target: p99 at most 2 ms): the first page and one from
/// the middle (`after`). Prints p50/p99 of 2,000 calls before criterion's
/// own figures, since the target is a percentile.
fn presence(c: &mut Criterion) {
    const MEMBERS: usize = 10_000;
    let rt = runtime();
    let router = router();
    let join = channel_command("join_channel", "crowd");
    // member_events: false would not matter here; the channel is far past
    // the member-event cut-off (1,000) anyway.
    let mut members: Vec<_> = (0..MEMBERS).map(|_| connect(&router)).collect();
    for (member, inbox) in &mut members {
        rt.block_on(member.handle_text(&join));
        drain(inbox);
    }
    let mut ids: Vec<String> = members.iter().map(|(s, _)| s.client_id().to_string()).collect();
    ids.sort();
    let (mut session, mut inbox) = connect(&router);
    drain(&mut inbox);
    let first =
        r#"{"type":"command","command":"presence","args":{"room":"bench","channel":"crowd","limit":100}}"#.to_owned();
    let middle = format!(
        r#"{{"type":"command","command":"presence","args":{{"room":"bench","channel":"crowd","limit":100,"after":"{}"}}}}"#,
        ids[MEMBERS / 2]
    );
    let mut group = c.benchmark_group("presence_10k");
    group.throughput(Throughput::Elements(1));
    for (name, frame) in [("first_page_of_100", &first), ("middle_page_of_100", &middle)] {
        let mut times: Vec<Duration> = (0..2000)
            .map(|_| {
                let start = Instant::now();
                rt.block_on(session.handle_text(frame));
                let spent = start.elapsed();
                assert_eq!(drain(&mut inbox), 1, "one answer");
                spent
            })
            .collect();
        times.sort_unstable();
        let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!("presence_10k/{name}: p50 {:?}, p99 {:?}, max {:?}", p(0.50), p(0.99), times[times.len() - 1]);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                rt.block_on(async {
                    for _ in 0..iters {
                        session.handle_text(black_box(frame)).await;
                        drain(&mut inbox);
                    }
                });
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// One server API `publish` through the routing core (a fresh API session
/// per call, as the HTTP handler makes), into a channel of 100 members.
fn api_publish(c: &mut Criterion) {
    let rt = runtime();
    let router = router();
    let join = channel_command("join_channel", "api");
    let mut members: Vec<_> = (0..100).map(|_| connect(&router)).collect();
    for (member, inbox) in &mut members {
        rt.block_on(member.handle_text(&join));
        drain(inbox);
    }
    let args = format!(r#"{{"room":"bench","channel":"api","payload":{}}}"#, arqon_benches::payload(256));
    let raw: &arqon_protocol::RawValue = match serde_json::from_str(&args) {
        Ok(raw) => raw,
        Err(e) => panic!("bad args: {e}"),
    };
    let mut group = c.benchmark_group("api");
    group.throughput(Throughput::Elements(1));
    group.bench_function("publish_to_100", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..iters {
                    let mut session = router.api_session(arqon_protocol::Role::User);
                    let answer = session.call("publish", Some(raw.into())).await;
                    black_box(answer.is_ok());
                }
            });
            let spent = start.elapsed();
            for (_, inbox) in &mut members {
                drain(inbox);
            }
            spent
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    commands(&mut c);
    presence(&mut c);
    api_publish(&mut c);
    c.final_summary();
}
