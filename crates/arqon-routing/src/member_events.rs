//! The rate of member events (`member_joined` / `member_left`) per channel.
//!
//! Membership churn is a cost members did not choose: clients looping
//! join/leave on a channel, each inside its own rate limit, could otherwise
//! flood every member with events until the slowest is closed. Each channel
//! sends at most `RouterConfig::member_event_rate` events; past it, events
//! are counted instead of sent, and one `members_changed` summary (the
//! member count and how many events it stands for) follows a second later.

use crate::config::RateLimit;
use crate::rate::TokenBucket;

/// How long after the first suppressed event the summary goes out.
pub(crate) const SUMMARY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// A channel's member-event budget; made on the first event.
#[derive(Debug)]
pub(crate) struct MemberEventGate {
    bucket: TokenBucket,
    /// Events not sent since the last summary.
    suppressed: u64,
}

/// What to do with one member event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Send it.
    Send,
    /// Count it; `first` when it is the first since the last summary (the
    /// caller schedules the summary).
    Suppress {
        /// Schedule a summary.
        first: bool,
    },
}

impl MemberEventGate {
    pub(crate) fn new(rate: RateLimit) -> Self {
        MemberEventGate { bucket: TokenBucket::new(u64::from(rate.rate_per_s), u64::from(rate.burst)), suppressed: 0 }
    }

    /// Decides one event. While a summary is due every event is counted,
    /// so that the summary is the last word on the churn it covers.
    pub(crate) fn admit(&mut self) -> Gate {
        if self.suppressed == 0 && self.bucket.take_one().is_ok() {
            return Gate::Send;
        }
        self.suppressed += 1;
        Gate::Suppress { first: self.suppressed == 1 }
    }

    /// Events suppressed since the last summary; starts counting afresh.
    pub(crate) fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn past_the_rate_events_are_counted_until_the_summary() {
        let mut gate = MemberEventGate::new(RateLimit { rate_per_s: 10, burst: 3 });
        for _ in 0..3 {
            assert_eq!(gate.admit(), Gate::Send);
        }
        assert_eq!(gate.admit(), Gate::Suppress { first: true });
        assert_eq!(gate.admit(), Gate::Suppress { first: false });
        // Tokens come back, but the summary is still due: still counted.
        tokio::time::advance(SUMMARY_DELAY / 2).await;
        assert_eq!(gate.admit(), Gate::Suppress { first: false });
        assert_eq!(gate.take_suppressed(), 3);
        assert_eq!(gate.admit(), Gate::Send);
    }
}
