//! `history`: the newest kept messages of a channel, oldest first.

use arqon_outbound::{Outbound, Spliced};
use arqon_protocol::{Frame, Role, Timestamp, encode};

use super::{ArgKind, ArgSpec, Args, CHANNEL, Ctx, Kind, ROOM, Spec, Surface};
use crate::router::not_found;
use crate::{RoutingError, retention};

/// `limit` when the client gives none.
const DEFAULT_LIMIT: u64 = 50;

pub(crate) static SPEC: Spec = Spec {
    name: "history",
    description: "The newest `limit` (1..1000, default 50) messages older than `before` (or overall), oldest first.",
    role: Role::Guest,
    args: &[
        ROOM,
        CHANNEL,
        ArgSpec::optional("limit", ArgKind::Limit, "how many messages, 1 to 1000 (default 50)"),
        ArgSpec::optional("before", ArgKind::MessageId, "only messages stored before this one"),
    ],
    kind: Kind::History,
    surface: Surface::Both,
};

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<(), RoutingError> {
    let key = args.channel_key()?;
    ctx.session.require_room(&key.room)?;
    let router = ctx.session.router.clone();
    router.lookup(&key).ok_or_else(|| not_found(&key))?;
    let limit = usize::try_from(args.int("limit").unwrap_or(DEFAULT_LIMIT)).unwrap_or(usize::MAX);
    let options = router.room_options(&key.room);
    let before = args.message_id("before");
    let messages = match options.history_size {
        // The room shows only its newest `history_size`: page within them.
        Some(size) => {
            let window = router.inner.storage.history(&key, size, None).await?;
            retention::page(retention::history(options, Timestamp::now(), window), limit, before)
        }
        None => {
            let messages = router.inner.storage.history(&key, limit, before).await?;
            retention::history(options, Timestamp::now(), messages)
        }
    };
    // Stored frames are embedded as they are, never re-parsed nor copied:
    // the writer sends them from history's own memory. The response still
    // counts in full against the client's backlog.
    let items: Box<[Frame]> = messages.into_iter().map(|m| m.frame).collect();
    if ctx.session.client.server {
        // The server API answers with the payload alone.
        let mut payload = String::from("{\"messages\":[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                payload.push(',');
            }
            payload.push_str(item.as_str());
        }
        payload.push_str("]}");
        ctx.session.captured = Some(payload);
        return Ok(());
    }
    let head = encode::messages_response_head(ctx.session.ids.message_id(), Timestamp::now(), ctx.request_id);
    let spliced = Spliced { head, items, tail: encode::MESSAGES_RESPONSE_TAIL };
    ctx.session.client.outlet.push(Outbound::Spliced(Box::new(spliced)));
    Ok(())
}
