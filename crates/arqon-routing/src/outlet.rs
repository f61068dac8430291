//! The sending half of a connection's bounded outbound queue.

use std::sync::Arc;

use arqon_protocol::{ClientId, CloseReason, Outbound, OutboundReceiver, OutboundSender, TrySendError};
use tokio::sync::watch;

use crate::observer::{BusEvent, Observer};

/// Where the bus puts frames for one client, and how it asks the transport
/// to close that client.
#[derive(Debug, Clone)]
pub(crate) struct Outlet {
    tx: OutboundSender,
    close: Arc<watch::Sender<Option<CloseReason>>>,
    client: ClientId,
    observer: Arc<dyn Observer>,
}

/// The receiving half, handed to the transport: frames to write, and the
/// reason to close (set at most once).
#[derive(Debug)]
pub struct Inbox {
    /// Frames to write, in order.
    pub frames: OutboundReceiver,
    /// Becomes `Some` when the bus wants the connection closed.
    pub close: watch::Receiver<Option<CloseReason>>,
}

impl Outlet {
    /// A queue of `capacity` items (PROTOCOL.md section 7: 1,024 by default).
    ///
    /// Overflow policy: a push that finds the queue full never waits and never
    /// drops silently; it closes *this* client with 1008 (slow consumer), so
    /// one stalled reader cannot slow a publisher or grow memory.
    pub(crate) fn new(capacity: usize, client: ClientId, observer: Arc<dyn Observer>) -> (Outlet, Inbox) {
        let (tx, frames) = arqon_protocol::queue(capacity);
        let (close_tx, close) = watch::channel(None);
        (Outlet { tx, close: Arc::new(close_tx), client, observer }, Inbox { frames, close })
    }

    /// Frames queued and not yet taken by the writer.
    pub(crate) fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Queues an item; returns false if it was not queued (the client is gone
    /// or has just been closed as a slow consumer).
    pub(crate) fn push(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.close(CloseReason::SLOW_CONSUMER);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the transport to close the connection; the first reason wins.
    pub(crate) fn close(&self, reason: CloseReason) {
        let changed = self.close.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
        if changed && reason == CloseReason::SLOW_CONSUMER {
            self.observer.observe(&BusEvent::SlowConsumer { client_id: self.client });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::NoObserver;
    use arqon_protocol::Frame;

    #[test]
    fn overflow_closes_with_1008_and_first_reason_wins() {
        let (outlet, inbox) = Outlet::new(2, arqon_protocol::IdGenerator::new().client_id(), Arc::new(NoObserver));
        let frame = || Outbound::Frame(Frame::from_text("{}"));
        assert!(outlet.push(frame()));
        assert!(outlet.push(frame()));
        assert!(inbox.close.borrow().is_none());
        assert!(!outlet.push(frame()));
        assert_eq!(*inbox.close.borrow(), Some(CloseReason::SLOW_CONSUMER));
        outlet.close(CloseReason::SHUTDOWN);
        assert_eq!(*inbox.close.borrow(), Some(CloseReason::SLOW_CONSUMER));
    }
}
