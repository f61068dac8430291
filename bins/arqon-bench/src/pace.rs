//! Evenly spaced send times for a publisher with a `--rate`.
//!
//! The runtime's timers cannot do it: they fire on whole milliseconds, and a
//! worker that I/O wakes shortly before a tick parks again with a timeout
//! rounded up to the next whole millisecond (epoll's unit), so the tick is
//! missed by up to a millisecond. At 1,000 messages/s, with 100 subscribers
//! waking the worker, about half the messages went out in pairs some 20 µs
//! apart, then nothing for 2 ms: a burst twice the size the rate says, and a
//! second message timed while it waits behind the first. A thread of its own
//! sleeping until each instant wakes within tens of microseconds of it.

use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// Ticks a publisher sends on: the `seq`-th at `seq / rate` seconds after
/// [`Pacer::start`]. A tick that is due while the publisher is still busy
/// (held back by flow control, say) waits for it, and the ones after it
/// then follow at once, catching up with the schedule, as a late timer
/// would.
#[derive(Debug)]
pub(crate) struct Pacer {
    ticks: mpsc::Receiver<()>,
}

impl Pacer {
    /// Starts the clock for `messages` ticks at `rate` per second.
    pub(crate) fn start(rate: f64, messages: u64) -> Result<Pacer, std::io::Error> {
        // One tick in hand: the clock never runs ahead of the publisher by
        // more than one message.
        let (tx, ticks) = mpsc::channel(1);
        let begin = Instant::now();
        thread::Builder::new().name("pacer".into()).spawn(move || {
            for seq in 0..messages {
                let due = begin + Duration::from_secs_f64(seq as f64 / rate);
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
                // The publisher is gone (the run stopped): so is the clock.
                if tx.blocking_send(()).is_err() {
                    break;
                }
            }
        })?;
        Ok(Pacer { ticks })
    }

    /// Waits for the next tick; `false` once the clock has given all of
    /// them.
    pub(crate) async fn tick(&mut self) -> bool {
        self.ticks.recv().await.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_exactly_the_ticks_asked_for_then_ends() {
        let mut pacer = Pacer::start(1_000_000.0, 5).unwrap();
        for _ in 0..5 {
            assert!(pacer.tick().await);
        }
        assert!(!pacer.tick().await);
    }

    #[tokio::test]
    async fn no_tick_comes_before_its_time() {
        // 4 ticks at 50/s: the last is due 60 ms after the start.
        let started = Instant::now();
        let mut pacer = Pacer::start(50.0, 4).unwrap();
        for _ in 0..4 {
            assert!(pacer.tick().await);
        }
        assert!(started.elapsed() >= Duration::from_millis(60));
    }
}
