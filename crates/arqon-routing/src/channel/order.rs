//! The channel's order lock: taken by every publish, join, stats read and
//! retire of one channel (see the parent module for what it orders).
//!
//! Two ways in. A publish that can finish without waiting (the memory
//! backend appends at once) takes it through [`OrderLock::try_now`]: two
//! atomic flags, no queue. Everything that must wait (a storage call, a
//! replay) takes it through [`OrderLock::lock`]: a tokio mutex, first come
//! first served among the waiters, then the flag that keeps `try_now` out.
//! A tokio mutex alone cost a publish its semaphore's release (a lock of
//! its waiter list), an eighth of a fan-in message's routing.
//!
//! The two flags exclude each other as in Dekker's algorithm: each side
//! raises its own flag, then looks at the other's (sequentially consistent
//! operations, so that the two cannot both see the other's down). A waiter
//! for `lock` never starves: once it holds the mutex it raises its flag, and
//! from then on `try_now` refuses until it is done.

use std::sync::atomic::{AtomicBool, Ordering};

/// See the module's documentation.
#[derive(Debug, Default)]
pub(super) struct OrderLock {
    /// Held across awaits; its waiters queue in order.
    waiting: tokio::sync::Mutex<()>,
    /// Raised while a holder of `waiting` holds the lock.
    held_waiting: AtomicBool,
    /// Raised while a [`OrderLock::try_now`] holder holds the lock.
    held_now: AtomicBool,
}

/// The lock, taken without waiting; released on drop.
#[derive(Debug)]
pub(super) struct NowGuard<'a> {
    held: &'a AtomicBool,
}

impl Drop for NowGuard<'_> {
    fn drop(&mut self) {
        self.held.store(false, Ordering::Release);
    }
}

/// The lock, taken by [`OrderLock::lock`]; released on drop (the flag, then
/// the mutex).
#[derive(Debug)]
pub(super) struct OrderGuard<'a> {
    held: &'a AtomicBool,
    _waiting: tokio::sync::MutexGuard<'a, ()>,
}

impl Drop for OrderGuard<'_> {
    fn drop(&mut self) {
        self.held.store(false, Ordering::Release);
    }
}

impl OrderLock {
    /// The lock if it is free now: `None` while anyone holds it, or while a
    /// waiter got it and is about to go.
    pub(super) fn try_now(&self) -> Option<NowGuard<'_>> {
        if self.held_waiting.load(Ordering::SeqCst) || self.held_now.swap(true, Ordering::SeqCst) {
            return None;
        }
        let guard = NowGuard { held: &self.held_now };
        // Raised ours, then look at theirs: `lock` does the same the other way.
        if self.held_waiting.load(Ordering::SeqCst) {
            return None;
        }
        Some(guard)
    }

    /// The lock, waiting in turn for it. Cancel-safe: dropped while it waits,
    /// it holds nothing.
    pub(super) async fn lock(&self) -> OrderGuard<'_> {
        let waiting = match self.waiting.try_lock() {
            Ok(guard) => guard,
            Err(_) => self.waiting.lock().await,
        };
        self.held_waiting.store(true, Ordering::SeqCst);
        let guard = OrderGuard { held: &self.held_waiting, _waiting: waiting };
        // A `try_now` holder that came first finishes without awaiting (on
        // another thread: this task cannot be polled during it on its own).
        while self.held_now.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        guard
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    #[test]
    fn try_now_refuses_while_anyone_holds_the_lock() {
        let lock = OrderLock::default();
        let now = lock.try_now().expect("free");
        assert!(lock.try_now().is_none());
        drop(now);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let held = lock.lock().await;
            assert!(lock.try_now().is_none());
            drop(held);
            assert!(lock.try_now().is_some());
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_goes_first_once_it_holds_the_mutex_and_a_dropped_waiter_holds_nothing() {
        let lock = Arc::new(OrderLock::default());
        let first = lock.lock().await;
        let waiter = tokio::spawn({
            let lock = Arc::clone(&lock);
            async move {
                let _held = lock.lock().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        tokio::task::yield_now().await;
        drop(first);
        // The waiter got the mutex, raised its flag: publishing now waits.
        tokio::task::yield_now().await;
        assert!(lock.try_now().is_none());
        waiter.await.unwrap();
        assert!(lock.try_now().is_some());
        // A waiter dropped in the queue leaves the lock free.
        let held = lock.lock().await;
        let abandoned = tokio::spawn({
            let lock = Arc::clone(&lock);
            async move { drop(lock.lock().await) }
        });
        tokio::task::yield_now().await;
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        drop(held);
        assert!(lock.try_now().is_some());
        drop(tokio::time::timeout(Duration::from_secs(1), lock.lock()).await.expect("free"));
    }

    /// Many threads taking it both ways: never two holders at once.
    #[test]
    fn both_ways_in_exclude_each_other_across_threads() {
        let lock = Arc::new(OrderLock::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let entered = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).build().unwrap();
        let critical = |inside: &AtomicUsize| {
            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
            // Long enough for another thread to come in, if it could.
            for _ in 0..200 {
                assert_eq!(inside.load(Ordering::SeqCst), 1, "two holders at once");
                std::hint::spin_loop();
            }
            inside.fetch_sub(1, Ordering::SeqCst);
        };
        rt.block_on(async {
            let mut tasks = Vec::new();
            for task in 0..8 {
                let (lock, inside, entered) = (Arc::clone(&lock), Arc::clone(&inside), Arc::clone(&entered));
                tasks.push(tokio::spawn(async move {
                    for _ in 0..2_000 {
                        if task % 2 == 0 {
                            if let Some(_now) = lock.try_now() {
                                critical(&inside);
                                entered.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            let _held = lock.lock().await;
                            critical(&inside);
                            entered.fetch_add(1, Ordering::Relaxed);
                            tokio::task::yield_now().await;
                        }
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        });
        assert!(entered.load(Ordering::Relaxed) >= 8_000, "every lock() got in");
    }
}
