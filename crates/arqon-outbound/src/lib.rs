//! The plumbing between the bus and a connection's socket: what waits to be
//! written to each client, and how much of it the bus may hold.
//!
//! This crate owns the outbound backlog of PROTOCOL.md section 8.1: one
//! queue per connection, bounded in **bytes** of queued frames rather than in
//! frames, which also carries the reason the bus wants the connection closed;
//! and the [`Budget`], the memory held by the queued frames of all
//! connections together (a frame shared by many receivers counted once),
//! which closes the connections with the largest backlogs first when it is
//! exceeded; and a channel's [`Fanout`], which stores each frame the channel
//! delivers once, so that the queues of its members hold runs of shared
//! chunks rather than an entry per delivery. It is synchronous code over a mutex and a `std` waker: it spawns
//! nothing, performs no I/O and needs no runtime, so the routing layer (which
//! pushes) and the transport layer (whose writer drains) share it without
//! either knowing the other. It depends only on `arqon-protocol` (for the
//! frame and close-code types).
//!
//! # Layout
//!
//! - [`queue`]: a connection's [`OutboundSender`] and [`OutboundReceiver`].
//! - [`Outbound`]: one item of a backlog (a frame, a replay batch, binary data).
//! - [`Fanout`]: a channel's frames stored once, queued to each receiver as
//!   runs of a shared chunk instead of an entry per delivery.
//! - [`Budget`]: the global budget, shared by every queue of one bus.
//! - [`Closing`], [`SlowCause`]: why a connection is being closed.

mod budget;
mod fanout;
mod queue;

pub use budget::Budget;
pub use fanout::{Fanout, FanoutFrame};
pub use queue::{
    Closing, Outbound, OutboundReceiver, OutboundSender, Popped, Recv, SlowCause, Spliced, TryRecvError, TrySendError,
    queue,
};
