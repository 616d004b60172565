//! The read side of a subscriber connection: replies and messages, in order,
//! parsed from one bounded buffer; publications go to the hub, confirmations to
//! the shard, the probe's return to the lag measure.

use std::sync::Arc;

use bytes::BytesMut;
use protocol::Publication;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::Shared;
use super::connection::{Pending, ReadHalf};
use super::resp::{self, Reply};
use super::shard::{Shard, set_up, shard_of};
use crate::metrics::{BrokerInvalid, ShardMetrics};

/// What the reader asks of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;

/// The read side: replies and messages, in order.
pub(super) struct Reader<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) shard: &'a Shard,
    pub(super) link: &'a Pending,
    pub(super) probe: &'a str,
    pub(super) started: Instant,
    pub(super) first: bool,
    pub(super) peer: String,
    pub(super) metrics: ShardMetrics,
}

impl Reader<'_> {
    pub(super) async fn run(self, mut rd: ReadHalf) -> String {
        let max = self.shared.max_reply;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            loop {
                match resp::parse(&mut buf, max) {
                    Ok(Some(reply)) => {
                        if let Err(why) = self.handle(reply) {
                            return why;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if matches!(e, resp::RespError::TooLarge(_)) {
                            self.shared.metrics.broker.invalid(BrokerInvalid::Oversized);
                        }
                        return format!("cannot read from redis: {e}");
                    }
                }
            }
            buf.reserve(READ_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) => return "connection closed".into(),
                Ok(_) => {}
                Err(e) => return format!("read: {e}"),
            }
        }
    }

    pub(super) fn handle(&self, reply: Reply) -> Result<(), String> {
        let items = match reply {
            Reply::Array(items) => items,
            Reply::Error(e) => {
                return Err(format!(
                    "redis refused a subscriber command: {}",
                    String::from_utf8_lossy(&e)
                ));
            }
            _ => return Ok(()),
        };
        let (Some(kind), Some(name)) = (
            items.first().and_then(Reply::bulk),
            items.get(1).and_then(Reply::bulk),
        ) else {
            return Ok(());
        };
        let name = std::str::from_utf8(name).unwrap_or_default();
        match &kind[..] {
            b"message" | b"smessage" => {
                let Some(payload) = items.get(2).and_then(Reply::bulk) else {
                    return Ok(());
                };
                if name == self.probe {
                    self.shard.probe_back(self.shared);
                    return Ok(());
                }
                self.deliver(name, payload);
            }
            b"subscribe" | b"ssubscribe" => {
                if name == self.probe {
                    self.connected();
                } else if !self.link.lock().contains_key(name)
                    && let Some(channel) = self.shared.keys.channel_of(name)
                {
                    self.shard.confirm(&[Arc::from(channel)], true);
                }
            }
            b"unsubscribe" | b"sunsubscribe" => {
                let mut pending = self.link.lock();
                match pending.get_mut(name) {
                    Some(n) if *n > 1 => *n -= 1,
                    Some(_) => {
                        pending.remove(name);
                    }
                    // Only sharded pub/sub drops subscriptions by itself: the slot moved.
                    None if &kind[..] == b"sunsubscribe" => {
                        return Err(format!(
                            "redis dropped the subscription of {name} (slot moved)"
                        ));
                    }
                    None => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn deliver(&self, name: &str, payload: &[u8]) {
        let metrics = &self.shared.metrics.broker;
        self.metrics.received();
        match Publication::decode(payload) {
            Ok(p) if self.shared.keys.channel_of(name) == Some(p.channel.as_str()) => {
                self.shared.handler.deliver(&p);
            }
            Ok(_) => {
                metrics.invalid(BrokerInvalid::ChannelMismatch);
                tracing::warn!("envelope channel does not match its redis channel; dropped");
            }
            Err(e) => {
                metrics.invalid(BrokerInvalid::Undecodable);
                tracing::warn!(error = %e, "undecodable envelope; dropped");
            }
        }
    }

    /// The probe's subscription is confirmed: it was sent after every channel the
    /// hub wanted, so those are confirmed too (replies come in order).
    pub(super) fn connected(&self) {
        if !self.first {
            self.shared
                .metrics
                .broker
                .resubscribed(self.started.elapsed());
        }
        tracing::info!(
            shard = self.shard.index,
            redis = %self.peer,
            "redis subscriber connected"
        );
        set_up(self.shared, self.shard, true);
        if !self.first {
            tokio::spawn(recheck(self.shared.clone(), self.shard.index));
        }
    }
}

/// After a reconnect: messages published while this connection was down never
/// reached the node. A session notices a gap at its channel's next message; this
/// tells the sessions of every history channel of the shard where its history
/// stands now, so the ones behind fill the gap at once, even if nothing more is
/// published. One position read per channel, a few at a time.
pub(super) async fn recheck(shared: Arc<Shared>, shard: usize) {
    let channels: Vec<Arc<str>> = shared
        .handler
        .interests()
        .into_iter()
        .filter(|c| shard_of(&shared, c) == shard && shared.history.rules.policy(c).is_some())
        .collect();
    for chunk in channels.chunks(32) {
        let reads = chunk.iter().map(|ch| {
            let shared = &shared;
            async move {
                match shared.reader.history(ch, None, 0).await {
                    Ok(page) if !page.epoch.is_empty() && page.top > 0 => {
                        shared.handler.check(ch, &page.epoch, page.top);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read a position after resubscribing")
                    }
                }
            }
        });
        futures_util::future::join_all(reads).await;
    }
}
