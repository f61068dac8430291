//! What the application may do to a connected client (the server API's
//! `disconnect`, `subscribe`, `unsubscribe`), on this node or, through the
//! broker, on the node that holds it: one implementation for both.

use std::sync::Arc;

use arqon_outbound::Outbound;
use arqon_protocol::{ChannelKey, CloseReason, ErrorCode, MessageId, Name, ProtocolError, Timestamp, encode};
use serde::Serialize;

use crate::client::ClientEntry;
use crate::membership::{self, Joined};
use crate::router::Router;
use crate::{ActionTarget, ClientAction, Delivery, RoutingError};

/// The event a client gets right before the application's close.
#[derive(Serialize)]
struct Notice<'a> {
    event: &'static str,
    code: u16,
    reason: Option<&'a str>,
}

/// `channel_left`: the application took the client out of a channel.
#[derive(Serialize)]
struct ChannelLeft<'a> {
    event: &'static str,
    room: &'a Name,
    channel: &'a Name,
}

/// Closes `clients` with `code`, each after a `disconnected` event; returns
/// how many.
pub(crate) fn disconnect(router: &Router, clients: &[Arc<ClientEntry>], code: u16, reason: Option<&str>) -> usize {
    let notice = encode::event(router.message_id(), Timestamp::now(), &Notice { event: "disconnected", code, reason });
    for client in clients {
        // Queued frames, this notice among them, are written before the close.
        client.outlet.push(Outbound::Frame(notice.clone()));
        client.outlet.close(CloseReason { code, reason: "disconnected by the application" });
    }
    clients.len()
}

/// Checks that `client`'s credentials allow `room`.
pub(crate) fn check_room(client: &ClientEntry, room: &Name) -> Result<(), ProtocolError> {
    if client.rooms.allows(room) {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("client {}'s credentials do not allow room {room}", client.id),
        ))
    }
}

/// Makes `client` a member of `key` (its replay after `since` queued to it,
/// no response frame); `answer` gets the join's answer.
pub(crate) async fn subscribe(
    router: &Router,
    client: &Arc<ClientEntry>,
    key: &ChannelKey,
    since: Option<MessageId>,
    answer: impl FnOnce(&Joined<'_>),
) -> Result<(), RoutingError> {
    check_room(client, &key.room)?;
    membership::join(router, client, key, since, true, answer).await
}

/// Takes `client` out of `key`; it gets `channel_left`. Returns whether it
/// was a member.
pub(crate) fn unsubscribe(router: &Router, client: &ClientEntry, key: &ChannelKey) -> bool {
    let left = membership::leave(router, client, key);
    if left {
        let event = ChannelLeft { event: "channel_left", room: &key.room, channel: &key.channel };
        client.outlet.push(Outbound::Frame(encode::event(router.message_id(), Timestamp::now(), &event)));
    }
    left
}

/// The connections of `target` on this node.
pub(crate) fn local_targets(router: &Router, target: &ActionTarget) -> Vec<Arc<ClientEntry>> {
    match target {
        ActionTarget::Client(id) => router.client(*id).into_iter().collect(),
        ActionTarget::User(user) => router.user_clients(user),
    }
}

/// Carries out an action another node's API call asked for, on this node's
/// connections of `target`; returns how many it touched. Refusals (a room
/// the client's credentials do not allow, a missing channel) are logged: the
/// caller was answered already.
pub(crate) async fn act_here(router: &Router, target: &ActionTarget, action: &ClientAction) -> usize {
    let clients = local_targets(router, target);
    match action {
        ClientAction::Disconnect { code, reason } => disconnect(router, &clients, *code, reason.as_deref()),
        ClientAction::Subscribe { key, since } => {
            let mut done = 0;
            for client in &clients {
                match subscribe(router, client, key, *since, |_| {}).await {
                    Ok(()) => done += 1,
                    Err(e) => tracing::info!(client_id = %client.id, error = %e.into_protocol().message,
                        "a subscribe asked by another node was refused"),
                }
            }
            done
        }
        ClientAction::Unsubscribe { key } => clients.iter().filter(|c| unsubscribe(router, c, key)).count(),
    }
}

/// Sends `action` for `target` to the node(s) holding it; returns whether
/// any other node does.
pub(crate) fn forward(router: &Router, target: ActionTarget, action: ClientAction) -> bool {
    let Some(broker) = router.broker() else {
        return false;
    };
    let elsewhere = match &target {
        ActionTarget::Client(id) => broker.knows_client(*id),
        ActionTarget::User(user) => broker.knows_user(user),
    };
    if elsewhere {
        broker.forward(Delivery::Action { target, action });
    }
    elsewhere
}
