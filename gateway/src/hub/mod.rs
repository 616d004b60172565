//! Local fan-out: which connections on this node want which channel.
//!
//! Sessions register interest here; the broker delivers publications here, through
//! the [`Handler`] trait the table implements (the broker knows nothing else of the
//! layers above). The hub frames each publication once per encoding in use and
//! writes the shared bytes to every idle subscriber's socket, or queues them in its
//! outbox, without waiting. It tells the broker when a channel gains its first
//! local subscriber or loses its last, and the broker reads the hub's interest set
//! as the source of truth (also after a reconnect).

pub(crate) mod cursor;
pub(crate) mod outbox;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use protocol::presence::{DIFF_EVENT, PresenceDiff, PresenceRules};
use protocol::{Encoding, Publication, frame};
use slab::Slab;

use crate::broker::{Broker, Handler};
use crate::hub::outbox::{Delivered, Frame, Item, Outbox, PushError};
use crate::metrics::{Drop, Metrics};

/// One connection's registration on one channel.
pub struct Subscriber {
    pub outbox: Arc<Outbox>,
    pub encoding: Encoding,
    /// The connection's id for this subscription, stamped on queued items.
    pub sub: u32,
}

type Channels = HashMap<Arc<str>, Slab<Subscriber>>;

/// The interest table, sharded so that subscribing and delivering on different
/// channels rarely contend. Locks are never held across an `.await`.
pub struct Table {
    shards: Box<[RwLock<Channels>]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    /// Which channels' presence diffs reach their subscribers (rules with events).
    presence: PresenceRules,
}

const SHARDS: usize = 64;

fn read(l: &RwLock<Channels>) -> RwLockReadGuard<'_, Channels> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write(l: &RwLock<Channels>) -> RwLockWriteGuard<'_, Channels> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            metrics,
            presence: PresenceRules::default(),
        }
    }

    /// Delivers presence diffs on the channels whose rule has events.
    pub fn with_presence(mut self, rules: PresenceRules) -> Self {
        self.presence = rules;
        self
    }

    /// The diff a `$presence` publication carries, when its channel's rule has
    /// events (other nodes may announce more than this node's rules ask for).
    fn diff_of(&self, p: &Publication) -> Option<PresenceDiff> {
        if !self.presence.policy(&p.channel).is_some_and(|r| r.events) {
            return None;
        }
        match serde_json::from_str::<PresenceDiff>(p.payload.json()) {
            Ok(d) => {
                self.metrics
                    .presence
                    .announced(d.joins.len(), d.leaves.len());
                Some(d)
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable presence diff");
                None
            }
        }
    }

    fn shard(&self, channel: &str) -> &RwLock<Channels> {
        let h = self.hasher.hash_one(channel) as usize;
        &self.shards[h % SHARDS]
    }

    /// Adds a subscriber; returns its key and whether it is the channel's first.
    fn insert(&self, channel: &Arc<str>, sub: Subscriber) -> (usize, bool) {
        let mut shard = write(self.shard(channel));
        let slab = shard.entry(channel.clone()).or_default();
        let first = slab.is_empty();
        (slab.insert(sub), first)
    }

    /// Removes a subscriber; returns whether the channel has none left.
    fn remove(&self, channel: &str, key: usize) -> bool {
        let mut shard = write(self.shard(channel));
        let Some(slab) = shard.get_mut(channel) else {
            return false;
        };
        if slab.try_remove(key).is_none() {
            return false;
        }
        if slab.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Local subscribers of a channel.
    pub fn count(&self, channel: &str) -> usize {
        read(self.shard(channel)).get(channel).map_or(0, Slab::len)
    }

    /// The outboxes of every subscriber of `channel`.
    pub fn outboxes(&self, channel: &str) -> Vec<Arc<Outbox>> {
        read(self.shard(channel))
            .get(channel)
            .map(|s| s.iter().map(|(_, sub)| sub.outbox.clone()).collect())
            .unwrap_or_default()
    }
}

/// What the broker calls: delivery, gap checks and the interest set.
impl Handler for Table {
    fn has_interest(&self, channel: &str) -> bool {
        read(self.shard(channel)).contains_key(channel)
    }

    /// Every channel with at least one local subscriber.
    fn interests(&self) -> Vec<Arc<str>> {
        self.shards
            .iter()
            .flat_map(|s| read(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Delivers a publication to every local subscriber of its channel; returns how
    /// many connections it reached (written or queued). The frame is built once per
    /// encoding in use, and to each idle connection written directly (see
    /// [`Outbox::deliver`]); the subscribers are copied out first, so no lock of the
    /// table is held while writing. What cannot be queued is counted as dropped;
    /// what is queued is counted as delivered once the connection writes it.
    fn deliver(&self, p: &Publication) -> usize {
        let diff = match p.event == DIFF_EVENT {
            true => match self.diff_of(p) {
                Some(d) => Some(d),
                None => return 0,
            },
            false => None,
        };
        let targets: Vec<(Arc<Outbox>, Encoding, u32)> = {
            let shard = read(self.shard(&p.channel));
            let Some(subs) = shard.get(p.channel.as_str()) else {
                return 0;
            };
            subs.iter()
                .map(|(_, s)| (s.outbox.clone(), s.encoding, s.sub))
                .collect()
        };
        // This runs on the Redis reader's thread. Writing every socket of a large
        // fan-out here puts all of it on one core: 10,000 writes of ~10 us are 100 ms
        // per message, and at 10 messages/s that core is full and latency grows
        // without bound (measured: p50 2 s where queueing gave 75 ms). So this thread
        // writes directly only within a small time budget per publication (all of a
        // targeted message, the first few of a fan-out), and queues the rest for the
        // connections' own tasks, which every worker thread runs. Order per connection
        // holds either way: the outbox writes directly only when nothing is queued.
        let started = std::time::Instant::now();
        let epoch = p.epoch.as_deref().map_or(0, epoch_tag);
        let mut json: Option<Option<Bytes>> = None;
        let mut msgpack: Option<Option<Bytes>> = None;
        let (mut written, mut queued, mut slow, mut closed, mut failed) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        let now_ms = protocol::now_millis();
        let mut direct = true;
        for (i, (outbox, encoding, sub)) in targets.into_iter().enumerate() {
            // Reading the clock costs ~25 ns; every 16th recipient is enough.
            if direct && i % 16 == 15 && started.elapsed() > DIRECT_BUDGET {
                direct = false;
            }
            let frame = match encoding {
                Encoding::Json => {
                    json.get_or_insert_with(|| encode_frame(Encoding::Json, p, diff.as_ref()))
                }
                Encoding::MsgPack => {
                    msgpack.get_or_insert_with(|| encode_frame(Encoding::MsgPack, p, diff.as_ref()))
                }
            };
            let Some(frame) = frame.clone() else {
                failed += 1;
                continue;
            };
            let item = Item {
                frame: Frame::Ws(frame),
                published_ms: p.ts,
                offset: p.offset.unwrap_or(0),
                epoch,
                sub,
            };
            let outcome = match direct {
                true => outbox.deliver(item),
                false => outbox.push(item).map(|()| Delivered::Queued),
            };
            match outcome {
                Ok(Delivered::Written) => {
                    written += 1;
                    if p.ts != 0 {
                        self.metrics.latency(now_ms, p.ts);
                    }
                }
                Ok(Delivered::Queued) => queued += 1,
                Ok(Delivered::Duplicate) => {}
                // The queue's backlog went with it: lost as well.
                Err(PushError::Full { discarded }) => slow += 1 + discarded as u64,
                Err(PushError::Closed) => closed += 1,
            }
        }
        if written > 0 {
            self.metrics.delivered(written);
        }
        if slow > 0 {
            self.metrics.dropped(Drop::SlowConsumer, slow);
        }
        if closed > 0 {
            self.metrics.dropped(Drop::Closed, closed);
        }
        if failed > 0 {
            self.metrics.dropped(Drop::Encode, failed);
            tracing::error!(failed, "cannot encode a publication");
        }
        (written + queued) as usize
    }

    /// Tells every local subscriber of `channel` that its history reaches `top` in
    /// `epoch`: those that have not seen that far fill the gap from history. Sent
    /// after a Redis subscription came back, when messages published meanwhile
    /// would otherwise be missed until the channel's next message.
    fn check(&self, channel: &str, epoch: &str, top: u64) {
        let shard = read(self.shard(channel));
        let Some(subs) = shard.get(channel) else {
            return;
        };
        let epoch = epoch_tag(epoch);
        for (_, sub) in subs.iter() {
            let _ = sub.outbox.push(Item {
                frame: Frame::Check,
                published_ms: 0,
                offset: top,
                epoch,
                sub: sub.sub,
            });
        }
    }
}

/// How long the delivering thread spends writing sockets directly per
/// publication before it queues the rest for the connections' tasks.
const DIRECT_BUDGET: std::time::Duration = std::time::Duration::from_micros(200);

/// A short fingerprint of a history epoch, so queued items can tell a new epoch
/// (offsets restart) from a duplicate without carrying the epoch string.
pub fn epoch_tag(epoch: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in epoch.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h | 1
}

/// The complete WebSocket frame of a publication in one encoding (text frames for
/// JSON, binary for MessagePack): a `message`, or the `presence_diff` it carries.
fn encode_frame(enc: Encoding, p: &Publication, diff: Option<&PresenceDiff>) -> Option<Bytes> {
    let payload = match diff {
        Some(d) => frame::encode_presence_diff(enc, &p.channel, d).ok()?,
        None => frame::encode_message(enc, p).ok()?,
    };
    let opcode = if enc.is_text() { 1 } else { 2 };
    Some(crate::hub::outbox::ws_frame(opcode, &payload))
}

/// The hub as sessions see it: the table, and the broker to tell when a channel
/// gains its first or loses its last local subscriber.
pub struct Hub {
    table: Arc<Table>,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(table: Arc<Table>, broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Self {
        Self {
            table,
            broker,
            metrics,
        }
    }

    /// Registers a subscriber; the returned key unsubscribes it.
    pub fn subscribe(&self, channel: &Arc<str>, sub: Subscriber) -> usize {
        let (key, first) = self.table.insert(channel, sub);
        self.metrics.subscriptions(1);
        if first {
            self.metrics.channels(1);
            self.broker.interest_changed(channel);
        }
        key
    }

    pub fn unsubscribe(&self, channel: &Arc<str>, key: usize) {
        let last = self.table.remove(channel, key);
        self.metrics.subscriptions(-1);
        if last {
            self.metrics.channels(-1);
            self.broker.interest_changed(channel);
        }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }
}
