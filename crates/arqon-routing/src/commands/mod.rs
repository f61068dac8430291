//! The built-in commands: one table (read by `help` and by dispatch), one
//! module per command, and the shared argument parser.

mod args;
mod batch;
mod channel_info;
mod create_channel;
mod delete_channel;
mod deliver;
mod disconnect;
mod help;
mod history;
mod join_channel;
mod leave;
mod list_channels;
mod ping;
mod presence;
mod publish;
mod status;
mod subscribe;

use arqon_protocol::encode;
use arqon_protocol::{MessageId, Role, Timestamp};
use serde::Serialize;

pub(crate) use args::{ArgKind, ArgSpec, Args};

use crate::RoutingError;
use crate::session::Session;

/// Which command; dispatch is one `match` on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Ping,
    Status,
    Help,
    CreateChannel,
    DeleteChannel,
    JoinChannel,
    LeaveChannel,
    ListChannels,
    ChannelInfo,
    History,
    Publish,
    Presence,
    PresenceStats,
    Broadcast,
    Send,
    Disconnect,
    Subscribe,
    Unsubscribe,
    Batch,
}

/// A command's entry in the table.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) description: &'static str,
    pub(crate) role: Role,
    pub(crate) args: &'static [ArgSpec],
    pub(crate) kind: Kind,
    /// Who may run it.
    pub(crate) surface: Surface,
}

/// Where a command may be run from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Surface {
    /// WebSocket clients and the server API.
    Both,
    /// The server API alone (the application's backend).
    Api,
}

/// Every command, in the order `help` lists them.
pub(crate) static COMMANDS: [&Spec; 19] = [
    &ping::SPEC,
    &status::SPEC,
    &help::SPEC,
    &create_channel::SPEC,
    &delete_channel::SPEC,
    &join_channel::SPEC,
    &leave::SPEC,
    &list_channels::SPEC,
    &channel_info::SPEC,
    &history::SPEC,
    &publish::SPEC,
    &presence::SPEC,
    &presence::STATS_SPEC,
    &deliver::BROADCAST_SPEC,
    &deliver::SEND_SPEC,
    &disconnect::SPEC,
    &subscribe::SPEC,
    &subscribe::UNSUBSCRIBE_SPEC,
    &batch::SPEC,
];

pub(crate) fn find(name: &str) -> Option<&'static Spec> {
    COMMANDS.iter().copied().find(|spec| spec.name == name)
}

/// What a running command may use: the caller's session and the id to answer.
pub(crate) struct Ctx<'s> {
    pub(crate) session: &'s mut Session,
    pub(crate) request_id: Option<MessageId>,
    pub(crate) now: Timestamp,
}

impl Ctx<'_> {
    /// Queues the command's one response.
    pub(crate) fn respond(&mut self, payload: &impl Serialize) {
        if self.session.client.server {
            // Our payload types serialize infallibly.
            self.session.captured = Some(serde_json::to_string(payload).unwrap_or_else(|_| "null".to_owned()));
            return;
        }
        let frame = encode::response(self.session.ids.message_id(), Timestamp::now(), self.request_id, payload);
        self.session.push(frame);
    }
}

/// Runs a command whose args parsed and whose role check passed.
pub(crate) async fn run(spec: &Spec, ctx: &mut Ctx<'_>, args: Args<'_>) -> Result<(), RoutingError> {
    match spec.kind {
        Kind::Ping => ping::run(ctx),
        Kind::Status => status::run(ctx),
        Kind::Help => help::run(ctx),
        Kind::CreateChannel => create_channel::run(ctx, &args).await,
        Kind::DeleteChannel => delete_channel::run(ctx, &args).await,
        Kind::JoinChannel => join_channel::run(ctx, &args).await,
        Kind::LeaveChannel => leave::run(ctx, &args),
        Kind::ListChannels => list_channels::run(ctx, &args),
        Kind::ChannelInfo => channel_info::run(ctx, &args).await,
        Kind::History => history::run(ctx, &args).await,
        Kind::Publish => publish::run(ctx, &args).await,
        Kind::Presence => presence::run(ctx, &args).await,
        Kind::PresenceStats => presence::run_stats(ctx, &args).await,
        Kind::Broadcast => deliver::run_broadcast(ctx, &args).await,
        Kind::Send => deliver::run_send(ctx, &args).await,
        Kind::Disconnect => disconnect::run(ctx, &args).await,
        Kind::Subscribe => subscribe::run(ctx, &args).await,
        Kind::Unsubscribe => subscribe::run_unsubscribe(ctx, &args).await,
        Kind::Batch => batch::run(ctx, &args).await,
    }
}

/// A required argument that is missing (the spec requires it, so only a
/// command reading the wrong name gets here).
pub(crate) fn missing(name: &str) -> arqon_protocol::ProtocolError {
    arqon_protocol::ProtocolError::new(arqon_protocol::ErrorCode::InvalidArgs, format!("missing argument {name:?}"))
}

/// The `room` + `channel` pair most commands take.
const ROOM: ArgSpec = ArgSpec::required("room", ArgKind::Name, "room name");
const CHANNEL: ArgSpec = ArgSpec::required("channel", ArgKind::Name, "channel name within the room");
const ROOM_CHANNEL: [ArgSpec; 2] = [ROOM, CHANNEL];
