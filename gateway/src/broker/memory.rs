//! The single-node broker: a publish is a local delivery. History, acknowledged
//! positions and idempotency keys live in this process, so they follow the same
//! rules as with Redis but end with it (a restart starts new epochs, and resuming
//! clients are told they were not recovered).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use protocol::Publication;
use protocol::history::HistoryRules;
use publisher::HistoryPage;
use tokio::time::Instant;

use super::{Broker, BrokerError, Handler, Receipt};
use crate::config::HistoryConfig;
use protocol::history::StreamPosition;

struct Stream {
    epoch: String,
    seq: u64,
    entries: VecDeque<(Publication, usize)>,
    expires: Instant,
    /// The history rule it counts against.
    rule: u16,
    /// The entries' sizes (their envelopes), summed.
    bytes: usize,
}

#[derive(Default)]
struct Store {
    streams: HashMap<String, Stream>,
    acks: HashMap<String, StreamPosition>,
    /// (channel, message id) -> when to forget it, and the same keys in the order
    /// they expire (the window is the same for all): the oldest goes first.
    seen: HashMap<(String, String), Instant>,
    seen_order: VecDeque<(Instant, (String, String))>,
    /// History channels per rule, and bytes of history in all.
    per_rule: HashMap<u16, u64>,
    bytes: usize,
    publishes: u64,
}

/// Most idempotency keys kept. Under a flood of distinct ids the oldest are
/// forgotten before their window ends (counted in
/// `tidings_idempotency_evictions_total`) rather than memory growing without bound:
/// with the default 5-minute window that starts at about 333 publishes with ids
/// per second.
pub const MAX_SEEN: usize = 100_000;
/// Publishes between sweeps of expired histories and keys.
const SWEEP_EVERY: u64 = 4096;

pub struct MemoryBroker {
    handler: Arc<dyn Handler>,
    rules: HistoryRules,
    idempotency_window: Duration,
    max_bytes: usize,
    metrics: Arc<crate::metrics::Metrics>,
    store: Mutex<Store>,
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Store {
    fn drop_stream(&mut self, channel: &str) {
        if let Some(s) = self.streams.remove(channel) {
            self.bytes -= s.bytes;
            if let Some(n) = self.per_rule.get_mut(&s.rule) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Drops expired histories (with their acknowledged positions) and idempotency
    /// keys, so channels that went quiet do not stay in memory.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for c in expired {
            self.drop_stream(&c);
        }
        let streams = &self.streams;
        self.acks.retain(|c, _| streams.contains_key(c));
        while self
            .seen_order
            .front()
            .is_some_and(|(until, _)| *until <= now)
        {
            if let Some((_, k)) = self.seen_order.pop_front() {
                self.seen.remove(&k);
            }
        }
    }

    /// The live stream of a channel, if it has one (an expired one is dropped).
    fn live(&mut self, channel: &str, now: Instant) -> Option<&mut Stream> {
        if self.streams.get(channel).is_some_and(|s| s.expires <= now) {
            self.drop_stream(channel);
        }
        self.streams.get_mut(channel)
    }
}

impl MemoryBroker {
    pub fn new(
        handler: Arc<dyn Handler>,
        history: &HistoryConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            handler,
            rules: history.rules.clone(),
            idempotency_window: history.idempotency_window,
            max_bytes: history.max_bytes,
            metrics,
            store: Mutex::new(Store::default()),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Assigns offset and epoch (history) and drops repeated ids; `Ok(None)` when
    /// the publication is a duplicate, an error when it would exceed a budget.
    fn admit(
        &self,
        mut p: Publication,
        now: Instant,
        expect: Option<&StreamPosition>,
    ) -> Result<Option<Publication>, BrokerError> {
        let mut store = self.store();
        store.publishes += 1;
        if store.publishes.is_multiple_of(SWEEP_EVERY) {
            store.sweep(now);
        }
        let idem =
            p.id.clone()
                .filter(|_| !self.idempotency_window.is_zero())
                .map(|id| (p.channel.clone(), id));
        if let Some(key) = &idem
            && store.seen.get(key).is_some_and(|until| *until > now)
        {
            return Ok(None);
        }
        if let Some(at) = expect {
            let (offset, epoch) = store
                .live(&p.channel, now)
                .map_or((0, String::new()), |s| (s.seq, s.epoch.clone()));
            if offset != at.offset || (epoch != at.epoch && !(epoch.is_empty() && offset == 0)) {
                return Err(BrokerError::Conflict(StreamPosition { epoch, offset }));
            }
        }
        if let Some(policy) = self.rules.policy(&p.channel) {
            let size = p.encode().len();
            let fresh = store.live(&p.channel, now).is_none();
            let of_rule = store.per_rule.get(&policy.rule).copied().unwrap_or(0);
            if fresh && policy.max_channels > 0 && of_rule >= policy.max_channels {
                self.metrics
                    .budget_refused(crate::metrics::Budget::HistoryChannels);
                return Err(BrokerError::Quota(format!(
                    "history rule `{}` already holds {} channels",
                    self.rules.pattern(policy.rule).unwrap_or("?"),
                    policy.max_channels
                )));
            }
            if store.bytes + size > self.max_bytes {
                self.metrics
                    .budget_refused(crate::metrics::Budget::HistoryBytes);
                return Err(BrokerError::Quota(format!(
                    "the node keeps {} bytes of history, its budget",
                    self.max_bytes
                )));
            }
            if fresh {
                *store.per_rule.entry(policy.rule).or_default() += 1;
                store.streams.insert(
                    p.channel.clone(),
                    Stream {
                        epoch: new_epoch(),
                        seq: 0,
                        entries: VecDeque::new(),
                        expires: now + policy.ttl,
                        rule: policy.rule,
                        bytes: 0,
                    },
                );
            }
            let mut freed = 0;
            if let Some(stream) = store.streams.get_mut(&p.channel) {
                stream.seq += 1;
                stream.expires = now + policy.ttl;
                p.offset = Some(stream.seq);
                p.epoch = Some(stream.epoch.clone());
                stream.entries.push_back((p.clone(), size));
                stream.bytes += size;
                while stream.entries.len() as u64 > policy.max_len {
                    if let Some((_, n)) = stream.entries.pop_front() {
                        stream.bytes -= n;
                        freed += n;
                    }
                }
            }
            store.bytes = store.bytes + size - freed;
        }
        if let Some(key) = idem {
            while store.seen.len() >= MAX_SEEN {
                let Some((until, old)) = store.seen_order.pop_front() else {
                    break;
                };
                store.seen.remove(&old);
                if until > now {
                    self.metrics.idempotency_evicted();
                }
            }
            let until = now + self.idempotency_window;
            store.seen.insert(key.clone(), until);
            store.seen_order.push_back((until, key));
        }
        Ok(Some(p))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, pubs: Vec<Publication>) -> Result<Receipt, BrokerError> {
        let now = Instant::now();
        let mut r = Receipt {
            nodes: 0,
            sessions: Some(0),
            duplicates: 0,
            offset: None,
            epoch: None,
        };
        for p in pubs {
            let Some(p) = self.admit(p, now, None)? else {
                r.duplicates += 1;
                continue;
            };
            r.nodes += u64::from(self.handler.has_interest(&p.channel));
            r.sessions = r.sessions.map(|s| s + self.handler.deliver(&p) as u64);
        }
        Ok(r)
    }

    async fn publish_if(
        &self,
        p: Publication,
        at: &StreamPosition,
    ) -> Result<Receipt, BrokerError> {
        if self.rules.policy(&p.channel).is_none() {
            return Err(BrokerError::Rejected(
                "a conditional publish needs a channel with history".into(),
            ));
        }
        let Some(p) = self.admit(p, Instant::now(), Some(at))? else {
            return Ok(Receipt {
                nodes: 0,
                sessions: Some(0),
                duplicates: 1,
                offset: None,
                epoch: None,
            });
        };
        Ok(Receipt {
            nodes: u64::from(self.handler.has_interest(&p.channel)),
            sessions: Some(self.handler.deliver(&p) as u64),
            duplicates: 0,
            offset: p.offset,
            epoch: p.epoch.clone(),
        })
    }

    fn interest_changed(&self, _channel: &Arc<str>) {}

    fn is_ready(&self) -> bool {
        true
    }

    async fn history(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<HistoryPage, BrokerError> {
        if self.rules.policy(channel).is_none() {
            return Err(BrokerError::Rejected(format!(
                "channel `{channel}` keeps no history"
            )));
        }
        let mut store = self.store();
        let now = Instant::now();
        // Reading never creates history: an empty epoch means "none yet".
        let Some(stream) = store.live(channel, now) else {
            return Ok(HistoryPage {
                epoch: String::new(),
                top: 0,
                pubs: Vec::new(),
            });
        };
        let mut pubs = Vec::new();
        if let Some(after) = after {
            // The same page as Redis': the first entry always, then as many as fit
            // in `max_bytes` (counted as the envelope size).
            let mut used = 0usize;
            for (p, size) in stream
                .entries
                .iter()
                .filter(|(p, _)| p.offset.is_some_and(|o| o > after))
                .take(limit.max(1))
            {
                used = used.saturating_add(*size);
                if !pubs.is_empty() && used > max_bytes {
                    break;
                }
                pubs.push(p.clone());
            }
        }
        Ok(HistoryPage {
            epoch: stream.epoch.clone(),
            top: stream.seq,
            pubs,
        })
    }

    async fn ack(&self, channel: &str, offset: u64) -> Result<Option<u64>, BrokerError> {
        if self.rules.policy(channel).is_none() {
            return Err(BrokerError::Rejected(format!(
                "channel `{channel}` keeps no history"
            )));
        }
        let mut store = self.store();
        let now = Instant::now();
        // As with Redis: no history yet (or expired), nothing to acknowledge.
        let Some(stream) = store.live(channel, now) else {
            return Ok(None);
        };
        let (epoch, top) = (stream.epoch.clone(), stream.seq);
        let want = offset.min(top);
        let stored = match store.acks.get(channel) {
            Some(had) if had.epoch == epoch && had.offset >= want => had.offset,
            _ => {
                let at = StreamPosition {
                    epoch,
                    offset: want,
                };
                store.acks.insert(channel.to_owned(), at);
                want
            }
        };
        Ok(Some(stored))
    }

    async fn position(
        &self,
        channel: &str,
    ) -> Result<(HistoryPage, Option<StreamPosition>), BrokerError> {
        let page = self.history(channel, None, 0, 0).await?;
        let acked = self.store().acks.get(channel).cloned();
        Ok((page, acked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Payload;

    fn history(rules: HistoryRules, idempotency_window: Duration) -> HistoryConfig {
        HistoryConfig {
            rules,
            max_bytes: 1 << 20,
            idempotency_window,
            recovery_limit: 1000,
            replay_page_bytes: 1 << 18,
            resume_rate: 5,
            resume_burst: 20,
        }
    }

    /// A node without connections: the broker's view of the hub.
    struct Nobody;

    impl Handler for Nobody {
        fn deliver(&self, _: &Publication) -> usize {
            0
        }
        fn check(&self, _: &str, _: &str, _: u64) {}
        fn has_interest(&self, _: &str) -> bool {
            false
        }
        fn interests(&self) -> Vec<Arc<str>> {
            Vec::new()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_channels_and_old_keys_are_swept() {
        let rules = HistoryRules::parse(["room:* 10 1s"]).unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let broker = MemoryBroker::new(
            Arc::new(Nobody),
            &history(rules, Duration::from_secs(1)),
            metrics,
        );
        let mut p = Publication::new("room:1", "e", Payload::null());
        p.id = Some("k".into());
        // Nothing to acknowledge before the first message, as with Redis.
        assert_eq!(broker.ack("room:1", 1).await.unwrap(), None);
        broker.publish(vec![p]).await.unwrap();
        assert_eq!(broker.ack("room:1", 1).await.unwrap(), Some(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        broker.store().sweep(Instant::now());
        let store = broker.store();
        assert!(store.streams.is_empty() && store.acks.is_empty() && store.seen.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn idempotency_ids_are_forgotten_oldest_first_and_counted() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let broker = MemoryBroker::new(
            Arc::new(Nobody),
            &history(HistoryRules::none(), Duration::from_secs(300)),
            metrics.clone(),
        );
        let publish = |id: usize| {
            let mut p = Publication::new("news", "e", Payload::null());
            p.id = Some(format!("id-{id}"));
            p
        };
        for i in 0..MAX_SEEN {
            broker.admit(publish(i), Instant::now(), None).unwrap();
        }
        // Every id is still remembered: a retry is a duplicate.
        assert!(
            broker
                .admit(publish(0), Instant::now(), None)
                .unwrap()
                .is_none()
        );
        // One more evicts the oldest (only), and says so.
        broker
            .admit(publish(MAX_SEEN), Instant::now(), None)
            .unwrap();
        assert!(
            broker
                .admit(publish(0), Instant::now(), None)
                .unwrap()
                .is_some()
        );
        assert!(
            broker
                .admit(publish(2), Instant::now(), None)
                .unwrap()
                .is_none()
        );
        assert!(
            metrics
                .render()
                .contains("tidings_idempotency_evictions_total 2")
        );
    }
}
