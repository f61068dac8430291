//! What the bus knows about one connected client.

use arqon_protocol::{ClientId, Role};

use crate::outlet::Outlet;

/// A connected client as seen by the router and by channels.
#[derive(Debug)]
pub(crate) struct ClientEntry {
    pub(crate) id: ClientId,
    pub(crate) role: Role,
    pub(crate) outlet: Outlet,
}
