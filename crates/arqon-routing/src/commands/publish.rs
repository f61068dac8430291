//! `publish`: an acknowledged channel message.

use arqon_protocol::{MessageId, Role, Target};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, CHANNEL, Ctx, Kind, ROOM, Spec, Surface};
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
        ArgSpec::optional(
            "id",
            ArgKind::MessageId,
            "the message id, for a retry to be recognised (server API; a client's frame id serves instead)",
        ),
    ],
    kind: Kind::Publish,
    surface: Surface::Both,
};

#[derive(Serialize)]
struct Published {
    id: MessageId,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let target = Target::Channel(args.channel_key()?);
    // The API names the message id in args; a client's frame id is its id.
    let id = args.message_id("id").or(ctx.request_id).unwrap_or_else(|| ctx.session.ids.message_id());
    let now = ctx.now;
    let id = ctx.session.send_message(&target, id, now, args.raw("payload"), args.raw("meta")).await?.id;
    ctx.respond(&Published { id });
    Ok(())
}
