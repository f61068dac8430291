//! `subscribe` and `unsubscribe`: the application moves a connected client
//! in or out of a channel (server API only).

use std::sync::Arc;

use arqon_protocol::{ClientId, ErrorCode, ProtocolError, Role};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, CHANNEL, Ctx, Kind, ROOM, Spec, Surface};
use crate::client::ClientEntry;
use crate::{ActionReport, ActionTarget, ClientAction, RoutingError, actions};

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

/// Where the arguments' client is: connected here, or on another node
/// (which was asked to carry the action out and reported).
enum Whereabouts {
    Here(Arc<ClientEntry>),
    Elsewhere(ActionReport),
}

/// Finds the arguments' client here, or has the node holding it carry out
/// `action`; `NOT_FOUND` when no node holds it, that node's refusal if it
/// refused.
async fn here_or_elsewhere(
    ctx: &Ctx<'_>,
    args: &Args<'_>,
    action: impl FnOnce() -> ClientAction,
) -> Result<Whereabouts, ProtocolError> {
    let id: ClientId = args.client_id("client_id").ok_or_else(|| super::missing("client_id"))?;
    let router = &ctx.session.router;
    if let Some(client) = router.client(id) {
        return Ok(Whereabouts::Here(client));
    }
    let target = ActionTarget::Client(id);
    let remote = actions::remote(router, target.clone(), action()).ok_or_else(|| not_connected(id))?;
    Ok(Whereabouts::Elsewhere(actions::settle(remote.await, &target)?))
}

fn not_connected(id: ClientId) -> ProtocolError {
    ProtocolError::new(ErrorCode::NotFound, format!("no client {id} is connected"))
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    let since = args.message_id("since");
    let router = ctx.session.router.clone();
    let client = match here_or_elsewhere(ctx, args, || ClientAction::Subscribe { key: key.clone(), since }).await? {
        Whereabouts::Here(client) => client,
        // Joined on its own node, which sent the join's answer.
        Whereabouts::Elsewhere(report) => {
            let id = args.client_id("client_id").ok_or_else(|| super::missing("client_id"))?;
            ctx.session.captured = Some(report.answer.ok_or_else(|| not_connected(id))?);
            return Ok(());
        }
    };
    let mut answer = None;
    actions::subscribe(&router, &client, &key, since, |joined| {
        answer = Some(serde_json::to_string(joined).unwrap_or_else(|_| "null".to_owned()));
    })
    .await?;
    ctx.session.captured = answer;
    Ok(())
}

pub(crate) async fn run_unsubscribe(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    let router = ctx.session.router.clone();
    let left = match here_or_elsewhere(ctx, args, || ClientAction::Unsubscribe { key: key.clone() }).await? {
        Whereabouts::Here(client) => actions::unsubscribe(&router, &client, &key),
        Whereabouts::Elsewhere(report) => report.touched > 0,
    };
    ctx.respond(&Left { left });
    Ok(())
}
