//! `presence` and `presence_stats`: who is in a channel (PROTOCOL.md 8.2).

use arqon_protocol::{ClientId, ErrorCode, ProtocolError, RawValue, Role, Timestamp};
use serde::Serialize;

use super::{ArgKind, ArgSpec, Args, CHANNEL, Ctx, Kind, ROOM, ROOM_CHANNEL, Spec, Surface};
use crate::RoutingError;
use crate::channel::Channel;
use crate::router::not_found;

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

pub(crate) fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let channel = channel(ctx, args)?;
    let limit = usize::try_from(args.int("limit").unwrap_or(DEFAULT_LIMIT)).unwrap_or(usize::MAX);
    let presence = channel.presence(args.client_id("after"), limit);
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

pub(crate) fn run_stats(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let channel = channel(ctx, args)?;
    let (total, users) = channel.presence_counts();
    ctx.respond(&Stats { total, users });
    Ok(())
}
