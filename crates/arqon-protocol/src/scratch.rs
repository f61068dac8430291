//! Per-thread reusable byte buffers for building frames: the encoder writes an
//! envelope into one before copying it into the frame's shared block, and the
//! transport frames a batch of queued frames into one before writing it. Both
//! give the buffer back when done, so a busy thread allocates none per frame
//! and idle connections hold none.

use std::cell::Cell;
use std::thread::LocalKey;

thread_local! {
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Largest buffer kept between uses (a big history response or write batch
/// is freed instead).
const KEEP: usize = 256 * 1024;

/// The encoder's and the writer's pool.
static FRAMES: Pool = Pool::new(&SCRATCH, KEEP);

/// One reusable buffer per thread, in a `thread_local!` cell of its own.
/// A layer that holds a buffer while code that uses another pool runs (the
/// transport's reader, across the handler that encodes) gives itself a
/// separate pool, so that the two do not take each other's buffer.
#[derive(Debug)]
pub struct Pool {
    buffers: &'static LocalKey<Cell<Vec<u8>>>,
    keep: usize,
}

impl Pool {
    /// A pool over `buffers` that keeps buffers of at most `keep` bytes.
    pub const fn new(buffers: &'static LocalKey<Cell<Vec<u8>>>, keep: usize) -> Self {
        Pool { buffers, keep }
    }

    /// Takes the thread's buffer (empty), or a new one if it is in use.
    pub fn take(&self) -> Vec<u8> {
        self.buffers.with(Cell::take)
    }

    /// Gives a buffer back for the next use on this thread; of two, the
    /// larger is kept.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() <= self.keep {
            buf.clear();
            self.buffers.with(|cell| {
                let other = cell.take();
                cell.set(if other.capacity() > buf.capacity() { other } else { buf });
            });
        }
    }
}

/// Takes the thread's buffer (empty), or a new one if it is in use.
pub fn take() -> Vec<u8> {
    FRAMES.take()
}

/// Gives a buffer back for the next use on this thread; of two, the larger
/// is kept.
pub fn give(buf: Vec<u8>) {
    FRAMES.give(buf)
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
