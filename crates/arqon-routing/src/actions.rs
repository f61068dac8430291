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
use crate::{ActionReport, ActionTarget, ClientAction, RemoteAction, RoutingError};

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
/// connections of `target`, and reports what it did: how many it touched, a
/// subscribe's answer, the first refusal.
pub(crate) async fn act_here(router: &Router, target: &ActionTarget, action: &ClientAction) -> ActionReport {
    let clients = local_targets(router, target);
    let mut report = ActionReport::default();
    match action {
        ClientAction::Disconnect { code, reason } => {
            report.touched = disconnect(router, &clients, *code, reason.as_deref());
        }
        ClientAction::Subscribe { key, since } => {
            for client in &clients {
                let mut answer = None;
                let joined = subscribe(router, client, key, *since, |joined| {
                    answer = serde_json::to_string(joined).ok();
                })
                .await;
                match joined {
                    Ok(()) => {
                        report.touched += 1;
                        report.answer = report.answer.take().or(answer);
                    }
                    Err(e) => report.refused = report.refused.take().or(Some(e.into_protocol())),
                }
            }
        }
        ClientAction::Unsubscribe { key } => {
            report.touched = clients.iter().filter(|c| unsubscribe(router, c, key)).count();
        }
    }
    report
}

/// Sends `action` for `target` to the other nodes holding it; `None` when
/// none does.
pub(crate) fn remote(router: &Router, target: ActionTarget, action: ClientAction) -> Option<RemoteAction> {
    router.broker()?.act(target, action)
}

/// What the API answers for an action carried out on other nodes: their
/// refusal, or an error when none of the nodes asked answered in time.
pub(crate) fn settle(report: ActionReport, target: &ActionTarget) -> Result<ActionReport, ProtocolError> {
    if let Some(refused) = report.refused {
        return Err(refused);
    }
    if report.touched == 0 && report.unanswered > 0 {
        let whom = match target {
            ActionTarget::Client(id) => format!("client {id}"),
            ActionTarget::User(user) => format!("user {user}"),
        };
        return Err(ProtocolError::new(
            ErrorCode::Internal,
            format!("the node holding {whom} did not answer in time; the action may still take effect"),
        ));
    }
    Ok(report)
}
