//! Joining and leaving channels: one path for a client's own commands, the
//! server API acting on a client and the disconnect, so that membership,
//! member events and the set of channels left on disconnect always agree.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arqon_protocol::{
    ChannelKey, ClientId, ErrorCode, IdGenerator, MessageId, Name, ProtocolError, RawValue, Role, Timestamp, encode,
};
use serde::Serialize;

use crate::channel::Channel;
use crate::client::ClientEntry;
use crate::member_events::{Gate, SUMMARY_DELAY};
use crate::router::{Create, Router};
use crate::{BusEvent, Delivery, JoinAsk, Place, PresenceEntry, RoutingError, retention};

/// The answer to a join (`join_channel`'s response, the API's `subscribe`).
#[derive(Debug, Serialize)]
pub(crate) struct Joined<'a> {
    pub(crate) room: &'a Name,
    pub(crate) channel: &'a Name,
    pub(crate) members: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) truncated: Option<bool>,
}

/// `member_joined` / `member_left` (PROTOCOL.md sections 5 and 8.2).
#[derive(Serialize)]
struct MemberEvent<'a> {
    event: &'static str,
    room: &'a Name,
    channel: &'a Name,
    client_id: ClientId,
    user: Option<&'a str>,
    info: Option<&'a RawValue>,
}

/// Makes `client` a member of `key`, with the replay after `since`.
/// `respond` gets the answer under the channel's order lock, so that a
/// response frame queued by it comes before the replay and any live message.
pub(crate) async fn join(
    router: &Router,
    client: &Arc<ClientEntry>,
    key: &ChannelKey,
    since: Option<MessageId>,
    member_events: bool,
    respond: impl FnOnce(&Joined<'_>),
) -> Result<(), RoutingError> {
    let options = router.room_options(&key.room);
    let least = options.join_role;
    if client.role < least {
        return Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("joining channels of room {} needs role {least} (you are {})", key.room, client.role),
        )
        .into());
    }
    if options.join_hook {
        // Fail closed: a room that asks the application admits no one the
        // application was not asked about.
        let Some(guard) = &router.inner.join_guard else {
            return Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!("room {} asks a join hook, and none is configured", key.room),
            )
            .into());
        };
        let ask = JoinAsk {
            key,
            client_id: client.id,
            user: client.user.as_deref(),
            role: client.role,
            info: client.info.as_deref(),
        };
        guard.allow(&ask).await?;
    }
    // Auto-create on join is for those who may create channels at all.
    let create =
        if router.auto_create(&key.room) && client.role >= Role::User { Create::Auto(client) } else { Create::No };
    // A channel removed (reclaimed or deleted) between its lookup and its
    // order lock is made afresh once when the caller may create it.
    let mut may_retry = !matches!(create, Create::No);
    let mut respond = Some(respond);
    let joined = loop {
        let (channel, _) = router.ensure_channel(key, create).await?;
        // Before the order lock: waiting for other nodes must not hold up this
        // channel's local traffic.
        if let Some(broker) = router.broker() {
            broker.subscribe(key).await;
        }
        let answer = |members, truncated| {
            if let Some(respond) = respond.take() {
                respond(&Joined {
                    room: &key.room,
                    channel: &key.channel,
                    members: router.cluster_members(key, members),
                    truncated,
                });
            }
        };
        let joiner = client.id;
        let replay = async || {
            let since = match (router.broker(), since) {
                // Across nodes, the replay and live delivery meet at one position.
                (Some(_), since) => router.join_placed(&channel, since, joiner).await?,
                (None, Some(since)) => Some(router.inner.storage.since(key, since).await?),
                (None, None) => None,
            };
            let options = router.room_options(&key.room);
            Ok(since.map(|since| retention::replay(options, Timestamp::now(), since)))
        };
        match channel.join(client, replay, answer).await {
            Err(_) if channel.is_deleted() && std::mem::take(&mut may_retry) => continue,
            joined => break joined?,
        }
    };
    client.joined.lock().insert(key.clone());
    if let Some(channel) = router.lookup(key) {
        channel.set_member_events(client.id, member_events);
    }
    if joined.added {
        router.inner.observer.observe(&BusEvent::MemberAdded {
            key,
            client_id: client.id,
            user: client.user.as_deref(),
            occupied: router.cluster_members(key, joined.members) == 1,
            new_user: joined.new_user,
        });
        if let Some(broker) = router.broker() {
            broker.interest(key, joined.members);
            broker.presence_joined(
                key,
                PresenceEntry {
                    client_id: client.id,
                    user: client.user.as_deref().map(str::to_owned),
                    info: client.info.as_deref().map(|info| info.get().to_owned()),
                    joined_at: Timestamp::now(),
                },
            );
        }
        announce(router, client, key, "member_joined", joined.members);
    }
    // A disconnect that ran meanwhile left the channels it knew of, maybe
    // not this one yet: undo the join rather than keep a closed member.
    if client.gone.load(Ordering::Acquire) {
        leave(router, client, key);
    }
    Ok(())
}

/// Removes `client` from `key` and tells the others; returns whether it was
/// a member. Synchronous, so it also runs on disconnect.
pub(crate) fn leave(router: &Router, client: &ClientEntry, key: &ChannelKey) -> bool {
    client.joined.lock().remove(key);
    let Some(channel) = router.lookup(key) else {
        return false;
    };
    let change = channel.remove(client.id);
    let (removed, members) = (change.removed, change.members);
    if removed {
        router.inner.observer.observe(&BusEvent::MemberRemoved {
            key,
            client_id: client.id,
            user: client.user.as_deref(),
            vacated: router.cluster_members(key, members) == 0,
            user_gone: change.user_gone,
        });
        channel.touch();
        if let Some(broker) = router.broker() {
            broker.interest(key, members);
            broker.presence_left(key, client.id);
        }
        announce(router, client, key, "member_left", members);
    }
    removed
}

/// Leaves every channel `client` is in, for good: a join still running
/// sees `gone` and undoes itself.
pub(crate) fn leave_all(router: &Router, client: &ClientEntry) {
    let joined: Vec<ChannelKey> = {
        let mut joined = client.joined.lock();
        client.gone.store(true, Ordering::Release);
        joined.drain().collect()
    };
    for key in joined {
        leave(router, client, &key);
    }
}

/// Tells the other members that `client` joined or left, unless the
/// channel is too large for member events. Members on other nodes hear it
/// too, through the broker. Past the channel's member-event rate the event
/// is counted instead, and the first one counted schedules a
/// `members_changed` summary.
fn announce(router: &Router, client: &ClientEntry, key: &ChannelKey, event: &'static str, members: usize) {
    if !router.room_options(&key.room).member_events
        || router.cluster_members(key, members) > router.inner.config.member_events_max
    {
        return;
    }
    let Some(channel) = router.lookup(key) else {
        return;
    };
    match channel.admit_member_event(router.inner.config.member_event_rate) {
        Gate::Send => {}
        Gate::Suppress { first } => {
            if first {
                tokio::spawn(summarize_member_events(router.clone(), channel));
            }
            return;
        }
    }
    let from = client.id;
    let payload = MemberEvent {
        event,
        room: &key.room,
        channel: &key.channel,
        client_id: from,
        user: client.user.as_deref(),
        info: client.info.as_deref(),
    };
    let frame = encode::event(router.message_id(), Timestamp::now(), &payload);
    channel.deliver_member_event(&frame, Some(from));
    if let Some(broker) = router.broker() {
        broker.forward(Delivery::Channel { key: key.clone(), frame, from, place: Place::Unstored });
    }
}

/// `members_changed`: what member events were not sent stand for.
#[derive(Serialize)]
struct MembersChanged<'a> {
    event: &'static str,
    room: &'a Name,
    channel: &'a Name,
    /// Members now, on every node.
    members: usize,
    /// Member events this summary replaces.
    suppressed: u64,
}

/// Sends the summary of the member events counted since the first one,
/// [`SUMMARY_DELAY`] later, to every member that wants member events (on
/// every node). At most one is pending per channel.
async fn summarize_member_events(router: Router, channel: Arc<Channel>) {
    tokio::time::sleep(SUMMARY_DELAY).await;
    let suppressed = channel.take_suppressed_member_events();
    if suppressed == 0 || channel.is_deleted() {
        return;
    }
    let key = &channel.key;
    let payload = MembersChanged {
        event: "members_changed",
        room: &key.room,
        channel: &key.channel,
        members: router.cluster_members(key, channel.member_count()),
        suppressed,
    };
    let mut ids = IdGenerator::new();
    let frame = encode::event(ids.message_id(), Timestamp::now(), &payload);
    channel.deliver_member_event(&frame, None);
    if let Some(broker) = router.broker() {
        // No sender to leave out: an id no client has.
        broker.forward(Delivery::Channel { key: key.clone(), frame, from: ids.client_id(), place: Place::Unstored });
    }
}
