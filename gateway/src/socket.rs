//! The connection loop: one task per connection moves bytes between the WebSocket
//! and its [`Session`], drains the session's outbox into the socket in batches, and
//! keeps heartbeats and token expiry on a single timer.
//!
//! Every write is raced against the outbox's close signal and a stall deadline: a
//! peer that stops reading can block a write, and must still be cut off (slow
//! consumer, drain) rather than hold its task and subscriptions forever.

use std::collections::VecDeque;
use std::time::Duration;

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
use crate::heartbeat::{self, Heartbeat, Tick};
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
///
/// The stream is not split: reads happen only inside the loop's select and writes
/// only after it, never at once, so no lock (and no second allocation) is needed.
struct Writer<S> {
    ws: WebSocketStream<S>,
    outbox: std::sync::Arc<Outbox>,
    /// A write blocked this long means the peer stopped reading.
    stall: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Writer<S> {
    /// Writes `msgs` and flushes, unless the connection is asked to close or the
    /// peer stops reading meanwhile.
    async fn send(&mut self, msgs: Vec<Message>) -> Result<(), SessionEnd> {
        let tx = &mut self.ws;
        let write = async {
            for m in msgs {
                tx.feed(m).await?;
            }
            tx.flush().await
        };
        guarded(&self.outbox, self.stall, write).await
    }

    /// The delivery path: writes the items taken from the outbox, in order.
    async fn send_items(&mut self, items: &mut VecDeque<Item>) -> Result<(), SessionEnd> {
        let tx = &mut self.ws;
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
/// This future is the state of every connection's task, so its layout is watched
/// (measured with `size_of_val`: 2,432 -> 984 bytes): a plain function returning an
/// `async move` block, because an `async fn` keeps its arguments and the locals they
/// are moved into side by side; `serve` pinned in place, because awaiting a future
/// by value keeps room for it twice; the writer (with the unsplit stream) built
/// before the block; and everything rare boxed (see `serve`).
pub fn run<S>(
    ws: WebSocketStream<S>,
    mut session: Session,
    resume: Option<Since>,
) -> impl std::future::Future<Output = SessionEnd> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let node = session.node().clone();
    // Built here, not in the block: moving the stream into a local there would
    // keep room for it twice.
    let mut w = Writer {
        ws,
        outbox: session.outbox().clone(),
        stall: node.config.heartbeat_interval * 2,
    };
    async move {
        let interval = node.config.heartbeat_interval;
        let mut hb = Heartbeat::new(
            Instant::now(),
            interval,
            wall_to_instant(session.expires_at()),
            node.started,
            heartbeat::grid(interval),
        );
        let timer = sleep_until(hb.deadline());
        tokio::pin!(timer);
        let mut batch: VecDeque<Item> = VecDeque::new();

        let end = {
            let serving = std::pin::pin!(serve(
                &mut session,
                &mut w,
                &mut hb,
                timer.as_mut(),
                &mut batch,
                resume,
            ));
            match serving.await {
                Ok(()) => SessionEnd::ClientClosed,
                Err(e) => e,
            }
        };

        // Release subscriptions before the (bounded) close handshake.
        let user = session.user().clone();
        let id = session.id();
        drop(session);
        // Boxed: only a closing connection needs this state.
        closing(w.ws, end).await;
        let code = end.metric_code();
        node.metrics.connection_closed(code);
        tracing::debug!(session = format_args!("{id:016x}"), user = %user, code, reason = close::name(code), "connection closed");
        end
    }
}

/// [`finish`], boxed by a plain function so that its state never takes room in
/// the connection's own future.
fn closing<S>(
    ws: WebSocketStream<S>,
    end: SessionEnd,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(finish(ws, end))
}

/// Sends our close frame (or answers the client's) and waits, bounded, for the peer.
async fn finish<S>(mut ws: WebSocketStream<S>, end: SessionEnd)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match end.close() {
        Some((code, reason)) => {
            let frame = CloseFrame {
                code: code.into(),
                reason: reason.into(),
            };
            let sent = timeout(CLOSE_TIMEOUT, ws.send(Message::Close(Some(frame)))).await;
            if matches!(sent, Ok(Ok(()))) {
                // Wait for the peer's close so the client reads our code before TCP ends.
                let _ = timeout(CLOSE_TIMEOUT, async {
                    while let Some(Ok(m)) = ws.next().await {
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
                let _ = timeout(CLOSE_TIMEOUT, SinkExt::close(&mut ws)).await;
            }
        }
    }
}

/// Sends `rest` (which starts with an item that skipped offsets) after filling each
/// gap from history, so the client still sees every offset once, in order.
async fn fill_gaps<S>(
    session: &mut Session,
    w: &mut Writer<S>,
    mut rest: VecDeque<Item>,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let enc = session.encoding();
    loop {
        let Some((sub, epoch)) = rest.front().map(|i| (i.sub, i.epoch)) else {
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

/// What woke the connection's loop.
enum Event {
    Drained(Result<(), u16>),
    Inbound(Option<Result<Message, WsError>>),
    Timer,
}

/// Whether the loop goes on after an inbound frame.
enum Flow {
    Continue,
    /// The client sent a close frame.
    Closed,
}

/// Replays what the personal channel missed (live messages queue meanwhile and are
/// filtered by offset), then greets: welcome, then the replay, then live traffic.
async fn greet<S>(
    session: &mut Session,
    w: &mut Writer<S>,
    resume: Option<Since>,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let enc = session.encoding();
    let replay = session.resume_personal(resume).await;
    let mut first: Vec<Message> = encode_frame(enc, &session.welcome()).into_iter().collect();
    first.extend(encode_replay(enc, &replay));
    drop(replay);
    w.send(first).await
}

/// Handles one frame from the client.
async fn inbound<S>(
    session: &mut Session,
    w: &mut Writer<S>,
    hb: &mut Heartbeat,
    mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    msg: Option<Result<Message, WsError>>,
) -> Result<Flow, SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let now = Instant::now();
    let enc = session.encoding();
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
            let (want, got) = if enc.is_text() {
                ("text", "binary")
            } else {
                ("binary", "text")
            };
            let reply = Reply::error(
                None,
                ErrorCode::BadFrame,
                format!(
                    "this connection speaks {} in {want} frames, not {got} frames",
                    enc.name()
                ),
            );
            match session.wrong_kind(now, reply) {
                Outcome::Reply(r) => w.reply(enc, r).await?,
                Outcome::End(e) => return Err(e),
                Outcome::Replay(..) | Outcome::Silent => {}
            }
            return Ok(Flow::Continue);
        }
        Message::Ping(_) => {
            session.node().metrics.inbound("ws_control");
            // tungstenite queued the pong; send it.
            w.send(Vec::new()).await?;
            return Ok(Flow::Continue);
        }
        Message::Pong(_) | Message::Frame(_) => {
            session.node().metrics.inbound("ws_control");
            return Ok(Flow::Continue);
        }
        Message::Close(_) => return Ok(Flow::Closed),
    };
    let before = session.expires_at();
    match session.handle(data, now).await {
        Outcome::Silent => {}
        Outcome::Reply(r) => w.reply(enc, r).await?,
        Outcome::Replay(r, replay) => w.reply_then(enc, r, replay).await?,
        Outcome::End(e) => return Err(e),
    }
    if session.expires_at() != before {
        hb.set_expiry(wall_to_instant(session.expires_at()));
        timer.as_mut().reset(hb.deadline());
    }
    Ok(Flow::Continue)
}

/// The loop proper; returns `Ok` when the client closed, `Err` with any other end.
///
/// Its state is what every idle connection carries, so it stays small: the select
/// only says what happened, and the rare, large steps (greeting, client frames, gap
/// filling, even the delivery write with its stall timer) run boxed. A boxed step
/// costs one allocation (~0.05 us) next to a write syscall's several microseconds.
async fn serve<S>(
    session: &mut Session,
    w: &mut Writer<S>,
    hb: &mut Heartbeat,
    mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    batch: &mut VecDeque<Item>,
    resume: Option<Since>,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeting = Box::pin(greet(session, w, resume));
    greeting.await?;
    let outbox = w.outbox.clone();
    loop {
        let event = tokio::select! {
            biased;
            d = std::future::poll_fn(|cx| outbox.poll_drain(cx, batch, BATCH)) => Event::Drained(d),
            m = w.ws.next() => Event::Inbound(m),
            () = &mut timer => Event::Timer,
        };
        match event {
            Event::Drained(drained) => {
                drained.map_err(SessionEnd::Requested)?;
                let gap = session.filter(batch);
                let now_ms = protocol::now_millis();
                let metrics = &session.node().metrics;
                for item in batch.iter().filter(|i| i.published_ms != 0) {
                    metrics.latency(now_ms, item.published_ms);
                }
                if !batch.is_empty() {
                    let write = Box::pin(w.send_items(batch));
                    write.await?;
                }
                // The queue's buffer came along with the items; an idle connection
                // keeps none.
                *batch = VecDeque::new();
                if let Some(rest) = gap {
                    let filling = Box::pin(fill_gaps(session, w, rest));
                    filling.await?;
                }
            }
            Event::Inbound(msg) => {
                let handling = Box::pin(inbound(session, w, hb, timer.as_mut(), msg));
                if let Flow::Closed = handling.await? {
                    return Ok(());
                }
            }
            Event::Timer => {
                match hb.tick(Instant::now()) {
                    Tick::Expired => return Err(SessionEnd::TokenExpired),
                    Tick::Timeout => return Err(SessionEnd::HeartbeatTimeout),
                    Tick::Ping => {
                        let node = session.node();
                        let app_ping = match session.encoding() {
                            Encoding::Json => Message::Text(node.ping_json.clone()),
                            Encoding::MsgPack => Message::Binary(node.ping_msgpack.clone()),
                        };
                        // A client that answers ping frames needs no WebSocket ping:
                        // one frame and one answer per heartbeat instead of two.
                        let frames = if session.answers_pings() {
                            vec![app_ping]
                        } else {
                            vec![Message::Ping(Default::default()), app_ping]
                        };
                        let write = Box::pin(w.send(frames));
                        write.await?;
                    }
                    Tick::Nothing => {}
                }
                timer.as_mut().reset(hb.deadline());
            }
        }
    }
}
