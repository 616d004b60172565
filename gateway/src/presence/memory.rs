//! Presence kept in this process, for the in-memory broker (one node): the rules
//! of the Redis scripts (`publisher-sdk/src/presence/*.lua`) on local maps. No
//! entry can be left behind by another node, so nothing expires but pending
//! leaves and old last-seen times.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use protocol::frame::{PresenceResult, PresenceStatsResult};
use protocol::presence::{DIFF_EVENT, Member, Policy, UserStatus};
use protocol::{Payload, Publication};
use publisher::presence::{Join, OnlineOp, Outcome};
use tokio::time::Instant;

use super::store::Store;
use crate::broker::{BrokerError, Handler};

#[derive(Default)]
struct Channel {
    /// client -> member JSON, in client order (pages).
    members: BTreeMap<String, String>,
    /// client -> user.
    owners: HashMap<String, String>,
    /// user -> connections present (0 while their leave is pending).
    users: HashMap<String, u32>,
    /// user -> when the leave is due.
    leaving: HashMap<String, Instant>,
    /// user -> their last connection, listed until the leave is announced.
    lingering: HashMap<String, String>,
}

impl Channel {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.leaving.is_empty()
    }

    fn unlinger(&mut self, user: &str) {
        if let Some(old) = self.lingering.remove(user) {
            self.members.remove(&old);
        }
    }

    fn due_leaves(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .leaving
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(u, _)| u.clone())
            .collect();
        let mut left = Vec::new();
        for u in due {
            self.leaving.remove(&u);
            if self.users.get(&u).is_none_or(|n| *n == 0) {
                self.users.remove(&u);
                self.unlinger(&u);
                left.push(format!(r#"{{"user":{}}}"#, serde_json::Value::String(u)));
            }
        }
        left
    }

    fn next_due(&self, now: Instant) -> Option<Duration> {
        self.leaving
            .values()
            .min()
            .map(|at| at.saturating_duration_since(now))
    }
}

#[derive(Clone, Copy)]
struct Seen {
    online: u32,
    last_seen: u64,
}

pub struct MemoryStore {
    channels: Mutex<HashMap<String, Channel>>,
    online: Mutex<HashMap<String, Seen>>,
    /// When old last-seen times were last dropped (at most once a minute).
    pruned: Mutex<Instant>,
    handler: Arc<dyn Handler>,
    grace: Duration,
    last_seen_ttl: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryStore {
    pub fn new(handler: Arc<dyn Handler>, grace: Duration, last_seen_ttl: Duration) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            online: Mutex::new(HashMap::new()),
            pruned: Mutex::new(Instant::now()),
            handler,
            grace,
            last_seen_ttl,
        }
    }

    /// Hands a diff to the hub like a publication from the broker.
    fn announce(&self, channel: &str, joins: Vec<String>, leaves: Vec<String>) {
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        let json = format!(
            r#"{{"joins":[{}],"leaves":[{}]}}"#,
            joins.join(","),
            leaves.join(",")
        );
        match Payload::from_json(&json) {
            Ok(payload) => {
                self.handler
                    .deliver(&Publication::new(channel, DIFF_EVENT, payload));
            }
            Err(e) => tracing::error!(error = %e, "cannot build a presence diff"),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn update(
        &self,
        channel: &str,
        policy: Policy,
        joins: &[Join],
        leaves: &[String],
    ) -> Result<Outcome, BrokerError> {
        let now = Instant::now();
        let mut out = Outcome::default();
        let (joined, left) = {
            let mut all = lock(&self.channels);
            let ch = all.entry(channel.to_owned()).or_default();
            let mut joined = Vec::new();
            for j in joins {
                if ch.members.contains_key(&j.client) {
                    continue;
                }
                if ch.members.len() >= policy.max_members as usize {
                    out.refused.push(j.client.clone());
                    continue;
                }
                ch.members.insert(j.client.clone(), j.member.clone());
                ch.owners.insert(j.client.clone(), j.user.clone());
                let n = ch.users.entry(j.user.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    if ch.leaving.remove(&j.user).is_none() {
                        joined.push(j.joined.clone());
                    } else {
                        // Back within the grace period: replaces the entry left listed.
                        ch.unlinger(&j.user);
                    }
                }
            }
            for client in leaves {
                let Some(user) = ch.owners.remove(client) else {
                    continue;
                };
                match ch.users.get_mut(&user) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        ch.members.remove(client);
                    }
                    _ => {
                        // The last connection stays listed until the leave is sent.
                        ch.users.insert(user.clone(), 0);
                        ch.unlinger(&user);
                        ch.lingering.insert(user.clone(), client.clone());
                        ch.leaving.insert(user, now + self.grace);
                    }
                }
            }
            let left = ch.due_leaves(now);
            out.next_due = ch.next_due(now);
            if ch.is_empty() {
                all.remove(channel);
            }
            (joined, left)
        };
        if policy.events {
            self.announce(channel, joined, left);
        }
        Ok(out)
    }

    async fn refresh(
        &self,
        channel: &str,
        policy: Policy,
        _has_members: bool,
    ) -> Result<Outcome, BrokerError> {
        let now = Instant::now();
        let (left, next_due) = {
            let mut all = lock(&self.channels);
            let Some(ch) = all.get_mut(channel) else {
                return Ok(Outcome::default());
            };
            let left = ch.due_leaves(now);
            let next = ch.next_due(now);
            if ch.is_empty() {
                all.remove(channel);
            }
            (left, next)
        };
        if policy.events {
            self.announce(channel, Vec::new(), left);
        }
        Ok(Outcome {
            next_due,
            ..Outcome::default()
        })
    }

    async fn page(
        &self,
        channel: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<PresenceResult, BrokerError> {
        let all = lock(&self.channels);
        let Some(ch) = all.get(channel) else {
            return Ok(PresenceResult {
                channel: channel.to_owned(),
                clients: 0,
                users: 0,
                members: Vec::new(),
                cursor: None,
            });
        };
        let from = match cursor {
            Some(c) => std::ops::Bound::Excluded(c.to_owned()),
            None => std::ops::Bound::Unbounded,
        };
        let mut page: Vec<(&String, &String)> = ch
            .members
            .range((from, std::ops::Bound::Unbounded))
            .take(limit as usize + 1)
            .collect();
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        Ok(PresenceResult {
            channel: channel.to_owned(),
            clients: ch.members.len() as u64,
            users: ch.users.len() as u64,
            cursor: more
                .then(|| page.last().map(|(c, _)| (*c).clone()))
                .flatten(),
            members: page
                .into_iter()
                .filter_map(|(_, m)| serde_json::from_str::<Member>(m).ok())
                .collect(),
        })
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStatsResult, BrokerError> {
        let all = lock(&self.channels);
        let (clients, users) = all
            .get(channel)
            .map_or((0, 0), |c| (c.members.len() as u64, c.users.len() as u64));
        Ok(PresenceStatsResult {
            channel: channel.to_owned(),
            clients,
            users,
        })
    }

    async fn online_update(&self, ops: &[(String, OnlineOp)]) -> Result<(), BrokerError> {
        let now = protocol::now_millis();
        let mut seen = lock(&self.online);
        for (user, op) in ops {
            let e = seen.entry(user.clone()).or_insert(Seen {
                online: 0,
                last_seen: now,
            });
            // One node: the presence task sends `Here` once per user when their
            // first connection opens (and again on every refresh), `Gone` when
            // their last one closes.
            e.online = u32::from(*op == OnlineOp::Here);
            e.last_seen = now;
        }
        let mut pruned = lock(&self.pruned);
        if pruned.elapsed() >= Duration::from_secs(60) {
            *pruned = Instant::now();
            let oldest = now.saturating_sub(self.last_seen_ttl.as_millis() as u64);
            seen.retain(|_, s| s.online > 0 || s.last_seen >= oldest);
        }
        Ok(())
    }

    async fn online(&self, users: &[String]) -> Result<Vec<UserStatus>, BrokerError> {
        let seen = lock(&self.online);
        Ok(users
            .iter()
            .map(|u| {
                let s = seen.get(u);
                UserStatus {
                    user: u.clone(),
                    online: s.is_some_and(|s| s.online > 0),
                    last_seen: s.map(|s| s.last_seen),
                }
            })
            .collect())
    }
}
