//! Per-connection rate limiting: a frame bucket, a byte bucket and the
//! abuse count that closes a client which keeps sending over its rate.

use std::time::Duration;

use tokio::time::Instant;

/// A rate shared by many calls from one caller (a server API key): calls
/// over it are refused with `RATE_LIMITED` and the wait, never queued.
#[derive(Debug)]
pub struct CallLimiter(parking_lot::Mutex<TokenBucket>);

impl CallLimiter {
    /// `limit.rate_per_s` calls per second, `limit.burst` at once (a rate of
    /// 0: unlimited).
    pub fn new(limit: crate::RateLimit) -> Self {
        CallLimiter(parking_lot::Mutex::new(TokenBucket::new(u64::from(limit.rate_per_s), u64::from(limit.burst))))
    }

    /// Admits one call, or says why not and when to retry.
    pub fn admit(&self) -> Result<(), arqon_protocol::ProtocolError> {
        self.0.lock().take_one().map_err(|wait| {
            arqon_protocol::ProtocolError::new(
                arqon_protocol::ErrorCode::RateLimited,
                "rate limit of this key exceeded",
            )
            .with_retry_after(wait)
        })
    }
}

/// `rate` units per second on average, up to `burst` at once.
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
    pub(crate) fn new(rate_per_s: u64, burst: u64) -> Self {
        let burst = burst.max(1) as f64;
        TokenBucket { rate_per_s: rate_per_s as f64, burst, tokens: burst, last: Instant::now() }
    }

    /// How long until `cost` tokens can be taken (`None`: now). A cost above
    /// the burst is admitted once the bucket is full (the bucket then goes
    /// into debt), so that no single frame is refused forever.
    #[inline] // An unlimited bucket (rate 0) costs a comparison, not a call.
    fn wait(&mut self, now: Instant, cost: f64) -> Option<Duration> {
        if self.rate_per_s == 0.0 { None } else { self.refill_and_wait(now, cost) }
    }

    /// [`TokenBucket::wait`] of a limited bucket.
    fn refill_and_wait(&mut self, now: Instant, cost: f64) -> Option<Duration> {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate_per_s;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        let needed = cost.min(self.burst);
        if self.tokens >= needed {
            None
        } else {
            let wait = (needed - self.tokens) / self.rate_per_s;
            Some(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }

    /// Takes one token now, or says how long until one is available (for
    /// buckets shared by many senders: a recipient's direct messages, a
    /// channel's member events).
    pub(crate) fn take_one(&mut self) -> Result<(), Duration> {
        match self.wait(Instant::now(), 1.0) {
            None => {
                self.take(1.0);
                Ok(())
            }
            Some(wait) => Err(wait),
        }
    }

    /// Takes `cost` tokens; call only after [`TokenBucket::wait`] said now.
    fn take(&mut self, cost: f64) {
        if self.rate_per_s != 0.0 {
            self.tokens -= cost;
        }
    }
}

/// Counts a client's refusals in a sliding window: each refusal adds one,
/// and the count drains at `limit` per `window`. The client is abusive once
/// the count reaches `limit`: `limit` refusals in quick succession, or
/// refusals arriving steadily faster than `limit` per `window`.
#[derive(Debug)]
struct AbuseCount {
    /// 0: never abusive.
    limit: f64,
    drain_per_s: f64,
    count: f64,
    last: Instant,
}

impl AbuseCount {
    fn new(limit: u32, window: Duration) -> Self {
        let limit = f64::from(limit);
        let window_s = window.as_secs_f64().max(0.001);
        AbuseCount { limit, drain_per_s: limit / window_s, count: 0.0, last: Instant::now() }
    }

    /// Counts one refusal; says whether the client is now abusive.
    fn refused(&mut self, now: Instant) -> bool {
        if self.limit == 0.0 {
            return false;
        }
        let drained = now.saturating_duration_since(self.last).as_secs_f64() * self.drain_per_s;
        self.count = (self.count - drained).max(0.0) + 1.0;
        self.last = now;
        self.count >= self.limit
    }
}

/// What the limiter says about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rates: handle it.
    Pass,
    /// Over a rate: refuse it (`retry_after` is when it would pass), and,
    /// when `abusive`, close the client.
    Refused {
        /// When the same frame would pass.
        retry_after: Duration,
        /// The client kept sending over its rate: close it with 1008.
        abusive: bool,
    },
}

/// One client's limits, in one place: every frame it sends (text, binary,
/// ping) goes through [`Limiter::admit`].
#[derive(Debug)]
pub(crate) struct Limiter {
    frames: TokenBucket,
    bytes: TokenBucket,
    abuse: AbuseCount,
}

/// The limits a [`Limiter`] enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) frames_per_s: u32,
    pub(crate) frame_burst: u32,
    pub(crate) bytes_per_s: u64,
    pub(crate) byte_burst: u64,
    pub(crate) abuse_limit: u32,
    pub(crate) abuse_window: Duration,
}

impl Limiter {
    pub(crate) fn new(limits: Limits) -> Self {
        Limiter {
            frames: TokenBucket::new(u64::from(limits.frames_per_s), u64::from(limits.frame_burst)),
            bytes: TokenBucket::new(limits.bytes_per_s, limits.byte_burst),
            abuse: AbuseCount::new(limits.abuse_limit, limits.abuse_window),
        }
    }

    /// Admits a frame of `bytes` payload bytes, taking one frame token and
    /// `bytes` byte tokens, or refuses it taking nothing (and counts the
    /// refusal).
    #[inline] // One caller, on every frame.
    pub(crate) fn admit(&mut self, bytes: usize, now: Instant) -> Verdict {
        let cost = bytes as f64;
        let frame_wait = self.frames.wait(now, 1.0);
        let byte_wait = self.bytes.wait(now, cost);
        match frame_wait.max(byte_wait) {
            None => {
                self.frames.take(1.0);
                self.bytes.take(cost);
                Verdict::Pass
            }
            Some(retry_after) => Verdict::Refused { retry_after, abusive: self.abuse.refused(now) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(frames_per_s: u32, frame_burst: u32) -> Limits {
        Limits {
            frames_per_s,
            frame_burst,
            bytes_per_s: 0,
            byte_burst: 0,
            abuse_limit: 0,
            abuse_window: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let mut limiter = Limiter::new(limits(100, 200));
        for _ in 0..200 {
            assert_eq!(limiter.admit(1, Instant::now()), Verdict::Pass);
        }
        let Verdict::Refused { retry_after, abusive } = limiter.admit(1, Instant::now()) else {
            panic!("over the burst")
        };
        assert_eq!(retry_after, Duration::from_millis(10));
        assert!(!abusive, "abuse_limit 0: never");
        tokio::time::advance(Duration::from_millis(100)).await;
        for _ in 0..10 {
            assert_eq!(limiter.admit(1, Instant::now()), Verdict::Pass);
        }
        assert_ne!(limiter.admit(1, Instant::now()), Verdict::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_is_unlimited() {
        let mut limiter = Limiter::new(limits(0, 0));
        for _ in 0..100_000 {
            assert_eq!(limiter.admit(1 << 20, Instant::now()), Verdict::Pass);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_are_limited_beside_frames() {
        let mut limiter = Limiter::new(Limits { bytes_per_s: 1000, byte_burst: 4000, ..limits(0, 0) });
        for _ in 0..4 {
            assert_eq!(limiter.admit(1000, Instant::now()), Verdict::Pass);
        }
        let Verdict::Refused { retry_after, .. } = limiter.admit(1000, Instant::now()) else {
            panic!("over the byte burst")
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(limiter.admit(500, Instant::now()), Verdict::Pass, "refill at 1000 bytes/s");
        assert_ne!(limiter.admit(1, Instant::now()), Verdict::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_larger_than_the_byte_burst_passes_on_a_full_bucket() {
        let mut limiter = Limiter::new(Limits { bytes_per_s: 1000, byte_burst: 1000, ..limits(0, 0) });
        assert_eq!(limiter.admit(5000, Instant::now()), Verdict::Pass);
        // In debt for 4 s, then full again after one more.
        let Verdict::Refused { retry_after, .. } = limiter.admit(5000, Instant::now()) else { panic!("in debt") };
        assert_eq!(retry_after, Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(limiter.admit(5000, Instant::now()), Verdict::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_close_over_a_sliding_window_not_only_in_a_row() {
        // 10 frames/s; abusive at 20 refusals, draining at 20 per 10 s.
        let mut limiter = Limiter::new(Limits { abuse_limit: 20, ..limits(10, 1) });
        // Nine times the rate: one frame in nine passes, so refusals never
        // come 20 in a row, but they come at 80/s.
        let mut refused = 0;
        let mut closed_after = None;
        for i in 0..900 {
            match limiter.admit(1, Instant::now()) {
                Verdict::Pass => {}
                Verdict::Refused { abusive, .. } => {
                    refused += 1;
                    if abusive {
                        closed_after = Some(i);
                        break;
                    }
                }
            }
            tokio::time::advance(Duration::from_micros(11_111)).await;
        }
        // 24 frames in 0.26 s: 3 passed; the 21st refusal tops the count
        // (21 less the 0.5 that drained in the meantime) to 20.
        assert_eq!((refused, closed_after), (21, Some(23)), "closed in the first quarter second");
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_slower_than_the_window_drains_them_never_close() {
        let mut limiter = Limiter::new(Limits { abuse_limit: 20, ..limits(10, 1) });
        // One refusal per second drains faster (2/s) than it fills.
        for _ in 0..1000 {
            assert_eq!(limiter.admit(1, Instant::now()), Verdict::Pass);
            let Verdict::Refused { abusive, .. } = limiter.admit(1, Instant::now()) else {
                panic!("right after a pass")
            };
            assert!(!abusive);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }
}
