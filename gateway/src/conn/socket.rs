//! The connection loop: one task per connection moves bytes between the WebSocket
//! and its [`Session`], writes what the outbox queued in batches, keeps heartbeats
//! and token expiry on a single timer, and runs the session's history steps
//! (greeting, replays, gap fills) through its [`Writer`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use protocol::frame::{Reply, Since};
use protocol::{Encoding, ErrorCode, close};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::conn::closing::{CLOSE_TIMEOUT, closing};
use crate::conn::heartbeat::{self, Heartbeat, Tick};
use crate::conn::writer::{Attached, Watch, Writer, read_error};
use crate::error::SessionEnd;
use crate::hub::outbox::Item;
use crate::metrics::Drop as Lost;
use crate::session::history::flow;
use crate::session::{Outcome, Session};

/// Frames moved from the outbox per wakeup; bounds the time one socket write takes.
const BATCH: usize = 64;

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
        stall: node.config.conn.heartbeat_interval * 2,
    };
    async move {
        let interval = node.config.conn.heartbeat_interval;
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
            let mut link = Attached { w, watch };
            flow::send_replay(session, &mut link, replay).await?;
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
    let greeting = Box::pin(async {
        let mut link = Attached {
            w: &mut *w,
            watch: &mut watch,
        };
        flow::greet(session, &mut link, resume).await
    });
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
                    let filling = Box::pin(async {
                        let mut link = Attached {
                            w: &mut *w,
                            watch: &mut watch,
                        };
                        flow::fill_gaps(session, &mut link, rest).await
                    });
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

    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::node::Node;
    use crate::testing::{claims, node, session};
    use tokio::time::timeout;

    /// A connection over an in-memory pipe: its task, and the client's end.
    async fn connect(node: &Arc<Node>, user: &str) -> WebSocketStream<tokio::io::DuplexStream> {
        connect_task(node, user).await.0
    }

    /// As [`connect`], with the connection's task (which returns why it ended).
    async fn connect_task(
        node: &Arc<Node>,
        user: &str,
    ) -> (
        WebSocketStream<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<SessionEnd>,
    ) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let session = session(node, claims(user, &[], &[]), 8);
        let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let task = tokio::spawn(run(ws, session, None));
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (client, task)
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
        let node = node(&[]);
        let (server, _client) = tokio::io::duplex(64);
        let session = session(&node, claims("size", &[], &[]), 8);
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
        let node = node(&[]);
        let mut before = connect(&node, "early").await;
        let first = timeout(Duration::from_secs(1), before.next()).await;
        assert!(matches!(first, Ok(Some(Ok(Message::Text(_))))), "welcome");
        node.start_draining();
        let mut late = connect(&node, "late").await;
        assert_eq!(close_code(&mut late).await, Some(close::GOING_AWAY));
    }

    /// A client that never answers is closed after two heartbeat intervals with
    /// 4003; one that answers pings stays (paused time: no real waiting).
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out_and_an_answering_one_stays() {
        let node = node(&["--heartbeat-interval", "1s"]);
        let (_silent, silent_task) = connect_task(&node, "quiet").await;
        let (mut lively, lively_task) = connect_task(&node, "lively").await;
        let answer = async {
            // tungstenite answers WebSocket pings while the stream is read; the app
            // ping gets a pong frame.
            while let Some(Ok(m)) = lively.next().await {
                if let Message::Text(t) = &m
                    && t.contains(r#""type":"ping""#)
                {
                    let pong = Message::text(r#"{"type":"pong"}"#);
                    let _ = futures_util::SinkExt::send(&mut lively, pong).await;
                }
            }
        };
        // The silent one is never read (reading would answer WebSocket pings).
        tokio::select! {
            end = silent_task => assert_eq!(end.ok(), Some(SessionEnd::HeartbeatTimeout)),
            () = answer => panic!("the answering client was closed"),
        }
        assert!(!lively_task.is_finished());
    }
}
