//! `channel_info`: one channel's members and history counters.

use arqon_protocol::{MessageId, Name, Role, Timestamp};
use serde::Serialize;

use super::{Args, Ctx, Kind, ROOM_CHANNEL, Spec, Surface};
use crate::RoutingError;
use crate::router::not_found;

pub(crate) static SPEC: Spec = Spec {
    name: "channel_info",
    description: "Member count, creation time, stored message count and newest message id of a channel.",
    role: Role::Guest,
    args: &ROOM_CHANNEL,
    kind: Kind::ChannelInfo,
    surface: Surface::Both,
};

#[derive(Serialize)]
struct Info<'a> {
    room: &'a Name,
    channel: &'a Name,
    members: usize,
    created_at: Timestamp,
    stored: u64,
    last_id: Option<MessageId>,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    ctx.session.require_room(&key.room)?;
    let router = ctx.session.router.clone();
    let channel = router.lookup(&key).ok_or_else(|| not_found(&key))?;
    // Every message counted has also been queued to the members: a client
    // may take `last_id` as its resume point.
    let stats = channel.stats(&*router.inner.storage).await?;
    ctx.respond(&Info {
        room: &key.room,
        channel: &key.channel,
        members: router.cluster_members(&key, channel.member_count()),
        created_at: channel.created_at,
        stored: stats.stored,
        last_id: stats.last_id,
    });
    Ok(())
}
