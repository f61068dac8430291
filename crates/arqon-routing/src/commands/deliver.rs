//! `broadcast` and `send`: the application's live messages to a room or to
//! clients (server API only; nothing is stored).

use arqon_protocol::{ErrorCode, Role, Target, parse_to};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, Ctx, Kind, ROOM, Spec, Surface};
use crate::RoutingError;

pub(crate) static BROADCAST_SPEC: Spec = Spec {
    name: "broadcast",
    description: "Delivers a message to every member of every channel of a room, each once, live only (not stored).",
    role: Role::User,
    args: &[
        ROOM,
        ArgSpec::required("payload", ArgKind::Json, "the message body, any JSON"),
        ArgSpec::optional("meta", ArgKind::Meta, "up to 16 string values passed through to receivers"),
    ],
    kind: Kind::Broadcast,
    surface: Surface::Api,
};

pub(crate) static SEND_SPEC: Spec = Spec {
    name: "send",
    description: "Delivers a direct message to one client (`to`: a client id) or to every connection of a user \
                  (`to`: \"user:NAME\").",
    role: Role::User,
    args: &[
        ArgSpec::required("to", ArgKind::Text, "a client id, or user:NAME"),
        ArgSpec::required("payload", ArgKind::Json, "the message body, any JSON"),
        ArgSpec::optional("meta", ArgKind::Meta, "up to 16 string values passed through to receivers"),
    ],
    kind: Kind::Send,
    surface: Surface::Api,
};

#[derive(Serialize)]
struct Delivered {
    delivered: usize,
}

pub(crate) async fn run_broadcast(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let Some(room) = args.name("room").cloned() else {
        return Err(super::missing("room").into());
    };
    let target = Target::Room(room);
    let id = ctx.session.ids.message_id();
    let delivered = match ctx.session.send_message(&target, id, ctx.now, args.raw("payload"), args.raw("meta")).await {
        Ok(routed) => routed.fanout,
        // A room with no channel has no member to reach.
        Err(error) if error.code == ErrorCode::NotFound => 0,
        Err(error) => return Err(error.into()),
    };
    ctx.respond(&Delivered { delivered });
    Ok(())
}

pub(crate) async fn run_send(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let target = parse_to(args.text("to").unwrap_or_default())
        .map_err(|e| arqon_protocol::ProtocolError::new(ErrorCode::InvalidArgs, format!("to: {}", e.message)))?;
    let id = ctx.session.ids.message_id();
    let routed = ctx.session.send_message(&target, id, ctx.now, args.raw("payload"), args.raw("meta")).await?;
    ctx.respond(&Delivered { delivered: routed.fanout });
    Ok(())
}
