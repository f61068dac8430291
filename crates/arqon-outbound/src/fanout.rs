//! A channel's frames, stored once for every connection they are queued to.
//!
//! Without it, a burst of `m` messages to `n` subscribers that read slower
//! than the burst arrives holds `m × n` queue entries, one per delivery:
//! more memory than the frames themselves (issue 14: 2 million entries for a
//! 5 MB burst). Here the channel appends each frame to a chunk, and a
//! connection's queue holds a *run* of consecutive frames of one chunk (a
//! pointer and two indexes): a subscriber that falls behind by a whole chunk
//! costs one entry for all of it.
//!
//! A chunk lives as long as some queue's run needs it; the channel keeps only
//! a weak reference, so an idle channel holds no frames here (history keeps
//! its own). Chunks start small and double while the previous one is still
//! queued somewhere, so a channel whose subscribers keep up uses small
//! chunks and a burst uses large ones.

use std::fmt;
use std::sync::{Arc, OnceLock, Weak};

use arqon_protocol::Frame;

/// Slots of a channel's first chunk, and of the first after its subscribers
/// caught up.
const FIRST_CHUNK: usize = 4;
/// Slots of the largest chunk: a run covers at most this many frames.
const LARGEST_CHUNK: usize = 64;

/// A run of frames of one chunk, each slot written once by the channel
/// before any queue refers to it.
pub(crate) type Chunk = Arc<[OnceLock<Frame>]>;

/// The frames one channel delivers, appended in delivery order. Owned by the
/// channel, behind its own lock; [`Fanout::append`] is the only writer.
#[derive(Default)]
pub struct Fanout {
    /// The chunk being filled (none before the first append).
    chunk: Option<Weak<[OnceLock<Frame>]>>,
    /// The next free slot of `chunk`.
    next: usize,
    /// Slots of `chunk`.
    capacity: usize,
}

impl fmt::Debug for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fanout").field("next", &self.next).field("capacity", &self.capacity).finish()
    }
}

impl Fanout {
    /// An empty fanout: it allocates on the first append.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `frame` after the previous one; queue it to each receiver
    /// with [`OutboundSender::try_send_fanout`](crate::OutboundSender::try_send_fanout).
    pub fn append(&mut self, frame: Frame) -> FanoutFrame {
        let live = self.chunk.as_ref().and_then(Weak::upgrade);
        let chunk = match live {
            Some(chunk) if self.next < self.capacity => chunk,
            // Still queued somewhere: the subscribers are behind, so the
            // next chunk is larger; otherwise start small again.
            still_queued => {
                let capacity = match still_queued {
                    Some(_) => (self.capacity * 2).clamp(FIRST_CHUNK, LARGEST_CHUNK),
                    None => FIRST_CHUNK,
                };
                let chunk: Chunk = (0..capacity).map(|_| OnceLock::new()).collect();
                self.chunk = Some(Arc::downgrade(&chunk));
                self.capacity = capacity;
                self.next = 0;
                chunk
            }
        };
        let index = self.next;
        self.next += 1;
        if let Some(slot) = chunk.get(index) {
            let stored = slot.set(frame.clone()).is_ok();
            debug_assert!(stored, "a fanout slot is written once");
        }
        FanoutFrame { chunk, index: index as u16, frame }
    }
}

/// A frame appended to a [`Fanout`], ready to be queued to its receivers.
pub struct FanoutFrame {
    pub(crate) chunk: Chunk,
    pub(crate) index: u16,
    pub(crate) frame: Frame,
}

impl fmt::Debug for FanoutFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanoutFrame").field("index", &self.index).field("frame", &self.frame).finish()
    }
}

impl FanoutFrame {
    /// The frame.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Frame {
        Frame::from_text(format!("{{\"n\":{n}}}"))
    }

    #[test]
    fn frames_go_to_consecutive_slots_of_a_chunk() {
        let mut fanout = Fanout::new();
        let a = fanout.append(frame(0));
        let b = fanout.append(frame(1));
        assert!(Arc::ptr_eq(&a.chunk, &b.chunk));
        assert_eq!((a.index, b.index), (0, 1));
        assert_eq!(a.chunk.get(1).and_then(OnceLock::get), Some(&frame(1)));
    }

    #[test]
    fn chunks_grow_while_queued_and_start_small_once_released() {
        let mut fanout = Fanout::new();
        // Every frame kept (as a queue would): the chunks double up to the largest.
        let held: Vec<FanoutFrame> = (0..200).map(|n| fanout.append(frame(n))).collect();
        let sizes: Vec<usize> = held.iter().filter(|f| f.index == 0).map(|f| f.chunk.len()).collect();
        assert_eq!(sizes, [4, 8, 16, 32, 64, 64, 64]);
        drop(held);
        // Nobody holds the chunk any more: its frames are gone, and the next is small.
        let next = fanout.append(frame(200));
        assert_eq!((next.index, next.chunk.len()), (0, FIRST_CHUNK));
    }

    #[test]
    fn a_released_chunk_frees_its_frames() {
        let mut fanout = Fanout::new();
        let kept = frame(7);
        drop(fanout.append(kept.clone()));
        // Only the weak reference is left: the slot's frame was dropped.
        let fresh = fanout.append(frame(8));
        assert_eq!(fresh.index, 0, "a new chunk, not the released one's next slot");
        assert_eq!(kept.as_str(), "{\"n\":7}");
    }
}
