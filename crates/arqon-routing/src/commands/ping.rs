//! `ping`: a liveness round trip.

use arqon_protocol::Role;
use serde::Serialize;

use super::{Ctx, Kind, Spec, Surface};
use crate::RoutingError;

pub(crate) static SPEC: Spec = Spec {
    name: "ping",
    description: "Round trip to the server; answers {\"pong\": true}.",
    role: Role::Guest,
    args: &[],
    kind: Kind::Ping,
    surface: Surface::Both,
};

#[derive(Serialize)]
struct Pong {
    pong: bool,
}

pub(crate) fn run(ctx: &mut Ctx<'_>) -> Result<(), RoutingError> {
    ctx.respond(&Pong { pong: true });
    Ok(())
}
