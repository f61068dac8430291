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
//!   shutdown future resolves. [`Bus::bind`] builds everything from the
//!   configuration; [`Bus::builder`] also takes parts the configuration
//!   cannot name, such as a storage backend of the embedder's own
//!   ([`BusBuilder::storage`]).
//! - [`Bus::endpoint`], [`BusBuilder::embedded`]: the bus mounted on a path
//!   of an HTTP server of the embedder's own (re-exported from
//!   `arqon-transport`: [`Endpoint`], [`Admitted`], [`websocket_accept`]).
//! - [`cli`]: the `arqonbus` command line (`--config`, `--help`).
//! - [`ServerError`]: this crate's error.

mod api;
mod auth;
mod bridge;
pub mod cli;
mod cluster;
mod connect_hook;
mod http_client;
mod instrumented;
mod join_hook;
mod monitor;
mod observer;
mod storage;
mod webhooks;

pub use webhooks::signature as webhook_signature;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use arqon_config::Config;
use arqon_routing::{RateLimit, RoomOptions, RoomRule, RoomRules, Router, RouterConfig};
use arqon_storage::Storage;
use arqon_transport::TransportConfig;
pub use arqon_transport::{Admitted, Endpoint, Refusal, UpgradeRequest, websocket_accept};
use tokio::net::TcpListener;

use crate::bridge::BusAcceptor;
use crate::instrumented::Instrumented;
use crate::monitor::BusMonitor;
use crate::observer::Telemetry;

/// Everything that can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] arqon_config::ConfigError),
    /// Logging could not be set up.
    #[error(transparent)]
    Telemetry(#[from] arqon_telemetry::TelemetryError),
    /// A listener could not be bound. The message names the setting that
    /// picks its port, so that a second instance knows what to change.
    #[error("cannot listen on {addr} ({what}): {source}; to use another port, set {key} in the config file or {var}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Which listener: `WebSocket clients` or `monitoring`.
        what: &'static str,
        /// The config key of its port, e.g. `server.port`.
        key: &'static str,
        /// The environment variable of its port, e.g. `ARQON_SERVER__PORT`.
        var: &'static str,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// Restoring state from storage failed.
    #[error(transparent)]
    Routing(#[from] arqon_routing::RoutingError),
    /// The storage backend could not be opened (e.g. a Redis URL that does
    /// not parse; an unreachable Redis is not an error).
    #[error(transparent)]
    Storage(#[from] arqon_storage::StorageError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] arqon_transport::TransportError),
    /// Authentication could not be set up (e.g. an unreadable key file).
    #[error("{0}")]
    Auth(String),
    /// The cluster broker could not be set up (e.g. a bad Redis URL; an
    /// unreachable Redis is not an error).
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Cluster(#[from] arqon_cluster::ClusterError),
    /// The configuration asks for something this build left out: Redis
    /// storage or clustering in a binary built without the `redis` feature.
    #[error(
        "{setting} needs Redis, but this binary was built without the `redis` feature; \
         rebuild with it (it is on by default: drop `--no-default-features`, or add `--features redis`), \
         or change the setting"
    )]
    NotBuiltIn {
        /// The setting that asks for it, e.g. `storage.backend = "redis"`.
        setting: &'static str,
    },
    /// The configuration asks for the redb backend in a binary built
    /// without the `redb` feature.
    #[error(
        "{setting} needs the embedded redb backend, but this binary was built without the `redb` feature; \
         rebuild with it (it is on by default: drop `--no-default-features`, or add `--features redb`), \
         or change the setting"
    )]
    RedbNotBuiltIn {
        /// The setting that asks for it: `storage.backend = "redb"`.
        setting: &'static str,
    },
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// A bad command line.
    #[error("{0}")]
    Usage(String),
}

/// A bus whose listener is bound: its address is known (useful with port 0)
/// before it starts serving.
#[derive(Debug)]
pub struct Bus {
    router: Router,
    /// None for an embedded bus ([`BusBuilder::embedded`]).
    listener: Option<TcpListener>,
    monitoring: Option<TcpListener>,
    transport: TransportConfig,
    acceptor: Arc<BusAcceptor>,
    endpoint: Endpoint,
    telemetry: Arc<Telemetry>,
    cluster: Option<(cluster::Broker, cluster::Handle)>,
    /// The degradation wrapper over Redis, whose journal the shutdown
    /// writes back within what is left of `shutdown_grace`.
    fallback: Option<Arc<arqon_storage::FallbackStorage>>,
    /// Sends the webhook events still queued at shutdown.
    webhooks: Option<webhooks::WebhookTask>,
    shutdown_grace: Duration,
    about: About,
}

/// What the start-up line says about the settings in force.
#[derive(Debug, Clone)]
struct About {
    /// `ws` or `wss`.
    scheme: &'static str,
    storage: &'static str,
    /// `none`, `token`, `jwt HS256`, `jwt RS256`.
    auth: String,
    rate_per_s: u32,
    max_message_bytes: usize,
    /// Who may open the dashboard and `/telemetry`.
    monitoring_access: arqon_transport::Access,
}

impl About {
    fn of(config: &Config, storage: &'static str) -> About {
        use arqon_config::{AuthMode, JwtAlgorithm};
        let auth = match config.auth.mode {
            AuthMode::None => format!("none (everyone is {})", config.auth.default_role),
            AuthMode::Token => "token".to_owned(),
            AuthMode::Jwt => match config.auth.jwt.algorithm {
                JwtAlgorithm::HS256 => "jwt HS256".to_owned(),
                JwtAlgorithm::RS256 => "jwt RS256".to_owned(),
            },
        };
        About {
            scheme: if config.tls.enabled() { "wss" } else { "ws" },
            storage,
            auth,
            rate_per_s: config.limits.rate_per_s,
            max_message_bytes: config.limits.max_message_bytes,
            monitoring_access: monitor::access(config),
        }
    }
}

/// The git revision the server was built from (`unknown` outside a git
/// checkout); see build.rs.
pub const GIT_REV: &str = env!("ARQON_GIT_REV");

/// Binds `addr`, or says which setting to change.
async fn listen(
    addr: SocketAddr,
    what: &'static str,
    key: &'static str,
    var: &'static str,
) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, what, key, var, source })
}

/// Builds a [`Bus`] from a configuration and parts it cannot name; start
/// one with [`Bus::builder`].
///
/// What is not given is built from the configuration, exactly as
/// [`Bus::bind`] does.
#[must_use = "a builder does nothing until bound"]
pub struct BusBuilder<'a> {
    config: &'a Config,
    storage: Option<Arc<dyn Storage>>,
    embedded: bool,
}

impl std::fmt::Debug for BusBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusBuilder")
            .field("storage", &self.storage.as_ref().map(|s| s.health().backend))
            .field("embedded", &self.embedded)
            .finish_non_exhaustive()
    }
}

impl BusBuilder<'_> {
    /// Keeps channels and history in `storage` instead of the backend the
    /// configuration names: any implementation of [`Storage`], such as a
    /// third-party backend crate (docs/storage.md, "Write your own backend").
    ///
    /// The `[storage]` section of the configuration is then not used at all:
    /// no Redis connection, no journal file. The bus restores the channels
    /// `storage` lists before it serves, reports its [`Health`] in `/status`
    /// and `/ready`, and names it in the start-up line by
    /// `Health::backend`. Its limits are the backend's own (the
    /// `limits.history_*` settings configure only the built-in memory
    /// backend). A [`FallbackStorage`] handed here is not closed by
    /// [`Bus::serve`]: call [`FallbackStorage::close`] after it returns to
    /// write its journal back.
    ///
    /// [`Health`]: arqon_storage::Health
    /// [`FallbackStorage`]: arqon_storage::FallbackStorage
    /// [`FallbackStorage::close`]: arqon_storage::FallbackStorage::close
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Binds no WebSocket listener of the bus's own: clients reach it only
    /// through [`Bus::endpoint`], mounted on a path of the embedder's HTTP
    /// server (docs/embedding.md). `server.host`, `server.port`, `tls` and
    /// `server.upgrade_timeout_ms` are then the embedder's business; every
    /// other setting applies as for a bus with its own listener, and the
    /// monitoring listener is bound if `monitoring.enabled`.
    pub fn embedded(mut self) -> Self {
        self.embedded = true;
        self
    }

    /// Opens what was not given, builds the router and binds the
    /// listeners; the bus is ready to [`serve`](Bus::serve).
    pub async fn bind(self) -> Result<Bus, ServerError> {
        let config = self.config;
        let (storage, fallback, storage_name) = match self.storage {
            Some(storage) => {
                let name = storage.health().backend;
                (storage, None, name)
            }
            None => {
                let (storage, fallback) = storage::open_storage(config).await?;
                (storage, fallback, config.storage.backend.as_str())
            }
        };
        Bus::assemble(config, storage, fallback, storage_name, self.embedded).await
    }
}

impl Bus {
    /// Builds storage and router from `config` and binds the WebSocket
    /// listener: the same as `Bus::builder(config).bind()`.
    pub async fn bind(config: &Config) -> Result<Bus, ServerError> {
        Bus::builder(config).bind().await
    }

    /// Starts building a bus from `config`, with parts of the embedder's
    /// own:
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use arqon_server::{Bus, Config};
    /// use arqon_storage::{MemoryStorage, Storage};
    ///
    /// # async fn run() -> Result<(), arqon_server::ServerError> {
    /// // Any `Storage`, e.g. a backend crate of your own.
    /// let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(10_000));
    /// let config = Config::default();
    /// let bus = Bus::builder(&config).storage(storage).bind().await?;
    /// bus.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
    /// # }
    /// ```
    pub fn builder(config: &Config) -> BusBuilder<'_> {
        BusBuilder { config, storage: None, embedded: false }
    }

    /// Builds the router over `storage` and binds the listeners.
    async fn assemble(
        config: &Config,
        storage: Arc<dyn Storage>,
        fallback: Option<Arc<arqon_storage::FallbackStorage>>,
        storage_name: &'static str,
        embedded: bool,
    ) -> Result<Bus, ServerError> {
        let telemetry = Arc::new(Telemetry::new(config.monitoring.telemetry_buffer));
        let broker = cluster::open_broker(config).await?;
        let (webhooks, webhook_task) = if config.webhooks.enabled() {
            let membership = broker.as_ref().map(cluster::membership);
            let (sink, task) = webhooks::WebhookSink::start(&config.webhooks, Arc::clone(&telemetry), membership)?;
            (Some(sink), Some(task))
        } else {
            (None, None)
        };
        // With monitoring off nothing would read the numbers: skip collecting them.
        let router = if config.monitoring.enabled {
            let storage: Arc<dyn Storage> = Arc::new(Instrumented::new(storage, Arc::clone(&telemetry)));
            let observer = observer::BusObserver { telemetry: Some(Arc::clone(&telemetry)), webhooks };
            Router::builder(router_config(config), storage).observer(Arc::new(observer))
        } else if webhooks.is_some() {
            let observer = observer::BusObserver { telemetry: None, webhooks };
            Router::builder(router_config(config), storage).observer(Arc::new(observer))
        } else {
            Router::builder(router_config(config), storage)
        };
        let router = match join_hook::HttpJoinGuard::from_config(&config.hooks)? {
            Some(guard) => router.join_guard(guard),
            None => router,
        };
        let router = match &broker {
            Some(broker) => router.broker(cluster::for_router(broker)).build(),
            None => router.build(),
        };
        let restored = router.restore().await?;
        if restored > 0 {
            tracing::info!(channels = restored, "restored channels from storage");
        }
        // Joins the cluster (when Redis answers) before clients can connect.
        let cluster = match broker {
            Some(broker) => {
                let handle = cluster::start(&broker, router.clone()).await;
                Some((broker, handle))
            }
            None => None,
        };
        let listener = if embedded {
            None
        } else {
            Some(listen(config.listen_addr(), "WebSocket clients", "server.port", "ARQON_SERVER__PORT").await?)
        };
        let monitoring = if config.monitoring.enabled {
            let addr = config.monitoring_addr();
            Some(listen(addr, "monitoring", "monitoring.port", "ARQON_MONITORING__PORT").await?)
        } else {
            None
        };
        let transport = transport_config(config)?;
        let authenticator = Arc::new(auth::Authenticator::from_config(&config.auth)?);
        let acceptor = Arc::new(BusAcceptor::new(
            router.clone(),
            authenticator,
            api::ApiKeys::new(&config.api),
            connect_hook::ConnectHook::from_config(&config.hooks)?,
        ));
        let endpoint = Endpoint::new(Arc::clone(&acceptor), transport.clone());
        Ok(Bus {
            router,
            listener,
            monitoring,
            transport,
            acceptor,
            endpoint,
            telemetry,
            cluster,
            fallback,
            webhooks: webhook_task,
            shutdown_grace: Duration::from_millis(config.server.shutdown_grace_ms),
            about: About::of(config, storage_name),
        })
    }

    /// The URL clients connect to: `ws://ADDR/ws`, or `wss://` with TLS.
    pub fn url(&self) -> String {
        format!("{}://{}/ws", self.about.scheme, self.local_addr())
    }

    /// The monitoring listener's base URL (`http://ADDR`), if it is enabled.
    pub fn monitoring_url(&self) -> Option<String> {
        self.monitoring_addr().map(|addr| format!("http://{addr}"))
    }

    /// The address clients connect to (`127.0.0.1:0` for an embedded bus,
    /// which has no listener of its own).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The bus's WebSocket endpoint, to mount on a path of an HTTP server
    /// of one's own (hyper, axum): each connection it serves is one of this
    /// bus's clients, with the same authentication, limits, heartbeat,
    /// close codes and slow-consumer policy as the bus's own listener, and
    /// [`serve`](Bus::serve) closes them at shutdown. Usually with an
    /// [`embedded`](BusBuilder::embedded) bus; see docs/embedding.md and
    /// the `embed_hyper` example.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    /// The monitoring listener's address, if it is enabled.
    pub fn monitoring_addr(&self) -> Option<SocketAddr> {
        self.monitoring.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// This node's id in the cluster, if `cluster.enabled`.
    pub fn node_id(&self) -> Option<&str> {
        self.cluster.as_ref().map(|(broker, _)| cluster::node_id(broker))
    }

    /// The router, for embedding or inspection.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Serves until `shutdown` resolves, then closes every connection
    /// (the `shutdown` event, close 1001) within the configured grace.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        // The one start-up line: what is running, and where.
        let url = if self.listener.is_some() { self.url() } else { "embedded (Bus::endpoint)".to_owned() };
        let monitoring_url = self.monitoring_url();
        let node = self.node_id().map(str::to_owned);
        let Bus {
            router,
            listener,
            monitoring,
            transport,
            acceptor,
            endpoint,
            telemetry,
            cluster,
            fallback,
            webhooks,
            shutdown_grace,
            about,
        } = self;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            git = GIT_REV,
            url = %url,
            monitoring = monitoring_url.as_deref().unwrap_or("off"),
            storage = about.storage,
            auth = %about.auth,
            tls = about.scheme == "wss",
            cluster = %node.as_deref().map_or("off".to_owned(), |id| format!("node {id}")),
            rate_per_s = about.rate_per_s,
            max_message_bytes = about.max_message_bytes,
            "ArqonBus started",
        );
        if let (Some(_), arqon_transport::Access::Closed(reason)) = (&monitoring_url, &about.monitoring_access) {
            tracing::warn!("{reason}");
        }
        let (broker, cluster_handle) = cluster.unzip();
        let accepting = Arc::new(AtomicBool::new(false));
        let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
        let monitor_task = monitoring.map(|listener| {
            let monitor = Arc::new(BusMonitor {
                router: router.clone(),
                telemetry: Arc::clone(&telemetry),
                accepting: Arc::clone(&accepting),
                broker: broker.clone(),
                url: url.clone(),
                access: about.monitoring_access.clone(),
            });
            let mut stopped = stopped_rx.clone();
            tokio::spawn(arqon_transport::serve_monitoring(listener, monitor, async move {
                let _ = stopped.wait_for(|s| *s).await;
            }))
        });
        let reclaim_task = tokio::spawn({
            let (router, mut stopped) = (router.clone(), stopped_rx.clone());
            async move { router.run_reclaim(async move { drop(stopped.wait_for(|s| *s).await) }).await }
        });
        let health_task =
            tokio::spawn(watch_health(router.clone(), broker.clone(), Arc::clone(&telemetry), stopped_rx));
        accepting.store(true, Ordering::Release);
        let flag = Arc::clone(&accepting);
        let (began_tx, began_rx) = tokio::sync::oneshot::channel();
        let hurry_webhooks = webhooks.as_ref().map(webhooks::WebhookTask::hurry);
        let shutdown = async move {
            shutdown.await;
            let began = tokio::time::Instant::now();
            let _ = began_tx.send(began);
            if let Some(hurry) = hurry_webhooks {
                hurry(began + shutdown_grace);
            }
            // Not ready from the first moment of shutdown, while connections drain.
            flag.store(false, Ordering::Release);
        };
        let result = match listener {
            Some(listener) => arqon_transport::serve(listener, acceptor, transport, shutdown).await,
            None => {
                shutdown.await;
                Ok(())
            }
        };
        // The connections an embedder's server handed over (none, usually,
        // when the bus has a listener of its own).
        endpoint.shutdown().await;
        let _ = stopped_tx.send(true);
        if let Some(task) = monitor_task {
            let _ = task.await;
        }
        let _ = health_task.await;
        let _ = reclaim_task.await;
        // What is left of the grace goes to writing the storage journal
        // back (what does not make it stays on disk for the next start) and,
        // meanwhile, to sending the webhook events still queued, which in a
        // cluster the ledger judges first: the node leaves the cluster after.
        let began = began_rx.await.unwrap_or_else(|_| tokio::time::Instant::now());
        let left = shutdown_grace.saturating_sub(began.elapsed());
        let journal = async {
            if let Some(fallback) = fallback {
                fallback.close(left).await;
            }
        };
        let events_then_cluster = async {
            if let Some(webhooks) = webhooks {
                webhooks.close(left).await;
            }
            // Last: the other nodes forget this one's clients at once.
            if let Some(handle) = cluster_handle {
                cluster::shutdown(handle).await;
            }
        };
        tokio::join!(journal, events_then_cluster);
        tracing::info!("stopped");
        Ok(result?)
    }
}

/// Polls storage (and cluster) health, so that a degradation or a recovery
/// shows up in the metrics, the telemetry stream and the log once, when it
/// happens.
async fn watch_health(
    router: Router,
    broker: Option<cluster::Broker>,
    telemetry: Arc<Telemetry>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut healthy = router.storage_health().healthy;
    telemetry.metrics.set_storage_healthy(healthy);
    let mut cluster_healthy = broker.as_ref().map(|b| cluster::report(&telemetry, b));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if let Some(broker) = &broker {
            cluster::watch(&telemetry, broker, &mut cluster_healthy);
        }
        let health = router.storage_health();
        telemetry.metrics.set_storage_bytes(health.journal_bytes, health.cache_bytes, health.journal_skipped);
        if health.healthy != healthy {
            healthy = health.healthy;
            telemetry.metrics.set_storage_healthy(healthy);
            let event = if healthy { "storage_recovered" } else { "storage_degraded" };
            if healthy {
                tracing::info!(backend = health.backend, "storage recovered");
                // Channels recorded while it was away (or before a start-up
                // with it down) become known now; restoring is idempotent.
                if let Err(e) = router.restore().await {
                    tracing::warn!(error = %e, "could not reload channels after storage recovered");
                }
            } else {
                tracing::warn!(backend = health.backend, "storage degraded; serving from memory");
            }
            telemetry.hub.publish(event, serde_json::json!({"backend": health.backend}));
        }
    }
}

fn router_config(config: &Config) -> RouterConfig {
    RouterConfig {
        auto_create: config.channels.auto_create,
        rate_per_s: config.limits.rate_per_s,
        burst: config.limits.burst,
        max_backlog_bytes: config.limits.max_backlog_bytes,
        backlog_budget_bytes: config.limits.backlog_budget_bytes,
        member_events_max: config.limits.member_events_max,
        member_event_rate: RateLimit {
            rate_per_s: config.limits.member_events_per_s,
            burst: config.limits.member_events_burst,
        },
        direct_rate: RateLimit { rate_per_s: config.limits.direct_per_s, burst: config.limits.direct_burst },
        direct_backlog_bytes: config.limits.direct_backlog_bytes,
        max_message_bytes: config.limits.max_message_bytes,
        heartbeat_s: config.server.heartbeat_s,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        role_rates: config
            .limits
            .roles
            .iter()
            .map(|(role, rate)| (*role, RateLimit { rate_per_s: rate.rate_per_s, burst: rate.burst }))
            .collect(),
        bytes_per_s: config.limits.bytes_per_s,
        bytes_burst: config.limits.bytes_burst,
        abuse_limit: config.limits.abuse_limit,
        abuse_window: Duration::from_secs(config.limits.abuse_window_s),
        expiry_grace: Duration::from_millis(config.auth.expiry_grace_ms),
        max_channels: config.limits.max_channels,
        max_channels_per_room: config.limits.max_channels_per_room,
        max_channels_created_per_client: config.limits.max_channels_created_per_client,
        idle_reclaim: Duration::from_secs(config.channels.idle_reclaim_s),
        rooms: room_rules(config),
    }
}

/// `[rooms."pattern"]` as the router's rules.
fn room_rules(config: &Config) -> RoomRules {
    let defaults = RoomOptions::default();
    RoomRules::new(
        config
            .rooms
            .iter()
            .map(|(pattern, room)| RoomRule {
                pattern: pattern.clone(),
                options: RoomOptions {
                    history_size: room.history_size,
                    history_ttl_s: room.history_ttl_s.unwrap_or(defaults.history_ttl_s),
                    presence: room.presence.unwrap_or(defaults.presence),
                    member_events: room.member_events.unwrap_or(defaults.member_events),
                    join_role: room.join_role.unwrap_or(defaults.join_role),
                    publish_role: room.publish_role.unwrap_or(defaults.publish_role),
                    auto_create: room.auto_create,
                    join_hook: room.join_hook.unwrap_or(false),
                },
            })
            .collect(),
    )
}

fn transport_config(config: &Config) -> Result<TransportConfig, ServerError> {
    let tls = if config.tls.enabled() {
        let read = |path: &str| std::fs::read(path).map_err(|e| ServerError::Tls(format!("cannot read {path:?}: {e}")));
        let (cert, key) = (read(&config.tls.cert)?, read(&config.tls.key)?);
        Some(arqon_transport::tls_config(&cert, &key).map_err(|e| ServerError::Tls(e.to_string()))?)
    } else {
        None
    };
    Ok(TransportConfig {
        max_message_bytes: config.limits.max_message_bytes,
        heartbeat: Duration::from_secs(config.server.heartbeat_s),
        shutdown_grace: Duration::from_millis(config.server.shutdown_grace_ms),
        upgrade_timeout: Duration::from_millis(config.server.upgrade_timeout_ms),
        max_connections: config.server.max_connections,
        max_connections_per_ip: config.server.max_connections_per_ip,
        allowed_origins: config.server.allowed_origins.clone(),
        tls,
        write_timeout: Duration::from_millis(config.limits.write_timeout_ms),
        compression: arqon_transport::Compression {
            enabled: config.compression.enabled,
            min_bytes: config.compression.min_bytes,
            level: config.compression.level,
        },
        ..TransportConfig::default()
    })
}
