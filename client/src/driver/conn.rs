//! One established connection: taking the `welcome` (positions, events, pacing),
//! then the socket loop that reads frames, runs the handle's commands, watches the
//! heartbeat and the request deadlines, paces the queue, subscribes again to the
//! channels the server refused for now and refreshes the token, until the connection
//! ends. What ends it comes back as an [`Ended`] for the reconnect loop in
//! [`super::Driver::run`].

use std::collections::{HashMap, VecDeque};
use std::task::Poll;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use protocol::frame::{ClientFrame, ServerFrame, Since, Welcome};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Driver;
use super::connect::Ws;
use super::requests::Pending;
use crate::bucket::Bucket;
use crate::ended::Ended;
use crate::{Command, Event, State, codec, lock};

/// The state of one open connection; dropped when it ends (what was in flight is
/// failed or moved back by [`Driver::connection_lost`]).
pub(super) struct Conn {
    pub ws: Ws,
    pub heartbeat: Duration,
    /// When the last frame of any kind arrived: two heartbeats of silence end it.
    pub last_rx: Instant,
    /// Requests sent and waiting for their reply, by id.
    pub inflight: HashMap<u64, Pending>,
    /// Reply deadlines in the order the requests were sent (one timeout for all, so
    /// the front is always the next to expire).
    pub deadlines: VecDeque<(Instant, u64)>,
    pub bucket: Bucket,
    /// When to ask the refresher for a new token (before `expires_at`).
    pub refresh_at: Option<Instant>,
    /// The refresher's call in progress.
    pub refreshing: Option<BoxFuture<'static, Result<String, String>>>,
}

/// Sleeps until `at`, or forever.
async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    /// Runs one established connection until it ends.
    pub(super) async fn connected(
        &mut self,
        ws: Ws,
        w: Welcome,
        personal_since: Option<Since>,
        url: &str,
    ) -> Ended {
        self.backoff.on_connected();
        self.prompt_streak = 0;
        self.token_unproven = false;
        let resumed = personal_since.is_some();
        {
            let mut sh = lock(&self.shared);
            sh.state = State::Connected {
                node: w.node.clone(),
                session: w.session.clone(),
            };
            sh.personal = Some(w.channel.clone());
            if let Some(s) = self.personal_since.take()
                && sh.positions.get(&w.channel).is_none()
            {
                sh.positions.set(&w.channel, s.into());
            }
            // `recovered` is present whenever the server resumed the personal channel:
            // from our `since`, or by itself from the user's acknowledged position.
            if resumed || w.recovered.is_some() {
                sh.positions.resumed(&w.channel, w.epoch.clone(), w.offset);
            } else {
                sh.positions.fresh(&w.channel, w.epoch.clone(), w.offset);
            }
        }
        tracing::debug!(url, node = %w.node, session = %w.session, "connected");
        self.emit(Event::Connected {
            node: w.node.clone(),
            session: w.session.clone(),
            user: w.user.clone(),
            channel: w.channel.clone(),
            url: url.to_owned(),
        })
        .await;
        if let Some(recovered) = w.recovered {
            self.emit(Event::Recovered {
                channel: w.channel.clone(),
                recovered,
            })
            .await;
        }
        let mut conn = Conn {
            ws,
            heartbeat: Duration::from_millis(w.heartbeat_ms.max(1)),
            last_rx: Instant::now(),
            inflight: HashMap::new(),
            deadlines: VecDeque::new(),
            bucket: Bucket::new(&w.limits),
            refresh_at: None,
            refreshing: None,
        };
        self.schedule_refresh(&mut conn, w.expires_at);
        let ended = match self.serve(&mut conn).await {
            Ok(never) => match never {},
            Err(ended) => ended,
        };
        self.connection_lost(conn);
        ended
    }

    /// The socket loop. Restores the subscriptions and sends what waited in the
    /// queue first, then serves whatever comes next; returns only when the
    /// connection ends.
    async fn serve(&mut self, conn: &mut Conn) -> Result<std::convert::Infallible, Ended> {
        self.restore_subscriptions(conn).await?;
        self.pump(conn).await?;
        loop {
            let hb_deadline = conn.last_rx + conn.heartbeat * 2;
            let req_deadline = conn.deadlines.front().map(|d| d.0);
            let pace_at = (!self.queue.is_empty()).then(|| conn.bucket.next_at());
            let retry_at = self.next_retry();
            let refresh_at = if conn.refreshing.is_none() {
                conn.refresh_at
            } else {
                None
            };
            let refreshing = &mut conn.refreshing;
            let refreshed = std::future::poll_fn(|cx| match refreshing.as_mut() {
                Some(f) => f.as_mut().poll(cx),
                None => Poll::Pending,
            });
            tokio::select! {
                msg = conn.ws.next() => {
                    conn.last_rx = Instant::now();
                    match msg {
                        Some(Ok(WsMessage::Text(t))) => self.on_frame(conn, t.as_bytes()).await?,
                        Some(Ok(WsMessage::Binary(b))) => self.on_frame(conn, &b).await?,
                        Some(Ok(WsMessage::Close(f))) => {
                            let _ = tokio::time::timeout(Duration::from_secs(1), conn.ws.close(None)).await;
                            return Err(match f {
                                Some(f) => Ended::closed(u16::from(f.code), f.reason.to_string()),
                                None => Ended::lost("closed without a code"),
                            });
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(Ended::lost(format!("connection error: {e}"))),
                        None => return Err(Ended::lost("connection closed")),
                    }
                }
                cmd = self.cmds.recv() => match cmd {
                    Some(Command::Close { done }) => {
                        self.close_done = Some(done);
                        return Err(self.close_by_client(conn).await);
                    }
                    None => return Err(self.close_by_client(conn).await),
                    Some(cmd) => self.online_command(conn, cmd).await?,
                },
                _ = sleep_until(hb_deadline) => {
                    return Err(Ended::lost(format!(
                        "no frame from the server for {:?} (2 heartbeat intervals)",
                        conn.heartbeat * 2
                    )));
                }
                _ = sleep_opt(req_deadline) => self.expire(conn).await,
                _ = sleep_opt(pace_at) => self.pump(conn).await?,
                _ = sleep_opt(retry_at) => self.retry_subscriptions(conn).await?,
                _ = sleep_opt(refresh_at) => {
                    conn.refresh_at = None;
                    if let Some(r) = self.cfg.refresher.clone() {
                        conn.refreshing = Some(r());
                    }
                }
                token = refreshed => {
                    conn.refreshing = None;
                    self.refreshed(conn, token).await?;
                }
            }
        }
    }

    async fn on_frame(&mut self, conn: &mut Conn, bytes: &[u8]) -> Result<(), Ended> {
        let frame = match codec::decode(self.cfg.encoding, bytes) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.emit(Event::Error(crate::Error::Protocol(e.to_string())))
                    .await;
                return Ok(());
            }
        };
        match frame {
            ServerFrame::Ping => {
                conn.bucket.force();
                self.write(conn, &ClientFrame::Pong).await?;
            }
            ServerFrame::Message(m) => {
                let fresh =
                    lock(&self.shared)
                        .positions
                        .accept(&m.channel, m.offset, m.epoch.as_deref());
                if fresh {
                    self.emit(Event::Message {
                        channel: m.channel,
                        event: m.event,
                        payload: m.payload,
                        offset: m.offset,
                        epoch: m.epoch,
                        msg_id: m.msg_id,
                        ts: m.ts,
                    })
                    .await;
                } else {
                    tracing::trace!(channel = %m.channel, offset = ?m.offset, "duplicate dropped");
                }
            }
            ServerFrame::Reply(r) => match r.id {
                Some(id) => {
                    if let Some(p) = conn.inflight.remove(&id) {
                        self.on_reply(conn, p, codec::reply_result(r)).await;
                    }
                }
                // An answer to a frame the server could not read: nobody waits for it.
                None => {
                    if let Err(e) = codec::reply_result(r) {
                        self.emit(Event::Error(e)).await;
                    }
                }
            },
            ServerFrame::PresenceDiff(d) => {
                // Diffs of a channel left may still arrive after the unsubscribe.
                if self.subs.iter().any(|s| s.channel == d.channel) {
                    self.emit(Event::PresenceDiff {
                        channel: d.channel,
                        joins: d.diff.joins,
                        leaves: d.diff.leaves,
                    })
                    .await;
                }
            }
            ServerFrame::Welcome(_) => {}
        }
        Ok(())
    }

    /// Writes a frame; one that cannot be encoded is reported, not fatal.
    pub(super) async fn write(
        &mut self,
        conn: &mut Conn,
        frame: &ClientFrame,
    ) -> Result<(), Ended> {
        let msg = match codec::encode(self.cfg.encoding, frame) {
            Ok(m) => m,
            Err(e) => {
                self.emit(Event::Error(e)).await;
                return Ok(());
            }
        };
        conn.ws
            .send(msg)
            .await
            .map_err(|e| Ended::lost(format!("write failed: {e}")))
    }

    /// Closes with 1000 and waits (briefly) for the server's echo.
    async fn close_by_client(&mut self, conn: &mut Conn) -> Ended {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "client closed".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if conn.ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(m)) = conn.ws.next().await {
                    if m.is_close() {
                        break;
                    }
                }
            }
        })
        .await;
        Ended::by_client()
    }
}
