//! Router fan-out in process: one channel message, handed to the
//! publisher's `Session::handle_text`, to 1, 100 and 1,000 members; each
//! member's inbox drained with `try_recv`. Throughput is in deliveries.
//!
//! Run with: `cargo bench -p arqon-benches --bench fanout`

use std::hint::black_box;
use std::time::{Duration, Instant};

use arqon_benches::{PAYLOAD_BYTES, channel_command, connect, drain, message_frame, router, runtime};
use criterion::{BenchmarkId, Criterion, Throughput};

fn fanout(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("fanout");
    let frame = message_frame("fan", PAYLOAD_BYTES);
    for members in [1usize, 100, 1000] {
        let router = router();
        let mut clients: Vec<_> = (0..members).map(|_| connect(&router)).collect();
        let join = channel_command("join_channel", "fan");
        for (session, inbox) in &mut clients {
            rt.block_on(session.handle_text(&join));
            drain(inbox);
        }
        for (_, inbox) in &mut clients {
            drain(inbox);
        }
        let (mut publisher, mut publisher_inbox) = connect(&router);
        drain(&mut publisher_inbox);
        // Check once that every member gets exactly one delivery per publish.
        rt.block_on(publisher.handle_text(&frame));
        let delivered: usize = clients.iter_mut().map(|(_, inbox)| drain(inbox)).sum();
        assert_eq!(delivered, members);
        group.throughput(Throughput::Elements(members as u64));
        group.bench_function(BenchmarkId::new("publish_256B", members), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        publisher.handle_text(black_box(&frame)).await;
                        for (_, inbox) in &mut clients {
                            drain(inbox);
                        }
                    }
                    spent = start.elapsed();
                });
                spent
            })
        });
        // Nothing may have gone to the publisher (no error, no echo).
        assert_eq!(drain(&mut publisher_inbox), 0);
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    fanout(&mut c);
    c.final_summary();
}
