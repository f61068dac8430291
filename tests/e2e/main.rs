//! End-to-end tests: a real server on 127.0.0.1 port 0, real WebSocket
//! clients, every rule of docs/protocol.md checked on the wire; and the
//! repository's own consistency (layer order, links in the docs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
#[cfg(feature = "redis")]
mod cluster;
mod commands;
mod compression;
mod deploy;
mod errors;
mod hooks;
mod layers;
mod lifecycle;
mod links;
mod monitoring;
#[cfg(feature = "redis")]
mod redis;
mod routing;
mod security;
mod storage;
mod webhooks;
