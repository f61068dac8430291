//! The global budget: memory held by the queued frames of every connection.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::queue::Shared;

/// The memory the queued frames of all connections of one bus may hold
/// (PROTOCOL.md section 8.1), each shared frame counted once: a frame queued
/// to `n` connections charges each of them `1/n` of its size.
///
/// Every push is charged here (one atomic add) and every written or dropped
/// item released. A push that takes the total past the limit closes the
/// connections with the largest backlogs, as slow consumers, until the total
/// is back under it; their frames are dropped and their charge returned at
/// once. One enforcement runs at a time; a push that finds one running goes
/// on (the running one brings the total down).
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    evictions: AtomicU64,
    queues: Mutex<Registry>,
    enforcing: Mutex<()>,
}

/// Every live queue, so that enforcement can find the largest backlogs.
/// Touched only when a connection opens or closes, and when enforcing.
#[derive(Debug, Default)]
struct Registry {
    slots: Vec<Option<Weak<Shared>>>,
    free: Vec<usize>,
}

impl Budget {
    /// A budget of `limit` bytes; 0 means no limit (the total is still
    /// counted).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            queues: Mutex::new(Registry::default()),
            enforcing: Mutex::new(()),
        })
    }

    /// A budget with no limit.
    pub fn unlimited() -> Arc<Self> {
        Self::new(0)
    }

    /// The limit in bytes (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes of queued frames held now, shared frames counted once.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Connections closed so far because the budget was exceeded.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Charges `bytes`; whether the total is now over the limit.
    pub(crate) fn charge(&self, bytes: usize) -> bool {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed).wrapping_add(bytes);
        self.limit > 0 && used > self.limit
    }

    pub(crate) fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Closes the connections with the largest backlogs until the total is
    /// under the limit.
    pub(crate) fn enforce(&self) {
        let Ok(_running) = self.enforcing.try_lock() else { return };
        // Strong references are taken under the registry lock and dropped
        // after it: the last one's drop unregisters, which takes that lock.
        let live: Vec<Arc<Shared>> = self.registry().slots.iter().flatten().filter_map(Weak::upgrade).collect();
        let mut open: Vec<(usize, &Arc<Shared>)> =
            live.iter().filter_map(|queue| queue.open_backlog().map(|(backlog, _)| (backlog, queue))).collect();
        open.sort_unstable_by_key(|(backlog, _)| std::cmp::Reverse(*backlog));
        for (_, queue) in open {
            if self.used() <= self.limit {
                break;
            }
            if queue.evict_for_budget().is_some() {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn register(&self, queue: Weak<Shared>) -> usize {
        let mut registry = self.registry();
        match registry.free.pop() {
            Some(slot) => {
                registry.slots[slot] = Some(queue);
                slot
            }
            None => {
                registry.slots.push(Some(queue));
                registry.slots.len() - 1
            }
        }
    }

    pub(crate) fn unregister(&self, slot: usize) {
        let mut registry = self.registry();
        if let Some(entry) = registry.slots.get_mut(slot) {
            *entry = None;
            registry.free.push(slot);
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use arqon_protocol::Frame;

    use crate::{Closing, Outbound, SlowCause, queue};

    use super::*;

    fn frame(bytes: usize) -> Outbound {
        Outbound::Frame(Frame::from_text("x".repeat(bytes)))
    }

    #[test]
    fn over_budget_closes_the_largest_backlogs_first() {
        let budget = Budget::new(1000);
        let (small, _small_rx) = queue(0, &budget);
        let (medium, _medium_rx) = queue(0, &budget);
        let (large, _large_rx) = queue(0, &budget);
        small.try_send(frame(100)).unwrap();
        medium.try_send(frame(300)).unwrap();
        large.try_send(frame(500)).unwrap();
        assert_eq!(budget.used(), 900);
        assert_eq!(budget.evictions(), 0);
        // 900 + 200 > 1000: closing the largest (500) is enough.
        small.try_send(frame(200)).unwrap();
        assert_eq!(large.closing(), Some(Closing::slow(SlowCause::Budget)));
        assert_eq!(medium.closing(), None);
        assert_eq!(small.closing(), None);
        assert_eq!(budget.used(), 600);
        assert_eq!(budget.evictions(), 1);
        // 600 + 900 > 1000: the pusher itself now has the largest backlog
        // (1,200), then the medium one goes too if still needed.
        small.try_send(frame(900)).unwrap();
        assert_eq!(small.closing(), Some(Closing::slow(SlowCause::Budget)));
        assert_eq!(medium.closing(), None, "300 alone is under the budget");
        assert_eq!(budget.used(), 300);
    }

    #[test]
    fn closed_queues_leave_the_registry() {
        let budget = Budget::new(10);
        for _ in 0..3 {
            let (tx, rx) = queue(0, &budget);
            tx.try_send(frame(5)).unwrap();
            drop((tx, rx));
        }
        let registry = budget.registry();
        assert_eq!(registry.slots.iter().flatten().count(), 0);
        assert_eq!(registry.slots.len(), 1, "slots are reused");
        drop(registry);
        assert_eq!(budget.used(), 0);
    }
}
