//! The Redis broker: gateway nodes as stateless replicas behind Redis pub/sub.
//!
//! Publishing goes through the publisher SDK (the same path backends use), which also
//! decides where a channel lives: one Redis, one of several independent instances
//! (sharded mode, jump hash), or one partition of a Redis Cluster. Receiving uses
//! dedicated pub/sub connections ("shards"); each channel maps to one shard, so
//! per-channel order is kept while several read loops share the load:
//!
//! - standalone: `--redis-subscribers` connections, the channel hashed across them;
//! - sharded: `--redis-subscribers` connections per instance, each channel on a
//!   connection to the instance that owns it;
//! - cluster: one connection per partition, to the master that owns the partition's
//!   slot (found with `CLUSTER SLOTS`), with sharded pub/sub (`SSUBSCRIBE`; all
//!   channels of a partition share a slot). A connection that drops, whose slot moves
//!   away (`sunsubscribe` pushed by Redis), or whose probe is not heard, looks the
//!   owner up again and resubscribes, which follows failovers and resharding.
//!
//! A shard subscribes only to channels the hub has local interest in:
//! SUBSCRIBE on the first interest (batched), UNSUBSCRIBE after a delay once the last
//! interest is gone. After any reconnect a shard rebuilds its subscriptions from the
//! hub's interest set, never from what the connection used to have. A probe message
//! published through the normal publishing path must come back on every shard
//! within the probe interval, or the shard is replaced: a connection that is open
//! but silently stopped delivering (e.g. still attached to a demoted master after a
//! failover) is caught this way.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use protocol::Publication;
use protocol::keys::KeySpace;
use protocol::topology::channel_hash;
use publisher::{HistoryPage, PublishError, Publisher, Topology};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, PushKind, Value};
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::{Broker, BrokerError, Receipt};
use crate::hub::Table;
use crate::metrics::Metrics;

/// Channels per SUBSCRIBE/UNSUBSCRIBE command when many change at once.
const BATCH: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the Redis broker (from the gateway config).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Where Redis lives: one instance, several independent ones, or a cluster.
    pub topology: Topology,
    pub namespace: String,
    pub node_id: String,
    pub subscribers: usize,
    pub unsubscribe_delay: Duration,
    pub probe_interval: Duration,
    pub reconnect_max: Duration,
    pub max_payload: usize,
    pub history: protocol::history::HistoryRules,
    pub idempotency_window: Duration,
}

/// What one subscriber connection listens to.
enum Target {
    /// Classic pub/sub on one instance (the only one, or shard `instance`).
    Instance {
        instance: usize,
        client: redis::Client,
    },
    /// Sharded pub/sub for one cluster partition, on the master of its slot.
    Partition { slot: u16 },
}

struct Shard {
    index: usize,
    target: Target,
    /// Channels whose local interest changed since the shard last looked.
    dirty: Mutex<HashSet<Arc<str>>>,
    wake: Notify,
    up: AtomicBool,
    /// Channels Redis confirmed as subscribed on the current connection, so a
    /// resuming session can wait until live delivery really runs before it reads
    /// history (otherwise a message published in between would be lost).
    confirmed: Mutex<HashSet<Arc<str>>>,
    confirmed_changed: Notify,
}

impl Shard {
    fn confirm(&self, channels: &[Arc<str>], subscribed: bool) {
        let mut c = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        for ch in channels {
            if subscribed {
                c.insert(ch.clone());
            } else {
                c.remove(ch);
            }
        }
        drop(c);
        self.confirmed_changed.notify_waiters();
    }

    fn is_confirmed(&self, channel: &str) -> bool {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(channel)
    }
}

struct Shared {
    settings: RedisSettings,
    keys: KeySpace,
    /// Subscriber connections per instance (standalone and sharded modes).
    per_instance: usize,
    /// Cluster nodes to ask for the slot map: the seeds, then every node seen.
    cluster: Option<ClusterNodes>,
    publisher: Publisher,
    table: Arc<Table>,
    metrics: Arc<Metrics>,
    shards: Vec<Arc<Shard>>,
}

pub struct RedisBroker {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The subscriber connection of a channel: a fixed hash (FNV-1a) across the
/// connections of the instance that owns it, or its cluster partition.
fn shard_of(shared: &Shared, channel: &str) -> usize {
    if shared.cluster.is_some() {
        return shared.keys.partition_of(channel);
    }
    let instance = shared.publisher.route(channel);
    let within = (channel_hash(channel) % shared.per_instance as u64) as usize;
    instance * shared.per_instance + within
}

/// The cluster nodes a partition connection asks where its slot lives.
struct ClusterNodes {
    /// Connection settings (credentials, database) of the first seed, for every node.
    template: ConnectionInfo,
    /// Seeds first, then nodes learned from slot maps; never shrinks below the seeds.
    known: Mutex<Vec<(String, u16)>>,
    /// Where the next lookup starts, so one unreachable node is not always asked first.
    next: AtomicUsize,
}

impl ClusterNodes {
    fn new(seeds: &[String]) -> Result<Self, String> {
        let mut known = Vec::new();
        let mut template = None;
        for url in seeds {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| e.to_string())?;
            match info.addr() {
                ConnectionAddr::Tcp(host, port) => known.push((host.clone(), *port)),
                _ => return Err(format!("{url}: cluster nodes are reached over TCP")),
            }
            template.get_or_insert(info);
        }
        let template = template.ok_or("no cluster seed URL")?;
        Ok(Self {
            template,
            known: Mutex::new(known),
            next: AtomicUsize::new(0),
        })
    }

    fn info(&self, host: &str, port: u16, resp3: bool) -> ConnectionInfo {
        let mut redis = self.template.redis_settings().clone();
        if resp3 {
            redis = redis.set_protocol(redis::ProtocolVersion::RESP3);
        }
        self.template
            .clone()
            .set_addr(ConnectionAddr::Tcp(host.to_owned(), port))
            .set_redis_settings(redis)
    }

    /// The master that owns `slot`, as the first node that answers `CLUSTER SLOTS`
    /// sees it.
    async fn owner(&self, slot: u16) -> Result<(String, u16), String> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::from("no cluster node known");
        for i in 0..known.len() {
            let (host, port) = &known[(start + i) % known.len()];
            match self.slot_map(host, *port).await {
                Ok(map) => {
                    let mut k = self.known.lock().unwrap_or_else(|e| e.into_inner());
                    for (_, _, node) in &map {
                        if !k.contains(node) {
                            k.push(node.clone());
                        }
                    }
                    drop(k);
                    return map
                        .into_iter()
                        .find(|(a, b, _)| (*a..=*b).contains(&slot))
                        .map(|(_, _, node)| node)
                        .ok_or_else(|| format!("slot {slot} is not served"));
                }
                Err(e) => last = format!("{host}:{port}: {e}"),
            }
        }
        Err(last)
    }

    /// `CLUSTER SLOTS` of one node: `(first, last, master)` per range.
    async fn slot_map(&self, host: &str, port: u16) -> Result<SlotMap, String> {
        let client =
            redis::Client::open(self.info(host, port, false)).map_err(|e| e.to_string())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        parse_slots(&reply, host).ok_or_else(|| "unexpected CLUSTER SLOTS reply".to_string())
    }
}

/// `(first slot, last slot, (master host, master port))` of each `CLUSTER SLOTS` range.
type SlotMap = Vec<(u16, u16, (String, u16))>;

fn parse_slots(reply: &Value, asked: &str) -> Option<SlotMap> {
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges
        .iter()
        .map(|r| {
            let Value::Array(f) = r else { return None };
            let Value::Array(master) = f.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                _ => return None,
            };
            // An empty or unknown endpoint means "the address you asked".
            let host = if host.is_empty() || host == "?" {
                asked.to_owned()
            } else {
                host
            };
            Some((
                int(f.first()?)?,
                int(f.get(1)?)?,
                (host, int(master.get(1)?)?),
            ))
        })
        .collect()
}

impl RedisBroker {
    /// Starts the shard tasks; connecting happens in the background, so a node can
    /// start (not ready) while Redis is down.
    pub fn start(
        settings: RedisSettings,
        table: Arc<Table>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BrokerError> {
        let config = |e: String| BrokerError::Unavailable(e);
        let publisher = Publisher::with_topology(settings.topology.clone())
            .namespace(settings.namespace.clone())
            .max_payload(settings.max_payload)
            .history(settings.history.clone())
            .idempotency_window(settings.idempotency_window)
            .build()
            .map_err(|e| config(e.to_string()))?;
        let keys = publisher.keys().clone();
        let per_instance = settings.subscribers.max(1);
        let mut targets = Vec::new();
        let cluster = match &settings.topology {
            Topology::Standalone(_) | Topology::Sharded(_) => {
                for (instance, url) in settings.topology.urls().iter().enumerate() {
                    let client =
                        redis::Client::open(url.as_str()).map_err(|e| config(e.to_string()))?;
                    for _ in 0..per_instance {
                        targets.push(Target::Instance {
                            instance,
                            client: client.clone(),
                        });
                    }
                }
                None
            }
            Topology::Cluster { seeds, .. } => {
                let parts = keys
                    .partitions()
                    .ok_or_else(|| config("cluster without partitions".into()))?;
                targets.extend((0..parts.len()).map(|i| Target::Partition {
                    slot: parts.slot(i),
                }));
                Some(ClusterNodes::new(seeds).map_err(config)?)
            }
        };
        let shards = targets
            .into_iter()
            .enumerate()
            .map(|(index, target)| {
                Arc::new(Shard {
                    index,
                    target,
                    dirty: Mutex::new(HashSet::new()),
                    wake: Notify::new(),
                    up: AtomicBool::new(false),
                    confirmed: Mutex::new(HashSet::new()),
                    confirmed_changed: Notify::new(),
                })
            })
            .collect();
        metrics.broker.up.set(0);
        let shared = Arc::new(Shared {
            settings,
            keys,
            per_instance,
            cluster,
            publisher,
            table,
            metrics,
            shards,
        });
        let tasks = shared
            .shards
            .iter()
            .map(|s| tokio::spawn(run_shard(shared.clone(), s.clone())))
            .collect();
        Ok(Self { shared, tasks })
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
            }),
            Err(e) => {
                self.shared.metrics.broker.publish_errors.inc();
                Err(match e {
                    PublishError::Unavailable(m) => BrokerError::Unavailable(m),
                    other => BrokerError::Rejected(other.to_string()),
                })
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
        self.shared
            .shards
            .iter()
            .all(|s| s.up.load(Ordering::Acquire))
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
        timeout(COMMAND_TIMEOUT, wait).await.is_ok()
    }

    async fn history(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        self.shared
            .publisher
            .history(channel, after, limit)
            .await
            .map_err(broker_error)
    }

    async fn ack(&self, channel: &str, offset: u64) -> Result<Option<u64>, BrokerError> {
        self.shared
            .publisher
            .ack_channel(channel, offset)
            .await
            .map_err(broker_error)
    }

    async fn position(
        &self,
        channel: &str,
    ) -> Result<(HistoryPage, Option<(String, u64)>), BrokerError> {
        self.shared
            .publisher
            .position_channel(channel)
            .await
            .map_err(broker_error)
    }
}

fn broker_error(e: PublishError) -> BrokerError {
    match e {
        PublishError::Unavailable(m) => BrokerError::Unavailable(m),
        other => BrokerError::Rejected(other.to_string()),
    }
}

fn set_up(shared: &Shared, shard: &Shard, up: bool) {
    shard.up.store(up, Ordering::Release);
    shared
        .metrics
        .broker
        .shard_up
        .with_label_values(&[&shard.index.to_string()])
        .set(i64::from(up));
    let all = shared.shards.iter().all(|s| s.up.load(Ordering::Acquire));
    shared.metrics.broker.up.set(i64::from(all));
}

/// Keeps one shard connected for the life of the node.
async fn run_shard(shared: Arc<Shared>, shard: Arc<Shard>) {
    let base = Duration::from_millis(100);
    let mut delay = base;
    let mut first = true;
    loop {
        if !first {
            shared.metrics.broker.reconnects.inc();
        }
        let connected_at = Instant::now();
        let why = serve(&shared, &shard, first).await;
        set_up(&shared, &shard, false);
        first = false;
        if connected_at.elapsed() > Duration::from_secs(30) {
            delay = base;
        }
        tracing::warn!(shard = shard.index, reason = %why, retry_in = ?delay, "redis subscriber connection lost");
        // Equal jitter: never a tight loop, never a synchronized herd.
        let half = delay / 2;
        sleep(half + half.mul_f64(rand::random::<f64>())).await;
        delay = (delay * 2).min(shared.settings.reconnect_max.max(base));
    }
}

/// The command side of a subscriber connection.
enum Sink {
    /// RESP2 pub/sub connection (`SUBSCRIBE`).
    Classic(redis::aio::PubSubSink),
    /// RESP3 connection whose pushes carry the messages (`SSUBSCRIBE`).
    Sharded(redis::aio::MultiplexedConnection),
}

/// The message side of a subscriber connection.
enum Source {
    Classic(redis::aio::PubSubStream),
    Sharded(UnboundedReceiver<redis::PushInfo>),
}

enum Incoming {
    Msg(redis::Msg),
    Push(redis::PushInfo),
    Closed,
}

impl Source {
    async fn next(&mut self) -> Incoming {
        match self {
            Source::Classic(s) => s.next().await.map_or(Incoming::Closed, Incoming::Msg),
            Source::Sharded(rx) => match rx.recv().await {
                Some(p) if p.kind == PushKind::Disconnection => Incoming::Closed,
                Some(p) => Incoming::Push(p),
                None => Incoming::Closed,
            },
        }
    }
}

fn bulk(v: Option<&Value>) -> Option<&[u8]> {
    match v {
        Some(Value::BulkString(b)) => Some(b),
        _ => None,
    }
}

impl Sink {
    async fn command(&mut self, subscribe: bool, names: &[String]) -> Result<(), String> {
        let fut = async {
            match self {
                Sink::Classic(sink) if subscribe => sink.subscribe(names).await,
                Sink::Classic(sink) => sink.unsubscribe(names).await,
                Sink::Sharded(conn) => {
                    // One command per channel (each answered by one push), pipelined.
                    let verb = if subscribe {
                        "SSUBSCRIBE"
                    } else {
                        "SUNSUBSCRIBE"
                    };
                    let mut pipe = redis::pipe();
                    for n in names {
                        pipe.cmd(verb).arg(n);
                    }
                    let replies: Vec<Value> = pipe.query_async(conn).await?;
                    match replies
                        .into_iter()
                        .find(|v| matches!(v, Value::ServerError(_)))
                    {
                        Some(err) => err.extract_error().map(drop),
                        None => Ok(()),
                    }
                }
            }
        };
        timeout(COMMAND_TIMEOUT, fut)
            .await
            .map_err(|_| "subscribe command timed out".to_string())?
            .map_err(|e| e.to_string())
    }
}

struct Subs<'a> {
    shard: &'a Shard,
    sink: Sink,
    /// Client-visible channels this connection is subscribed to.
    active: HashSet<Arc<str>>,
    /// Channels without local interest, and when to unsubscribe them.
    leaving: HashMap<Arc<str>, Instant>,
    /// `sunsubscribe` pushes we caused ourselves and still expect (sharded pub/sub);
    /// any other one means Redis dropped a subscription (its slot moved).
    unsubscribing: HashMap<String, u32>,
    subscriptions: prometheus::IntGauge,
}

impl Subs<'_> {
    async fn command(
        &mut self,
        subscribe: bool,
        channels: &[Arc<str>],
        shared: &Shared,
    ) -> Result<(), String> {
        for chunk in channels.chunks(BATCH) {
            let names: Vec<String> = chunk
                .iter()
                .map(|c| shared.keys.pubsub_channel(c))
                .collect();
            if !subscribe && matches!(self.sink, Sink::Sharded(_)) {
                for n in &names {
                    *self.unsubscribing.entry(n.clone()).or_default() += 1;
                }
            }
            self.sink.command(subscribe, &names).await?;
            self.shard.confirm(chunk, subscribe);
            let delta = chunk.len() as i64;
            let delta = if subscribe { delta } else { -delta };
            shared.metrics.broker.subscriptions.add(delta);
            self.subscriptions.add(delta);
        }
        Ok(())
    }

    /// Reconciles this connection with the hub after interest changed.
    async fn sync(&mut self, shared: &Shared, shard: &Shard) -> Result<(), String> {
        let dirty: Vec<Arc<str>> = shard
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let mut to_subscribe = Vec::new();
        let later = Instant::now() + shared.settings.unsubscribe_delay;
        for ch in dirty {
            if shared.table.has_interest(&ch) {
                self.leaving.remove(&ch);
                if !self.active.contains(&ch) {
                    to_subscribe.push(ch);
                }
            } else if self.active.contains(&ch) {
                self.leaving.entry(ch).or_insert(later);
            }
        }
        self.command(true, &to_subscribe, shared).await?;
        self.active.extend(to_subscribe);
        Ok(())
    }

    /// Unsubscribes channels whose delay has passed and that are still unwanted.
    async fn leave_due(&mut self, shared: &Shared) -> Result<(), String> {
        let now = Instant::now();
        let due: Vec<Arc<str>> = self
            .leaving
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(c, _)| c.clone())
            .collect();
        let mut gone = Vec::new();
        for ch in due {
            self.leaving.remove(&ch);
            if !shared.table.has_interest(&ch) {
                self.active.remove(&ch);
                gone.push(ch);
            }
        }
        self.command(false, &gone, shared).await
    }

    fn next_leave(&self) -> Option<Instant> {
        self.leaving.values().min().copied()
    }

    /// A `sunsubscribe` push: ours (expected), or Redis dropping a subscription.
    fn unsubscribed_by_redis(&mut self, name: &str) -> bool {
        match self.unsubscribing.get_mut(name) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.unsubscribing.remove(name);
                false
            }
            None => true,
        }
    }
}

/// Opens the connection a shard listens on; returns it and where it goes.
async fn connect(shared: &Shared, shard: &Shard) -> Result<(Sink, Source, String), String> {
    match &shard.target {
        Target::Instance { instance, client } => {
            let pubsub = timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| format!("connect: {e}"))?;
            let (sink, stream) = pubsub.split();
            Ok((
                Sink::Classic(sink),
                Source::Classic(stream),
                format!("instance {instance}"),
            ))
        }
        Target::Partition { slot } => {
            let nodes = shared
                .cluster
                .as_ref()
                .ok_or_else(|| "no cluster configured".to_string())?;
            let (host, port) = timeout(CONNECT_TIMEOUT * 2, nodes.owner(*slot))
                .await
                .map_err(|_| "cluster slot lookup timed out".to_string())?
                .map_err(|e| format!("cluster slot lookup: {e}"))?;
            let client =
                redis::Client::open(nodes.info(&host, port, true)).map_err(|e| e.to_string())?;
            let (tx, rx) = unbounded_channel();
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT))
                .set_push_sender(tx);
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
            Ok((
                Sink::Sharded(conn),
                Source::Sharded(rx),
                format!("{host}:{port} slot {slot}"),
            ))
        }
    }
}

/// One connection's life: connect, rebuild subscriptions, deliver until it fails.
async fn serve(shared: &Shared, shard: &Shard, first: bool) -> String {
    let (sink, mut source, peer) = match connect(shared, shard).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let label = shard.index.to_string();
    let received = shared
        .metrics
        .broker
        .shard_received
        .with_label_values(&[&label]);
    let mut subs = Subs {
        shard,
        sink,
        active: HashSet::new(),
        leaving: HashMap::new(),
        unsubscribing: HashMap::new(),
        subscriptions: shared
            .metrics
            .broker
            .shard_subscriptions
            .with_label_values(&[&label]),
    };
    let probe = shared
        .keys
        .probe_channel(&shared.settings.node_id, shard.index);
    let probe_route = match &shard.target {
        Target::Instance { instance, .. } => *instance,
        Target::Partition { .. } => 0,
    };
    let started = Instant::now();
    // The table is the source of truth: whatever changed meanwhile is in it.
    shard
        .dirty
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let wanted: Vec<Arc<str>> = shared
        .table
        .interests()
        .into_iter()
        .filter(|c| shard_of(shared, c) == shard.index)
        .collect();
    let subscribed = async {
        subs.sink
            .command(true, std::slice::from_ref(&probe))
            .await
            .map_err(|e| format!("probe subscribe: {e}"))?;
        subs.command(true, &wanted, shared).await
    };
    if let Err(e) = subscribed.await {
        let n = subs.active.len() as i64;
        shared.metrics.broker.subscriptions.sub(n);
        subs.subscriptions.sub(n);
        return e;
    }
    subs.active.extend(wanted);
    if !first {
        shared
            .metrics
            .broker
            .resubscribe_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    tracing::info!(
        shard = shard.index,
        redis = %peer,
        channels = subs.active.len(),
        "redis subscriber connected"
    );
    set_up(shared, shard, true);

    let probe_every = shared.settings.probe_interval;
    let mut next_probe = Instant::now() + probe_every;
    let mut probe_sent: Option<Instant> = None;
    let far = Duration::from_secs(3600);
    let why = loop {
        let leave_at = subs.next_leave().unwrap_or_else(|| Instant::now() + far);
        tokio::select! {
            incoming = source.next() => {
                let (name, payload): (&str, &[u8]) = match &incoming {
                    Incoming::Closed => break "connection closed".to_string(),
                    Incoming::Msg(msg) => (msg.get_channel_name(), msg.get_payload_bytes()),
                    Incoming::Push(p) if p.kind == PushKind::SMessage => {
                        match (bulk(p.data.first()), bulk(p.data.get(1))) {
                            (Some(n), Some(b)) => (std::str::from_utf8(n).unwrap_or_default(), b),
                            _ => continue,
                        }
                    }
                    Incoming::Push(p) if p.kind == PushKind::SUnsubscribe => {
                        let name = bulk(p.data.first()).map(String::from_utf8_lossy).unwrap_or_default();
                        if subs.unsubscribed_by_redis(&name) {
                            break format!("redis dropped the subscription of {name} (slot moved)");
                        }
                        continue;
                    }
                    // Confirmations of our own commands.
                    Incoming::Push(_) => continue,
                };
                if name == probe {
                    probe_sent = None;
                    continue;
                }
                shared.metrics.broker.received.inc();
                received.inc();
                match Publication::decode(payload) {
                    Ok(p) if shared.keys.channel_of(name) == Some(p.channel.as_str()) => {
                        shared.table.deliver(&p);
                    }
                    Ok(_) => tracing::warn!("envelope channel does not match its redis channel; dropped"),
                    Err(e) => tracing::warn!(error = %e, "undecodable envelope; dropped"),
                }
            }
            () = shard.wake.notified() => {
                if let Err(e) = subs.sync(shared, shard).await { break e; }
            }
            () = sleep_until(leave_at) => {
                if let Err(e) = subs.leave_due(shared).await { break e; }
            }
            () = sleep_until(next_probe) => {
                next_probe = Instant::now() + probe_every;
                if let Some(sent) = probe_sent
                    && sent.elapsed() >= probe_every {
                        break "liveness probe did not come back".to_string();
                    }
                match shared.publisher.probe(probe_route, &probe).await {
                    Ok(0) => break "redis reports no subscriber for this connection".to_string(),
                    Ok(_) => { probe_sent.get_or_insert_with(Instant::now); }
                    // Publishing failed: the subscriber side will notice on its own.
                    Err(e) => tracing::debug!(error = %e, "probe publish failed"),
                }
            }
        }
    };
    let n = subs.active.len() as i64;
    shared.metrics.broker.subscriptions.sub(n);
    subs.subscriptions.sub(n);
    let active: Vec<Arc<str>> = subs.active.drain().collect();
    shard.confirm(&active, false);
    why
}

#[cfg(test)]
mod tests {
    use protocol::topology::channel_hash;
    use redis::Value;

    use super::parse_slots;

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

    #[test]
    fn cluster_slots_are_parsed() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        let map = parse_slots(&reply, "seed").unwrap();
        assert_eq!(
            map,
            vec![
                (0, 5460, ("10.0.0.1".to_string(), 7000)),
                (5461, 16383, ("seed".to_string(), 7001)),
            ]
        );
        assert!(parse_slots(&Value::Nil, "x").is_none());
    }
}
