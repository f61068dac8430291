//! `join_channel`: membership, with an optional gap-free replay.

use std::sync::Arc;

use arqon_protocol::Role;

use super::{ArgKind, ArgSpec, Args, CHANNEL, Ctx, Kind, ROOM, Spec, Surface};
use crate::{RoutingError, membership};

pub(crate) static SPEC: Spec = Spec {
    name: "join_channel",
    description: "Joins a channel. With `since`, every stored message after that id is sent right after the \
                  response and before any live message.",
    role: Role::Guest,
    args: &[
        ROOM,
        CHANNEL,
        ArgSpec::optional("since", ArgKind::MessageId, "replay every stored message after this one"),
        ArgSpec::optional(
            "member_events",
            ArgKind::Bool,
            "false: receive no member_joined/member_left/members_changed events for this channel (default true)",
        ),
    ],
    kind: Kind::JoinChannel,
    surface: Surface::Both,
};

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    ctx.session.require_room(&key.room)?;
    let router = ctx.session.router.clone();
    let client = Arc::clone(&ctx.session.client);
    let since = args.message_id("since");
    let member_events = args.bool("member_events").unwrap_or(true);
    membership::join(&router, &client, &key, since, member_events, |joined| ctx.respond(joined)).await
}
