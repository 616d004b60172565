//! Presence on this node: which of its connections are members of which channels
//! (those with a `--presence` rule), which users are connected here, and the batch
//! of changes on its way to the [`Store`] (Redis, or this process with the
//! in-memory broker).
//!
//! Sessions tell it of joins and leaves without waiting; the presence task
//! ([`task`]) sends them every [`BATCH`] as one script per channel, refreshes the
//! node's entries every `--presence-refresh` (one command per channel, whatever its
//! number of members) and looks again when a pending leave falls due. A join and a
//! leave of the same connection within one batch cancel out, so the pending set
//! never holds more than one change per local subscription. Reads (`presence`,
//! `presence_stats`, online status) go to the store directly.

mod memory;
mod store;
mod task;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::frame::{PresenceResult, PresenceStatsResult};
use protocol::presence::{Joined, Member, Policy, UserStatus};
use publisher::presence::{Join, OnlineOp};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::BrokerError;
use crate::config::PresenceConfig;
use crate::metrics::{Metrics, Query};
pub use memory::MemoryStore;
pub use store::{RedisStore, Store};

/// How long changes gather before they go to the store together.
pub const BATCH: Duration = Duration::from_millis(50);

/// The changes of one channel waiting for the next batch, by client.
#[derive(Default)]
struct Pending {
    joins: HashMap<Arc<str>, Arc<Join>>,
    leaves: HashSet<Arc<str>>,
}

impl Pending {
    fn len(&self) -> usize {
        self.joins.len() + self.leaves.len()
    }
}

#[derive(Default)]
struct State {
    /// channel -> client -> its join (what to register again after a Redis restart).
    channels: HashMap<Arc<str>, HashMap<Arc<str>, Arc<Join>>>,
    pending: HashMap<Arc<str>, Pending>,
    /// Connections of each user on this node.
    users: HashMap<Arc<str>, u32>,
    online: HashMap<Arc<str>, OnlineOp>,
    /// When to look at a channel again for leaves falling due.
    due: BTreeMap<Instant, HashSet<Arc<str>>>,
    /// Connections refused because their channel's presence was full, per channel:
    /// tried again at each refresh, so they are listed once there is room.
    refused: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// The earliest look scheduled per channel (so one channel is scheduled once
    /// per due time, however many batches reported it).
    due_at: HashMap<Arc<str>, Instant>,
}

impl State {
    fn pending_len(&self) -> usize {
        self.pending.values().map(Pending::len).sum::<usize>() + self.online.len()
    }
}

pub struct Presence {
    config: PresenceConfig,
    store: Arc<dyn Store>,
    state: Mutex<State>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Presence {
    pub fn new(config: PresenceConfig, store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            store,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            metrics,
        }
    }

    /// The presence of a channel, if a rule gives it one.
    pub fn policy(&self, channel: &str) -> Option<Policy> {
        self.config.rules.policy(channel)
    }

    /// Whether any channel can have presence or online status is kept: if not,
    /// sessions skip presence entirely.
    pub fn is_active(&self) -> bool {
        self.config.online || !self.config.rules.is_empty()
    }

    fn changed(&self, s: &State) {
        self.metrics.presence.set_pending(s.pending_len());
        self.wake.notify_one();
    }

    /// A connection of `user` subscribed to a channel with presence.
    pub fn join(
        &self,
        channel: &Arc<str>,
        client: &Arc<str>,
        user: &str,
        info: Option<&serde_json::Value>,
    ) {
        let member = Member {
            user: user.to_owned(),
            client: client.to_string(),
            info: info.cloned(),
        };
        let joined = Joined {
            user: user.to_owned(),
            info: info.cloned(),
        };
        let (Ok(member), Ok(joined)) = (
            serde_json::to_string(&member),
            serde_json::to_string(&joined),
        ) else {
            return;
        };
        let join = Arc::new(Join {
            client: client.to_string(),
            user: user.to_owned(),
            member,
            joined,
        });
        let mut s = lock(&self.state);
        let members = s.channels.entry(channel.clone()).or_default();
        if members.insert(client.clone(), join.clone()).is_none() {
            self.metrics.presence.members(1);
        }
        let p = s.pending.entry(channel.clone()).or_default();
        // A leave of this connection still waiting: Redis has its entry, keep it.
        if !p.leaves.remove(client) {
            p.joins.insert(client.clone(), join);
        }
        self.changed(&s);
    }

    /// A connection left a channel with presence (unsubscribed or closed).
    pub fn leave(&self, channel: &Arc<str>, client: &Arc<str>) {
        let mut s = lock(&self.state);
        let Some(members) = s.channels.get_mut(channel) else {
            return;
        };
        if members.remove(client).is_none() {
            return;
        }
        self.metrics.presence.members(-1);
        if members.is_empty() {
            s.channels.remove(channel);
        }
        let p = s.pending.entry(channel.clone()).or_default();
        // A join that never reached the store: nothing to undo.
        if p.joins.remove(client).is_none() {
            p.leaves.insert(client.clone());
        }
        if p.len() == 0 {
            s.pending.remove(channel);
        }
        self.changed(&s);
    }

    /// A connection of `user` opened on this node.
    pub fn connected(&self, user: &Arc<str>) {
        if !self.config.online {
            return;
        }
        let mut s = lock(&self.state);
        let n = s.users.entry(user.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            s.online.insert(user.clone(), OnlineOp::Here);
            self.changed(&s);
        }
    }

    /// A connection of `user` closed on this node.
    pub fn disconnected(&self, user: &Arc<str>) {
        if !self.config.online {
            return;
        }
        let mut s = lock(&self.state);
        let Some(n) = s.users.get_mut(user) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            s.users.remove(user);
            s.online.insert(user.clone(), OnlineOp::Gone);
            self.changed(&s);
        }
    }

    /// A page of a channel's members with its counts.
    pub async fn page(
        &self,
        channel: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<PresenceResult, BrokerError> {
        self.metrics.presence.query(Query::Page);
        self.store.page(channel, limit, cursor).await
    }

    pub async fn stats(&self, channel: &str) -> Result<PresenceStatsResult, BrokerError> {
        self.metrics.presence.query(Query::Stats);
        self.store.stats(channel).await
    }

    pub async fn online(&self, users: &[String]) -> Result<Vec<UserStatus>, BrokerError> {
        self.metrics.presence.query(Query::Online);
        if !self.config.online {
            return Err(BrokerError::Rejected(
                "online status is not kept (--presence-online=false)".into(),
            ));
        }
        self.store.online(users).await
    }

    /// Sends what is pending now (at shutdown, after the connections closed), within
    /// `within`.
    pub async fn flush_now(&self, within: Duration) {
        if tokio::time::timeout(within, self.flush()).await.is_err() {
            tracing::warn!("presence changes not all sent before shutdown");
        }
    }
}
