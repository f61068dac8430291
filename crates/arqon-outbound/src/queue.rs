//! One connection's outbound backlog: bounded in bytes, drained in bursts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};

use arqon_protocol::{CloseReason, Frame};

use crate::budget::Budget;
use crate::fanout::{Chunk, FanoutFrame};

/// One item of a connection's backlog.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A single frame.
    Frame(Frame),
    /// Frames to write back to back, in order (a `join_channel` replay: it
    /// must reach the client before any live frame queued after it).
    Batch(Box<[Frame]>),
    /// A binary WebSocket message. The bus itself never sends binary (every
    /// envelope is a text frame); this variant exists for harnesses built on
    /// the transport, such as the echo server the Autobahn|Testsuite runs
    /// against.
    Binary(Box<[u8]>),
    /// One text message spliced from shared pieces (a `history` response:
    /// the stored frames are written from history's own memory, not copied).
    Spliced(Box<Spliced>),
}

/// One text message made of `head`, then `items` separated by commas, then
/// `tail`: how a response embedding stored frames is queued without copying
/// them.
#[derive(Debug, Clone)]
pub struct Spliced {
    /// Everything before the first item.
    pub head: Frame,
    /// The shared frames, in order.
    pub items: Box<[Frame]>,
    /// Everything after the last item.
    pub tail: &'static [u8],
}

impl Spliced {
    /// The message's length in bytes.
    pub fn len(&self) -> usize {
        self.head.len()
            + self.items.iter().map(Frame::len).sum::<usize>()
            + self.items.len().saturating_sub(1)
            + self.tail.len()
    }

    /// Whether the message is empty (never, for a response).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message's bytes, piece by piece, in order.
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        let items = self.items.iter().enumerate().flat_map(|(i, item)| {
            let comma: &[u8] = if i > 0 { b"," } else { b"" };
            [comma, item.bytes()]
        });
        std::iter::once(self.head.bytes()).chain(items).chain(std::iter::once(self.tail))
    }

    /// The whole message as one frame (a copy: for embedders that want one
    /// block, and tests).
    pub fn to_frame(&self) -> Frame {
        let mut text = Vec::with_capacity(self.len());
        for part in self.parts() {
            text.extend_from_slice(part);
        }
        Frame::from_text(String::from_utf8_lossy(&text).into_owned())
    }
}
// Every queued delivery holds one of these (a burst to many subscribers holds
// one per subscriber per message): two words, so that the bookkeeping stays
// small beside the frame, which is shared.
const _: () = assert!(std::mem::size_of::<Outbound>() == 24);

impl Outbound {
    /// Bytes of payload this item puts on the wire (frame headers aside):
    /// what it counts against a backlog.
    pub fn bytes(&self) -> usize {
        match self {
            Outbound::Frame(frame) => frame.len(),
            Outbound::Batch(frames) => frames.iter().map(Frame::len).sum(),
            Outbound::Binary(data) => data.len(),
            Outbound::Spliced(spliced) => spliced.len(),
        }
    }
}

/// Which limit of PROTOCOL.md section 8.1 a slow consumer broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlowCause {
    /// Its backlog would have grown past the per-connection byte limit.
    Backlog,
    /// Its backlog was not empty and its socket accepted no byte for the
    /// write timeout.
    WriteTimeout,
    /// The bus's global budget was exceeded and its backlog was among the
    /// largest.
    Budget,
}

impl SlowCause {
    /// The cause as a metric label and telemetry field.
    pub fn as_str(self) -> &'static str {
        match self {
            SlowCause::Backlog => "backlog",
            SlowCause::WriteTimeout => "write_timeout",
            SlowCause::Budget => "budget",
        }
    }
}

/// Why the bus wants a connection closed: the close code and reason to send,
/// and, for a slow consumer, which limit it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    /// The close frame to send.
    pub reason: CloseReason,
    /// Set for slow consumers (close 1008 "slow consumer").
    pub cause: Option<SlowCause>,
}

impl Closing {
    /// A slow consumer's close: 1008 "slow consumer".
    pub fn slow(cause: SlowCause) -> Self {
        Closing { reason: CloseReason::SLOW_CONSUMER, cause: Some(cause) }
    }
}

impl From<CloseReason> for Closing {
    fn from(reason: CloseReason) -> Self {
        Closing { reason, cause: None }
    }
}

/// Creates a connection's backlog.
///
/// Bound: `max_bytes` bytes of queued frames (0: no per-connection bound),
/// counting what the writer has taken but not yet written. Overflow policy:
/// a push that would exceed it fails with [`TrySendError::Full`] and hands
/// the item back; the caller decides (the bus closes that client as a slow
/// consumer, [`OutboundSender::close`]). Every push is also charged to
/// `budget`, which may close other connections (the largest backlogs) when
/// the bus as a whole holds too much.
///
/// One uncontended lock per push; the writer is woken only when the queue
/// goes from empty to non-empty and takes everything queued at once, so a
/// burst costs one wake-up and one lock. Queue storage is released when the
/// writer finds the queue empty, so an idle connection holds none.
pub fn queue(max_bytes: usize, budget: &Arc<Budget>) -> (OutboundSender, OutboundReceiver) {
    let shared = Arc::new_cyclic(|weak| Shared {
        max_bytes,
        budget: Arc::clone(budget),
        slot: budget.register(weak.clone()),
        evicted: AtomicBool::new(false),
        state: Mutex::new(State {
            items: VecDeque::new(),
            frames: 0,
            backlog: 0,
            charged: 0,
            waker: None,
            senders: 1,
            closing: None,
            receiver_gone: false,
        }),
    });
    let receiver = OutboundReceiver {
        shared: Arc::clone(&shared),
        taken: VecDeque::new(),
        taken_frames: 0,
        released: Released::default(),
    };
    (OutboundSender { shared }, receiver)
}

/// Queue storage kept while idle, in items (4 is the smallest allocation a
/// deque makes); more is released when the writer finds the queue empty.
const IDLE_KEEP: usize = 4;

/// A queued item and what it costs: `bytes` against its connection's
/// backlog, `share` against the global budget (a frame delivered to `n`
/// connections charges each `1/n` of its size, so that the budget counts
/// the shared memory once). A run's costs are its frames' together.
#[derive(Debug)]
struct Entry {
    item: Queued,
    bytes: u32,
    share: u32,
}

#[derive(Debug)]
enum Queued {
    /// One item, for this connection alone or shared.
    One(Outbound),
    /// Frames `next..end` of a channel's fanout chunk, written in order
    /// (see [`crate::fanout`]): a burst to this connection costs one entry
    /// per chunk, not one per frame.
    Run { chunk: Chunk, next: u16, end: u16 },
}

/// What a push queues.
enum Push<'a> {
    One(Outbound),
    Fanout(&'a FanoutFrame),
}

impl Push<'_> {
    fn bytes(&self) -> usize {
        match self {
            Push::One(item) => item.bytes(),
            Push::Fanout(frame) => frame.frame.len(),
        }
    }

    /// The item handed back when the push fails.
    fn give_back(self) -> Outbound {
        match self {
            Push::One(item) => item,
            Push::Fanout(frame) => Outbound::Frame(frame.frame.clone()),
        }
    }

    /// Queues it: a fanout frame that follows the queue's last run in the
    /// same chunk extends that run.
    fn enqueue(self, items: &mut VecDeque<Entry>, bytes: u32, share: u32) {
        if let Push::Fanout(frame) = &self
            && let Some(Entry { item: Queued::Run { chunk, end, .. }, bytes: run_bytes, share: run_share }) =
                items.back_mut()
            && Arc::ptr_eq(chunk, &frame.chunk)
            && *end == frame.index
        {
            *end += 1;
            *run_bytes = run_bytes.saturating_add(bytes);
            *run_share = run_share.saturating_add(share);
            return;
        }
        let item = match self {
            Push::One(item) => Queued::One(item),
            Push::Fanout(frame) => {
                Queued::Run { chunk: Arc::clone(&frame.chunk), next: frame.index, end: frame.index + 1 }
            }
        };
        items.push_back(Entry { item, bytes, share });
    }
}

/// A size as stored in an [`Entry`]; nothing queued comes near 4 GiB.
fn small(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[derive(Debug)]
pub(crate) struct Shared {
    max_bytes: usize,
    budget: Arc<Budget>,
    /// This queue's place in the budget's registry.
    slot: usize,
    /// Closed as a slow consumer: the writer stops between two writes
    /// without taking the lock.
    evicted: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    items: VecDeque<Entry>,
    /// Frames (and other items) in `items`: a run counts each of its frames.
    frames: usize,
    /// Bytes queued or taken by the writer and not yet written.
    backlog: usize,
    /// What this queue holds of the global budget.
    charged: usize,
    /// The writer waiting for the next item, if it is waiting.
    waker: Option<Waker>,
    /// Live `OutboundSender`s; at 0 the receiver ends once it has drained.
    senders: usize,
    /// Set once (the first reason wins): pushes fail from then on.
    closing: Option<Closing>,
    /// The receiver is gone: nobody will write what is queued.
    receiver_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few field updates that leave the state
        // consistent, so a panic elsewhere cannot poison it meaningfully.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the closing reason unless one is set; a slow consumer's queued
    /// frames are dropped at once and its share of the budget returned.
    /// Returns whether this call set it.
    fn close(&self, closing: Closing) -> bool {
        let (waker, dropped) = {
            let mut state = self.lock();
            if state.closing.is_some() {
                return false;
            }
            state.closing = Some(closing);
            let dropped = if closing.cause.is_some() {
                self.evicted.store(true, Ordering::Release);
                self.budget.release(std::mem::take(&mut state.charged));
                state.backlog = 0;
                state.frames = 0;
                std::mem::take(&mut state.items)
            } else {
                VecDeque::new()
            };
            (state.waker.take(), dropped)
        };
        // Frames are freed outside the lock.
        drop(dropped);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// (backlog bytes, budget charged) of a queue that is still open, for the
    /// budget's choice of whom to close.
    pub(crate) fn open_backlog(&self) -> Option<(usize, usize)> {
        let state = self.lock();
        (state.closing.is_none() && !state.receiver_gone).then_some((state.backlog, state.charged))
    }

    /// Closes this queue for the budget; what it frees of the budget, or
    /// `None` if it was already closing.
    pub(crate) fn evict_for_budget(&self) -> Option<usize> {
        let charged = self.lock().charged;
        self.close(Closing::slow(SlowCause::Budget)).then_some(charged)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.budget.unregister(self.slot);
    }
}

/// The pushing half of [`queue`]; clones share the queue.
#[derive(Debug)]
pub struct OutboundSender {
    shared: Arc<Shared>,
}

/// Why [`OutboundSender::try_send`] did not queue an item; the item is handed
/// back.
#[derive(Debug)]
pub enum TrySendError {
    /// The item would take the backlog past its byte limit.
    Full(Outbound),
    /// The connection is closing, or its writer is gone.
    Closed(Outbound),
}

impl OutboundSender {
    /// Queues `item` for this connection alone (its whole size is charged to
    /// the budget); never waits.
    pub fn try_send(&self, item: Outbound) -> Result<(), TrySendError> {
        let bytes = item.bytes();
        self.try_send_shared(item, bytes)
    }

    /// Queues `item`, one copy of a frame shared by several connections:
    /// `share` is this copy's part of the frame's size in the global budget.
    pub fn try_send_shared(&self, item: Outbound, share: usize) -> Result<(), TrySendError> {
        self.push(Push::One(item), share)
    }

    /// Queues a frame of a channel's [`Fanout`](crate::Fanout), by reference
    /// to the chunk that holds it: right after the previous frame of the same
    /// chunk it costs no new entry. `share` as for
    /// [`try_send_shared`](Self::try_send_shared).
    pub fn try_send_fanout(&self, frame: &FanoutFrame, share: usize) -> Result<(), TrySendError> {
        self.push(Push::Fanout(frame), share)
    }

    fn push(&self, push: Push<'_>, share: usize) -> Result<(), TrySendError> {
        let bytes = push.bytes();
        let (waker, over_budget) = {
            let mut state = self.shared.lock();
            if state.closing.is_some() || state.receiver_gone {
                return Err(TrySendError::Closed(push.give_back()));
            }
            if self.shared.max_bytes > 0 && state.backlog + bytes > self.shared.max_bytes {
                return Err(TrySendError::Full(push.give_back()));
            }
            // Charged before the item is visible to the writer, so that its
            // release can never come first.
            let over_budget = self.shared.budget.charge(share);
            let was_empty = state.items.is_empty();
            push.enqueue(&mut state.items, small(bytes), small(share));
            state.frames += 1;
            state.backlog += bytes;
            state.charged += share;
            // Only the empty -> non-empty transition wakes the writer: it
            // takes everything queued when it runs.
            (if was_empty { state.waker.take() } else { None }, over_budget)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        if over_budget {
            self.shared.budget.enforce();
        }
        Ok(())
    }

    /// Asks for the connection to be closed; the first reason wins (returns
    /// whether this one did). Frames queued before it are still written,
    /// unless this is a slow consumer's close: those are dropped.
    pub fn close(&self, closing: impl Into<Closing>) -> bool {
        self.shared.close(closing.into())
    }

    /// The reason the connection is closing, once one is set.
    pub fn closing(&self) -> Option<Closing> {
        self.shared.lock().closing
    }

    /// Bytes queued and not yet written.
    pub fn backlog_bytes(&self) -> usize {
        self.shared.lock().backlog
    }

    /// Items queued and not yet taken by the writer (a fanout run counts
    /// each of its frames).
    pub fn len(&self) -> usize {
        self.shared.lock().frames
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether pushes fail now (closing, or the writer is gone).
    pub fn is_closed(&self) -> bool {
        let state = self.shared.lock();
        state.closing.is_some() || state.receiver_gone
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

/// What [`OutboundReceiver::poll_recv`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// Items were taken: [`OutboundReceiver::pop`] them.
    Items,
    /// Everything queued before the close was taken; close the connection
    /// like this.
    Closed(Closing),
    /// Every sender is gone and nothing is left: the bus forgot the client.
    Ended,
}

/// Why [`OutboundReceiver::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing is queued now.
    Empty,
    /// Nothing is queued and nothing can be any more.
    Disconnected,
}

/// Bytes popped since the last time the receiver took the lock.
#[derive(Debug, Default)]
struct Released {
    bytes: usize,
    share: usize,
}

/// What [`OutboundReceiver::pop_with`] hands out.
#[derive(Debug)]
pub enum Popped<'a> {
    /// A frame of a fanout run, lent (the run keeps it).
    Frame(&'a Frame),
    /// Any other item, given.
    Item(Outbound),
}

impl Popped<'_> {
    /// As an item of its own (a lent frame is cloned).
    pub fn into_item(self) -> Outbound {
        match self {
            Popped::Frame(frame) => Outbound::Frame(frame.clone()),
            Popped::Item(item) => item,
        }
    }
}

/// The receiving half of [`queue`], owned by the connection's writer: it
/// takes everything queued at once ([`poll_recv`](Self::poll_recv)), then
/// pops the items one by one as it writes them. An item counts against the
/// backlog until it is popped.
#[derive(Debug)]
pub struct OutboundReceiver {
    shared: Arc<Shared>,
    /// Taken from the queue, not popped yet.
    taken: VecDeque<Entry>,
    /// Items in `taken` (a run counts each of its frames).
    taken_frames: usize,
    released: Released,
}

impl OutboundReceiver {
    /// Takes everything queued. `Ready(Items)` when it took something;
    /// `Ready(Closed)` once a close was asked for and everything queued
    /// before it was taken; `Ready(Ended)` once every sender is gone and
    /// nothing is left. When nothing is queued it releases the queue's
    /// storage beyond a few items, so that an idle connection holds none.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Recv> {
        let mut state = self.shared.lock();
        settle(&mut self.released, &self.shared.budget, &mut state);
        if !state.items.is_empty() {
            self.taken_frames += std::mem::take(&mut state.frames);
            if self.taken.is_empty() {
                // The emptied deque becomes the queue's storage.
                std::mem::swap(&mut state.items, &mut self.taken);
            } else {
                self.taken.append(&mut state.items);
            }
            return Poll::Ready(Recv::Items);
        }
        if let Some(closing) = state.closing {
            return Poll::Ready(Recv::Closed(closing));
        }
        if state.senders == 0 {
            return Poll::Ready(Recv::Ended);
        }
        if state.items.capacity() > IDLE_KEEP {
            state.items = VecDeque::new();
        }
        if self.taken.is_empty() && self.taken.capacity() > IDLE_KEEP {
            self.taken = VecDeque::new();
        }
        match &state.waker {
            Some(current) if current.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for [`poll_recv`](Self::poll_recv).
    pub async fn recv_all(&mut self) -> Recv {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Takes everything queued without waiting; whether it took anything.
    pub fn try_recv_all(&mut self) -> bool {
        let mut state = self.shared.lock();
        settle(&mut self.released, &self.shared.budget, &mut state);
        if state.items.is_empty() {
            return false;
        }
        self.taken_frames += std::mem::take(&mut state.frames);
        self.taken.append(&mut state.items);
        true
    }

    /// The next taken item, which from now on no longer counts against the
    /// backlog (it is being written). A fanout run comes out frame by frame.
    pub fn pop(&mut self) -> Option<Outbound> {
        self.pop_with(|popped| popped.into_item())
    }

    /// [`pop`](Self::pop), lending a fanout run's frame to `take` rather
    /// than cloning it: a writer that copies frames into its buffer spends
    /// no reference count per delivery.
    pub fn pop_with<T>(&mut self, take: impl FnOnce(Popped<'_>) -> T) -> Option<T> {
        loop {
            let entry = self.taken.front_mut()?;
            self.taken_frames = self.taken_frames.saturating_sub(1);
            if let Queued::Run { chunk, next, end } = &mut entry.item
                && *next + 1 < *end
            {
                // Not the run's last frame: the entry stays, lighter by one.
                let at = usize::from(*next);
                *next += 1;
                let Some(frame) = chunk.get(at).and_then(OnceLock::get) else { continue };
                let bytes = small(frame.len()).min(entry.bytes);
                entry.bytes -= bytes;
                self.released.bytes += bytes as usize;
                return Some(take(Popped::Frame(frame)));
            }
            let entry = self.taken.pop_front()?;
            self.released.bytes += entry.bytes as usize;
            self.released.share += entry.share as usize;
            match entry.item {
                Queued::One(item) => return Some(take(Popped::Item(item))),
                Queued::Run { chunk, next, .. } => {
                    // Every slot of a run was written before it was queued.
                    if let Some(frame) = chunk.get(usize::from(next)).and_then(OnceLock::get) {
                        return Some(take(Popped::Frame(frame)));
                    }
                }
            }
        }
    }

    /// Items taken and not popped yet (a fanout run counts each of its
    /// frames).
    pub fn taken(&self) -> usize {
        self.taken_frames
    }

    /// Drops every taken item unwritten.
    pub fn discard(&mut self) {
        while self.pop().is_some() {}
        let mut state = self.shared.lock();
        settle(&mut self.released, &self.shared.budget, &mut state);
    }

    /// Closes from the writer's side (the transport decided: a write
    /// timeout, say); the first reason wins. Returns whether this one did.
    pub fn close(&mut self, closing: impl Into<Closing>) -> bool {
        let closing = closing.into();
        let set = self.shared.close(closing);
        if closing.cause.is_some() {
            self.discard();
        }
        set
    }

    /// The reason the connection is closing, once one is set.
    pub fn closing(&self) -> Option<Closing> {
        self.shared.lock().closing
    }

    /// Whether the connection was closed as a slow consumer: a lock-free
    /// check the writer makes between two writes.
    pub fn is_evicted(&self) -> bool {
        self.shared.evicted.load(Ordering::Acquire)
    }

    /// Items taken or queued, not yet popped.
    pub fn len(&self) -> usize {
        self.taken_frames + self.shared.lock().frames
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the oldest item, if one is queued (for embedders and tests;
    /// the transport's writer uses `poll_recv` and `pop`).
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        if let Some(item) = self.pop() {
            return Ok(item);
        }
        if self.try_recv_all() {
            return self.pop().ok_or(TryRecvError::Empty);
        }
        let state = self.shared.lock();
        if state.senders == 0 || state.closing.is_some() {
            Err(TryRecvError::Disconnected)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    /// Waits for the oldest item; `None` once nothing more will come (every
    /// sender gone, or the connection closing and drained).
    pub async fn recv(&mut self) -> Option<Outbound> {
        if let Some(item) = self.pop() {
            return Some(item);
        }
        match self.recv_all().await {
            Recv::Items => self.pop(),
            Recv::Closed(_) | Recv::Ended => None,
        }
    }
}

/// Applies what was popped since the receiver last took the lock to the
/// backlog and the budget.
fn settle(released: &mut Released, budget: &Budget, state: &mut State) {
    let Released { bytes, share } = std::mem::take(released);
    state.backlog = state.backlog.saturating_sub(bytes);
    // An evicted queue already gave its whole charge back.
    let share = share.min(state.charged);
    state.charged -= share;
    budget.release(share);
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.lock();
            state.receiver_gone = true;
            self.released = Released::default();
            self.shared.budget.release(std::mem::take(&mut state.charged));
            state.backlog = 0;
            state.frames = 0;
            std::mem::take(&mut state.items)
        };
        // Nobody will write these: free them now, not when the last sender goes.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
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

    fn text(item: &Outbound) -> String {
        match item {
            Outbound::Frame(frame) => frame.as_str().to_owned(),
            other => panic!("not a frame: {other:?}"),
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        (count, waker)
    }

    fn drain(rx: &mut OutboundReceiver) -> Vec<String> {
        std::iter::from_fn(|| rx.pop()).map(|item| text(&item)).collect()
    }

    #[test]
    fn bounded_in_bytes_in_order_and_one_wake_per_burst() {
        let budget = Budget::unlimited();
        let (tx, mut rx) = queue(10, &budget);
        let (count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.try_send(frame("aaa")).unwrap();
        tx.try_send(frame("bbb")).unwrap();
        tx.try_send(frame("ccc")).unwrap();
        assert!(matches!(tx.try_send(frame("dd")), Err(TrySendError::Full(_))), "3 + 3 + 3 + 2 > 10");
        tx.try_send(frame("d")).unwrap();
        assert_eq!(tx.backlog_bytes(), 10);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for the burst");
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Recv::Items));
        assert_eq!(tx.len(), 0);
        // Taken but not written still counts.
        assert!(matches!(tx.try_send(frame("e")), Err(TrySendError::Full(_))));
        assert_eq!(rx.pop().map(|item| text(&item)), Some("aaa".to_owned()));
        // What was popped counts once the writer comes back for more.
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert_eq!(tx.backlog_bytes(), 7);
        tx.try_send(frame("eee")).unwrap();
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Recv::Items));
        assert_eq!(drain(&mut rx), ["bbb", "ccc", "d", "eee"]);
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert_eq!(tx.backlog_bytes(), 0);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_close_lets_what_was_queued_go_out_first() {
        let budget = Budget::unlimited();
        let (tx, mut rx) = queue(0, &budget);
        let (_count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        tx.try_send(frame("error")).unwrap();
        assert!(tx.close(CloseReason::TOO_LARGE));
        assert!(!tx.close(CloseReason::SHUTDOWN), "the first reason wins");
        assert!(matches!(tx.try_send(frame("late")), Err(TrySendError::Closed(_))));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Recv::Items));
        assert_eq!(drain(&mut rx), ["error"]);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Recv::Closed(CloseReason::TOO_LARGE.into())));
    }

    #[test]
    fn a_slow_consumer_close_drops_its_frames_and_returns_its_budget() {
        let budget = Budget::new(0);
        let (tx, mut rx) = queue(0, &budget);
        let (count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.try_send(frame("aaaa")).unwrap();
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Recv::Items));
        tx.try_send(frame("bbbb")).unwrap();
        assert_eq!(budget.used(), 8);
        assert!(rx.poll_recv(&mut cx).is_ready());
        assert!(rx.poll_recv(&mut cx).is_pending());
        let woken = count.0.load(Ordering::SeqCst);
        assert!(tx.close(Closing::slow(SlowCause::Backlog)));
        assert_eq!(count.0.load(Ordering::SeqCst), woken + 1, "the close wakes the writer");
        assert!(rx.is_evicted());
        assert_eq!(budget.used(), 0, "its whole charge is returned at once");
        assert_eq!(tx.backlog_bytes(), 0);
        // The frames the writer had taken are still with it; popping them
        // does not return the charge twice.
        rx.discard();
        assert_eq!(budget.used(), 0);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Recv::Closed(Closing::slow(SlowCause::Backlog))));
    }

    #[test]
    fn ends_when_senders_go_and_frees_everything_when_the_receiver_goes() {
        let budget = Budget::unlimited();
        let (tx, mut rx) = queue(0, &budget);
        let tx2 = tx.clone();
        let (count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        tx.try_send(frame("a")).unwrap();
        drop(tx);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Recv::Items));
        assert_eq!(drain(&mut rx), ["a"]);
        assert!(rx.poll_recv(&mut cx).is_pending());
        drop(tx2);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the last sender's drop wakes");
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Recv::Ended));

        let (tx, rx) = queue(0, &budget);
        tx.try_send(frame("abc")).unwrap();
        assert_eq!(budget.used(), 3);
        drop(rx);
        assert_eq!(budget.used(), 0);
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(frame("b")), Err(TrySendError::Closed(_))));
    }

    #[test]
    fn a_release_never_overtakes_its_charge() {
        // A writer on another thread pops as fast as the pusher pushes: the
        // budget must never go below zero (it used to, for a moment, when
        // the charge came after the item was visible: a wrapped counter).
        let budget = Budget::unlimited();
        let (tx, mut rx) = queue(0, &budget);
        const PUSHES: usize = 20_000;
        let seen = Arc::clone(&budget);
        let writer = std::thread::spawn(move || {
            let (_count, waker) = waker();
            let mut cx = Context::from_waker(&waker);
            let (mut popped, mut highest) = (0, 0);
            while popped < PUSHES {
                // Each poll settles what was popped before it.
                if rx.poll_recv(&mut cx).is_ready() {
                    while rx.pop().is_some() {
                        popped += 1;
                    }
                }
                highest = highest.max(seen.used());
            }
            (rx, highest)
        });
        let mut highest = 0;
        for _ in 0..PUSHES {
            tx.try_send(frame("0123456789")).unwrap();
            highest = highest.max(budget.used());
        }
        let (mut rx, seen_by_writer) = writer.join().unwrap();
        let (_count, waker) = waker();
        assert!(rx.poll_recv(&mut Context::from_waker(&waker)).is_pending());
        assert!(highest.max(seen_by_writer) <= PUSHES * 10, "the counter wrapped: {highest} {seen_by_writer}");
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_spliced_message_is_its_pieces_in_order() {
        let spliced = Spliced {
            head: Frame::from_text("{\"m\":["),
            items: vec![Frame::from_text("1"), Frame::from_text("22"), Frame::from_text("333")].into(),
            tail: b"]}",
        };
        assert_eq!(spliced.to_frame().as_str(), r#"{"m":[1,22,333]}"#);
        assert_eq!(spliced.len(), spliced.to_frame().len());
        assert_eq!(Outbound::Spliced(Box::new(spliced)).bytes(), 16);
        let empty = Spliced { head: Frame::from_text("{\"m\":["), items: Box::new([]), tail: b"]}" };
        assert_eq!(empty.to_frame().as_str(), r#"{"m":[]}"#);
        assert_eq!(empty.len(), 8);
    }

    #[test]
    fn shares_charge_the_budget_once_per_frame() {
        let budget = Budget::unlimited();
        let queues: Vec<_> = (0..4).map(|_| queue(0, &budget)).collect();
        let shared = Frame::from_text("x".repeat(100));
        for (tx, _) in &queues {
            tx.try_send_shared(Outbound::Frame(shared.clone()), 25).unwrap();
        }
        assert_eq!(budget.used(), 100, "four copies of one 100-byte frame");
        assert_eq!(queues[0].0.backlog_bytes(), 100, "each backlog counts the whole frame");
        drop(queues);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn fanout_frames_queue_as_runs_in_order_with_other_items() {
        let budget = Budget::unlimited();
        let (tx, mut rx) = queue(0, &budget);
        let (count, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        let mut fanout = crate::Fanout::new();
        let frames: Vec<_> = (0..6).map(|n| fanout.append(Frame::from_text(format!("f{n}")))).collect();
        tx.try_send_fanout(&frames[0], 1).unwrap();
        tx.try_send_fanout(&frames[1], 1).unwrap();
        tx.try_send(frame("own")).unwrap();
        for f in &frames[2..] {
            tx.try_send_fanout(f, 1).unwrap();
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for the burst");
        assert_eq!(tx.len(), 7, "every frame counts, whatever the entries");
        assert_eq!(tx.shared.lock().items.len(), 4, "run f0-f1, own, run f2-f3 (first chunk), run f4-f5");
        assert_eq!(tx.backlog_bytes(), 15);
        assert_eq!(budget.used(), 2 + 3 + 4);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Recv::Items));
        assert_eq!(rx.taken(), 7);
        assert_eq!(text(&rx.pop().unwrap()), "f0");
        assert_eq!(rx.taken(), 6);
        assert_eq!(drain(&mut rx), ["f1", "own", "f2", "f3", "f4", "f5"]);
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert_eq!((tx.backlog_bytes(), budget.used(), rx.len()), (0, 0, 0), "everything released once written");
    }

    #[test]
    fn a_runs_frames_are_lent_and_released_as_pop_releases_them() {
        let budget = Budget::unlimited();
        let (tx, mut rx) = queue(0, &budget);
        let mut fanout = crate::Fanout::new();
        let frames: Vec<_> = (0..3).map(|n| fanout.append(Frame::from_text(format!("f{n}")))).collect();
        tx.try_send_fanout(&frames[0], 1).unwrap();
        tx.try_send(frame("own")).unwrap();
        tx.try_send_fanout(&frames[1], 1).unwrap();
        tx.try_send_fanout(&frames[2], 1).unwrap();
        drop(frames);
        assert!(rx.try_recv_all());
        let mut seen = Vec::new();
        while let Some(()) = rx.pop_with(|popped| {
            seen.push(match popped {
                Popped::Frame(frame) => format!("lent {}", String::from_utf8_lossy(frame.bytes())),
                Popped::Item(item) => format!("given {}", text(&item)),
            });
        }) {
            // Bytes go as each frame is popped, a run's share with its last
            // frame (settled when the writer next looks at the queue).
            if seen.len() == 3 {
                assert!(!rx.try_recv_all());
                assert_eq!((tx.backlog_bytes(), budget.used(), rx.taken()), (2, 2, 1), "f2 and the run f1-f2's share");
            }
        }
        // A run's last frame is lent too: the popped entry keeps its chunk
        // alive for the call.
        assert_eq!(seen, ["lent f0", "given own", "lent f1", "lent f2"]);
        assert!(!rx.try_recv_all());
        assert_eq!((tx.backlog_bytes(), budget.used(), rx.taken()), (0, 0, 0));
    }

    #[test]
    fn a_run_is_bounded_like_any_item_and_freed_with_the_queue() {
        let budget = Budget::unlimited();
        let (tx, mut rx) = queue(5, &budget);
        let mut fanout = crate::Fanout::new();
        let a = fanout.append(Frame::from_text("aa"));
        let b = fanout.append(Frame::from_text("bb"));
        let c = fanout.append(Frame::from_text("cc"));
        tx.try_send_fanout(&a, 2).unwrap();
        tx.try_send_fanout(&b, 2).unwrap();
        match tx.try_send_fanout(&c, 2) {
            Err(TrySendError::Full(item)) => assert_eq!(text(&item), "cc", "the frame is handed back"),
            other => panic!("2 + 2 + 2 > 5 must be refused: {other:?}"),
        }
        // Half the run written: its bytes go as each frame is popped, its
        // share once the whole run is.
        assert!(rx.try_recv_all());
        assert_eq!(text(&rx.pop().unwrap()), "aa");
        assert!(!rx.try_recv_all());
        assert_eq!((tx.backlog_bytes(), budget.used()), (2, 4));
        tx.close(Closing::slow(SlowCause::Backlog));
        rx.discard();
        assert_eq!((tx.backlog_bytes(), budget.used()), (0, 0));
        drop((a, b, c));
        drop(rx);
        // Nothing holds the chunk: the next append starts a fresh one.
        assert_eq!(fanout.append(Frame::from_text("d")).index, 0);
    }
}
