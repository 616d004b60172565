//! The channels the client holds: subscribed again after every reconnect, each
//! resuming from its last position (`since`), and the answers to those subscribes,
//! which set the positions that de-duplication and the next resume start from. A
//! channel the server refuses for now (`unavailable`: the Redis instance or cluster
//! partition that holds it is down) stays held and is subscribed again after a
//! backoff delay while the connection stays up. The TypeScript client's
//! `subscription.ts` and `positions.ts` are the same.

use std::time::Duration;

use protocol::ErrorCode;
use protocol::frame::{ClientFrame, ReplyResult, Since, SubscribeResult};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Driver;
use super::conn::Conn;
use super::requests::Pending;
use crate::ended::Ended;
use crate::{Backoff, Error, Event, Subscription, lock};

/// A `subscribe` call waiting for the server's confirmation.
pub(super) type SubWaiter = oneshot::Sender<Result<Subscription, Error>>;

/// A channel the client holds (and restores after every reconnect).
pub(super) struct Sub {
    pub channel: String,
    /// `subscribe` calls waiting for the server's confirmation.
    pub waiters: Vec<SubWaiter>,
    /// Set from the server's first `unavailable` for the channel until a subscribe
    /// succeeds (then [`Event::Subscribed`] reports it).
    pub retry: Option<Retry>,
}

impl Sub {
    pub(super) fn new(channel: String, waiters: Vec<SubWaiter>) -> Self {
        Self {
            channel,
            waiters,
            retry: None,
        }
    }

    /// A subscribe for the channel is going out now: a planned retry waits for its
    /// answer instead.
    pub(super) fn hold_retry(&mut self) {
        if let Some(r) = self.retry.as_mut() {
            r.at = None;
        }
    }
}

/// The retries of a channel the server refused for now: their own backoff (the
/// reconnect's bounds, reset by every reconnect) and the next one's time.
pub(super) struct Retry {
    backoff: Backoff,
    /// When to subscribe again; `None` while a subscribe is in flight or the client
    /// is disconnected (the reconnect resubscribes).
    at: Option<Instant>,
}

/// Whether a refused subscribe is retried instead of dropping the channel: only
/// `unavailable`, which says the connection is fine and the channel's broker will
/// be back. Not `rate_limited`: every refused frame is a strike, and a client that
/// kept retrying into an empty history-read bucket would be closed with `1008`,
/// which stops it.
fn retried(e: &Error) -> bool {
    matches!(e, Error::Server { .. }) && e.code() == Some(ErrorCode::Unavailable)
}

impl Driver {
    /// Sends `subscribe`, resuming from `since` or else from the last position the
    /// client knows for the channel. Never waits for the rate budget: a client
    /// that cannot resubscribe loses messages.
    pub(super) async fn send_subscribe(
        &mut self,
        conn: &mut Conn,
        channel: String,
        since: Option<Since>,
        waiters: Vec<SubWaiter>,
    ) -> Result<(), Ended> {
        let since = since.or_else(|| lock(&self.shared).positions.since(&channel));
        let id = self.id();
        conn.bucket.force();
        let frame = ClientFrame::Subscribe {
            id,
            channel: channel.clone(),
            since: since.clone(),
        };
        let pending = Pending::Subscribe {
            channel,
            resumed: since.is_some(),
            waiters,
        };
        self.send_request(conn, id, frame, pending).await
    }

    /// Subscribes again to every channel held, handing each its waiting calls. The
    /// retries of refused channels start over (this subscribe is the first try).
    pub(super) async fn restore_subscriptions(&mut self, conn: &mut Conn) -> Result<(), Ended> {
        for r in self.subs.iter_mut().filter_map(|s| s.retry.as_mut()) {
            r.backoff.reset();
            r.at = None;
        }
        let channels: Vec<String> = self.subs.iter().map(|s| s.channel.clone()).collect();
        for channel in channels {
            let waiters = self
                .subs
                .iter_mut()
                .find(|s| s.channel == channel)
                .map(|s| std::mem::take(&mut s.waiters))
                .unwrap_or_default();
            self.send_subscribe(conn, channel, None, waiters).await?;
        }
        Ok(())
    }

    /// When the next refused channel is due to be subscribed again.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.subs.iter().filter_map(|s| s.retry.as_ref()?.at).min()
    }

    /// Subscribes again to the refused channels whose delay is over, each resuming
    /// from its last position.
    pub(super) async fn retry_subscriptions(&mut self, conn: &mut Conn) -> Result<(), Ended> {
        let now = Instant::now();
        let mut due = Vec::new();
        for s in &mut self.subs {
            if let Some(r) = s.retry.as_mut()
                && r.at.is_some_and(|at| at <= now)
            {
                r.at = None;
                due.push((s.channel.clone(), std::mem::take(&mut s.waiters)));
            }
        }
        for (channel, waiters) in due {
            tracing::debug!(%channel, "subscribing again");
            self.send_subscribe(conn, channel, None, waiters).await?;
        }
        Ok(())
    }

    /// Plans the next subscribe of a held channel the server refused for now (a
    /// delay drawn from its backoff); `None` when the channel is no longer held.
    fn schedule_retry(&mut self, channel: &str) -> Option<Duration> {
        let cfg = &self.cfg;
        let s = self.subs.iter_mut().find(|s| s.channel == channel)?;
        let r = s.retry.get_or_insert_with(|| Retry {
            backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max, cfg.stable_after),
            at: None,
        });
        let delay = r.backoff.next_delay(&mut self.rng);
        r.at = Some(Instant::now() + delay);
        Some(delay)
    }

    /// A subscribe got no reply in time: a channel that was being retried is tried
    /// again after its next delay (the others wait for the next reconnect).
    pub(super) fn subscribe_timed_out(&mut self, channel: &str) {
        let retrying = self
            .subs
            .iter()
            .any(|s| s.channel == channel && s.retry.as_ref().is_some_and(|r| r.at.is_none()));
        if retrying {
            self.schedule_retry(channel);
        }
    }

    /// Drops a channel from the set restored at reconnect, and its position.
    pub(super) fn forget(&mut self, channel: &str) {
        if let Some(i) = self.subs.iter().position(|s| s.channel == channel) {
            for w in self.subs.remove(i).waiters {
                let _ = w.send(Err(Error::Cancelled));
            }
        }
        lock(&self.shared).positions.remove(channel);
    }

    /// The answer to a `subscribe`: sets the channel's position (resumed or fresh),
    /// reports `recovered`, and answers the waiting calls. A refusal (or a result
    /// that does not read as documented) drops the channel, except `unavailable`,
    /// which keeps it and plans its next subscribe; when nobody waited (a
    /// resubscription after a reconnect, or a retry) the refusal is reported as an
    /// event. A channel that had been refused reports its success as an event too.
    pub(super) async fn on_subscribed(
        &mut self,
        channel: String,
        resumed: bool,
        waiters: Vec<SubWaiter>,
        result: Result<Value, Error>,
    ) {
        let result = result.and_then(|v| {
            SubscribeResult::from_value(v).map_err(|e| Error::Protocol(e.to_string()))
        });
        let sub = match result {
            Ok(sub) => sub,
            Err(e) if e.code() == Some(ErrorCode::AlreadySubscribed) => {
                SubscribeResult::without_history(channel.clone(), false)
            }
            Err(e) => {
                let (code, message) = match &e {
                    Error::Server { code, message } => (code.clone(), message.clone()),
                    other => (ErrorCode::Internal.as_str().to_owned(), other.to_string()),
                };
                let background = waiters.is_empty();
                let held = self.subs.iter().any(|s| s.channel == channel);
                if retried(&e) && held {
                    let delay = self.schedule_retry(&channel);
                    tracing::debug!(%channel, ?delay, "subscribe refused for now, retrying");
                } else {
                    self.forget(&channel);
                }
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
                // Already unsubscribed: the refusal no longer matters.
                if background && held {
                    self.emit(Event::Error(Error::Subscription {
                        channel,
                        code,
                        message,
                    }))
                    .await;
                }
                return;
            }
        };
        {
            let mut sh = lock(&self.shared);
            if resumed || sub.recovered.is_some() {
                sh.positions
                    .resumed(&channel, sub.epoch.clone(), sub.offset);
            } else {
                sh.positions.fresh(&channel, sub.epoch.clone(), sub.offset);
            }
        }
        let was_refused = self
            .subs
            .iter_mut()
            .find(|s| s.channel == channel)
            .and_then(|s| s.retry.take())
            .is_some();
        if was_refused {
            self.emit(Event::Subscribed(sub.clone())).await;
        }
        if let Some(recovered) = sub.recovered {
            self.emit(Event::Recovered {
                channel: channel.clone(),
                recovered,
            })
            .await;
        }
        for w in waiters {
            let _ = w.send(Ok(sub.clone()));
        }
    }
}
