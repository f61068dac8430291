//! The sending half of a connection's outbound backlog.

use std::sync::Arc;

use arqon_outbound::{
    Budget, Closing, FanoutFrame, Outbound, OutboundReceiver, OutboundSender, SlowCause, TrySendError,
};

/// Where the bus puts frames for one client, and how it asks the transport
/// to close that client.
#[derive(Debug, Clone)]
pub(crate) struct Outlet {
    tx: OutboundSender,
}

/// The receiving half, handed to the transport: the frames to write, and
/// the reason to close once the bus sets one (see [`OutboundReceiver`]).
#[derive(Debug)]
pub struct Inbox {
    /// Frames to write, in order, then the close.
    pub frames: OutboundReceiver,
}

impl Outlet {
    /// A backlog of at most `max_bytes` bytes, charged to the bus's `budget`
    /// (PROTOCOL.md section 8.1: 64 MiB and 1 GiB by default).
    ///
    /// Overflow policy: a push that would exceed `max_bytes` never waits and
    /// never drops silently; it closes *this* client with 1008 (slow
    /// consumer), so one stalled reader cannot slow a publisher or grow
    /// memory. Past the budget, the largest backlogs of the bus are closed.
    pub(crate) fn new(max_bytes: usize, budget: &Arc<Budget>) -> (Outlet, Inbox) {
        let (tx, frames) = arqon_outbound::queue(max_bytes, budget);
        (Outlet { tx }, Inbox { frames })
    }

    /// Queues an item for this client alone; returns false if it was not
    /// queued (the client is gone or closing).
    pub(crate) fn push(&self, item: Outbound) -> bool {
        let share = item.bytes();
        self.push_shared(item, share)
    }

    /// Queues one copy of a frame shared by several clients; `share` is this
    /// copy's part of its size in the global budget.
    pub(crate) fn push_shared(&self, item: Outbound, share: usize) -> bool {
        self.settle(self.tx.try_send_shared(item, share))
    }

    /// Queues a frame of a channel's fanout (stored once, queued by
    /// reference); `share` as for [`push_shared`](Self::push_shared).
    pub(crate) fn push_fanout(&self, frame: &FanoutFrame, share: usize) -> bool {
        self.settle(self.tx.try_send_fanout(frame, share))
    }

    /// What a push did: a full backlog closes this client as a slow consumer.
    fn settle(&self, pushed: Result<(), TrySendError>) -> bool {
        match pushed {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.tx.close(Closing::slow(SlowCause::Backlog));
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the transport to close the connection; the first reason wins.
    pub(crate) fn close(&self, closing: impl Into<Closing>) {
        self.tx.close(closing);
    }

    /// Bytes queued towards this client and not yet written.
    pub(crate) fn backlog_bytes(&self) -> usize {
        self.tx.backlog_bytes()
    }

    /// Why the connection is closing, once the bus or the transport said.
    pub(crate) fn closing(&self) -> Option<Closing> {
        self.tx.closing()
    }
}

/// Each recipient's part of a frame of `bytes` delivered to `recipients`
/// connections, so that the budget counts the frame once.
pub(crate) fn share(bytes: usize, recipients: usize) -> usize {
    bytes.div_ceil(recipients.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arqon_protocol::{CloseReason, Frame};

    #[test]
    fn overflow_closes_with_1008_and_first_reason_wins() {
        let (outlet, inbox) = Outlet::new(4, &Budget::unlimited());
        let frame = || Outbound::Frame(Frame::from_text("{}"));
        assert!(outlet.push(frame()));
        assert!(outlet.push(frame()));
        assert_eq!(inbox.frames.closing(), None);
        assert!(!outlet.push(frame()), "2 + 2 + 2 bytes > 4");
        assert_eq!(inbox.frames.closing(), Some(Closing::slow(SlowCause::Backlog)));
        outlet.close(CloseReason::SHUTDOWN);
        assert_eq!(outlet.closing(), Some(Closing::slow(SlowCause::Backlog)));
    }
}
