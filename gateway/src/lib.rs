//! A Tidings gateway node: holds client WebSocket connections and delivers
//! notifications to them.
//!
//! Data flows socket -> session -> hub -> broker and back. [`server`] accepts TCP
//! connections and [`handshake`] authenticates the upgrade (JWT) before the 101;
//! [`socket`] runs one task per connection, feeding client frames to its
//! [`session`] (subscriptions, publishes, token refresh) and writing what the
//! [`outbox`] holds. The [`hub`] keeps which local connections want which channel
//! and fans a publication out by pushing one shared encoded frame into each outbox.
//! The [`broker`] carries publications between nodes (in memory for a single node)
//! and subscribes only to channels the hub has local interest in. [`api`] is the
//! HTTP publish endpoint for backends; [`metrics`] and the admin listener expose
//! health. [`run`] wires it all and drains connections on shutdown.

pub mod auth;
pub(crate) mod broker;
pub mod config;
pub(crate) mod conn;
mod error;
pub mod http;
pub(crate) mod hub;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod presence;
pub(crate) mod session;
#[cfg(test)]
mod testing;

/// The HTTP publish API's checks (also used by the fuzz targets).
pub use http::api;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::net::TcpListener;
use tokio::time::Instant;

pub use config::Config;
pub use error::{GatewayError, SessionEnd};

use broker::{Broker, MemoryBroker};
use hub::Table;
use metrics::Metrics;
use node::Node;

/// The listeners a node serves: the public one (WebSocket upgrades, the publish
/// API, the demo) and the admin one (health, readiness, metrics).
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses (the public one with the configured backlog
    /// and send buffer).
    pub async fn bind(config: &Config) -> Result<Self, GatewayError> {
        let public = bind(
            config.listeners.public,
            config.listeners.backlog,
            config.listeners.socket_send_buffer,
        )
        .map_err(|source| GatewayError::Bind {
            addr: config.listeners.public,
            source,
        })?;
        let admin = TcpListener::bind(config.listeners.admin)
            .await
            .map_err(|source| GatewayError::Bind {
                addr: config.listeners.admin,
                source,
            })?;
        Ok(Self { public, admin })
    }
}

/// Runs a node until `shutdown` resolves, then drains its connections and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
    let listeners = Listeners::bind(&config).await?;
    serve(config, listeners, shutdown).await
}

/// Runs a node on listeners the caller bound (as [`run`] does; a test binds port 0
/// and knows the addresses before the node starts).
pub async fn serve(
    mut config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    limit_to_open_files(&mut config);
    let node = assemble(config)?;
    let Listeners { public, admin } = listeners;
    let addr = public.local_addr().map_err(|source| GatewayError::Bind {
        addr: node.config.listeners.public,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| GatewayError::Bind {
        addr: node.config.listeners.admin,
        source,
    })?;
    tracing::info!(
        %addr,
        %admin_addr,
        node = %node.config.node.id,
        broker = if node.config.redis.is_some() { "redis" } else { "memory" },
        redis_mode = node.config.redis.as_ref().map(|r| r.mode.name()),
        "listening"
    );
    if node.config.demo {
        // Where to point a browser: a wildcard address is reachable on loopback.
        let mut at = addr;
        if at.ip().is_unspecified() {
            at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        tracing::info!(url = %format!("http://{at}/demo/"), "demo app");
    }
    let presence_task = tokio::spawn(node.presence.clone().run());
    let public_task = tokio::spawn(http::server::serve_public(public, node.clone()));
    let admin_task = tokio::spawn(http::admin::serve_admin(admin, node.clone()));
    shutdown.await;
    drain(&node).await;
    // Leaves and offline marks of the connections just closed, so that their users'
    // grace periods start now (clients reconnecting to another node within them
    // show no leave).
    node.presence.flush_now(Duration::from_secs(2)).await;
    presence_task.abort();
    public_task.abort();
    admin_task.abort();
    tracing::info!("stopped");
    Ok(())
}

/// A node with its broker (in memory, or Redis as configured), ready to serve.
pub(crate) fn assemble(config: Config) -> Result<Arc<Node>, GatewayError> {
    let metrics = Arc::new(Metrics::new());
    let verifier = auth::Verifier::new(&config.auth.jwt, config.demo)?;
    let table = Arc::new(Table::new(metrics.clone()).with_presence(config.presence.rules.clone()));
    let (broker, store): (Arc<dyn Broker>, Arc<dyn presence::Store>) = match &config.redis {
        None => {
            metrics.broker.set_up(true);
            let broker = MemoryBroker::new(table.clone(), &config.history, metrics.clone());
            let store = presence::MemoryStore::new(
                table.clone(),
                config.presence.grace,
                config.presence.last_seen_ttl,
            );
            (Arc::new(broker), Arc::new(store))
        }
        Some(redis) => {
            let broker = broker::RedisBroker::start(
                redis.clone(),
                &config.history,
                broker::NodeContext {
                    node_id: config.node.id.clone(),
                    max_payload: config.conn.max_payload_size,
                },
                table.clone(),
                metrics.clone(),
            )?;
            let store = presence::RedisStore::new(
                broker.presence_publisher(),
                publisher::presence::NodePresence {
                    node: config.node.id.clone(),
                    ttl: config.presence.ttl(),
                    grace: config.presence.grace,
                    last_seen_ttl: config.presence.last_seen_ttl,
                },
            );
            (Arc::new(broker), Arc::new(store))
        }
    };
    let presence = Arc::new(presence::Presence::new(
        config.presence.clone(),
        store,
        metrics.clone(),
    ));
    let node = Node::new(config, table, broker, presence, metrics, verifier).map_err(|e| {
        GatewayError::Config {
            setting: "protocol".into(),
            message: e.to_string(),
        }
    })?;
    Ok(Arc::new(node))
}

/// File descriptors kept for everything but client connections: listeners, Redis
/// connections, publish API requests, the admin listener's scrapes.
const RESERVED_FDS: usize = 256;

/// The soft limit of open files of this process (`/proc/self/limits`, Linux).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Lowers `--max-pending-connections` and `--max-connections` to what the
/// open-file limit allows, so that beyond it clients are refused with 503 or 429
/// instead of failed accepts. Pending connections get at most an eighth.
fn limit_to_open_files(config: &mut Config) {
    let Some(limit) = open_files_limit() else {
        return;
    };
    let usable = limit.saturating_sub(RESERVED_FDS).max(2);
    let pending = config.listeners.max_pending.min((usable / 8).max(1));
    let connections = config.conn.max_connections.min(usable - pending);
    if pending < config.listeners.max_pending || connections < config.conn.max_connections {
        tracing::warn!(
            max_connections = config.conn.max_connections,
            max_pending_connections = config.listeners.max_pending,
            open_files_limit = limit,
            effective_max_connections = connections,
            effective_max_pending_connections = pending,
            "the settings are above what the open-file limit (ulimit -n) allows; \
             connections beyond {connections} are refused with 429"
        );
        config.listeners.max_pending = pending;
        config.conn.max_connections = connections;
    }
}

/// Binds a listener with an explicit backlog (tokio's default is 1024), so a burst
/// of reconnects waits in the kernel instead of being refused. Accepted sockets
/// inherit the listener's send buffer size (`send_buffer`, 0: autotuned), which
/// bounds what a client that stops reading holds in the kernel, with no syscall
/// per connection.
fn bind(
    addr: std::net::SocketAddr,
    backlog: u32,
    send_buffer: usize,
) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if send_buffer > 0 {
        socket.set_send_buffer_size(u32::try_from(send_buffer).unwrap_or(u32::MAX))?;
    }
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Closes every connection with 1001 in jittered batches spread over the drain
/// period, so the remaining nodes see a steady trickle of reconnects, not a storm.
async fn drain(node: &Arc<Node>) {
    node.start_draining();
    let period = node.config.node.drain_period;
    let mut targets = node.hub.table().outboxes(protocol::channel::BROADCAST);
    targets.shuffle(&mut rand::rng());
    tracing::info!(connections = targets.len(), period = ?period, "draining");
    let start = Instant::now();
    let slots = (period.as_millis() / 50).clamp(1, targets.len().max(1) as u128) as usize;
    let per_slot = targets.len().div_ceil(slots).max(1);
    for (i, batch) in targets.chunks(per_slot).enumerate() {
        let slot_len = period / slots as u32;
        let jitter = slot_len.mul_f64(rand::random::<f64>());
        tokio::time::sleep_until(start + slot_len * i as u32 + jitter).await;
        for outbox in batch {
            outbox.close(protocol::close::GOING_AWAY);
        }
    }
    // Give closing handshakes a moment; stuck peers are cut when the process exits.
    // Long enough for a close frame and the peer's answer (two close timeouts).
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.metrics.open_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Registers SIGTERM and SIGINT handlers now (so a signal that arrives during
/// startup is not lost) and returns a future that resolves on either.
/// Must be called inside the tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::info!("shutdown signal received; draining (a second signal exits at once)");
            // A second signal (an impatient Ctrl-C) ends the process now.
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
                tracing::warn!("second shutdown signal: exiting without draining");
                std::process::exit(130);
            });
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutdown signal received");
        })
    }
}

/// Installs the tracing subscriber in the configured format.
pub fn init_tracing(config: &Config) -> Result<(), GatewayError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.node.log).map_err(|e| {
        GatewayError::Config {
            setting: "log".into(),
            message: e.to_string(),
        }
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.node.log_format {
        config::LogFormat::Human => builder.try_init(),
        config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| GatewayError::Config {
        setting: "log".into(),
        message: e.to_string(),
    })
}
