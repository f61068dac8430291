//! `leave_channel`, and leaving everything on disconnect.

use arqon_protocol::{ChannelKey, Name, Role};
use serde::Serialize;

use super::join_channel::announce_from;
use super::{Args, Ctx, Kind, ROOM_CHANNEL, Spec};
use crate::RoutingError;
use crate::session::Session;

pub(crate) static SPEC: Spec = Spec {
    name: "leave_channel",
    description: "Leaves a channel; left is false if you were not a member.",
    role: Role::Guest,
    args: &ROOM_CHANNEL,
    kind: Kind::LeaveChannel,
};

#[derive(Serialize)]
struct Left<'a> {
    room: &'a Name,
    channel: &'a Name,
    left: bool,
}

pub(crate) fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    ctx.session.joined.remove(&key);
    let left = leave_quietly(ctx.session, &key);
    ctx.respond(&Left { room: &key.room, channel: &key.channel, left });
    Ok(())
}

/// Removes the session's client from `key` and tells the others; returns
/// whether it was a member. Synchronous, so it also runs on disconnect.
pub(crate) fn leave_quietly(session: &mut Session, key: &ChannelKey) -> bool {
    let Some(channel) = session.router.lookup(key) else {
        return false;
    };
    let (removed, members) = channel.remove(session.client.id);
    if removed {
        channel.touch();
        if let Some(broker) = session.router.broker() {
            broker.interest(key, members);
        }
        announce_from(session, key, "member_left", members);
    }
    removed
}
