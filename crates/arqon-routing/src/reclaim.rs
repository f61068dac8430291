//! Idle channel reclaim: auto-created channels that nobody uses any more
//! give their place in the channel table (and the channel caps) back.
//!
//! A channel is reclaimed when all of these hold: auto-create made it (never
//! claimed by `create_channel`, not restored from storage, not learned from
//! another node); it has no members here or on other nodes; its storage
//! keeps no message of it (none was kept, or all were evicted or expired);
//! and nothing happened in it (publish, join, leave) for
//! [`RouterConfig::idle_reclaim`](crate::RouterConfig::idle_reclaim).
//!
//! Idle time is counted by the passes themselves: the first pass that finds
//! a channel unused notes the time, and any activity seen by a later pass
//! starts the count again. A channel therefore goes between `idle_reclaim`
//! and `idle_reclaim` plus two pass intervals after its last use; passes run
//! every quarter of `idle_reclaim`.

use std::future::Future;
use std::time::Duration;

use crate::RoutingError;
use crate::channel::Channel;
use crate::router::Router;

/// Shortest time between two passes, however short `idle_reclaim` is: each
/// pass walks every channel.
const MIN_PASS_INTERVAL: Duration = Duration::from_secs(1);

impl Router {
    /// Reclaims idle channels until `shutdown` resolves: one pass every
    /// quarter of [`RouterConfig::idle_reclaim`](crate::RouterConfig::idle_reclaim)
    /// (at least a second). Returns at once when `idle_reclaim` is zero.
    ///
    /// The server runs it beside the bus and stops it with the bus; an
    /// embedding service spawns it itself if it wants reclaim.
    pub async fn run_reclaim(&self, shutdown: impl Future<Output = ()>) {
        let idle = self.inner.config.idle_reclaim;
        if idle.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval((idle / 4).max(MIN_PASS_INTERVAL));
        // A late pass is simply late: no burst of passes to catch up.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            let reclaimed = self.reclaim_idle().await;
            if reclaimed > 0 {
                tracing::debug!(channels = reclaimed, "reclaimed idle channels");
            }
        }
    }

    /// One reclaim pass: removes every channel that has been reclaimable and
    /// unused for `idle_reclaim` (module docs); returns how many it removed.
    /// Does nothing when `idle_reclaim` is zero.
    pub async fn reclaim_idle(&self) -> usize {
        let idle = self.inner.config.idle_reclaim;
        if idle.is_zero() {
            return 0;
        }
        let now = millis(self.inner.started.elapsed());
        let idle = millis(idle);
        let mut reclaimed = 0;
        for channel in self.reclaimable_channels() {
            if channel.member_count() > 0 || self.cluster_members(&channel.key, 0) > 0 {
                channel.touch();
            }
            if channel.idle_for(now) < idle {
                continue;
            }
            match self.reclaim(&channel).await {
                Ok(true) => reclaimed += 1,
                Ok(false) => {}
                // Tried again on the next pass.
                Err(e) => tracing::warn!(channel = %channel.key, error = %e, "could not reclaim an idle channel"),
            }
        }
        reclaimed
    }

    /// Every channel that auto-create made, collected before any is locked.
    fn reclaimable_channels(&self) -> Vec<std::sync::Arc<Channel>> {
        let mut channels = Vec::new();
        for room in self.inner.rooms.iter() {
            channels.extend(room.values().filter(|c| c.is_reclaimable()).cloned());
        }
        channels
    }

    /// Removes `channel` if, under its order lock, it is still unused and
    /// its storage keeps nothing of it. Returns whether it was removed.
    async fn reclaim(&self, channel: &Channel) -> Result<bool, RoutingError> {
        let key = &channel.key;
        // Decided under the channel's order lock: a publish or join takes it
        // too, so none is half done.
        let forget = async {
            if channel.was_touched() || channel.member_count() > 0 {
                return Ok(false);
            }
            if self.cluster_members(key, 0) > 0 || self.inner.storage.stats(key).await?.stored > 0 {
                return Ok(false);
            }
            self.inner.storage.delete_channel(key).await?;
            self.unlist(key);
            Ok(true)
        };
        let Some(members) = channel.retire(forget).await? else {
            return Ok(false);
        };
        debug_assert!(members.is_empty(), "a reclaimed channel has no members");
        self.retired(key);
        // Other nodes drop it too (it has no members there either).
        if let Some(broker) = self.broker() {
            broker.channel_deleted(key);
        }
        Ok(true)
    }
}

/// Milliseconds, saturating (a router would have to run for 584 million years).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
