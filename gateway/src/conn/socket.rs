//! The connection loop: one task per connection moves bytes between the WebSocket
//! and its [`Session`], drains the session's outbox into the socket in batches, and
//! keeps heartbeats and token expiry on a single timer.
//!
//! Every write is raced against the outbox's close signal and a stall deadline: a
//! peer that stops reading can block a write, and must still be cut off (slow
//! consumer, drain) rather than hold its task and subscriptions forever.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::frame::{Reply, ServerFrame, Since, encode_message};
use protocol::{Encoding, ErrorCode, Publication, close};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::conn::heartbeat::{self, Heartbeat, Tick};
use crate::conn::outbox::{Frame, Item, Outbox};
use crate::error::SessionEnd;
use crate::metrics::Drop as Lost;
use crate::session::recovery::{Replay, Step};
use crate::session::{Outcome, Session};

/// Frames moved from the outbox per wakeup; bounds the time one socket write takes.
const BATCH: usize = 64;
/// How long closing may wait on the peer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

fn wall_to_instant(unix_secs: u64) -> Instant {
    let now_ms = protocol::now_millis();
    let target_ms = unix_secs.saturating_mul(1000);
    let now = Instant::now();
    // A token that expires in the far future (up to u64::MAX) must not overflow
    // the clock: a century is forever for a connection.
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    let wait = Duration::from_millis(target_ms.saturating_sub(now_ms)).min(far);
    now.checked_add(wait)
        .unwrap_or(now + Duration::from_secs(24 * 3600))
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
        // The TCP connection ended without a close frame: the peer vanished (a
        // network drop, a killed app), not a protocol violation.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => SessionEnd::PeerGone,
        WsError::Protocol(_) => SessionEnd::ProtocolViolation,
        _ => SessionEnd::PeerGone,
    }
}

/// Encodes replayed publications. Every payload accepted since payloads are
/// limited to 64 levels of nesting encodes in both encodings; one that does not
/// (history written before that limit) is counted as dropped and logged with its
/// offset, never skipped in silence.
fn encode_replay(
    enc: Encoding,
    replay: &[Publication],
    metrics: &crate::metrics::Metrics,
) -> Vec<Message> {
    replay
        .iter()
        .filter_map(|p| {
            let m = encode_message(enc, p).ok().and_then(|b| to_message(enc, b));
            if m.is_none() {
                metrics.dropped(Lost::Encode, 1);
                tracing::error!(
                    offset = p.offset,
                    encoding = enc.name(),
                    "cannot encode a replayed message"
                );
            }
            m
        })
        .collect()
}

/// What a connection keeps watching while it waits on the broker: its heartbeat
/// and token expiry (one timer), and the first client frame that arrived meanwhile.
struct Watch<'a> {
    hb: &'a mut Heartbeat,
    timer: Pin<&'a mut Sleep>,
    /// A data frame read while waiting, handled once the wait is over; until then
    /// the socket is not read further (TCP holds the rest).
    stash: Option<Box<Message>>,
}

impl Watch<'_> {
    fn rearm(&mut self) {
        self.timer.as_mut().reset(self.hb.deadline());
    }
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

    /// The delivery path: writes the items taken from the outbox, in order; counts
    /// them as delivered once written, or as dropped if the write is given up.
    async fn send_items(
        &mut self,
        items: &mut VecDeque<Item>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<(), SessionEnd> {
        let n = items
            .iter()
            .filter(|i| matches!(i.frame, Frame::Ws(_)))
            .count() as u64;
        let r = match self.outbox.socket() {
            // The frames are ready-made: straight to the socket, in one write where
            // the kernel takes them, after whatever tungstenite still holds (a pong).
            Some(socket) => {
                if let Err(e) = guarded(&self.outbox, self.stall, self.ws.flush()).await {
                    metrics.dropped(Lost::Closed, n);
                    return Err(e);
                }
                let frames: Vec<bytes::Bytes> = items
                    .drain(..)
                    .filter_map(|i| match i.frame {
                        Frame::Ws(b) => Some(b),
                        Frame::Check => None,
                    })
                    .collect();
                let outbox = &self.outbox;
                let write = async {
                    crate::conn::shared_socket::write_frames(outbox, socket, &frames)
                        .await
                        .map_err(WsError::Io)
                };
                guarded(&self.outbox, self.stall, write).await
            }
            // Not a TCP socket (tests): through tungstenite.
            None => {
                let tx = &mut self.ws;
                let write = async {
                    for item in items.drain(..) {
                        let Frame::Ws(frame) = item.frame else {
                            continue;
                        };
                        let Some((opcode, payload)) = crate::conn::outbox::ws_payload(&frame)
                        else {
                            continue;
                        };
                        let m = match opcode {
                            1 => Message::Text(Utf8Bytes::try_from(payload).map_err(|_| {
                                WsError::Utf8(String::from("a text frame that is not UTF-8"))
                            })?),
                            _ => Message::Binary(payload),
                        };
                        tx.feed(m).await?;
                    }
                    tx.flush().await
                };
                guarded(&self.outbox, self.stall, write).await
            }
        };
        match r {
            Ok(()) => metrics.delivered(n),
            Err(SessionEnd::Requested(close::SLOW_CONSUMER)) => {
                metrics.dropped(Lost::SlowConsumer, n);
            }
            Err(_) => metrics.dropped(Lost::Closed, n),
        }
        r
    }

    /// Awaits `step` (a call to the broker) while still serving the connection: the
    /// client closing or vanishing, a close request (drain, slow consumer), token
    /// expiry and a heartbeat timeout end the wait and the session. A ping that
    /// falls due meanwhile goes out as a WebSocket ping (which every WebSocket
    /// client answers, also before the welcome), so a slow broker never makes a
    /// healthy client look dead. Waits are bounded by the broker's own timeouts.
    async fn attend<T>(
        &mut self,
        step: impl Future<Output = T>,
        watch: &mut Watch<'_>,
    ) -> Result<T, SessionEnd> {
        let mut step = std::pin::pin!(step);
        let Writer {
            ws, outbox, stall, ..
        } = self;
        loop {
            let read = watch.stash.is_none();
            let event = tokio::select! {
                biased;
                v = &mut step => return Ok(v),
                code = outbox.closed() => return Err(SessionEnd::Requested(code)),
                () = &mut watch.timer => None,
                m = ws.next(), if read => Some(m),
            };
            let now = Instant::now();
            match event {
                None => match watch.hb.tick(now) {
                    Tick::Expired => return Err(SessionEnd::TokenExpired),
                    Tick::Timeout => return Err(SessionEnd::HeartbeatTimeout),
                    Tick::Ping => {
                        match timeout(*stall, ws.send(Message::Ping(Default::default()))).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return Err(SessionEnd::PeerGone),
                            Err(_) => return Err(SessionEnd::Requested(close::SLOW_CONSUMER)),
                        }
                        watch.rearm();
                    }
                    Tick::Nothing => watch.rearm(),
                },
                Some(None) => return Err(SessionEnd::PeerGone),
                Some(Some(Err(e))) => return Err(read_error(&e)),
                Some(Some(Ok(m))) => {
                    watch.hb.seen(now);
                    match m {
                        Message::Close(_) => return Err(SessionEnd::ClientClosed),
                        Message::Text(_) | Message::Binary(_) => watch.stash = Some(Box::new(m)),
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
        }
    }

    /// Sends a replay from history page by page: each page is written (through the
    /// stall guard) before the next is read, so a connection holds one page at a
    /// time. A replay that meets a hole it promised to cover ends the session with
    /// a resync after what came before the hole.
    async fn send_replay(
        &mut self,
        session: &mut Session,
        mut replay: Replay,
        watch: &mut Watch<'_>,
    ) -> Result<(), SessionEnd> {
        let enc = session.encoding();
        loop {
            let page = std::mem::take(&mut replay.page);
            if !page.is_empty() {
                let metrics = &session.node().metrics;
                metrics.replayed(page.len() as u64);
                let msgs = encode_replay(enc, &page, metrics);
                // The encoded frames are all this connection keeps of the page.
                drop(page);
                self.send(msgs).await?;
            }
            if replay.broken {
                return Err(SessionEnd::Resync);
            }
            if replay.finished() {
                return Ok(());
            }
            let step = self.attend(session.next_page(&mut replay), watch).await?;
            if step == Step::Done && replay.page.is_empty() {
                return Ok(());
            }
        }
    }

    async fn reply(&mut self, enc: Encoding, r: Reply) -> Result<(), SessionEnd> {
        match encode_frame(enc, &ServerFrame::Reply(r)) {
            Some(m) => self.send(vec![m]).await,
            None => Ok(()),
        }
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
                // Boxed: only the greeting needs it, the loop carries it for life.
                resume.map(Box::new),
            ));
            match serving.await {
                Ok(()) => SessionEnd::ClientClosed,
                Err(e) => e,
            }
        };

        // What was queued and not written is lost with the connection: counted.
        let queued = w.outbox.discard();
        let left = (batch.len() + queued) as u64;
        if left > 0 {
            node.metrics.dropped(Lost::Closed, left);
        }
        // Release subscriptions before the (bounded) close handshake.
        let user = session.user().clone();
        let id = session.id();
        drop(session);
        // A slow consumer gets its close frame once it reads again, if it does so
        // within a heartbeat interval; other ends within the close timeout.
        let linger = if end == SessionEnd::Requested(close::SLOW_CONSUMER) {
            interval.max(CLOSE_TIMEOUT)
        } else {
            CLOSE_TIMEOUT
        };
        // Boxed: only a closing connection needs this state. A frame the hub began
        // on the wire is finished first (the outbox's gate); if the peer never takes
        // it, the stream ends without a close frame.
        closing(w.ws, end, linger).await;
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
    linger: Duration,
) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(finish(ws, end, linger))
}

/// Sends our close frame (or answers the client's), then lingers, bounded, until
/// the peer has read it and answered: writing what is still buffered as the peer
/// reads, and reading (discarding) what the peer sends. Reading matters: closing
/// a socket with unread input makes the kernel send a reset, which destroys what
/// the peer has not read yet, the close frame included. Then the write side is
/// shut down (FIN after the last byte) before the socket is dropped.
async fn finish<S>(mut ws: WebSocketStream<S>, end: SessionEnd, linger: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match end.close() {
        Some((code, reason)) => {
            let frame = CloseFrame {
                code: code.into(),
                reason: reason.into(),
            };
            // Queued behind whatever is still buffered and written as the peer reads;
            // queued without waiting for room first, which a peer that does not read
            // would never make.
            if futures_util::Sink::start_send(Pin::new(&mut ws), Message::Close(Some(frame)))
                .is_ok()
            {
                let _ = timeout(linger, flush_and_drain(&mut ws)).await;
            }
        }
        None => {
            if end == SessionEnd::ClientClosed {
                let _ = timeout(CLOSE_TIMEOUT, SinkExt::close(&mut ws)).await;
            }
        }
    }
    let _ = timeout(CLOSE_TIMEOUT, ws.get_mut().shutdown()).await;
}

/// Writes what is buffered while reading what arrives, until both the buffer is
/// written and the peer has answered our close (or the stream ended).
async fn flush_and_drain<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut flushed = false;
    std::future::poll_fn(|cx| {
        if !flushed {
            match futures_util::Sink::poll_flush(Pin::new(&mut *ws), cx) {
                Poll::Ready(Ok(())) => flushed = true,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {}
            }
        }
        loop {
            match ws.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(m))) if m.is_close() && flushed => return Poll::Ready(()),
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
}

/// Sends `rest` (which starts with an item that skipped offsets) after filling each
/// gap from history, so the client still sees every offset once, in order. Every
/// round either sends the item that revealed its gap or ends the session, so the
/// rounds are bounded by the batch; each history read passes the rate limit.
async fn fill_gaps<S>(
    session: &mut Session,
    w: &mut Writer<S>,
    watch: &mut Watch<'_>,
    mut rest: VecDeque<Item>,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        // A check item's gap ends at its offset; any other's just before it.
        let front = rest
            .front()
            .map(|i| (i.sub, i.epoch, i.offset + u64::from(i.is_check())));
        let Some((sub, epoch, offset)) = front else {
            return Ok(());
        };
        let wait = session.fill_wait(Instant::now());
        if !wait.is_zero() {
            w.attend(tokio::time::sleep(wait), watch).await?;
        }
        let replay = w.attend(session.fill(sub, epoch, offset), watch).await??;
        if let Some(replay) = replay {
            w.send_replay(session, replay, watch).await?;
        }
        let next = session.filter(&mut rest);
        let metrics = session.node().metrics.clone();
        w.send_items(&mut rest, &metrics).await?;
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
    watch: &mut Watch<'_>,
    resume: Option<Box<Since>>,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A connection that finished its upgrade after draining began was not among
    // those the drain closes: it is told to go elsewhere at once.
    if session.node().is_draining() {
        return Err(SessionEnd::Requested(close::GOING_AWAY));
    }
    let enc = session.encoding();
    let (personal, replay) = w
        .attend(session.resume_personal(resume.map(|s| *s)), watch)
        .await?;
    let welcome: Vec<Message> = encode_frame(enc, &session.welcome(&personal))
        .into_iter()
        .collect();
    drop(personal);
    w.send(welcome).await?;
    match replay {
        Some(r) => w.send_replay(session, r, watch).await,
        None => Ok(()),
    }
}

/// Handles one frame from the client.
async fn inbound<S>(
    session: &mut Session,
    w: &mut Writer<S>,
    watch: &mut Watch<'_>,
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
    watch.hb.seen(now);
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
    match w.attend(session.handle(data, now), watch).await? {
        Outcome::Silent => {}
        Outcome::Reply(r) => w.reply(enc, r).await?,
        Outcome::Replay(r, replay) => {
            w.reply(enc, r).await?;
            w.send_replay(session, replay, watch).await?;
        }
        Outcome::End(e) => return Err(e),
    }
    if session.expires_at() != before {
        watch.hb.set_expiry(wall_to_instant(session.expires_at()));
        watch.rearm();
    }
    Ok(Flow::Continue)
}

/// Handles a client frame and then any frame that arrived while it waited on the
/// broker.
async fn inbound_all<S>(
    session: &mut Session,
    w: &mut Writer<S>,
    watch: &mut Watch<'_>,
    msg: Option<Option<Result<Message, WsError>>>,
) -> Result<Flow, SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut next = msg.or_else(|| watch.stash.take().map(|m| Some(Ok(*m))));
    while let Some(msg) = next.take() {
        if let Flow::Closed = inbound(session, w, watch, msg).await? {
            return Ok(Flow::Closed);
        }
        next = watch.stash.take().map(|m| Some(Ok(*m)));
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
    timer: Pin<&mut Sleep>,
    batch: &mut VecDeque<Item>,
    resume: Option<Box<Since>>,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut watch = Watch {
        hb,
        timer,
        stash: None,
    };
    let greeting = Box::pin(greet(session, w, &mut watch, resume));
    greeting.await?;
    if watch.stash.is_some() {
        let handling = Box::pin(inbound_all(session, w, &mut watch, None));
        if let Flow::Closed = handling.await? {
            return Ok(());
        }
    }
    let outbox = w.outbox.clone();
    loop {
        let event = tokio::select! {
            biased;
            d = std::future::poll_fn(|cx| outbox.poll_drain(cx, batch, BATCH)) => Event::Drained(d),
            m = w.ws.next() => Event::Inbound(m),
            () = &mut watch.timer => Event::Timer,
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
                // (An empty batch: the rest of a frame the hub began is to be written.)
                if !batch.is_empty() || w.outbox.has_tail() {
                    let write = Box::pin(w.send_items(batch, metrics));
                    write.await?;
                }
                // The queue's buffer came along with the items; an idle connection
                // keeps none.
                *batch = VecDeque::new();
                if let Some(rest) = gap {
                    let filling = Box::pin(fill_gaps(session, w, &mut watch, rest));
                    filling.await?;
                }
                if watch.stash.is_some() {
                    let handling = Box::pin(inbound_all(session, w, &mut watch, None));
                    if let Flow::Closed = handling.await? {
                        return Ok(());
                    }
                }
            }
            Event::Inbound(msg) => {
                // The task has the socket until it is idle again (a reply, a replay).
                outbox.hold();
                let handling = Box::pin(inbound_all(session, w, &mut watch, Some(msg)));
                if let Flow::Closed = handling.await? {
                    return Ok(());
                }
            }
            Event::Timer => {
                outbox.hold();
                match watch.hb.tick(Instant::now()) {
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
                watch.rearm();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clap::Parser;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::auth::Claims;
    use crate::config::{Cli, Config};
    use crate::node::Node;

    /// A node of the in-memory broker, in this process.
    fn node() -> Arc<Node> {
        let cli = Cli::try_parse_from(["gateway", "--jwt-secret", "0123456789abcdef0123"])
            .unwrap_or_else(|e| panic!("{e}"));
        let config = Config::from_settings(cli.settings).unwrap_or_else(|e| panic!("{e}"));
        crate::assemble(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A connection over an in-memory pipe: its task, and the client's end.
    async fn connect(node: &Arc<Node>, user: &str) -> WebSocketStream<tokio::io::DuplexStream> {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let claims = Claims {
            sub: user.into(),
            exp: protocol::now_millis() / 1000 + 600,
            subscribe: Vec::new(),
            publish: Vec::new(),
        };
        let slot = node.reserve(user).unwrap_or_else(|_| panic!("no slot"));
        let outbox = Arc::new(crate::conn::outbox::Outbox::new(8, None));
        let session = Session::open(node.clone(), slot, claims, Encoding::Json, outbox);
        let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        tokio::spawn(run(ws, session, None));
        WebSocketStream::from_raw_socket(client, Role::Client, None).await
    }

    /// The first close frame the client reads within a second, skipping the rest.
    async fn close_code(ws: &mut WebSocketStream<tokio::io::DuplexStream>) -> Option<u16> {
        timeout(Duration::from_secs(1), async {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Close(f) = m {
                    return f.map(|f| u16::from(f.code));
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// The connection's future is what every idle connection carries: keep an eye on
    /// it (984 bytes in round 3 of the benchmarks; 1,056 with the history positions
    /// moved to the outbox and 8-byte token buckets).
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let node = node();
        let (server, _client) = tokio::io::duplex(64);
        let claims = Claims {
            sub: "size".into(),
            exp: protocol::now_millis() / 1000 + 600,
            subscribe: Vec::new(),
            publish: Vec::new(),
        };
        let slot = node.reserve("size").unwrap_or_else(|_| panic!("no slot"));
        let outbox = Arc::new(crate::conn::outbox::Outbox::new(8, None));
        let session = Session::open(node.clone(), slot, claims, Encoding::Json, outbox);
        let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let future = run(ws, session, None);
        let size = std::mem::size_of_val(&future);
        eprintln!("connection future: {size} bytes");
        eprintln!(
            "session {} heartbeat {} sleep {} ws {} watch {} since {}",
            std::mem::size_of::<Session>(),
            std::mem::size_of::<Heartbeat>(),
            std::mem::size_of::<tokio::time::Sleep>(),
            std::mem::size_of::<WebSocketStream<tokio::io::DuplexStream>>(),
            std::mem::size_of::<Watch<'static>>(),
            std::mem::size_of::<Option<Since>>(),
        );
        assert!(size <= 1088, "the connection future grew to {size} bytes");
    }

    /// A connection whose upgrade completes after draining began is not among those
    /// the drain closes; it must be told to go at once, not cut off at exit.
    #[tokio::test]
    async fn a_connection_opened_while_draining_is_sent_away() {
        let node = node();
        let mut before = connect(&node, "early").await;
        let first = timeout(Duration::from_secs(1), before.next()).await;
        assert!(matches!(first, Ok(Some(Ok(Message::Text(_))))), "welcome");
        node.start_draining();
        let mut late = connect(&node, "late").await;
        assert_eq!(close_code(&mut late).await, Some(close::GOING_AWAY));
    }
}
