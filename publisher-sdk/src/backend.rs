//! The Redis servers behind a publisher: one pool per instance (one instance, or
//! several independent shards), or one multiplexed Redis Cluster connection that
//! follows the cluster's topology (MOVED/ASK, failover, resharding) by itself.

use std::time::Duration;

use deadpool_redis::{Config as PoolConfig, Pool, PoolConfig as PoolSize, Runtime, Timeouts};
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::OnceCell;

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
}

impl Topology {
    /// Every URL named.
    pub fn urls(&self) -> &[String] {
        match self {
            Topology::Standalone(url) => std::slice::from_ref(url),
            Topology::Sharded(urls) => urls,
            Topology::Cluster { seeds, .. } => seeds,
        }
    }
}

pub(crate) enum Backend {
    /// One pool per instance; a standalone Redis is a single shard.
    Pools(Vec<Pool>),
    Cluster(Box<Cluster>),
}

pub(crate) struct Cluster {
    client: ClusterClient,
    /// Connected on first use, so a publisher can be built while Redis is down.
    conn: OnceCell<ClusterConnection>,
}

pub(crate) fn pool(url: &str, size: usize, timeout: Duration) -> Result<Pool, PublishError> {
    redis::Client::open(url).map_err(|e| PublishError::Config(format!("{url}: {e}")))?;
    let mut cfg = PoolConfig::from_url(url);
    let mut pool_size = PoolSize::new(size);
    // A connection that hangs (not just fails) must not wedge the pool: bound every
    // stage, so a stuck connection is dropped and a fresh one made.
    pool_size.timeouts = Timeouts {
        wait: Some(timeout),
        create: Some(timeout),
        recycle: Some(timeout),
    };
    cfg.pool = Some(pool_size);
    cfg.create_pool(Some(Runtime::Tokio1))
        .map_err(|e| PublishError::Config(e.to_string()))
}

pub(crate) fn cluster(seeds: &[String], timeout: Duration) -> Result<Backend, PublishError> {
    if seeds.is_empty() {
        return Err(PublishError::Config("no cluster seed URL given".into()));
    }
    for url in seeds {
        redis::Client::open(url.as_str())
            .map_err(|e| PublishError::Config(format!("{url}: {e}")))?;
    }
    let client = ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .build()
        .map_err(|e| PublishError::Config(e.to_string()))?;
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
            Backend::Pools(pools) => {
                let pool = &pools[route % pools.len()];
                pool.get().await.map(Conn::Pooled).map_err(unavailable)
            }
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

/// A connection to whichever Redis serves a request.
pub(crate) enum Conn {
    Pooled(deadpool_redis::Connection),
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
            Conn::Pooled(c) => c.req_packed_command(cmd),
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
            Conn::Pooled(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Pooled(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
