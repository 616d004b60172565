//! The channels the client holds: subscribed again after every reconnect, each
//! resuming from its last position (`since`), and the answers to those subscribes,
//! which set the positions that de-duplication and the next resume start from. The
//! TypeScript client's `subscription.ts` and `positions.ts` are the same.

use protocol::ErrorCode;
use protocol::frame::{ClientFrame, ReplyResult, Since, SubscribeResult};
use serde_json::Value;
use tokio::sync::oneshot;

use super::Driver;
use super::conn::Conn;
use super::requests::Pending;
use crate::ended::Ended;
use crate::{Error, Event, Subscription, lock};

/// A `subscribe` call waiting for the server's confirmation.
pub(super) type SubWaiter = oneshot::Sender<Result<Subscription, Error>>;

/// A channel the client holds (and restores after every reconnect).
pub(super) struct Sub {
    pub channel: String,
    /// `subscribe` calls waiting for the server's confirmation.
    pub waiters: Vec<SubWaiter>,
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

    /// Subscribes again to every channel held, handing each its waiting calls.
    pub(super) async fn restore_subscriptions(&mut self, conn: &mut Conn) -> Result<(), Ended> {
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
    /// that does not read as documented) drops the channel; when nobody waited (a
    /// resubscription after a reconnect) it is reported as an event.
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
                self.forget(&channel);
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
                if background {
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
