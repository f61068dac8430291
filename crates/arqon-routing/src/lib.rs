//! The ArqonBus core: who is connected, which channels exist, who is in
//! them, and where each frame goes. Usable with no network at all.
//!
//! This layer owns the client registry, rooms and channels, the router (every
//! routing rule of PROTOCOL.md section 3), the command executor (section 4),
//! role checks, per-client rate limiting and each client's bounded outbound
//! queue. It depends on `arqon-protocol` and on the `Storage` trait of
//! `arqon-storage`; it knows nothing of sockets, HTTP or configuration files,
//! so a service can embed it and feed it frames from anywhere.
//!
//! # Layout
//!
//! - [`Router`]: the bus; [`Router::connect`] registers a client and returns
//!   its [`Session`] (feed it frames) and [`Inbox`] (deliver what comes out).
//! - [`RouterConfig`]: limits and policies, among them the channel caps
//!   checked wherever a channel is created.
//! - [`Router::run_reclaim`]: the periodic removal of idle auto-created
//!   channels, run beside the bus until its shutdown future resolves.
//! - [`Broker`]: the seam for cross-node fan-out; with a broker, stored
//!   channel messages carry their [`Place`] in history and every node
//!   delivers them in history order, filling gaps from storage or telling
//!   members with `channel_gap` (`sequence`, [`Router::catch_up`]).
//! - [`Observer`], [`BusEvent`]: the seam for metrics and telemetry.
//! - [`JoinGuard`]: the seam for the application's say over joins (rooms
//!   with the `join_hook` option).
//! - [`RoutingError`]: this layer's error.
//!
//! # Embedding
//!
//! A longer example, two clients in a channel and history read back, is
//! `examples/in_process.rs` (`cargo run -p arqon-routing --example
//! in_process`; its test runs with the crate's).
//!
//! ```
//! use std::sync::Arc;
//! use arqon_protocol::Role;
//! use arqon_routing::{Identity, Router, RouterConfig};
//! use arqon_storage::MemoryStorage;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let router = Router::new(RouterConfig::default(), Arc::new(MemoryStorage::new(1000)));
//! let (mut session, mut inbox) = router
//!     .connect(Identity::new(Role::User))
//!     .expect("fresh client id");
//! session.handle_text(r#"{"type":"command","command":"ping"}"#).await;
//! let _welcome = inbox.frames.recv().await;
//! let pong = inbox.frames.recv().await;
//! assert!(format!("{pong:?}").contains("pong"));
//! # }
//! ```

mod actions;
mod broker;
mod channel;
mod client;
mod commands;
mod config;
mod error;
mod join_guard;
mod member_events;
mod membership;
mod observer;
mod outlet;
mod rate;
mod reclaim;
mod retention;
mod room_options;
mod router;
mod session;

pub use broker::{
    ActionReport, ActionTarget, Broker, ClientAction, Delivery, Place, PresenceEntry, RemoteAction, RemotePresence,
    Subscribed,
};
pub use client::RoomAccess;
pub use config::{RateLimit, RouterConfig};
pub use error::RoutingError;
pub use join_guard::{JoinAsk, JoinGuard, JoinVerdict};
pub use observer::{BusEvent, FrameKind, LATENCY_SAMPLE, NoObserver, Observer};
pub use outlet::Inbox;
pub use rate::CallLimiter;
pub use room_options::{RoomOptions, RoomRule, RoomRules, glob_matches};
pub use router::{BusCounts, ChannelSummary, Identity, Router, RouterBuilder};
pub use session::{Arrival, Session};
