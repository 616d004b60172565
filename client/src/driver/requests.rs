//! What the handle's commands become: requests on the open connection, or, while
//! disconnected, remembered subscriptions and queued publishes (plain and
//! conditional), acks, presence queries and history reads; then their
//! replies (read as the protocol crate's typed results), their timeouts, and what
//! happens to them when the connection drops.

use protocol::frame::{
    AckResult, ClientFrame, HistoryResult, PresenceResult, PresenceStatsResult, PublishResult,
    ReplyResult, Since,
};
use protocol::{ErrorCode, Payload};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Driver;
use super::conn::Conn;
use super::subscriptions::{Sub, SubWaiter};
use crate::ended::Ended;
use crate::{Appended, Command, Error, Event, Receipt, lock};

/// A publish, ack, presence query or history read waiting to be sent (in the offline
/// queue, which also paces them under the server's rate limit).
pub(super) enum Outgoing {
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
    Ack {
        offset: u64,
        reply: oneshot::Sender<Result<u64, Error>>,
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
}

impl Outgoing {
    pub(super) fn fail(self, e: Error) {
        match self {
            Outgoing::Publish { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Outgoing::PublishIf { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Outgoing::History { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Outgoing::Ack { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Outgoing::Presence { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Outgoing::PresenceStats { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// A request sent and waiting for its reply.
pub(super) enum Pending {
    Subscribe {
        channel: String,
        /// Sent with `since`: the reply says whether everything was recovered.
        resumed: bool,
        waiters: Vec<SubWaiter>,
    },
    Unsubscribe(oneshot::Sender<Result<(), Error>>),
    Publish(oneshot::Sender<Result<Receipt, Error>>),
    PublishIf(oneshot::Sender<Result<Appended, Error>>),
    History(oneshot::Sender<Result<HistoryResult, Error>>),
    Ack(oneshot::Sender<Result<u64, Error>>),
    Presence(oneshot::Sender<Result<PresenceResult, Error>>),
    PresenceStats(oneshot::Sender<Result<PresenceStatsResult, Error>>),
    Refresh {
        token: String,
        /// `None` for the client's own proactive refresh.
        reply: Option<oneshot::Sender<Result<Option<u64>, Error>>>,
    },
}

impl Pending {
    /// Fails the request with `e`. `false` for the client's own refresh, which
    /// nobody waits for.
    fn fail(self, e: Error) -> bool {
        match self {
            Pending::Subscribe { waiters, .. } => {
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
            }
            Pending::Unsubscribe(r) => {
                let _ = r.send(Err(e));
            }
            Pending::Publish(r) => {
                let _ = r.send(Err(e));
            }
            Pending::PublishIf(r) => {
                let _ = r.send(Err(e));
            }
            Pending::History(r) => {
                let _ = r.send(Err(e));
            }
            Pending::Ack(reply) => {
                let _ = reply.send(Err(e));
            }
            Pending::Presence(reply) => {
                let _ = reply.send(Err(e));
            }
            Pending::PresenceStats(reply) => {
                let _ = reply.send(Err(e));
            }
            Pending::Refresh { reply: Some(r), .. } => {
                let _ = r.send(Err(e));
            }
            Pending::Refresh { reply: None, .. } => return false,
        }
        true
    }
}

/// A reply's result as the typed result of its request; a result that does not
/// read as documented fails the request rather than invent values.
fn typed<R: ReplyResult>(result: Result<Value, Error>) -> Result<R, Error> {
    R::from_value(result?).map_err(|e| Error::Protocol(e.to_string()))
}

/// The reply to a conditional publish: its position, which an accepting server
/// always gives.
fn appended(result: Result<Value, Error>) -> Result<Appended, Error> {
    let p: PublishResult = typed(result)?;
    match (p.offset, p.epoch) {
        (Some(offset), Some(epoch)) => Ok(Appended {
            offset,
            epoch,
            nodes: p.nodes,
        }),
        _ => Err(Error::Protocol(
            "result of a conditional `publish` without `offset` and `epoch`".into(),
        )),
    }
}

impl Driver {
    pub(super) fn enqueue(&mut self, item: Outgoing) {
        let capacity = self.cfg.queue_capacity;
        if let Err(item) = self.queue.push(item) {
            item.fail(Error::QueueFull { capacity });
        }
    }

    /// Sends a request and starts its reply timeout.
    pub(super) async fn send_request(
        &mut self,
        conn: &mut Conn,
        id: u64,
        frame: ClientFrame,
        pending: Pending,
    ) -> Result<(), Ended> {
        conn.inflight.insert(id, pending);
        conn.deadlines
            .push_back((Instant::now() + self.cfg.request_timeout, id));
        self.write(conn, &frame).await
    }

    /// Sends queued publishes, acks, presence queries and history reads while the
    /// rate budget allows.
    pub(super) async fn pump(&mut self, conn: &mut Conn) -> Result<(), Ended> {
        while !self.queue.is_empty() && conn.bucket.try_take() {
            let Some(item) = self.queue.pop() else { break };
            let id = self.id();
            let (frame, pending) = match item {
                Outgoing::Publish {
                    channel,
                    event,
                    payload,
                    reply,
                } => (
                    ClientFrame::Publish {
                        id,
                        channel,
                        event,
                        payload,
                        expect: None,
                    },
                    Pending::Publish(reply),
                ),
                Outgoing::PublishIf {
                    channel,
                    event,
                    payload,
                    expect,
                    reply,
                } => (
                    ClientFrame::Publish {
                        id,
                        channel,
                        event,
                        payload,
                        expect: Some(expect),
                    },
                    Pending::PublishIf(reply),
                ),
                Outgoing::History {
                    channel,
                    limit,
                    since,
                    reply,
                } => (
                    ClientFrame::History {
                        id,
                        channel,
                        limit,
                        since,
                    },
                    Pending::History(reply),
                ),
                Outgoing::Ack { offset, reply } => {
                    (ClientFrame::Ack { id, offset }, Pending::Ack(reply))
                }
                Outgoing::Presence {
                    channel,
                    limit,
                    cursor,
                    reply,
                } => (
                    ClientFrame::Presence {
                        id,
                        channel,
                        limit,
                        cursor,
                    },
                    Pending::Presence(reply),
                ),
                Outgoing::PresenceStats { channel, reply } => (
                    ClientFrame::PresenceStats { id, channel },
                    Pending::PresenceStats(reply),
                ),
            };
            self.send_request(conn, id, frame, pending).await?;
        }
        Ok(())
    }

    /// A command while connected: subscriptions, unsubscriptions and refreshes go out
    /// at once (they may take the rate budget into debt); publishes, acks, presence
    /// queries and history reads go through the queue.
    pub(super) async fn online_command(
        &mut self,
        conn: &mut Conn,
        cmd: Command,
    ) -> Result<(), Ended> {
        match cmd {
            Command::Subscribe {
                channel,
                since,
                reply,
            } => {
                if let Some(s) = &since {
                    lock(&self.shared).positions.set(&channel, s.clone().into());
                }
                match self.subs.iter_mut().find(|s| s.channel == channel) {
                    // Being retried: this subscribe is the next try.
                    Some(s) => s.hold_retry(),
                    None => self.subs.push(Sub::new(channel.clone(), Vec::new())),
                }
                self.send_subscribe(conn, channel, since, vec![reply]).await
            }
            Command::Unsubscribe { channel, reply } => {
                self.forget(&channel);
                let id = self.id();
                conn.bucket.force();
                let frame = ClientFrame::Unsubscribe { id, channel };
                self.send_request(conn, id, frame, Pending::Unsubscribe(reply))
                    .await
            }
            Command::Publish {
                channel,
                event,
                payload,
                reply,
            } => {
                self.enqueue(Outgoing::Publish {
                    channel,
                    event,
                    payload,
                    reply,
                });
                self.pump(conn).await
            }
            Command::PublishIf {
                channel,
                event,
                payload,
                expect,
                reply,
            } => {
                self.enqueue(Outgoing::PublishIf {
                    channel,
                    event,
                    payload,
                    expect,
                    reply,
                });
                self.pump(conn).await
            }
            Command::History {
                channel,
                limit,
                since,
                reply,
            } => {
                self.enqueue(Outgoing::History {
                    channel,
                    limit,
                    since,
                    reply,
                });
                self.pump(conn).await
            }
            Command::Route {
                channels,
                events,
                reply,
            } => {
                self.route(channels, events);
                let _ = reply.send(());
                Ok(())
            }
            Command::Ack { offset, reply } => {
                self.enqueue(Outgoing::Ack { offset, reply });
                self.pump(conn).await
            }
            Command::Presence {
                channel,
                limit,
                cursor,
                reply,
            } => {
                self.enqueue(Outgoing::Presence {
                    channel,
                    limit,
                    cursor,
                    reply,
                });
                self.pump(conn).await
            }
            Command::PresenceStats { channel, reply } => {
                self.enqueue(Outgoing::PresenceStats { channel, reply });
                self.pump(conn).await
            }
            Command::Refresh { token, reply } => {
                let id = self.id();
                conn.bucket.force();
                let frame = ClientFrame::Refresh {
                    id,
                    token: token.clone(),
                };
                let pending = Pending::Refresh {
                    token,
                    reply: Some(reply),
                };
                self.send_request(conn, id, frame, pending).await
            }
            Command::Close { .. } => Ok(()), // handled by the socket loop
        }
    }

    /// A command while disconnected: remembered or queued for the next connection.
    /// Returns the close acknowledgement when the command was `Close`.
    pub(super) fn offline_command(&mut self, cmd: Command) -> Option<oneshot::Sender<()>> {
        match cmd {
            Command::Subscribe {
                channel,
                since,
                reply,
            } => {
                if let Some(s) = since {
                    lock(&self.shared).positions.set(&channel, s.into());
                }
                match self.subs.iter_mut().find(|s| s.channel == channel) {
                    Some(s) => s.waiters.push(reply),
                    None => self.subs.push(Sub::new(channel, vec![reply])),
                }
            }
            Command::Unsubscribe { channel, reply } => {
                self.forget(&channel);
                let _ = reply.send(Ok(()));
            }
            Command::Publish {
                channel,
                event,
                payload,
                reply,
            } => self.enqueue(Outgoing::Publish {
                channel,
                event,
                payload,
                reply,
            }),
            Command::PublishIf {
                channel,
                event,
                payload,
                expect,
                reply,
            } => self.enqueue(Outgoing::PublishIf {
                channel,
                event,
                payload,
                expect,
                reply,
            }),
            Command::History {
                channel,
                limit,
                since,
                reply,
            } => self.enqueue(Outgoing::History {
                channel,
                limit,
                since,
                reply,
            }),
            Command::Route {
                channels,
                events,
                reply,
            } => {
                self.route(channels, events);
                let _ = reply.send(());
            }
            Command::Ack { offset, reply } => self.enqueue(Outgoing::Ack { offset, reply }),
            Command::Presence {
                channel,
                limit,
                cursor,
                reply,
            } => self.enqueue(Outgoing::Presence {
                channel,
                limit,
                cursor,
                reply,
            }),
            Command::PresenceStats { channel, reply } => {
                self.enqueue(Outgoing::PresenceStats { channel, reply })
            }
            Command::Refresh { token, reply } => {
                self.token = Some(token);
                self.token_unproven = false;
                let _ = reply.send(Ok(None));
            }
            Command::Close { done } => return Some(done),
        }
        None
    }

    /// Fails the requests whose reply is overdue.
    pub(super) async fn expire(&mut self, conn: &mut Conn) {
        let now = Instant::now();
        while let Some(&(at, id)) = conn.deadlines.front() {
            if at > now {
                break;
            }
            conn.deadlines.pop_front();
            let Some(p) = conn.inflight.remove(&id) else {
                continue;
            };
            let subscribed = match &p {
                Pending::Subscribe { channel, .. } => Some(channel.clone()),
                _ => None,
            };
            if !p.fail(Error::Timeout(self.cfg.request_timeout)) {
                self.emit(Event::Error(Error::TokenRefresh(
                    "no reply to the refresh request".into(),
                )))
                .await;
            }
            if let Some(channel) = subscribed {
                self.subscribe_timed_out(&channel);
            }
        }
    }

    pub(super) async fn on_reply(
        &mut self,
        conn: &mut Conn,
        p: Pending,
        result: Result<Value, Error>,
    ) {
        match p {
            Pending::Subscribe {
                channel,
                resumed,
                waiters,
            } => self.on_subscribed(channel, resumed, waiters, result).await,
            Pending::Unsubscribe(r) => {
                let r2 = match result {
                    Err(e) if e.code() == Some(ErrorCode::NotSubscribed) => Ok(()),
                    other => other.map(|_| ()),
                };
                let _ = r.send(r2);
            }
            Pending::Publish(r) => {
                let receipt = result.and_then(|raw| {
                    let p: PublishResult = typed(Ok(raw.clone()))?;
                    Ok(Receipt {
                        nodes: Some(p.nodes),
                        sessions: p.sessions,
                        raw,
                    })
                });
                let _ = r.send(receipt);
            }
            Pending::PublishIf(r) => {
                let _ = r.send(appended(result));
            }
            Pending::History(r) => {
                let _ = r.send(typed(result));
            }
            Pending::Ack(reply) => {
                let _ = reply.send(typed::<AckResult>(result).map(|a| a.offset));
            }
            Pending::Presence(reply) => {
                let _ = reply.send(typed(result));
            }
            Pending::PresenceStats(reply) => {
                let _ = reply.send(typed(result));
            }
            Pending::Refresh { token, reply } => {
                self.on_refreshed(conn, token, reply, typed(result)).await
            }
        }
    }

    /// Fails or requeues what was in flight on a connection that ended.
    pub(super) fn connection_lost(&mut self, conn: Conn) {
        for (_, p) in conn.inflight {
            match p {
                Pending::Subscribe {
                    channel, waiters, ..
                } => match self.subs.iter_mut().find(|s| s.channel == channel) {
                    // Confirmed after the reconnect instead.
                    Some(s) => s.waiters.extend(waiters),
                    None => {
                        for w in waiters {
                            let _ = w.send(Err(Error::Cancelled));
                        }
                    }
                },
                // The channel is already out of the set restored at reconnect.
                Pending::Unsubscribe(r) => {
                    let _ = r.send(Ok(()));
                }
                Pending::Publish(r) => {
                    let _ = r.send(Err(Error::Disconnected));
                }
                Pending::PublishIf(r) => {
                    let _ = r.send(Err(Error::Disconnected));
                }
                Pending::History(r) => {
                    let _ = r.send(Err(Error::Disconnected));
                }
                Pending::Ack(reply) => {
                    let _ = reply.send(Err(Error::Disconnected));
                }
                Pending::Presence(reply) => {
                    let _ = reply.send(Err(Error::Disconnected));
                }
                Pending::PresenceStats(reply) => {
                    let _ = reply.send(Err(Error::Disconnected));
                }
                Pending::Refresh { reply, .. } => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(Error::Disconnected));
                    }
                }
            }
        }
    }
}
