//! The write side of a subscriber connection: SUBSCRIBE and UNSUBSCRIBE as the
//! hub's interest changes (batched; an unsubscribe waits `--redis-unsubscribe-delay`
//! in case the interest comes back), and the liveness probe, published on a
//! connection of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, sleep_until, timeout};

use super::Shared;
use super::connection::{Pending, WriteHalf};
use super::resp;
use super::shard::{Shard, Target, shard_of};
use crate::metrics::ShardMetrics;

/// Channels per SUBSCRIBE/UNSUBSCRIBE command when many change at once.
const BATCH: usize = 512;

/// The write side: subscriptions and the liveness probe.
pub(super) struct Commander<'a> {
    pub(super) shared: &'a Shared,
    pub(super) shard: &'a Shard,
    pub(super) link: &'a Pending,
    pub(super) wr: WriteHalf,
    pub(super) out: BytesMut,
    /// Client-visible channels this connection is subscribed to (or asked for).
    pub(super) active: HashSet<Arc<str>>,
    /// Channels without local interest, and when to unsubscribe them.
    pub(super) leaving: HashMap<Arc<str>, Instant>,
    pub(super) metrics: ShardMetrics,
}

impl Commander<'_> {
    pub(super) async fn run(&mut self, probe: &str) -> String {
        match self.serve(probe).await {
            Ok(never) => match never {},
            Err(why) => why,
        }
    }

    pub(super) async fn serve(&mut self, probe: &str) -> Result<std::convert::Infallible, String> {
        let shared = self.shared;
        let shard = self.shard;
        // The hub's interest set is the source of truth: whatever changed
        // meanwhile is in it.
        shard
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let wanted: Vec<Arc<str>> = shared
            .handler
            .interests()
            .into_iter()
            .filter(|c| shard_of(shared, c) == shard.index)
            .collect();
        self.command(true, &wanted).await?;
        // Last: its confirmation tells the reader that everything before it is live.
        let verb = self.verb(true);
        resp::command(&mut self.out, &[verb, probe]);
        self.flush().await?;

        let probe_every = shared.redis.probe_interval;
        let probe_route = match &shard.target {
            Target::Instance { instance, .. } => *instance,
            Target::Partition { .. } => 0,
        };
        let mut next_probe = Instant::now() + probe_every;
        let mut probing: Option<Probing<'_>> = None;
        let far = Duration::from_secs(3600);
        loop {
            let leave_at = self
                .leaving
                .values()
                .min()
                .copied()
                .unwrap_or_else(|| Instant::now() + far);
            // The select only says what happened (its futures borrow `probing`).
            let event = tokio::select! {
                () = shard.wake.notified() => Event::Interest,
                () = sleep_until(leave_at) => Event::Leave,
                () = sleep_until(next_probe) => Event::ProbeDue,
                sent = std::future::poll_fn(|cx| match probing.as_mut() {
                    Some(f) => f.as_mut().poll(cx),
                    None => std::task::Poll::Pending,
                }) => Event::ProbeSent(sent),
            };
            match event {
                Event::Interest => self.sync().await?,
                Event::Leave => self.leave_due().await?,
                Event::ProbeDue => {
                    next_probe = Instant::now() + probe_every;
                    shard.report_lag(shared);
                    if shard.probe_age().is_some_and(|age| age >= probe_every) {
                        return Err("liveness probe did not come back".to_string());
                    }
                    if probing.is_none()
                        && shard.up.load(Ordering::Acquire)
                        && shard.probe_age().is_none()
                    {
                        shard.probe_sent();
                        let prober = &shared.prober;
                        probing = Some(Box::pin(async move {
                            prober
                                .probe(probe_route, probe)
                                .await
                                .map_err(|e| e.to_string())
                        }));
                    }
                }
                Event::ProbeSent(sent) => {
                    probing = None;
                    match sent {
                        Ok(0) => {
                            return Err("redis reports no subscriber for this connection".into());
                        }
                        Ok(_) => {}
                        // Publishing failed: the probe will not come back; try again
                        // next time (the reader notices a dead connection by itself).
                        Err(e) => {
                            shard.probe_lost();
                            tracing::debug!(error = %e, "probe publish failed");
                        }
                    }
                }
            }
        }
    }

    pub(super) fn verb(&self, subscribe: bool) -> &'static str {
        match (&self.shard.target, subscribe) {
            (Target::Instance { .. }, true) => "SUBSCRIBE",
            (Target::Instance { .. }, false) => "UNSUBSCRIBE",
            (Target::Partition { .. }, true) => "SSUBSCRIBE",
            (Target::Partition { .. }, false) => "SUNSUBSCRIBE",
        }
    }

    pub(super) async fn flush(&mut self) -> Result<(), String> {
        let write = self.wr.write_all(&self.out);
        let r = timeout(self.shared.redis.command_timeout, write)
            .await
            .map_err(|_| "redis stopped reading our commands".to_string())?
            .map_err(|e| format!("write: {e}"));
        self.out.clear();
        r
    }

    /// Sends (UN)SUBSCRIBE for `channels`, in batches.
    pub(super) async fn command(
        &mut self,
        subscribe: bool,
        channels: &[Arc<str>],
    ) -> Result<(), String> {
        let verb = self.verb(subscribe);
        for chunk in channels.chunks(BATCH) {
            let mut args: Vec<String> = Vec::with_capacity(chunk.len() + 1);
            args.push(verb.to_string());
            args.extend(chunk.iter().map(|c| self.shared.keys.pubsub_channel(c)));
            if !subscribe {
                // From now on the channel is not live here, whatever the reader still
                // sees: a session must not take it as confirmed.
                self.shard.confirm(chunk, false);
                let mut pending = self.link.lock();
                for n in &args[1..] {
                    *pending.entry(n.clone()).or_default() += 1;
                }
            }
            resp::command(&mut self.out, &args);
            let delta = chunk.len() as i64;
            let delta = if subscribe { delta } else { -delta };
            self.metrics.subscribed(delta);
            if subscribe {
                self.active.extend(chunk.iter().cloned());
            } else {
                for c in chunk {
                    self.active.remove(c);
                }
            }
            self.flush().await?;
        }
        Ok(())
    }

    /// Reconciles this connection with the hub after interest changed.
    pub(super) async fn sync(&mut self) -> Result<(), String> {
        let dirty: Vec<Arc<str>> = self
            .shard
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let mut to_subscribe = Vec::new();
        let later = Instant::now() + self.shared.redis.unsubscribe_delay;
        for ch in dirty {
            if self.shared.handler.has_interest(&ch) {
                self.leaving.remove(&ch);
                if !self.active.contains(&ch) {
                    to_subscribe.push(ch);
                }
            } else if self.active.contains(&ch) {
                self.leaving.entry(ch).or_insert(later);
            }
        }
        self.command(true, &to_subscribe).await
    }

    /// Unsubscribes channels whose delay has passed and that are still unwanted.
    pub(super) async fn leave_due(&mut self) -> Result<(), String> {
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
            if !self.shared.handler.has_interest(&ch) {
                gone.push(ch);
            }
        }
        self.command(false, &gone).await
    }

    /// The connection ended: nothing it subscribed to is live any more.
    pub(super) fn release(&mut self) {
        let n = self.active.len() as i64;
        self.metrics.subscribed(-n);
        let active: Vec<Arc<str>> = self.active.drain().collect();
        self.shard.confirm(&active, false);
    }
}

pub(super) type Probing<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + 'a>>;

/// What woke the commander.
pub(super) enum Event {
    Interest,
    Leave,
    ProbeDue,
    ProbeSent(Result<u64, String>),
}
