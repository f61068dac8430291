//! Run with: cargo run -p arqon-transport --example echo -- 127.0.0.1:9001
//!
//! A WebSocket echo server built on exactly the transport the bus uses (the
//! same accept loop, connection loop and [`TransportConfig`] defaults, so
//! 1 MiB messages at most), with a [`Connection`] that sends every text
//! message back as a text frame and every binary message back as a binary
//! frame. `scripts/autobahn.sh` runs the Autobahn|Testsuite `fuzzingclient`
//! against it.
//!
//! The address defaults to `127.0.0.1:9001`; with port 0 the system picks a
//! free port. The first line printed is `listening on ADDR`, once the socket is
//! bound. The server runs until it is killed.

use std::error::Error;
use std::sync::Arc;

use arqon_outbound::{Budget, Closing, Outbound, OutboundSender, SlowCause, TrySendError};
use arqon_protocol::Frame;
use arqon_transport::{Accepted, Acceptor, Connection, Refusal, TransportConfig, UpgradeRequest};
use tokio::net::TcpListener;

/// Backlog per connection, in bytes. Generous, because the test suite sends
/// bursts of up to a thousand messages before it reads any echo; text echo
/// waits for room (the reader pauses), binary echo cannot wait (`on_binary`
/// is synchronous), so an overflow closes the connection as a slow consumer,
/// exactly as the bus would.
const BACKLOG_BYTES: usize = 64 * 1024 * 1024;

/// Admits everyone; every backlog is charged to one unlimited budget.
#[derive(Debug)]
struct EchoAcceptor {
    budget: Arc<Budget>,
}

/// Echoes one client's messages through its outbound queue.
#[derive(Debug)]
struct Echo {
    frames: OutboundSender,
}

impl Echo {
    fn push(&mut self, item: Outbound) {
        if self.frames.try_send(item).is_err() {
            self.frames.close(Closing::slow(SlowCause::Backlog));
        }
    }
}

impl Acceptor for EchoAcceptor {
    type Conn = Echo;

    fn accept(&self, _request: &UpgradeRequest<'_>) -> Result<Accepted<Echo>, Refusal> {
        let (frames_tx, frames) = arqon_outbound::queue(BACKLOG_BYTES, &self.budget);
        Ok(Accepted { conn: Echo { frames: frames_tx }, frames })
    }
}

impl Connection for Echo {
    async fn on_text(&mut self, text: &str) {
        // Waiting for room is the backpressure: the reader stops reading
        // (and lets the writer, on the same runtime, drain the queue).
        let mut item = Outbound::Frame(Frame::from_text(text));
        loop {
            match self.frames.try_send(item) {
                Ok(()) => return,
                Err(TrySendError::Full(back)) => {
                    item = back;
                    tokio::task::yield_now().await;
                }
                Err(TrySendError::Closed(_)) => return,
            }
        }
    }

    fn on_binary(&mut self, data: &[u8]) {
        self.push(Outbound::Binary(data.into()));
    }

    fn on_oversize(&mut self) {
        // Nothing to say: the transport itself closes with 1009.
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let config = TransportConfig::default();
    arqon_transport::serve(
        listener,
        Arc::new(EchoAcceptor { budget: Budget::unlimited() }),
        config,
        std::future::pending(),
    )
    .await?;
    Ok(())
}
