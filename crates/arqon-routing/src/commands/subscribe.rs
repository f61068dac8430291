//! `subscribe` and `unsubscribe`: the application moves a connected client
//! in or out of a channel (server API only).

use std::sync::Arc;

use arqon_protocol::{ClientId, ErrorCode, ProtocolError, Role};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, CHANNEL, Ctx, Kind, ROOM, Spec, Surface};
use crate::client::ClientEntry;
use crate::membership::Joined;
use crate::{ActionTarget, ClientAction, RoutingError, actions};

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

/// The arguments' client: connected here (`Some`), or on another node
/// (`None`, the action already forwarded there), else `NOT_FOUND`.
fn here_or_forward(
    ctx: &Ctx<'_>,
    args: &Args<'_>,
    action: impl FnOnce() -> ClientAction,
) -> Result<Option<Arc<ClientEntry>>, ProtocolError> {
    let id: ClientId = args.client_id("client_id").ok_or_else(|| super::missing("client_id"))?;
    let router = &ctx.session.router;
    if let Some(client) = router.client(id) {
        return Ok(Some(client));
    }
    if actions::forward(router, ActionTarget::Client(id), action()) {
        return Ok(None);
    }
    Err(ProtocolError::new(ErrorCode::NotFound, format!("no client {id} is connected")))
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    let since = args.message_id("since");
    let router = ctx.session.router.clone();
    let Some(client) = here_or_forward(ctx, args, || ClientAction::Subscribe { key: key.clone(), since })? else {
        // Joined on its own node right after; the count is the one known here.
        let members = router.cluster_members(&key, router.lookup(&key).map_or(0, |c| c.member_count()));
        let joined = Joined { room: &key.room, channel: &key.channel, members: members + 1, truncated: None };
        ctx.respond(&joined);
        return Ok(());
    };
    let mut answer = None;
    actions::subscribe(&router, &client, &key, since, |joined| {
        answer = Some(serde_json::to_string(joined).unwrap_or_else(|_| "null".to_owned()));
    })
    .await?;
    ctx.session.captured = answer;
    Ok(())
}

pub(crate) fn run_unsubscribe(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    let router = ctx.session.router.clone();
    let left = match here_or_forward(ctx, args, || ClientAction::Unsubscribe { key: key.clone() })? {
        Some(client) => actions::unsubscribe(&router, &client, &key),
        // Left on its own node right after.
        None => true,
    };
    ctx.respond(&Left { left });
    Ok(())
}
