use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::Frame;

/// One item of a connection's outbound queue.
///
/// A batch counts as one queue slot: `join_channel` with `since` replays up to
/// a channel's whole kept history at once, which must not overflow a queue
/// sized for live traffic.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A single frame.
    Frame(Frame),
    /// Frames to write back to back, in order.
    Batch(Vec<Frame>),
    /// A binary WebSocket message. The bus itself never sends binary (every
    /// envelope is a text frame); this variant exists for harnesses built on
    /// the transport, such as the echo server the Autobahn|Testsuite runs
    /// against.
    Binary(Bytes),
}

/// Why the bus closes a connection, as a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// The WebSocket close code.
    pub code: u16,
    /// A short reason sent in the close frame.
    pub reason: &'static str,
}

impl CloseReason {
    /// 1001: the server is shutting down.
    pub const SHUTDOWN: CloseReason = CloseReason { code: 1001, reason: "server shutting down" };
    /// 1008: the client's outbound queue overflowed.
    pub const SLOW_CONSUMER: CloseReason = CloseReason { code: 1008, reason: "slow consumer" };
    /// 1008: the client kept breaking the rules (e.g. the rate limit).
    pub const ABUSE: CloseReason = CloseReason { code: 1008, reason: "repeated abuse" };
    /// 1008: the client's credentials expired while it was connected.
    pub const TOKEN_EXPIRED: CloseReason = CloseReason { code: 1008, reason: "token expired" };
    /// 1009: a frame over `max_message_bytes`.
    pub const TOO_LARGE: CloseReason = CloseReason { code: 1009, reason: "message too large" };
}

/// A bounded outbound queue for one connection: the bus pushes with
/// [`OutboundSender::try_send`] (never waits), the connection's writer takes
/// everything queued at once with [`OutboundReceiver::recv_all`].
///
/// Capacity: `capacity` items (at least 1). Overflow policy: a push that finds
/// the queue full fails with [`TrySendError::Full`] and the item is handed
/// back; the caller decides (the bus closes that client with 1008).
///
/// One uncontended lock per push; the writer is woken only when the queue goes
/// from empty to non-empty, so a burst costs one wake-up and, with
/// `recv_all`, one lock for the whole batch. The storage is allocated on the
/// first push and released when the writer finds the queue empty, so an idle
/// connection holds no queue memory. Plain `std` (a mutex and a waker), no
/// runtime.
pub fn queue(capacity: usize) -> (OutboundSender, OutboundReceiver) {
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        state: Mutex::new(State { items: VecDeque::new(), waker: None, senders: 1, closed: false }),
    });
    (OutboundSender { shared: Arc::clone(&shared) }, OutboundReceiver { shared })
}

/// Queue storage kept while idle, in items (4 is the smallest allocation a
/// deque makes); more is released when the writer finds the queue empty.
const IDLE_KEEP: usize = 4;

#[derive(Debug)]
struct Shared {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    items: VecDeque<Outbound>,
    /// The writer waiting for the next item, if it is waiting.
    waker: Option<Waker>,
    /// Live `OutboundSender`s; at 0 the receiver ends once it has drained.
    senders: usize,
    /// The receiver closed the queue or is gone: pushes fail.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue consistent (every
        // critical section is a few field updates), so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The pushing half of [`queue`]; clones share the queue.
#[derive(Debug)]
pub struct OutboundSender {
    shared: Arc<Shared>,
}

/// The receiving half of [`queue`], owned by the connection's writer.
#[derive(Debug)]
pub struct OutboundReceiver {
    shared: Arc<Shared>,
}

/// Why [`OutboundSender::try_send`] did not queue an item; the item is handed
/// back.
#[derive(Debug)]
pub enum TrySendError {
    /// The queue holds `capacity` items.
    Full(Outbound),
    /// The receiver closed the queue or is gone.
    Closed(Outbound),
}

/// Why [`OutboundReceiver::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing is queued now.
    Empty,
    /// Nothing is queued and nothing can be any more.
    Disconnected,
}

impl OutboundSender {
    /// Queues `item` unless the queue is full or closed; never waits.
    pub fn try_send(&self, item: Outbound) -> Result<(), TrySendError> {
        let waker = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(TrySendError::Closed(item));
            }
            if state.items.len() >= self.shared.capacity {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
            // Only the empty -> non-empty transition wakes the writer: it
            // takes everything queued when it runs.
            if state.items.len() == 1 { state.waker.take() } else { None }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Items queued and not yet taken by the receiver.
    pub fn len(&self) -> usize {
        self.shared.lock().items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items the queue holds.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Whether the receiver closed the queue or is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

impl Clone for OutboundSender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        OutboundSender { shared: Arc::clone(&self.shared) }
    }
}

impl Drop for OutboundSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 { state.waker.take() } else { None }
        };
        // The last sender is gone: the receiver must learn it.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl OutboundReceiver {
    /// Closes the queue: later pushes fail; what is queued can still be taken.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
    }

    /// Items queued and not yet taken.
    pub fn len(&self) -> usize {
        self.shared.lock().items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the oldest item, if one is queued.
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        let mut state = self.shared.lock();
        match state.items.pop_front() {
            Some(item) => Ok(item),
            None if state.senders == 0 || state.closed => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Waits for the oldest item; `None` once the queue is empty and every
    /// sender is gone (or the queue was closed).
    pub async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(item) = state.items.pop_front() {
                return Poll::Ready(Some(item));
            }
            if state.senders == 0 || state.closed {
                return Poll::Ready(None);
            }
            register(&mut state, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Moves everything queued to the back of `out`, in order. `Ready(true)`
    /// when it moved something; `Ready(false)` once the queue is empty and
    /// every sender is gone (or the queue was closed). When nothing is queued
    /// it releases the storage of the queue and of an empty `out` beyond a few
    /// items, so that an idle connection holds none.
    pub fn poll_recv_all(&mut self, cx: &mut Context<'_>, out: &mut VecDeque<Outbound>) -> Poll<bool> {
        let mut state = self.shared.lock();
        if !state.items.is_empty() {
            if out.is_empty() {
                // The writer's emptied deque becomes the queue's storage.
                std::mem::swap(&mut state.items, out);
            } else {
                out.append(&mut state.items);
            }
            return Poll::Ready(true);
        }
        if state.senders == 0 || state.closed {
            return Poll::Ready(false);
        }
        if state.items.capacity() > IDLE_KEEP {
            state.items = VecDeque::new();
        }
        if out.is_empty() && out.capacity() > IDLE_KEEP {
            *out = VecDeque::new();
        }
        register(&mut state, cx.waker());
        Poll::Pending
    }

    /// Moves everything queued to the back of `out` without waiting; whether
    /// it moved anything.
    pub fn try_recv_all(&mut self, out: &mut VecDeque<Outbound>) -> bool {
        let mut state = self.shared.lock();
        if state.items.is_empty() {
            return false;
        }
        out.append(&mut state.items);
        true
    }

    /// Waits until something is queued and moves all of it to `out` (see
    /// [`poll_recv_all`](Self::poll_recv_all)); `false` once nothing more
    /// will come.
    pub async fn recv_all(&mut self, out: &mut VecDeque<Outbound>) -> bool {
        std::future::poll_fn(|cx| self.poll_recv_all(cx, out)).await
    }
}

fn register(state: &mut State, waker: &Waker) {
    match &state.waker {
        Some(current) if current.will_wake(waker) => {}
        _ => state.waker = Some(waker.clone()),
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        // Nobody will write these: free them now, not when the last sender goes.
        let items = std::mem::take(&mut state.items);
        drop(state);
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn frame(text: &str) -> Outbound {
        Outbound::Frame(Frame::from_text(text))
    }

    fn text(item: &Outbound) -> &str {
        match item {
            Outbound::Frame(frame) => frame.as_str(),
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn bounded_in_order_and_one_wake_per_burst() {
        let (tx, mut rx) = queue(3);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut out = VecDeque::new();
        assert!(rx.poll_recv_all(&mut cx, &mut out).is_pending());
        tx.try_send(frame("a")).unwrap();
        tx.try_send(frame("b")).unwrap();
        tx.try_send(frame("c")).unwrap();
        assert!(matches!(tx.try_send(frame("d")), Err(TrySendError::Full(_))));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for the burst");
        assert_eq!(rx.poll_recv_all(&mut cx, &mut out), Poll::Ready(true));
        assert_eq!(out.iter().map(text).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(tx.len(), 0);
        tx.try_send(frame("d")).unwrap();
        assert_eq!(rx.try_recv().map(|item| text(&item).to_owned()), Ok("d".to_owned()));
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Empty));
    }

    #[test]
    fn ends_when_senders_go_and_refuses_after_close() {
        let (tx, mut rx) = queue(4);
        let tx2 = tx.clone();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut out = VecDeque::new();
        tx.try_send(frame("a")).unwrap();
        drop(tx);
        assert_eq!(rx.poll_recv_all(&mut cx, &mut out), Poll::Ready(true));
        assert!(rx.poll_recv_all(&mut cx, &mut out).is_pending());
        drop(tx2);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the last sender's drop wakes");
        assert_eq!(rx.poll_recv_all(&mut cx, &mut out), Poll::Ready(false));

        let (tx, mut rx) = queue(4);
        tx.try_send(frame("a")).unwrap();
        rx.close();
        assert!(matches!(tx.try_send(frame("b")), Err(TrySendError::Closed(_))));
        assert!(rx.try_recv().is_ok());
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Disconnected));
        drop(rx);
        assert!(tx.is_closed());
    }
}
