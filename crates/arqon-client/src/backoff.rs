//! Exponential reconnect backoff with jitter, without a `rand` dependency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Reconnect delays: `initial`, doubling per failed attempt up to `max`, each
/// drawn uniformly from the upper half of that ceiling ("equal jitter"), so
/// clients dropped together do not come back together.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// Failed attempts since the last success.
    failures: u32,
    rng: XorShift,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), failures: 0, rng: XorShift::from_clock() }
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.initial.saturating_mul(1u32 << self.failures.min(20)).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.below(nanos.saturating_add(1)))
    }

    /// Starts over after a successful connection.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// xorshift64*: tiny, fast, and plenty for spreading reconnects.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn from_clock() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        // Mix in a stack address so two clients started in the same
        // nanosecond (same process, same tick) still differ.
        let local = 0u8;
        let addr = std::ptr::addr_of!(local) as usize as u64;
        let seed = (u64::from(nanos) ^ addr.rotate_left(32)) | 1;
        XorShift(seed)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough in `0..bound` (`bound` 0 gives 0).
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_the_upper_half() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut backoff = Backoff::new(initial, max);
        let mut ceiling = initial;
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
            ceiling = (ceiling * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= initial);
    }

    #[test]
    fn jitter_varies() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: std::collections::HashSet<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 10);
    }
}
