//! `delete_channel`: removes a channel and its history; members are told.

use arqon_protocol::{Name, Role};
use serde::Serialize;

use super::{Args, Ctx, Kind, ROOM_CHANNEL, Spec, Surface};
use crate::RoutingError;

pub(crate) static SPEC: Spec = Spec {
    name: "delete_channel",
    description: "Deletes a channel and its history; its members get a channel_deleted event.",
    role: Role::Admin,
    args: &ROOM_CHANNEL,
    kind: Kind::DeleteChannel,
    surface: Surface::Both,
};

#[derive(Serialize)]
struct Deleted<'a> {
    room: &'a Name,
    channel: &'a Name,
    deleted: bool,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    ctx.session.require_room(&key.room)?;
    let router = ctx.session.router.clone();
    let members = router.delete_channel(&key).await?;
    ctx.session.client.joined.lock().remove(&key);
    ctx.respond(&Deleted { room: &key.room, channel: &key.channel, deleted: true });
    router.notify_deleted(&key, &members);
    Ok(())
}
