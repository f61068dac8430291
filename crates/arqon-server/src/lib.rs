//! The ArqonBus server: wires configuration, storage, routing, transport and
//! telemetry into one running bus.
//!
//! This crate owns process-level concerns: turning a [`Config`] into a
//! router and listeners, the command line, log set-up and signal handling.
//! It is the only crate that depends on every layer; nothing depends on it
//! except the `arqonbus` binary and the end-to-end tests.
//!
//! # Layout
//!
//! - [`Bus`]: a bound, not yet serving bus; [`Bus::serve`] runs it until a
//!   shutdown future resolves.
//! - [`cli`]: the `arqonbus` command line (`--config`, `--help`).
//! - [`ServerError`]: this crate's error.

mod bridge;
mod storage;
pub mod cli;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use arqon_config::Config;
use arqon_routing::{Router, RouterConfig};
use arqon_transport::TransportConfig;
use tokio::net::TcpListener;

use crate::bridge::BusAcceptor;

/// Everything that can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] arqon_config::ConfigError),
    /// Logging could not be set up.
    #[error(transparent)]
    Telemetry(#[from] arqon_telemetry::TelemetryError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// Restoring state from storage failed.
    #[error(transparent)]
    Routing(#[from] arqon_routing::RoutingError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] arqon_transport::TransportError),
    /// A bad command line.
    #[error("{0}")]
    Usage(String),
}

/// A bus whose listener is bound: its address is known (useful with port 0)
/// before it starts serving.
#[derive(Debug)]
pub struct Bus {
    router: Router,
    listener: TcpListener,
    transport: TransportConfig,
    default_role: arqon_protocol::Role,
}

impl Bus {
    /// Builds storage and router from `config` and binds the WebSocket
    /// listener.
    pub async fn bind(config: &Config) -> Result<Bus, ServerError> {
        let storage = storage::open_storage(config).await?;
        let router = Router::new(router_config(config), storage);
        let restored = router.restore().await?;
        if restored > 0 {
            tracing::info!(channels = restored, "restored channels from storage");
        }
        let addr = config.listen_addr();
        let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Bus {
            router,
            listener,
            transport: transport_config(config),
            default_role: config.auth.default_role,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The router, for embedding or inspection.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Serves until `shutdown` resolves, then closes every connection
    /// (the `shutdown` event, close 1001) within the configured grace.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let acceptor = Arc::new(BusAcceptor::new(self.router.clone(), self.default_role));
        tracing::info!(addr = %self.local_addr(), "serving WebSocket clients");
        arqon_transport::serve(self.listener, acceptor, self.transport, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    }
}

fn router_config(config: &Config) -> RouterConfig {
    RouterConfig {
        auto_create: config.channels.auto_create,
        rate_per_s: config.limits.rate_per_s,
        burst: config.limits.burst,
        outbound_queue: config.limits.outbound_queue,
        member_events_max: config.limits.member_events_max,
        max_message_bytes: config.limits.max_message_bytes,
        heartbeat_s: config.server.heartbeat_s,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

fn transport_config(config: &Config) -> TransportConfig {
    TransportConfig {
        max_message_bytes: config.limits.max_message_bytes,
        heartbeat: Duration::from_secs(config.server.heartbeat_s),
        shutdown_grace: Duration::from_millis(config.server.shutdown_grace_ms),
        ..TransportConfig::default()
    }
}
