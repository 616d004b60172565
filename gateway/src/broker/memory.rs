//! The single-node broker: a publish is a local delivery. History, acknowledged
//! positions and idempotency keys live in this process, so they follow the same
//! rules as with Redis but end with it (a restart starts new epochs, and resuming
//! clients are told they were not recovered).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use protocol::Publication;
use protocol::history::{HistoryRules, Policy};
use publisher::HistoryPage;
use tokio::time::Instant;

use super::{Broker, BrokerError, Position, Receipt};
use crate::hub::Table;

struct Stream {
    epoch: String,
    seq: u64,
    entries: VecDeque<Publication>,
    expires: Instant,
}

#[derive(Default)]
struct Store {
    streams: HashMap<String, Stream>,
    acks: HashMap<String, (String, u64)>,
    /// (channel, message id) -> when to forget it.
    seen: HashMap<(String, String), Instant>,
    publishes: u64,
}

/// Most idempotency keys kept; under a flood of distinct ids the window shrinks
/// rather than memory growing without bound.
const MAX_SEEN: usize = 100_000;
/// Publishes between sweeps of expired histories and keys.
const SWEEP_EVERY: u64 = 4096;

pub struct MemoryBroker {
    table: Arc<Table>,
    rules: HistoryRules,
    idempotency_window: Duration,
    store: Mutex<Store>,
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Store {
    /// Drops expired histories (with their acknowledged positions) and idempotency
    /// keys, so channels that went quiet do not stay in memory.
    fn sweep(&mut self, now: Instant) {
        self.streams.retain(|_, s| s.expires > now);
        let streams = &self.streams;
        self.acks.retain(|c, _| streams.contains_key(c));
        self.seen.retain(|_, until| *until > now);
    }

    /// The live stream of a channel, dropping it once its ttl passed.
    fn stream(&mut self, channel: &str, policy: Policy, now: Instant) -> &mut Stream {
        if self.streams.get(channel).is_some_and(|s| s.expires <= now) {
            self.streams.remove(channel);
        }
        self.streams
            .entry(channel.to_owned())
            .or_insert_with(|| Stream {
                epoch: new_epoch(),
                seq: 0,
                entries: VecDeque::new(),
                expires: now + policy.ttl,
            })
    }
}

impl MemoryBroker {
    pub fn new(table: Arc<Table>, rules: HistoryRules, idempotency_window: Duration) -> Self {
        Self {
            table,
            rules,
            idempotency_window,
            store: Mutex::new(Store::default()),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Assigns offset and epoch (history) and drops repeated ids; `None` when the
    /// publication is a duplicate.
    fn admit(&self, mut p: Publication, now: Instant) -> Option<Publication> {
        let mut store = self.store();
        store.publishes += 1;
        if store.publishes.is_multiple_of(SWEEP_EVERY) {
            store.sweep(now);
        }
        if let (Some(id), false) = (&p.id, self.idempotency_window.is_zero()) {
            let key = (p.channel.clone(), id.clone());
            if store.seen.get(&key).is_some_and(|until| *until > now) {
                return None;
            }
            if store.seen.len() >= MAX_SEEN {
                store.seen.retain(|_, until| *until > now);
                if store.seen.len() >= MAX_SEEN {
                    let evict: Vec<_> = store.seen.keys().take(MAX_SEEN / 2).cloned().collect();
                    for k in evict {
                        store.seen.remove(&k);
                    }
                }
            }
            store.seen.insert(key, now + self.idempotency_window);
        }
        if let Some(policy) = self.rules.policy(&p.channel) {
            let stream = store.stream(&p.channel, policy, now);
            stream.seq += 1;
            stream.expires = now + policy.ttl;
            p.offset = Some(stream.seq);
            p.epoch = Some(stream.epoch.clone());
            stream.entries.push_back(p.clone());
            while stream.entries.len() as u64 > policy.max_len {
                stream.entries.pop_front();
            }
        }
        Some(p)
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
        };
        for p in pubs {
            let Some(p) = self.admit(p, now) else {
                r.duplicates += 1;
                continue;
            };
            r.nodes += u64::from(self.table.has_interest(&p.channel));
            r.sessions = r.sessions.map(|s| s + self.table.deliver(&p) as u64);
        }
        Ok(r)
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
        if store.streams.get(channel).is_some_and(|s| s.expires <= now) {
            store.streams.remove(channel);
        }
        // Reading never creates history: an empty epoch means "none yet".
        let Some(stream) = store.streams.get(channel) else {
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
            for p in stream
                .entries
                .iter()
                .filter(|p| p.offset.is_some_and(|o| o > after))
                .take(limit.max(1))
            {
                used = used.saturating_add(p.encode().len());
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
        let policy = self.rules.policy(channel).ok_or_else(|| {
            BrokerError::Rejected(format!("channel `{channel}` keeps no history"))
        })?;
        let mut store = self.store();
        let now = Instant::now();
        // As with Redis: no history yet (or expired), nothing to acknowledge.
        if store.streams.get(channel).is_none_or(|s| s.expires <= now) {
            return Ok(None);
        }
        let stream = store.stream(channel, policy, now);
        let (epoch, top) = (stream.epoch.clone(), stream.seq);
        let want = offset.min(top);
        let stored = match store.acks.get(channel) {
            Some((e, had)) if *e == epoch && *had >= want => *had,
            _ => {
                store.acks.insert(channel.to_owned(), (epoch, want));
                want
            }
        };
        Ok(Some(stored))
    }

    async fn position(
        &self,
        channel: &str,
    ) -> Result<(HistoryPage, Option<Position>), BrokerError> {
        let page = self.history(channel, None, 0, 0).await?;
        let acked = self
            .store()
            .acks
            .get(channel)
            .map(|(epoch, offset)| Position {
                epoch: epoch.clone(),
                offset: *offset,
            });
        Ok((page, acked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Payload;

    #[tokio::test(start_paused = true)]
    async fn quiet_channels_and_old_keys_are_swept() {
        let rules = HistoryRules::parse(["room:* 10 1s"]).unwrap();
        let broker = MemoryBroker::new(
            Arc::new(Table::new(Arc::new(crate::metrics::Metrics::new()))),
            rules,
            Duration::from_secs(1),
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
}
