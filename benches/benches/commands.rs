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

fn main() {
    let mut c = Criterion::default().configure_from_args();
    commands(&mut c);
    c.final_summary();
}
