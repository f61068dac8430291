//! `list_channels`: every channel, or those of one room.

use arqon_protocol::{Name, Role};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, Ctx, Kind, Spec, Surface};
use crate::RoutingError;

pub(crate) static SPEC: Spec = Spec {
    name: "list_channels",
    description: "Lists channels with their member counts, optionally of one room.",
    role: Role::Guest,
    args: &[ArgSpec::optional("room", ArgKind::Name, "only this room")],
    kind: Kind::ListChannels,
    surface: Surface::Both,
};

#[derive(Serialize)]
struct List {
    channels: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    room: Name,
    channel: Name,
    members: usize,
}

pub(crate) fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let channels = ctx
        .session
        .router
        .channels(args.name("room"))
        .into_iter()
        // A client limited to some rooms sees only those.
        .filter(|c| ctx.session.client.rooms.allows(&c.key.room))
        .map(|c| Entry { room: c.key.room, channel: c.key.channel, members: c.members })
        .collect();
    ctx.respond(&List { channels });
    Ok(())
}
