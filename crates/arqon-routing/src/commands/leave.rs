//! `leave_channel`.

use arqon_protocol::{Name, Role};
use serde::Serialize;

use super::{Args, Ctx, Kind, ROOM_CHANNEL, Spec, Surface};
use crate::{RoutingError, membership};

pub(crate) static SPEC: Spec = Spec {
    name: "leave_channel",
    description: "Leaves a channel; left is false if you were not a member.",
    role: Role::Guest,
    args: &ROOM_CHANNEL,
    kind: Kind::LeaveChannel,
    surface: Surface::Both,
};

#[derive(Serialize)]
struct Left<'a> {
    room: &'a Name,
    channel: &'a Name,
    left: bool,
}

pub(crate) fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    let left = membership::leave(&ctx.session.router, &ctx.session.client, &key);
    ctx.respond(&Left { room: &key.room, channel: &key.channel, left });
    Ok(())
}
