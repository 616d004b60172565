//! Publish targeted notifications to Tidings gateways through Redis.
//!
//! A backend builds a notification with [`Publisher`] (to a user, several users, a
//! channel, several channels or everyone), and the SDK writes the protocol's Redis
//! envelope (MessagePack) to each target's Redis channel with `PUBLISH`. Every
//! gateway node that holds a connection interested in the target is subscribed to
//! that channel and delivers it; the [`Receipt`] says how many nodes received it.
//! Channel names and the envelope come from the `protocol` crate, the same code the
//! gateway uses, and the gateway's own HTTP publish API goes through this crate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), publisher::PublishError> {
//! use publisher::Publisher;
//! use serde_json::json;
//!
//! let publisher = Publisher::builder("redis://127.0.0.1:6379").build()?;
//! let receipt = publisher
//!     .to_user("alice")
//!     .event("order.shipped")
//!     .payload(&json!({"order": 42}))
//!     .id("order-42-shipped")
//!     .send()
//!     .await?;
//! println!("delivered by {} gateway node(s)", receipt.nodes);
//! # Ok(()) }
//! ```
//!
//! Publishing while Redis is unreachable returns [`PublishError::Unavailable`], never
//! a silent success. Redis pub/sub is at-most-once: a node that is not subscribed
//! when the message is published does not get it.
//!
//! Beyond one Redis the API stays the same and only the builder changes (see
//! [`Topology`]): [`Publisher::sharded`] spreads channels over several independent
//! Redis instances (each channel owned by one, by consistent hashing), and
//! [`Publisher::cluster`] publishes to a Redis Cluster with sharded pub/sub
//! (`SPUBLISH`), every key and the shard channel of one channel in one slot.
//!
//! ```no_run
//! # fn demo() -> Result<(), publisher::PublishError> {
//! use publisher::Publisher;
//!
//! let sharded = Publisher::sharded(["redis://r1:6379", "redis://r2:6379"]).build()?;
//! let cluster = Publisher::cluster(["redis://c1:6379", "redis://c2:6379"])
//!     .partitions(16) // = the gateways' --redis-cluster-partitions
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! Production Redis: `rediss://` URLs use TLS (rustls, verified against the system's
//! roots or [`PublisherBuilder::tls_ca_file`], with an optional client certificate);
//! [`PublisherBuilder::credentials`] sets an ACL user and password apart from the
//! URLs; [`Publisher::sentinel`] finds a primary through Sentinel and follows its
//! failovers. The [`connect`] module opens every connection, and the gateway uses
//! it for its own.
//!
//! ```no_run
//! # fn demo() -> Result<(), publisher::PublishError> {
//! use publisher::{Publisher, Secret};
//!
//! let password = Secret::from_file("/etc/redis-auth/password".as_ref())
//!     .map_err(|e| publisher::PublishError::Config(e.to_string()))?;
//! let tls = Publisher::builder("rediss://redis.internal:6380")
//!     .tls_ca_file("/etc/redis-tls/ca.crt")
//!     .credentials(Some("tidings-publisher".into()), password)
//!     .build()?;
//! let sentinel = Publisher::sentinel(["redis://s1:26379", "redis://s2:26379"], "mymaster")
//!     .build()?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::history::HistoryRules;
use protocol::keys::KeySpace;
use protocol::target::{self, Target};
use protocol::topology;
use protocol::{Payload, Publication, envelope};
use serde::Serialize;

mod backend;
mod builder;
pub mod connect;
mod inbox;
pub mod presence;
mod script;
pub mod sentinel;

use backend::{Backend, Conn};
pub use backend::{Endpoint, Topology};
pub use builder::PublisherBuilder;
pub use connect::{Connector, RedisOptions, Secret, TlsOptions};
pub use inbox::{HistoryPage, Notification};
pub use protocol::history::StreamPosition;

/// Default largest payload (JSON text), the same as the gateway's default.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// Errors of publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Redis could not be reached or refused the command; nothing was published
    /// (for multi-target publishes: possibly only some targets were).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// The payload's JSON text is larger than the configured maximum.
    #[error("payload is {size} bytes, larger than the maximum {max}")]
    PayloadTooLarge { size: usize, max: usize },
    /// A user id or channel name breaks the naming rules, or the target list is empty.
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// The event name breaks the naming rules.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The payload could not be serialized, or raw bytes were not valid JSON.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// The builder's settings are invalid (e.g. a malformed URL).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A budget is used up (the history channels of a rule); nothing more was
    /// published for the targets named. Waiting helps: histories expire.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// A conditional publish ([`Publish::expect`]) found the channel's history at
    /// another position (given here); nothing was published. Catch up and retry.
    #[error("conflict: the channel is at offset {offset} of epoch `{epoch}`")]
    Conflict { offset: u64, epoch: String },
}

/// What a publish reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// Gateway nodes that received the notification, summed over targets (Redis
    /// `PUBLISH` replies: each interested node subscribes once per channel).
    pub nodes: u64,
    /// Nodes reached per target, in the order the targets were given.
    pub per_target: Vec<u64>,
    /// History offset per target (`None` for channels without history).
    pub offsets: Vec<Option<u64>>,
    /// Targets skipped because their idempotency key (the message id) was already
    /// published within the idempotency window.
    pub duplicates: usize,
    /// A conditional publish's history epoch (with `offsets[0]`, the channel's new
    /// position); `None` for other publishes.
    pub epoch: Option<String>,
}

struct Inner {
    backend: Backend,
    keys: KeySpace,
    topology: Topology,
    max_payload: usize,
    timeout: Duration,
    history: HistoryRules,
    idempotency_window: Duration,
}

/// Publishes notifications through Redis. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("namespace", &self.inner.keys.namespace())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Starts a builder for the Redis at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> PublisherBuilder {
        Self::with_topology(Topology::Standalone(url.into()))
    }

    /// Starts a builder for several independent Redis instances (sharded mode).
    pub fn sharded<I, S>(urls: I) -> PublisherBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_topology(Topology::Sharded(
            urls.into_iter().map(Into::into).collect(),
        ))
    }

    /// Starts a builder for a Redis Cluster reached through these seed nodes.
    pub fn cluster<I, S>(seeds: I) -> PublisherBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_topology(Topology::Cluster {
            seeds: seeds.into_iter().map(Into::into).collect(),
            partitions: topology::DEFAULT_PARTITIONS,
        })
    }

    /// Starts a builder for any [`Topology`].
    pub fn with_topology(topology: Topology) -> PublisherBuilder {
        PublisherBuilder::new(topology)
    }

    /// Starts a builder for a Redis primary managed by Sentinel: the sentinels'
    /// URLs and the master name they monitor.
    pub fn sentinel<I, S>(sentinels: I, master: impl Into<String>) -> PublisherBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_topology(Topology::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master: master.into(),
        })
    }

    /// The instances this publisher writes to (none for a cluster), in routing
    /// order: [`Publisher::route`] picks among them.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        match &self.inner.backend {
            Backend::Instances(lanes) => lanes.iter().map(|l| l.endpoint.clone()).collect(),
            Backend::Cluster(_) => Vec::new(),
        }
    }

    fn start(&self, target: Target) -> Publish<'_> {
        Publish {
            publisher: self,
            target,
            event: envelope::DEFAULT_EVENT.to_owned(),
            payload: Ok(Payload::null()),
            id: None,
            expect: None,
        }
    }

    /// A notification for every connection of one user.
    pub fn to_user(&self, user: impl Into<String>) -> Publish<'_> {
        self.start(Target::Users(vec![user.into()]))
    }

    /// A notification for every connection of each of these users.
    pub fn to_users<I, S>(&self, users: I) -> Publish<'_>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.start(Target::Users(users.into_iter().map(Into::into).collect()))
    }

    /// A notification for every subscriber of a channel.
    pub fn to_channel(&self, channel: impl Into<String>) -> Publish<'_> {
        self.start(Target::Channels(vec![channel.into()]))
    }

    /// A notification for every subscriber of each of these channels.
    pub fn to_channels<I, S>(&self, channels: I) -> Publish<'_>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.start(Target::Channels(
            channels.into_iter().map(Into::into).collect(),
        ))
    }

    /// A notification for every connection on every node.
    pub fn broadcast(&self) -> Publish<'_> {
        self.start(Target::Broadcast)
    }

    /// Publishes a liveness probe on a raw Redis channel (built with
    /// [`KeySpace::probe_channel`]) and returns how many subscribers got it.
    /// Gateways use this to check that their subscriber connections still deliver.
    /// `shard` is the instance to publish on in sharded mode; in a cluster the
    /// channel's hash tag picks the node.
    pub async fn probe(&self, shard: usize, redis_channel: &str) -> Result<u64, PublishError> {
        self.probe_with(shard, redis_channel, "probe").await
    }

    /// [`probe`](Self::probe) with a payload of the caller's (e.g. the time it was
    /// sent, so the subscriber can tell how far behind it reads).
    pub async fn probe_with(
        &self,
        shard: usize,
        redis_channel: &str,
        payload: &str,
    ) -> Result<u64, PublishError> {
        let inner = &self.inner;
        let deadline = inner.deadline();
        let mut conn = inner.conn_before(shard, deadline).await?;
        let mut cmd = redis::cmd(inner.publish_command());
        cmd.arg(redis_channel).arg(payload);
        let sent = cmd.query_async::<u64>(&mut conn);
        let r = tokio::time::timeout_at(deadline, sent).await;
        inner.settle(&conn, r)?.map_err(unavailable)
    }

    /// Publishes ready-made publications (one per target channel) in as few round
    /// trips as possible. Channels with history, and publications with a message id
    /// (idempotency key), go through one Lua script each (XADD + PUBLISH atomically);
    /// the rest are plain `PUBLISH`es. This is the path the builder and the gateway
    /// use; prefer the builder in application code.
    pub async fn publish_all(&self, pubs: &[Publication]) -> Result<Receipt, PublishError> {
        for p in pubs {
            if p.payload.len() > self.inner.max_payload {
                return Err(PublishError::PayloadTooLarge {
                    size: p.payload.len(),
                    max: self.inner.max_payload,
                });
            }
        }
        let inner = self.inner.clone();
        // One group per owning shard (or cluster partition, whose names share one
        // slot), each in one round trip; the groups run concurrently.
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, p) in pubs.iter().enumerate() {
            groups.entry(inner.route(&p.channel)).or_default().push(i);
        }
        if groups.len() == 1 {
            // One owner (always so on a standalone Redis): one round trip.
            let route = groups.keys().next().copied().unwrap_or(0);
            return inner.publish_on(route, pubs).await;
        }
        let runs = groups.iter().map(|(&route, idx)| {
            let inner = &inner;
            let group: Vec<Publication> = idx.iter().map(|&i| pubs[i].clone()).collect();
            async move { inner.publish_on(route, &group).await }
        });
        let results = futures_util::future::join_all(runs).await;
        let mut receipt = Receipt {
            nodes: 0,
            per_target: vec![0; pubs.len()],
            offsets: vec![None; pubs.len()],
            duplicates: 0,
            epoch: None,
        };
        for (idx, result) in groups.values().zip(results) {
            let r = result?;
            receipt.nodes += r.nodes;
            receipt.duplicates += r.duplicates;
            for (k, &i) in idx.iter().enumerate() {
                receipt.per_target[i] = r.per_target[k];
                receipt.offsets[i] = r.offsets[k];
            }
        }
        Ok(receipt)
    }

    /// Publishes `p` only if its channel's history is at `at` (see
    /// [`Publish::expect`]); the receipt's offset is the publication's.
    pub async fn publish_if(
        &self,
        p: Publication,
        at: &StreamPosition,
    ) -> Result<Receipt, PublishError> {
        if p.payload.len() > self.inner.max_payload {
            return Err(PublishError::PayloadTooLarge {
                size: p.payload.len(),
                max: self.inner.max_payload,
            });
        }
        if self.inner.history.policy(&p.channel).is_none() {
            return Err(PublishError::InvalidTarget(format!(
                "channel `{}` keeps no history: a conditional publish needs one",
                p.channel
            )));
        }
        let route = self.inner.route(&p.channel);
        let at = at.clone();
        on_conn(&self.inner, route, move |inner, conn| {
            Box::pin(async move { script::publish_if(inner, conn, &p, &at).await })
        })
        .await
    }

    /// The namespace of Redis names.
    pub fn namespace(&self) -> &str {
        self.inner.keys.namespace()
    }

    /// The Redis names this publisher uses (they depend on the topology).
    pub fn keys(&self) -> &KeySpace {
        &self.inner.keys
    }

    /// Where this publisher's Redis lives.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The shard (sharded mode) or partition (cluster mode) that owns a channel;
    /// 0 on a standalone Redis.
    pub fn route(&self, channel: &str) -> usize {
        self.inner.route(channel)
    }

    /// The history rules this publisher applies.
    pub fn history_rules(&self) -> &HistoryRules {
        &self.inner.history
    }

    /// Runs `f` on a connection to the Redis that owns `channel`.
    pub(crate) async fn with_conn<T, F>(&self, channel: &str, f: F) -> Result<T, PublishError>
    where
        F: for<'c> FnOnce(
            &'c Inner,
            &'c mut Conn,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, PublishError>> + Send + 'c>,
        >,
    {
        on_conn(&self.inner, self.inner.route(channel), f).await
    }

    /// Runs `f` on a connection to Redis `route` (shard or partition).
    pub(crate) async fn on_route<T, F>(&self, route: usize, f: F) -> Result<T, PublishError>
    where
        F: for<'c> FnOnce(
            &'c Inner,
            &'c mut Conn,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, PublishError>> + Send + 'c>,
        >,
    {
        on_conn(&self.inner, route, f).await
    }
}

/// Runs `f` on a connection to Redis `route` (shard or partition), getting the
/// connection and running `f` within the publisher's timeout together. A connection
/// whose request got no answer in time is replaced.
async fn on_conn<T, F>(inner: &Inner, route: usize, f: F) -> Result<T, PublishError>
where
    F: for<'c> FnOnce(
        &'c Inner,
        &'c mut Conn,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, PublishError>> + Send + 'c>,
    >,
{
    let deadline = inner.deadline();
    let mut conn = inner.conn_before(route, deadline).await?;
    let r = tokio::time::timeout_at(deadline, f(inner, &mut conn)).await;
    inner.settle(&conn, r)?
}

/// A Redis URL with its password (and user name) replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => url.to_owned(),
    }
}

impl Inner {
    /// When a request started now must have its answer.
    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout
    }

    fn late(&self) -> PublishError {
        PublishError::Unavailable(format!("no answer within {:?}", self.timeout))
    }

    /// A connection to Redis `route` (shard or partition), by `deadline`.
    async fn conn_before(
        &self,
        route: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Conn, PublishError> {
        tokio::time::timeout_at(deadline, self.backend.conn(route))
            .await
            .map_err(|_| self.late())?
    }

    /// The outcome of a request bounded by the deadline; a connection whose request
    /// got no answer in time is replaced.
    fn settle<T>(
        &self,
        conn: &Conn,
        r: Result<T, tokio::time::error::Elapsed>,
    ) -> Result<T, PublishError> {
        r.map_err(|_| {
            conn.timed_out();
            self.late()
        })
    }

    /// Publishes publications owned by one shard or partition in one round trip.
    async fn publish_on(
        &self,
        route: usize,
        pubs: &[Publication],
    ) -> Result<Receipt, PublishError> {
        let deadline = self.deadline();
        let mut conn = self.conn_before(route, deadline).await?;
        let r = tokio::time::timeout_at(deadline, script::publish(self, &mut conn, pubs)).await;
        self.settle(&conn, r)?
    }

    fn route(&self, channel: &str) -> usize {
        match &self.backend {
            Backend::Instances(instances) => topology::shard_of(channel, instances.len()),
            Backend::Cluster(_) => self.keys.partition_of(channel),
        }
    }

    /// A history rule's budget on one Redis that holds channels (an instance, or a
    /// cluster partition): the rule's budget spread evenly over them (0: none).
    fn budget_here(&self, policy: Option<protocol::history::Policy>) -> u64 {
        let Some(p) = policy.filter(|p| p.max_channels > 0) else {
            return 0;
        };
        let holders = match &self.backend {
            Backend::Instances(i) => i.len(),
            Backend::Cluster(_) => self.keys.partitions().map_or(1, |p| p.len()),
        } as u64;
        p.max_channels.div_ceil(holders.max(1))
    }

    /// `SPUBLISH` (sharded pub/sub) in a cluster, else `PUBLISH`.
    fn publish_command(&self) -> &'static str {
        if self.keys.partitions().is_some() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> PublishError {
    PublishError::Unavailable(e.to_string())
}

/// One notification being built; [`Publish::send`] publishes it.
#[must_use = "a notification is only published by send()"]
pub struct Publish<'a> {
    publisher: &'a Publisher,
    target: Target,
    event: String,
    payload: Result<Payload, PublishError>,
    id: Option<String>,
    expect: Option<StreamPosition>,
}

impl Publish<'_> {
    /// Publishes only if the channel's history is at `offset` of `epoch` (its
    /// latest offset; `0` and `""` before its first message), atomically: the
    /// optimistic-concurrency primitive (collaborative editing orders operations
    /// with it). Otherwise fails with [`PublishError::Conflict`] carrying the
    /// current position. One channel with history only.
    pub fn expect(mut self, offset: u64, epoch: impl Into<String>) -> Self {
        self.expect = Some(StreamPosition {
            epoch: epoch.into(),
            offset,
        });
        self
    }

    /// The application event name (default `message`).
    pub fn event(mut self, event: impl Into<String>) -> Self {
        self.event = event.into();
        self
    }

    /// The payload: any value that serializes to JSON.
    pub fn payload<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        self.payload =
            Payload::from_value(value).map_err(|e| PublishError::InvalidPayload(e.to_string()));
        self
    }

    /// The payload as ready-made JSON bytes (validated, not re-encoded).
    pub fn raw_payload(mut self, json: impl AsRef<[u8]>) -> Self {
        self.payload = std::str::from_utf8(json.as_ref())
            .map_err(|e| PublishError::InvalidPayload(e.to_string()))
            .and_then(|s| {
                Payload::from_json(s).map_err(|e| PublishError::InvalidPayload(e.to_string()))
            });
        self
    }

    /// A message id that clients see as `msg_id` (also the idempotency key for
    /// gateways that keep history).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Validates and publishes; returns how many gateway nodes received it.
    pub async fn send(self) -> Result<Receipt, PublishError> {
        let channels = self
            .target
            .channels()
            .map_err(|e| PublishError::InvalidTarget(e.to_string()))?;
        envelope::validate_event(&self.event).map_err(PublishError::InvalidEvent)?;
        let payload = self.payload?;
        if let Some(id) = &self.id {
            target::validate_message_id(id).map_err(PublishError::InvalidPayload)?;
        }
        let pubs: Vec<Publication> = channels
            .into_iter()
            .map(|ch| {
                let mut p = Publication::new(ch, self.event.clone(), payload.clone());
                p.id = self.id.clone();
                p
            })
            .collect();
        match self.expect {
            None => self.publisher.publish_all(&pubs).await,
            Some(at) => match <[Publication; 1]>::try_from(pubs) {
                Ok([p]) => self.publisher.publish_if(p, &at).await,
                Err(_) => Err(PublishError::InvalidTarget(
                    "a conditional publish has exactly one target".into(),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher() -> Publisher {
        Publisher::builder("redis://127.0.0.1:1")
            .max_payload(16)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn validation_happens_before_redis() {
        let p = publisher();
        let e = p.to_user("bad user").send().await.unwrap_err();
        assert!(matches!(e, PublishError::InvalidTarget(_)), "{e}");
        let e = p.to_channel("$broadcast").send().await.unwrap_err();
        assert!(matches!(e, PublishError::InvalidTarget(_)), "{e}");
        let e = p.to_users(Vec::<String>::new()).send().await.unwrap_err();
        assert!(matches!(e, PublishError::InvalidTarget(_)), "{e}");
        let e = p.to_user("a").event("no spaces").send().await.unwrap_err();
        assert!(matches!(e, PublishError::InvalidEvent(_)), "{e}");
        let e = p
            .to_user("a")
            .raw_payload("{oops")
            .send()
            .await
            .unwrap_err();
        assert!(matches!(e, PublishError::InvalidPayload(_)), "{e}");
        let e = p
            .to_user("a")
            .payload(&"x".repeat(100))
            .send()
            .await
            .unwrap_err();
        assert!(matches!(e, PublishError::PayloadTooLarge { .. }), "{e}");
        // Valid, but nothing listens on port 1.
        let e = p.to_user("a").send().await.unwrap_err();
        assert!(matches!(e, PublishError::Unavailable(_)), "{e}");
        assert!(Publisher::builder("not a url").build().is_err());
    }
}
