//! The connection loop: one task per connection moves bytes between the WebSocket
//! and its [`Session`], drains the session's outbox into the socket in batches, and
//! keeps heartbeats and token expiry on a single timer.
//!
//! Every write is raced against the outbox's close signal and a stall deadline: a
//! peer that stops reading can block a write, and must still be cut off (slow
//! consumer, drain) rather than hold its task and subscriptions forever.

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use protocol::frame::{Reply, ServerFrame, Since, encode_message};
use protocol::{Encoding, ErrorCode, Publication, close};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::error::SessionEnd;
use crate::heartbeat::{Heartbeat, Tick};
use crate::outbox::{Frame, Item, Outbox};
use crate::session::{Outcome, Session};

/// Frames moved from the outbox per wakeup; bounds the time one socket write takes.
const BATCH: usize = 64;
/// How long closing may wait on the peer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

fn wall_to_instant(unix_secs: u64) -> Instant {
    let now_ms = protocol::now_millis();
    let target_ms = unix_secs.saturating_mul(1000);
    Instant::now() + Duration::from_millis(target_ms.saturating_sub(now_ms))
}

fn to_message(enc: Encoding, bytes: bytes::Bytes) -> Option<Message> {
    Some(match enc {
        Encoding::Json => Message::Text(Utf8Bytes::try_from(bytes).ok()?),
        Encoding::MsgPack => Message::Binary(bytes),
    })
}

fn encode_frame(enc: Encoding, frame: &ServerFrame) -> Option<Message> {
    to_message(enc, frame.encode(enc).ok()?)
}

fn read_error(e: &WsError) -> SessionEnd {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => SessionEnd::MessageTooBig,
        WsError::Capacity(_) => SessionEnd::MessageTooBig,
        WsError::Utf8(_) => SessionEnd::InvalidUtf8,
        WsError::Protocol(_) => SessionEnd::ProtocolViolation,
        _ => SessionEnd::PeerGone,
    }
}

fn encode_replay(enc: Encoding, replay: &[Publication]) -> Vec<Message> {
    replay
        .iter()
        .filter_map(|p| encode_message(enc, p).ok().and_then(|b| to_message(enc, b)))
        .collect()
}

/// Runs a write unless the connection is asked to close or the write stalls.
async fn guarded(
    outbox: &Outbox,
    stall: Duration,
    write: impl std::future::Future<Output = Result<(), WsError>>,
) -> Result<(), SessionEnd> {
    // Biased, write first: a write that completes at once never polls (and so never
    // registers) the stall timer.
    tokio::select! {
        biased;
        r = write => r.map_err(|_| SessionEnd::PeerGone),
        code = outbox.closed() => Err(SessionEnd::Requested(code)),
        () = tokio::time::sleep(stall) => Err(SessionEnd::Requested(close::SLOW_CONSUMER)),
    }
}

/// The write half with its guards.
struct Writer<S> {
    tx: SplitSink<WebSocketStream<S>, Message>,
    outbox: std::sync::Arc<Outbox>,
    /// A write blocked this long means the peer stopped reading.
    stall: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Writer<S> {
    /// Writes `msgs` and flushes, unless the connection is asked to close or the
    /// peer stops reading meanwhile.
    async fn send(&mut self, msgs: Vec<Message>) -> Result<(), SessionEnd> {
        let tx = &mut self.tx;
        let write = async {
            for m in msgs {
                tx.feed(m).await?;
            }
            tx.flush().await
        };
        guarded(&self.outbox, self.stall, write).await
    }

    /// The delivery path: writes queued items straight from the (reused) batch
    /// buffer, without collecting them into another vector first.
    async fn send_items(&mut self, items: &mut Vec<Item>) -> Result<(), SessionEnd> {
        let tx = &mut self.tx;
        let write = async {
            for item in items.drain(..) {
                tx.feed(match item.frame {
                    Frame::Text(t) => Message::Text(t),
                    Frame::Binary(b) => Message::Binary(b),
                })
                .await?;
            }
            tx.flush().await
        };
        guarded(&self.outbox, self.stall, write).await
    }

    async fn reply(&mut self, enc: Encoding, r: Reply) -> Result<(), SessionEnd> {
        match encode_frame(enc, &ServerFrame::Reply(r)) {
            Some(m) => self.send(vec![m]).await,
            None => Ok(()),
        }
    }

    /// A reply followed by replayed publications (resume), in that order.
    async fn reply_then(
        &mut self,
        enc: Encoding,
        r: Reply,
        replay: Vec<Publication>,
    ) -> Result<(), SessionEnd> {
        let mut msgs: Vec<Message> = encode_frame(enc, &ServerFrame::Reply(r))
            .into_iter()
            .collect();
        msgs.extend(encode_replay(enc, &replay));
        self.send(msgs).await
    }
}

/// Runs a connection until it ends; returns why. `resume` is where the client left
/// off on its personal channel, if it said so at connect.
///
/// Takes the stream already split: an `async fn` keeps room for its arguments for
/// its whole life, and the unsplit stream is large (measured: 0.8 KiB per
/// connection saved).
pub async fn run<S>(
    (tx, mut rx): (
        SplitSink<WebSocketStream<S>, Message>,
        SplitStream<WebSocketStream<S>>,
    ),
    mut session: Session,
    resume: Option<Since>,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let node = session.node().clone();
    let outbox = session.outbox().clone();
    let mut w = Writer {
        tx,
        outbox: outbox.clone(),
        stall: node.config.heartbeat_interval * 2,
    };
    let mut hb = Heartbeat::new(
        Instant::now(),
        node.config.heartbeat_interval,
        wall_to_instant(session.expires_at()),
    );
    let timer = sleep_until(hb.deadline());
    tokio::pin!(timer);
    let mut batch: Vec<Item> = Vec::new();

    let end = match serve(
        &mut session,
        &mut w,
        &mut rx,
        &mut hb,
        timer.as_mut(),
        &mut batch,
        resume,
    )
    .await
    {
        Ok(()) => SessionEnd::ClientClosed,
        Err(e) => e,
    };

    // Release subscriptions before the (bounded) close handshake.
    let user = session.user().clone();
    let id = session.id();
    drop(session);
    // Boxed: only a closing connection needs this state.
    Box::pin(finish(w.tx, rx, end)).await;
    let code = end.metric_code();
    node.metrics.connection_closed(code);
    tracing::debug!(session = format_args!("{id:016x}"), user = %user, code, reason = close::name(code), "connection closed");
    end
}

/// Sends our close frame (or answers the client's) and waits, bounded, for the peer.
async fn finish<S>(
    mut tx: SplitSink<WebSocketStream<S>, Message>,
    mut rx: SplitStream<WebSocketStream<S>>,
    end: SessionEnd,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match end.close() {
        Some((code, reason)) => {
            let frame = CloseFrame {
                code: code.into(),
                reason: reason.into(),
            };
            let sent = timeout(CLOSE_TIMEOUT, tx.send(Message::Close(Some(frame)))).await;
            if matches!(sent, Ok(Ok(()))) {
                // Wait for the peer's close so the client reads our code before TCP ends.
                let _ = timeout(CLOSE_TIMEOUT, async {
                    while let Some(Ok(m)) = rx.next().await {
                        if m.is_close() {
                            break;
                        }
                    }
                })
                .await;
            }
        }
        None => {
            if end == SessionEnd::ClientClosed {
                let _ = timeout(CLOSE_TIMEOUT, tx.close()).await;
            }
        }
    }
}

/// Sends `rest` (which starts with an item that skipped offsets) after filling each
/// gap from history, so the client still sees every offset once, in order.
async fn fill_gaps<S>(
    session: &mut Session,
    w: &mut Writer<S>,
    mut rest: Vec<Item>,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let enc = session.encoding();
    loop {
        let Some((sub, epoch)) = rest.first().map(|i| (i.sub, i.epoch)) else {
            return Ok(());
        };
        let missing = session.fill(sub, epoch).await?;
        w.send(encode_replay(enc, &missing)).await?;
        let next = session.filter(&mut rest);
        w.send_items(&mut rest).await?;
        match next {
            Some(r) => rest = r,
            None => return Ok(()),
        }
    }
}

/// The loop proper; returns `Ok` when the client closed, `Err` with any other end.
async fn serve<S>(
    session: &mut Session,
    w: &mut Writer<S>,
    rx: &mut SplitStream<WebSocketStream<S>>,
    hb: &mut Heartbeat,
    mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    batch: &mut Vec<Item>,
    resume: Option<Since>,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let node = session.node().clone();
    let enc = session.encoding();
    let outbox = w.outbox.clone();
    // Replay what the personal channel missed (live messages queue meanwhile and are
    // filtered by offset), then greet, then the replay, then live traffic.
    // Boxed: rare, and large enough to bloat every connection's task otherwise.
    let replay = Box::pin(session.resume_personal(resume)).await;
    let mut first: Vec<Message> = encode_frame(enc, &session.welcome()).into_iter().collect();
    first.extend(encode_replay(enc, &replay));
    drop(replay);
    Box::pin(w.send(first)).await?;

    loop {
        tokio::select! {
            biased;
            drained = outbox.drain(batch, BATCH) => {
                drained.map_err(SessionEnd::Requested)?;
                let gap = session.filter(batch);
                let now_ms = protocol::now_millis();
                for item in batch.iter().filter(|i| i.published_ms != 0) {
                    node.metrics.latency(now_ms, item.published_ms);
                }
                if !batch.is_empty() {
                    // Boxed although this is the delivery path: one allocation per
                    // batch costs ~0.05 us against a write syscall's several us, and
                    // inline its state (with the stall timer) would make every idle
                    // connection's future 0.7 KiB larger.
                    Box::pin(w.send_items(batch)).await?;
                }
                if let Some(rest) = gap {
                    // Rare: boxed so its state doesn't grow every connection's task.
                    Box::pin(fill_gaps(session, w, rest)).await?;
                }
                if batch.capacity() > BATCH {
                    *batch = Vec::new();
                }
            }
            msg = rx.next() => {
                let now = Instant::now();
                let msg = match msg {
                    None => return Err(SessionEnd::PeerGone),
                    Some(Err(e)) => return Err(read_error(&e)),
                    Some(Ok(m)) => m,
                };
                hb.seen(now);
                let data: &[u8] = match &msg {
                    Message::Text(t) if enc == Encoding::Json => t.as_bytes(),
                    Message::Binary(b) if enc == Encoding::MsgPack => b,
                    Message::Text(_) | Message::Binary(_) => {
                        let (want, got) = if enc.is_text() { ("text", "binary") } else { ("binary", "text") };
                        let reply = Reply::error(
                            None,
                            ErrorCode::BadFrame,
                            format!("this connection speaks {} in {want} frames, not {got} frames", enc.name()),
                        );
                        match session.wrong_kind(now, reply) {
                            Outcome::Reply(r) => Box::pin(w.reply(enc, r)).await?,
                            Outcome::End(e) => return Err(e),
                            Outcome::Replay(..) | Outcome::Silent => {}
                        }
                        continue;
                    }
                    Message::Ping(_) => {
                        node.metrics.inbound("ws_control");
                        // tungstenite queued the pong; send it.
                        Box::pin(w.send(Vec::new())).await?;
                        continue;
                    }
                    Message::Pong(_) | Message::Frame(_) => {
                        node.metrics.inbound("ws_control");
                        continue;
                    }
                    Message::Close(_) => return Ok(()),
                };
                let before = session.expires_at();
                // Boxed for the same reason: client requests are rare next to deliveries.
                match Box::pin(session.handle(data, now)).await {
                    Outcome::Silent => {}
                    Outcome::Reply(r) => Box::pin(w.reply(enc, r)).await?,
                    Outcome::Replay(r, replay) => Box::pin(w.reply_then(enc, r, replay)).await?,
                    Outcome::End(e) => return Err(e),
                }
                if session.expires_at() != before {
                    hb.set_expiry(wall_to_instant(session.expires_at()));
                    timer.as_mut().reset(hb.deadline());
                }
            }
            () = &mut timer => {
                match hb.tick(Instant::now()) {
                    Tick::Expired => return Err(SessionEnd::TokenExpired),
                    Tick::Timeout => return Err(SessionEnd::HeartbeatTimeout),
                    Tick::Ping => {
                        let app_ping = match enc {
                            Encoding::Json => Message::Text(node.ping_json.clone()),
                            Encoding::MsgPack => Message::Binary(node.ping_msgpack.clone()),
                        };
                        Box::pin(w.send(vec![Message::Ping(Default::default()), app_ping])).await?;
                    }
                    Tick::Nothing => {}
                }
                timer.as_mut().reset(hb.deadline());
            }
        }
    }
}
