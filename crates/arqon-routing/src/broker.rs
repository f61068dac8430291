//! The seam where a cross-node broker plugs in.

use arqon_protocol::{ChannelKey, ClientId, Frame, Name};

/// Traffic crossing nodes: an already-encoded frame and where it goes.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// To every member of a channel (on the receiving node).
    Channel {
        /// The channel.
        key: ChannelKey,
        /// The frame as delivered.
        frame: Frame,
        /// The sender, who must not receive it.
        from: ClientId,
    },
    /// To every member of any channel of a room, each once.
    Room {
        /// The room.
        room: Name,
        /// The frame as delivered.
        frame: Frame,
        /// The sender, who must not receive it.
        from: ClientId,
    },
    /// To one client connected elsewhere.
    Direct {
        /// The recipient.
        to: ClientId,
        /// The frame as delivered.
        frame: Frame,
    },
}

/// Carries traffic between nodes of one bus.
///
/// The router delivers to its local members itself and hands every channel,
/// room and remote-direct delivery to the broker, which sends it to the other
/// nodes; they call [`Router::deliver_from_broker`](crate::Router::deliver_from_broker).
/// Implementations must not block: queue internally (bounded) and report
/// overflow in their own metrics.
pub trait Broker: Send + Sync + std::fmt::Debug + 'static {
    /// Sends a delivery to the other nodes.
    fn forward(&self, delivery: Delivery);

    /// Whether a client with this id is connected to another node.
    fn knows_client(&self, id: ClientId) -> bool;

    /// This node's local membership of `key` changed to `local_members`, so
    /// the broker can subscribe to or drop the channel's cross-node traffic.
    fn interest(&self, key: &ChannelKey, local_members: usize);
}
