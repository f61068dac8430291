//! `join_channel`: membership, with an optional gap-free replay.

use std::sync::Arc;

use arqon_protocol::{ChannelKey, ClientId, IdGenerator, Name, Role, Timestamp, encode};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, CHANNEL, Ctx, Kind, ROOM, Spec};
use crate::channel::Channel;
use crate::member_events::{Gate, SUMMARY_DELAY};
use crate::router::{Create, Router};
use crate::{Delivery, Place, RoutingError};

pub(crate) static SPEC: Spec = Spec {
    name: "join_channel",
    description: "Joins a channel. With `since`, every stored message after that id is sent right after the \
                  response and before any live message.",
    role: Role::Guest,
    args: &[
        ROOM,
        CHANNEL,
        ArgSpec::optional("since", ArgKind::MessageId, "replay every stored message after this one"),
        ArgSpec::optional(
            "member_events",
            ArgKind::Bool,
            "false: receive no member_joined/member_left/members_changed events for this channel (default true)",
        ),
    ],
    kind: Kind::JoinChannel,
};

#[derive(Serialize)]
struct Joined<'a> {
    room: &'a Name,
    channel: &'a Name,
    members: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncated: Option<bool>,
}

/// `member_joined` / `member_left`.
#[derive(Serialize)]
pub(crate) struct MemberEvent<'a> {
    pub(crate) event: &'static str,
    pub(crate) room: &'a Name,
    pub(crate) channel: &'a Name,
    pub(crate) client_id: ClientId,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    ctx.session.require_room(&key.room)?;
    let router = ctx.session.router.clone();
    let client = Arc::clone(&ctx.session.client);
    // Auto-create on join is for those who may create channels at all.
    let create =
        if router.inner.config.auto_create && client.role >= Role::User { Create::Auto(&client) } else { Create::No };
    // A channel removed (reclaimed or deleted) between its lookup and its
    // order lock is made afresh once when the caller may create it.
    let mut may_retry = !matches!(create, Create::No);
    let since = args.message_id("since");
    let joined = loop {
        let (channel, _) = router.ensure_channel(&key, create).await?;
        // Before the order lock: waiting for other nodes must not hold up this
        // channel's local traffic.
        if let Some(broker) = router.broker() {
            broker.subscribe(&key).await;
        }
        let respond = |members, truncated| {
            ctx.respond(&Joined {
                room: &key.room,
                channel: &key.channel,
                members: router.cluster_members(&key, members),
                truncated,
            });
        };
        let joiner = client.id;
        let replay = async || match (router.broker(), since) {
            // Across nodes, the replay and live delivery meet at one position.
            (Some(_), since) => router.join_placed(&channel, since, joiner).await,
            (None, Some(since)) => Ok(Some(router.inner.storage.since(&key, since).await?)),
            (None, None) => Ok(None),
        };
        match channel.join(&client, replay, respond).await {
            Err(_) if channel.is_deleted() && std::mem::take(&mut may_retry) => continue,
            joined => break joined?,
        }
    };
    ctx.session.joined.insert(key.clone());
    let (added, members) = (joined.added, joined.members);
    if let Some(channel) = router.lookup(&key) {
        channel.set_member_events(client.id, args.bool("member_events").unwrap_or(true));
    }
    if added {
        if let Some(broker) = router.broker() {
            broker.interest(&key, members);
        }
        announce(ctx, &key, "member_joined", members);
    }
    Ok(())
}

/// Tells the other members that the caller joined or left, unless the
/// channel is too large for member events.
pub(crate) fn announce(ctx: &mut Ctx<'_>, key: &ChannelKey, event: &'static str, members: usize) {
    let session = &mut *ctx.session;
    announce_from(session, key, event, members);
}

/// Members on other nodes hear it too, through the broker. Past the
/// channel's member-event rate the event is counted instead, and the first
/// one counted schedules a `members_changed` summary.
pub(crate) fn announce_from(session: &mut crate::Session, key: &ChannelKey, event: &'static str, members: usize) {
    let router = &session.router;
    if router.cluster_members(key, members) > router.inner.config.member_events_max {
        return;
    }
    let Some(channel) = router.lookup(key) else {
        return;
    };
    match channel.admit_member_event(router.inner.config.member_event_rate) {
        Gate::Send => {}
        Gate::Suppress { first } => {
            if first {
                tokio::spawn(summarize_member_events(router.clone(), channel));
            }
            return;
        }
    }
    let from = session.client.id;
    let payload = MemberEvent { event, room: &key.room, channel: &key.channel, client_id: from };
    let frame = encode::event(session.ids.message_id(), Timestamp::now(), &payload);
    channel.deliver_member_event(&frame, Some(from));
    if let Some(broker) = router.broker() {
        broker.forward(Delivery::Channel { key: key.clone(), frame, from, place: Place::Unstored });
    }
}

/// `members_changed`: what member events were not sent stand for.
#[derive(Serialize)]
struct MembersChanged<'a> {
    event: &'static str,
    room: &'a Name,
    channel: &'a Name,
    /// Members now, on every node.
    members: usize,
    /// Member events this summary replaces.
    suppressed: u64,
}

/// Sends the summary of the member events counted since the first one,
/// [`SUMMARY_DELAY`] later, to every member that wants member events (on
/// every node). At most one is pending per channel.
async fn summarize_member_events(router: Router, channel: Arc<Channel>) {
    tokio::time::sleep(SUMMARY_DELAY).await;
    let suppressed = channel.take_suppressed_member_events();
    if suppressed == 0 || channel.is_deleted() {
        return;
    }
    let key = &channel.key;
    let payload = MembersChanged {
        event: "members_changed",
        room: &key.room,
        channel: &key.channel,
        members: router.cluster_members(key, channel.member_count()),
        suppressed,
    };
    let mut ids = IdGenerator::new();
    let frame = encode::event(ids.message_id(), Timestamp::now(), &payload);
    channel.deliver_member_event(&frame, None);
    if let Some(broker) = router.broker() {
        // No sender to leave out: an id no client has.
        broker.forward(Delivery::Channel { key: key.clone(), frame, from: ids.client_id(), place: Place::Unstored });
    }
}
