//! `disconnect`: the application closes a client's or a user's connections
//! (server API only).

use arqon_protocol::{CloseReason, ErrorCode, ProtocolError, Role, Timestamp, encode};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, Ctx, Kind, Spec, Surface};
use crate::RoutingError;

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

/// The event a client gets right before the close.
#[derive(Serialize)]
struct Notice<'a> {
    event: &'static str,
    code: u16,
    reason: Option<&'a str>,
}

pub(crate) fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let router = ctx.session.router.clone();
    let clients = match (args.client_id("client_id"), args.text("user")) {
        (Some(id), None) => router.client(id).into_iter().collect(),
        (None, Some(user)) => router.user_clients(user),
        _ => {
            return Err(ProtocolError::new(ErrorCode::InvalidArgs, "give exactly one of client_id and user").into());
        }
    };
    let code = args.int("code").and_then(|c| u16::try_from(c).ok()).unwrap_or(DEFAULT_CODE);
    let reason = args.text("reason");
    let notice = encode::event(router.message_id(), Timestamp::now(), &Notice { event: "disconnected", code, reason });
    let mut disconnected = 0;
    for client in &clients {
        // Queued frames, this notice among them, are written before the close.
        client.outlet.push(arqon_outbound::Outbound::Frame(notice.clone()));
        client.outlet.close(CloseReason { code, reason: "disconnected by the application" });
        disconnected += 1;
    }
    ctx.respond(&Disconnected { disconnected });
    Ok(())
}
