//! Reading history and the acknowledged inbox: what gateways use to resume clients,
//! and what backends use to ask for a user's unread notifications.

use protocol::history::StreamPosition;
use protocol::{Publication, channel};
use redis::Value;
use redis::streams::StreamRangeReply;

use crate::script::{self, ACK, HISTORY};
use crate::{PublishError, Publisher, unavailable};

/// A slice of a channel's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The history's epoch; empty while the channel has no history yet.
    pub epoch: String,
    /// The latest offset published in this epoch (0 before the first publish).
    pub top: u64,
    /// Publications after the requested offset, oldest first.
    pub pubs: Vec<Publication>,
}

/// A notification from a user's inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub offset: u64,
    pub event: String,
    pub payload: protocol::Payload,
    pub id: Option<String>,
    /// Publish time, ms since the Unix epoch.
    pub ts: u64,
}

fn decode_entries(reply: StreamRangeReply) -> Vec<Publication> {
    reply
        .ids
        .into_iter()
        .filter_map(|entry| match entry.map.get("e") {
            Some(Value::BulkString(b)) => Publication::decode(b).ok(),
            _ => None,
        })
        .collect()
}

impl Publisher {
    fn ttl_of(&self, ch: &str) -> Result<u64, PublishError> {
        self.history_rules()
            .policy(ch)
            .map(|p| p.ttl.as_secs().max(1))
            .ok_or_else(|| PublishError::InvalidTarget(format!("channel `{ch}` keeps no history")))
    }

    /// Reads a channel's history after `after` (exclusive), at most `limit` entries.
    /// With `after == None` only the epoch and latest offset are returned.
    pub async fn history(
        &self,
        ch: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, PublishError> {
        self.history_page(ch, after, limit, usize::MAX).await
    }

    /// Like [`history`](Self::history), but the page also stops before the entry
    /// that would take its envelopes past `max_bytes` (its first entry always fits):
    /// what a reader that holds pages in memory reads, page by page, so that a
    /// long history of large payloads costs a bounded amount at a time.
    pub async fn history_page(
        &self,
        ch: &str,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<HistoryPage, PublishError> {
        self.ttl_of(ch)?;
        let ch = ch.to_owned();
        self.with_conn(&ch.clone(), move |inner, conn| {
            Box::pin(async move {
                let meta = inner.keys.history_meta(&ch);
                let Some(after) = after else {
                    // Reading never creates history (no key per idle user in Redis):
                    // an empty epoch means "none yet", and resuming from it replays all.
                    let ((epoch, seq),): ((Option<String>, Option<u64>),) =
                        conn.transaction(&meta_read(&meta), &meta).await?;
                    return Ok(HistoryPage {
                        epoch: epoch.unwrap_or_default(),
                        top: seq.unwrap_or(0),
                        pubs: Vec::new(),
                    });
                };
                let keys = [inner.keys.history_stream(&ch), meta];
                let args = [
                    format!("{}-0", after.saturating_add(1)),
                    limit.max(1).to_string(),
                    max_bytes.min(i64::MAX as usize).to_string(),
                ];
                let reply: Vec<Value> = script::eval(conn, &HISTORY, &keys, &args).await?;
                let mut fields = reply.into_iter();
                let epoch = match fields.next() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                    _ => String::new(),
                };
                let top = match fields.next() {
                    Some(Value::BulkString(b)) => {
                        std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok())
                    }
                    _ => None,
                };
                let pubs = if limit == 0 {
                    Vec::new()
                } else {
                    fields
                        .filter_map(|v| match v {
                            Value::BulkString(b) => Publication::decode(&b).ok(),
                            _ => None,
                        })
                        .collect()
                };
                Ok(HistoryPage {
                    epoch,
                    top: top.unwrap_or(0),
                    pubs,
                })
            })
        })
        .await
    }

    /// Acknowledges a personal channel up to `offset` (moves forward only, within
    /// the current epoch). Returns the stored position, `None` when the channel has
    /// no history yet.
    pub async fn ack_channel(&self, ch: &str, offset: u64) -> Result<Option<u64>, PublishError> {
        let ttl = self.ttl_of(ch)?;
        let ch = ch.to_owned();
        self.with_conn(&ch.clone(), move |inner, conn| {
            Box::pin(async move {
                let keys = [inner.keys.history_meta(&ch), inner.keys.ack_position(&ch)];
                let args = [offset.to_string(), ttl.to_string()];
                let stored: i64 = script::eval(conn, &ACK, &keys, &args).await?;
                Ok((stored >= 0).then_some(stored as u64))
            })
        })
        .await
    }

    /// A channel's history position (its epoch and latest offset, no entries, as
    /// [`history`](Self::history) without `after`) and its acknowledged position
    /// `(epoch, offset)`, in one round trip: what a gateway needs to start a
    /// connection without a resume.
    pub async fn position_channel(
        &self,
        ch: &str,
    ) -> Result<(HistoryPage, Option<StreamPosition>), PublishError> {
        self.ttl_of(ch)?;
        let ch = ch.to_owned();
        self.with_conn(&ch.clone(), move |inner, conn| {
            Box::pin(async move {
                let meta = inner.keys.history_meta(&ch);
                let mut pipe = meta_read(&meta);
                pipe.cmd("GET").arg(inner.keys.ack_position(&ch));
                let ((epoch, seq), ack): ((Option<String>, Option<u64>), Option<String>) =
                    conn.transaction(&pipe, &meta).await?;
                let acked = ack.as_deref().and_then(StreamPosition::parse_stored);
                let page = HistoryPage {
                    epoch: epoch.unwrap_or_default(),
                    top: seq.unwrap_or(0),
                    pubs: Vec::new(),
                };
                Ok((page, acked))
            })
        })
        .await
    }

    /// The acknowledged position of a channel, if any.
    pub async fn acked_channel(&self, ch: &str) -> Result<Option<StreamPosition>, PublishError> {
        let key = self.keys().ack_position(ch);
        self.with_conn(ch, move |_, conn| {
            Box::pin(async move {
                let v: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .map_err(unavailable)?;
                Ok(v.as_deref().and_then(StreamPosition::parse_stored))
            })
        })
        .await
    }

    /// How many notifications in a user's inbox are after the user's acknowledged
    /// position (all that history still holds when nothing was acknowledged).
    pub async fn unread_count(&self, user: &str) -> Result<u64, PublishError> {
        channel::validate_user(user).map_err(|e| PublishError::InvalidTarget(e.to_string()))?;
        let ch = channel::personal(user);
        self.with_conn(&ch.clone(), move |inner, conn| {
            Box::pin(async move {
                let meta = inner.keys.history_meta(&ch);
                let mut pipe = meta_read(&meta);
                pipe.cmd("XLEN")
                    .arg(inner.keys.history_stream(&ch))
                    .cmd("GET")
                    .arg(inner.keys.ack_position(&ch));
                let ((epoch, seq), len, ack): ((Option<String>, Option<u64>), u64, Option<String>) =
                    conn.transaction(&pipe, &meta).await?;
                let seq = seq.unwrap_or(0);
                let acked = match (epoch, ack.as_deref().and_then(StreamPosition::parse_stored)) {
                    (Some(e), Some(a)) if e == a.epoch => a.offset,
                    _ => 0,
                };
                Ok(seq.saturating_sub(acked).min(len))
            })
        })
        .await
    }

    /// The user's most recent notifications, newest first, at most `n`.
    pub async fn recent(&self, user: &str, n: usize) -> Result<Vec<Notification>, PublishError> {
        channel::validate_user(user).map_err(|e| PublishError::InvalidTarget(e.to_string()))?;
        let ch = channel::personal(user);
        let stream = self.keys().history_stream(&ch);
        self.with_conn(&ch, move |_, conn| {
            Box::pin(async move {
                let range: StreamRangeReply = redis::cmd("XREVRANGE")
                    .arg(&stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(n)
                    .query_async(conn)
                    .await
                    .map_err(unavailable)?;
                Ok(decode_entries(range)
                    .into_iter()
                    .map(|p| Notification {
                        offset: p.offset.unwrap_or(0),
                        event: p.event,
                        payload: p.payload,
                        id: p.id,
                        ts: p.ts,
                    })
                    .collect())
            })
        })
        .await
    }

    /// Acknowledges a user's inbox up to `offset` on behalf of the user (the same as
    /// a client's `ack`).
    pub async fn ack(&self, user: &str, offset: u64) -> Result<Option<u64>, PublishError> {
        channel::validate_user(user).map_err(|e| PublishError::InvalidTarget(e.to_string()))?;
        self.ack_channel(&channel::personal(user), offset).await
    }
}

/// A read transaction (`MULTI` ... `EXEC`) that starts with the channel's history
/// `(epoch, seq)` from its meta key; callers add the rest.
fn meta_read(meta: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("HMGET").arg(meta).arg("epoch").arg("seq");
    pipe
}
