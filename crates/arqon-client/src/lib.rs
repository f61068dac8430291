//! An async Rust client for ArqonBus: run every command of the wire protocol
//! (PROTOCOL.md, version 1), publish and subscribe, and stay subscribed across
//! dropped connections without losing or repeating channel messages.
//!
//! The entry point is [`Client::connect`] (or [`Client::connect_with`] and
//! [`ClientOptions`]); incoming messages and events arrive on the [`Events`]
//! stream from [`Client::events`]; every failure is a [`ClientError`]. This
//! crate depends on `arqon-protocol` only (for ids, names, roles and error
//! codes), never on the server crates, so it builds without them.
//!
//! # Example
//!
//! ```no_run
//! use arqon_client::{Client, Incoming};
//! use futures_util::StreamExt;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let client = Client::connect("ws://127.0.0.1:9100/ws").await?;
//!     let mut events = client.events().ok_or("events already taken")?;
//!
//!     client.join("lobby", "general").await?;
//!     let id = client.publish("lobby", "general", &serde_json::json!({"text": "hello"})).await?;
//!     println!("stored as {id}");
//!
//!     let info = client.channel_info("lobby", "general").await?;
//!     println!("{} members, {} messages kept", info.members, info.stored);
//!
//!     while let Some(item) = events.next().await {
//!         match item {
//!             Incoming::Message(message) => println!("{}: {}", message.from_label(), message.payload.get()),
//!             Incoming::Reconnected { rejoined, .. } => println!("back, re-joined {}", rejoined.len()),
//!             other => println!("{other:?}"),
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Layout
//!
//! - [`Client`]: a cheap, cloneable handle. Typed helpers for every command
//!   of PROTOCOL.md section 4 ([`Client::ping`], [`Client::status`],
//!   [`Client::help`], [`Client::create_channel`], [`Client::delete_channel`],
//!   [`Client::join_channel`], [`Client::leave_channel`],
//!   [`Client::list_channels`], [`Client::channel_info`], [`Client::history`],
//!   [`Client::publish`], and [`Client::presence`] of section 8.2),
//!   [`Client::command`] for any command as JSON, and
//!   [`Client::send`] for fire-and-forget messages.
//! - A background task owns the WebSocket. Handles reach it through a bounded
//!   queue; it matches each `response`/`error` to its request by id, and a
//!   request that gets no answer within [`ClientOptions::request_timeout`]
//!   fails with [`ClientError::Timeout`].
//! - [`ServerApi`]: the bus's HTTP API for application backends
//!   (PROTOCOL.md section 8.3): publish as `server`, broadcast, direct
//!   messages to users, presence, disconnect and (un)subscribe clients, with
//!   an API key; refusals are [`ClientError::Api`] with the HTTP status.
//! - [`Events`]: a bounded [`Stream`](futures_util::Stream) of [`Incoming`]
//!   items.
//!
//! # Reconnecting
//!
//! When the connection drops (an I/O error, a close, or two heartbeat
//! intervals without any frame or ping from the bus), requests in flight fail
//! with [`ClientError::ConnectionLost`], [`Incoming::Disconnected`] is
//! emitted, and the task reconnects with exponential backoff and jitter.
//! Requests made meanwhile wait (within their timeout) and are sent once
//! connected. The client then re-joins every channel it was in with `since` =
//! the last message it delivered from that channel, drops any id it already
//! delivered, and emits [`Incoming::Reconnected`].
//!
//! The guarantee: each channel message arrives on [`Events`] once, in the
//! bus's order, with nothing missing, **as long as the channel's history
//! still holds the last message delivered** (the in-memory backend keeps the
//! newest 1,000 per channel). If it does not, the replay starts at the oldest
//! kept message and an [`Incoming::Truncated`] says messages may be missing.
//! Room-wide and direct messages are never stored by the bus, so those sent
//! while disconnected are lost.
//!
//! In a cluster, a bus node that lost touch with the others (a Redis outage)
//! may say [`Event::ChannelGap`]: what it delivered from a channel after
//! `last_id` was not the channel's history. The client emits the event and
//! repairs the channel the same way: it re-joins from `last_id`, drops live
//! copies until the answer (the replay right after it holds them), and
//! delivers only ids it had not delivered.
//!
//! The same replay covers a slow consumer: when the [`Events`] queue is full,
//! a channel's messages are paused, and replayed from history once the queue
//! has drained to half.

mod api;
mod backoff;
mod client;
mod driver;
mod error;
mod events;
mod options;
mod tls;
mod types;
mod wire;

pub use api::{BatchCommand, ServerApi};
pub use arqon_protocol::{ChannelKey, ClientId, ErrorCode, MessageId, Name, RawValue, Role, Sender, Target, Timestamp};
pub use client::{Client, PublishOptions};
pub use error::ClientError;
pub use events::Events;
pub use options::ClientOptions;
pub use types::{
    ArgHelp, ChannelCreated, ChannelDeleted, ChannelInfo, ChannelList, ChannelSummary, CommandHelp, Event, Help,
    Incoming, Joined, Left, Limits, Message, Pong, Presence, PresenceMember, PresenceStats, ServerInfo, Status,
    StorageStatus,
};
