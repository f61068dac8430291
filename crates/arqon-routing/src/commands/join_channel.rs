//! `join_channel`: membership, with an optional gap-free replay.

use arqon_protocol::{ChannelKey, ClientId, Name, Outbound, Role, Timestamp, encode};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, CHANNEL, Ctx, Kind, ROOM, Spec};
use crate::router::not_found;
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
    // Auto-create on join is for those who may create channels at all.
    let may_create = router.inner.config.auto_create && ctx.session.role() >= Role::User;
    let (channel, _) = router.ensure_channel(&key, may_create).await?;
    // Before the order lock: waiting for other nodes must not hold up this
    // channel's local traffic.
    if let Some(broker) = router.broker() {
        broker.subscribe(&key).await;
    }
    let (added, members) = {
        // Holding the channel's order lock: no message is appended or
        // delivered between the replay read and the membership change, so
        // the replay and live traffic neither overlap nor leave a gap.
        let _order = channel.order.lock().await;
        if channel.is_deleted() {
            return Err(not_found(&key).into());
        }
        let replay = match (router.broker(), args.message_id("since")) {
            // Across nodes, the replay and live delivery meet at one position.
            (Some(_), since) => router.join_placed(&channel, since, ctx.session.client.id).await?,
            (None, Some(since)) => Some(router.inner.storage.since(&key, since).await?),
            (None, None) => None,
        };
        let (added, members) = channel.add(&ctx.session.client);
        ctx.session.joined.insert(key.clone());
        ctx.respond(&Joined {
            room: &key.room,
            channel: &key.channel,
            members: router.cluster_members(&key, members),
            truncated: replay.as_ref().map(|r| r.truncated),
        });
        if let Some(replay) = replay.filter(|r| !r.messages.is_empty()) {
            let frames = replay.messages.into_iter().map(|m| m.frame).collect();
            ctx.session.client.outlet.push(Outbound::Batch(frames));
        }
        (added, members)
    };
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

/// Members on other nodes hear it too, through the broker.
pub(crate) fn announce_from(session: &mut crate::Session, key: &ChannelKey, event: &'static str, members: usize) {
    let router = &session.router;
    if router.cluster_members(key, members) > router.inner.config.member_events_max {
        return;
    }
    let Some(channel) = router.lookup(key) else {
        return;
    };
    let from = session.client.id;
    let payload = MemberEvent { event, room: &key.room, channel: &key.channel, client_id: from };
    let frame = encode::event(session.ids.message_id(), Timestamp::now(), &payload);
    channel.deliver(&frame, Some(from));
    if let Some(broker) = router.broker() {
        broker.forward(Delivery::Channel { key: key.clone(), frame, from, place: Place::Unstored });
    }
}
