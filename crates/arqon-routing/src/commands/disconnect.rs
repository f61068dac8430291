//! `disconnect`: the application closes a client's or a user's connections
//! (server API only).

use arqon_protocol::{ErrorCode, ProtocolError, Role};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, Ctx, Kind, Spec, Surface};
use crate::{ActionTarget, ClientAction, RoutingError, actions};

/// The close code when the caller gives none.
const DEFAULT_CODE: u16 = 4000;

pub(crate) static SPEC: Spec = Spec {
    name: "disconnect",
    description: "Closes one connection (`client_id`) or every connection of a user (`user`) with `code` \
                  (4000..4999, default 4000); a `reason` goes to the client in a `disconnected` event first.",
    role: Role::Admin,
    args: &[
        ArgSpec::optional("client_id", ArgKind::ClientId, "the connection to close"),
        ArgSpec::optional("user", ArgKind::Text, "close every connection of this user"),
        ArgSpec::optional("code", ArgKind::CloseCode, "WebSocket close code, 4000 to 4999 (default 4000)"),
        ArgSpec::optional("reason", ArgKind::Text, "why, shown to the client"),
    ],
    kind: Kind::Disconnect,
    surface: Surface::Api,
};

#[derive(Serialize)]
struct Disconnected {
    disconnected: usize,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let router = ctx.session.router.clone();
    let target = match (args.client_id("client_id"), args.text("user")) {
        (Some(id), None) => ActionTarget::Client(id),
        (None, Some(user)) => ActionTarget::User(user.to_owned()),
        _ => {
            return Err(ProtocolError::new(ErrorCode::InvalidArgs, "give exactly one of client_id and user").into());
        }
    };
    let code = args.int("code").and_then(|c| u16::try_from(c).ok()).unwrap_or(DEFAULT_CODE);
    let reason = args.text("reason");
    let here = actions::local_targets(&router, &target);
    let mut disconnected = actions::disconnect(&router, &here, code, reason);
    // A client found here is nowhere else; a user's other connections may be.
    if here.is_empty() || matches!(target, ActionTarget::User(_)) {
        let action = ClientAction::Disconnect { code, reason: reason.map(str::to_owned) };
        if let Some(remote) = actions::remote(&router, target.clone(), action) {
            let report = remote.await;
            // What this node closed stands, whatever the others say.
            let report = if disconnected == 0 { actions::settle(report, &target)? } else { report };
            disconnected += report.touched;
        }
    }
    ctx.respond(&Disconnected { disconnected });
    Ok(())
}
