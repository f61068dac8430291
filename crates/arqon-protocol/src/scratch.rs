//! Per-thread reusable byte buffers for building frames: the encoder writes an
//! envelope into one before copying it into the frame's shared block, and the
//! transport frames a batch of queued frames into one before writing it. Both
//! give the buffer back when done, so a busy thread allocates none per frame
//! and idle connections hold none.

use std::cell::Cell;

thread_local! {
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Largest buffer kept between uses (a big history response or write batch
/// is freed instead).
const KEEP: usize = 256 * 1024;

/// Takes the thread's buffer (empty), or a new one if it is in use.
pub fn take() -> Vec<u8> {
    SCRATCH.with(Cell::take)
}

/// Gives a buffer back for the next use on this thread; of two, the larger
/// is kept.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() <= KEEP {
        buf.clear();
        SCRATCH.with(|scratch| {
            let other = scratch.take();
            scratch.set(if other.capacity() > buf.capacity() { other } else { buf });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_capacity() {
        let mut buf = take();
        buf.extend_from_slice(b"frame");
        let capacity = buf.capacity();
        give(buf);
        let again = take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);
        // In use: the next taker gets a fresh one.
        assert_eq!(take().capacity(), 0);
        give(again);
    }

    #[test]
    fn huge_buffers_are_not_kept() {
        drop(take());
        give(Vec::with_capacity(KEEP + 1));
        assert_eq!(take().capacity(), 0);
    }
}
