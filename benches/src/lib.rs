//! Shared fixtures for the ArqonBus criterion benches (`cargo bench -p arqon-benches`).
//!
//! The benches measure the server's hot path in process, without sockets:
//! `protocol` (envelope decode and encode), `fanout` (a channel message
//! through [`Session::handle_text`] to 1, 100 and 1,000 members, inboxes
//! drained), `storage` (memory backend append and history) and `commands`
//! (ping, join and leave through the session). The load generator
//! (`bins/arqon-bench`) measures the same path end to end over WebSocket.
//!
//! Every bench builds its inputs here, so they all speak of the same frames:
//! 256-byte payloads like the load generator's.

use std::sync::Arc;

use arqon_protocol::Role;
use arqon_routing::{Identity, Inbox, Router, RouterConfig, Session};
use arqon_storage::MemoryStorage;

/// Payload size of every benchmark message, as in the load generator.
pub const PAYLOAD_BYTES: usize = 256;

/// Room every bench uses.
pub const ROOM: &str = "bench";

/// A JSON object of exactly `bytes` bytes (at least 10): `{"x":"xx…"}`.
pub fn payload(bytes: usize) -> String {
    let pad = bytes.saturating_sub(r#"{"x":""}"#.len());
    format!(r#"{{"x":"{}"}}"#, "x".repeat(pad))
}

/// A client `message` frame to `ROOM`/`channel` with a payload of `bytes`.
pub fn message_frame(channel: &str, bytes: usize) -> String {
    format!(r#"{{"type":"message","room":"{ROOM}","channel":"{channel}","payload":{}}}"#, payload(bytes))
}

/// A `join_channel` (or any room + channel command) frame.
pub fn channel_command(command: &str, channel: &str) -> String {
    format!(r#"{{"type":"command","command":"{command}","args":{{"room":"{ROOM}","channel":"{channel}"}}}}"#)
}

/// A single-threaded runtime: the benches measure one core's work.
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(e) => panic!("cannot build a tokio runtime: {e}"),
    }
}

/// A router as the load benchmark configures the server: the per-client
/// rate limit lifted, history on (1,000 per channel, in memory), the default
/// backlog limits (64 MiB per client, 1 GiB in all).
pub fn router() -> Router {
    let config = RouterConfig { rate_per_s: 0, bytes_per_s: 0, ..RouterConfig::default() };
    Router::new(config, Arc::new(MemoryStorage::new(MemoryStorage::DEFAULT_MAX_PER_CHANNEL)))
}

/// Connects a client with role `user`.
pub fn connect(router: &Router) -> (Session, Inbox) {
    match router.connect(Identity::new(Role::User)) {
        Ok(client) => client,
        Err(e) => panic!("cannot connect a bench client: {e}"),
    }
}

/// Takes everything queued for a client; returns how many items.
pub fn drain(inbox: &mut Inbox) -> usize {
    let mut n = 0;
    while let Ok(item) = inbox.frames.try_recv() {
        std::hint::black_box(item);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_what_they_claim() {
        assert_eq!(payload(PAYLOAD_BYTES).len(), PAYLOAD_BYTES);
        let rt = runtime();
        let router = router();
        let (mut member, mut member_inbox) = connect(&router);
        let (mut publisher, mut publisher_inbox) = connect(&router);
        rt.block_on(member.handle_text(&channel_command("join_channel", "c")));
        assert_eq!(drain(&mut member_inbox), 2, "welcome and the join response");
        rt.block_on(publisher.handle_text(&message_frame("c", PAYLOAD_BYTES)));
        assert_eq!(drain(&mut member_inbox), 1, "the message");
        assert_eq!(drain(&mut publisher_inbox), 1, "only the welcome: a message gets no reply");
    }
}
