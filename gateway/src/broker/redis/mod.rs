//! The Redis broker: gateway nodes as stateless replicas behind Redis pub/sub.
//!
//! Publishing goes through the publisher SDK (the same path backends use), which also
//! decides where a channel lives: one Redis, one of several independent instances
//! (sharded mode, jump hash), or one partition of a Redis Cluster. Receiving uses
//! dedicated pub/sub connections ("shards", [`subscriber`]); each channel maps to one
//! shard, so per-channel order is kept while several read loops share the load:
//!
//! - standalone: `--redis-subscribers` connections, the channel hashed across them;
//! - sharded: `--redis-subscribers` connections per instance, each channel on a
//!   connection to the instance that owns it;
//! - cluster: one connection per partition, to the master that owns the partition's
//!   slot ([`cluster`]), with sharded pub/sub (`SSUBSCRIBE`; all channels of a
//!   partition share a slot). A connection that drops, whose slot moves away
//!   (`sunsubscribe` pushed by Redis), or whose probe is not heard, looks the owner
//!   up again and resubscribes, which follows failovers and resharding.
//!
//! A shard subscribes only to channels the hub has local interest in: SUBSCRIBE on
//! the first interest (batched), UNSUBSCRIBE after a delay once the last interest is
//! gone. After any reconnect a shard rebuilds its subscriptions from the hub's
//! interest set, never from what the connection used to have. A probe message
//! published on a connection of its own must come back on every shard within the
//! probe interval, or the shard is replaced: a connection that is open but silently
//! stopped delivering (e.g. still attached to a demoted master after a failover) is
//! caught this way. How long the probe takes to come back is how far behind the
//! read side is (`tidings_broker_lag_seconds`); a node further behind than
//! `--redis-max-lag` reports itself not ready.
//!
//! Commands go through three publishers of their own, so that none waits behind
//! another: publishes, reads (history, positions, acks: what a connecting client
//! waits for) and the liveness probes.

mod cluster;
mod connection;
mod reader;
mod resp;
mod shard;
mod subscriber;
mod subscriptions;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use protocol::Publication;
use protocol::keys::KeySpace;
use publisher::{HistoryPage, PublishError, Publisher, Topology};
use tokio::time::timeout;

use super::{Broker, BrokerError, Handler, Receipt};
use crate::config::{HistoryConfig, RedisConfig};
use crate::metrics::{Budget, Metrics};
use cluster::ClusterNodes;
use protocol::history::StreamPosition;
use shard::{Shard, Target, shard_of};
use subscriber::run_shard;

/// How long a resuming session waits for Redis to confirm its live subscription.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// What the Redis broker needs of the node besides Redis' own settings.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// Names this node's probe channels.
    pub node_id: String,
    /// Largest payload a publish may carry.
    pub max_payload: usize,
}

struct Shared {
    redis: RedisConfig,
    node: NodeContext,
    history: HistoryConfig,
    keys: KeySpace,
    /// Subscriber connections per instance (standalone and sharded modes).
    per_instance: usize,
    /// Cluster nodes to ask for the slot map: the seeds, then every node seen.
    cluster: Option<ClusterNodes>,
    /// Publishes.
    publisher: Publisher,
    /// History, positions and acks.
    reader: Publisher,
    /// Liveness probes.
    prober: Publisher,
    handler: Arc<dyn Handler>,
    metrics: Arc<Metrics>,
    shards: Vec<Arc<Shard>>,
    /// Largest reply a subscriber connection reads (a message of the largest
    /// publication, with room for its envelope).
    max_reply: usize,
}

impl Shared {
    /// The subscriber connections of each holder of channels (an instance, or a
    /// cluster partition), in order: a holder's connections are consecutive.
    fn holders(
        &self,
    ) -> std::slice::ChunkBy<'_, Arc<Shard>, impl FnMut(&Arc<Shard>, &Arc<Shard>) -> bool> {
        self.shards.chunk_by(|a, b| a.holder() == b.holder())
    }

    /// Whether one connection is up and reads in time.
    fn shard_ok(&self, s: &Shard) -> bool {
        s.up.load(Ordering::Acquire) && s.lag() <= self.redis.max_lag
    }

    /// The connections of the holder of `channel`.
    fn holder_of(&self, channel: &str) -> &[Arc<Shard>] {
        let holder = self.shards[shard_of(self, channel)].holder();
        self.holders()
            .find(|g| g.first().is_some_and(|s| s.holder() == holder))
            .unwrap_or_default()
    }

    /// Holders up (every connection to it up and reading in time), and holders in
    /// all. One pass: this runs on every connection's up/down change, and a cluster
    /// may have 1,024 partitions.
    pub(super) fn holders_up(&self) -> (usize, usize) {
        self.holders().fold((0, 0), |(up, total), g| {
            let ok = g.iter().all(|s| self.shard_ok(s));
            (up + usize::from(ok), total + 1)
        })
    }
}

pub struct RedisBroker {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Presence reads and writes, on connections of their own.
    presence: Publisher,
}

impl RedisBroker {
    /// Starts the shard tasks; connecting happens in the background, so a node can
    /// start (not ready) while Redis is down.
    pub fn start(
        redis: RedisConfig,
        history: &HistoryConfig,
        node: NodeContext,
        handler: Arc<dyn Handler>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BrokerError> {
        let config = |e: String| BrokerError::Unavailable(e);
        if redis.connector.options().tls.insecure {
            tracing::warn!(
                "--redis-tls-insecure: Redis server certificates are NOT verified; anyone on the network path can read and change this node's Redis traffic. Development only."
            );
        }
        let build = |connections: usize, share: Option<&Publisher>| {
            let mut b = Publisher::with_topology(redis.topology.clone())
                .namespace(redis.namespace.clone())
                .max_payload(node.max_payload)
                .history(history.rules.clone())
                .idempotency_window(history.idempotency_window)
                .connections(connections)
                .options(redis.connector.options().clone())
                .timeout(redis.command_timeout);
            if let Some(p) = &redis.sentinel_password {
                b = b.sentinel_password(p.clone());
            }
            // One Sentinel watcher per node, shared by all of its connections.
            if let Some(other) = share {
                b = b.share_endpoints(other);
            }
            b.build().map_err(|e| config(e.to_string()))
        };
        let publisher = build(redis.connections, None)?;
        let reader = build(redis.connections, Some(&publisher))?;
        let prober = build(1, Some(&publisher))?;
        let presence = build(2, Some(&publisher))?;
        let keys = publisher.keys().clone();
        let per_instance = redis.subscribers.max(1);
        let mut targets = Vec::new();
        let cluster = match &redis.topology {
            Topology::Cluster { seeds, .. } => {
                let parts = keys
                    .partitions()
                    .ok_or_else(|| config("cluster without partitions".into()))?;
                targets.extend((0..parts.len()).map(|i| Target::Partition {
                    slot: parts.slot(i),
                }));
                Some(ClusterNodes::new(seeds, redis.connector.clone()).map_err(config)?)
            }
            Topology::Standalone(_) | Topology::Sharded(_) | Topology::Sentinel { .. } => {
                for (instance, endpoint) in publisher.endpoints().into_iter().enumerate() {
                    for _ in 0..per_instance {
                        targets.push(Target::Instance {
                            instance,
                            endpoint: endpoint.clone(),
                        });
                    }
                }
                None
            }
        };
        let shards = targets
            .into_iter()
            .enumerate()
            .map(|(index, target)| Arc::new(Shard::new(index, target)))
            .collect();
        metrics.broker.set_up(false);
        let max_reply = node.max_payload.saturating_mul(2) + 64 * 1024;
        let shared = Arc::new(Shared {
            redis,
            node,
            history: history.clone(),
            keys,
            per_instance,
            cluster,
            publisher,
            reader,
            prober,
            handler,
            metrics,
            shards,
            max_reply,
        });
        let tasks = shared
            .shards
            .iter()
            .map(|s| tokio::spawn(run_shard(shared.clone(), s.clone())))
            .collect();
        Ok(Self {
            shared,
            tasks,
            presence,
        })
    }
}

impl RedisBroker {
    /// The publisher presence goes through.
    pub fn presence_publisher(&self) -> Publisher {
        self.presence.clone()
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, pubs: Vec<Publication>) -> Result<Receipt, BrokerError> {
        match self.shared.publisher.publish_all(&pubs).await {
            Ok(r) => Ok(Receipt {
                nodes: r.nodes,
                sessions: None,
                duplicates: r.duplicates as u64,
                offset: None,
                epoch: None,
            }),
            Err(e) => {
                if matches!(e, PublishError::QuotaExceeded(_)) {
                    self.shared.metrics.budget_refused(Budget::HistoryChannels);
                } else {
                    self.shared.metrics.broker.publish_failed();
                }
                Err(broker_error(e))
            }
        }
    }

    async fn publish_if(
        &self,
        p: Publication,
        at: &StreamPosition,
    ) -> Result<Receipt, BrokerError> {
        match self.shared.publisher.publish_if(p, at).await {
            // A duplicate (its message id was seen) published nothing: no position,
            // as on the memory broker.
            Ok(r) => Ok(Receipt {
                nodes: r.nodes,
                sessions: None,
                duplicates: r.duplicates as u64,
                offset: r
                    .offsets
                    .first()
                    .copied()
                    .flatten()
                    .filter(|_| r.duplicates == 0),
                epoch: r.epoch.filter(|_| r.duplicates == 0),
            }),
            Err(e) => {
                if matches!(e, PublishError::Unavailable(_)) {
                    self.shared.metrics.broker.publish_failed();
                }
                Err(broker_error(e))
            }
        }
    }

    fn interest_changed(&self, channel: &Arc<str>) {
        let shard = &self.shared.shards[shard_of(&self.shared, channel)];
        shard
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel.clone());
        shard.wake.notify_one();
    }

    fn is_ready(&self) -> bool {
        let (up, total) = self.shared.holders_up();
        self.shared.redis.ready.ready(up, total)
    }

    fn available(&self, channel: &str) -> bool {
        let shared = &self.shared;
        // One Redis (standalone, Sentinel): the node is not ready anyway, and a
        // subscription made now is served once Redis is back (history fills the
        // gap). A reconnect (a restart, a failover) is not an outage either: only
        // an instance down for longer than a reconnect takes refuses its channels.
        if shared.holders().nth(1).is_none() {
            return true;
        }
        let conns = shared.holder_of(channel);
        if conns.iter().all(|s| shared.shard_ok(s)) {
            return true;
        }
        let grace = (shared.redis.reconnect_max * 2).max(Duration::from_secs(1));
        !conns.iter().any(|s| s.down_for() > grace)
    }

    async fn subscribed(&self, channel: &str) -> bool {
        let shard = &self.shared.shards[shard_of(&self.shared, channel)];
        let wait = async {
            loop {
                let changed = shard.confirmed_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if shard.is_confirmed(channel) {
                    return;
                }
                changed.await;
            }
        };
        timeout(CONFIRM_TIMEOUT, wait).await.is_ok()
    }

    async fn history(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<HistoryPage, BrokerError> {
        self.shared
            .reader
            .history_page(channel, after, limit, max_bytes)
            .await
            .map_err(broker_error)
    }

    async fn ack(&self, channel: &str, offset: u64) -> Result<Option<u64>, BrokerError> {
        self.shared
            .reader
            .ack_channel(channel, offset)
            .await
            .map_err(broker_error)
    }

    async fn position(
        &self,
        channel: &str,
    ) -> Result<(HistoryPage, Option<StreamPosition>), BrokerError> {
        let (page, acked) = self
            .shared
            .reader
            .position_channel(channel)
            .await
            .map_err(broker_error)?;
        Ok((page, acked))
    }
}

/// Whether a Redis error says the node's user or password is wrong or lacks a
/// right: a mistake in the deployment that no retry heals, logged as an error.
pub(crate) fn misconfigured(why: &str) -> bool {
    // Redis' own codes (a subscriber connection's raw reply) and the redis
    // crate's spelling of them (`NoPerm: ...`, `AuthenticationFailed`).
    let why = why.to_ascii_lowercase();
    [
        "noperm",
        "wrongpass",
        "noauth",
        "authenticationfailed",
        "no permissions",
    ]
    .iter()
    .any(|k| why.contains(k))
}

fn broker_error(e: PublishError) -> BrokerError {
    if let PublishError::Unavailable(m) = &e
        && misconfigured(m)
    {
        tracing::error!(error = %m, "redis refused the gateway's command: check its ACL user (docs/operations.md)");
    }
    match e {
        PublishError::Unavailable(m) => BrokerError::Unavailable(m),
        PublishError::QuotaExceeded(m) => BrokerError::Quota(m),
        PublishError::Conflict { offset, epoch } => {
            BrokerError::Conflict(StreamPosition { epoch, offset })
        }
        other => BrokerError::Rejected(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use protocol::topology::channel_hash;

    #[test]
    fn standalone_shards_are_stable_and_spread() {
        let of = |c: &str| (channel_hash(c) % 4) as usize;
        assert_eq!(of("news"), of("news"));
        let mut counts = [0usize; 4];
        for i in 0..1000 {
            counts[of(&format!("$user:{i}"))] += 1;
        }
        assert!(counts.iter().all(|c| *c > 150), "{counts:?}");
    }
}
