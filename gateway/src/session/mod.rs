//! One client's protocol state: who it is, what it may do, what it subscribes to.
//!
//! The socket loop feeds it decoded bytes and writes back what it answers; the
//! session talks to the hub for subscriptions and publishes. Dropping a session
//! releases every subscription and its connection slot.

pub(crate) mod cursor;
pub(crate) mod recovery;

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::channel::{self, BROADCAST};
use protocol::frame::{ClientFrame, Reply, ServerFrame, Since, Welcome};
use protocol::{Encoding, ErrorCode, Payload, ProtocolError, Publication, envelope};
use publisher::HistoryPage;
use serde_json::json;
use tokio::time::Instant;

use crate::auth::{AuthError, Claims};
use crate::conn::outbox::{Item, Outbox};
use crate::conn::ratelimit::{Rate, TokenBucket};
use crate::error::SessionEnd;
use crate::hub::Subscriber;
use crate::node::{Node, Slot};
use crate::session::cursor::Position;
use recovery::{PAGE_ENTRIES, Replay, Step};

/// Strikes (malformed or rate-limited frames) tolerated in a burst before closing
/// with 1008; one strike is forgiven every 10 seconds.
/// Strikes a connection may collect (ten), forgiven one per ten seconds.
const ABUSE: Rate = Rate {
    per_sec: 0.1,
    capacity: 10.0,
};

/// The buckets' rates live in the configuration, not in each connection's buckets.
fn message_rate(node: &Node) -> Rate {
    Rate {
        per_sec: node.config.rate_limit as f32,
        capacity: node.config.rate_burst as f32,
    }
}

fn resume_rate(node: &Node) -> Rate {
    Rate {
        per_sec: node.config.resume_rate as f32,
        capacity: node.config.resume_burst as f32,
    }
}
/// The largest `pong` frame accepted without a strike (`{"type":"pong"}` is 15
/// bytes in JSON).
const MAX_PONG_BYTES: usize = 128;

/// What the socket loop should do after a frame.
#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    /// A reply followed by a replay from history (a resumed subscription).
    Replay(Reply, Replay),
    Silent,
    End(SessionEnd),
}

/// One subscription of this connection.
struct Sub {
    channel: Arc<str>,
    /// Key in the hub's table, to unsubscribe.
    key: usize,
    /// Stamped on every queued item of this subscription; its position in history
    /// is kept by the outbox's [`Cursor`](crate::session::cursor::Cursor) under this id.
    id: u32,
}

/// Recovery facts about the personal channel, reported in `welcome` (kept only
/// until then: every connection would carry them otherwise).
#[derive(Default)]
pub struct PersonalState {
    epoch: Option<String>,
    offset: Option<u64>,
    recovered: Option<bool>,
}

pub struct Session {
    id: u64,
    encoding: Encoding,
    /// The client has answered a `ping` frame: it needs no WebSocket ping.
    answers_pings: bool,
    subscribe_rights: Vec<String>,
    publish_rights: Vec<String>,
    expires_at: u64,
    /// Every subscription, personal and broadcast first.
    subs: Vec<Sub>,
    next_sub: u32,
    outbox: Arc<Outbox>,
    node: Arc<Node>,
    rate: TokenBucket,
    abuse: TokenBucket,
    /// History reads started (subscribes with history, resumes, gap fills).
    resumes: TokenBucket,
    slot: Slot,
}

/// A subscription's position after reading its history: what the reply says and
/// what to replay after it.
struct Recovered {
    epoch: String,
    offset: u64,
    recovered: Option<bool>,
    replay: Option<Replay>,
}

fn err(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Outcome {
    Outcome::Reply(Reply::error(id, code, message))
}

impl Session {
    /// Opens a session and subscribes it to its personal and the broadcast channel.
    /// `outbox` is the connection's (holding its socket, if the hub may write to it
    /// directly).
    pub fn open(
        node: Arc<Node>,
        slot: Slot,
        claims: Claims,
        encoding: Encoding,
        outbox: Arc<Outbox>,
    ) -> Self {
        let now = Instant::now();
        let personal: Arc<str> = Arc::from(channel::personal(slot.user()));
        let broadcast: Arc<str> = Arc::from(BROADCAST);
        let mut s = Session {
            id: node.next_session_id(),
            encoding,
            answers_pings: false,
            subscribe_rights: claims.subscribe,
            publish_rights: claims.publish,
            expires_at: claims.exp,
            subs: Vec::with_capacity(2),
            next_sub: 0,
            outbox,
            rate: TokenBucket::new(message_rate(&node), node.started, now),
            abuse: TokenBucket::new(ABUSE, node.started, now),
            resumes: TokenBucket::new(resume_rate(&node), node.started, now),
            node,
            slot,
        };
        s.add(personal);
        s.add(broadcast);
        s
    }

    /// Registers interest in the hub (live messages start queuing now); returns the
    /// subscription's index in `subs`.
    fn add(&mut self, channel: Arc<str>) -> usize {
        let id = self.next_sub;
        self.next_sub = self.next_sub.wrapping_add(1);
        let key = self.node.hub.subscribe(
            &channel,
            Subscriber {
                outbox: self.outbox.clone(),
                encoding: self.encoding,
                sub: id,
            },
        );
        self.outbox.with_cursor(|c| c.add(id));
        self.subs.push(Sub { channel, key, id });
        self.subs.len() - 1
    }

    fn remove(&mut self, pos: usize) -> Arc<str> {
        let sub = self.subs.swap_remove(pos);
        self.node.hub.unsubscribe(&sub.channel, sub.key);
        self.outbox.with_cursor(|c| c.remove(sub.id));
        sub.channel
    }

    /// Keeps the items of `batch` to send, in order, dropping duplicates. Stops at the
    /// first item whose channel skipped offsets (a live message lost between Redis and
    /// this node, e.g. while its subscription reconnected) and returns it with
    /// everything after it: the caller fills the gap from history before those.
    pub fn filter(&mut self, batch: &mut VecDeque<Item>) -> Option<VecDeque<Item>> {
        self.outbox.with_cursor(|cursor| {
            let mut i = 0;
            while let Some(item) = batch.get(i) {
                if item.is_check() {
                    if cursor.behind(item.sub, item.offset, item.epoch) {
                        return Some(batch.split_off(i));
                    }
                    batch.remove(i);
                    continue;
                }
                if item.offset == 0 {
                    i += 1;
                    continue;
                }
                match cursor.position(item.sub, item.offset, item.epoch) {
                    Position::Send => i += 1,
                    Position::Duplicate => {
                        batch.remove(i);
                    }
                    Position::Gap => return Some(batch.split_off(i)),
                }
            }
            None
        })
    }

    /// One page of `channel`'s history after `after`, bounded by the replay page
    /// size in bytes.
    async fn read_page(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, crate::broker::BrokerError> {
        self.node
            .broker
            .history(channel, after, limit, self.node.config.replay_page_bytes)
            .await
    }

    /// How long a gap fill must wait for the history-read rate limit (zero: go on;
    /// a token is taken).
    pub fn fill_wait(&mut self, now: Instant) -> std::time::Duration {
        let wait = self
            .resumes
            .take_or_wait(resume_rate(&self.node), self.node.started, now);
        if !wait.is_zero() {
            self.node.metrics.history_limited();
        }
        wait
    }

    /// The replay of what is missing before the gap `sub` revealed (the item with
    /// `offset` in the epoch tagged `epoch`), with its first page read. Ends the
    /// session with [`SessionEnd::Resync`] when history cannot cover the gap (lost
    /// from history, trimmed, a new epoch, more than the recovery limit, Redis
    /// unreachable): the client then resumes and is told what was lost, never a
    /// silent hole, and never a read repeated on the same gap.
    pub async fn fill(
        &mut self,
        sub: u32,
        epoch: u32,
        offset: u64,
    ) -> Result<Option<Replay>, SessionEnd> {
        let Some(s) = self.subs.iter().find(|s| s.id == sub) else {
            return Ok(None);
        };
        let channel = s.channel.clone();
        let Some((last, at)) = self.outbox.with_cursor(|c| c.get(sub)) else {
            return Ok(None);
        };
        let from = if at == epoch { last } else { 0 };
        let until = offset.saturating_sub(1);
        let limit = self.node.config.recovery_limit;
        let want = usize::try_from(until.saturating_sub(from))
            .unwrap_or(usize::MAX)
            .min(limit)
            .min(PAGE_ENTRIES);
        let page = self.read_page(&channel, Some(from), want).await;
        let page = match page {
            // History must still reach the gap's end in the same epoch and hold it
            // from the first missing offset on.
            Ok(page)
                if crate::hub::epoch_tag(&page.epoch) == epoch
                    && page.top >= until
                    && until - from <= limit as u64
                    && page.pubs.first().and_then(|p| p.offset) == Some(from + 1) =>
            {
                page
            }
            other => {
                if let Err(e) = other {
                    tracing::warn!(error = %e, "cannot read history to fill a gap");
                }
                self.node.metrics.gap(false);
                return Err(SessionEnd::Resync);
            }
        };
        self.node.metrics.gap(true);
        self.outbox.with_cursor(|c| c.set(sub, until, epoch));
        let mut replay = Replay {
            channel,
            epoch: page.epoch.clone(),
            at: from,
            until,
            left: limit,
            promised: true,
            broken: false,
            page: Vec::new(),
        };
        replay.absorb(page);
        Ok(Some(replay))
    }

    /// Reads the next page of `replay` into it. A promised replay that cannot go on
    /// (a hole in history, Redis unreachable) is [`Step::Hole`]: what was read is
    /// sent, then the session ends with a resync.
    pub async fn next_page(&mut self, replay: &mut Replay) -> Step {
        if replay.finished() {
            return Step::Done;
        }
        let want = replay.want();
        match self.read_page(&replay.channel, Some(replay.at), want).await {
            Ok(page) => replay.absorb(page),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the next page of a replay");
                if replay.promised {
                    replay.broken = true;
                    Step::Hole
                } else {
                    Step::Done
                }
            }
        }
    }

    /// Reads a channel's history for a (re)subscription: the reply fields and what
    /// to replay. Sets the subscription's position so queued duplicates are dropped.
    async fn recover(
        &mut self,
        pos: usize,
        since: Option<&Since>,
        base: Option<HistoryPage>,
    ) -> Result<Recovered, crate::broker::BrokerError> {
        let channel = self.subs[pos].channel.clone();
        // Without a resume, the client's position is read *before* live delivery is
        // confirmed: a message published meanwhile can be in history when it is read
        // below while its live copy is still on the way, and must not count as seen.
        let base = match (since, base) {
            (Some(_), _) => None,
            (None, Some(b)) => Some(b),
            (None, None) => Some(self.read_page(&channel, None, 0).await?),
        };
        // Live delivery must run before history is read, or a message published in
        // between would be in neither.
        if !self.node.broker.subscribed(&channel).await {
            tracing::debug!("live subscription not confirmed before reading history");
        }
        // A base without an epoch is a channel without history yet: all of the
        // epoch that starts meanwhile is new.
        let from = match (since, &base) {
            (Some(s), _) => s.offset,
            (None, Some(b)) if b.epoch.is_empty() => 0,
            (None, Some(b)) => b.top,
            (None, None) => 0,
        };
        let limit = self.node.config.recovery_limit;
        let page = self
            .read_page(&channel, Some(from), limit.min(PAGE_ENTRIES))
            .await?;
        let (epoch, top) = (page.epoch.clone(), page.top);
        let Some(id) = self.subs.get(pos).map(|s| s.id) else {
            return Ok(Recovered {
                epoch,
                offset: top,
                recovered: since.map(|_| false),
                replay: None,
            });
        };
        let tag = crate::hub::epoch_tag(&epoch);
        self.outbox.with_cursor(|c| c.enter(id, tag));
        let replay_from = |at: u64, promised: bool, page: HistoryPage| {
            let mut r = Replay {
                channel: channel.clone(),
                epoch: epoch.clone(),
                at,
                until: top,
                left: limit,
                promised,
                broken: false,
                page: Vec::new(),
            };
            r.absorb(page);
            r
        };
        if let Some(since) = since {
            let recovered = recovery::assess(Some(since), &page, limit);
            let same = since.epoch == epoch || (since.epoch.is_empty() && since.offset == 0);
            // The replay covers everything up to the top: queued live copies of it
            // are duplicates.
            self.outbox.with_cursor(|c| c.raise(id, top));
            let replay = (same && since.offset < top)
                .then(|| replay_from(since.offset, recovered == Some(true), page));
            return Ok(Recovered {
                epoch: epoch.clone(),
                offset: top,
                recovered,
                replay,
            });
        }
        // Live messages already queued in this epoch: everything from the first one
        // on follows live, in order.
        if let Some(first) = self.outbox.first_offset(id, tag) {
            let seen = top.min(first - 1);
            self.outbox.with_cursor(|c| c.raise(id, seen));
            return Ok(Recovered {
                epoch: epoch.clone(),
                offset: seen,
                recovered: None,
                replay: None,
            });
        }
        // Nothing queued yet: the client stands at the base and what history holds
        // after it is sent after the reply; live copies of it are then duplicates.
        let base = base.filter(|b| b.epoch.is_empty() || b.epoch == epoch);
        if let Some(b) = base {
            let at = Since {
                offset: from,
                epoch: if b.epoch.is_empty() {
                    epoch.clone()
                } else {
                    b.epoch
                },
            };
            if recovery::assess(Some(&at), &page, limit) == Some(true) {
                self.outbox.with_cursor(|c| c.raise(id, top));
                let replay = (from < top).then(|| replay_from(from, true, page));
                return Ok(Recovered {
                    epoch: epoch.clone(),
                    offset: from,
                    recovered: None,
                    replay,
                });
            }
        }
        // The epoch changed while waiting, or more than the recovery limit landed:
        // start at the top. A message whose live copy is still on the way is then
        // dropped as seen; this needs an epoch change or `--recovery-limit` messages
        // within the connection's setup.
        self.outbox.with_cursor(|c| c.raise(id, top));
        Ok(Recovered {
            epoch: epoch.clone(),
            offset: top,
            recovered: None,
            replay: None,
        })
    }

    /// Resumes the personal channel at connect, from where the client says it left
    /// off or else from the user's acknowledged position; returns what the welcome
    /// reports and what to replay after it.
    pub async fn resume_personal(
        &mut self,
        since: Option<Since>,
    ) -> (PersonalState, Option<Replay>) {
        let personal = self.subs[0].channel.clone();
        if self.node.config.history.policy(&personal).is_none() {
            let state = PersonalState {
                recovered: since.map(|_| false),
                ..PersonalState::default()
            };
            return (state, None);
        }
        // The first history read of the connection: counted, always allowed.
        let _ = self
            .resumes
            .take(resume_rate(&self.node), self.node.started, Instant::now());
        // Without resume parameters: the acknowledged position, read together with
        // the channel's position (the base of a fresh start, see `recover`).
        let (since, base) = match since {
            Some(s) => (Some(s), None),
            None => match self.node.broker.position(&personal).await {
                Ok((_, Some(p))) => (
                    Some(Since {
                        offset: p.offset,
                        epoch: p.epoch,
                    }),
                    None,
                ),
                Ok((page, None)) => (None, Some(page)),
                Err(_) => (None, None),
            },
        };
        match self.recover(0, since.as_ref(), base).await {
            Ok(r) => {
                let state = PersonalState {
                    epoch: Some(r.epoch),
                    offset: Some(r.offset),
                    recovered: r.recovered,
                };
                (state, r.replay)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read personal history");
                let state = PersonalState {
                    recovered: since.map(|_| false),
                    ..PersonalState::default()
                };
                (state, None)
            }
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Whether the client answers `ping` frames, so that frame alone is its
    /// heartbeat (protocol section 9).
    pub fn answers_pings(&self) -> bool {
        self.answers_pings
    }

    pub fn user(&self) -> &Arc<str> {
        self.slot.user()
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Token expiry (seconds since the epoch) plus the configured leeway.
    pub fn expires_at(&self) -> u64 {
        self.expires_at.saturating_add(self.node.verifier.leeway())
    }

    pub fn welcome(&self, personal: &PersonalState) -> ServerFrame {
        ServerFrame::Welcome(Welcome {
            session: format!("{:016x}", self.id),
            node: self.node.config.node_id.clone(),
            user: self.user().to_string(),
            channel: self.subs[0].channel.to_string(),
            heartbeat_ms: self.node.config.heartbeat_interval.as_millis() as u64,
            expires_at: self.expires_at,
            limits: self.node.limits.clone(),
            epoch: personal.epoch.clone(),
            offset: personal.offset,
            recovered: personal.recovered,
        })
    }

    /// A strike against the connection: the reply, or the end once strikes run out.
    fn strike(&mut self, now: Instant, reply: Outcome) -> Outcome {
        if self.abuse.take(ABUSE, self.node.started, now) {
            reply
        } else {
            Outcome::End(SessionEnd::Abuse)
        }
    }

    /// A data frame of the wrong kind (text on a MessagePack connection or binary on
    /// a JSON one): counted and struck like any other undecodable frame.
    pub fn wrong_kind(&mut self, now: Instant, reply: Reply) -> Outcome {
        self.node.metrics.inbound("invalid");
        self.strike(now, Outcome::Reply(reply))
    }

    /// Handles one inbound data frame.
    pub async fn handle(&mut self, bytes: &[u8], now: Instant) -> Outcome {
        let frame = match protocol::frame::decode_client(self.encoding, bytes) {
            Ok(f) => f,
            Err(e) => {
                self.node.metrics.inbound("invalid");
                let (id, code, message) = match e {
                    ProtocolError::Frame { id, code, message } => (id, code, message),
                    other => (None, ErrorCode::BadFrame, other.to_string()),
                };
                return self.strike(now, err(id, code, message));
            }
        };
        self.node.metrics.inbound(frame.kind());
        // Pongs answer our own pings and are never answered. They count against the
        // rate limit like any frame (one per heartbeat is all a client needs), and
        // one larger than a pong can be is a strike: a client must not make the
        // server decode kilobytes for free.
        if matches!(frame, ClientFrame::Pong) {
            if bytes.len() > MAX_PONG_BYTES
                || !self
                    .rate
                    .take(message_rate(&self.node), self.node.started, now)
            {
                return match self.strike(now, Outcome::Silent) {
                    Outcome::End(e) => Outcome::End(e),
                    _ => Outcome::Silent,
                };
            }
            self.answers_pings = true;
            return Outcome::Silent;
        }
        if !self
            .rate
            .take(message_rate(&self.node), self.node.started, now)
        {
            let id = request_id(&frame);
            return self.strike(
                now,
                err(
                    id,
                    ErrorCode::RateLimited,
                    "inbound rate limit exceeded; slow down",
                ),
            );
        }
        match frame {
            ClientFrame::Pong => Outcome::Silent,
            ClientFrame::Subscribe { id, channel, since } => {
                self.subscribe(id, channel, since, now).await
            }
            ClientFrame::Unsubscribe { id, channel } => self.unsubscribe(id, &channel),
            ClientFrame::Publish {
                id,
                channel,
                event,
                payload,
            } => self.publish(id, channel, event, payload).await,
            ClientFrame::Refresh { id, token } => self.refresh(id, &token),
            ClientFrame::Ack { id, offset } => self.ack(id, offset).await,
        }
    }

    async fn subscribe(
        &mut self,
        id: u64,
        name: String,
        since: Option<Since>,
        now: Instant,
    ) -> Outcome {
        if let Err(e) = channel::validate(&name) {
            return err(Some(id), ErrorCode::InvalidChannel, e.to_string());
        }
        if !channel::allowed(&self.subscribe_rights, &name) {
            return err(
                Some(id),
                ErrorCode::Forbidden,
                "token does not allow subscribing to this channel",
            );
        }
        if self.subs.iter().any(|s| *s.channel == *name) {
            return err(Some(id), ErrorCode::AlreadySubscribed, "already subscribed");
        }
        if self.subs.len() - 2 >= self.node.config.max_channels as usize {
            return err(
                Some(id),
                ErrorCode::TooManyChannels,
                format!(
                    "at most {} channels per connection",
                    self.node.config.max_channels
                ),
            );
        }
        let has_history = self.node.config.history.policy(&name).is_some();
        if has_history
            && !self
                .resumes
                .take(resume_rate(&self.node), self.node.started, now)
        {
            self.node.metrics.history_limited();
            return self.strike(
                now,
                err(
                    Some(id),
                    ErrorCode::RateLimited,
                    "too many subscribes with history; slow down",
                ),
            );
        }
        let pos = self.add(Arc::from(name.as_str()));
        if !has_history {
            // Without history nothing can be replayed: say so rather than pretend.
            let result = match since {
                Some(_) => json!({ "channel": name, "recovered": false }),
                None => json!({ "channel": name }),
            };
            return Outcome::Reply(Reply::ok(id, result));
        }
        match self.recover(pos, since.as_ref(), None).await {
            Ok(r) => {
                let mut result = json!({ "channel": name, "epoch": r.epoch, "offset": r.offset });
                if let Some(recovered) = r.recovered {
                    result["recovered"] = json!(recovered);
                }
                match r.replay {
                    Some(replay) => Outcome::Replay(Reply::ok(id, result), replay),
                    None => Outcome::Reply(Reply::ok(id, result)),
                }
            }
            Err(e) => {
                // The live subscription stands; only the history part failed.
                tracing::warn!(error = %e, "cannot read channel history");
                let result = match since {
                    Some(_) => json!({ "channel": name, "recovered": false }),
                    None => json!({ "channel": name }),
                };
                Outcome::Reply(Reply::ok(id, result))
            }
        }
    }

    async fn ack(&mut self, id: u64, offset: u64) -> Outcome {
        let personal = self.subs[0].channel.clone();
        if self.node.config.history.policy(&personal).is_none() {
            return err(
                Some(id),
                ErrorCode::BadRequest,
                "the personal channel keeps no history",
            );
        }
        match self.node.broker.ack(&personal, offset).await {
            Ok(Some(stored)) => Outcome::Reply(Reply::ok(id, json!({ "offset": stored }))),
            Ok(None) => err(
                Some(id),
                ErrorCode::BadRequest,
                "nothing to acknowledge yet",
            ),
            Err(e) => err(Some(id), ErrorCode::Unavailable, e.to_string()),
        }
    }

    fn unsubscribe(&mut self, id: u64, name: &str) -> Outcome {
        let Some(pos) = self.subs.iter().position(|s| *s.channel == *name) else {
            return err(Some(id), ErrorCode::NotSubscribed, "not subscribed");
        };
        if pos < 2 {
            return err(
                Some(id),
                ErrorCode::Forbidden,
                "the personal and broadcast channels cannot be left",
            );
        }
        self.remove(pos);
        Outcome::Reply(Reply::ok(id, json!({ "channel": name })))
    }

    async fn publish(&mut self, id: u64, name: String, event: String, payload: Payload) -> Outcome {
        if let Err(e) = channel::validate(&name) {
            return err(Some(id), ErrorCode::InvalidChannel, e.to_string());
        }
        if let Err(e) = envelope::validate_event(&event) {
            return err(Some(id), ErrorCode::BadRequest, e);
        }
        if !channel::allowed(&self.publish_rights, &name) {
            return err(
                Some(id),
                ErrorCode::Forbidden,
                "token does not allow publishing to this channel",
            );
        }
        if payload.len() > self.node.config.max_payload_size {
            return err(
                Some(id),
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload is larger than {} bytes",
                    self.node.config.max_payload_size
                ),
            );
        }
        self.node.metrics.published("client");
        match self
            .node
            .broker
            .publish(vec![Publication::new(name, event, payload)])
            .await
        {
            Ok(receipt) => Outcome::Reply(Reply::ok(id, json!(receipt))),
            Err(e @ crate::broker::BrokerError::Rejected(_)) => {
                err(Some(id), ErrorCode::BadRequest, e.to_string())
            }
            Err(e @ crate::broker::BrokerError::Quota(_)) => {
                err(Some(id), ErrorCode::QuotaExceeded, e.to_string())
            }
            Err(e) => err(Some(id), ErrorCode::Unavailable, e.to_string()),
        }
    }

    fn refresh(&mut self, id: u64, token: &str) -> Outcome {
        let claims = match self.node.verifier.verify(token) {
            Ok(c) => c,
            Err(AuthError::Expired) => {
                return err(Some(id), ErrorCode::InvalidToken, "token expired");
            }
            Err(e) => return err(Some(id), ErrorCode::InvalidToken, e.to_string()),
        };
        if *claims.sub != **self.user() {
            return err(
                Some(id),
                ErrorCode::TokenMismatch,
                "the new token is for another user",
            );
        }
        // A refresh moves forward: an older token of the same user (one that
        // expires before the current one) may carry rights since taken away.
        if claims.exp < self.expires_at {
            return err(
                Some(id),
                ErrorCode::InvalidToken,
                "the new token expires before the current one",
            );
        }
        self.subscribe_rights = claims.subscribe;
        self.publish_rights = claims.publish;
        self.expires_at = claims.exp;
        // Rights can shrink on refresh: leave channels the new token no longer allows.
        let mut dropped = Vec::new();
        let mut i = 2;
        while i < self.subs.len() {
            if channel::allowed(&self.subscribe_rights, &self.subs[i].channel) {
                i += 1;
            } else {
                dropped.push(self.remove(i).to_string());
            }
        }
        Outcome::Reply(Reply::ok(
            id,
            json!({ "expires_at": self.expires_at, "unsubscribed": dropped }),
        ))
    }
}

fn request_id(f: &ClientFrame) -> Option<u64> {
    match f {
        ClientFrame::Subscribe { id, .. }
        | ClientFrame::Unsubscribe { id, .. }
        | ClientFrame::Publish { id, .. }
        | ClientFrame::Refresh { id, .. }
        | ClientFrame::Ack { id, .. } => Some(*id),
        ClientFrame::Pong => None,
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for sub in self.subs.drain(..) {
            self.node.hub.unsubscribe(&sub.channel, sub.key);
        }
    }
}

impl Session {
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
}
