//! Per-connection token bucket.

use std::time::Duration;

use tokio::time::Instant;

/// `rate` frames per second on average, up to `burst` at once.
///
/// Owned by one connection's session: no lock, no shared state. Uses tokio's
/// clock so tests can run it under paused time.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate_per_s: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket; `rate_per_s == 0` means unlimited.
    pub(crate) fn new(rate_per_s: u32, burst: u32) -> Self {
        TokenBucket {
            rate_per_s: f64::from(rate_per_s),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes one token, or says how long until one is available.
    pub(crate) fn take(&mut self) -> Result<(), Duration> {
        if self.rate_per_s == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate_per_s;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate_per_s;
            Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let mut bucket = TokenBucket::new(100, 200);
        for _ in 0..200 {
            assert!(bucket.take().is_ok());
        }
        let wait = bucket.take().unwrap_err();
        assert!(wait <= Duration::from_millis(10) && wait >= Duration::from_millis(1), "{wait:?}");
        tokio::time::advance(Duration::from_millis(100)).await;
        for _ in 0..10 {
            assert!(bucket.take().is_ok());
        }
        assert!(bucket.take().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_is_unlimited() {
        let mut bucket = TokenBucket::new(0, 0);
        for _ in 0..100_000 {
            assert!(bucket.take().is_ok());
        }
    }
}
