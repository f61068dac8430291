//! The seam through which the application may decide who joins a channel
//! (the server's join hook, docs/hooks.md): asked on every join in a room
//! whose `join_hook` option is on, after the bus's own checks.

use std::future::Future;
use std::pin::Pin;

use arqon_protocol::{ChannelKey, ClientId, ProtocolError, RawValue, Role};

/// Who wants to join what.
#[derive(Debug, Clone)]
pub struct JoinAsk<'a> {
    /// The channel.
    pub key: &'a ChannelKey,
    /// The connection.
    pub client_id: ClientId,
    /// Its user, if any.
    pub user: Option<&'a str>,
    /// Its role.
    pub role: Role,
    /// Its credential's `info`, if any.
    pub info: Option<&'a RawValue>,
}

/// What [`JoinGuard::allow`] returns: `Ok` lets the join go on; an error is
/// the client's answer (`FORBIDDEN` for a refusal).
pub type JoinVerdict = Pin<Box<dyn Future<Output = Result<(), ProtocolError>> + Send>>;

/// Decides joins in rooms with the `join_hook` option. Called on the join's
/// path (the joiner waits, nobody else does): it may take as long as the
/// application takes, within its own timeout.
pub trait JoinGuard: Send + Sync + std::fmt::Debug + 'static {
    /// Whether the join in `ask` may go on.
    fn allow(&self, ask: &JoinAsk<'_>) -> JoinVerdict;
}
