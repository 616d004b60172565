//! The Redis servers behind a publisher: a few multiplexed connections per instance
//! (one instance, or several independent shards), or one multiplexed Redis Cluster
//! connection that follows the cluster's topology (MOVED/ASK, failover, resharding)
//! by itself.
//!
//! Multiplexed, not pooled: one connection carries any number of requests at once
//! (pipelined by the client), so throughput does not fall with the round-trip time
//! the way a pool of N connections each waiting for its reply does (with 50 ms to
//! Redis a pool of 8 managed ~72 requests/s), and no request pays a PING to check
//! a connection out.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, PushInfo, PushKind, RedisFuture, Value,
};
use tokio::sync::{OnceCell, watch};

use crate::connect::{Connector, RedisOptions};
use crate::sentinel::Sentinel;
use crate::{PublishError, unavailable};

/// Where a publisher's Redis lives. The mode is configuration only: the same
/// publisher API works on all three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One Redis (optionally with replicas behind a failover proxy).
    Standalone(String),
    /// Several independent Redis instances; each channel (with its history) is owned
    /// by one of them, by jump consistent hash of its name. Every publisher and
    /// gateway must list the same URLs in the same order.
    Sharded(Vec<String>),
    /// A Redis Cluster (seed URLs of some of its nodes), with sharded pub/sub
    /// (`SPUBLISH`). Channels are mapped to `partitions` hash tags; every publisher
    /// and gateway of a deployment must use the same number.
    Cluster {
        seeds: Vec<String>,
        partitions: usize,
    },
    /// One Redis primary (with replicas) managed by Sentinel: the sentinels'
    /// URLs and the master name they monitor. Connections follow failovers.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

impl Topology {
    /// Every URL named.
    pub fn urls(&self) -> &[String] {
        match self {
            Topology::Standalone(url) => std::slice::from_ref(url),
            Topology::Sharded(urls) => urls,
            Topology::Cluster { seeds, .. } => seeds,
            Topology::Sentinel { sentinels, .. } => sentinels,
        }
    }
}

pub(crate) enum Backend {
    /// Connections per instance; a standalone Redis is a single shard.
    Instances(Vec<Lanes>),
    Cluster(Box<Cluster>),
}

pub(crate) struct Cluster {
    client: ClusterClient,
    /// Connected on first use, so a publisher can be built while Redis is down.
    conn: OnceCell<ClusterConnection>,
}

/// A few multiplexed connections to one Redis instance, used in turn. Each is
/// opened on first use and replaced after it fails, so a publisher can be built
/// while Redis is down and recovers by itself once it is back.
pub(crate) struct Lanes {
    lanes: Box<[Arc<Lane>]>,
    next: AtomicUsize,
    pub(crate) endpoint: Endpoint,
}

/// Where one instance is: a fixed address, or the primary Sentinel names now.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Fixed(Box<ConnectionInfo>),
    Sentinel(Arc<Sentinel>),
}

impl Endpoint {
    /// How to reach the instance now.
    pub async fn resolve(&self) -> Result<ConnectionInfo, String> {
        match self {
            Endpoint::Fixed(info) => Ok((**info).clone()),
            Endpoint::Sentinel(s) => s.primary().await,
        }
    }

    /// Changes when connections to the instance must be replaced (Sentinel moved
    /// the primary); `None` for a fixed address.
    pub fn changes(&self) -> Option<watch::Receiver<u64>> {
        match self {
            Endpoint::Fixed(_) => None,
            Endpoint::Sentinel(s) => Some(s.generation()),
        }
    }

    /// A connection to the instance failed or was refused as read-only: with
    /// Sentinel, the primary is asked for again.
    pub fn failed(&self) {
        if let Endpoint::Sentinel(s) = self {
            s.invalidate();
        }
    }
}

pub(crate) struct Lane {
    endpoint: Endpoint,
    connector: Connector,
    /// The endpoint's generation the current connection was opened in.
    changes: Option<watch::Receiver<u64>>,
    config: redis::AsyncConnectionConfig,
    timeout: Duration,
    /// The current connection and its generation (to replace only the one that
    /// failed, not a newer one).
    current: Mutex<Option<Current>>,
    /// One connect at a time; the others wait for it.
    connecting: tokio::sync::Mutex<u64>,
}

/// One connection of a lane: its generation, the connection, and whether Redis
/// closed it (reported by the connection itself, RESP3's disconnect notice), so a
/// connection that died while idle (a Redis restart) is replaced before a request
/// is lost on it, without a PING per request.
#[derive(Clone)]
struct Current {
    generation: u64,
    /// The endpoint's generation when it was opened.
    endpoint: u64,
    conn: MultiplexedConnection,
    closed: Arc<AtomicBool>,
}

/// The endpoint a URL names (the publisher's own credentials are applied when
/// connecting).
pub(crate) fn fixed(url: &str) -> Result<Endpoint, PublishError> {
    let info = url
        .into_connection_info()
        .map_err(|e| PublishError::Config(format!("{}: {e}", crate::redact_url(url))))?;
    Ok(Endpoint::Fixed(Box::new(info)))
}

pub(crate) fn lanes(
    endpoint: Endpoint,
    connector: &Connector,
    n: usize,
    timeout: Duration,
) -> Lanes {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let lanes = (0..n.max(1))
        .map(|_| {
            Arc::new(Lane {
                endpoint: endpoint.clone(),
                connector: connector.clone(),
                changes: endpoint.changes(),
                config: config.clone(),
                timeout,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(0),
            })
        })
        .collect();
    Lanes {
        lanes,
        next: AtomicUsize::new(0),
        endpoint,
    }
}

impl Lanes {
    fn pick(&self) -> &Arc<Lane> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.lanes[i % self.lanes.len()]
    }
}

impl Lane {
    /// The current connection, unless Redis closed it.
    fn current(&self) -> Option<Current> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let moved = |c: &Current| {
            self.changes
                .as_ref()
                .is_some_and(|rx| *rx.borrow() != c.endpoint)
        };
        if current
            .as_ref()
            .is_some_and(|c| c.closed.load(Ordering::Acquire) || moved(c))
        {
            *current = None;
        }
        current.clone()
    }

    fn conn(self: &Arc<Self>, c: Current) -> Conn {
        Conn::Lane(c.conn, self.clone(), c.generation)
    }

    async fn get(self: &Arc<Self>) -> Result<Conn, PublishError> {
        if let Some(c) = self.current() {
            return Ok(self.conn(c));
        }
        let mut generation = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(self.conn(c));
        }
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let config = self.config.clone().set_push_sender(move |info: PushInfo| {
            if info.kind == PushKind::Disconnection {
                flag.store(true, Ordering::Release);
            }
            Ok::<(), std::convert::Infallible>(())
        });
        let endpoint = self.changes.as_ref().map_or(0, |rx| *rx.borrow());
        let open = async {
            let info = self.endpoint.resolve().await?;
            // RESP3 (Redis 6 or newer): the connection then reports its own end.
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            self.connector
                .multiplexed(&info.set_redis_settings(settings), config)
                .await
        };
        let conn = match tokio::time::timeout(self.timeout, open).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                self.endpoint.failed();
                return Err(unavailable(e));
            }
            Err(_) => {
                self.endpoint.failed();
                return Err(unavailable(format!(
                    "connect: no answer within {:?}",
                    self.timeout
                )));
            }
        };
        *generation += 1;
        let c = Current {
            generation: *generation,
            endpoint,
            conn,
            closed,
        };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(self.conn(c))
    }

    /// Drops connection `generation` after a failure that may have broken it (an
    /// I/O error, or no answer in time: a Redis that stopped answering keeps the
    /// socket open). Requests in flight on it finish on their own; new ones get a
    /// new connection.
    fn failed(&self, generation: u64, e: &redis::RedisError) {
        let read_only = e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || read_only
        {
            self.replace(generation);
            // A demoted primary answers READONLY on a connection that still works:
            // ask Sentinel where the primary went.
            self.endpoint.failed();
        }
    }

    fn replace(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }
}

pub(crate) fn cluster(
    seeds: &[String],
    options: &RedisOptions,
    timeout: Duration,
) -> Result<Backend, PublishError> {
    let config = |e: String| PublishError::Config(e);
    if seeds.is_empty() {
        return Err(config("no cluster seed URL given".into()));
    }
    for url in seeds {
        redis::Client::open(url.as_str())
            .map_err(|e| config(format!("{}: {e}", crate::redact_url(url))))?;
    }
    let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(options.connect_timeout.min(timeout))
        .response_timeout(timeout);
    if let Some(user) = &options.username {
        builder = builder.username(user);
    }
    if let Some(password) = &options.password {
        builder = builder.password(password.expose());
    }
    if let Some(idle) = options.keepalive {
        let keepalive = socket2::TcpKeepalive::new().with_time(idle);
        builder = builder.tcp_settings(
            redis::io::tcp::TcpSettings::default()
                .set_nodelay(true)
                .set_keepalive(keepalive),
        );
    }
    let tls = &options.tls;
    if seeds.iter().any(|u| u.starts_with("rediss://")) {
        // The cluster client opens its own connections (one per node, found from
        // the slot map), so it gets the same material as PEM and checks it itself.
        if tls.server_name.is_some() {
            return Err(config(
                "a TLS server name cannot be set in cluster mode (each node is checked against the name the cluster announces)".into(),
            ));
        }
        if tls.insecure {
            builder = builder.tls(redis::TlsMode::Insecure);
        } else {
            builder = builder.tls(redis::TlsMode::Secure);
        }
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| config(format!("{}: {e}", p.display())))
        };
        let client_tls = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            _ => None,
        };
        let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
        if client_tls.is_some() || root_cert.is_some() {
            builder = builder.certs(redis::TlsCertificates {
                client_tls,
                root_cert,
            });
        }
    }
    let client = builder.build().map_err(|e| config(e.to_string()))?;
    Ok(Backend::Cluster(Box::new(Cluster {
        client,
        conn: OnceCell::new(),
    })))
}

impl Backend {
    /// A connection for `route` (the owning shard; ignored by a cluster, whose
    /// connection routes every command by its keys).
    pub(crate) async fn conn(&self, route: usize) -> Result<Conn, PublishError> {
        match self {
            Backend::Instances(instances) => instances[route % instances.len()].pick().get().await,
            Backend::Cluster(c) => c
                .conn
                .get_or_try_init(|| c.client.get_async_connection())
                .await
                .cloned()
                .map(Conn::Cluster)
                .map_err(unavailable),
        }
    }
}

impl Conn {
    /// The request on this connection got no answer in time: a lane's connection is
    /// replaced (Redis or the network may have stopped answering while the socket
    /// stays open); a cluster connection finds out by itself.
    pub(crate) fn timed_out(&self) {
        if let Conn::Lane(_, lane, generation) = self {
            lane.replace(*generation);
        }
    }
}

/// A connection to whichever Redis serves a request.
pub(crate) enum Conn {
    /// A lane's connection, the lane, and the connection's generation there.
    Lane(MultiplexedConnection, Arc<Lane>, u64),
    Cluster(ClusterConnection),
}

/// How often a read transaction is retried while its slot moves (the waits double
/// from 10 ms: about 2.5 s in all, within the publisher's timeout).
const SLOT_MOVE_RETRIES: u32 = 8;

impl Conn {
    /// Runs a read-only transaction (`MULTI` ... `EXEC`). In a cluster, a transaction
    /// that meets its slot on the move (MOVED, ASK or TRYAGAIN inside `EXEC`, during a
    /// failover or a resharding) comes back aborted: the cluster client redirects
    /// single commands but not transactions, and does not learn the new slot owner
    /// from them. A plain read of `probe_key` (a key of the same slot) goes through
    /// its redirect handling, which refreshes the slot map; then the transaction is
    /// tried again. Without this a history read during a slot move failed and a
    /// resume reported `recovered: false` for history that was there.
    pub(crate) async fn transaction<T: redis::FromRedisValue>(
        &mut self,
        pipe: &Pipeline,
        probe_key: &str,
    ) -> Result<T, PublishError> {
        let mut wait = Duration::from_millis(10);
        let mut attempt = 0;
        loop {
            match pipe.query_async(self).await {
                Ok(v) => return Ok(v),
                Err(e)
                    if matches!(self, Conn::Cluster(_))
                        && slot_moving(&e)
                        && attempt < SLOT_MOVE_RETRIES =>
                {
                    attempt += 1;
                    let _ = redis::cmd("EXISTS")
                        .arg(probe_key)
                        .query_async::<i64>(self)
                        .await;
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }
}

/// Whether an error (or any command inside an aborted transaction) says the slot is
/// elsewhere or on the move.
fn slot_moving(e: &redis::RedisError) -> bool {
    use redis::ServerErrorKind as K;
    e.is_cluster_error()
        || e.clone().into_server_errors().is_some_and(|errs| {
            errs.iter().any(|(_, s)| {
                matches!(
                    s.kind(),
                    Some(K::Moved | K::Ask | K::TryAgain | K::ClusterDown)
                )
            })
        })
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Lane(c, lane, generation) => Box::pin(async move {
                let r = c.req_packed_command(cmd).await;
                if let Err(e) = &r {
                    lane.failed(*generation, e);
                }
                r
            }),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Lane(c, lane, generation) => Box::pin(async move {
                let r = c.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &r {
                    lane.failed(*generation, e);
                }
                r
            }),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Lane(c, ..) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
