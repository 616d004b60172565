//! The subscriber connections ("shards") of a node: which one carries a channel,
//! what each listens to, what it has confirmed, how far behind its reader is (the
//! probe), whether it is up, and the task that keeps it connected.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::topology::channel_hash;
use publisher::Endpoint;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Shared;

/// What one subscriber connection listens to.
pub(super) enum Target {
    /// Classic pub/sub on one instance (the only one, or shard `instance`).
    Instance { instance: usize, endpoint: Endpoint },
    /// Sharded pub/sub for one cluster partition, on the master of its slot.
    Partition { slot: u16 },
}

pub(super) struct Shard {
    pub(super) index: usize,
    pub(super) target: Target,
    /// Channels whose local interest changed since the shard last looked.
    pub(super) dirty: Mutex<HashSet<Arc<str>>>,
    pub(super) wake: Notify,
    pub(super) up: AtomicBool,
    /// Since when the connection has been down (from the start: since the node
    /// started), to tell an outage from a reconnect.
    pub(super) down_since: Mutex<Option<Instant>>,
    /// Channels Redis confirmed as subscribed on the current connection (and not
    /// unsubscribed since), so a resuming session can wait until live delivery
    /// really runs before it reads history (otherwise a message published in
    /// between would be lost).
    pub(super) confirmed: Mutex<HashSet<Arc<str>>>,
    pub(super) confirmed_changed: Notify,
    /// When the probe now on its way was published, if one is.
    pub(super) probe_out: Mutex<Option<Instant>>,
    /// How long the last probe took to come back, in microseconds.
    pub(super) probe_rtt_us: AtomicU64,
}

impl Shard {
    pub(super) fn new(index: usize, target: Target) -> Self {
        Self {
            index,
            target,
            dirty: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            up: AtomicBool::new(false),
            down_since: Mutex::new(Some(Instant::now())),
            confirmed: Mutex::new(HashSet::new()),
            confirmed_changed: Notify::new(),
            probe_out: Mutex::new(None),
            probe_rtt_us: AtomicU64::new(0),
        }
    }

    /// How long the connection has been down (zero while up).
    pub(super) fn down_for(&self) -> Duration {
        self.down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// The instance (or cluster partition) whose channels this connection carries;
    /// shards of one holder are consecutive.
    pub(super) fn holder(&self) -> usize {
        match &self.target {
            Target::Instance { instance, .. } => *instance,
            Target::Partition { .. } => self.index,
        }
    }

    pub(super) fn confirm(&self, channels: &[Arc<str>], subscribed: bool) {
        if channels.is_empty() {
            return;
        }
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

    pub(super) fn is_confirmed(&self, channel: &str) -> bool {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(channel)
    }

    pub(super) fn probe_state(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.probe_out.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn probe_sent(&self) {
        *self.probe_state() = Some(Instant::now());
    }

    pub(super) fn probe_lost(&self) {
        *self.probe_state() = None;
    }

    /// How long the probe on its way has been travelling.
    pub(super) fn probe_age(&self) -> Option<Duration> {
        self.probe_state().map(|sent| sent.elapsed())
    }

    /// The probe came back on this connection: everything published before it has
    /// been read.
    pub(super) fn probe_back(&self, shared: &Shared) {
        if let Some(sent) = self.probe_state().take() {
            self.probe_rtt_us
                .store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        self.report_lag(shared);
    }

    /// How far behind the read side is: the last probe's round trip, or the age of
    /// the one on its way if that is longer.
    pub(super) fn lag(&self) -> Duration {
        let rtt = Duration::from_micros(self.probe_rtt_us.load(Ordering::Relaxed));
        rtt.max(self.probe_age().unwrap_or_default())
    }

    pub(super) fn report_lag(&self, shared: &Shared) {
        shared.metrics.broker.shard_lag(self.index, self.lag());
        let worst = shared
            .shards
            .iter()
            .map(|s| s.lag())
            .max()
            .unwrap_or_default();
        shared.metrics.broker.lag(worst);
    }
}

/// The subscriber connection of a channel: a fixed hash (FNV-1a) across the
/// connections of the instance that owns it, or its cluster partition.
pub(super) fn shard_of(shared: &Shared, channel: &str) -> usize {
    if shared.cluster.is_some() {
        return shared.keys.partition_of(channel);
    }
    let instance = shared.publisher.route(channel);
    let within = (channel_hash(channel) % shared.per_instance as u64) as usize;
    instance * shared.per_instance + within
}

pub(super) fn set_up(shared: &Shared, shard: &Shard, up: bool) {
    let was = shard.up.swap(up, Ordering::AcqRel);
    {
        let mut since = shard.down_since.lock().unwrap_or_else(|e| e.into_inner());
        match up {
            true => *since = None,
            false if was || since.is_none() => *since = Some(Instant::now()),
            false => {}
        }
    }
    if !up {
        shard.probe_lost();
    }
    shared.metrics.broker.shard_up(shard.index, up);
    // Usable as --redis-ready says (any instance, all, or a share of them).
    let (up, total) = shared.holders_up();
    shared
        .metrics
        .broker
        .set_up(shared.redis.ready.ready(up, total));
}
