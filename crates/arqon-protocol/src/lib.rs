//! The ArqonBus wire protocol, version 1: what travels over the socket and
//! nothing else.
//!
//! This crate owns the envelope (decoding a client frame, encoding every frame
//! the server sends), message and client ids (`arq_` + ULID), room and channel
//! names, timestamps, roles and the error codes of the contract. It performs no
//! I/O, spawns nothing and depends on no other arqon crate, so clients, tools
//! and third-party backends can pin it alone.
//!
//! # Layout
//!
//! - [`MessageId`], [`ClientId`], [`IdGenerator`]: `arq_`-prefixed ULIDs.
//! - [`Name`], [`ChannelKey`]: validated room and channel names.
//! - [`Timestamp`]: RFC 3339 UTC with milliseconds.
//! - [`decode`]: a client's text frame to a [`ClientFrame`], or a
//!   [`ProtocolError`] carrying the wire [`ErrorCode`] to report.
//! - [`RawJson`]: a validated JSON value borrowed from a frame (`payload`,
//!   `args`, `meta`), passed through untouched.
//! - [`Frame`] and the builders in [`encode`]: server frames, serialized once
//!   and shared by every receiver.
//! - [`CloseReason`]: the WebSocket close codes and reasons the bus sends.
//! - [`scratch`]: per-thread reusable byte buffers, so that encoding a frame
//!   allocates only the frame itself (plain thread-local memory, no I/O).
//!
//! A connection's outbound queue is not here: it is async plumbing between
//! routing and transport, and lives in `arqon-outbound`.

mod close;
mod decode;
pub mod encode;
mod error;
mod id;
mod name;
mod role;
mod scan;
pub mod scratch;
mod timestamp;

pub use close::CloseReason;
pub use decode::{
    ClientFrame, FrameBody, MAX_USER_BYTES, Target, USER_PREFIX, check_user, decode, decode_with, extract_id, parse_to,
};
pub use encode::{Frame, Sender};
pub use error::{ErrorCode, ProtocolError};
pub use id::{ClientId, IdGenerator, MessageId};
pub use name::{ChannelKey, Name, RecentNames};
pub use role::Role;
pub use scan::RawJson;
pub use timestamp::Timestamp;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: i64 = 1;

/// Most `meta` keys a client may attach to a message.
pub const MAX_META_KEYS: usize = 16;

/// How far (seconds) a client-supplied timestamp may lie from server time.
pub const MAX_CLOCK_SKEW_S: i64 = 300;

/// `serde_json::value::RawValue`, re-exported: payloads travel as raw JSON
/// (a decoded frame lends them out as [`RawJson`]; `RawJson::from` a `&RawValue`).
pub use serde_json::value::RawValue;
