//! `subscribe` and `unsubscribe`: the application moves a connected client
//! in or out of a channel (server API only).

use std::sync::Arc;

use arqon_protocol::{ClientId, ErrorCode, Name, ProtocolError, Role, Timestamp, encode};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, CHANNEL, Ctx, Kind, ROOM, Spec, Surface};
use crate::client::ClientEntry;
use crate::{RoutingError, membership};

const CLIENT: ArgSpec = ArgSpec::required("client_id", ArgKind::ClientId, "the connection to act on");

pub(crate) static SPEC: Spec = Spec {
    name: "subscribe",
    description: "Makes a connected client a member of a channel, as its own join_channel would (with the replay \
                  after `since`); the client gets no response frame.",
    role: Role::Admin,
    args: &[
        CLIENT,
        ROOM,
        CHANNEL,
        ArgSpec::optional("since", ArgKind::MessageId, "replay every stored message after this one"),
    ],
    kind: Kind::Subscribe,
    surface: Surface::Api,
};

pub(crate) static UNSUBSCRIBE_SPEC: Spec = Spec {
    name: "unsubscribe",
    description: "Takes a connected client out of a channel; it gets a channel_left event.",
    role: Role::Admin,
    args: &[CLIENT, ROOM, CHANNEL],
    kind: Kind::Unsubscribe,
    surface: Surface::Api,
};

#[derive(Serialize)]
struct Left {
    left: bool,
}

#[derive(Serialize)]
struct ChannelLeft<'a> {
    event: &'static str,
    room: &'a Name,
    channel: &'a Name,
}

/// The connected client `client_id`, within the rooms its credentials allow.
fn target(ctx: &Ctx<'_>, args: &Args<'_>, room: &Name) -> Result<Arc<ClientEntry>, ProtocolError> {
    let id: ClientId = args.client_id("client_id").ok_or_else(|| super::missing("client_id"))?;
    let client = ctx
        .session
        .router
        .client(id)
        .ok_or_else(|| ProtocolError::new(ErrorCode::NotFound, format!("no client {id} is connected")))?;
    if !client.rooms.allows(room) {
        return Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("client {id}'s credentials do not allow room {room}"),
        ));
    }
    Ok(client)
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    let client = target(ctx, args, &key.room)?;
    let router = ctx.session.router.clone();
    let mut answer = None;
    membership::join(&router, &client, &key, args.message_id("since"), true, |joined| {
        answer = Some(serde_json::to_string(joined).unwrap_or_else(|_| "null".to_owned()));
    })
    .await?;
    ctx.session.captured = answer;
    Ok(())
}

pub(crate) fn run_unsubscribe(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    let client = target(ctx, args, &key.room)?;
    let router = ctx.session.router.clone();
    let left = membership::leave(&router, &client, &key);
    if left {
        let event = ChannelLeft { event: "channel_left", room: &key.room, channel: &key.channel };
        client.outlet.push(arqon_outbound::Outbound::Frame(encode::event(
            router.message_id(),
            Timestamp::now(),
            &event,
        )));
    }
    ctx.respond(&Left { left });
    Ok(())
}
