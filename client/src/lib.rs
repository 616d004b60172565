//! A Rust client for the Tidings WebSocket notification gateway.
//!
//! The client keeps one WebSocket connection to a gateway node alive for you:
//!
//! - **Reconnection** with exponential backoff and full jitter (1 s, 2 s, 4 s, 8 s, ...
//!   capped at 30 s, each delay drawn from `[0, cap]`), reset after a connection that
//!   stayed up for a while ([`Backoff`]).
//! - **Close codes** are followed ([`policy`]): `1001` (node draining) reconnects at
//!   once to the next URL; `4001`/`4004` and a `401` handshake call your token
//!   refresher and reconnect only with the new token (never in a loop with the old
//!   one); `1007`/`1008`/`1009` stop; everything else backs off.
//! - **Resume**: every subscribed channel is subscribed again after a reconnect with
//!   `since` = the last offset and epoch seen on it, the personal channel is resumed
//!   at connect, and messages whose offset is not above the last one seen are dropped
//!   as duplicates ([`Client::position`]). When the server could not replay everything
//!   you get [`Event::Recovered`] with `recovered: false`: refetch your state.
//! - **Temporarily unavailable channels**: a subscribe the server refuses with
//!   `unavailable` (the Redis instance or cluster partition holding the channel is
//!   down while the rest of the gateway works) keeps the channel and subscribes again
//!   with backoff and jitter, resuming from its last position, until it succeeds
//!   ([`Event::Subscribed`]) or you unsubscribe.
//! - **Offline queue**: publishes, acks and presence queries made while disconnected
//!   wait in a bounded queue ([`Error::QueueFull`] when full) and go out in order
//!   after the reconnect, after the resubscriptions. The queue also paces sending
//!   under the server's rate limit.
//! - **Requests** carry correlation ids and time out ([`Error::Timeout`]) when no reply
//!   arrives in time after they were sent.
//! - **Heartbeats**: the server's `ping` frames are answered; a connection on which
//!   nothing arrived for two heartbeat intervals is considered dead and replaced.
//! - **Token refresh** before the token expires, with the same refresher.
//! - **Presence**: who is subscribed to a channel ([`Client::presence`],
//!   [`Client::presence_all`], [`Client::presence_stats`]) and, on channels whose
//!   presence has events, [`Event::PresenceDiff`] when users join or leave.
//! - **Ordered channels**: a conditional publish ([`Client::publish_if`]) appends
//!   only at an expected history position, else fails with [`Error::Conflict`]
//!   saying where the channel is; [`Client::history`] reads a channel's history
//!   without subscribing. Collaborative editing (crate `tidings-collab`) is built on
//!   them.
//! - **Event routing**: [`Client::channel_events`] gives a separate stream of some
//!   channels' events, e.g. for a component that owns those channels.
//!
//! One background task owns the socket and all state; the cloneable [`Client`] handle
//! talks to it over bounded channels, and everything that happens arrives on the
//! [`Events`] stream. Read that stream continuously (in its own task): the background
//! task waits while it is full, and a client that stops reading is eventually closed by
//! the server as a slow consumer.
//!
//! # Example
//!
//! ```no_run
//! use client::{Client, Event};
//!
//! # async fn fetch_token_from_backend() -> Result<String, std::io::Error> { Ok(String::new()) }
//! # async fn run() -> Result<(), client::Error> {
//! let (client, mut events) = Client::builder(["ws://gw-1:8080/ws", "ws://gw-2:8080/ws"])
//!     .token("eyJhbGciOiJIUzI1NiJ9...")
//!     .token_refresher(|| async { fetch_token_from_backend().await })
//!     .build()?;
//!
//! tokio::spawn(async move {
//!     while let Some(event) = events.next().await {
//!         match event {
//!             Event::Message { channel, event, payload, .. } => {
//!                 println!("{channel} {event} {}", payload.json());
//!             }
//!             Event::Recovered { channel, recovered: false } => {
//!                 println!("missed messages on {channel}: refetch its state");
//!             }
//!             other => println!("{other:?}"),
//!         }
//!     }
//! });
//!
//! client.subscribe("news").await?;
//! client.publish("room:1", "typing", &serde_json::json!({"who": "alice"})).await?;
//! client.close().await;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

mod backoff;
mod bucket;
mod codec;
mod driver;
mod ended;
mod error;
pub mod policy;
mod positions;
mod queue;
#[cfg(test)]
mod tests;

pub use backoff::Backoff;
pub use error::Error;
pub use positions::Position;
pub use protocol::frame::Since;
pub use protocol::{Encoding, ErrorCode, Payload};

/// Something that happened on the connection, in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The server's `welcome` arrived; subscriptions are being restored.
    Connected {
        node: String,
        session: String,
        user: String,
        /// The user's personal channel (`$user:<id>`), always subscribed.
        channel: String,
        /// The URL of the node.
        url: String,
    },
    /// A notification. Duplicates (by offset) have already been dropped.
    Message {
        channel: String,
        event: String,
        payload: Payload,
        /// Position in the channel's history, when the channel keeps history.
        offset: Option<u64>,
        /// The history epoch `offset` belongs to (offsets restart in a new epoch).
        epoch: Option<String>,
        /// The publisher's message id, if it set one.
        msg_id: Option<String>,
        /// Publish time, milliseconds since the Unix epoch.
        ts: u64,
    },
    /// The connection ended, or a connection attempt failed.
    Disconnected {
        /// The close code, when the server sent a close frame.
        code: Option<u16>,
        reason: String,
        /// Whether the client will try again by itself.
        will_reconnect: bool,
        /// The delay before the next attempt, when there is one.
        retry_in: Option<Duration>,
    },
    /// The result of resuming a channel (a resubscription with `since`, or the
    /// personal channel at connect). `true`: every missed message is replayed, in
    /// order, right after this event. `false`: some could not be (the epoch changed or
    /// the offset fell out of retention); whatever could be replayed follows, and the
    /// application should refetch the channel's state.
    Recovered { channel: String, recovered: bool },
    /// A channel the server had refused with `unavailable` is subscribed now: by one
    /// of the client's retries, a resubscription after a reconnect, or another
    /// [`Client::subscribe`] call. Carries what `subscribe` returns; an
    /// [`Event::Recovered`] follows when the subscription resumed from a position.
    /// Only channels that were refused get this event.
    Subscribed(Subscription),
    /// Users joined or left a channel the client holds (a `presence_diff` frame; only
    /// on channels whose presence rule has `events`). Per user, not per connection:
    /// a user joins when their first connection subscribes, and leaves when their
    /// last one has been gone for the server's grace period. Joins are idempotent: a
    /// join of a user already present (e.g. re-announced after a Redis restart)
    /// carries their current `info`. Diffs sent while the client was disconnected
    /// are lost: take a new snapshot with [`Client::presence_all`] after each
    /// [`Event::Connected`] (it goes out after the resubscriptions). A listing lacks
    /// members who are reconnecting at that moment, and a reconnect within the grace
    /// period announces no join: after a reconnect, list again a few seconds later.
    PresenceDiff {
        channel: String,
        joins: Vec<Joined>,
        leaves: Vec<Left>,
    },
    /// A problem that did not come as the answer to a request. Terminal errors
    /// ([`Error::Unauthorized`], [`Error::ServerClosed`], [`Error::Handshake`]) are
    /// the last event before the stream ends.
    Error(Error),
}

/// The stream of [`Event`]s of one client. Ends after the client stopped.
///
/// Also implements [`futures_util::Stream`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// The answer to a subscription: the protocol's `subscribe` result (the channel, its
/// history `epoch` and latest `offset` when it keeps history, and `recovered` when
/// the subscription resumed from a position, see [`Event::Recovered`]).
pub use protocol::frame::SubscribeResult as Subscription;

/// Presence: one page of a channel's members with its counts ([`Client::presence`]),
/// the counts alone ([`Client::presence_stats`]), a member (one connection of a
/// user, with the public `info` of its token), and the users of a diff
/// ([`Event::PresenceDiff`]).
pub use protocol::frame::{PresenceResult, PresenceStatsResult};
pub use protocol::presence::{Joined, Left, Member};

/// A channel's history ([`Client::history`]): its position (`epoch`, latest
/// `offset`; `""` and `0` before its first message) and entries, oldest first.
pub use protocol::frame::{HistoryEntry, HistoryResult, MAX_HISTORY_PAGE};

/// A conditional publish the server accepted ([`Client::publish_if`]): where it is
/// in the channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The publication's offset: the expected offset plus one.
    pub offset: u64,
    /// The history epoch of that offset.
    pub epoch: String,
    /// Gateway nodes that had subscribers for the channel.
    pub nodes: u64,
}

/// A successful publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// Gateway nodes that had subscribers for the channel.
    pub nodes: Option<u64>,
    /// Connections reached (single-node gateways only).
    pub sessions: Option<u64>,
    /// The reply's whole `result`, for fields added later (e.g. an offset).
    pub raw: Value,
}

/// Whether the client is connected right now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Connecting, or waiting before the next attempt.
    Connecting,
    Connected {
        node: String,
        session: String,
    },
    /// Stopped for good (closed, or an error that forbids reconnecting).
    Stopped,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The page size [`Client::presence_all`] asks for: the protocol's largest.
const PRESENCE_PAGE: u32 = protocol::presence::MAX_PAGE;
/// The capacity of a [`Client::channel_events`] stream.
const ROUTE_CAPACITY: usize = 1024;
pub(crate) type Refresher =
    Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// State the background task shares with the handles (read-mostly).
#[derive(Debug)]
pub(crate) struct Shared {
    pub positions: positions::Positions,
    pub personal: Option<String>,
    pub state: State,
    pub terminal: Option<Error>,
}

pub(crate) fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) enum Command {
    Subscribe {
        channel: String,
        since: Option<Since>,
        reply: oneshot::Sender<Result<Subscription, Error>>,
    },
    Unsubscribe {
        channel: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Publish {
        channel: String,
        event: String,
        payload: Payload,
        reply: oneshot::Sender<Result<Receipt, Error>>,
    },
    PublishIf {
        channel: String,
        event: String,
        payload: Payload,
        expect: Since,
        reply: oneshot::Sender<Result<Appended, Error>>,
    },
    History {
        channel: String,
        limit: Option<u32>,
        since: Option<Since>,
        reply: oneshot::Sender<Result<HistoryResult, Error>>,
    },
    Route {
        channels: Vec<String>,
        events: mpsc::Sender<Event>,
        reply: oneshot::Sender<()>,
    },
    Ack {
        offset: u64,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    Refresh {
        token: String,
        reply: oneshot::Sender<Result<Option<u64>, Error>>,
    },
    Presence {
        channel: String,
        limit: Option<u32>,
        cursor: Option<String>,
        reply: oneshot::Sender<Result<PresenceResult, Error>>,
    },
    PresenceStats {
        channel: String,
        reply: oneshot::Sender<Result<PresenceStatsResult, Error>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// A handle to a running client. Cheap to clone; the client closes when
/// [`close`](Client::close) is called or the last handle is dropped.
#[derive(Clone, Debug)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
}

impl Client {
    /// Starts configuring a client for one gateway URL or several (`ws://host:port/ws`);
    /// with several, each new connection attempt goes to the next one.
    pub fn builder<U: IntoUrls>(urls: U) -> ClientBuilder {
        ClientBuilder::new(urls.into_urls())
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(make(tx)).await.is_err() {
            return Err(self.stopped_error());
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.stopped_error()),
        }
    }

    fn stopped_error(&self) -> Error {
        lock(&self.shared).terminal.clone().unwrap_or(Error::Closed)
    }

    /// Subscribes to a public channel, resuming from the last position the client
    /// knows for it (if any). While disconnected, the subscription is remembered and
    /// the call returns once it is confirmed after the reconnect. The channel is
    /// subscribed again after every reconnect until [`unsubscribe`](Self::unsubscribe).
    ///
    /// A refusal is returned as [`Error::Server`] and the channel is dropped, except
    /// for `unavailable` ([`ErrorCode::Unavailable`]: the Redis instance or cluster
    /// partition that holds the channel is down for now). Then the call still
    /// returns the error, so you know the channel is not subscribed yet, but the
    /// client keeps the channel and subscribes again in the background, with the
    /// reconnect backoff (delays drawn from `[0, cap]`, the cap doubling up to the
    /// backoff maximum, starting over at every reconnect), resuming from the last
    /// position it knows. Each further refusal is reported as
    /// [`Event::Error`]`(`[`Error::Subscription`]`)` with code `unavailable`, and the
    /// success as [`Event::Subscribed`]. [`unsubscribe`](Self::unsubscribe) stops
    /// the retries.
    ///
    /// ```no_run
    /// # async fn f(client: client::Client) -> Result<(), client::Error> {
    /// let sub = client.subscribe("news").await?;
    /// println!("news is at offset {:?} of epoch {:?}", sub.offset, sub.epoch);
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, channel: impl Into<String>) -> Result<Subscription, Error> {
        let channel = channel.into();
        self.request(|reply| Command::Subscribe {
            channel,
            since: None,
            reply,
        })
        .await
    }

    /// Subscribes and asks the server to replay what was published after `since` (a
    /// position the application stored, e.g. from [`position`](Self::position) before
    /// a restart). The reply's `recovered` says whether everything could be replayed;
    /// the replayed messages follow as [`Event::Message`]s.
    pub async fn subscribe_from(
        &self,
        channel: impl Into<String>,
        since: Since,
    ) -> Result<Subscription, Error> {
        let channel = channel.into();
        self.request(|reply| Command::Subscribe {
            channel,
            since: Some(since),
            reply,
        })
        .await
    }

    /// Unsubscribes and forgets the channel's position. While disconnected it only
    /// removes the channel from the set restored at reconnect. Stops the retries of a
    /// channel the server refused with `unavailable` (see [`subscribe`](Self::subscribe)).
    pub async fn unsubscribe(&self, channel: impl Into<String>) -> Result<(), Error> {
        let channel = channel.into();
        self.request(|reply| Command::Unsubscribe { channel, reply })
            .await
    }

    /// Publishes `payload` (anything serializable to JSON) as `event` on a public
    /// channel. While disconnected the publish waits in the outgoing queue (or fails at
    /// once with [`Error::QueueFull`]) and is sent after the reconnect; the call returns
    /// with the server's reply.
    ///
    /// ```no_run
    /// # async fn f(client: client::Client) -> Result<(), client::Error> {
    /// #[derive(serde::Serialize)]
    /// struct Typing { who: &'static str }
    /// client.publish("room:1", "typing", &Typing { who: "alice" }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: impl Into<String>,
        event: impl Into<String>,
        payload: &T,
    ) -> Result<Receipt, Error> {
        let payload = Payload::from_value(payload).map_err(|e| Error::Payload(e.to_string()))?;
        let (channel, event) = (channel.into(), event.into());
        self.request(|reply| Command::Publish {
            channel,
            event,
            payload,
            reply,
        })
        .await
    }

    /// Publishes conditionally: only if the channel's history is at `expect` (its
    /// latest offset and epoch; offset 0 for a channel whose history has not started,
    /// whatever the epoch), so the publication becomes offset `expect.offset + 1`.
    /// Otherwise nothing is published and the call fails with
    /// [`Error::Conflict`]`{offset, epoch}`, where the channel is now. The channel
    /// must keep history (a `--history` rule); otherwise the server refuses it
    /// ([`Error::Server`]). Queued like [`publish`](Self::publish) while
    /// disconnected. A publish that fails with [`Error::Disconnected`] or
    /// [`Error::Timeout`] may have been accepted: publishing it again with the same
    /// `expect` is safe, it conflicts if the first one went through.
    ///
    /// ```no_run
    /// # async fn f(client: client::Client) -> Result<(), client::Error> {
    /// use client::{Error, Since};
    /// let at = Since { offset: 41, epoch: "5c0f3e9a1b7d2846".into() };
    /// match client.publish_if("doc:1", "op", &serde_json::json!({"n": 1}), at).await {
    ///     Ok(a) => println!("appended at {} of {}", a.offset, a.epoch),
    ///     Err(Error::Conflict { offset, .. }) => println!("the channel moved on to {offset}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn publish_if<T: Serialize + ?Sized>(
        &self,
        channel: impl Into<String>,
        event: impl Into<String>,
        payload: &T,
        expect: Since,
    ) -> Result<Appended, Error> {
        let payload = Payload::from_value(payload).map_err(|e| Error::Payload(e.to_string()))?;
        let (channel, event) = (channel.into(), event.into());
        self.request(|reply| Command::PublishIf {
            channel,
            event,
            payload,
            expect,
            reply,
        })
        .await
    }

    /// Entries of a channel's history without subscribing: the last `limit` (server
    /// default and maximum [`MAX_HISTORY_PAGE`], 100), or with `since` the first
    /// `limit` after that position (to page forward: pass the last entry's offset).
    /// A `since` of another epoch returns no entries, only where the channel is. The
    /// result also gives the channel's current `epoch` and latest `offset`. Allowed
    /// on channels the token may subscribe to that keep history (else
    /// [`Error::Server`] with `forbidden` or `bad_request`); counts against the
    /// connection's history-read budget (`rate_limited` when empty). Queued like a
    /// publish while disconnected.
    ///
    /// ```no_run
    /// # async fn f(client: client::Client) -> Result<(), client::Error> {
    /// let last = client.history("snap:doc:1", Some(1), None).await?;
    /// if let Some(e) = last.publications.last() {
    ///     println!("latest snapshot at offset {}: {}", e.offset, e.payload);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn history(
        &self,
        channel: impl Into<String>,
        limit: Option<u32>,
        since: Option<Since>,
    ) -> Result<HistoryResult, Error> {
        let channel = channel.into();
        self.request(|reply| Command::History {
            channel,
            limit,
            since,
            reply,
        })
        .await
    }

    /// A separate stream for the events of some channels: from now on their
    /// messages, [`Event::Recovered`], [`Event::Subscribed`], [`Event::PresenceDiff`]
    /// and [`Error::Subscription`] errors go to the returned stream instead of the
    /// main one, while the connection's own events ([`Event::Connected`],
    /// [`Event::Disconnected`] and the other errors) go to both. Call it before
    /// subscribing to the channels so that nothing is missed. Dropping the stream
    /// sends those channels' events to the main stream again. A later call that
    /// names the same channel takes it over. Read the stream continuously, like the
    /// main one: the client waits while it is full.
    pub async fn channel_events<I, S>(&self, channels: I) -> Result<Events, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let channels = channels.into_iter().map(Into::into).collect();
        let (events, rx) = mpsc::channel(ROUTE_CAPACITY);
        let (reply, done) = oneshot::channel();
        let cmd = Command::Route {
            channels,
            events,
            reply,
        };
        if self.tx.send(cmd).await.is_err() || done.await.is_err() {
            return Err(self.stopped_error());
        }
        Ok(Events { rx })
    }

    /// Acknowledges the personal channel up to `offset` (the user's read position,
    /// shared by all their devices). Queued like a publish while disconnected. Returns
    /// the position the server stored.
    pub async fn ack(&self, offset: u64) -> Result<u64, Error> {
        self.request(|reply| Command::Ack { offset, reply }).await
    }

    /// Replaces the token: on the open connection with a `refresh` request (returning
    /// the new expiry, Unix seconds), and for later connections. While disconnected it
    /// only stores the token (returning `None`).
    pub async fn refresh_token(&self, token: impl Into<String>) -> Result<Option<u64>, Error> {
        let token = token.into();
        self.request(|reply| Command::Refresh { token, reply })
            .await
    }

    /// One page of a channel's presence: its counts (`clients` connections of
    /// `users` distinct users) and at most `limit` members (server default 100, at
    /// most 1000) ordered by client id, after `cursor` (the `cursor` of the previous
    /// page; absent on the last page). Allowed on channels the token may subscribe
    /// to or names in its `presence` claim, whose presence the gateway tracks
    /// (`--presence`); otherwise [`Error::Server`] with `forbidden` or
    /// `bad_request`. Queued like a publish while disconnected.
    ///
    /// ```no_run
    /// # async fn f(client: client::Client) -> Result<(), client::Error> {
    /// let page = client.presence("room:1", Some(50), None).await?;
    /// println!("{} users online", page.users);
    /// for m in &page.members {
    ///     println!("{} ({}) {:?}", m.user, m.client, m.info);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn presence(
        &self,
        channel: impl Into<String>,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<PresenceResult, Error> {
        let channel = channel.into();
        self.request(|reply| Command::Presence {
            channel,
            limit,
            cursor,
            reply,
        })
        .await
    }

    /// Every member of a channel's presence: [`presence`](Self::presence) page after
    /// page (of the largest size) until the last. The counts are those of the last
    /// page; pages are separate requests, so members that joined or left meanwhile
    /// may be missing or listed.
    pub async fn presence_all(&self, channel: impl Into<String>) -> Result<PresenceResult, Error> {
        let channel = channel.into();
        let mut members = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .presence(channel.clone(), Some(PRESENCE_PAGE), cursor.clone())
                .await?;
            members.extend(page.members);
            match page.cursor {
                // A cursor that does not move on would page forever.
                Some(next) if Some(&next) == cursor.as_ref() => {
                    return Err(Error::Protocol(format!(
                        "presence of {channel}: the server returned the same cursor twice"
                    )));
                }
                Some(next) => cursor = Some(next),
                None => {
                    return Ok(PresenceResult {
                        channel: page.channel,
                        clients: page.clients,
                        users: page.users,
                        members,
                        cursor: None,
                    });
                }
            }
        }
    }

    /// A channel's presence counts without the members: `clients` connections of
    /// `users` distinct users. Allowed and queued like [`presence`](Self::presence).
    pub async fn presence_stats(
        &self,
        channel: impl Into<String>,
    ) -> Result<PresenceStatsResult, Error> {
        let channel = channel.into();
        self.request(|reply| Command::PresenceStats { channel, reply })
            .await
    }

    /// Closes the connection (code 1000) and stops the client. Requests still queued
    /// fail with [`Error::Closed`]; the event stream ends.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Close { done }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The last position the client knows for a channel: what it will resume from.
    pub fn position(&self, channel: &str) -> Option<Position> {
        lock(&self.shared).positions.get(channel).cloned()
    }

    /// The positions of every channel (including the personal one).
    pub fn positions(&self) -> HashMap<String, Position> {
        lock(&self.shared).positions.all().clone()
    }

    /// The personal channel (`$user:<id>`), once a connection was established.
    pub fn personal_channel(&self) -> Option<String> {
        lock(&self.shared).personal.clone()
    }

    /// How many messages were dropped as duplicates (offset not above the last seen).
    pub fn duplicates_dropped(&self) -> u64 {
        lock(&self.shared).positions.duplicates()
    }

    pub fn state(&self) -> State {
        lock(&self.shared).state.clone()
    }
}

/// One URL or several.
pub trait IntoUrls {
    fn into_urls(self) -> Vec<String>;
}

impl IntoUrls for &str {
    fn into_urls(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}

impl IntoUrls for String {
    fn into_urls(self) -> Vec<String> {
        vec![self]
    }
}

impl<S: Into<String>> IntoUrls for Vec<S> {
    fn into_urls(self) -> Vec<String> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<S: Into<String>, const N: usize> IntoUrls for [S; N] {
    fn into_urls(self) -> Vec<String> {
        self.into_iter().map(Into::into).collect()
    }
}

/// Configures and starts a [`Client`]. Every setting but the URL and a token (or a
/// refresher) has a default.
pub struct ClientBuilder {
    pub(crate) cfg: driver::Config,
}

impl ClientBuilder {
    fn new(urls: Vec<String>) -> Self {
        Self {
            cfg: driver::Config {
                urls,
                token: None,
                refresher: None,
                encoding: Encoding::Json,
                request_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(10),
                backoff_initial: Backoff::INITIAL,
                backoff_max: Backoff::MAX,
                stable_after: Backoff::STABLE_AFTER,
                going_away_delay: Duration::from_secs(1),
                queue_capacity: 1024,
                event_capacity: 1024,
                auto_refresh: true,
                positions: HashMap::new(),
                personal_since: None,
                seed: None,
                connector: None,
            },
        }
    }

    /// The JWT to connect with (sent as `Authorization: Bearer`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.cfg.token = Some(token.into());
        self
    }

    /// An async function returning a new token. Called when the server refuses or
    /// expires the current one (handshake `401`, close `4001`/`4004`), before the
    /// token expires (see [`auto_refresh`](Self::auto_refresh)), and before the first
    /// connection if no [`token`](Self::token) was given. If it fails, or a token it
    /// just returned is refused too, the client stops with [`Error::Unauthorized`]
    /// rather than retry in a loop.
    pub fn token_refresher<F, Fut, E>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.cfg.refresher = Some(Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.map_err(|e| e.into().to_string()) })
        }));
        self
    }

    /// JSON text frames (default) or MessagePack binary frames.
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.cfg.encoding = encoding;
        self
    }

    /// How long a request may wait for its reply once sent (default 10 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.cfg.request_timeout = d;
        self
    }

    /// How long a connection attempt (TCP, upgrade and `welcome`) may take
    /// (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.cfg.connect_timeout = d;
        self
    }

    /// Backoff caps: the first one (default 1 s) doubles up to `max` (default 30 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.cfg.backoff_initial = initial;
        self.cfg.backoff_max = max;
        self
    }

    /// How long a connection must stay up for the backoff to start over (default 10 s).
    pub fn stable_after(mut self, d: Duration) -> Self {
        self.cfg.stable_after = d;
        self
    }

    /// Largest random delay before reconnecting after `1001` going away or a `503`
    /// draining handshake (default 1 s).
    pub fn going_away_delay(mut self, d: Duration) -> Self {
        self.cfg.going_away_delay = d;
        self
    }

    /// Capacity of the outgoing queue of publishes, acks and presence queries (default
    /// 1024).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.cfg.queue_capacity = n;
        self
    }

    /// Capacity of the event channel (default 1024).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.cfg.event_capacity = n.max(1);
        self
    }

    /// Whether to refresh the token on the open connection before it expires (at 80%
    /// of its remaining lifetime, at most 60 s before expiry), when a refresher is set.
    /// Default true.
    pub fn auto_refresh(mut self, on: bool) -> Self {
        self.cfg.auto_refresh = on;
        self
    }

    /// Resume a channel from a stored position when it is subscribed.
    pub fn resume(mut self, channel: impl Into<String>, since: Since) -> Self {
        self.cfg.positions.insert(channel.into(), since.into());
        self
    }

    /// Resume the personal channel from a stored position at the first connect.
    pub fn resume_personal(mut self, since: Since) -> Self {
        self.cfg.personal_since = Some(since);
        self
    }

    /// Seeds the jitter's random generator (for reproducible tests).
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.cfg.seed = Some(seed);
        self
    }

    /// Checks the configuration and starts the background task (call it inside a
    /// Tokio runtime). The first connection attempt starts at once.
    pub fn build(self) -> Result<(Client, Events), Error> {
        driver::start(self.cfg)
    }
}
