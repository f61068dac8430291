//! `publish`: an acknowledged channel message.

use arqon_protocol::{MessageId, Role, Target};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, CHANNEL, Ctx, Kind, ROOM, Spec};
use crate::RoutingError;

pub(crate) static SPEC: Spec = Spec {
    name: "publish",
    description: "Publishes to a channel and answers with the message id once it is stored and handed to delivery. \
                  The command's own id becomes the message id, so a retry is recognised.",
    role: Role::User,
    args: &[
        ROOM,
        CHANNEL,
        ArgSpec::required("payload", ArgKind::Json, "the message body, any JSON"),
        ArgSpec::optional("meta", ArgKind::Meta, "up to 16 string values passed through to receivers"),
    ],
    kind: Kind::Publish,
};

#[derive(Serialize)]
struct Published {
    id: MessageId,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let target = Target::Channel(args.channel_key()?);
    let id = ctx.request_id.unwrap_or_else(|| ctx.session.ids.message_id());
    let now = ctx.now;
    let id = ctx.session.send_message(&target, id, now, args.raw("payload"), args.raw("meta")).await?;
    ctx.respond(&Published { id });
    Ok(())
}
