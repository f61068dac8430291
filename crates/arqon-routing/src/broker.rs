//! The seam where a cross-node broker plugs in.

use std::future::Future;
use std::pin::Pin;

use arqon_protocol::{ChannelKey, ClientId, Frame, MessageId, Name, ProtocolError, Timestamp};

/// Resolves once this node receives a channel's traffic from the other nodes
/// (see [`Broker::subscribe`]).
pub type Subscribed = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Whom a [`ClientAction`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionTarget {
    /// One connection.
    Client(ClientId),
    /// Every connection of a user.
    User(String),
}

/// What the application asks of a client on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Close it with `code`, after a `disconnected` event with `reason`.
    Disconnect {
        /// The close code (4000 to 4999).
        code: u16,
        /// Shown to the client.
        reason: Option<String>,
    },
    /// Make it a member of `key`, with the replay after `since`.
    Subscribe {
        /// The channel.
        key: ChannelKey,
        /// Replay from here.
        since: Option<MessageId>,
    },
    /// Take it out of `key`.
    Unsubscribe {
        /// The channel.
        key: ChannelKey,
    },
}

/// What the nodes asked to carry out a [`ClientAction`] did (see
/// [`Broker::act`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionReport {
    /// Connections the action closed, subscribed or took out of the channel.
    pub touched: usize,
    /// A `subscribe`'s answer: the body of the `join_channel` response
    /// (JSON) from the node that carried it out.
    pub answer: Option<String>,
    /// Why a node refused (a room the client's credentials do not allow, a
    /// channel that does not exist…), if one did.
    pub refused: Option<ProtocolError>,
    /// Nodes asked that did not answer in time: the action may still take
    /// effect there.
    pub unanswered: usize,
}

impl ActionReport {
    /// Adds what one more node did.
    pub fn merge(&mut self, other: ActionReport) {
        self.touched += other.touched;
        self.answer = self.answer.take().or(other.answer);
        self.refused = self.refused.take().or(other.refused);
        self.unanswered += other.unanswered;
    }
}

/// The outcome of an action sent to other nodes (see [`Broker::act`]).
pub type RemoteAction = Pin<Box<dyn Future<Output = ActionReport> + Send + 'static>>;

/// One member of a channel, as the nodes tell each other for `presence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The connection.
    pub client_id: ClientId,
    /// Its user, if any.
    pub user: Option<String>,
    /// Its credential's `info`, as JSON text, if any.
    pub info: Option<String>,
    /// When it joined.
    pub joined_at: Timestamp,
}

/// The members of a channel on the other nodes (see [`Broker::presence`]).
pub type RemotePresence = Pin<Box<dyn Future<Output = Vec<PresenceEntry>> + Send + 'static>>;

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
        /// Where it sits in the channel's history.
        place: Place,
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
    /// To every connection of a user on the receiving node
    /// (`to: "user:NAME"`), but `from`.
    User {
        /// The user.
        user: String,
        /// The frame as delivered.
        frame: Frame,
        /// The sender, who must not receive it.
        from: ClientId,
    },
}

/// Where a channel delivery sits in the channel's history: receiving nodes
/// deliver stored messages in history order (filling gaps from storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Not stored (a member event): delivered as it arrives.
    Unstored,
    /// Stored at this position (see `Storage::append_placed`), with this id.
    At(u64, MessageId),
    /// Stored, but its position is not known yet (journaled while storage
    /// was unreachable): not delivered from the copy; the receiving node
    /// finds it in history later ([`Router::catch_up`](crate::Router::catch_up)).
    Unplaced,
}

/// Carries traffic between nodes of one bus.
///
/// The router delivers to its local members itself and hands every channel,
/// room and remote-direct delivery to the broker, which sends it to the other
/// nodes; they call [`Router::deliver_from_broker`](crate::Router::deliver_from_broker).
/// It also tells the broker about local clients, memberships and channel
/// changes, so the broker can keep the cluster's view (who is where, how many
/// members a channel has on other nodes, which channels exist) and answer the
/// router's questions from a local cache.
///
/// Every method is called inline on the bus's paths and must not block:
/// queue internally (bounded) and report overflow in the broker's metrics.
pub trait Broker: Send + Sync + std::fmt::Debug + 'static {
    /// Sends a delivery to the other nodes.
    fn forward(&self, delivery: Delivery);

    /// Whether a client with this id is connected to another node.
    fn knows_client(&self, id: ClientId) -> bool;

    /// This node's local membership of `key` changed to `local_members`, so
    /// the broker can subscribe to or drop the channel's cross-node traffic
    /// and publish the count.
    fn interest(&self, key: &ChannelKey, local_members: usize);

    /// A local client is about to join `key`: make sure this node receives
    /// the channel's traffic from the other nodes, and resolve once it does,
    /// so that membership is in effect cluster-wide before the join is
    /// answered (PROTOCOL.md section 3). While the other nodes are out of
    /// reach it should resolve promptly: cross-node delivery is paused anyway.
    /// Default: at once (a broker that receives everything).
    fn subscribe(&self, _key: &ChannelKey) -> Subscribed {
        Box::pin(std::future::ready(()))
    }

    /// Members of `key` connected to other nodes (for cluster-wide counts).
    fn remote_members(&self, _key: &ChannelKey) -> usize {
        0
    }

    /// A client connected to this node.
    fn client_connected(&self, _id: ClientId) {}

    /// A client of this node disconnected.
    fn client_disconnected(&self, _id: ClientId) {}

    /// A local client joined `key` (for the other nodes' `presence`).
    fn presence_joined(&self, _key: &ChannelKey, _entry: PresenceEntry) {}

    /// A local client left `key`.
    fn presence_left(&self, _key: &ChannelKey, _id: ClientId) {}

    /// The members of `key` on the other nodes that are alive. Default: none.
    fn presence(&self, _key: &ChannelKey) -> RemotePresence {
        Box::pin(std::future::ready(Vec::new()))
    }

    /// `user` now has connections on this node (`present`), or no longer has.
    fn user_present(&self, _user: &str, _present: bool) {}

    /// Whether `user` has connections on another node.
    fn knows_user(&self, _user: &str) -> bool {
        false
    }

    /// Carries out the application's `action` (the server API's
    /// `disconnect`, `subscribe`, `unsubscribe`) on `target`'s connections
    /// on the other nodes, which call
    /// [`Router::act_for_broker`](crate::Router::act_for_broker); resolves
    /// with what they did once each has answered or a bounded wait is over.
    /// `None` when no other node holds the target. Default: `None`.
    fn act(&self, _target: ActionTarget, _action: ClientAction) -> Option<RemoteAction> {
        None
    }

    /// A channel was created on this node; other nodes should know it.
    /// (Not called for channels learnt through
    /// [`Router::channel_created_elsewhere`](crate::Router::channel_created_elsewhere).)
    fn channel_created(&self, _key: &ChannelKey, _created_at: Timestamp) {}

    /// A channel was deleted on this node; other nodes must drop it.
    fn channel_deleted(&self, _key: &ChannelKey) {}
}
