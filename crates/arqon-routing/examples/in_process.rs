//! The bus with no network: arqon-routing and arqon-protocol (with the
//! in-memory storage, and arqon-outbound for what a client is sent) inside
//! one process. Two clients join a channel, one
//! publishes, the other receives the message, and a third reads history.
//!
//! Run it: `cargo run -p arqon-routing --example in_process`. A service can
//! feed `Session::handle_text` frames from any transport (a queue, a unix
//! socket, a test) and write out what each client's `Inbox` yields.

use std::collections::VecDeque;
use std::sync::Arc;

use arqon_outbound::Outbound;
use arqon_protocol::Role;
use arqon_routing::{Identity, Inbox, Router, RouterConfig, Session};
use arqon_storage::MemoryStorage;
use serde_json::Value;

/// One client of the bus: its session (frames in) and what it was sent.
struct Client {
    session: Session,
    inbox: Inbox,
    received: VecDeque<Value>,
}

impl Client {
    fn connect(router: &Router, role: Role) -> Option<Client> {
        let (session, inbox) = router.connect(Identity::new(role)).ok()?;
        Some(Client { session, inbox, received: VecDeque::new() })
    }

    /// The next frame this client is sent, as JSON (`None` once closed).
    async fn next(&mut self) -> Option<Value> {
        while self.received.is_empty() {
            // A writer would put these on a socket as they are.
            let frames = match self.inbox.frames.recv().await? {
                Outbound::Frame(frame) => vec![frame],
                Outbound::Batch(frames) => frames.into_vec(),
                Outbound::Spliced(spliced) => vec![spliced.to_frame()],
                _ => Vec::new(),
            };
            let texts = frames.iter().filter_map(|f| serde_json::from_str(f.as_str()).ok());
            self.received.extend(texts);
        }
        self.received.pop_front()
    }

    /// The next frame whose `type` is `kind`, skipping others (member events…).
    async fn next_of(&mut self, kind: &str) -> Option<Value> {
        loop {
            let frame = self.next().await?;
            if frame["type"] == kind {
                return Some(frame);
            }
        }
    }
}

/// Alice and Bob in `chat/general`; Alice publishes; returns what Bob
/// received and what a late reader finds in history.
async fn demo() -> Option<(Value, Value)> {
    let router = Router::new(RouterConfig::default(), Arc::new(MemoryStorage::new(1000)));
    let mut alice = Client::connect(&router, Role::User)?;
    let mut bob = Client::connect(&router, Role::User)?;
    alice.next_of("event").await?; // welcome
    bob.next_of("event").await?;

    let join = r#"{"type":"command","command":"join_channel","args":{"room":"chat","channel":"general"}}"#;
    alice.session.handle_text(join).await;
    alice.next_of("response").await?;
    bob.session.handle_text(join).await;
    bob.next_of("response").await?;

    let publish = r#"{"type":"command","command":"publish",
        "args":{"room":"chat","channel":"general","payload":{"text":"hello, Bob"}}}"#;
    alice.session.handle_text(publish).await;
    let stored = alice.next_of("response").await?;
    let delivered = bob.next_of("message").await?;
    assert_eq!(delivered["id"], stored["payload"]["id"], "Bob got the message Alice stored");

    let mut late = Client::connect(&router, Role::Guest)?;
    late.next_of("event").await?;
    let history = r#"{"type":"command","command":"history","args":{"room":"chat","channel":"general"}}"#;
    late.session.handle_text(history).await;
    let history = late.next_of("response").await?;
    Some((delivered, history["payload"].clone()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    match demo().await {
        Some((delivered, history)) => {
            println!("Bob received: {delivered}");
            println!("history now: {history}");
        }
        None => {
            eprintln!("the demo ended early");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_message_goes_from_alice_to_bob_and_into_history() {
        let (delivered, history) = super::demo().await.expect("the demo runs to the end");
        assert_eq!(delivered["payload"]["text"], "hello, Bob");
        assert_eq!(delivered["room"], "chat");
        let messages = history["messages"].as_array().expect("history lists messages");
        assert_eq!(messages.len(), 1, "{history}");
        assert_eq!(messages[0]["id"], delivered["id"]);
    }
}
