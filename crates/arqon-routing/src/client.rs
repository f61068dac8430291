//! What the bus knows about one connected client.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use arqon_protocol::{ChannelKey, ClientId, Name, RawValue, Role};

use crate::outlet::Outlet;
use crate::rate::TokenBucket;

/// A connected client as seen by the router and by channels.
#[derive(Debug)]
pub(crate) struct ClientEntry {
    pub(crate) id: ClientId,
    pub(crate) role: Role,
    /// The credential's identity (PROTOCOL.md section 8.2); several
    /// connections may share it.
    pub(crate) user: Option<Arc<str>>,
    /// The credential's `info` object, shown in presence as is.
    pub(crate) info: Option<Arc<RawValue>>,
    /// The application's backend calling through the server API: its
    /// messages say `from: "server"` and it may run API-only commands.
    pub(crate) server: bool,
    /// Channels this connection is a member of, however it joined (its own
    /// `join_channel` or the API's `subscribe`): left when it disconnects.
    pub(crate) joined: parking_lot::Mutex<HashSet<ChannelKey>>,
    /// Set once the connection is leaving; a join racing the disconnect
    /// sees it and undoes itself.
    pub(crate) gone: AtomicBool,
    pub(crate) rooms: RoomAccess,
    pub(crate) outlet: Outlet,
    /// Channels this connection has created (explicitly or by auto-create),
    /// checked against `RouterConfig::max_channels_created_per_client`.
    pub(crate) channels_created: AtomicUsize,
    /// Direct messages this client may still receive (all senders together,
    /// `RouterConfig::direct_rate`): the recipient's protection from senders
    /// it did not choose.
    pub(crate) direct_inbound: parking_lot::Mutex<TokenBucket>,
}

/// Which rooms a client may join, publish to and read (e.g. a JWT's `rooms`
/// claim). Enforced here, in routing, so an embedded router is as safe as the
/// server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RoomAccess {
    /// Every room.
    #[default]
    All,
    /// Only these rooms.
    Only(HashSet<Name>),
}

impl RoomAccess {
    /// Whether `room` is allowed.
    pub fn allows(&self, room: &Name) -> bool {
        match self {
            RoomAccess::All => true,
            RoomAccess::Only(rooms) => rooms.contains(room),
        }
    }

    /// Whether a client with this access may send a direct message to one
    /// with `to`'s: an unrestricted client reaches anyone; a client limited
    /// to some rooms reaches unrestricted clients (the application's own
    /// services) and clients that share one of its rooms, never a client
    /// confined to other rooms (another tenant).
    pub fn may_reach(&self, to: &RoomAccess) -> bool {
        match (self, to) {
            (RoomAccess::All, _) | (RoomAccess::Only(_), RoomAccess::All) => true,
            (RoomAccess::Only(mine), RoomAccess::Only(theirs)) => !mine.is_disjoint(theirs),
        }
    }
}
