//! The Redis broker: gateway nodes as stateless replicas behind Redis pub/sub.
//!
//! Publishing goes through the publisher SDK (the same path backends use). Receiving
//! uses `--redis-subscribers` dedicated pub/sub connections ("shards"); each channel
//! hashes to one shard, so per-channel order is kept while several read loops share
//! the load. A shard subscribes only to channels the hub has local interest in:
//! SUBSCRIBE on the first interest (batched), UNSUBSCRIBE after a delay once the last
//! interest is gone. After any reconnect a shard rebuilds its subscriptions from the
//! hub's interest set, never from what the connection used to have. A probe message
//! published through the normal publishing path must come back on every shard
//! within the probe interval, or the shard is replaced: a connection that is open
//! but silently stopped delivering (e.g. still attached to a demoted master after a
//! failover) is caught this way.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use protocol::{Publication, keys};
use publisher::{HistoryPage, PublishError, Publisher};
use tokio::sync::Notify;
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
    pub url: String,
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

struct Shard {
    index: usize,
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
    client: redis::Client,
    publisher: Publisher,
    table: Arc<Table>,
    metrics: Arc<Metrics>,
    shards: Vec<Arc<Shard>>,
}

pub struct RedisBroker {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// FNV-1a: a fixed hash, so a channel always maps to the same shard.
fn shard_of(channel: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

impl RedisBroker {
    /// Starts the shard tasks; connecting happens in the background, so a node can
    /// start (not ready) while Redis is down.
    pub fn start(
        settings: RedisSettings,
        table: Arc<Table>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BrokerError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let publisher = Publisher::builder(settings.url.clone())
            .namespace(settings.namespace.clone())
            .max_payload(settings.max_payload)
            .history(settings.history.clone())
            .idempotency_window(settings.idempotency_window)
            .build()
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let shards = (0..settings.subscribers.max(1))
            .map(|index| {
                Arc::new(Shard {
                    index,
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
            client,
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
        let shard = &self.shared.shards[shard_of(channel, self.shared.shards.len())];
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
        let shard = &self.shared.shards[shard_of(channel, self.shared.shards.len())];
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

    async fn acked(&self, channel: &str) -> Result<Option<(String, u64)>, BrokerError> {
        self.shared
            .publisher
            .acked_channel(channel)
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

struct Subs<'a> {
    shard: &'a Shard,
    sink: redis::aio::PubSubSink,
    /// Client-visible channels this connection is subscribed to.
    active: HashSet<Arc<str>>,
    /// Channels without local interest, and when to unsubscribe them.
    leaving: HashMap<Arc<str>, Instant>,
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
                .map(|c| keys::pubsub_channel(&shared.settings.namespace, c))
                .collect();
            let fut = async {
                if subscribe {
                    self.sink.subscribe(&names).await
                } else {
                    self.sink.unsubscribe(&names).await
                }
            };
            timeout(COMMAND_TIMEOUT, fut)
                .await
                .map_err(|_| "subscribe command timed out".to_string())?
                .map_err(|e| e.to_string())?;
            self.shard.confirm(chunk, subscribe);
            let delta = chunk.len() as i64;
            shared
                .metrics
                .broker
                .subscriptions
                .add(if subscribe { delta } else { -delta });
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
}

/// One connection's life: connect, rebuild subscriptions, deliver until it fails.
async fn serve(shared: &Shared, shard: &Shard, first: bool) -> String {
    let pubsub = match timeout(CONNECT_TIMEOUT, shared.client.get_async_pubsub()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return format!("connect: {e}"),
        Err(_) => return "connect timed out".into(),
    };
    let (sink, mut stream) = pubsub.split();
    let mut subs = Subs {
        shard,
        sink,
        active: HashSet::new(),
        leaving: HashMap::new(),
    };
    let probe = keys::probe_channel(
        &shared.settings.namespace,
        &format!("{}:{}", shared.settings.node_id, shard.index),
    );
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
        .filter(|c| shard_of(c, shared.shards.len()) == shard.index)
        .collect();
    let subscribed = async {
        timeout(COMMAND_TIMEOUT, subs.sink.subscribe(&probe))
            .await
            .map_err(|_| "probe subscribe timed out".to_string())?
            .map_err(|e| e.to_string())?;
        subs.command(true, &wanted, shared).await
    };
    if let Err(e) = subscribed.await {
        shared
            .metrics
            .broker
            .subscriptions
            .sub(subs.active.len() as i64);
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
            msg = stream.next() => {
                let Some(msg) = msg else { break "connection closed".to_string() };
                let name = msg.get_channel_name();
                if name == probe {
                    probe_sent = None;
                    continue;
                }
                shared.metrics.broker.received.inc();
                match Publication::decode(msg.get_payload_bytes()) {
                    Ok(p) if keys::channel_of(&shared.settings.namespace, name) == Some(p.channel.as_str()) => {
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
                match shared.publisher.probe(&probe).await {
                    Ok(0) => break "redis reports no subscriber for this connection".to_string(),
                    Ok(_) => { probe_sent.get_or_insert_with(Instant::now); }
                    // Publishing failed: the subscriber side will notice on its own.
                    Err(e) => tracing::debug!(error = %e, "probe publish failed"),
                }
            }
        }
    };
    shared
        .metrics
        .broker
        .subscriptions
        .sub(subs.active.len() as i64);
    let active: Vec<Arc<str>> = subs.active.drain().collect();
    shard.confirm(&active, false);
    why
}

#[cfg(test)]
mod tests {
    use super::shard_of;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("news", 4), shard_of("news", 4));
        let mut counts = [0usize; 4];
        for i in 0..1000 {
            counts[shard_of(&format!("$user:{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|c| *c > 150), "{counts:?}");
    }
}
