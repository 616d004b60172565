//! One client's protocol state: who it is, what it may do, what it subscribes to.
//!
//! The connection feeds it decoded bytes ([`dispatch`]) and writes back what it
//! answers; each request is a file of [`cmd`]; everything about history (resume,
//! replays, gap filling, the greeting) is in [`history`]. The session registers its
//! subscriptions in the hub and calls the broker for publishes, history and acks.
//! Dropping a session releases every subscription and its connection slot.

mod cmd;
mod dispatch;
pub(crate) mod history;
mod ratelimit;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use protocol::channel::{self, BROADCAST};
use protocol::frame::{Reply, ServerFrame, Welcome};
use protocol::{Encoding, ErrorCode};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::auth::Claims;
use crate::error::SessionEnd;
use crate::hub::Subscriber;
use crate::hub::outbox::Outbox;
use crate::node::{Node, Slot};
use history::PersonalState;
use history::replay::Replay;
use ratelimit::{Rate, TokenBucket};

/// Strikes (malformed or rate-limited frames) tolerated in a burst before closing
/// with 1008 (ten), forgiven one per ten seconds.
const ABUSE: Rate = Rate {
    per_sec: 0.1,
    capacity: 10.0,
};

/// The buckets' rates live in the configuration, not in each connection's buckets.
fn message_rate(node: &Node) -> Rate {
    Rate {
        per_sec: node.config.conn.rate_limit as f32,
        capacity: node.config.conn.rate_burst as f32,
    }
}

fn resume_rate(node: &Node) -> Rate {
    Rate {
        per_sec: node.config.history.resume_rate as f32,
        capacity: node.config.history.resume_burst as f32,
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
    /// is kept by the outbox's [`Cursor`](crate::hub::cursor::Cursor) under this id.
    id: u32,
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
    /// History reads started (subscribes with history, resumes, gap fills,
    /// presence listings).
    resumes: TokenBucket,
    /// This connection in presence, when presence is on (boxed: one pointer when
    /// it is off).
    presence: Option<Box<Membership>>,
    slot: Slot,
}

/// What presence knows of a connection.
struct Membership {
    /// Its presence client id, unique across nodes.
    client: Arc<str>,
    /// The token's public `info`.
    info: Option<serde_json::Value>,
    /// Channel patterns whose presence it may read without subscribing.
    rights: Vec<String>,
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
        let id = node.next_session_id();
        let presence = node.presence.is_active().then(|| {
            node.presence.connected(slot.user());
            Box::new(Membership {
                client: Arc::from(protocol::presence::client_id(&node.config.node.id, id)),
                info: claims.info,
                rights: claims.presence,
            })
        });
        let mut s = Session {
            id,
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
            presence,
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
        if let Some(m) = &self.presence
            && self.node.presence.policy(&channel).is_some()
        {
            self.node
                .presence
                .join(&channel, &m.client, self.slot.user(), m.info.as_ref());
        }
        self.subs.push(Sub { channel, key, id });
        self.subs.len() - 1
    }

    fn remove(&mut self, pos: usize) -> Arc<str> {
        let sub = self.subs.swap_remove(pos);
        self.node.hub.unsubscribe(&sub.channel, sub.key);
        self.outbox.with_cursor(|c| c.remove(sub.id));
        self.left(&sub.channel);
        sub.channel
    }

    /// Presence learns that this connection left `channel`.
    fn left(&self, channel: &Arc<str>) {
        if let Some(m) = &self.presence
            && self.node.presence.policy(channel).is_some()
        {
            self.node.presence.leave(channel, &m.client);
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
            node: self.node.config.node.id.clone(),
            user: self.user().to_string(),
            channel: self.subs[0].channel.to_string(),
            heartbeat_ms: self.node.config.conn.heartbeat_interval.as_millis() as u64,
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

    /// Takes a token from the history-read budget (history reads, presence
    /// listings); `None` when there was one, else the `rate_limited` reply (a
    /// strike) saying `what`.
    fn read_budget(&mut self, id: u64, now: Instant, what: &str) -> Option<Outcome> {
        if self
            .resumes
            .take(resume_rate(&self.node), self.node.started, now)
        {
            return None;
        }
        self.node.metrics.history_limited();
        let reply = err(
            Some(id),
            ErrorCode::RateLimited,
            format!("too many {what}; slow down"),
        );
        Some(self.strike(now, reply))
    }

    /// A data frame of the wrong kind (text on a MessagePack connection or binary on
    /// a JSON one): counted and struck like any other undecodable frame.
    pub fn wrong_kind(&mut self, now: Instant, reply: Reply) -> Outcome {
        self.node.metrics.inbound("invalid");
        self.strike(now, Outcome::Reply(reply))
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let subs = std::mem::take(&mut self.subs);
        for sub in subs {
            self.node.hub.unsubscribe(&sub.channel, sub.key);
            self.left(&sub.channel);
        }
        if self.presence.is_some() {
            self.node.presence.disconnected(self.slot.user());
        }
    }
}

/// Encoded bytes as the WebSocket message of `enc` (text for JSON).
pub(crate) fn to_message(enc: Encoding, bytes: bytes::Bytes) -> Option<Message> {
    Some(match enc {
        Encoding::Json => Message::Text(Utf8Bytes::try_from(bytes).ok()?),
        Encoding::MsgPack => Message::Binary(bytes),
    })
}

/// A server frame as a WebSocket message.
pub(crate) fn encode_frame(enc: Encoding, frame: &ServerFrame) -> Option<Message> {
    to_message(enc, frame.encode(enc).ok()?)
}
