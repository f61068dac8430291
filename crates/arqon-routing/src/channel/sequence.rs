//! History order on a cluster node: every channel message reaches the local
//! members in the channel's history order, a node that missed some fills the
//! gap from storage first, and when it cannot it says so (`channel_gap`).
//!
//! Only a router with a broker comes here, and only with a backend that
//! numbers each channel's messages ([`Storage::append_placed`]): the
//! single-node message path never does. Each channel keeps a [`Sequence`]:
//! the position of the last message its members got in order. A message at
//! the next position is delivered; one behind it was delivered already (a
//! late cross-node copy) and is dropped; one ahead of it makes the node read
//! the missing positions from storage and deliver them first. Everything
//! here runs under the channel's order lock, which also serializes the local
//! appends, so positions only grow.
//!
//! While history is unreachable a node still delivers its own publishes at
//! once (they are journaled, without a position yet). It remembers their
//! ids: when history shows them next in order they are skipped, and when it
//! shows another message first, the members' order differs from history and
//! they get `channel_gap`. docs/cluster.md states the guarantees.
//!
//! [`Storage::append_placed`]: arqon_storage::Storage::append_placed

use std::collections::VecDeque;
use std::sync::Arc;

use arqon_protocol::{ChannelKey, ClientId, Frame, IdGenerator, MessageId, Name, Timestamp, encode};
use arqon_storage::{After, Appended, PlacedRead, Since, StoredMessage};
use serde::Serialize;

use super::Channel;
use crate::RoutingError;
use crate::broker::{Broker, Delivery, Place};
use crate::router::Router;

/// Most messages one gap fill reads from storage, and most messages a node
/// delivers ahead of their place while history is unreachable. Past either,
/// the members get `channel_gap` instead (and resume with `since`).
pub(crate) const GAP_MAX: usize = 1000;

/// Where a channel's local members are in its history. Used only under the
/// channel's order lock.
#[derive(Debug, Default)]
pub(crate) struct Sequence {
    /// Position of the last message delivered in history order; `None`
    /// until the node learns one (no member yet, or storage unreachable).
    last: Option<u64>,
    /// Id of that message: the `last_id` of a `channel_gap`.
    last_id: Option<MessageId>,
    /// Messages delivered ahead of their place (journaled while history was
    /// unreachable), oldest first, at most [`GAP_MAX`].
    unplaced: VecDeque<MessageId>,
    /// More than [`GAP_MAX`] were unplaced: the next placement is a gap.
    lost: bool,
}

/// What a placed message needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// At or behind the last delivered position: delivered already.
    Drop,
    /// The next one: deliver it.
    Deliver,
    /// Ahead of a gap: read the gap from storage first.
    Fill,
}

/// What members receive when a gap is settled, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A stored message read from history.
    Deliver(Frame),
    /// `channel_gap`: what followed this id is not history's order.
    Gap(Option<MessageId>),
}

impl Sequence {
    /// Forgets everything (no local members: nothing to keep in order).
    pub(crate) fn reset(&mut self) {
        *self = Sequence::default();
    }

    fn clean(&self) -> bool {
        self.unplaced.is_empty() && !self.lost
    }

    /// How to handle the message at `position`.
    pub(crate) fn plan(&self, position: u64) -> Plan {
        match self.last {
            Some(last) if position <= last => Plan::Drop,
            Some(last) if position == last + 1 && self.clean() => Plan::Deliver,
            // The first position this node learns: the members joined just now.
            None if self.clean() => Plan::Deliver,
            _ => Plan::Fill,
        }
    }

    /// Whether the node knows where its members are.
    pub(crate) fn known(&self) -> bool {
        self.last.is_some()
    }

    /// The message at `position` was delivered in order.
    pub(crate) fn delivered(&mut self, position: u64, id: MessageId) {
        self.last = Some(position);
        self.last_id = Some(id);
    }

    /// A message was delivered before history gave it a place.
    pub(crate) fn unplaced(&mut self, id: MessageId) {
        if self.lost {
            return;
        }
        if self.unplaced.len() >= GAP_MAX {
            self.lost = true;
            self.unplaced.clear();
        } else {
            self.unplaced.push_back(id);
        }
    }

    /// Stops trusting the unplaced list: the next placement is a gap. For a
    /// member joining with `since` while some are unplaced: its replay
    /// (from history) lacks them, so skipping them later would lose them.
    pub(crate) fn distrust_unplaced(&mut self) {
        if !self.clean() {
            self.lost = true;
            self.unplaced.clear();
        }
    }

    /// Settles the gap up to `target` (a message at `target + 1` is about to
    /// be placed) or, with `None`, up to the tip, from `read`: storage's
    /// answer after the last delivered position (`None`: it failed).
    pub(crate) fn fill(&mut self, read: Option<&PlacedRead>, target: Option<u64>, steps: &mut Vec<Step>) {
        let Some(read) = read else {
            // History is out of reach: a message about to be placed goes on
            // after a gap; otherwise try again later.
            if let Some(target) = target {
                self.jump(target, None, steps);
            }
            return;
        };
        let (target, target_id) = match target {
            Some(target) => (target, None),
            None => (read.tip, read.tip_id),
        };
        let Some(last) = self.last else {
            if !self.clean() {
                self.jump(target, target_id, steps);
            } else {
                self.last = Some(target);
                self.last_id = target_id;
            }
            return;
        };
        // A tip behind us: the channel's history was recreated.
        if read.tip < last {
            self.jump(target, target_id, steps);
            return;
        }
        if target <= last {
            return;
        }
        let wanted = read.messages.iter().filter(|p| p.position > last && p.position <= target);
        let count = wanted.clone().count() as u64;
        if read.truncated || count != target - last || count > GAP_MAX as u64 {
            self.jump(target, target_id, steps);
            return;
        }
        for placed in wanted {
            let id = placed.message.id;
            match self.unplaced.front() {
                // Delivered already, and in history order after all.
                Some(front) if *front == id => {
                    self.unplaced.pop_front();
                }
                Some(_) => {
                    self.jump(target, target_id, steps);
                    return;
                }
                None if self.lost => {
                    self.jump(target, target_id, steps);
                    return;
                }
                None => steps.push(Step::Deliver(placed.message.frame.clone())),
            }
            self.delivered(placed.position, id);
        }
    }

    /// Gives up on the positions up to `target`: the members are told where
    /// their ordered sequence ended, and it resumes after `target`.
    fn jump(&mut self, target: u64, target_id: Option<MessageId>, steps: &mut Vec<Step>) {
        steps.push(Step::Gap(self.last_id));
        self.last = Some(target);
        self.last_id = target_id;
        self.unplaced.clear();
        self.lost = false;
    }
}

/// The `channel_gap` event.
#[derive(Serialize)]
struct ChannelGap<'a> {
    event: &'static str,
    room: &'a Name,
    channel: &'a Name,
    last_id: Option<MessageId>,
}

impl Router {
    /// Appends and delivers a channel message on a cluster node, under the
    /// channel's order lock. Returns how many received it, or `None` for a
    /// retry.
    pub(crate) async fn publish_placed(
        &self,
        channel: &Channel,
        from: ClientId,
        stored: StoredMessage,
        broker: &Arc<dyn Broker>,
    ) -> Result<Option<usize>, RoutingError> {
        let _order = channel.order.lock().await;
        if channel.is_deleted() {
            return Err(crate::router::not_found(&channel.key).into());
        }
        channel.touch();
        let (id, frame) = (stored.id, stored.frame.clone());
        let (appended, position) = self.inner.storage.append_placed(&channel.key, stored).await?;
        if appended == Appended::Duplicate {
            return Ok(None);
        }
        let delivered = match position {
            Some(position) => self.place(channel, position, id, &frame, Some(from)).await,
            None => {
                if channel.member_count() > 0 {
                    channel.sequence.lock().unplaced(id);
                }
                channel.deliver(&frame, Some(from))
            }
        };
        let place = position.map_or(Place::Unplaced, |position| Place::At(position, id));
        broker.forward(Delivery::Channel { key: channel.key.clone(), frame, from, place });
        Ok(Some(delivered))
    }

    /// Delivers a cross-node copy of the stored message at `position`, in
    /// history order: dropped if delivered already, after the gap before it
    /// otherwise. Returns how many received it.
    pub(crate) async fn deliver_placed(
        &self,
        key: &ChannelKey,
        frame: &Frame,
        from: ClientId,
        position: u64,
        id: MessageId,
    ) -> usize {
        let Some(channel) = self.lookup(key) else { return 0 };
        let _order = channel.order.lock().await;
        if channel.is_deleted() {
            return 0;
        }
        self.place(&channel, position, id, frame, Some(from)).await
    }

    /// Delivers what this node's members of `key` have not received of its
    /// history, in order (or tells them `channel_gap`). Brokers call it
    /// when cross-node copies may have been lost: after an outage, or when
    /// another node stored messages without publishing their place.
    pub async fn catch_up(&self, key: &ChannelKey) {
        let Some(channel) = self.lookup(key) else { return };
        let _order = channel.order.lock().await;
        if channel.is_deleted() || self.no_members(&channel) {
            return;
        }
        let after = channel.sequence.lock().last;
        let read = self.read_after(&channel.key, after).await;
        if read.is_none() {
            return;
        }
        let mut steps = Vec::new();
        channel.sequence.lock().fill(read.as_ref(), None, &mut steps);
        self.run_steps(&channel, steps, None);
    }

    /// The replay of a `join_channel` on a cluster node (order lock held):
    /// brings the members up to the replay's end first, so that the joiner's
    /// live messages continue it exactly.
    pub(crate) async fn join_placed(
        &self,
        channel: &Channel,
        since: Option<MessageId>,
        joiner: ClientId,
    ) -> Result<Option<Since>, RoutingError> {
        self.no_members(channel);
        let key = &channel.key;
        let Some(after) = since else {
            if !channel.sequence.lock().known() {
                // Where history stands now: the new member's start.
                if let Some(read) = self.read_after(key, None).await {
                    channel.sequence.lock().fill(Some(&read), None, &mut Vec::new());
                }
            }
            return Ok(None);
        };
        let read = match self.inner.storage.read_placed(key, After::Id(after), usize::MAX).await {
            Ok(Some(read)) => read,
            // Without positions (or while storage is out of reach): as on one node.
            _ => return Ok(Some(self.inner.storage.since(key, after).await?)),
        };
        let last = {
            let mut sequence = channel.sequence.lock();
            sequence.distrust_unplaced();
            sequence.last
        };
        let mut steps = Vec::new();
        match last {
            Some(last) if last < read.tip => {
                let caught = self.read_after(key, Some(last)).await;
                channel.sequence.lock().fill(caught.as_ref(), Some(read.tip), &mut steps);
            }
            Some(_) => {}
            None => channel.sequence.lock().fill(Some(&read), None, &mut steps),
        }
        self.run_steps(channel, steps, Some(joiner));
        let messages = read.messages.into_iter().map(|placed| placed.message).collect();
        Ok(Some(Since { messages, truncated: read.truncated }))
    }

    /// Places the stored message at `position` (order lock held).
    async fn place(
        &self,
        channel: &Channel,
        position: u64,
        id: MessageId,
        frame: &Frame,
        from: Option<ClientId>,
    ) -> usize {
        if self.no_members(channel) {
            return 0;
        }
        let plan = channel.sequence.lock().plan(position);
        match plan {
            Plan::Drop => return 0,
            Plan::Deliver => {}
            Plan::Fill => {
                let after = channel.sequence.lock().last;
                let read = self.read_after(&channel.key, after).await;
                let mut steps = Vec::new();
                channel.sequence.lock().fill(read.as_ref(), Some(position.saturating_sub(1)), &mut steps);
                self.run_steps(channel, steps, None);
            }
        }
        channel.sequence.lock().delivered(position, id);
        channel.deliver(frame, from)
    }

    /// Forgets the channel's sequence when it has no local members; returns
    /// whether it has none.
    fn no_members(&self, channel: &Channel) -> bool {
        let none = channel.member_count() == 0;
        if none {
            channel.sequence.lock().reset();
        }
        none
    }

    /// Up to one more than [`GAP_MAX`] messages after `after`, or only the
    /// tip when the node knows no position; `None` if storage cannot say.
    async fn read_after(&self, key: &ChannelKey, after: Option<u64>) -> Option<PlacedRead> {
        let (cursor, limit) = match after {
            Some(position) => (After::Position(position), GAP_MAX + 1),
            None => (After::Position(0), 0),
        };
        match self.inner.storage.read_placed(key, cursor, limit).await {
            Ok(read) => read,
            Err(error) => {
                tracing::debug!(channel = %key, error = %error, "could not read a gap from history");
                None
            }
        }
    }

    fn run_steps(&self, channel: &Channel, steps: Vec<Step>, except: Option<ClientId>) {
        for step in steps {
            match step {
                Step::Deliver(frame) => {
                    channel.deliver(&frame, except);
                }
                Step::Gap(last_id) => {
                    tracing::warn!(channel = %channel.key, "members missed messages or got them out of history order: channel_gap");
                    let key = &channel.key;
                    let payload = ChannelGap { event: "channel_gap", room: &key.room, channel: &key.channel, last_id };
                    let frame = encode::event(IdGenerator::new().message_id(), Timestamp::now(), &payload);
                    channel.deliver(&frame, except);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use arqon_storage::Placed;

    use super::*;

    fn ids(n: usize) -> Vec<MessageId> {
        let mut generator = IdGenerator::new();
        (0..n).map(|_| generator.message_id()).collect()
    }

    fn read(ids: &[MessageId], from: u64, tip: u64) -> PlacedRead {
        let messages = (from..=tip)
            .map(|position| {
                let id = ids[position as usize];
                Placed { position, message: StoredMessage { id, frame: Frame::from_text(id.to_string()) } }
            })
            .collect();
        PlacedRead { messages, truncated: false, tip, tip_id: Some(ids[tip as usize]) }
    }

    fn delivered(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Deliver(frame) => frame.as_str().to_owned(),
                Step::Gap(last) => format!("gap after {last:?}"),
            })
            .collect()
    }

    #[test]
    fn next_is_delivered_behind_dropped_ahead_filled() {
        let ids = ids(10);
        let mut seq = Sequence::default();
        assert_eq!(seq.plan(3), Plan::Deliver);
        seq.delivered(3, ids[3]);
        assert_eq!(
            (seq.plan(3), seq.plan(2), seq.plan(4), seq.plan(6)),
            (Plan::Drop, Plan::Drop, Plan::Deliver, Plan::Fill)
        );
        let mut steps = Vec::new();
        seq.fill(Some(&read(&ids, 4, 7)), Some(5), &mut steps);
        assert_eq!(delivered(&steps), [ids[4].to_string(), ids[5].to_string()]);
        assert_eq!(seq.plan(6), Plan::Deliver);
    }

    #[test]
    fn own_messages_placed_next_are_skipped_and_others_first_make_a_gap() {
        let ids = ids(10);
        let mut seq = Sequence::default();
        seq.delivered(2, ids[2]);
        seq.unplaced(ids[3]);
        seq.unplaced(ids[4]);
        assert_eq!(seq.plan(3), Plan::Fill);
        let mut steps = Vec::new();
        // History placed them right after: nothing to deliver, order kept.
        seq.fill(Some(&read(&ids, 3, 5)), None, &mut steps);
        assert_eq!(delivered(&steps), [ids[5].to_string()]);
        // Another node's message placed before ours: a gap after the last in order.
        seq.unplaced(ids[7]);
        let mut steps = Vec::new();
        seq.fill(Some(&read(&ids, 6, 8)), None, &mut steps);
        assert_eq!(delivered(&steps), [format!("gap after {:?}", Some(ids[5]))]);
        assert_eq!((seq.last, seq.last_id), (Some(8), Some(ids[8])));
        assert_eq!(seq.plan(9), Plan::Deliver);
    }

    #[test]
    fn too_large_truncated_or_unreadable_gaps_are_announced() {
        let ids = ids(10);
        for (read, target) in [
            (None, Some(6)),
            (Some(PlacedRead { truncated: true, ..read(&ids, 4, 6) }), Some(6)),
            (Some(read(&ids, 4, 5)), Some(6)), // fewer than needed
        ] {
            let mut seq = Sequence::default();
            seq.delivered(3, ids[3]);
            let mut steps = Vec::new();
            seq.fill(read.as_ref(), target, &mut steps);
            assert_eq!(delivered(&steps), [format!("gap after {:?}", Some(ids[3]))]);
            assert_eq!(seq.plan(7), Plan::Deliver);
        }
        let mut seq = Sequence::default();
        seq.delivered(0, ids[0]);
        let mut big = read(&ids, 1, 1);
        big.tip = GAP_MAX as u64 + 5;
        let mut steps = Vec::new();
        seq.fill(Some(&big), None, &mut steps);
        assert_eq!(steps, [Step::Gap(Some(ids[0]))]);
        // Unplaced past the bound: the next placement is a gap.
        let mut seq = Sequence::default();
        seq.delivered(0, ids[0]);
        for _ in 0..=GAP_MAX {
            seq.unplaced(ids[9]);
        }
        let mut steps = Vec::new();
        seq.fill(Some(&read(&ids, 1, 2)), None, &mut steps);
        assert_eq!(steps, [Step::Gap(Some(ids[0]))]);
    }

    #[test]
    fn a_distrusted_unplaced_list_makes_the_next_placement_a_gap() {
        let ids = ids(10);
        let mut seq = Sequence::default();
        seq.delivered(2, ids[2]);
        seq.distrust_unplaced();
        assert_eq!(seq.plan(3), Plan::Deliver, "nothing unplaced: nothing to distrust");
        seq.unplaced(ids[3]);
        seq.distrust_unplaced();
        let mut steps = Vec::new();
        seq.fill(Some(&read(&ids, 3, 4)), None, &mut steps);
        assert_eq!(steps, [Step::Gap(Some(ids[2]))]);
    }

    #[test]
    fn an_unknown_start_takes_the_tip_and_a_read_failure_without_a_message_waits() {
        let ids = ids(10);
        let mut seq = Sequence::default();
        let mut steps = Vec::new();
        seq.fill(None, None, &mut steps);
        assert!(steps.is_empty() && !seq.known());
        seq.fill(Some(&read(&ids, 1, 4)), None, &mut steps);
        assert!(steps.is_empty());
        assert_eq!((seq.last, seq.last_id), (Some(4), Some(ids[4])));
    }
}
