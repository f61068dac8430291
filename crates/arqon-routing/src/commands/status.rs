//! `status`: what the server is and how busy it is.

use arqon_protocol::Role;
use serde::Serialize;

use super::{Ctx, Kind, Spec, Surface};
use crate::RoutingError;

pub(crate) static SPEC: Spec = Spec {
    name: "status",
    description: "Server version, uptime, connection/room/channel counts and storage health.",
    role: Role::Guest,
    args: &[],
    kind: Kind::Status,
    surface: Surface::Both,
};

#[derive(Serialize)]
struct Status<'a> {
    version: &'a str,
    uptime_s: u64,
    connections: usize,
    rooms: usize,
    channels: usize,
    storage: StorageStatus,
}

#[derive(Serialize)]
struct StorageStatus {
    backend: &'static str,
    healthy: bool,
    /// Messages accepted while the backend was down, not yet written to it.
    journaled: u64,
    /// Publishes refused because that journal was full.
    refused: u64,
}

pub(crate) fn run(ctx: &mut Ctx<'_>) -> Result<(), RoutingError> {
    let router = ctx.session.router.clone();
    // A client limited to some rooms sees the counts of those rooms only.
    let counts = router.counts_for(&ctx.session.client.rooms);
    let health = router.storage_health();
    ctx.respond(&Status {
        version: &router.inner.config.server_version,
        uptime_s: router.uptime_s(),
        connections: counts.connections,
        rooms: counts.rooms,
        channels: counts.channels,
        storage: StorageStatus {
            backend: health.backend,
            healthy: health.healthy,
            journaled: health.journaled,
            refused: health.refused,
        },
    });
    Ok(())
}
