//! `presence` and `presence_stats`: who is in a channel (PROTOCOL.md 8.2).

use arqon_protocol::{ClientId, ErrorCode, ProtocolError, RawValue, Role, Timestamp};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, CHANNEL, Ctx, Kind, ROOM, ROOM_CHANNEL, Spec, Surface};
use crate::channel::Channel;
use crate::router::not_found;
use crate::{PresenceEntry, RoutingError};

/// `limit` when the caller gives none.
const DEFAULT_LIMIT: u64 = 100;

pub(crate) static SPEC: Spec = Spec {
    name: "presence",
    description: "The members of a channel, ordered by client id, `limit` (1..1000, default 100) at a time after \
                  the client id `after`; with the number of connections (`total`) and distinct users (`users`).",
    role: Role::Guest,
    args: &[
        ROOM,
        CHANNEL,
        ArgSpec::optional("limit", ArgKind::Limit, "how many members, 1 to 1000 (default 100)"),
        ArgSpec::optional("after", ArgKind::ClientId, "the last client id of the previous page"),
    ],
    kind: Kind::Presence,
    surface: Surface::Both,
};

pub(crate) static STATS_SPEC: Spec = Spec {
    name: "presence_stats",
    description: "The number of connections (`total`) and distinct users (`users`) in a channel.",
    role: Role::User,
    args: &ROOM_CHANNEL,
    kind: Kind::PresenceStats,
    surface: Surface::Api,
};

#[derive(Serialize)]
struct Member<'a> {
    client_id: ClientId,
    user: Option<&'a str>,
    info: Option<&'a RawValue>,
    joined_at: Timestamp,
}

#[derive(Serialize)]
struct Page<'a> {
    members: Vec<Member<'a>>,
    total: usize,
    users: usize,
}

#[derive(Serialize)]
struct Stats {
    total: usize,
    users: usize,
}

/// The channel, if the caller may see who is in it.
fn channel(ctx: &Ctx<'_>, args: &Args<'_>) -> Result<std::sync::Arc<Channel>, RoutingError> {
    let key = args.channel_key()?;
    ctx.session.require_room(&key.room)?;
    let router = &ctx.session.router;
    if !router.room_options(&key.room).presence {
        return Err(ProtocolError::new(ErrorCode::Forbidden, format!("presence is off in room {}", key.room)).into());
    }
    Ok(router.lookup(&key).ok_or_else(|| not_found(&key))?)
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let channel = channel(ctx, args)?;
    let limit = usize::try_from(args.int("limit").unwrap_or(DEFAULT_LIMIT)).unwrap_or(usize::MAX);
    let after = args.client_id("after");
    if let Some(broker) = ctx.session.router.broker().cloned() {
        let everyone = cluster_members(&channel, broker.presence(&channel.key).await);
        let (total, users) = counts(&everyone);
        let page: Vec<&PresenceEntry> =
            everyone.iter().filter(|e| after.is_none_or(|after| e.client_id > after)).take(limit).collect();
        let infos: Vec<Option<Box<RawValue>>> =
            page.iter().map(|e| e.info.clone().and_then(|info| RawValue::from_string(info).ok())).collect();
        let members = page
            .iter()
            .zip(&infos)
            .map(|(e, info)| Member {
                client_id: e.client_id,
                user: e.user.as_deref(),
                info: info.as_deref(),
                joined_at: e.joined_at,
            })
            .collect();
        ctx.respond(&Page { members, total, users });
        return Ok(());
    }
    let presence = channel.presence(after, limit);
    let members = presence
        .page
        .iter()
        .map(|(client, joined_at)| Member {
            client_id: client.id,
            user: client.user.as_deref(),
            info: client.info.as_deref(),
            joined_at: *joined_at,
        })
        .collect();
    ctx.respond(&Page { members, total: presence.total, users: presence.users });
    Ok(())
}

pub(crate) async fn run_stats(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let channel = channel(ctx, args)?;
    let (total, users) = match ctx.session.router.broker().cloned() {
        Some(broker) => counts(&cluster_members(&channel, broker.presence(&channel.key).await)),
        None => channel.presence_counts(),
    };
    ctx.respond(&Stats { total, users });
    Ok(())
}

/// The channel's members on every node, ordered by client id, each once.
fn cluster_members(channel: &Channel, remote: Vec<PresenceEntry>) -> Vec<PresenceEntry> {
    let mut everyone = channel.presence_entries();
    everyone.extend(remote);
    everyone.sort_unstable_by_key(|e| e.client_id);
    everyone.dedup_by_key(|e| e.client_id);
    everyone
}

/// Connections and distinct users (an anonymous member counts as one).
fn counts(members: &[PresenceEntry]) -> (usize, usize) {
    let named: std::collections::HashSet<&str> = members.iter().filter_map(|e| e.user.as_deref()).collect();
    (members.len(), named.len() + members.iter().filter(|e| e.user.is_none()).count())
}
