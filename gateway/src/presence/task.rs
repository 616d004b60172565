//! The presence task: batches to the store, the periodic refresh, leaves falling
//! due. Changes that fail (Redis unavailable) go back into the pending set and are
//! sent with the next batch; the refresh registers a node's members again when
//! Redis lost them (a restart), so presence heals without the clients doing
//! anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::presence::Policy;
use publisher::presence::{Join, OnlineOp, Outcome};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{BATCH, Pending, Presence, lock};

/// Channels updated or refreshed at once.
const PARALLEL: usize = 16;
/// Joins or users sent in one script: a script holds Redis for its whole run (about
/// 11 us per user of online status), so a few ms at most.
const CHUNK: usize = 250;

impl Presence {
    /// Runs until the node stops (the task is aborted).
    pub async fn run(self: Arc<Self>) {
        let mut refresh = tokio::time::interval(self.config.refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The refresh runs beside the batches, one at a time: with thousands of
        // users and channels it takes hundreds of ms, during which joins and leaves
        // waited (measured: p99 1.1-1.4 s to announce a join with 10,000 members).
        let mut refreshing: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let due = lock(&self.state).due.keys().next().copied();
            tokio::select! {
                _ = self.wake.notified() => {
                    tokio::time::sleep(BATCH).await;
                    self.flush().await;
                }
                _ = refresh.tick() => {
                    if refreshing.as_ref().is_none_or(|t| t.is_finished()) {
                        let me = self.clone();
                        refreshing = Some(tokio::spawn(async move {
                            let started = Instant::now();
                            me.refresh_all().await;
                            me.metrics.presence.refreshed(started.elapsed());
                        }));
                    }
                }
                _ = sleep_until(due), if due.is_some() => self.sweep_due().await,
            }
        }
    }

    /// Sends the pending changes: online status, then each channel's joins and
    /// leaves.
    pub(super) async fn flush(&self) {
        let (channels, online) = {
            let mut s = lock(&self.state);
            let taken = (
                std::mem::take(&mut s.pending),
                std::mem::take(&mut s.online),
            );
            self.metrics.presence.set_pending(0);
            taken
        };
        if !online.is_empty() {
            let ops: Vec<(String, OnlineOp)> =
                online.iter().map(|(u, op)| (u.to_string(), *op)).collect();
            if self.online_in_chunks(&ops).await.is_err() {
                let mut s = lock(&self.state);
                for (user, op) in online {
                    s.online.entry(user).or_insert(op);
                }
                self.changed(&s);
            }
        }
        let mut set = JoinSet::new();
        for (channel, pending) in channels {
            let Some(policy) = self.policy(&channel) else {
                continue;
            };
            while set.len() >= PARALLEL {
                self.settle(set.join_next().await);
            }
            let store = self.store.clone();
            set.spawn(async move {
                let r = update(&*store, &channel, policy, &pending).await;
                (channel, pending, r)
            });
        }
        while !set.is_empty() {
            self.settle(set.join_next().await);
        }
    }

    /// What an update came back with: the next look for due leaves, refusals, or
    /// (failed) its changes back into the pending set.
    #[allow(clippy::type_complexity)]
    fn settle(
        &self,
        joined: Option<
            Result<
                (
                    Arc<str>,
                    Pending,
                    Result<Outcome, crate::broker::BrokerError>,
                ),
                tokio::task::JoinError,
            >,
        >,
    ) {
        let Some(Ok((channel, sent, result))) = joined else {
            return;
        };
        match result {
            Ok(outcome) => {
                self.metrics.presence.refused(outcome.refused.len());
                self.schedule(&channel, outcome.next_due);
                self.note_refused(&channel, outcome.refused);
            }
            Err(e) => {
                self.metrics.presence.failed();
                tracing::debug!(error = %e, "presence update failed; retrying with the next batch");
                self.requeue(channel, sent);
            }
        }
    }

    /// Puts changes that did not reach the store back, unless newer ones replaced
    /// them: a failed join whose connection has left since is dropped, a failed
    /// leave whose connection came back cancels that join (the store still has the
    /// entry).
    fn requeue(&self, channel: Arc<str>, sent: Pending) {
        let mut s = lock(&self.state);
        let present: Vec<Arc<str>> = sent
            .joins
            .keys()
            .filter(|c| s.channels.get(&channel).is_some_and(|m| m.contains_key(*c)))
            .cloned()
            .collect();
        let p = s.pending.entry(channel.clone()).or_default();
        for client in present {
            if !p.leaves.contains(&client)
                && let Some(j) = sent.joins.get(&client)
            {
                p.joins.entry(client).or_insert_with(|| j.clone());
            }
        }
        for client in sent.leaves {
            if p.joins.remove(&client).is_none() {
                p.leaves.insert(client);
            }
        }
        if p.len() == 0 {
            s.pending.remove(&channel);
        }
        self.changed(&s);
    }

    /// Remembers connections a full channel refused (to try again at the refresh).
    fn note_refused(&self, channel: &Arc<str>, refused: Vec<String>) {
        if refused.is_empty() {
            return;
        }
        let mut s = lock(&self.state);
        let set = s.refused.entry(channel.clone()).or_default();
        set.extend(refused.into_iter().map(Arc::from));
    }

    /// Tries again to register the connections a full channel refused, those still
    /// here (room may have freed up).
    async fn retry_refused(&self, channel: &Arc<str>, policy: Policy) {
        let joins: HashMap<Arc<str>, Arc<Join>> = {
            let mut s = lock(&self.state);
            let Some(refused) = s.refused.remove(channel) else {
                return;
            };
            let Some(members) = s.channels.get(channel) else {
                return;
            };
            refused
                .into_iter()
                .filter_map(|c| members.get(&c).map(|j| (c, j.clone())))
                .collect()
        };
        if joins.is_empty() {
            return;
        }
        let pending = Pending {
            joins,
            leaves: Default::default(),
        };
        match update(&*self.store, channel, policy, &pending).await {
            Ok(o) => {
                self.schedule(channel, o.next_due);
                self.note_refused(channel, o.refused);
            }
            Err(_) => {
                self.metrics.presence.failed();
                let mut s = lock(&self.state);
                let set = s.refused.entry(channel.clone()).or_default();
                set.extend(pending.joins.into_keys());
            }
        }
    }

    fn schedule(&self, channel: &Arc<str>, next_due: Option<Duration>) {
        let Some(d) = next_due else {
            return;
        };
        // A little after the leave is due, so Redis' clock has passed it too.
        let at = Instant::now() + d + Duration::from_millis(5);
        let mut s = lock(&self.state);
        if s.due_at.get(channel).is_some_and(|earlier| *earlier <= at) {
            return;
        }
        s.due_at.insert(channel.clone(), at);
        s.due.entry(at).or_default().insert(channel.clone());
    }

    /// Keeps this node's entries alive, registers them again where Redis lost
    /// them, and keeps its online users' entries alive.
    async fn refresh_all(&self) {
        let channels: Vec<Arc<str>> = lock(&self.state).channels.keys().cloned().collect();
        let mut set = JoinSet::new();
        for channel in channels {
            let Some(policy) = self.policy(&channel) else {
                continue;
            };
            while set.len() >= PARALLEL {
                self.refreshed(set.join_next().await).await;
            }
            let store = self.store.clone();
            set.spawn(async move {
                let r = store.refresh(&channel, policy, true).await;
                (channel, policy, r)
            });
        }
        while !set.is_empty() {
            self.refreshed(set.join_next().await).await;
        }
        let users: Vec<(String, OnlineOp)> = lock(&self.state)
            .users
            .keys()
            .map(|u| (u.to_string(), OnlineOp::Here))
            .collect();
        if !users.is_empty() && self.online_in_chunks(&users).await.is_err() {
            self.metrics.presence.failed();
        }
    }

    #[allow(clippy::type_complexity)]
    async fn refreshed(
        &self,
        joined: Option<
            Result<
                (
                    Arc<str>,
                    Policy,
                    Result<Outcome, crate::broker::BrokerError>,
                ),
                tokio::task::JoinError,
            >,
        >,
    ) {
        let Some(Ok((channel, policy, result))) = joined else {
            return;
        };
        match result {
            Ok(outcome) => {
                self.schedule(&channel, outcome.next_due);
                if outcome.missing {
                    self.restore(&channel, policy).await;
                } else {
                    self.retry_refused(&channel, policy).await;
                }
            }
            Err(_) => self.metrics.presence.failed(),
        }
    }

    /// Registers every local member of a channel again (Redis lost them).
    async fn restore(&self, channel: &Arc<str>, policy: Policy) {
        let joins: HashMap<Arc<str>, Arc<Join>> = match lock(&self.state).channels.get(channel) {
            Some(m) => m.clone(),
            None => return,
        };
        tracing::info!(
            members = joins.len(),
            "presence entries missing in Redis (restarted?); registering them again"
        );
        let pending = Pending {
            joins,
            leaves: Default::default(),
        };
        match update(&*self.store, channel, policy, &pending).await {
            Ok(o) => {
                self.schedule(channel, o.next_due);
                self.note_refused(channel, o.refused);
            }
            Err(_) => {
                self.metrics.presence.failed();
                self.requeue(channel.clone(), pending);
            }
        }
    }

    /// Looks at channels whose pending leaves fell due.
    async fn sweep_due(&self) {
        let now = Instant::now();
        let channels: Vec<Arc<str>> = {
            let mut s = lock(&self.state);
            let later = s.due.split_off(&(now + Duration::from_millis(1)));
            let due: Vec<Arc<str>> = std::mem::replace(&mut s.due, later)
                .into_values()
                .flatten()
                .collect();
            for c in &due {
                if s.due_at.get(c).is_some_and(|at| *at <= now) {
                    s.due_at.remove(c);
                }
            }
            due
        };
        let mut seen = std::collections::HashSet::new();
        for channel in channels {
            if !seen.insert(channel.clone()) {
                continue;
            }
            let Some(policy) = self.policy(&channel) else {
                continue;
            };
            let has = lock(&self.state).channels.contains_key(&channel);
            match self.store.refresh(&channel, policy, has).await {
                Ok(o) => self.schedule(&channel, o.next_due),
                Err(_) => {
                    self.metrics.presence.failed();
                    // Try again after a refresh interval at the latest.
                    self.schedule(&channel, Some(self.config.refresh));
                }
            }
        }
    }

    async fn online_in_chunks(
        &self,
        ops: &[(String, OnlineOp)],
    ) -> Result<(), crate::broker::BrokerError> {
        for chunk in ops.chunks(CHUNK) {
            self.store.online_update(chunk).await?;
        }
        Ok(())
    }
}

/// One channel's joins and leaves, in scripts of at most [`CHUNK`] changes.
async fn update(
    store: &dyn super::Store,
    channel: &str,
    policy: Policy,
    pending: &Pending,
) -> Result<Outcome, crate::broker::BrokerError> {
    let joins: Vec<Join> = pending.joins.values().map(|j| (**j).clone()).collect();
    let leaves: Vec<String> = pending.leaves.iter().map(|c| c.to_string()).collect();
    let mut out = Outcome::default();
    let (mut j, mut l) = (joins.as_slice(), leaves.as_slice());
    // Leaves go in the first scripts, so a full channel has room for the joins of
    // the later ones.
    loop {
        let nl = l.len().min(CHUNK);
        let nj = j.len().min(CHUNK - nl);
        let o = store.update(channel, policy, &j[..nj], &l[..nl]).await?;
        out.refused.extend(o.refused);
        out.next_due = match (out.next_due, o.next_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        j = &j[nj..];
        l = &l[nl..];
        if j.is_empty() && l.is_empty() {
            break;
        }
    }
    Ok(out)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
