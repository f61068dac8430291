//! `create_channel`: makes a channel (idempotent).

use arqon_protocol::{Name, Role};
use serde::Serialize;

use super::{Args, Ctx, Kind, ROOM_CHANNEL, Spec, Surface};
use crate::RoutingError;
use crate::router::Create;

pub(crate) static SPEC: Spec = Spec {
    name: "create_channel",
    description: "Creates a channel; created is false if it already existed.",
    role: Role::User,
    args: &ROOM_CHANNEL,
    kind: Kind::CreateChannel,
    surface: Surface::Both,
};

#[derive(Serialize)]
struct Created<'a> {
    room: &'a Name,
    channel: &'a Name,
    created: bool,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    ctx.session.require_room(&key.room)?;
    let router = ctx.session.router.clone();
    let (_, created) = router.ensure_channel(&key, Create::Explicit(&ctx.session.client)).await?;
    ctx.respond(&Created { room: &key.room, channel: &key.channel, created });
    Ok(())
}
